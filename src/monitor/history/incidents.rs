//! Incidents: when a target (from one region) was down, computed from its checks in slot order.
//!
//! A series (a target and a region) goes down after `down_after` failed checks in a row, and
//! up after `up_after` good ones in a row. The incident starts at the first failure's slot and
//! ends at the first good check's slot; its cause is the first failure's (`pipe_down_cause`).
//!
//! The machine is a pure function of the sequence, so the result cannot depend on how checks
//! were batched. The sink feeds it only the checks a transaction actually inserted, so a
//! redelivered check changes nothing. A check older than the series' latest one (late, or
//! stored out of order by batches committed in parallel) cannot simply be appended: the series
//! is replayed from its latest good check outside any incident before the late one, where the
//! machine's state is known to be clean, and its later incidents rewritten.
//!
//! `incident_state` (migration 3) holds each series' state between transactions; the sink
//! locks the rows of a batch's series, in key order, for the length of its transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use postgres::GenericClient;

use super::quorum::{self, Touched};
use super::StoredCheck;

/// When a series goes down and up again, and when a target is down everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failed checks in a row that make an incident.
    pub down_after: u32,
    /// Good checks in a row that end one.
    pub up_after: u32,
    /// Regions with an incident at once that make a global incident ([`super::quorum`]).
    pub down_regions: u32,
}

/// A target checked from a region: `(target_id, region_id)`.
pub type Series = (i32, i16);

/// A stored check, as incidents see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its slot (`checked_at`).
    pub at: SystemTime,
    /// Why it is down (`pipe_down_cause`); `None` when it is up.
    pub cause: Option<String>,
}

/// One incident, as `target_incidents` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The first failed check's slot.
    pub started_at: SystemTime,
    /// The slot of the failure that made it an incident (the `down_after`-th in a row).
    pub confirmed_at: SystemTime,
    /// The first good check's slot; `None` while open.
    pub ended_at: Option<SystemTime>,
    /// The slot of the good check that ended it (the `up_after`-th in a row).
    pub closed_at: Option<SystemTime>,
    /// Failed checks from its start to its end.
    pub failed_checks: u32,
    /// The first failure's cause (`pipe_down_cause`).
    pub cause: String,
}

/// Where a series stands after its latest check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The slot of the latest check taken.
    pub last: Option<SystemTime>,
    /// Failures in a row while no incident is open.
    pub failures: u32,
    /// The first of those failures: its slot and cause.
    pub first_failure: Option<(SystemTime, String)>,
    /// The open incident.
    pub open: Option<Incident>,
    /// Good checks in a row since the open incident's latest failure.
    pub good: u32,
    /// The first of those good checks' slot.
    pub first_good: Option<SystemTime>,
}

impl State {
    /// The clean state after a good check at `at` outside any incident (or before any check).
    pub fn clean(at: Option<SystemTime>) -> Self {
        Self {
            last: at,
            ..Self::default()
        }
    }

    /// Takes one check, newer than `last`; incidents opened, changed or closed by it are put
    /// in `changed`, by start.
    pub fn apply(
        &mut self,
        check: &Outcome,
        thresholds: Thresholds,
        changed: &mut BTreeMap<SystemTime, Incident>,
    ) {
        debug_assert!(self.last.is_none_or(|last| check.at > last));
        self.last = Some(check.at);
        match (&mut self.open, &check.cause) {
            (None, None) => {
                self.failures = 0;
                self.first_failure = None;
            }
            (None, Some(cause)) => {
                self.failures += 1;
                let (started_at, cause) = self
                    .first_failure
                    .get_or_insert_with(|| (check.at, cause.clone()))
                    .clone();
                if self.failures >= thresholds.down_after {
                    let incident = Incident {
                        started_at,
                        confirmed_at: check.at,
                        ended_at: None,
                        closed_at: None,
                        failed_checks: self.failures,
                        cause,
                    };
                    changed.insert(started_at, incident.clone());
                    self.open = Some(incident);
                    self.failures = 0;
                    self.first_failure = None;
                    self.good = 0;
                    self.first_good = None;
                }
            }
            (Some(open), Some(_)) => {
                open.failed_checks += 1;
                self.good = 0;
                self.first_good = None;
                changed.insert(open.started_at, open.clone());
            }
            (Some(open), None) => {
                self.good += 1;
                let first_good = *self.first_good.get_or_insert(check.at);
                if self.good >= thresholds.up_after {
                    open.ended_at = Some(first_good);
                    open.closed_at = Some(check.at);
                    changed.insert(open.started_at, open.clone());
                    self.open = None;
                    self.good = 0;
                    self.first_good = None;
                }
            }
        }
    }
}

/// Runs a whole sequence from a clean state: what a replay computes.
pub fn replay(
    checks: &[Outcome],
    thresholds: Thresholds,
) -> (State, BTreeMap<SystemTime, Incident>) {
    let mut state = State::default();
    let mut changed = BTreeMap::new();
    for check in checks {
        state.apply(check, thresholds, &mut changed);
    }
    (state, changed)
}

/// The states of `series`, created where missing and locked until the transaction ends, with
/// their targets' global incidents ([`quorum::lock_targets`]).
pub fn lock_states(
    tx: &mut impl GenericClient,
    series: &[Series],
) -> Result<HashMap<Series, State>, postgres::Error> {
    let mut distinct: Vec<i32> = series.iter().map(|s| s.0).collect();
    distinct.sort_unstable();
    distinct.dedup();
    quorum::lock_targets(tx, &distinct)?;
    let targets: Vec<i32> = series.iter().map(|s| s.0).collect();
    let regions: Vec<i16> = series.iter().map(|s| s.1).collect();
    tx.execute(
        "INSERT INTO incident_state (target_id, region_id)
         SELECT * FROM unnest($1::int4[], $2::int2[]) AS s(t, r) ORDER BY t, r
         ON CONFLICT DO NOTHING",
        &[&targets, &regions],
    )?;
    let rows = tx.query(
        "SELECT s.target_id, s.region_id, s.last_checked_at, s.failures, s.first_failure_at,
                s.first_cause, s.open_started_at, s.good_checks, s.first_good_at,
                i.confirmed_at, i.failed_checks, i.cause
         FROM incident_state s
         LEFT JOIN target_incidents i ON i.target_id = s.target_id
              AND i.region_id = s.region_id AND i.started_at = s.open_started_at
         WHERE (s.target_id, s.region_id) IN (SELECT * FROM unnest($1::int4[], $2::int2[]))
         ORDER BY s.target_id, s.region_id
         FOR UPDATE OF s",
        &[&targets, &regions],
    )?;
    let count = |row: &postgres::Row, i: usize| row.get::<_, i32>(i).max(0) as u32;
    Ok(rows
        .iter()
        .map(|row| {
            let open = row
                .get::<_, Option<SystemTime>>(6)
                .map(|started_at| Incident {
                    started_at,
                    confirmed_at: row.get::<_, Option<SystemTime>>(9).unwrap_or(started_at),
                    ended_at: None,
                    closed_at: None,
                    failed_checks: row.get::<_, Option<i32>>(10).unwrap_or(0).max(0) as u32,
                    cause: row.get::<_, Option<String>>(11).unwrap_or_default(),
                });
            let first_failure = row
                .get::<_, Option<SystemTime>>(4)
                .map(|at| (at, row.get::<_, Option<String>>(5).unwrap_or_default()));
            let state = State {
                last: row.get(2),
                failures: count(row, 3),
                first_failure,
                open,
                good: count(row, 7),
                first_good: row.get(8),
            };
            ((row.get(0), row.get(1)), state)
        })
        .collect())
}

/// Rewinds each series to the clean state before its time: its latest good check before then
/// that no incident covers (the machine's state right after one is clean), or its beginning.
/// Forgets the incidents that started after that point, and returns the states to replay the
/// later checks from. One statement for each step, however many series. Rewound to its
/// beginning, a series keeps the incidents older than its oldest stored check: their checks
/// are gone (`retention`), and a replay could not write them again. The incidents forgotten
/// are noted in `touched`.
pub fn rewind(
    tx: &mut impl GenericClient,
    before: &[(Series, SystemTime)],
    touched: &mut Touched,
) -> Result<HashMap<Series, State>, postgres::Error> {
    if before.is_empty() {
        return Ok(HashMap::new());
    }
    let targets: Vec<i32> = before.iter().map(|(s, _)| s.0).collect();
    let regions: Vec<i16> = before.iter().map(|(s, _)| s.1).collect();
    let times: Vec<SystemTime> = before.iter().map(|(_, t)| *t).collect();
    let rows = tx.query(
        "SELECT a.t, a.r, (
             SELECT c.checked_at FROM checks c
             WHERE c.target_id = a.t AND c.region_id = a.r AND c.checked_at < a.before AND c.up
               AND NOT EXISTS (
                   SELECT 1 FROM target_incidents i
                   WHERE i.target_id = a.t AND i.region_id = a.r AND i.started_at <= c.checked_at
                     AND (i.closed_at IS NULL OR c.checked_at < i.closed_at))
             ORDER BY c.checked_at DESC LIMIT 1),
             (SELECT min(c.checked_at) FROM checks c WHERE c.target_id = a.t AND c.region_id = a.r)
         FROM unnest($1::int4[], $2::int2[], $3::timestamptz[]) AS a(t, r, before)",
        &[&targets, &regions, &times],
    )?;
    let anchors: Vec<Option<SystemTime>> = rows.iter().map(|r| r.get(2)).collect();
    let oldest: Vec<Option<SystemTime>> = rows.iter().map(|r| r.get(3)).collect();
    for row in tx.query(
        "DELETE FROM target_incidents i
         USING unnest($1::int4[], $2::int2[], $3::timestamptz[], $4::timestamptz[])
             AS a(t, r, after, oldest)
         WHERE i.target_id = a.t AND i.region_id = a.r
           AND CASE WHEN a.after IS NULL THEN i.started_at >= a.oldest
                    ELSE i.started_at > a.after END
         RETURNING i.target_id, i.started_at",
        &[&targets, &regions, &anchors, &oldest],
    )? {
        touched.touch(row.get(0), row.get(1));
    }
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), State::clean(r.get(2))))
        .collect())
}

/// The stored checks of each series after its time (all of them for `None`), up to `until`.
pub fn outcomes(
    tx: &mut impl GenericClient,
    after: &[(Series, Option<SystemTime>)],
    until: Option<SystemTime>,
) -> Result<BTreeMap<Series, Vec<Outcome>>, postgres::Error> {
    let mut found: BTreeMap<Series, Vec<Outcome>> = BTreeMap::new();
    if after.is_empty() {
        return Ok(found);
    }
    let targets: Vec<i32> = after.iter().map(|(s, _)| s.0).collect();
    let regions: Vec<i16> = after.iter().map(|(s, _)| s.1).collect();
    let times: Vec<Option<SystemTime>> = after.iter().map(|(_, t)| *t).collect();
    for row in tx.query(
        "SELECT c.target_id, c.region_id, c.checked_at,
                pipe_down_cause(c.up, c.error_kind, c.status_code, c.regex_matched,
                                c.latency_class, c.cert_expires_soon)
         FROM unnest($1::int4[], $2::int2[], $3::timestamptz[]) AS a(t, r, after)
         JOIN checks c ON c.target_id = a.t AND c.region_id = a.r
              AND (a.after IS NULL OR c.checked_at > a.after)
              AND ($4::timestamptz IS NULL OR c.checked_at < $4)
              AND c.probe_fault IS NULL
         ORDER BY 1, 2, 3",
        &[&targets, &regions, &times, &until],
    )? {
        found
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(Outcome {
                at: row.get(2),
                cause: row.get(3),
            });
    }
    Ok(found)
}

/// Writes incidents and states, noting the changed incidents in `touched`.
pub fn save(
    tx: &mut impl GenericClient,
    changed: &[(Series, Incident)],
    states: &[(Series, State)],
    touched: &mut Touched,
) -> Result<(), postgres::Error> {
    for (series, incident) in changed {
        touched.touch(series.0, incident.started_at);
    }
    if !changed.is_empty() {
        let col = |f: &dyn Fn(&(Series, Incident)) -> Option<SystemTime>| {
            changed.iter().map(f).collect::<Vec<_>>()
        };
        let targets: Vec<i32> = changed.iter().map(|(s, _)| s.0).collect();
        let regions: Vec<i16> = changed.iter().map(|(s, _)| s.1).collect();
        let failed: Vec<i32> = changed
            .iter()
            .map(|(_, i)| i32::try_from(i.failed_checks).unwrap_or(i32::MAX))
            .collect();
        let causes: Vec<&str> = changed.iter().map(|(_, i)| i.cause.as_str()).collect();
        tx.execute(
            "INSERT INTO target_incidents AS i (target_id, region_id, started_at, confirmed_at,
                 ended_at, closed_at, failed_checks, cause)
             SELECT * FROM unnest($1::int4[], $2::int2[], $3::timestamptz[], $4::timestamptz[],
                                  $5::timestamptz[], $6::timestamptz[], $7::int4[], $8::text[])
                 AS n(t, r, s, c, e, x, f, k)
             ORDER BY t, r, s
             ON CONFLICT (target_id, region_id, started_at) DO UPDATE SET
                 confirmed_at = excluded.confirmed_at, ended_at = excluded.ended_at,
                 closed_at = excluded.closed_at, failed_checks = excluded.failed_checks,
                 cause = excluded.cause",
            &[
                &targets,
                &regions,
                &col(&|(_, i)| Some(i.started_at)),
                &col(&|(_, i)| Some(i.confirmed_at)),
                &col(&|(_, i)| i.ended_at),
                &col(&|(_, i)| i.closed_at),
                &failed,
                &causes,
            ],
        )?;
    }
    if !states.is_empty() {
        let col = |f: &dyn Fn(&State) -> Option<SystemTime>| {
            states.iter().map(|(_, s)| f(s)).collect::<Vec<_>>()
        };
        let n = |f: &dyn Fn(&State) -> u32| {
            states
                .iter()
                .map(|(_, s)| i32::try_from(f(s)).unwrap_or(i32::MAX))
                .collect::<Vec<_>>()
        };
        let targets: Vec<i32> = states.iter().map(|(s, _)| s.0).collect();
        let regions: Vec<i16> = states.iter().map(|(s, _)| s.1).collect();
        let causes: Vec<Option<&str>> = states
            .iter()
            .map(|(_, s)| s.first_failure.as_ref().map(|(_, c)| c.as_str()))
            .collect();
        tx.execute(
            "UPDATE incident_state s SET last_checked_at = n.l, failures = n.f,
                 first_failure_at = n.ff, first_cause = n.fc, open_started_at = n.o,
                 good_checks = n.g, first_good_at = n.fg
             FROM unnest($1::int4[], $2::int2[], $3::timestamptz[], $4::int4[],
                         $5::timestamptz[], $6::text[], $7::timestamptz[], $8::int4[],
                         $9::timestamptz[]) AS n(t, r, l, f, ff, fc, o, g, fg)
             WHERE s.target_id = n.t AND s.region_id = n.r",
            &[
                &targets,
                &regions,
                &col(&|s| s.last),
                &n(&|s| s.failures),
                &col(&|s| s.first_failure.as_ref().map(|(at, _)| *at)),
                &causes,
                &col(&|s| s.open.as_ref().map(|i| i.started_at)),
                &n(&|s| s.good),
                &col(&|s| s.first_good),
            ],
        )?;
    }
    Ok(())
}

/// Adds a transaction's stored checks to the incidents of their series, and their targets'
/// global incidents.
pub fn add(
    tx: &mut impl GenericClient,
    thresholds: Thresholds,
    stored: &[StoredCheck],
) -> Result<(), postgres::Error> {
    if stored.is_empty() {
        return Ok(());
    }
    let mut by_series: BTreeMap<Series, Vec<Outcome>> = BTreeMap::new();
    for check in stored {
        if let Some(outcome) = check.outcome() {
            by_series.entry(check.series).or_default().push(outcome);
        }
    }
    if by_series.is_empty() {
        return Ok(());
    }
    let series: Vec<Series> = by_series.keys().copied().collect();
    let mut states = lock_states(tx, &series)?;
    // Series given a check older than what they have seen: replayed from a clean state
    // before it, with every stored check since.
    let late: Vec<(Series, SystemTime)> = by_series
        .iter()
        .filter_map(|(series, checks)| {
            let earliest = checks.iter().map(|c| c.at).min()?;
            let last = states.get(series).and_then(|s| s.last)?;
            (earliest <= last).then_some((*series, earliest))
        })
        .collect();
    let mut touched = Touched::default();
    let rewound = rewind(tx, &late, &mut touched)?;
    let from: Vec<(Series, Option<SystemTime>)> =
        rewound.iter().map(|(s, state)| (*s, state.last)).collect();
    let mut replays = outcomes(tx, &from, None)?;
    states.extend(rewound);
    let (mut changed, mut saved) = (Vec::new(), Vec::with_capacity(series.len()));
    for (series, mut checks) in by_series {
        let mut state = states.remove(&series).unwrap_or_default();
        match replays.remove(&series) {
            Some(replay) => checks = replay,
            None => checks.sort_by_key(|c| c.at),
        }
        let mut touched = BTreeMap::new();
        for check in &checks {
            state.apply(check, thresholds, &mut touched);
        }
        changed.extend(touched.into_values().map(|i| (series, i)));
        saved.push((series, state));
    }
    save(tx, &changed, &saved, &mut touched)?;
    quorum::update(tx, thresholds.down_regions, &touched)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const T: Thresholds = Thresholds {
        down_after: 3,
        up_after: 1,
        down_regions: 1,
    };

    fn at(slot: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + slot * 30)
    }

    /// A script: `.` good, `t` timeout, `5` http_503.
    fn script(s: &str) -> Vec<Outcome> {
        s.chars()
            .enumerate()
            .map(|(i, c)| Outcome {
                at: at(i as u64),
                cause: match c {
                    '.' => None,
                    't' => Some("timeout".into()),
                    '5' => Some("http_503".into()),
                    other => panic!("{other}"),
                },
            })
            .collect()
    }

    fn incidents(s: &str, thresholds: Thresholds) -> Vec<Incident> {
        replay(&script(s), thresholds).1.into_values().collect()
    }

    #[test]
    fn two_failures_are_no_incident_three_are() {
        assert!(incidents("..tt..tt.", T).is_empty());
        let found = incidents("..5tt.t..", T);
        assert_eq!(
            found,
            [Incident {
                started_at: at(2),
                confirmed_at: at(4),
                ended_at: Some(at(5)),
                closed_at: Some(at(5)),
                failed_checks: 3,
                cause: "http_503".into(),
            }]
        );
    }

    #[test]
    fn flapping_within_an_incident_keeps_it_open_until_up_after_good_checks() {
        let thresholds = Thresholds {
            down_after: 2,
            up_after: 3,
            down_regions: 1,
        };
        let found = incidents("tt.t..t...t", thresholds);
        assert_eq!(found.len(), 1, "{found:?}");
        let incident = &found[0];
        assert_eq!(incident.started_at, at(0));
        assert_eq!(incident.confirmed_at, at(1));
        assert_eq!(
            incident.ended_at,
            Some(at(7)),
            "the first of three good ones"
        );
        assert_eq!(incident.closed_at, Some(at(9)));
        assert_eq!(incident.failed_checks, 4);
        let (state, _) = replay(&script("tt.t..t...t"), thresholds);
        assert_eq!(state.failures, 1, "the last failure starts a new run");
    }

    #[test]
    fn an_incident_still_open_at_the_end_has_no_end() {
        let found = incidents("...ttttt", T);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ended_at, None);
        assert_eq!(found[0].failed_checks, 5);
    }

    #[test]
    fn any_batching_gives_the_same_incidents() {
        let checks = script("..ttt.tt.5555..t.tttt.");
        let (whole_state, whole) = replay(&checks, T);
        for cut in 1..checks.len() {
            let mut state = State::default();
            let mut changed = BTreeMap::new();
            for part in [&checks[..cut], &checks[cut..]] {
                // Each part is a transaction: its changes are saved, the state carried.
                let mut touched = BTreeMap::new();
                for check in part {
                    state.apply(check, T, &mut touched);
                }
                changed.extend(touched);
            }
            assert_eq!(changed, whole, "cut at {cut}");
            assert_eq!(state, whole_state);
        }
    }
}
