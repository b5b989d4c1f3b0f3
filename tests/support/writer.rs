//! Helpers for the writer's tests: synthetic check results, producing them, and asking the
//! database (from async tests, through `spawn_blocking`: the sync client must not run on a
//! runtime thread).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pipe::monitor::check::{
    check_id, CheckError, CheckResult, ErrorKind, LatencyClass, Timings, SCHEMA_VERSION,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// `n` distinct checks spread over `targets` targets, scheduled from about now on, in slot
/// order (as a checker sends them).
pub fn checks(n: usize, targets: usize) -> Vec<CheckResult> {
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        * 60;
    (0..n)
        .map(|i| {
            let target = format!("site-{}", i % targets);
            let scheduled_at = UNIX_EPOCH + Duration::from_millis(base * 1000 + (i as u64) * 10);
            let failed = i % 10 == 7;
            CheckResult {
                schema_version: SCHEMA_VERSION,
                check_id: check_id(&target, scheduled_at),
                url: format!("https://{target}.example.com/"),
                target,
                method: "GET".into(),
                scheduled_at,
                started_at: scheduled_at + Duration::from_millis(2),
                response_time_ms: 10.0 + (i % 100) as f64,
                timings_ms: if failed {
                    Timings::default()
                } else {
                    Timings {
                        dns: Some(1.5),
                        connect: Some(2.25),
                        tls: Some(3.0),
                        first_byte: Some(4.0),
                        transfer: Some(0.5),
                    }
                },
                status_code: (!failed).then_some(200),
                error: failed.then(|| CheckError {
                    kind: ErrorKind::Timeout,
                    message: "no complete response within 10s".into(),
                }),
                regex: Some("Example".into()),
                regex_matched: (!failed).then_some(true),
                latency_class: Some(LatencyClass::Ok),
                up: !failed,
                body_bytes: (!failed).then_some(1256),
                remote_addr: (!failed).then(|| "93.184.215.14:443".into()),
                http_version: (!failed).then(|| "HTTP/2".into()),
                tls: None,
                region: None,
                checker: None,
                captures: None,
                probe_fault: false,
            }
        })
        .collect()
}

/// A producer that writes real batches, as a checker under load does: many records per batch,
/// so a consumer that resumes (after a restart, a rebalance or a pause) starts inside one.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap()
}

/// Publishes raw payloads with keys, waiting for every confirmation.
pub async fn produce_raw(brokers: &str, topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer = producer(brokers);
    let sends = messages.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("delivered");
    }
}

/// Publishes checks as schema v1 JSON, keyed by target.
pub async fn produce(brokers: &str, topic: &str, checks: &[CheckResult]) {
    let messages: Vec<(String, Vec<u8>)> = checks
        .iter()
        .map(|c| (c.target.clone(), serde_json::to_vec(c).unwrap()))
        .collect();
    produce_raw(brokers, topic, &messages).await;
}

/// Runs a query returning one bigint, off the runtime threads.
pub async fn scalar(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        client
            .query_one(sql.as_str(), &[])
            .expect("query")
            .get::<_, i64>(0)
    })
    .await
    .unwrap()
}

/// The id of every check stored, to compare with [`ids`] of what was produced.
pub async fn stored_ids(url: &str) -> BTreeSet<String> {
    strings(url, "SELECT check_id::text FROM check_results")
        .await
        .into_iter()
        .collect()
}

/// The ids of `checks`, as [`stored_ids`] gives them.
pub fn ids<'a>(checks: impl IntoIterator<Item = &'a CheckResult>) -> BTreeSet<String> {
    checks.into_iter().map(|c| c.check_id.to_string()).collect()
}

/// Every string in the first column of `sql`'s rows.
pub async fn strings(url: &str, sql: &str) -> Vec<String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        client
            .query(sql.as_str(), &[])
            .expect("query")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until `sql` returns `expected` (or `timeout` passes), and returns the last value.
pub async fn wait_for(url: &str, sql: &str, expected: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = scalar_or_minus_one(url, sql).await;
        if value == expected || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like `scalar`, but -1 while the database or the table is not there yet.
pub async fn scalar_or_minus_one(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| c.query_one(sql.as_str(), &[]))
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(-1)
    })
    .await
    .unwrap()
}

/// A writer pipeline: `topic` in `group` into the database at `url`, migrating at start.
pub fn writer_yaml(
    brokers: &str,
    topic: &str,
    group: &str,
    url: &str,
    extra_source: &str,
) -> String {
    format!(
        "\
sources:
  checks:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
{extra_source}
sinks:
  db:
    type: postgres
    inputs: [checks]
    url: '{url}'
    batch_size: 500
    batch_timeout: 100ms
    migrate: true
    max_backoff: 1s
"
    )
}

/// The `kafka` source settings of a writer with a static identity (`instance_id`, KIP-345), the
/// same across its restarts, as an operator's service unit gives it; for [`writer_yaml`].
pub fn static_member() -> String {
    format!("    instance_id: {}\n", super::unique_name("writer"))
}
