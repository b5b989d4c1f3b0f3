//! The postgres sink's hourly upkeep: partitions created ahead, expired ones dropped, the
//! index of each finished day compacted, and rollups and incidents past `rollup_retention`
//! deleted.
//!
//! Each step is small and idempotent, so a maintenance run cut short by a crash or a lost
//! connection is simply done again at the next one.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use slog::{info, Logger};

use super::write::{ensure_partitions, Cache, PgPool, WriteError};
use crate::monitor::history::{date_of_day, day_of};

/// Day indexes compacted per run at most: each takes about a second per million checks, while
/// the sink does not write; a backlog (after an upgrade) drains over a few runs.
const COMPACTIONS_PER_RUN: usize = 2;

/// Serializes compactions between writers sharing a database.
const COMPACTION_LOCK: i64 = 0x7069_7065_636f_6d70; // "pipecomp"

/// What maintenance does, from the sink's settings.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub partitions_ahead: u32,
    pub retention: Option<Duration>,
    pub rollup_retention: Option<Duration>,
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Report {
    pub partitions_dropped: i32,
    pub indexes_compacted: Vec<String>,
    pub rollups_deleted: u64,
    pub incidents_deleted: u64,
}

impl Report {
    pub fn log(&self, logger: &Logger) {
        if self.partitions_dropped > 0 {
            info!(logger, "expired partitions dropped"; "count" => self.partitions_dropped);
        }
        if !self.indexes_compacted.is_empty() {
            info!(logger, "indexes of finished days compacted"; "indexes" => ?self.indexes_compacted);
        }
        if self.rollups_deleted + self.incidents_deleted > 0 {
            info!(logger, "rollups past rollup_retention deleted";
                  "rollups" => self.rollups_deleted, "incidents" => self.incidents_deleted);
        }
    }
}

pub fn run(pool: &PgPool, cache: &Mutex<Cache>, plan: &Plan) -> Result<Report, WriteError> {
    let mut client = pool.get()?;
    let mut report = Report::default();
    let now = SystemTime::now();
    let today = day_of(now);
    let days: Vec<i64> = (today - 1..=today + i64::from(plan.partitions_ahead)).collect();
    ensure_partitions(&mut client, days.iter().copied())?;
    cache.lock().expect("not poisoned").days.extend(days);

    if let Some(retention) = plan.retention {
        let cutoff = today - (retention.as_secs() / 86_400) as i64;
        let row = client.query_one(
            "SELECT pipe_drop_check_partitions_before(($1::timestamptz AT TIME ZONE 'UTC')::date)",
            &[&date_of_day(cutoff)],
        )?;
        report.partitions_dropped = row.get(0);
        cache
            .lock()
            .expect("not poisoned")
            .days
            .retain(|d| *d >= cutoff);
    }

    report.indexes_compacted = compact(&mut client, now)?;

    if let Some(retention) = plan.rollup_retention {
        let cutoff = date_of_day(today - (retention.as_secs() / 86_400) as i64);
        report.rollups_deleted = client
            .execute("DELETE FROM rollups_hourly WHERE bucket < $1", &[&cutoff])?
            + client.execute("DELETE FROM rollups_daily WHERE bucket < $1", &[&cutoff])?;
        report.incidents_deleted = client.execute(
            "DELETE FROM target_incidents WHERE closed_at < $1",
            &[&cutoff],
        )? + client.execute(
            "DELETE FROM target_global_incidents WHERE ended_at < $1",
            &[&cutoff],
        )?;
    }
    Ok(report)
}

/// Rebuilds, full, the index of days that ended more than two hours ago (late checks are
/// few by then), a few per run. REINDEX CONCURRENTLY lets other writers insert meanwhile.
fn compact(client: &mut postgres::Client, now: SystemTime) -> Result<Vec<String>, WriteError> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&COMPACTION_LOCK])?
        .get(0);
    if !locked {
        return Ok(Vec::new());
    }
    let result = (|| {
        let before = now - Duration::from_secs(2 * 3600);
        let candidates: Vec<String> = client
            .query(
                "SELECT c::text FROM pipe_compaction_candidates(
                     ($1::timestamptz AT TIME ZONE 'UTC')::date) AS c",
                &[&before],
            )?
            .iter()
            .map(|row| row.get(0))
            .take(COMPACTIONS_PER_RUN)
            .collect();
        for index in &candidates {
            // The names come from pg_class through regclass, quoted where they need it. One
            // statement at a time: REINDEX CONCURRENTLY refuses a (multi-statement) transaction.
            client.batch_execute(&format!("ALTER INDEX {index} SET (fillfactor = 100)"))?;
            client.batch_execute(&format!("REINDEX INDEX CONCURRENTLY {index}"))?;
            client.batch_execute(&format!("COMMENT ON INDEX {index} IS 'pipe: compacted'"))?;
        }
        Ok::<_, postgres::Error>(candidates)
    })();
    client.execute("SELECT pg_advisory_unlock($1)", &[&COMPACTION_LOCK])?;
    Ok(result?)
}
