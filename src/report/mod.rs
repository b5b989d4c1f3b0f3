//! `pipe report`: uptime, latency and incidents of the targets over a range of time, from the
//! rollups and incidents the writer keeps (migration 3), in a terminal table, as JSON, or as a
//! self-contained HTML page.
//!
//! Only the rollups and the incidents (regional and global) are read, never a scan of raw checks: a report of
//! 1,000 targets over 30 days reads 30,000 daily rows. The one exception is each target's last
//! result, found through the primary key of `checks` (one index probe per target and region,
//! limited to the two days before the end of the range). Buckets are hours for ranges up to 7
//! days and days beyond; a range is widened to whole buckets.
//!
//! [`load`] builds a [`Report`]; [`table`], [`html`] and serde (JSON, `docs/report.md`) render
//! it. All three show the same figures, computed once here.

pub mod html;
pub mod table;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::monitor::check::rfc3339_millis;
use crate::monitor::history::histogram::Histogram;

/// Longest range reported in hourly buckets.
const HOURLY_UP_TO: Duration = Duration::from_secs(7 * 86_400);

/// What to report on.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start of the range.
    pub since: SystemTime,
    /// End of the range.
    pub until: SystemTime,
    /// Target names; empty for all.
    pub targets: Vec<String>,
}

/// The size of the report's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketSize {
    /// An hour: ranges up to 7 days.
    Hour,
    /// A day (UTC): longer ranges.
    Day,
}

impl BucketSize {
    fn seconds(self) -> u64 {
        match self {
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    fn table(self) -> &'static str {
        match self {
            Self::Hour => "rollups_hourly",
            Self::Day => "rollups_daily",
        }
    }
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Start of the range, as asked.
    #[serde(with = "rfc3339_millis")]
    pub since: SystemTime,
    /// End of the range, as asked.
    #[serde(with = "rfc3339_millis")]
    pub until: SystemTime,
    /// The size of `series` buckets.
    pub bucket: BucketSize,
    /// When the report was made.
    #[serde(with = "rfc3339_millis")]
    pub generated_at: SystemTime,
    /// One per target, worst first (lowest uptime, then highest p95).
    pub targets: Vec<TargetReport>,
}

/// One target's figures over the range.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Its name.
    pub target: String,
    /// Checks made.
    pub checks: u64,
    /// Checks that were up.
    pub up_checks: u64,
    /// Checks made while the checker's own network was down (`probe_fault`): in none of the
    /// other figures, which say nothing of the target for that time.
    pub probe_faults: u64,
    /// `up_checks` as a percentage of `checks`.
    pub uptime_pct: f64,
    /// Time spent in global incidents within the range, in seconds.
    pub downtime_s: f64,
    /// Response time quantiles over the checks that got a response, in milliseconds (within
    /// 4.33%); null without any.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p95_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Its latest check up to the end of the range (within two days of it), probe faults
    /// left out.
    pub last: Option<LastResult>,
    /// Regional incidents (each seen from one region) that overlap the range, oldest first.
    pub incidents: Vec<IncidentReport>,
    /// Global incidents (at least the writer's `down_regions` regions down at once) that
    /// overlap the range, oldest first.
    pub global_incidents: Vec<GlobalIncidentReport>,
    /// Per bucket, oldest first; buckets without checks are left out.
    pub series: Vec<BucketReport>,
}

/// A target's latest check.
#[derive(Debug, Clone, Serialize)]
pub struct LastResult {
    /// Its slot.
    #[serde(with = "rfc3339_millis")]
    pub at: SystemTime,
    /// Whether it was up.
    pub up: bool,
    /// Its status code, if a response arrived.
    pub status_code: Option<i16>,
    /// Why it was down (`pipe_down_cause`), if it was.
    pub cause: Option<String>,
    /// Its response time.
    pub response_time_ms: f64,
}

/// An incident of a target.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentReport {
    /// The region it was seen from; null without one.
    pub region: Option<String>,
    /// The first failed check's slot.
    #[serde(with = "rfc3339_millis")]
    pub started_at: SystemTime,
    /// The first good check's slot; null while open.
    #[serde(with = "rfc3339_millis::option")]
    pub ended_at: Option<SystemTime>,
    /// From its start to its end, or to the end of the range while open, in seconds.
    pub duration_s: f64,
    /// Failed checks it held.
    pub failed_checks: i32,
    /// The first failure's cause: an error kind, `http_503`, `regex_mismatch`…
    pub cause: String,
}

/// A global incident of a target: enough regions down at once.
#[derive(Debug, Clone, Serialize)]
pub struct GlobalIncidentReport {
    /// When the quorum of regions was reached.
    #[serde(with = "rfc3339_millis")]
    pub started_at: SystemTime,
    /// When it was lost; null while it holds.
    #[serde(with = "rfc3339_millis::option")]
    pub ended_at: Option<SystemTime>,
    /// From its start to its end, or to the end of the range while open, in seconds.
    pub duration_s: f64,
    /// The most regions down at once within it.
    pub regions: i16,
    /// The cause of its earliest regional incident.
    pub cause: String,
}

/// A target's figures in one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BucketReport {
    /// The bucket's start.
    #[serde(with = "rfc3339_millis")]
    pub start: SystemTime,
    /// Checks made.
    pub checks: u64,
    /// Checks that were up.
    pub up_checks: u64,
    /// `up_checks / checks`, 0–1.
    pub availability: f64,
    /// Median response time, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile response time, in milliseconds.
    pub p95_ms: Option<f64>,
}

/// Why no report could be made.
#[derive(Debug)]
pub enum ReportError {
    /// The database answered with an error.
    Database(postgres::Error),
    /// The database lacks what the report reads: migrations 3 to 5 have not all run.
    NotMigrated,
    /// No checks in the range.
    NoData {
        /// The first and last buckets the rollups hold, if any.
        held: Option<(SystemTime, SystemTime)>,
    },
    /// Target names the database does not know, with the closest it does.
    UnknownTargets(Vec<(String, Vec<String>)>),
    /// `since` is not before `until`.
    EmptyRange,
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Database(e) => write!(f, "{}", crate::monitor::database::describe(e)),
            Self::NotMigrated => write!(
                f,
                "the database lacks the rollups, global incidents or probe faults this version reads: run `pipe migrate` on it (and `pipe rollups rebuild` for checks stored before its rollups)"
            ),
            Self::NoData { held: None } => {
                write!(f, "no checks in the range, and no rollups at all")
            }
            Self::NoData {
                held: Some((first, last)),
            } => write!(
                f,
                "no checks in the range; the rollups hold {} to {}",
                rfc3339_millis::format(*first),
                rfc3339_millis::format(*last)
            ),
            Self::UnknownTargets(unknown) => {
                let parts: Vec<String> = unknown
                    .iter()
                    .map(|(name, closest)| {
                        if closest.is_empty() {
                            format!("unknown target `{name}`")
                        } else {
                            format!(
                                "unknown target `{name}` (closest: {})",
                                closest
                                    .iter()
                                    .map(|c| format!("`{c}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    })
                    .collect();
                write!(f, "{}", parts.join("; "))
            }
            Self::EmptyRange => write!(f, "--since must be before --until"),
        }
    }
}

impl std::error::Error for ReportError {}

impl From<postgres::Error> for ReportError {
    fn from(error: postgres::Error) -> Self {
        Self::Database(error)
    }
}

/// Up to three known names closest to `name`, by Levenshtein distance (strsim's, the crate
/// clap's own suggestions use).
fn closest(name: &str, known: &[String]) -> Vec<String> {
    let mut scored: Vec<(usize, &String)> = known
        .iter()
        .map(|k| {
            (
                strsim::levenshtein(&name.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= (k.chars().count().max(name.chars().count()) / 2).max(2))
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, k)| k.clone()).collect()
}

fn floor_to(time: SystemTime, seconds: u64) -> SystemTime {
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(since_epoch / seconds * seconds)
}

fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

/// Builds the report. Blocking.
pub fn load(client: &mut postgres::Client, options: &Options) -> Result<Report, ReportError> {
    if options.since >= options.until {
        return Err(ReportError::EmptyRange);
    }
    let migrated: bool = client
        .query_one(
            "SELECT to_regclass('target_global_incidents') IS NOT NULL
                    AND EXISTS (SELECT 1 FROM pg_attribute
                                WHERE attrelid = to_regclass('rollups_daily')
                                  AND attname = 'probe_faults' AND NOT attisdropped)",
            &[],
        )?
        .get(0);
    if !migrated {
        return Err(ReportError::NotMigrated);
    }
    let bucket = if seconds_between(options.since, options.until) <= HOURLY_UP_TO.as_secs_f64() {
        BucketSize::Hour
    } else {
        BucketSize::Day
    };
    let from = floor_to(options.since, bucket.seconds());

    // The targets, by id.
    let all: Vec<(i32, String)> = client
        .query("SELECT id, name FROM targets ORDER BY name", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let wanted: Vec<(i32, String)> = if options.targets.is_empty() {
        all.clone()
    } else {
        let names: Vec<String> = all.iter().map(|(_, n)| n.clone()).collect();
        let unknown: Vec<(String, Vec<String>)> = options
            .targets
            .iter()
            .filter(|t| !names.contains(t))
            .map(|t| (t.clone(), closest(t, &names)))
            .collect();
        if !unknown.is_empty() {
            return Err(ReportError::UnknownTargets(unknown));
        }
        all.iter()
            .filter(|(_, n)| options.targets.contains(n))
            .cloned()
            .collect()
    };
    let ids: Vec<i32> = wanted.iter().map(|(id, _)| *id).collect();

    // Rollups in the range.
    let rows = client.query(
        &format!(
            "SELECT target_id, bucket, checks, up_checks,
                    coalesce(array_lower(latency_histogram, 1), 0), latency_histogram::int4[],
                    probe_faults
             FROM {} WHERE target_id = ANY($1) AND bucket >= $2 AND bucket < $3
             ORDER BY target_id, bucket",
            bucket.table()
        ),
        &[&ids, &from, &options.until],
    )?;
    if rows.is_empty() {
        let held = client.query_one("SELECT min(bucket), max(bucket) FROM rollups_daily", &[])?;
        let held = match (held.get(0), held.get(1)) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        };
        return Err(ReportError::NoData { held });
    }
    let mut series: BTreeMap<i32, Vec<(SystemTime, u64, u64, Histogram)>> = BTreeMap::new();
    let mut probe_faults: BTreeMap<i32, u64> = BTreeMap::new();
    for row in &rows {
        *probe_faults.entry(row.get(0)).or_default() += row.get::<_, i32>(6) as u64;
        let histogram = Histogram::from_parts(row.get(4), row.get(5));
        series.entry(row.get(0)).or_default().push((
            row.get(1),
            row.get::<_, i32>(2) as u64,
            row.get::<_, i32>(3) as u64,
            histogram,
        ));
    }

    // Incidents that overlap the range.
    let mut incidents: BTreeMap<i32, Vec<IncidentReport>> = BTreeMap::new();
    for row in client.query(
        "SELECT i.target_id, NULLIF(r.name, ''), i.started_at, i.ended_at, i.failed_checks,
                i.cause
         FROM target_incidents i JOIN regions r ON r.id = i.region_id
         WHERE i.target_id = ANY($1) AND i.started_at < $3
           AND (i.ended_at IS NULL OR i.ended_at > $2)
         ORDER BY i.target_id, i.started_at",
        &[&ids, &options.since, &options.until],
    )? {
        let started_at: SystemTime = row.get(2);
        let ended_at: Option<SystemTime> = row.get(3);
        let end = ended_at.unwrap_or(options.until).min(options.until);
        incidents
            .entry(row.get(0))
            .or_default()
            .push(IncidentReport {
                region: row.get(1),
                started_at,
                ended_at,
                duration_s: seconds_between(started_at, end),
                failed_checks: row.get(4),
                cause: row.get(5),
            });
    }

    let mut global: BTreeMap<i32, Vec<GlobalIncidentReport>> = BTreeMap::new();
    for row in client.query(
        "SELECT target_id, started_at, ended_at, regions, cause FROM target_global_incidents
         WHERE target_id = ANY($1) AND started_at < $3 AND (ended_at IS NULL OR ended_at > $2)
         ORDER BY target_id, started_at",
        &[&ids, &options.since, &options.until],
    )? {
        let started_at: SystemTime = row.get(1);
        let ended_at: Option<SystemTime> = row.get(2);
        let end = ended_at.unwrap_or(options.until).min(options.until);
        global
            .entry(row.get(0))
            .or_default()
            .push(GlobalIncidentReport {
                started_at,
                ended_at,
                duration_s: seconds_between(started_at, end),
                regions: row.get(3),
                cause: row.get(4),
            });
    }

    // Each target's latest check, through the primary key.
    let mut last: BTreeMap<i32, LastResult> = BTreeMap::new();
    let recent = options.until - Duration::from_secs(2 * 86_400);
    for row in client.query(
        "SELECT DISTINCT ON (t.id) t.id, c.checked_at, c.up, c.status_code,
                pipe_down_cause(c.up, c.error_kind, c.status_code, c.regex_matched,
                                c.latency_class, c.cert_expires_soon),
                c.response_time_us
         FROM unnest($1::int4[]) AS t(id) CROSS JOIN regions r
         CROSS JOIN LATERAL (
             SELECT * FROM checks c
             WHERE c.target_id = t.id AND c.region_id = r.id
               AND c.checked_at <= $2 AND c.checked_at > $3 AND c.probe_fault IS NULL
             ORDER BY c.checked_at DESC LIMIT 1) c
         ORDER BY t.id, c.checked_at DESC",
        &[&ids, &options.until, &recent],
    )? {
        last.insert(
            row.get(0),
            LastResult {
                at: row.get(1),
                up: row.get(2),
                status_code: row.get(3),
                cause: row.get(4),
                response_time_ms: f64::from(row.get::<_, i32>(5)) / 1000.0,
            },
        );
    }

    let mut targets: Vec<TargetReport> = wanted
        .iter()
        .filter_map(|(id, name)| {
            let buckets = series.remove(id)?;
            let mut merged = Histogram::default();
            let (mut checks, mut up_checks) = (0, 0);
            let series = buckets
                .into_iter()
                .map(|(start, c, u, histogram)| {
                    checks += c;
                    up_checks += u;
                    merged.merge(&histogram);
                    BucketReport {
                        start,
                        checks: c,
                        up_checks: u,
                        availability: if c == 0 { 1.0 } else { u as f64 / c as f64 },
                        p50_ms: histogram.quantile(0.5),
                        p95_ms: histogram.quantile(0.95),
                    }
                })
                .collect();
            let incidents = incidents.remove(id).unwrap_or_default();
            let global_incidents = global.remove(id).unwrap_or_default();
            let downtime_s = global_incidents
                .iter()
                .map(|i| {
                    let start = i.started_at.max(options.since);
                    let end = i.ended_at.unwrap_or(options.until).min(options.until);
                    seconds_between(start, end)
                })
                .sum();
            Some(TargetReport {
                target: name.clone(),
                checks,
                up_checks,
                probe_faults: probe_faults.get(id).copied().unwrap_or(0),
                uptime_pct: if checks == 0 {
                    100.0
                } else {
                    up_checks as f64 * 100.0 / checks as f64
                },
                downtime_s,
                p50_ms: merged.quantile(0.5),
                p95_ms: merged.quantile(0.95),
                p99_ms: merged.quantile(0.99),
                last: last.remove(id),
                incidents,
                global_incidents,
                series,
            })
        })
        .collect();
    targets.sort_by(|a, b| {
        a.uptime_pct
            .total_cmp(&b.uptime_pct)
            .then(b.p95_ms.unwrap_or(0.0).total_cmp(&a.p95_ms.unwrap_or(0.0)))
            .then(a.target.cmp(&b.target))
    });
    Ok(Report {
        since: options.since,
        until: options.until,
        bucket,
        generated_at: SystemTime::now(),
        targets,
    })
}

/// `12s`, `5m`, `3h12m`, `2d4h`: a duration as people read it, to two units.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec > 0 => format!("{m}m{sec}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// A response time as the table and page show it.
pub fn format_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) if ms < 10_000.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{:.1}s", ms / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_targets_get_the_closest_names() {
        let known: Vec<String> = ["api", "shop", "shop-eu", "status"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("shpo", &known), ["shop"]);
        assert_eq!(closest("shop-e", &known), ["shop-eu", "shop"]);
        assert_eq!(closest("API", &known), ["api"]);
        assert!(closest("completely-different", &known).is_empty());
    }

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(human_duration(12.4), "12s");
        assert_eq!(human_duration(750.0), "12m30s");
        assert_eq!(human_duration(3600.0 * 3.0 + 720.0), "3h12m");
        assert_eq!(human_duration(86_400.0 * 2.0 + 3600.0 * 4.0 + 60.0), "2d4h");
        assert_eq!(format_ms(Some(3.25)), "3.2ms");
        assert_eq!(format_ms(Some(140.4)), "140ms");
        assert_eq!(format_ms(Some(12_500.0)), "12.5s");
        assert_eq!(format_ms(None), "-");
    }
}
