//! The monitor's history: what the `postgres` sink keeps beside the raw checks, and what
//! `pipe report` and `pipe rollups rebuild` read and rewrite. Rollups per target and UTC hour
//! and day with mergeable latency histograms ([`rollups`], [`histogram`]), incidents replayed in
//! slot order ([`incidents`]), their rebuild from the raw checks ([`rebuild`]), and the TLS
//! details, checkers and regions stored once each (`dimensions`, the sink's own).
//!
//! Below the sink and the report (docs/architecture.md): neither reaches into the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) mod dimensions;
pub mod histogram;
pub mod incidents;
pub mod quorum;
pub mod rebuild;
pub mod rollups;

/// The columns, after the key, that make a [`StoredCheck`], in its order.
macro_rules! stored_check_columns {
    () => {
        "up, error_kind::text, status_code, regex_matched, latency_class::text, \
         cert_expires_soon, response_time_us, probe_fault IS TRUE"
    };
}
pub(crate) use stored_check_columns;
/// The columns, after the key, that make a [`StoredCheck`], in its order.
pub const STORED_CHECK_COLUMNS: &str = stored_check_columns!();

/// The key of the advisory lock that `pipe rollups rebuild` holds exclusively while it
/// rewrites a day, and every batch's transaction shares: a rebuild never interleaves with a
/// batch's rollups or incidents.
pub const REBUILD_LOCK: i64 = 0x7069_7065_726f_6c6c; // "piperoll"

/// Why a check is down, exactly as `pipe_down_cause` (migration 3) says; `None` when it is up.
///
/// Worked out here, from the columns a transaction stored, rather than by the function in
/// `RETURNING`: that cost PostgreSQL about 2 µs a check (inserts of 5,000 checks, 35 ms with it
/// against 25 ms returning the columns). `tests/services/history.rs` holds the two equal over every
/// combination of their arguments.
pub fn down_cause(
    up: bool,
    error_kind: Option<&str>,
    status_code: Option<i16>,
    regex_matched: Option<bool>,
    latency_class: Option<&str>,
    cert_expires_soon: Option<bool>,
) -> Option<String> {
    if up {
        return None;
    }
    Some(match (error_kind, status_code) {
        (Some(kind), _) => kind.to_owned(),
        (None, Some(code)) if !(200..400).contains(&code) => format!("http_{code}"),
        _ if regex_matched == Some(false) => "regex_mismatch".to_owned(),
        _ if matches!(latency_class, Some("slow" | "critical")) => "latency".to_owned(),
        _ if cert_expires_soon == Some(true) => "certificate".to_owned(),
        (None, Some(code)) => format!("http_{code}"),
        (None, None) => "other".to_owned(),
    })
}

/// A check a transaction stored, as the rollups and incidents see it.
#[derive(Debug, Clone)]
pub struct StoredCheck {
    /// Its target and region.
    pub series: incidents::Series,
    /// Its slot (`checked_at`).
    pub at: SystemTime,
    /// Whether it was up.
    pub up: bool,
    /// From [`down_cause`] (`pipe_down_cause`); `None` when up.
    pub cause: Option<String>,
    /// Whether a response arrived (a status code): only those count in response times.
    pub responded: bool,
    /// Its response time, in microseconds.
    pub response_time_us: i32,
    /// The checker's own network was down (migration 5): neither up nor down, in no
    /// incident, and counted apart in the rollups.
    pub probe_fault: bool,
}

impl StoredCheck {
    /// From the columns target_id, region_id, checked_at, then [`STORED_CHECK_COLUMNS`].
    pub fn from_row(row: &postgres::Row) -> Self {
        let up = row.get(3);
        let status_code: Option<i16> = row.get(5);
        Self {
            series: (row.get(0), row.get(1)),
            at: row.get(2),
            up,
            cause: down_cause(
                up,
                row.get(4),
                status_code,
                row.get(6),
                row.get(7),
                row.get(8),
            ),
            responded: status_code.is_some(),
            response_time_us: row.get(9),
            probe_fault: row.get(10),
        }
    }

    /// What the incidents see of it: nothing, for a probe fault.
    pub fn outcome(&self) -> Option<incidents::Outcome> {
        (!self.probe_fault).then(|| incidents::Outcome {
            at: self.at,
            cause: self.cause.clone(),
        })
    }
}

/// The UTC day `time` falls in, as days since 1970-01-01 (a daily partition's number).
pub fn day_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

/// The start of UTC day `day` (see [`day_of`]).
pub fn date_of_day(day: i64) -> SystemTime {
    if day >= 0 {
        UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400)
    } else {
        UNIX_EPOCH - Duration::from_secs(day.unsigned_abs() * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3600);
        assert_eq!(day_of(t), 20_000);
        assert_eq!(
            date_of_day(20_000),
            UNIX_EPOCH + Duration::from_secs(20_000 * 86_400)
        );
        assert_eq!(day_of(UNIX_EPOCH - Duration::from_secs(1)), -1);
    }
}
