//! The writer's storage rate against a raw `COPY` of the same rows into the same table, and its
//! memory behind a backlog. Needs the local services: run it through `scripts/bench-writer`.
//!
//! ```sh
//! cargo bench --bench writer -- copy --rows 200000
//! cargo bench --bench writer -- backlog --messages 1000000
//! cargo bench --bench writer -- consume --messages 200000
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pipe::check::{
    check_id, CheckError, CheckResult, ErrorKind, LatencyClass, Timings, SCHEMA_VERSION,
};
use pipe::compiler::{CompiledPipeline, CompiledStage};
use pipe::registry::{BuiltStage, StageKind};
use pipe::stages::sinks::postgres::PostgresSinkConfig;
use pipe::topology::{self, RunOptions};
use pipe::{BoxError, BuildContext, Event, Fields, Source, SourceContext, StageConfig};

fn checks(n: usize, targets: usize) -> Vec<CheckResult> {
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        * 60;
    (0..n)
        .map(|i| {
            let target = format!("site-{}", i % targets);
            let scheduled_at = UNIX_EPOCH + Duration::from_millis(base * 1000 - i as u64);
            let failed = i % 20 == 7;
            CheckResult {
                schema_version: SCHEMA_VERSION,
                check_id: check_id(&target, scheduled_at),
                url: format!("https://{target}.example.com/"),
                target,
                method: "GET".into(),
                scheduled_at,
                started_at: scheduled_at + Duration::from_millis(1),
                response_time_ms: 100.0 + (i % 900) as f64 * 0.731,
                timings_ms: if failed {
                    Timings::default()
                } else {
                    Timings {
                        dns: Some(1.2),
                        connect: Some(10.5),
                        tls: Some(21.0),
                        first_byte: Some(60.25),
                        transfer: Some(3.5),
                    }
                },
                status_code: (!failed).then_some(200),
                error: failed.then(|| CheckError {
                    kind: ErrorKind::Timeout,
                    message: "no complete response within 10s".into(),
                }),
                regex: None,
                regex_matched: None,
                latency_class: Some(LatencyClass::Ok),
                up: !failed,
                body_bytes: (!failed).then_some(1256),
                remote_addr: (!failed).then(|| "93.184.215.14:443".into()),
                http_version: (!failed).then(|| "HTTP/2".into()),
                tls: None,
                region: None,
                checker: None,
                captures: None,
            }
        })
        .collect()
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL: run this through scripts/bench-writer")
}

/// A fresh, migrated database; returns its URL.
fn fresh_database(name: &str) -> String {
    let admin = admin_url();
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    pipe::migrate::apply(&mut client).unwrap();
    url
}

fn micros(ms: Option<f64>) -> String {
    ms.map_or("\\N".to_owned(), |v| {
        ((v * 1000.0).round() as i64).to_string()
    })
}

/// COPY of the same rows, pre-formatted in text format: only the COPY itself is timed.
fn copy_rows(url: &str, rows: &[CheckResult]) -> Duration {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut ids = HashMap::new();
    for check in rows {
        if !ids.contains_key(&check.target) {
            let id: i32 = client
                .query_one(
                    "INSERT INTO targets (name, url, method) VALUES ($1, $2, $3) RETURNING id",
                    &[&check.target, &check.url, &check.method],
                )
                .unwrap()
                .get(0);
            ids.insert(check.target.clone(), id);
        }
    }
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    for day in today - 1..=today {
        client
            .execute(
                "SELECT pipe_ensure_check_partition(($1::timestamptz AT TIME ZONE 'UTC')::date)",
                &[&(UNIX_EPOCH + Duration::from_secs(day * 86_400))],
            )
            .unwrap();
    }
    let mut data = Vec::with_capacity(rows.len() * 160);
    for c in rows {
        let (ip, port) = match c
            .remote_addr
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        {
            Some(a) => (a.ip().to_string(), a.port().to_string()),
            None => ("\\N".into(), "\\N".into()),
        };
        writeln!(
            data,
            "{}\t{}\t{}\t1\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t\\N\t{}\t{}\t\\N",
            pipe::check::rfc3339_millis::format(c.scheduled_at),
            c.check_id,
            ids[&c.target],
            micros(Some(c.response_time_ms)),
            micros(c.timings_ms.dns),
            micros(c.timings_ms.connect),
            micros(c.timings_ms.tls),
            micros(c.timings_ms.first_byte),
            micros(c.timings_ms.transfer),
            c.body_bytes.map_or("\\N".into(), |b| b.to_string()),
            port,
            c.error.as_ref().map_or("\\N", |e| e.kind.as_str()),
            c.latency_class.map_or("\\N", |l| l.as_str()),
            c.status_code.map_or("\\N".into(), |s| s.to_string()),
            if c.http_version.is_some() {
                "20"
            } else {
                "\\N"
            },
            c.up,
            ip,
            c.error
                .as_ref()
                .map_or("\\N".to_owned(), |e| e.message.clone()),
        )
        .unwrap();
    }
    let started = Instant::now();
    let mut writer = client
        .copy_in(
            "COPY checks (checked_at, check_id, target_id, start_delay_ms, response_time_us, dns_us, connect_us,
                 tls_us, first_byte_us, transfer_us, body_bytes, remote_port, error_kind, latency_class,
                 status_code, http_version, up, regex_matched, remote_ip, error_message, captures) FROM STDIN",
        )
        .unwrap();
    writer.write_all(&data).unwrap();
    writer.finish().unwrap();
    started.elapsed()
}

struct Emit(Vec<Fields>);

#[async_trait]
impl Source for Emit {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), BoxError> {
        for fields in self.0 {
            cx.out.send(Event::new(fields)).await?;
        }
        Ok(())
    }
}

/// The postgres sink storing the same rows, fed as fast as it takes them.
fn sink_rows(url: &str, rows: &[CheckResult]) -> Duration {
    let fields: Vec<Fields> = rows.iter().cloned().map(CheckResult::into_fields).collect();
    let config: PostgresSinkConfig = serde_norway::from_str(&format!(
        "url: '{url}'\nbatch_size: 1000\nbatch_timeout: 200ms\n"
    ))
    .unwrap();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let cx = BuildContext::new("db", ".", logger.clone());
    let sink = config.build(&cx).unwrap_or_else(|_| panic!("sink"));
    let pipeline = CompiledPipeline {
        name: "bench".into(),
        stages: vec![
            CompiledStage {
                id: "src".into(),
                type_name: "bench".into(),
                kind: StageKind::Source,
                inputs: vec![],
                stage: BuiltStage::Source(Box::new(Emit(fields))),
            },
            CompiledStage {
                id: "db".into(),
                type_name: "postgres".into(),
                kind: StageKind::Sink,
                inputs: vec!["src".into()],
                stage: BuiltStage::Sink(sink),
            },
        ],
        warnings: vec![],
        telemetry: pipe::telemetry::Telemetry::new(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    runtime
        .block_on(topology::run(
            pipeline,
            RunOptions::default(),
            std::future::pending(),
            logger,
        ))
        .unwrap();
    started.elapsed()
}

fn count(url: &str) -> i64 {
    postgres::Client::connect(url, postgres::NoTls)
        .and_then(|mut c| c.query_one("SELECT count(*) FROM checks", &[]))
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

fn size_per_row(url: &str, rows: usize) -> f64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client.batch_execute("VACUUM ANALYZE checks").unwrap();
    let bytes: i64 = client
        .query_one(
            "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits WHERE inhparent = 'checks'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    bytes as f64 / rows as f64
}

fn copy_mode(rows: usize) {
    let data = checks(rows, 1000);
    let copy_url = fresh_database("bench_copy");
    let copy = copy_rows(&copy_url, &data);
    assert_eq!(count(&copy_url), rows as i64);
    let sink_url = fresh_database("bench_sink");
    let sink = sink_rows(&sink_url, &data);
    assert_eq!(count(&sink_url), rows as i64);
    let copy_rate = rows as f64 / copy.as_secs_f64();
    let sink_rate = rows as f64 / sink.as_secs_f64();
    println!("rows={rows}");
    println!(
        "copy_rows_per_second={copy_rate:.0} ({:.2}s)",
        copy.as_secs_f64()
    );
    println!(
        "sink_rows_per_second={sink_rate:.0} ({:.2}s)",
        sink.as_secs_f64()
    );
    println!("sink / copy = {:.2}", sink_rate / copy_rate);
    println!(
        "bytes_per_check (table + indexes, after VACUUM) = {:.0}",
        size_per_row(&sink_url, rows)
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Creates `topic` (3 partitions) and publishes `messages` checks to it in real batches, as a
/// checker under load writes them.
fn produce_checks(brokers: &str, topic: &str, messages: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = checks(messages, 1000);
    let produce_started = Instant::now();
    runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        admin
            .create_topics(
                &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        let producer: Arc<FutureProducer> = Arc::new(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "20")
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .unwrap(),
        );
        for chunk in data.chunks(10_000) {
            let sends = chunk.iter().map(|c| {
                let producer = Arc::clone(&producer);
                let payload = serde_json::to_vec(c).unwrap();
                let key = c.target.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(topic).key(&key).payload(&payload),
                            Duration::from_secs(60),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                }
            });
            futures::future::join_all(sends).await;
        }
    });
    println!(
        "produced {messages} messages in {:.1}s",
        produce_started.elapsed().as_secs_f64()
    );
}

/// The broker's raw consume rate: a fresh group reads every message of a fresh topic from
/// offset 0 with a bare librdkafka consumer (no decoding, no sink), what bounds the writer from
/// the broker's side.
fn consume_mode(messages: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS: run this through scripts/bench-writer");
    let topic = format!("bench_consume_{}", std::process::id());
    produce_checks(&brokers, &topic, messages);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench_consume_{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut started = None;
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while received < messages && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
                received += 1;
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {}
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |t| t.elapsed());
    println!(
        "consumed {received} of {messages} in {:.1}s = {:.0} messages/s (from the first message)",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
}

fn backlog_mode(messages: usize) {
    let brokers = std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS: run this through scripts/bench-writer");
    let topic = format!("bench_backlog_{}", std::process::id());
    produce_checks(&brokers, &topic, messages);
    let url = fresh_database("bench_backlog");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("writer.yaml");
    std::fs::write(
        &file,
        format!(
            "sources:\n  checks:\n    type: kafka\n    brokers: {brokers}\n    topics: [{topic}]\n    group: bench\nsinks:\n  db:\n    type: postgres\n    inputs: [checks]\n    url: '{url}'\n    batch_size: 1000\n    batch_timeout: 200ms\n"
        ),
    )
    .unwrap();
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap(), "--log-level", "warn"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut peak, mut samples) = (0_u64, Vec::new());
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let rss = rss_kib(writer.id()).unwrap_or(0);
        peak = peak.max(rss);
        let stored = count(&url);
        if samples.len() % 10 == 0 {
            println!(
                "t={}s stored={stored} rss_mib={:.1}",
                started.elapsed().as_secs(),
                rss as f64 / 1024.0
            );
        }
        samples.push((started.elapsed().as_secs(), stored, rss));
        if stored >= messages as i64 || started.elapsed() > Duration::from_secs(900) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &writer.id().to_string()])
        .status();
    let _ = writer.wait();
    let stored = count(&url);
    println!(
        "messages={messages} stored={stored} in {:.1}s = {:.0} rows/s end to end",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    println!("writer_rss_peak_mib={:.1}", peak as f64 / 1024.0);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let number = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().unwrap())
    };
    match args.first().map(String::as_str) {
        Some("copy") => copy_mode(number("--rows", 200_000)),
        Some("backlog") => backlog_mode(number("--messages", 1_000_000)),
        Some("consume") => consume_mode(number("--messages", 200_000)),
        _ => {
            eprintln!(
                "usage: writer copy [--rows N] | backlog [--messages N] | consume [--messages N]"
            );
            std::process::exit(2);
        }
    }
}
