//! The `postgres` sink's settings, and its build step: validate them all, and make the pool
//! (connecting lazily) and the sink.

use std::sync::Mutex;
use std::time::Duration;

use r2d2::Pool;
use serde::Deserialize;

use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::monitor::database::{Database, DropOffRuntime};
use crate::monitor::history::incidents::Thresholds;
use crate::registry::{BuildContext, StageConfig};
use crate::stage::Sink;

use super::metrics::SinkMetrics;
use super::sink::PostgresSink;

/// Large enough that a backlog's batches hold several checks of each target: a batch's
/// rollups and incident states cost per target, not per check. Behind a backlog of 1,000,000
/// checks of 1,000 targets the writer stored 39,868 a second at 1000, 55,471 at 2000 and
/// 92,800 at 5000 (tansu, 2026-12-01); on Apache Kafka (2026-12-04), 53,833 at 5000 and
/// 63,853 at 10000, PostgreSQL's CPU a row going from 17.8 to 13.9 µs, for 37 MiB more at
/// the peak; later that day, in runs of one session, 10000 cost PostgreSQL 7.5–12.1 µs a row
/// (seven runs) and 20000 5.1–8.4 (five), for a peak of 244–270 MiB instead of 205–212. A fleet
/// of 10,000 targets gets one check of each in a batch of 10000, each paying for its own rollup
/// and incident rows. Live, `batch_timeout` cuts batches long before.
fn default_batch_size() -> usize {
    20_000
}
fn default_batch_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_pool_size() -> u32 {
    4
}
fn default_partitions_ahead() -> u32 {
    7
}
fn default_parallel_batches() -> usize {
    2
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    1
}
fn default_down_regions() -> u32 {
    1
}

/// The settings of the `postgres` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// libpq-style URL: `postgres://user:password@host:port/db?sslmode=require&sslrootcert=ca.pem`.
    pub url: String,
    /// Most events in one transaction. Default 20000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill once it has its first event. Default `200ms`.
    #[serde(default = "default_batch_timeout", with = "duration")]
    pub batch_timeout: Duration,
    /// Apply the migrations in `migrations/` when the sink starts. Default `false`.
    #[serde(default)]
    pub migrate: bool,
    /// Drop daily partitions of checks older than this, such as `400d`. Default: keep all.
    #[serde(default, with = "duration::option")]
    pub retention: Option<Duration>,
    /// Days of partitions created ahead of today. Default 7.
    #[serde(default = "default_partitions_ahead")]
    pub partitions_ahead: u32,
    /// Connections in the pool. Default 4.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Batches written at once, so commits overlap. Default 2; at most `pool_size`.
    #[serde(default = "default_parallel_batches")]
    pub parallel_batches: usize,
    /// Longest pause between two attempts of a failing write. Default `30s`.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
    /// Delete hourly and daily rollups, and incidents that ended, older than this, such as
    /// `5y`; independent of `retention`. Default: keep all.
    #[serde(default, with = "duration::option")]
    pub rollup_retention: Option<Duration>,
    /// Failed checks in a row that make an incident. Default 3.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Good checks in a row that end an incident. Default 1.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// Regions with an incident of a target at once that make a global incident
    /// (`global_incidents`): with checkers in 3 regions, 2 keeps one region's network fault
    /// a regional incident. Default 1.
    #[serde(default = "default_down_regions")]
    pub down_regions: u32,
}

impl PostgresSinkConfig {
    pub(super) fn thresholds(&self) -> Thresholds {
        Thresholds {
            down_after: self.down_after,
            up_after: self.up_after,
            down_regions: self.down_regions,
        }
    }
}

impl StageConfig for PostgresSinkConfig {
    const TYPE: &'static str = "postgres";
    const DESCRIPTION: &'static str =
        "stores check results in PostgreSQL once each, in batches, dead-lettering what cannot be stored";
    type Stage = dyn Sink;

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.batch_size == 0 {
            errors.push(ConfigError::at(
                "batch_size",
                "a batch holds at least 1 event",
            ));
        }
        if self.pool_size == 0 {
            errors.push(ConfigError::at(
                "pool_size",
                "the pool needs at least 1 connection",
            ));
        }
        for (field, retention) in [
            ("retention", self.retention),
            ("rollup_retention", self.rollup_retention),
        ] {
            if retention.is_some_and(|r| r < Duration::from_secs(86_400)) {
                errors.push(ConfigError::at(
                    field,
                    format!("{field} is counted in whole days: at least 1d"),
                ));
            }
        }
        for (field, value) in [("down_after", self.down_after), ("up_after", self.up_after)] {
            if value == 0 {
                errors.push(ConfigError::at(
                    field,
                    "at least 1 check: an incident needs one to start and one to end",
                ));
            }
        }
        if self.down_regions == 0 {
            errors.push(ConfigError::at(
                "down_regions",
                "at least 1 region: a global incident needs one region down",
            ));
        }
        let database = match Database::from_url(&self.url) {
            Ok(database) => Some(database),
            Err(message) => {
                errors.push(ConfigError::at("url", message));
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let database = database.expect("no errors, so a database");
        // Unchecked: no connection is made until the first write, so a pipeline starts (and
        // validates) while the database is down, and recovers when it comes up.
        let pool = Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .build_unchecked(database.manager());
        Ok(Box::new(PostgresSink {
            pool: DropOffRuntime::new(pool),
            database: database.to_string(),
            config: self,
            metrics: SinkMetrics::new(cx),
            health: cx.health(),
            retry_warning: Mutex::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let cx = BuildContext::new("db", ".", slog::Logger::root(slog::Discard, slog::o!()));
        let config: PostgresSinkConfig = serde_norway::from_str(
            "url: 'postgres://w:hunter22@db.example/x?sslmode=bogus'\nbatch_size: 0\nretention: 2h\n",
        )
        .unwrap();
        let errors = config.build(&cx).err().unwrap();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, [Some("batch_size"), Some("retention"), Some("url")]);
        assert!(errors.iter().all(|e| !e.message.contains("hunter22")));
    }
}
