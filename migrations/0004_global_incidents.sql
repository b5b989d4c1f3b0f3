-- Global incidents: the spans in which at least `down_regions` regions (the postgres sink's
-- setting, default 1) had an open incident of a target at once. One region's network fault
-- opens a regional incident (`target_incidents`), not a global one. `started_at` is when the
-- quorum was reached, `ended_at` when it was lost (null while it holds), `regions` the most
-- regions down at once within it, `cause` the cause of the earliest regional incident in it.
-- Kept by the writer in the transaction that changes the regional incidents
-- (`src/monitor/history/quorum.rs`), and by `pipe rollups rebuild`.
CREATE TABLE target_global_incidents (
    target_id   integer NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    regions     smallint NOT NULL,
    cause       text NOT NULL,
    PRIMARY KEY (target_id, started_at)
);
CREATE INDEX target_global_incidents_started ON target_global_incidents (started_at);

-- The regional incidents of a target still open, or ended after a time: what a global
-- incident's recomputation reads.
CREATE INDEX target_incidents_ends ON target_incidents (target_id, ended_at);

CREATE VIEW global_incidents AS
SELECT t.name AS target, g.started_at, g.ended_at, g.regions, g.cause,
       coalesce(g.ended_at, now()) - g.started_at AS duration
FROM target_global_incidents g
JOIN targets t ON t.id = g.target_id;

-- Incidents from before this migration become global ones of the quorum every writer had
-- until now, 1: the union of a target's overlapping regional incidents (`regions` here counts
-- the regions with an incident within it). `pipe rollups rebuild --down-regions k` recomputes
-- them for another quorum.
INSERT INTO target_global_incidents (target_id, started_at, ended_at, regions, cause)
WITH ordered AS (
    SELECT target_id, region_id, started_at, ended_at, cause,
           max(coalesce(ended_at, 'infinity')) OVER (
               PARTITION BY target_id ORDER BY started_at, region_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_end
    FROM target_incidents),
islands AS (
    SELECT *, count(*) FILTER (WHERE before_end IS NULL OR before_end < started_at)
                  OVER (PARTITION BY target_id ORDER BY started_at, region_id) AS island
    FROM ordered)
SELECT target_id, min(started_at),
       nullif(max(coalesce(ended_at, 'infinity')), 'infinity'),
       count(DISTINCT region_id),
       (array_agg(cause ORDER BY started_at, region_id))[1]
FROM islands
GROUP BY target_id, island;
