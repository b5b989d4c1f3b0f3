//! `postgres`: stores check results (and dead letters) in PostgreSQL, each exactly once.
//!
//! Events are cut into batches by `batch_size` and `batch_timeout`; each batch is one
//! transaction: its targets, its checks (one `INSERT … SELECT unnest(…), …`; a batch holding a
//! check already stored goes again with `ON CONFLICT DO NOTHING`, so a check delivered twice is
//! stored once), what the checks it actually inserted add to the hourly and daily rollups
//! (`rollups`) and to the incidents (`incidents`), and its dead letters. Events are
//! acknowledged only after the commit.
//!
//! Transient failures (connection lost, server shutting down or out of connections,
//! serialization failure, deadlock) are retried with capped exponential backoff, acknowledging
//! nothing meanwhile; the pipeline backs up behind the sink, and the Kafka source pauses. A
//! permanent failure caused by one row (a constraint, a value out of range) is isolated: the
//! batch is written again row by row, each under a savepoint, the failing rows go to
//! `dead_letters` with the database's error, and the rest are stored.
//!
//! The synchronous `postgres` client runs its own runtime, so every step that touches the pool
//! (checkout, queries, and returning the connection) happens inside one `spawn_blocking`
//! closure. Such work cannot be cancelled; the connection and statement timeouts bound it.
//!
//! The schema is `migrations/` (applied at start with `migrate: true`). The sink creates the
//! daily partitions of `checks` ahead of time and for any day a batch needs, and its hourly
//! `maintenance` drops partitions past `retention`, compacts finished days' indexes and
//! deletes rollups past `rollup_retention`. `rebuild` (`pipe rollups rebuild`) recomputes
//! rollups and incidents with the same code.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use postgres::error::SqlState;
use postgres_openssl::MakeTlsConnector;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;
use serde::Deserialize;
use serde_json::Value;
use slog::{debug, info, warn};
use uuid::Uuid;

use crate::ack::{AckHandle, AckStatus};
use crate::check::CheckResult;
use crate::check::TlsInfo;
use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::database::{self, Database, DropOffRuntime};
use crate::event::{Event, Payload};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Input, Sink, SinkContext};
use crate::telemetry::{self, StageHealth};
use crate::throttle::RepeatedWarning;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

mod dimensions;
pub mod incidents;
mod maintenance;
pub mod rebuild;
pub mod rollups;

use dimensions::CheckerKey;
use incidents::Thresholds;

type PgPool = Pool<PostgresConnectionManager<MakeTlsConnector>>;

/// Large enough that a backlog's batches hold several checks of each target: a batch's
/// rollups and incident states cost per target, not per check. Behind a backlog of 1,000,000
/// checks of 1,000 targets the writer stored 39,868 a second at 1000, 55,471 at 2000 and
/// 92,800 at 5000. Live, `batch_timeout` cuts batches long before.
fn default_batch_size() -> usize {
    5000
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

/// The settings of the `postgres` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// libpq-style URL: `postgres://user:password@host:port/db?sslmode=require&sslrootcert=ca.pem`.
    pub url: String,
    /// Most events in one transaction. Default 5000.
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
}

impl PostgresSinkConfig {
    fn thresholds(&self) -> Thresholds {
        Thresholds {
            down_after: self.down_after,
            up_after: self.up_after,
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

struct PostgresSink {
    pool: DropOffRuntime<PgPool>,
    /// The URL with its password hidden, for messages.
    database: String,
    config: PostgresSinkConfig,
    metrics: SinkMetrics,
    health: StageHealth,
    /// A database that is down fails every attempt: logged at most once per 30 s.
    retry_warning: Mutex<RepeatedWarning>,
}

/// How long writes may fail before the sink counts as not ready.
const WRITES_FAILING_GRACE: Duration = Duration::from_secs(30);

/// What the sink counts (`docs/metrics.md`).
struct SinkMetrics {
    stored: Counter,
    dead_letters: Counter,
    retries: Counter,
    errors_transient: Counter,
    errors_permanent: Counter,
    write_seconds: Histogram,
    freshness: Histogram,
}

impl SinkMetrics {
    fn new(cx: &BuildContext) -> Self {
        let labels = cx.labels();
        let telemetry = &cx.telemetry;
        let errors = telemetry.stage_errors();
        let error = |kind: &str| {
            errors
                .get_or_create(&telemetry::with(&labels, "kind", kind))
                .clone()
        };
        Self {
            stored: telemetry
                .counters(
                    "pipe_postgres_stored_rows",
                    "Checks stored (a redelivered check already there is not counted).",
                )
                .get_or_create(&labels)
                .clone(),
            dead_letters: telemetry
                .counters(
                    "pipe_postgres_dead_letters",
                    "Messages or rows stored in dead_letters instead of checks.",
                )
                .get_or_create(&labels)
                .clone(),
            retries: telemetry
                .counters(
                    "pipe_postgres_retries",
                    "Database steps tried again after a transient failure.",
                )
                .get_or_create(&labels)
                .clone(),
            errors_transient: error("database_transient"),
            errors_permanent: error("database_permanent"),
            write_seconds: telemetry
                .seconds_histograms(
                    "pipe_postgres_batch_write",
                    "Time one attempt at a database step took, a batch's transaction included.",
                )
                .get_or_create(&labels)
                .clone(),
            freshness: telemetry
                .lateness_histograms(
                    "pipe_postgres_freshness",
                    "Time from a check's scheduled slot to the commit that stored it.",
                )
                .get_or_create(&labels)
                .clone(),
        }
    }

    fn committed(&self, written: &Written) {
        self.stored.inc_by(written.stored.len() as u64);
        self.dead_letters.inc_by(written.dead_letters as u64);
        for scheduled in &written.stored {
            let age = written
                .committed_at
                .duration_since(*scheduled)
                .unwrap_or_default();
            self.freshness.observe(age.as_secs_f64());
        }
    }
}

/// A check, in the columns of the `checks` table.
#[derive(Debug, Clone)]
struct Row {
    checked_at: SystemTime,
    /// The message's id when it is not the one derived from target, slot and region (a
    /// producer of its own); stored only then.
    check_id: Option<Uuid>,
    target: String,
    /// `""` without one.
    region: String,
    start_delay_ms: i32,
    response_time_us: i32,
    dns_us: Option<i32>,
    connect_us: Option<i32>,
    tls_us: Option<i32>,
    first_byte_us: Option<i32>,
    transfer_us: Option<i32>,
    body_bytes: Option<i32>,
    remote_port: Option<i32>,
    error_kind: Option<&'static str>,
    latency_class: Option<&'static str>,
    status_code: Option<i16>,
    http_version: Option<i16>,
    up: bool,
    regex_matched: Option<bool>,
    remote_ip: Option<std::net::IpAddr>,
    error_message: Option<String>,
    captures: Option<Value>,
    /// `tls_details.key` of the check's TLS details.
    tls_key: Option<Uuid>,
    cert_expires_soon: Option<bool>,
    checker: Option<CheckerKey>,
}

/// A target's identity and latest settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetRow {
    name: String,
    url: String,
    method: String,
    regex: Option<String>,
}

/// Something that could not be stored as a check.
#[derive(Debug, Clone)]
struct DeadLetter {
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    error: String,
    payload: Vec<u8>,
}

/// Milliseconds (schema v1) to whole microseconds in an `integer` column.
fn micros(ms: f64, field: &str) -> Result<i32, String> {
    let us = (ms * 1000.0).round();
    if us.is_finite() && us >= f64::from(i32::MIN) && us <= f64::from(i32::MAX) {
        Ok(us as i32)
    } else {
        Err(format!("{field} {ms} is out of range"))
    }
}

fn micros_opt(ms: Option<f64>, field: &str) -> Result<Option<i32>, String> {
    ms.map(|ms| micros(ms, field)).transpose()
}

impl Row {
    fn from_check(check: &CheckResult) -> Result<Row, String> {
        let delay = match check.started_at.duration_since(check.scheduled_at) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let start_delay_ms = i32::try_from(delay)
            .map_err(|_| "started_at is too far from scheduled_at".to_owned())?;
        let remote: Option<SocketAddr> = check.remote_addr.as_deref().and_then(|a| a.parse().ok());
        let timings = &check.timings_ms;
        let region = check.region.clone().unwrap_or_default();
        // pipe_check_id, in the view, reads the slot's milliseconds since 1970 as check_id_in
        // does, but not a slot before 1970 as 0.
        let derivable = check.scheduled_at >= UNIX_EPOCH;
        let derived = crate::check::check_id_in(
            &check.target,
            check.scheduled_at,
            Some(region.as_str()).filter(|r| !r.is_empty()),
        );
        let row = Row {
            checked_at: check.scheduled_at,
            check_id: (!derivable || derived != check.check_id).then_some(check.check_id),
            target: check.target.clone(),
            region,
            start_delay_ms,
            response_time_us: micros(check.response_time_ms, "response_time_ms")?,
            dns_us: micros_opt(timings.dns, "timings_ms.dns")?,
            connect_us: micros_opt(timings.connect, "timings_ms.connect")?,
            tls_us: micros_opt(timings.tls, "timings_ms.tls")?,
            first_byte_us: micros_opt(timings.first_byte, "timings_ms.first_byte")?,
            transfer_us: micros_opt(timings.transfer, "timings_ms.transfer")?,
            body_bytes: check
                .body_bytes
                .map(|b| i32::try_from(b).map_err(|_| format!("body_bytes {b} is out of range")))
                .transpose()?,
            remote_port: remote.map(|a| i32::from(a.port())),
            error_kind: check.error.as_ref().map(|e| e.kind.as_str()),
            latency_class: check.latency_class.map(|c| c.as_str()),
            status_code: check
                .status_code
                .map(|s| i16::try_from(s).map_err(|_| format!("status_code {s} is out of range")))
                .transpose()?,
            http_version: check.http_version.as_deref().and_then(|v| match v {
                "HTTP/0.9" => Some(9),
                "HTTP/1.0" => Some(10),
                "HTTP/1.1" => Some(11),
                "HTTP/2" => Some(20),
                "HTTP/3" => Some(30),
                _ => None,
            }),
            up: check.up,
            regex_matched: check.regex_matched,
            remote_ip: remote.map(|a| a.ip()),
            error_message: check.error.as_ref().map(|e| e.message.clone()),
            captures: check.captures.clone().map(Value::Object),
            tls_key: check.tls.as_ref().map(dimensions::tls_key),
            cert_expires_soon: check.tls.as_ref().map(|t| t.cert_expires_soon),
            checker: check
                .checker
                .clone()
                .map(|name| (check.region.clone().unwrap_or_default(), name)),
        };
        Ok(row)
    }
}

impl TargetRow {
    fn of(check: &CheckResult) -> Self {
        Self {
            name: check.target.clone(),
            url: check.url.clone(),
            method: check.method.clone(),
            regex: check.regex.clone(),
        }
    }
}

/// A failed database step: retry it, or isolate the rows that cause it.
enum WriteError {
    Transient(String),
    Permanent(String),
}

impl From<postgres::Error> for WriteError {
    fn from(error: postgres::Error) -> Self {
        if database::is_transient(&error) {
            Self::Transient(database::describe(&error))
        } else {
            Self::Permanent(database::describe(&error))
        }
    }
}

impl From<r2d2::Error> for WriteError {
    fn from(error: r2d2::Error) -> Self {
        // No connection could be had: the database is down or unreachable.
        Self::Transient(format!("no database connection: {error}"))
    }
}

/// The columns, after the key, that make a [`StoredCheck`], in its order.
macro_rules! stored_check_columns {
    () => {
        "up, error_kind::text, status_code, regex_matched, latency_class::text, \
         cert_expires_soon, response_time_us"
    };
}
pub(crate) const STORED_CHECK_COLUMNS: &str = stored_check_columns!();

/// The insert of a batch's checks, one `unnest` per column in the select list: set-returning
/// functions there run in step (PostgreSQL 10 and later), and unlike `unnest(a, b, …)` in
/// `FROM` their rows are not first collected in a tuplestore (5,000-check inserts: 32–43 ms,
/// against 48–50 ms).
macro_rules! insert_checks_sql {
    () => {
        "\
INSERT INTO checks (checked_at, target_id, start_delay_ms, response_time_us, dns_us,
    connect_us, tls_us, first_byte_us, transfer_us, body_bytes, remote_port, tls_id,
    error_kind, latency_class, region_id, checker_id, status_code, http_version, up,
    regex_matched, cert_expires_soon, remote_ip, check_id, error_message, captures)
SELECT unnest($1::timestamptz[]), unnest($2::int4[]), unnest($3::int4[]), unnest($4::int4[]),
    unnest($5::int4[]), unnest($6::int4[]), unnest($7::int4[]), unnest($8::int4[]),
    unnest($9::int4[]), unnest($10::int4[]), unnest($11::int4[]), unnest($12::int4[]),
    unnest($13::text[]::check_error_kind[]), unnest($14::text[]::check_latency_class[]),
    unnest($15::int2[]), unnest($16::int2[]), unnest($17::int2[]), unnest($18::int2[]),
    unnest($19::bool[]), unnest($20::bool[]), unnest($21::bool[]), unnest($22::inet[]),
    unnest($23::uuid[]), unnest($24::text[]), unnest($25::jsonb[])"
    };
}

/// Inserts checks none of which is stored yet: a batch's first attempt. A check already stored
/// (a redelivery) fails it with a unique violation, and the batch goes again with
/// [`INSERT_CHECKS`]. In the common case the conflict check and `RETURNING` are work for
/// nothing: without them PostgreSQL spent 9.6–9.9 µs a check in the whole writer, against
/// 10.5–11.3 (`cargo bench --bench writer -- backlog`).
const INSERT_NEW_CHECKS: &str = insert_checks_sql!();

/// Inserts checks some of which may be stored already, and returns those inserted, with what
/// the rollups and incidents need of them.
const INSERT_CHECKS: &str = concat!(
    insert_checks_sql!(),
    "\nON CONFLICT DO NOTHING
RETURNING target_id, region_id, checked_at, ",
    stored_check_columns!()
);

/// `time` as a `timestamptz` column holds it: in whole microseconds, cut toward
/// 2000-01-01 (PostgreSQL's epoch) as the driver's conversion cuts it.
fn stored_time(time: SystemTime) -> SystemTime {
    const POSTGRES_EPOCH: Duration = Duration::from_secs(946_684_800);
    let epoch = UNIX_EPOCH + POSTGRES_EPOCH;
    let whole = |d: Duration| Duration::new(d.as_secs(), d.subsec_micros() * 1000);
    match time.duration_since(epoch) {
        Ok(after) => epoch + whole(after),
        Err(before) => epoch - whole(before.duration()),
    }
}

/// Why a check is down, exactly as `pipe_down_cause` (migration 3) says; `None` when it is up.
///
/// Worked out here, from the columns a transaction stored, rather than by the function in
/// `RETURNING`: that cost PostgreSQL about 2 µs a check (inserts of 5,000 checks, 35 ms with it
/// against 25 ms returning the columns). `tests/history.rs` holds the two equal over every
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
}

impl StoredCheck {
    /// A row the transaction inserted, as it is stored.
    fn of(row: &Row, series: incidents::Series) -> Self {
        Self {
            series,
            at: stored_time(row.checked_at),
            up: row.up,
            cause: down_cause(
                row.up,
                row.error_kind,
                row.status_code,
                row.regex_matched,
                row.latency_class,
                row.cert_expires_soon,
            ),
            responded: row.status_code.is_some(),
            response_time_us: row.response_time_us,
        }
    }

    /// From the columns target_id, region_id, checked_at, then [`STORED_CHECK_COLUMNS`].
    fn from_row(row: &postgres::Row) -> Self {
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
        }
    }
}

const UPSERT_TARGETS: &str = "\
INSERT INTO targets (name, url, method, regex)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (name) DO UPDATE
    SET url = excluded.url, method = excluded.method, regex = excluded.regex, updated_at = now()
RETURNING id, name";

const INSERT_DEAD_LETTERS: &str = "\
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, error, payload)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::text[], $5::bytea[])
ON CONFLICT DO NOTHING";

/// The ids a batch's rows point to.
#[derive(Default)]
struct Ids {
    targets: HashMap<String, i32>,
    tls: HashMap<Uuid, i32>,
    checkers: HashMap<CheckerKey, i16>,
    regions: HashMap<String, i16>,
}

/// What an insert may assume of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// None is stored yet ([`INSERT_NEW_CHECKS`]): a check already there fails the statement.
    New,
    /// Some may be stored already, and are left as they are ([`INSERT_CHECKS`]).
    MaybeStored,
}

/// Inserts `rows` (all of whose targets, TLS details, checkers and regions have ids) with one
/// statement; returns the checks stored (not those already there).
fn insert_checks(
    client: &mut impl postgres::GenericClient,
    rows: &[&Row],
    ids: &Ids,
    insert: Insert,
) -> Result<Vec<StoredCheck>, postgres::Error> {
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| &r.$field).collect::<Vec<_>>()
        };
    }
    let target_ids: Vec<i32> = rows.iter().map(|r| ids.targets[&r.target]).collect();
    let tls_ids: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.tls_key.map(|key| ids.tls[&key]))
        .collect();
    let checker_ids: Vec<Option<i16>> = rows
        .iter()
        .map(|r| r.checker.as_ref().map(|key| ids.checkers[key]))
        .collect();
    let region_ids: Vec<i16> = rows.iter().map(|r| ids.regions[&r.region]).collect();
    let params: [&(dyn postgres::types::ToSql + Sync); 25] = [
        &column!(checked_at),
        &target_ids,
        &column!(start_delay_ms),
        &column!(response_time_us),
        &column!(dns_us),
        &column!(connect_us),
        &column!(tls_us),
        &column!(first_byte_us),
        &column!(transfer_us),
        &column!(body_bytes),
        &column!(remote_port),
        &tls_ids,
        &column!(error_kind),
        &column!(latency_class),
        &region_ids,
        &checker_ids,
        &column!(status_code),
        &column!(http_version),
        &column!(up),
        &column!(regex_matched),
        &column!(cert_expires_soon),
        &column!(remote_ip),
        &column!(check_id),
        &column!(error_message),
        &column!(captures),
    ];
    match insert {
        Insert::New => {
            client.execute(INSERT_NEW_CHECKS, &params)?;
            Ok(rows
                .iter()
                .zip(target_ids.iter().zip(&region_ids))
                .map(|(row, (&target, &region))| StoredCheck::of(row, (target, region)))
                .collect())
        }
        Insert::MaybeStored => Ok(client
            .query(INSERT_CHECKS, &params)?
            .iter()
            .map(StoredCheck::from_row)
            .collect()),
    }
}

fn insert_dead_letters(
    client: &mut impl postgres::GenericClient,
    letters: &[DeadLetter],
) -> Result<u64, postgres::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let topics: Vec<Option<&str>> = letters.iter().map(|l| l.topic.as_deref()).collect();
    let partitions: Vec<Option<i32>> = letters.iter().map(|l| l.partition).collect();
    let offsets: Vec<Option<i64>> = letters.iter().map(|l| l.offset).collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    client.execute(
        INSERT_DEAD_LETTERS,
        &[&topics, &partitions, &offsets, &errors, &payloads],
    )
}

/// One batch, ready to write.
struct Batch {
    rows: Vec<Row>,
    /// The rows' targets, once each, with the settings of each one's first check.
    targets: Vec<TargetRow>,
    dead: Vec<DeadLetter>,
    /// Where each row came from, and the check itself, in case the database refuses it.
    sources: Vec<(DeadLetter, CheckResult)>,
    days: HashSet<i64>,
    /// The distinct TLS details and checkers of the rows.
    tls: HashMap<Uuid, TlsInfo>,
    checkers: HashSet<CheckerKey>,
    regions: HashSet<String>,
}

/// What the blocking side keeps between batches.
#[derive(Default)]
struct Cache {
    /// Target name → (id, settings last written).
    targets: HashMap<String, (i32, TargetRow)>,
    /// Days (since the epoch) whose partition is known to exist.
    days: HashSet<i64>,
    /// TLS details and checkers known to be stored, by key.
    dimensions: dimensions::Known,
}

fn day_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

fn date_of_day(day: i64) -> SystemTime {
    if day >= 0 {
        UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400)
    } else {
        UNIX_EPOCH - Duration::from_secs(day.unsigned_abs() * 86_400)
    }
}

/// Creates the partition of each day (autocommitted: DDL outside the batch's transaction).
fn ensure_partitions(
    client: &mut postgres::Client,
    days: impl IntoIterator<Item = i64>,
) -> Result<(), postgres::Error> {
    for day in days {
        client.execute(
            "SELECT pipe_ensure_check_partition(($1::timestamptz AT TIME ZONE 'UTC')::date)",
            &[&date_of_day(day)],
        )?;
    }
    Ok(())
}

/// A target's name, with its id and the settings last written.
type KnownTarget = (String, (i32, TargetRow));

/// Upserts `targets` (new or changed ones) and returns their ids. Sorted by name, so that
/// concurrent batches lock target rows in one order and cannot deadlock each other.
fn upsert_targets(
    client: &mut impl postgres::GenericClient,
    targets: &mut [TargetRow],
) -> Result<Vec<KnownTarget>, postgres::Error> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let urls: Vec<&str> = targets.iter().map(|t| t.url.as_str()).collect();
    let methods: Vec<&str> = targets.iter().map(|t| t.method.as_str()).collect();
    let regexes: Vec<Option<&str>> = targets.iter().map(|t| t.regex.as_deref()).collect();
    let mut fresh = Vec::with_capacity(targets.len());
    for row in client.query(UPSERT_TARGETS, &[&names, &urls, &methods, &regexes])? {
        let (id, name): (i32, String) = (row.get(0), row.get(1));
        let target = targets
            .iter()
            .find(|t| t.name == name)
            .expect("returned names were sent");
        fresh.push((name, (id, target.clone())));
    }
    Ok(fresh)
}

/// Writes one batch in one transaction; on a permanent error, row by row with savepoints.
/// The cache is locked only briefly, so several batches can be written at once.
fn write_batch(
    pool: &PgPool,
    cache: &Mutex<Cache>,
    batch: &Batch,
    thresholds: Thresholds,
) -> Result<Written, WriteError> {
    let (missing_days, mut changed, known) = {
        let cache = cache.lock().expect("not poisoned");
        let missing: Vec<i64> = batch
            .days
            .iter()
            .copied()
            .filter(|d| !cache.days.contains(d))
            .collect();
        let mut changed = Vec::new();
        let mut ids = HashMap::new();
        for target in &batch.targets {
            match cache.targets.get(&target.name) {
                Some((id, known)) if known == target => {
                    ids.insert(target.name.clone(), *id);
                }
                _ => changed.push(target.clone()),
            }
        }
        (missing, changed, ids)
    };
    let mut client = pool.get()?;
    ensure_partitions(&mut client, missing_days.iter().copied())?;
    cache
        .lock()
        .expect("not poisoned")
        .days
        .extend(missing_days);
    let dimension_ids = dimension_ids(&mut client, cache, batch)?;

    let all: Vec<&Row> = batch.rows.iter().collect();
    // Fresh checks first. A batch holding one already stored (a redelivery, or the same check
    // twice) fails that insert, and the whole transaction goes again skipping what is stored.
    let mut insert = Insert::New;
    let mut ids = Ids {
        targets: known,
        ..dimension_ids
    };
    loop {
        let mut tx = client.transaction()?;
        hold_rebuild_lock(&mut tx)?;
        // Again on a second attempt: the first one's new targets were rolled back.
        let fresh = upsert_targets(&mut tx, &mut changed)?;
        ids.targets
            .extend(fresh.iter().map(|(name, (id, _))| (name.clone(), *id)));
        let stored = match insert_checks(&mut tx, &all, &ids, insert) {
            Ok(stored) => stored,
            Err(e) if database::is_transient(&e) => return Err(e.into()),
            Err(e) if insert == Insert::New && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                drop(tx);
                insert = Insert::MaybeStored;
                continue;
            }
            Err(_) => {
                // Some row is refused: start over on the same connection, one savepoint per row.
                drop(tx);
                return write_rows_one_by_one(cache, batch, ids, thresholds, &mut client);
            }
        };
        rollups::add(&mut tx, &stored)?;
        incidents::add(&mut tx, thresholds, &stored)?;
        insert_dead_letters(&mut tx, &batch.dead)?;
        tx.commit()?;
        cache.lock().expect("not poisoned").targets.extend(fresh);
        return Ok(Written {
            stored: stored.iter().map(|s| s.at).collect(),
            dead_letters: batch.dead.len(),
            committed_at: SystemTime::now(),
        });
    }
}

/// The key of the advisory lock that `pipe rollups rebuild` holds exclusively while it
/// rewrites a day, and every batch's transaction shares: a rebuild never interleaves with a
/// batch's rollups or incidents.
pub const REBUILD_LOCK: i64 = 0x7069_7065_726f_6c6c; // "piperoll"

fn hold_rebuild_lock(tx: &mut impl postgres::GenericClient) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&REBUILD_LOCK])
        .map(drop)
}

/// What a committed batch wrote.
struct Written {
    /// The scheduled times of the checks stored (redelivered ones excluded).
    stored: Vec<SystemTime>,
    dead_letters: usize,
    committed_at: SystemTime,
}

/// The ids of the batch's TLS details and checkers, inserting those not stored yet.
fn dimension_ids(
    client: &mut postgres::Client,
    cache: &Mutex<Cache>,
    batch: &Batch,
) -> Result<Ids, WriteError> {
    let mut ids = Ids::default();
    let (missing_tls, missing_checkers, missing_regions) = {
        let cache = cache.lock().expect("not poisoned");
        let known = &cache.dimensions;
        let mut missing_tls = Vec::new();
        for (key, tls) in &batch.tls {
            match known.tls.get(key) {
                Some(id) => {
                    ids.tls.insert(*key, *id);
                }
                None => missing_tls.push((*key, tls)),
            }
        }
        let mut missing_checkers = Vec::new();
        for key in &batch.checkers {
            match known.checkers.get(key) {
                Some(id) => {
                    ids.checkers.insert(key.clone(), *id);
                }
                None => missing_checkers.push(key.clone()),
            }
        }
        let mut missing_regions = Vec::new();
        for region in &batch.regions {
            match known.regions.get(region) {
                Some(id) => {
                    ids.regions.insert(region.clone(), *id);
                }
                None if region.is_empty() => {
                    ids.regions.insert(String::new(), 0);
                }
                None => missing_regions.push(region.clone()),
            }
        }
        (missing_tls, missing_checkers, missing_regions)
    };
    if missing_tls.is_empty() && missing_checkers.is_empty() && missing_regions.is_empty() {
        return Ok(ids);
    }
    let fresh = dimensions::ensure(client, &missing_tls, &missing_checkers, &missing_regions)?;
    ids.tls.extend(&fresh.tls);
    ids.checkers.extend(fresh.checkers.clone());
    ids.regions.extend(fresh.regions.clone());
    let mut cache = cache.lock().expect("not poisoned");
    cache.dimensions.tls.extend(fresh.tls);
    cache.dimensions.checkers.extend(fresh.checkers);
    cache.dimensions.regions.extend(fresh.regions);
    Ok(ids)
}

fn write_rows_one_by_one(
    cache: &Mutex<Cache>,
    batch: &Batch,
    ids: Ids,
    thresholds: Thresholds,
    client: &mut postgres::Client,
) -> Result<Written, WriteError> {
    let mut tx = client.transaction()?;
    hold_rebuild_lock(&mut tx)?;
    let mut targets = batch.targets.clone();
    let fresh = upsert_targets(&mut tx, &mut targets)?;
    let ids = Ids {
        targets: fresh
            .iter()
            .map(|(name, (id, _))| (name.clone(), *id))
            .collect(),
        ..ids
    };
    let mut dead = batch.dead.clone();
    let mut stored = Vec::new();
    for (row, (source, check)) in batch.rows.iter().zip(&batch.sources) {
        let mut savepoint = tx.savepoint("row")?;
        match insert_checks(&mut savepoint, &[row], &ids, Insert::MaybeStored) {
            Ok(rows) => {
                savepoint.commit()?;
                stored.extend(rows);
            }
            Err(e) if database::is_transient(&e) => return Err(e.into()),
            Err(e) => {
                savepoint.rollback()?;
                dead.push(DeadLetter {
                    error: format!("refused by the database: {}", database::describe(&e)),
                    payload: serde_json::to_vec(check).unwrap_or_default(),
                    ..source.clone()
                });
            }
        }
    }
    rollups::add(&mut tx, &stored)?;
    incidents::add(&mut tx, thresholds, &stored)?;
    insert_dead_letters(&mut tx, &dead)?;
    tx.commit()?;
    cache.lock().expect("not poisoned").targets.extend(fresh);
    Ok(Written {
        stored: stored.iter().map(|s| s.at).collect(),
        dead_letters: dead.len(),
        committed_at: SystemTime::now(),
    })
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How often partitions are created ahead and expired ones dropped.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

impl PostgresSink {
    /// Runs a blocking database step until it succeeds or fails permanently, backing off on
    /// transient failures. Checkout, queries and the connection's return all happen inside it.
    async fn with_retries<T: Send + 'static>(
        &self,
        what: &str,
        cx: &SinkContext,
        cache: &Arc<Mutex<Cache>>,
        step: impl Fn(&PgPool, &Mutex<Cache>) -> Result<T, WriteError> + Send + Sync + Clone + 'static,
    ) -> Result<T, String> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1_u32;
        loop {
            let pool = PgPool::clone(&self.pool);
            let cache = Arc::clone(cache);
            let step = step.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || step(&pool, &cache))
                .await
                .map_err(|e| format!("{what}: the database task failed: {e}"))?;
            match result {
                Ok(value) => {
                    self.metrics
                        .write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.resolved("writes_failing");
                    if attempt > 1 {
                        info!(cx.logger, "database reachable again"; "step" => what, "attempts" => attempt);
                    }
                    return Ok(value);
                }
                Err(WriteError::Permanent(message)) => {
                    self.metrics.errors_permanent.inc();
                    return Err(format!("{what}: {message}"));
                }
                Err(WriteError::Transient(message)) => {
                    self.metrics.retries.inc();
                    self.metrics.errors_transient.inc();
                    // Failing since the attempt began: reaching a database that is gone can
                    // take the whole connect timeout.
                    self.health.problem_since(
                        "writes_failing",
                        format!("database writes failing: {message}"),
                        WRITES_FAILING_GRACE,
                        started,
                    );
                    let report = self
                        .retry_warning
                        .lock()
                        .expect("not poisoned")
                        .occurred(std::time::Instant::now());
                    if let Some(report) = report {
                        warn!(cx.logger, "database step failed; retrying"; "step" => what, "attempt" => attempt,
                              "retry_in" => duration::format(backoff), "error" => &message, "database" => &self.database,
                              "lasted" => duration::format_approx(report.lasted), "occurrences" => report.occurrences);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    /// Turns events into a batch (keeping their acknowledgement handles); events that are not
    /// checks become dead letters.
    fn prepare(
        &self,
        events: Vec<Event>,
        cutoff_day: Option<i64>,
        acks: &mut Vec<AckHandle>,
    ) -> (Batch, usize) {
        let mut batch = Batch {
            rows: Vec::with_capacity(events.len()),
            targets: Vec::with_capacity(events.len()),
            dead: Vec::new(),
            sources: Vec::with_capacity(events.len()),
            days: HashSet::new(),
            tls: HashMap::new(),
            checkers: HashSet::new(),
            regions: HashSet::new(),
        };
        let mut expired = 0;
        let mut target_names = HashSet::new();
        for event in events {
            let origin = event.origin().cloned();
            let letter = |error: String, payload: Vec<u8>| DeadLetter {
                topic: origin.as_ref().map(|o| o.topic.to_string()),
                partition: origin.as_ref().map(|o| o.partition),
                offset: origin.as_ref().map(|o| o.offset),
                error,
                payload,
            };
            if let Some(error) = event.dead_letter_error() {
                let payload = event.raw().map(|b| b.to_vec()).unwrap_or_default();
                batch.dead.push(letter(error.to_owned(), payload));
                acks.extend(event.into_parts().1);
                continue;
            }
            let (payload, ack) = event.into_payload();
            acks.extend(ack);
            let decoded = match payload.downcast::<CheckResult>() {
                Ok(check) => Ok(*check),
                // Fields from elsewhere (a `json` source, a transform that rewrote them).
                Err(Payload::Fields(fields)) => {
                    serde_json::from_value::<CheckResult>(Value::Object(fields))
                }
                // A user's own typed record: read through its fields.
                Err(Payload::Typed(record)) => {
                    serde_json::from_value::<CheckResult>(Value::Object(record.to_fields()))
                }
            };
            let check = match decoded {
                Ok(check) => check,
                Err(e) => {
                    batch
                        .dead
                        .push(letter(format!("not a check result: {e}"), Vec::new()));
                    continue;
                }
            };
            match Row::from_check(&check) {
                Ok(row) => {
                    let day = day_of(row.checked_at);
                    if cutoff_day.is_some_and(|cutoff| day < cutoff) {
                        expired += 1;
                        continue;
                    }
                    batch.days.insert(day);
                    if let (Some(key), Some(tls)) = (row.tls_key, &check.tls) {
                        batch.tls.entry(key).or_insert_with(|| tls.clone());
                    }
                    // Cloned once a batch: a backlog brings each target many times.
                    if let Some(checker) = row
                        .checker
                        .as_ref()
                        .filter(|c| !batch.checkers.contains(*c))
                    {
                        batch.checkers.insert(checker.clone());
                    }
                    if !batch.regions.contains(&row.region) {
                        batch.regions.insert(row.region.clone());
                    }
                    if !target_names.contains(&check.target) {
                        target_names.insert(check.target.clone());
                        batch.targets.push(TargetRow::of(&check));
                    }
                    // Serialized again only if the database refuses the row.
                    batch
                        .sources
                        .push((letter(String::new(), Vec::new()), check));
                    batch.rows.push(row);
                }
                Err(error) => {
                    let payload = serde_json::to_vec(&check).unwrap_or_default();
                    batch.dead.push(letter(error, payload));
                }
            }
        }
        (batch, expired)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn run(self: Box<Self>, mut input: Input, cx: SinkContext) -> Result<(), BoxError> {
        let cache = Arc::new(Mutex::new(Cache::default()));
        if self.config.migrate {
            let applied = self
                .with_retries("migrate", &cx, &cache, |pool, _| {
                    let mut client = pool.get()?;
                    Ok(crate::migrate::apply(&mut client)?)
                })
                .await?;
            info!(cx.logger, "migrations checked"; "applied_now" => ?applied);
        }
        let retention = self.config.retention;
        let plan = maintenance::Plan {
            partitions_ahead: self.config.partitions_ahead,
            retention,
            rollup_retention: self.config.rollup_retention,
        };
        let maintenance =
            move |pool: &PgPool, cache: &Mutex<Cache>| maintenance::run(pool, cache, &plan);
        self.with_retries("maintenance", &cx, &cache, maintenance)
            .await?
            .log(&cx.logger);
        let mut next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
        let (mut stored, mut dead_lettered) = (0_u64, 0_u64);
        let mut events = Vec::with_capacity(self.config.batch_size);
        let mut batch_started: Option<tokio::time::Instant> = None;
        let mut input_open = true;
        // Batches being written. While one waits for its commit (the WAL flush), the next is
        // collected and sent: commits overlap instead of queueing.
        let mut in_flight = FuturesUnordered::new();

        while input_open || !in_flight.is_empty() {
            let room = in_flight.len() < self.config.parallel_batches;
            let full = events.len() >= self.config.batch_size;
            let wanted = self.config.batch_size.saturating_sub(events.len()).max(1);
            let deadline = batch_started.map(|t| t + self.config.batch_timeout);
            // A batch that filled up while every slot was busy goes as soon as one is free,
            // not at its timeout.
            let cut = full && room
                || tokio::select! {
                    Some(written) = in_flight.next(), if !in_flight.is_empty() => {
                        let (written, acks): (Written, Vec<AckHandle>) = written?;
                        stored += written.stored.len() as u64;
                        dead_lettered += written.dead_letters as u64;
                        self.metrics.committed(&written);
                        if written.dead_letters > 0 {
                            warn!(cx.logger, "rows stored as dead letters"; "count" => written.dead_letters);
                        }
                        // Committed: now, and only now, the events are done.
                        for ack in acks {
                            ack.finish(AckStatus::Delivered);
                        }
                        false
                    }
                    received = input.recv_many(&mut events, wanted), if input_open && !full => {
                        if received == 0 {
                            input_open = false;
                        } else if batch_started.is_none() {
                            batch_started = Some(tokio::time::Instant::now());
                        }
                        events.len() >= self.config.batch_size || !input_open
                    }
                    // Only with room to send the batch: a passed deadline would otherwise fire again
                    // and again while every slot is busy.
                    () = sleep_until_opt(deadline), if deadline.is_some() && room => true,
                    () = tokio::time::sleep_until(next_maintenance), if in_flight.is_empty() => {
                        self.with_retries("maintenance", &cx, &cache, maintenance).await?.log(&cx.logger);
                        next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
                        false
                    }
                };
            // Once the input is closed, what is left goes out as it is.
            let cut = cut || full || !input_open;
            if !cut || events.is_empty() || !room {
                continue;
            }
            batch_started = None;
            let cutoff_day =
                retention.map(|r| day_of(SystemTime::now()) - (r.as_secs() / 86_400) as i64);
            let mut acks = Vec::with_capacity(events.len());
            let (batch, expired) = self.prepare(std::mem::take(&mut events), cutoff_day, &mut acks);
            if expired > 0 {
                debug!(cx.logger, "checks older than the retention skipped"; "count" => expired);
            }
            let batch = Arc::new(batch);
            let (this, cx, cache) = (&self, &cx, &cache);
            let thresholds = self.config.thresholds();
            in_flight.push(async move {
                let written = this
                    .with_retries("write batch", cx, cache, move |pool, cache| {
                        write_batch(pool, cache, &batch, thresholds)
                    })
                    .await?;
                Ok::<_, String>((written, acks))
            });
        }
        info!(cx.logger, "postgres sink finished"; "stored" => stored, "dead_letters" => dead_lettered);
        Ok(())
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

    #[test]
    fn a_stored_time_is_what_the_driver_sends() {
        use postgres::types::{FromSql, ToSql, Type};
        for time in [
            UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789),
            UNIX_EPOCH + Duration::new(1_796_000_000, 999),
            UNIX_EPOCH + Duration::new(946_684_800, 0),
            UNIX_EPOCH + Duration::new(946_684_799, 999_999_999),
            UNIX_EPOCH - Duration::new(5, 1_500),
        ] {
            let mut sent = bytes::BytesMut::new();
            time.to_sql(&Type::TIMESTAMPTZ, &mut sent).unwrap();
            let stored = SystemTime::from_sql(&Type::TIMESTAMPTZ, &sent).unwrap();
            assert_eq!(stored_time(time), stored, "{time:?}");
        }
    }

    #[test]
    fn milliseconds_become_microseconds_in_range() {
        assert_eq!(micros(1.2345, "x"), Ok(1235));
        assert!(micros(1e12, "response_time_ms")
            .unwrap_err()
            .contains("out of range"));
        assert!(micros(f64::NAN, "x").is_err());
    }

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
