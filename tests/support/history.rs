//! Helpers for the history tests: storing checks through the postgres sink in-process, and
//! recomputing from the raw rows what the rollups and incidents must say.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pipe::compiler::{CompiledPipeline, CompiledStage};
use pipe::monitor::check::CheckResult;
use pipe::monitor::history::incidents::{self, Incident, Outcome, Series, Thresholds};
use pipe::registry::BuiltStage;
use pipe::stage::StageKind;
use pipe::stages::sinks::postgres::PostgresSinkConfig;
use pipe::topology::{self, RunOptions};
use pipe::{BoxError, BuildContext, Event, Source, SourceContext, StageConfig};

struct Emit(Vec<CheckResult>);

#[async_trait]
impl Source for Emit {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), BoxError> {
        for check in self.0 {
            cx.out.send(Event::from_check(check)).await?;
        }
        Ok(())
    }
}

/// Stores `checks`, in this order, through a postgres sink with `settings` (YAML lines after
/// `url:`), and returns when the sink has finished.
pub async fn store(url: &str, checks: Vec<CheckResult>, settings: &str) {
    let config: PostgresSinkConfig =
        serde_norway::from_str(&format!("url: '{url}'\nmigrate: true\n{settings}"))
            .expect("sink settings");
    let logger = super::pipeline::logger();
    let cx = BuildContext::new("db", ".", logger.clone());
    let sink = config
        .build(&cx)
        .unwrap_or_else(|e| panic!("sink settings: {e:?}"));
    let pipeline = CompiledPipeline {
        name: "history".into(),
        stages: vec![
            CompiledStage {
                id: "checks".into(),
                type_name: "emit".into(),
                kind: StageKind::Source,
                inputs: vec![],
                stage: BuiltStage::Source(Box::new(Emit(checks))),
            },
            CompiledStage {
                id: "db".into(),
                type_name: "postgres".into(),
                kind: StageKind::Sink,
                inputs: vec!["checks".into()],
                stage: BuiltStage::Sink(sink),
            },
        ],
        warnings: vec![],
        telemetry: pipe::telemetry::Telemetry::new(),
    };
    topology::run(
        pipeline,
        RunOptions::default(),
        std::future::pending(),
        logger,
    )
    .await
    .expect("the pipeline runs");
}

/// Runs `f` with a client of `url`, off the async runtime.
pub async fn with_client<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        f(&mut client)
    })
    .await
    .unwrap()
}

/// The rollup columns recomputed from the raw checks, for `unit` ('hour' or 'day'): probe
/// faults only in `probe_faults`.
fn recomputed(unit: &str) -> String {
    format!(
        "SELECT target_id, date_trunc('{unit}', checked_at, 'UTC') AS bucket,
                count(*) FILTER (WHERE NOT fault)::int AS checks, count(*) FILTER (WHERE NOT fault AND up)::int AS up_checks,
                count(*) FILTER (WHERE NOT fault AND error_kind = 'timeout')::int AS down_timeout,
                count(*) FILTER (WHERE NOT fault AND NOT up AND error_kind IS NULL AND status_code >= 500)::int
                    AS down_http_5xx,
                count(*) FILTER (WHERE NOT fault AND NOT up AND error_kind IS NULL AND status_code BETWEEN 400 AND 499)::int
                    AS down_http_4xx,
                count(*) FILTER (WHERE NOT fault AND NOT up AND error_kind IS NULL
                                 AND status_code BETWEEN 300 AND 399 AND regex_matched IS NOT false)::int
                    AS down_http_3xx,
                count(*) FILTER (WHERE NOT fault AND NOT up AND error_kind IS NULL AND status_code BETWEEN 200 AND 399
                                 AND regex_matched = false)::int AS down_regex_mismatch,
                count(*) FILTER (WHERE NOT fault AND status_code IS NOT NULL)::int AS responses,
                coalesce(sum(response_time_us) FILTER (WHERE NOT fault AND status_code IS NOT NULL), 0)::int8
                    AS response_time_sum_us,
                min(response_time_us) FILTER (WHERE NOT fault AND status_code IS NOT NULL) AS response_time_min_us,
                max(response_time_us) FILTER (WHERE NOT fault AND status_code IS NOT NULL) AS response_time_max_us,
                count(*) FILTER (WHERE fault)::int AS probe_faults
         FROM (SELECT *, probe_fault IS TRUE AS fault FROM checks) AS c GROUP BY 1, 2"
    )
}

const COMPARED: &str = "checks, up_checks, down_timeout, down_http_5xx, down_http_4xx, \
                        down_http_3xx, down_regex_mismatch, responses, response_time_sum_us, \
                        response_time_min_us, response_time_max_us, probe_faults";

/// How many rollup rows of `table` (at `unit`) differ from a recomputation from the raw
/// checks, in counts or in histogram buckets; and how many rows there are.
pub fn rollup_differences(client: &mut postgres::Client, table: &str, unit: &str) -> (i64, i64) {
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0);
    let counts: i64 = client
        .query_one(
            &format!(
                "WITH raw AS ({}),
                      stored AS (SELECT target_id, bucket, {COMPARED} FROM {table})
                 SELECT count(*) FROM (
                     (SELECT * FROM raw EXCEPT ALL SELECT * FROM stored)
                     UNION ALL
                     (SELECT * FROM stored EXCEPT ALL SELECT * FROM raw)) AS d",
                recomputed(unit)
            ),
            &[],
        )
        .unwrap()
        .get(0);
    // The down causes add up, and every check is in exactly one.
    let causes: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} WHERE checks - up_checks <>
                     down_timeout + down_dns + down_connect + down_tls + down_too_many_redirects
                     + down_body_too_large + down_other + down_http_1xx + down_http_2xx
                     + down_http_3xx + down_http_4xx + down_http_5xx + down_regex_mismatch
                     + down_latency + down_certificate"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let buckets: i64 = client
        .query_one(
            &format!(
                "WITH raw AS (
                     SELECT target_id, date_trunc('{unit}', checked_at, 'UTC') AS bucket,
                            pipe_latency_bucket(response_time_us) AS i, count(*)::int AS n
                     FROM checks WHERE status_code IS NOT NULL AND probe_fault IS NULL
                     GROUP BY 1, 2, 3),
                 stored AS (
                     SELECT target_id, bucket, i, latency_histogram[i] AS n
                     FROM {table}, generate_subscripts(latency_histogram, 1) AS i
                     WHERE latency_histogram[i] <> 0)
                 SELECT count(*) FROM raw FULL JOIN stored USING (target_id, bucket, i)
                 WHERE raw.n IS DISTINCT FROM stored.n"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    (counts + causes + buckets, rows)
}

/// The incidents a replay of every stored check but the probe faults gives, by series.
pub fn replayed_incidents(
    client: &mut postgres::Client,
    thresholds: Thresholds,
) -> BTreeMap<Series, Vec<Incident>> {
    let mut by_series: BTreeMap<Series, Vec<Outcome>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT target_id, region_id, checked_at,
                    pipe_down_cause(up, error_kind, status_code, regex_matched, latency_class,
                                    cert_expires_soon)
             FROM checks WHERE probe_fault IS NULL ORDER BY target_id, region_id, checked_at",
            &[],
        )
        .unwrap()
    {
        by_series
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(Outcome {
                at: row.get(2),
                cause: row.get(3),
            });
    }
    by_series
        .into_iter()
        .map(|(series, checks)| {
            let (_, found) = incidents::replay(&checks, thresholds);
            (series, found.into_values().collect::<Vec<_>>())
        })
        .filter(|(_, found)| !found.is_empty())
        .collect()
}

/// The incidents stored, by series, in start order.
pub fn stored_incidents(client: &mut postgres::Client) -> BTreeMap<Series, Vec<Incident>> {
    let mut stored: BTreeMap<Series, Vec<Incident>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT target_id, region_id, started_at, confirmed_at, ended_at, closed_at,
                    failed_checks, cause
             FROM target_incidents ORDER BY target_id, region_id, started_at",
            &[],
        )
        .unwrap()
    {
        stored
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(Incident {
                started_at: row.get(2),
                confirmed_at: row.get(3),
                ended_at: row.get(4),
                closed_at: row.get(5),
                failed_checks: row.get::<_, i32>(6) as u32,
                cause: row.get(7),
            });
    }
    stored
}

/// A small deterministic PRNG (xorshift64*), so the data is the same in every run.
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The start of the UTC day `days` before today.
pub fn day_start(days_ago: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs((now / 86_400 - days_ago) * 86_400)
}
