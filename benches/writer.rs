//! The writer's storage rate against a raw `COPY` of the same rows into the same table, and its
//! memory behind a backlog. Needs the local services: run it through `scripts/bench-writer`.
//!
//! ```sh
//! cargo bench --bench writer -- copy --rows 200000 [--batch-size 20000]
//! cargo bench --bench writer -- backlog --messages 1000000 [--batch-size 20000]
//! cargo bench --bench writer -- consume --messages 200000
//! ```
//!
//! The writer runs with the `kafka` source's and the `postgres` sink's shipped defaults, against
//! the local Apache Kafka. The broker's CPU is that of the processes named by `PIPE_KAFKA`
//! (`java` for Apache Kafka, `tansu` for tansu).

#[path = "support/procfs.rs"]
mod procfs;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pipe::compiler::{CompiledPipeline, CompiledStage};
use pipe::monitor::check::{
    check_id, CheckError, CheckResult, ErrorKind, LatencyClass, Timings, TlsInfo, SCHEMA_VERSION,
};
use pipe::registry::BuiltStage;
use pipe::stage::StageKind;
use pipe::stages::sinks::postgres::PostgresSinkConfig;
use pipe::topology::{self, RunOptions};
use pipe::{BoxError, BuildContext, Event, Fields, Source, SourceContext, StageConfig};
use procfs::{broker_process, cpu_of, cpu_seconds};

/// `n` typical checks of `targets` HTTPS targets every 30 s, in slot order (as checkers send
/// them), the last slots just before now: 5% fail (a timeout, no response), the rest answer
/// with TLS details, one certificate per target.
fn checks(n: usize, targets: usize) -> Vec<CheckResult> {
    let slots = n.div_ceil(targets) as u64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let first = (now / 30 - slots) * 30;
    let not_after = UNIX_EPOCH + Duration::from_secs(now + 60 * 86_400);
    (0..n)
        .map(|i| {
            let (slot, t) = ((i / targets) as u64, i % targets);
            let target = format!("site-{t}");
            let scheduled_at = UNIX_EPOCH + Duration::from_secs(first + slot * 30);
            // Spread over targets and time, so that failures come in runs and incidents open.
            let failed = (slot / 4 + t as u64 * 7) % 20 == 7;
            CheckResult {
                schema_version: SCHEMA_VERSION,
                check_id: check_id(&target, scheduled_at),
                url: format!("https://{target}.example.com/"),
                method: "GET".into(),
                scheduled_at,
                started_at: scheduled_at + Duration::from_millis(1),
                response_time_ms: if failed {
                    10_000.0
                } else {
                    100.0 + (i * 7919 % 900) as f64 * 0.731
                },
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
                tls: (!failed).then(|| TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS_AES_256_GCM_SHA384".into(),
                    cert_not_before: not_after - Duration::from_secs(90 * 86_400),
                    cert_not_after: not_after,
                    cert_issuer: "CN=R11,O=Let's Encrypt,C=US".into(),
                    cert_subject: format!("CN={target}.example.com"),
                    cert_sans: vec![format!("{target}.example.com")],
                    cert_expires_soon: false,
                }),
                region: None,
                checker: Some("bench-checker".into()),
                captures: None,
                probe_fault: false,
                target,
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
    pipe::monitor::migrate::apply(&mut client).unwrap();
    url
}

/// A raw COPY of exactly the rows the sink stored in `from` into the fresh database `to`:
/// the small tables first (untimed), then `checks`, the only step timed. Returns its time
/// and PostgreSQL's CPU seconds meanwhile (every process of the server's).
fn copy_rows(from: &str, to: &str) -> (Duration, f64) {
    let mut source = postgres::Client::connect(from, postgres::NoTls).unwrap();
    let mut target = postgres::Client::connect(to, postgres::NoTls).unwrap();
    let days: Vec<SystemTime> = source
        .query(
            "SELECT DISTINCT date_trunc('day', checked_at, 'UTC') FROM checks",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for day in days {
        target
            .execute(
                "SELECT pipe_ensure_check_partition(($1::timestamptz AT TIME ZONE 'UTC')::date)",
                &[&day],
            )
            .unwrap();
    }
    // Ids are identities in both, made in the order of the old ones: rows point to the same
    // things.
    let mut transfer = |table: &str, columns: &str, order: &str| -> (Duration, f64) {
        let mut data = Vec::new();
        source
            .copy_out(&format!(
                "COPY (SELECT {columns} FROM {table} ORDER BY {order}) TO STDOUT"
            ))
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        let (started, cpu) = (Instant::now(), cpu_seconds("postgres"));
        let mut writer = target
            .copy_in(&format!("COPY {table} ({columns}) FROM STDIN"))
            .unwrap();
        writer.write_all(&data).unwrap();
        writer.finish().unwrap();
        (started.elapsed(), cpu_seconds("postgres") - cpu)
    };
    transfer("targets", "name, url, method, regex", "id");
    transfer(
        "tls_details",
        "key, version, cipher, cert_not_before, cert_not_after, cert_issuer, cert_subject, cert_sans",
        "id",
    );
    transfer("checkers", "region, name", "id");
    // In the order the writer inserted them (slot order), as a loader would.
    transfer("checks", "checked_at, target_id, start_delay_ms, response_time_us, dns_us, connect_us, tls_us, first_byte_us, transfer_us, body_bytes, remote_port, tls_id, error_kind, latency_class, region_id, checker_id, status_code, http_version, up, regex_matched, cert_expires_soon, remote_ip, check_id, error_message, captures, probe_fault", "checked_at, target_id")
}

/// The rate of [`copy_rows`] from `from` (holding `rows` checks), three times, each
/// into a fresh database: the runs, their median rate, and their median PostgreSQL CPU a row.
/// One COPY alone swung from 138,000 to 378,000 rows/s between runs. Each COPY's PostgreSQL
/// CPU a row is printed beside its wall time a row: equal, they say the COPY was bound by one
/// core, whose speed is what moved (BENCHMARKS.md, 2026-12-07); apart, that it waited.
fn copy_rates(from: &str, rows: i64) -> (String, f64, f64) {
    let runs: Vec<(Duration, f64)> = (0..3)
        .map(|_| {
            let to = fresh_database("bench_copy");
            checkpoint();
            let run = copy_rows(from, &to);
            assert_eq!(count(&to), rows);
            run
        })
        .collect();
    let per_row = |seconds: f64| format!("{:.1}", seconds * 1e6 / rows as f64);
    println!(
        "COPY a row, wall and PostgreSQL's CPU: {} us",
        runs.iter()
            .map(|(wall, cpu)| format!("{} and {}", per_row(wall.as_secs_f64()), per_row(*cpu)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut cpus: Vec<f64> = runs.iter().map(|(_, cpu)| *cpu / rows as f64).collect();
    cpus.sort_by(f64::total_cmp);
    let mut rates: Vec<f64> = runs
        .iter()
        .map(|(wall, _)| rows as f64 / wall.as_secs_f64())
        .collect();
    let runs = rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    rates.sort_by(f64::total_cmp);
    (runs, rates[1], cpus[1])
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
fn sink_rows(url: &str, rows: &[CheckResult], batch_size: usize) -> Duration {
    let fields: Vec<Fields> = rows.iter().cloned().map(CheckResult::into_fields).collect();
    let config: PostgresSinkConfig = serde_norway::from_str(&format!(
        "url: '{url}'\nbatch_size: {batch_size}\nbatch_timeout: 200ms\n"
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

/// Bytes per check of `checks` (heap, index), after VACUUM.
fn size_per_row(client: &mut postgres::Client, rows: usize) -> (f64, f64) {
    client.batch_execute("VACUUM ANALYZE checks").unwrap();
    let row = client
        .query_one(
            "SELECT sum(pg_table_size(inhrelid))::int8, sum(pg_indexes_size(inhrelid))::int8
             FROM pg_inherits WHERE inhparent = 'checks'::regclass",
            &[],
        )
        .unwrap();
    let per = |bytes: i64| bytes as f64 / rows as f64;
    (per(row.get(0)), per(row.get(1)))
}

/// Prints the bytes per check as inserted and after the compaction the sink's maintenance
/// does once a day is over (the same statements, on every day's index at once).
fn print_sizes(url: &str, rows: usize) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let (heap, index) = size_per_row(&mut client, rows);
    println!(
        "bytes_per_check as inserted, after VACUUM: {:.1} (table {heap:.1}, index {index:.1})",
        heap + index
    );
    let indexes: Vec<String> = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_inherits p
             JOIN pg_index i ON i.indrelid = p.inhrelid AND i.indisprimary
             WHERE p.inhparent = 'checks'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in indexes {
        client
            .batch_execute(&format!("ALTER INDEX {index} SET (fillfactor = 100)"))
            .unwrap();
        client
            .batch_execute(&format!("REINDEX INDEX CONCURRENTLY {index}"))
            .unwrap();
    }
    let (heap, index) = size_per_row(&mut client, rows);
    println!(
        "bytes_per_check once the day's index is compacted: {:.1} (table {heap:.1}, index {index:.1})",
        heap + index
    );
}

fn copy_mode(rows: usize, batch_size: usize) {
    let data = checks(rows, 1000);
    let sink_url = fresh_database("bench_sink");
    let sink = sink_rows(&sink_url, &data, batch_size);
    assert_eq!(count(&sink_url), rows as i64);
    let (runs, copy_rate, _) = copy_rates(&sink_url, rows as i64);
    let sink_rate = rows as f64 / sink.as_secs_f64();
    println!("rows={rows} batch_size={batch_size}");
    println!("copy_rows_per_second: {runs}; median {copy_rate:.0}");
    println!(
        "sink_rows_per_second={sink_rate:.0} ({:.2}s), rollups and incidents included",
        sink.as_secs_f64()
    );
    println!("sink / copy = {:.2}", sink_rate / copy_rate);
    print_sizes(&sink_url, rows);
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
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench_consume_{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
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

/// Checks stored so far, from the daily rollups: a count of the raw rows would cost
/// PostgreSQL a scan at every sample, and the CPU measured here is the point. One connection
/// for the whole run: a new one per sample would add a backend's start to PostgreSQL's CPU.
fn stored_by_rollups(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(checks), 0)::int8 FROM rollups_daily",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// A checkpoint, so that the dirty pages and WAL of what ran before are written out before a
/// timed step starts, not during it: the writer and each COPY start from the same state.
fn checkpoint() {
    postgres::Client::connect(&admin_url(), postgres::NoTls)
        .and_then(|mut c| c.batch_execute("CHECKPOINT"))
        .unwrap();
}

fn backlog_mode(messages: usize, batch_size: usize) {
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
            "sources:\n  checks:\n    type: kafka\n    brokers: {brokers}\n    topics: [{topic}]\n    group: bench\nsinks:\n  db:\n    type: postgres\n    inputs: [checks]\n    url: '{url}'\n    batch_size: {batch_size}\n    batch_timeout: 200ms\n"
        ),
    )
    .unwrap();
    let mut progress = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    checkpoint();
    let (broker_cpu, postgres_cpu) = (cpu_seconds(broker_process()), cpu_seconds("postgres"));
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap(), "--log-level", "warn"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut peak, mut samples, mut pipe_cpu) = (0_u64, 0, 0.0);
    let mut first_row = None;
    // Sampled every 100 ms: the run's end is known to a tenth of a second, about 1% of it.
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let rss = rss_kib(writer.id()).unwrap_or(0);
        peak = peak.max(rss);
        pipe_cpu = cpu_of(writer.id()).unwrap_or(pipe_cpu);
        let stored = stored_by_rollups(&mut progress);
        if stored > 0 && first_row.is_none() {
            first_row = Some((started.elapsed(), stored));
        }
        if samples % 50 == 0 {
            println!(
                "t={}s stored={stored} rss_mib={:.1}",
                started.elapsed().as_secs(),
                rss as f64 / 1024.0
            );
        }
        samples += 1;
        if stored >= messages as i64 || started.elapsed() > Duration::from_secs(900) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let (first_row, first_stored) = first_row.unwrap_or((elapsed, 0));
    let (broker_cpu, postgres_cpu) = (
        cpu_seconds(broker_process()) - broker_cpu,
        cpu_seconds("postgres") - postgres_cpu,
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &writer.id().to_string()])
        .status();
    let _ = writer.wait();
    let stored = count(&url);
    let rate = stored as f64 / elapsed.as_secs_f64();
    println!(
        "messages={messages} stored={stored} in {:.1}s = {rate:.0} rows/s end to end, rollups and incidents on",
        elapsed.as_secs_f64(),
    );
    // The start (process, Kafka group, the sink's maintenance, the first batch) apart from
    // the rate once rows flow; the figure compared with COPY is the whole run's.
    println!(
        "first batch committed {:.1}s after the writer's start; from then on {:.0} rows/s",
        first_row.as_secs_f64(),
        (stored - first_stored) as f64 / (elapsed - first_row).as_secs_f64().max(0.001)
    );
    println!("writer_rss_peak_mib={:.1}", peak as f64 / 1024.0);
    let per_row = |seconds: f64| seconds * 1e6 / stored as f64;
    println!(
        "cpu per row: pipe {:.1} us, broker {:.1} us, postgres {:.1} us",
        per_row(pipe_cpu),
        per_row(broker_cpu),
        per_row(postgres_cpu)
    );
    let (runs, copy_rate, copy_cpu) = copy_rates(&url, stored);
    println!(
        "raw COPY of the same rows into the same table, three times: {runs} rows/s; median {copy_rate:.0}; writer / COPY = {:.2}",
        rate / copy_rate
    );
    // The same comparison made of CPU alone: what two cores could do at the writer's CPU a
    // row, against what one could do at the COPY's. Waits do not move it; the machine's speed
    // moves both sides, though not always in step. The writer's rate against its own side
    // says how well it uses the two cores.
    let writer_cpu = (pipe_cpu + broker_cpu + postgres_cpu) / stored as f64;
    println!(
        "by CPU alone: writer {:.1} us a row on two cores, COPY {:.1} us a row on one: writer / COPY = {:.2}",
        writer_cpu * 1e6,
        copy_cpu * 1e6,
        2.0 * copy_cpu / writer_cpu
    );
    print_sizes(&url, stored as usize);
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
        Some("copy") => copy_mode(number("--rows", 200_000), number("--batch-size", 20_000)),
        Some("backlog") => backlog_mode(
            number("--messages", 1_000_000),
            number("--batch-size", 20_000),
        ),
        Some("consume") => consume_mode(number("--messages", 200_000)),
        _ => {
            eprintln!(
                "usage: writer copy [--rows N] [--batch-size N] | backlog [--messages N] [--batch-size N] | consume [--messages N]"
            );
            std::process::exit(2);
        }
    }
}
