//! `pipe rollups rebuild`: recomputes rollups and incidents from the raw checks, for checks
//! stored before migration 3 or after a change of `down_after`/`up_after`.
//!
//! One transaction per UTC day, oldest first, so that a rebuild of years holds no lock and no
//! memory for long and can be stopped and run again: each day's rollups are deleted and
//! summed again by the sink's own code (`rollups::add`), and each series' incidents are
//! replayed through the sink's state machine, its state carried from day to day. Each day's
//! transaction holds the rebuild lock exclusively, which every batch of a running writer
//! shares: writers wait for a day to finish, then go on from what it left.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use postgres::GenericClient;

use super::incidents::{self, Incident, Outcome, Series, State, Thresholds};
use super::quorum::{self, Touched};
use super::{date_of_day, day_of, rollups, StoredCheck, REBUILD_LOCK, STORED_CHECK_COLUMNS};

/// Targets whose checks of one day are read at once (by id range): bounds the memory of
/// a day with thousands of targets.
const TARGETS_PER_READ: i32 = 100;

/// What a rebuild did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Days rebuilt.
    pub days: usize,
    /// Checks read.
    pub checks: u64,
    /// Incidents written (opened, changed or closed in the rebuilt range).
    pub incidents: u64,
}

/// Where a rebuild is, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Days done.
    pub done: usize,
    /// Days in all.
    pub days: usize,
    /// The day just done (UTC).
    pub day: SystemTime,
}

/// Rebuilds the days from `since` ago (whole UTC days; all days with checks for `None`) to
/// today. Blocking.
pub fn run(
    client: &mut postgres::Client,
    since: Option<Duration>,
    thresholds: Thresholds,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary, postgres::Error> {
    let now = SystemTime::now();
    let today = day_of(now);
    let first = since.map(|since| day_of(now - since));
    let days: Vec<i64> = client
        .query(
            "SELECT (to_date(substring(inhrelid::regclass::text FROM 8), 'YYYYMMDD')
                     - date '1970-01-01')::int8
             FROM pg_inherits WHERE inhparent = 'checks'::regclass
               AND inhrelid::regclass::text ~ '^checks_[0-9]{8}$'
             ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|row| row.get::<_, i64>(0))
        .filter(|day| *day <= today && first.is_none_or(|first| *day >= first))
        .collect();
    let (low, high): (Option<i32>, Option<i32>) = {
        let row = client.query_one("SELECT min(id), max(id) FROM targets", &[])?;
        (row.get(0), row.get(1))
    };
    let mut summary = Summary::default();
    let (Some(low), Some(high), Some(&start)) = (low, high, days.first()) else {
        return Ok(summary);
    };
    // Each series' state at the end of the last day rebuilt; a series met for the first time
    // is first rewound to a clean state before the first day.
    let mut states: HashMap<Series, State> = HashMap::new();
    for (i, &day) in days.iter().enumerate() {
        let from = date_of_day(day);
        let last = i + 1 == days.len();
        // The last day runs to the latest check, so no check falls between the rebuild and
        // the writer that goes on from its states.
        let until = (!last).then(|| date_of_day(day + 1));
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REBUILD_LOCK])?;
        tx.execute(
            "DELETE FROM rollups_hourly WHERE bucket >= $1 AND ($2::timestamptz IS NULL OR bucket < $2)",
            &[&from, &until],
        )?;
        tx.execute(
            "DELETE FROM rollups_daily WHERE bucket >= $1 AND ($2::timestamptz IS NULL OR bucket < $2)",
            &[&from, &until],
        )?;
        let mut chunk = low;
        while chunk <= high {
            let next = chunk.saturating_add(TARGETS_PER_READ);
            let checks = read(&mut tx, (chunk, next, from, until))?;
            summary.checks += checks.len() as u64;
            rollups::add(&mut tx, &checks)?;
            summary.incidents += replay_incidents(
                &mut tx,
                &checks,
                date_of_day(start),
                thresholds,
                &mut states,
            )?;
            chunk = next;
        }
        tx.commit()?;
        summary.days += 1;
        progress(&Progress {
            done: i + 1,
            days: days.len(),
            day: from,
        });
    }
    Ok(summary)
}

/// Target ids `[.0, .1)` and slots `[.2, .3)` (no end for `None`).
type Range = (i32, i32, SystemTime, Option<SystemTime>);

/// The stored checks in `range`, by series and slot.
fn read(tx: &mut impl GenericClient, range: Range) -> Result<Vec<StoredCheck>, postgres::Error> {
    Ok(tx
        .query(
            &format!(
                "SELECT target_id, region_id, checked_at, {STORED_CHECK_COLUMNS}
                 FROM checks
                 WHERE target_id >= $1 AND target_id < $2 AND checked_at >= $3
                   AND ($4::timestamptz IS NULL OR checked_at < $4)
                 ORDER BY target_id, region_id, checked_at"
            ),
            &[&range.0, &range.1, &range.2, &range.3],
        )?
        .iter()
        .map(StoredCheck::from_row)
        .collect())
}

fn replay_incidents(
    tx: &mut impl GenericClient,
    checks: &[StoredCheck],
    start: SystemTime,
    thresholds: Thresholds,
    states: &mut HashMap<Series, State>,
) -> Result<u64, postgres::Error> {
    let mut by_series: BTreeMap<Series, Vec<Outcome>> = BTreeMap::new();
    for check in checks {
        if let Some(outcome) = check.outcome() {
            by_series.entry(check.series).or_default().push(outcome);
        }
    }
    if by_series.is_empty() {
        return Ok(0);
    }
    let series: Vec<Series> = by_series.keys().copied().collect();
    // Creates the state rows a database upgraded from migration 2 does not have yet.
    incidents::lock_states(tx, &series)?;
    // Series met for the first time: from a clean state before the first rebuilt day, with
    // the checks between it and that day.
    let first_seen: Vec<(Series, SystemTime)> = series
        .iter()
        .filter(|s| !states.contains_key(s))
        .map(|s| (*s, start))
        .collect();
    let mut touched = Touched::default();
    let rewound = incidents::rewind(tx, &first_seen, &mut touched)?;
    let from: Vec<(Series, Option<SystemTime>)> =
        rewound.iter().map(|(s, state)| (*s, state.last)).collect();
    let mut before = incidents::outcomes(tx, &from, Some(start))?;
    states.extend(rewound);
    let mut changed: Vec<(Series, Incident)> = Vec::new();
    let mut saved = Vec::with_capacity(series.len());
    for (series, checks) in by_series {
        let mut touched = BTreeMap::new();
        let mut state = states.remove(&series).unwrap_or_default();
        for check in before.remove(&series).iter().flatten().chain(&checks) {
            state.apply(check, thresholds, &mut touched);
        }
        changed.extend(touched.into_values().map(|i| (series, i)));
        saved.push((series, state.clone()));
        states.insert(series, state);
    }
    incidents::save(tx, &changed, &saved, &mut touched)?;
    let globals = quorum::update(tx, thresholds.down_regions, &touched)?;
    Ok(changed.len() as u64 + globals)
}
