//! Rollups: per target and UTC hour, and per target and UTC day, what its checks did (tables
//! `rollups_hourly` and `rollups_daily`, migration 3).
//!
//! The sink adds to them, in the transaction that stores the checks, what the checks that
//! transaction actually inserted hold (`INSERT … RETURNING`): a redelivered check already
//! there adds nothing. The deltas are summed here, where the checks already are, and sent as
//! one upsert per table; `pipe rollups rebuild` sums raw rows with the same code.
//!
//! Their latency histograms are [`super::histogram`]'s.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::GenericClient;

use super::histogram::{latency_bucket, Histogram};
use super::StoredCheck;

/// Why a check was down, as the rollups count it: the columns `down_*`, in order.
pub const CAUSES: [&str; 15] = [
    "timeout",
    "dns",
    "connect",
    "tls",
    "too_many_redirects",
    "body_too_large",
    "other",
    "http_1xx",
    "http_2xx",
    "http_3xx",
    "http_4xx",
    "http_5xx",
    "regex_mismatch",
    "latency",
    "certificate",
];

/// The column of a cause from `pipe_down_cause` (`http_503` counts as `http_5xx`).
fn cause_column(cause: &str) -> usize {
    let class = match cause.strip_prefix("http_") {
        Some(status) => match status.as_bytes().first() {
            Some(b'1') => "http_1xx",
            Some(b'2') => "http_2xx",
            Some(b'3') => "http_3xx",
            Some(b'4') => "http_4xx",
            _ => "http_5xx",
        },
        None => cause,
    };
    CAUSES.iter().position(|c| *c == class).unwrap_or(OTHER)
}

/// The column of a cause this version does not know.
const OTHER: usize = 6;

/// What a set of checks adds to one rollup row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Checks.
    pub checks: i32,
    /// Checks that were up.
    pub up_checks: i32,
    /// Checks that were down, by cause ([`CAUSES`]).
    pub down: [i32; CAUSES.len()],
    /// Probe faults: checks of a checker whose own network was down, in none of the above.
    pub probe_faults: i32,
    /// Checks that got a response.
    pub responses: i32,
    /// Their response times: sum, shortest, longest, and histogram.
    pub response_time_sum_us: i64,
    /// See `response_time_sum_us`.
    pub response_time_min_us: Option<i32>,
    /// See `response_time_sum_us`.
    pub response_time_max_us: Option<i32>,
    /// See `response_time_sum_us`.
    pub histogram: Histogram,
}

impl Delta {
    fn add(&mut self, check: &StoredCheck) {
        if check.probe_fault {
            // Not a check of the target: its response time is the checker's network's too.
            self.probe_faults += 1;
            return;
        }
        self.checks += 1;
        if check.up {
            self.up_checks += 1;
        } else {
            self.down[cause_column(check.cause.as_deref().unwrap_or("other"))] += 1;
        }
        if check.responded {
            let us = check.response_time_us;
            self.responses += 1;
            self.response_time_sum_us += i64::from(us);
            self.response_time_min_us = Some(self.response_time_min_us.map_or(us, |m| m.min(us)));
            self.response_time_max_us = Some(self.response_time_max_us.map_or(us, |m| m.max(us)));
            self.histogram.add(latency_bucket(us));
        }
    }
}

/// Rollup rows by (target, bucket start).
pub type Deltas = BTreeMap<(i32, SystemTime), Delta>;

fn truncate(at: SystemTime, unit: u64) -> SystemTime {
    let seconds = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_nanos().div_ceil(1_000_000_000) as i64),
    };
    let start = seconds.div_euclid(unit as i64) * unit as i64;
    if start >= 0 {
        UNIX_EPOCH + Duration::from_secs(start as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(start.unsigned_abs())
    }
}

/// The hourly and daily deltas of `checks`.
pub fn deltas<'a>(checks: impl IntoIterator<Item = &'a StoredCheck>) -> (Deltas, Deltas) {
    let (mut hourly, mut daily) = (Deltas::new(), Deltas::new());
    for check in checks {
        hourly
            .entry((check.series.0, truncate(check.at, 3600)))
            .or_default()
            .add(check);
        daily
            .entry((check.series.0, truncate(check.at, 86_400)))
            .or_default()
            .add(check);
    }
    (hourly, daily)
}

fn upsert_sql(table: &str) -> String {
    let downs: Vec<String> = CAUSES.iter().map(|c| format!("down_{c}")).collect();
    let mut columns = vec!["target_id", "bucket", "checks", "up_checks"];
    columns.extend(downs.iter().map(String::as_str));
    columns.extend([
        "probe_faults",
        "responses",
        "response_time_sum_us",
        "response_time_min_us",
        "response_time_max_us",
        "latency_histogram",
    ]);
    let mut types = vec!["int4", "timestamptz", "int4", "int4"];
    types.extend(std::iter::repeat_n("int4", CAUSES.len()));
    types.extend(["int4", "int4", "int8", "int4", "int4", "text"]);
    let params: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", i + 1))
        .collect();
    let mut selected: Vec<String> = columns[..columns.len() - 1]
        .iter()
        .map(|c| c.to_string())
        .collect();
    selected.push("latency_histogram::int4[]".into());
    let sums: Vec<String> = columns[2..columns.len() - 3]
        .iter()
        .map(|c| format!("{c} = r.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} AS r ({columns})
         SELECT {selected} FROM unnest({params}) AS d({columns})
         ORDER BY target_id, bucket
         ON CONFLICT (target_id, bucket) DO UPDATE SET {sums},
             response_time_min_us = least(r.response_time_min_us, excluded.response_time_min_us),
             response_time_max_us = greatest(r.response_time_max_us, excluded.response_time_max_us),
             latency_histogram = pipe_histogram_merge(r.latency_histogram, excluded.latency_histogram)",
        columns = columns.join(", "),
        selected = selected.join(", "),
        params = params.join(", "),
        sums = sums.join(", "),
    )
}

fn upsert(tx: &mut impl GenericClient, sql: &str, deltas: &Deltas) -> Result<(), postgres::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&Delta) -> i32| deltas.values().map(f).collect::<Vec<i32>>();
    let targets: Vec<i32> = deltas.keys().map(|k| k.0).collect();
    let buckets: Vec<SystemTime> = deltas.keys().map(|k| k.1).collect();
    let checks = column(&|d| d.checks);
    let up = column(&|d| d.up_checks);
    let down: Vec<Vec<i32>> = (0..CAUSES.len())
        .map(|i| deltas.values().map(|d| d.down[i]).collect())
        .collect();
    let probe_faults = column(&|d| d.probe_faults);
    let responses = column(&|d| d.responses);
    let sums: Vec<i64> = deltas.values().map(|d| d.response_time_sum_us).collect();
    let mins: Vec<Option<i32>> = deltas.values().map(|d| d.response_time_min_us).collect();
    let maxes: Vec<Option<i32>> = deltas.values().map(|d| d.response_time_max_us).collect();
    let histograms: Vec<String> = deltas.values().map(|d| d.histogram.to_sql()).collect();
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        vec![&targets, &buckets, &checks, &up];
    params.extend(
        down.iter()
            .map(|d| d as &(dyn postgres::types::ToSql + Sync)),
    );
    params.extend([
        &probe_faults as &(dyn postgres::types::ToSql + Sync),
        &responses,
        &sums,
        &mins,
        &maxes,
        &histograms,
    ]);
    tx.execute(sql, &params)?;
    Ok(())
}

/// Adds `checks` to the hourly and daily rollups.
pub fn add<'a>(
    tx: &mut impl GenericClient,
    checks: impl IntoIterator<Item = &'a StoredCheck>,
) -> Result<(), postgres::Error> {
    static SQL: OnceLock<(String, String)> = OnceLock::new();
    let (hourly_sql, daily_sql) =
        SQL.get_or_init(|| (upsert_sql("rollups_hourly"), upsert_sql("rollups_daily")));
    let (hourly, daily) = deltas(checks);
    upsert(tx, hourly_sql, &hourly)?;
    upsert(tx, daily_sql, &daily)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_count_in_their_column() {
        assert_eq!(CAUSES[cause_column("timeout")], "timeout");
        assert_eq!(CAUSES[cause_column("http_503")], "http_5xx");
        assert_eq!(CAUSES[cause_column("http_301")], "http_3xx");
        assert_eq!(CAUSES[cause_column("regex_mismatch")], "regex_mismatch");
        assert_eq!(CAUSES[OTHER], "other");
        assert_eq!(CAUSES[cause_column("something new")], "other");
    }

    #[test]
    fn hours_and_days_are_utc() {
        let at = UNIX_EPOCH + Duration::from_secs(1_764_547_230); // 2025-12-01T00:00:30Z
        assert_eq!(
            truncate(at, 3600),
            UNIX_EPOCH + Duration::from_secs(1_764_547_200)
        );
        assert_eq!(
            truncate(at, 86_400),
            UNIX_EPOCH + Duration::from_secs(1_764_547_200)
        );
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            truncate(before, 3600),
            UNIX_EPOCH - Duration::from_secs(3600)
        );
    }
}
