-- pipe migration 1: targets, time-partitioned checks, dead letters, and the check_results view.
--
-- Sized for years of checks of thousands of targets: one narrow row per check in daily range
-- partitions (so retention drops whole partitions instead of deleting rows), with columns
-- ordered widest-alignment first so rows carry no padding. Times are microseconds in integers,
-- error kinds and latency classes are enums, the URL lives once per target.

CREATE TYPE check_error_kind AS ENUM
    ('timeout', 'dns', 'connect', 'tls', 'too_many_redirects', 'body_too_large', 'other');

CREATE TYPE check_latency_class AS ENUM ('ok', 'slow', 'critical');

-- One row per monitored target, keyed by its unique name; url, method and regex are the ones
-- of its latest check (updated_at says when they last changed).
CREATE TABLE targets (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    url         text NOT NULL,
    method      text NOT NULL,
    regex       text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per check. `checked_at` is the check's scheduled slot (schema v1 `scheduled_at`), from
-- which `check_id` is derived: the pair is unique, so a check delivered twice is stored once.
-- No foreign key to targets: the writer stores a check's target in the same transaction, and a
-- per-row trigger would cost a fifth of the insert rate.
CREATE TABLE checks (
    checked_at        timestamptz NOT NULL,
    check_id          uuid NOT NULL,
    target_id         integer NOT NULL,
    start_delay_ms    integer NOT NULL,          -- started_at - scheduled_at
    response_time_us  integer NOT NULL,
    dns_us            integer,
    connect_us        integer,
    tls_us            integer,
    first_byte_us     integer,
    transfer_us       integer,
    body_bytes        integer,
    remote_port       integer,
    error_kind        check_error_kind,
    latency_class     check_latency_class,
    status_code       smallint CHECK (status_code BETWEEN 100 AND 599),
    http_version      smallint,                  -- 9, 10, 11, 20 or 30
    up                boolean NOT NULL,
    regex_matched     boolean,
    remote_ip         inet,
    error_message     text,
    captures          jsonb,
    PRIMARY KEY (check_id, checked_at)
) PARTITION BY RANGE (checked_at);

-- "Checks of target X between T1 and T2", and per-target summaries.
CREATE INDEX checks_target_time ON checks (target_id, checked_at);

-- Messages or rows that could not be stored, with where they came from and why. A replayed
-- Kafka message is dead-lettered once.
CREATE TABLE dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    topic            text,
    kafka_partition  integer,
    kafka_offset     bigint,
    error            text NOT NULL,
    payload          bytea,
    UNIQUE (topic, kafka_partition, kafka_offset)
);

-- Creates the partition of `day` (UTC) if it is missing. Serialized with an advisory lock, so
-- several writers can call it at once.
CREATE FUNCTION pipe_ensure_check_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text := 'checks_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pipe_check_partitions'));
    IF to_regclass(partition_name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF checks FOR VALUES FROM (%L) TO (%L)',
                       partition_name, low, low + interval '1 day');
    END IF;
END;
$$;

-- Drops every daily partition that ends at or before `cutoff` (UTC); returns how many.
CREATE FUNCTION pipe_drop_check_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    child regclass;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pipe_check_partitions'));
    FOR child IN
        SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'checks'::regclass
    LOOP
        IF child::text ~ '^checks_[0-9]{8}$'
           AND to_date(substring(child::text FROM 8), 'YYYYMMDD') + 1 <= cutoff THEN
            EXECUTE format('DROP TABLE %s', child);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

-- The stable query surface: one row per check in the units of message schema v1.
CREATE VIEW check_results AS
SELECT
    c.check_id,
    t.name                                          AS target,
    t.url,
    c.checked_at,
    c.checked_at + c.start_delay_ms * interval '1 millisecond' AS started_at,
    t.method,
    c.status_code,
    c.response_time_us / 1000.0::double precision   AS response_time_ms,
    c.error_kind::text                              AS error_kind,
    c.error_message,
    c.regex_matched,
    c.latency_class::text                           AS latency_class,
    c.up,
    c.dns_us / 1000.0::double precision             AS dns_ms,
    c.connect_us / 1000.0::double precision         AS connect_ms,
    c.tls_us / 1000.0::double precision             AS tls_ms,
    c.first_byte_us / 1000.0::double precision      AS first_byte_ms,
    c.transfer_us / 1000.0::double precision        AS transfer_ms,
    c.body_bytes,
    c.remote_ip,
    c.remote_port,
    CASE c.http_version
        WHEN 9 THEN 'HTTP/0.9' WHEN 10 THEN 'HTTP/1.0' WHEN 11 THEN 'HTTP/1.1'
        WHEN 20 THEN 'HTTP/2' WHEN 30 THEN 'HTTP/3'
    END                                             AS http_version,
    c.captures
FROM checks c
JOIN targets t ON t.id = c.target_id;
