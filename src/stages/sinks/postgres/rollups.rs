//! Rollups: per target and UTC hour, and per target and UTC day, what its checks did (tables
//! `rollups_hourly` and `rollups_daily`, migration 3).
//!
//! The sink adds to them, in the transaction that stores the checks, what the checks that
//! transaction actually inserted hold (`INSERT … RETURNING`): a redelivered check already
//! there adds nothing. The deltas are summed here, where the checks already are, and sent as
//! one upsert per table; `pipe rollups rebuild` sums raw rows with the same code.
//!
//! Latency histograms use the exponential buckets of Prometheus native histograms at schema 3
//! (base γ = 2^(1/8)): bucket i holds response times in (2^((i-1)/8), 2^(i/8)] milliseconds.
//! Read as 2γ^i/(γ+1), every quantile is within (γ-1)/(γ+1) = 4.33% of the true value, the
//! bound DDSketch (Masson, Rim and Lee, VLDB 2019) proves for this mapping. Times are whole
//! microseconds, so the bounds are a table of integers, the same here and in the migration's
//! `pipe_latency_bucket`: no floating point decides a bucket, on either side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::GenericClient;

use super::StoredCheck;

/// The lowest bucket: response times of 0 µs.
pub const FIRST_BUCKET: i32 = -80;

/// For buckets FIRST_BUCKET..=168, the longest time each holds, in whole microseconds:
/// floor(1000 · 2^(i/8)). Times above the last fall in bucket 169 (the integer column ends at
/// 35 minutes).
const UPPER_US: [i32; 249] = [
    0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12,
    13, 14, 15, 17, 18, 20, 22, 24, 26, 28, 31, 34, 37, 40, 44, 48, 52, 57, 62, 68, 74, 81, 88, 96,
    105, 114, 125, 136, 148, 162, 176, 192, 210, 229, 250, 272, 297, 324, 353, 385, 420, 458, 500,
    545, 594, 648, 707, 771, 840, 917, 1000, 1090, 1189, 1296, 1414, 1542, 1681, 1834, 2000, 2181,
    2378, 2593, 2828, 3084, 3363, 3668, 4000, 4362, 4756, 5187, 5656, 6168, 6727, 7336, 8000, 8724,
    9513, 10374, 11313, 12337, 13454, 14672, 16000, 17448, 19027, 20749, 22627, 24675, 26908,
    29344, 32000, 34896, 38054, 41498, 45254, 49350, 53817, 58688, 64000, 69792, 76109, 82997,
    90509, 98701, 107634, 117376, 128000, 139584, 152218, 165995, 181019, 197402, 215269, 234753,
    256000, 279169, 304437, 331990, 362038, 394805, 430538, 469506, 512000, 558339, 608874, 663981,
    724077, 789611, 861077, 939012, 1024000, 1116679, 1217748, 1327963, 1448154, 1579223, 1722155,
    1878024, 2048000, 2233359, 2435496, 2655927, 2896309, 3158447, 3444311, 3756048, 4096000,
    4466719, 4870992, 5311854, 5792618, 6316895, 6888623, 7512097, 8192000, 8933439, 9741984,
    10623709, 11585237, 12633791, 13777246, 15024194, 16384000, 17866878, 19483969, 21247419,
    23170475, 25267582, 27554493, 30048388, 32768000, 35733757, 38967938, 42494838, 46340950,
    50535164, 55108987, 60096776, 65536000, 71467514, 77935877, 84989677, 92681900, 101070328,
    110217974, 120193553, 131072000, 142935029, 155871754, 169979354, 185363800, 202140657,
    220435949, 240387107, 262144000, 285870059, 311743509, 339958708, 370727600, 404281314,
    440871899, 480774215, 524288000, 571740118, 623487019, 679917416, 741455200, 808562629,
    881743799, 961548431, 1048576000, 1143480236, 1246974039, 1359834832, 1482910400, 1617125258,
    1763487599, 1923096863, 2097152000,
];

/// The bucket of a response time in microseconds.
pub fn latency_bucket(us: i32) -> i32 {
    FIRST_BUCKET + UPPER_US.partition_point(|&upper| upper < us) as i32
}

/// The time a bucket stands for, in milliseconds: 2γ^i/(γ+1), computed as
/// `pipe_latency_bucket_ms` computes it.
pub fn bucket_ms(bucket: i32) -> f64 {
    2.0 * 2f64.powf(f64::from(bucket) / 8.0) / (1.0 + 2f64.powf(1.0 / 8.0))
}

/// A histogram of buckets, from its first non-empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    first: i32,
    counts: Vec<i32>,
}

impl Histogram {
    /// Counts one time in `bucket`.
    pub fn add(&mut self, bucket: i32) {
        if self.counts.is_empty() {
            self.first = bucket;
            self.counts.push(0);
        } else if bucket < self.first {
            let grow = (self.first - bucket) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = bucket;
        }
        let at = (bucket - self.first) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += 1;
    }

    /// From an array read from PostgreSQL: its lower bound (the first bucket) and its counts.
    pub fn from_parts(first: i32, counts: Vec<i32>) -> Self {
        Self { first, counts }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n != 0 {
                let bucket = other.first + i as i32;
                self.add(bucket);
                let at = (bucket - self.first) as usize;
                self.counts[at] += n - 1;
            }
        }
    }

    /// The q-quantile (0 < q ≤ 1) in milliseconds, as `pipe_histogram_quantile` reads it: the
    /// bucket of the ceil(q·n)-th smallest time. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.counts.iter().map(|n| i64::from(*n)).sum();
        if total == 0 {
            return None;
        }
        let wanted = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += i64::from(*n);
            if seen >= wanted {
                return Some(bucket_ms(self.first + i as i32));
            }
        }
        Some(bucket_ms(self.first + self.counts.len() as i32 - 1))
    }

    /// As PostgreSQL reads an array whose lower bound is the first bucket: `[40:42]={3,0,1}`.
    pub fn to_sql(&self) -> String {
        if self.counts.is_empty() {
            return "{}".to_owned();
        }
        let mut text = format!(
            "[{}:{}]={{",
            self.first,
            self.first + self.counts.len() as i32 - 1
        );
        for (i, n) in self.counts.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{n}");
        }
        text.push('}');
        text
    }
}

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
        "responses",
        "response_time_sum_us",
        "response_time_min_us",
        "response_time_max_us",
        "latency_histogram",
    ]);
    let mut types = vec!["int4", "timestamptz", "int4", "int4"];
    types.extend(std::iter::repeat_n("int4", CAUSES.len()));
    types.extend(["int4", "int8", "int4", "int4", "text"]);
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
        &responses as &(dyn postgres::types::ToSql + Sync),
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
    fn buckets_follow_the_exponential_bounds_exactly() {
        for (i, upper) in UPPER_US.iter().enumerate() {
            let bucket = FIRST_BUCKET + i as i32;
            let exact = 1000.0 * 2f64.powf(f64::from(bucket) / 8.0);
            assert!(
                f64::from(*upper) <= exact + 1e-6 && exact < f64::from(*upper) + 1.0,
                "bucket {bucket}: {upper} for {exact}"
            );
        }
        assert_eq!(latency_bucket(1000), 0, "1 ms closes bucket 0");
        assert_eq!(latency_bucket(1001), 1);
        assert_eq!(latency_bucket(60_000_000), 127, "60 s");
        assert_eq!(latency_bucket(0), FIRST_BUCKET);
        assert_eq!(latency_bucket(i32::MAX), 169);
    }

    #[test]
    fn every_bucket_reads_within_the_stated_error() {
        let bound = (2f64.powf(0.125) - 1.0) / (2f64.powf(0.125) + 1.0);
        for us in (1000..60_000_000).step_by(997) {
            let read = bucket_ms(latency_bucket(us));
            let error = (read - f64::from(us) / 1000.0).abs() / (f64::from(us) / 1000.0);
            assert!(error <= bound + 1e-12, "{us} µs read as {read} ms");
        }
    }

    #[test]
    fn the_migration_holds_the_same_bounds() {
        let sql = include_str!("../../../../migrations/0003_compact_checks_rollups_incidents.sql");
        let start = sql.find("-- BOUNDS").expect("the bounds in the migration");
        let list = &sql[start..];
        let list = &list[list.find('{').unwrap() + 1..list.find('}').unwrap()];
        let thresholds: Vec<i32> = list.split(',').map(|n| n.trim().parse().unwrap()).collect();
        let expected: Vec<i32> = UPPER_US.iter().map(|u| u + 1).collect();
        assert_eq!(thresholds, expected);
    }

    #[test]
    fn histograms_grow_both_ways_and_print_with_their_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.to_sql(), "{}");
        for bucket in [42, 40, 42, 44] {
            h.add(bucket);
        }
        assert_eq!(h.to_sql(), "[40:44]={1,0,2,0,1}");
    }

    #[test]
    fn merged_histograms_read_as_one() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        let mut both = Histogram::default();
        for (i, us) in [900, 1500, 250_000, 80_000, 80_000, 3_000_000]
            .iter()
            .enumerate()
        {
            let bucket = latency_bucket(*us);
            if i % 2 == 0 {
                a.add(bucket)
            } else {
                b.add(bucket)
            }
            both.add(bucket);
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(a.quantile(0.5), Some(bucket_ms(latency_bucket(80_000))));
        assert_eq!(a.quantile(1.0), Some(bucket_ms(latency_bucket(3_000_000))));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

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
