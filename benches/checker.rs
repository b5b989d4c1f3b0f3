//! The checker under load, against a local HTTP server: checks per second with fresh
//! connections, scheduling lateness with many targets, and resident memory.
//!
//! `scripts/bench-checker` runs it next to `wrk` against the same nginx; by hand:
//!
//! ```sh
//! cargo bench --bench checker -- throughput --url http://127.0.0.1:18090/ [--targets 10000]
//!     [--interval 1s] [--concurrency 64] [--seconds 10] [--metrics on|off] [--sink count|kafka]
//!     [--linger-ms N]
//! cargo bench --bench checker -- schedule --url http://127.0.0.1:18090/ [--targets 10000]
//!     [--interval 20s] [--seconds 60]
//! cargo bench --bench checker -- libcurl --url http://127.0.0.1:18090/ [--concurrency 64]
//!     [--seconds 10]
//! ```
//!
//! `libcurl` is not the checker: it drives libcurl's multi interface directly, on one thread,
//! with easy handles reused, and does per transfer what a probe needs (fresh connection,
//! `Connection: close`, timings and status read at the end). It is the floor for any
//! libcurl-based checker, and says how much of a check's cost is libcurl's and the kernel's.
//!
//! `--sink kafka` runs the checker end to end: every result also goes through the `kafka` sink
//! (shipped defaults) to a fresh topic on the broker at `KAFKA_BROKERS`, and a check counts
//! once that sink has it; the sink's backpressure paces the probe. The topic's message count
//! is read back at the end, so a result that only reached the counting sink would show, and
//! the broker's CPU over the measured window is given a message (the processes named by
//! `PIPE_KAFKA`: `java` for Apache Kafka). `--linger-ms` sets the sink's `linger.ms` in place of
//! its default, to compare.

#[path = "support/procfs.rs"]
mod procfs;

/// The allocator the `pipe` binary ships with (src/main.rs), so that the checker measured here
/// allocates as the one that runs in production does; glibc's malloc took 2–3% of the
/// checker's CPU in `_int_malloc` and `_int_free` alone. The memory figures of BENCHMARKS.md
/// up to 2026-12-07 were taken on glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pipe::topology::{self, RunOptions};
use pipe::{
    AckStatus, BoxError, BuildContext, ConfigError, Input, Registry, Sink, SinkContext, StageConfig,
};
use serde::Deserialize;

/// What the counting sink saw: arrival time, status code, lateness in ms.
type Seen = (Instant, Option<u64>, f64);

fn seen() -> &'static Mutex<Vec<Seen>> {
    static SEEN: OnceLock<Mutex<Vec<Seen>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountConfig {}

impl StageConfig for CountConfig {
    const TYPE: &'static str = "count";
    const DESCRIPTION: &'static str = "records results for the benchmark";
    type Stage = dyn Sink;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        Ok(Box::new(Count))
    }
}

struct Count;

fn time(value: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().unwrap()).unwrap()
}

#[async_trait]
impl Sink for Count {
    async fn run(self: Box<Self>, mut input: Input, _cx: SinkContext) -> Result<(), BoxError> {
        while let Some(event) = input.recv().await {
            let lateness = time(&event.fields()["started_at"])
                .duration_since(time(&event.fields()["scheduled_at"]))
                .unwrap_or_default();
            let status = event.fields()["status_code"].as_u64();
            seen()
                .lock()
                .unwrap()
                .push((Instant::now(), status, lateness.as_secs_f64() * 1000.0));
            event.finish(AckStatus::Delivered);
        }
        Ok(())
    }
}

fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU time this process has used (user and system, all threads).
fn cpu_time() -> Duration {
    Duration::from_secs_f64(procfs::cpu_of(std::process::id()).expect("/proc/self/stat"))
}

/// CPU seconds the broker's processes have used.
fn broker_cpu() -> f64 {
    procfs::cpu_seconds(procfs::broker_process())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The local broker (`KAFKA_BROKERS`) and a fresh topic of 3 partitions on it.
fn bench_topic() -> (String, String) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS: --sink kafka needs the local broker (scripts/bench-checker starts it)",
    );
    let topic = format!("bench_checker_{}", std::process::id());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        for result in created {
            result.unwrap_or_else(|(topic, e)| panic!("cannot create {topic}: {e}"));
        }
    });
    (brokers, topic)
}

/// How many messages `topic` (3 partitions) holds, from its watermarks.
fn messages_in(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..3)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// Counts the body bytes libcurl delivers, as a probe does, and keeps none.
struct CountBytes(u64);

impl curl::easy::Handler for CountBytes {
    fn write(&mut self, data: &[u8]) -> Result<usize, curl::easy::WriteError> {
        self.0 += data.len() as u64;
        Ok(data.len())
    }
}

fn libcurl_floor(url: &str, concurrency: usize, seconds: u64) {
    use curl::easy::{Easy2, List};
    use curl::multi::{Easy2Handle, Multi};

    let transfer = || {
        let mut easy = Easy2::new(CountBytes(0));
        easy.url(url).unwrap();
        easy.forbid_reuse(true).unwrap();
        easy.dns_cache_timeout(Duration::ZERO).unwrap();
        easy.timeout(Duration::from_secs(5)).unwrap();
        easy.follow_location(true).unwrap();
        easy.max_redirections(10).unwrap();
        let mut headers = List::new();
        headers.append("Connection: close").unwrap();
        easy.http_headers(headers).unwrap();
        easy
    };
    let multi = Multi::new();
    let mut running: Vec<Option<Easy2Handle<CountBytes>>> = (0..concurrency)
        .map(|token| {
            let mut handle = multi.add2(transfer()).unwrap();
            handle.set_token(token).unwrap();
            Some(handle)
        })
        .collect();
    let warmup_end = Instant::now() + Duration::from_secs(3);
    let end = warmup_end + Duration::from_secs(seconds);
    let (mut ok, mut cpu_start) = (0_u64, None);
    let mut finished = Vec::new();
    while Instant::now() < end {
        if cpu_start.is_none() && Instant::now() >= warmup_end {
            cpu_start = Some(cpu_time());
            ok = 0;
        }
        multi.perform().unwrap();
        multi.messages(|message| {
            if let (Ok(token), Some(result)) = (message.token(), message.result()) {
                finished.push((token, result.is_ok()));
            }
        });
        for (token, succeeded) in finished.drain(..) {
            let mut easy = multi.remove2(running[token].take().unwrap()).unwrap();
            let timings = [
                easy.namelookup_time(),
                easy.connect_time(),
                easy.appconnect_time(),
                easy.starttransfer_time(),
                easy.total_time(),
            ];
            assert!(timings.iter().all(Result::is_ok));
            if succeeded && easy.response_code().unwrap() == 200 && easy.get_ref().0 > 0 {
                ok += 1;
            }
            easy.get_mut().0 = 0;
            let mut handle = multi.add2(easy).unwrap();
            handle.set_token(token).unwrap();
            running[token] = Some(handle);
        }
        multi.wait(&mut [], Duration::from_millis(100)).unwrap();
    }
    let cpu = cpu_time() - cpu_start.expect("ran past the warm-up");
    println!("mode=libcurl concurrency={concurrency} seconds={seconds}");
    println!("ok_checks_per_second={:.0}", ok as f64 / seconds as f64);
    println!("cpu_cores={:.2}", cpu.as_secs_f64() / seconds as f64);
    println!(
        "cpu_us_per_check={:.0}",
        cpu.as_secs_f64() * 1e6 / ok.max(1) as f64
    );
}

/// The size of the last exposition encoded, with `--metrics on`.
static SCRAPED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: checker throughput|schedule|libcurl --url URL [--targets N] [--interval D] [--concurrency N] [--seconds N]");
        std::process::exit(2);
    };
    let mut options: HashMap<String, String> = HashMap::new();
    for pair in args[1..].chunks(2) {
        if let [key, value] = pair {
            options.insert(key.trim_start_matches("--").to_owned(), value.clone());
        }
    }
    let get = |key: &str, default: &str| {
        options
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let url = get("url", "http://127.0.0.1:18090/");
    if mode == "libcurl" {
        let concurrency = get("concurrency", "64").parse().unwrap();
        let seconds = get("seconds", "10").parse().unwrap();
        libcurl_floor(&url, concurrency, seconds);
        return;
    }
    let (default_interval, default_seconds, default_concurrency) = match mode.as_str() {
        "throughput" => ("1s", "10", "64"),
        "schedule" => ("20s", "60", "100"),
        other => panic!("unknown mode {other}"),
    };
    let targets: usize = get("targets", "10000").parse().unwrap();
    let interval = get("interval", default_interval);
    let seconds: u64 = get("seconds", default_seconds).parse().unwrap();
    let concurrency = get("concurrency", default_concurrency);
    // `--metrics on`: per_target_metrics, and the exposition encoded every 5 s as a scrape
    // would; `off`: neither (the always-on counters count in both).
    let metrics_on = get("metrics", "off") == "on";
    let kafka = match get("sink", "count").as_str() {
        "count" => None,
        "kafka" => Some(bench_topic()),
        other => panic!("--sink count or kafka, not {other}"),
    };

    let dir = tempfile::tempdir().unwrap();
    let list: String = (0..targets)
        .map(|i| format!("- {{ name: t{i}, url: '{url}?t={i}' }}\n"))
        .collect();
    std::fs::write(dir.path().join("targets.yaml"), list).unwrap();
    let mut yaml = format!(
        "sources:\n  probe:\n    type: http_probe\n    interval: {interval}\n    timeout: 5s\n    concurrency: {concurrency}\n    per_target_metrics: {metrics_on}\n    targets_file: targets.yaml\nsinks:\n  count:\n    type: count\n    inputs: [probe]\n"
    );
    if let Some((brokers, topic)) = &kafka {
        yaml.push_str(&format!(
            "  kafka:\n    type: kafka\n    inputs: [probe]\n    brokers: {brokers}\n    topic: {topic}\n"
        ));
        if let Some(linger) = options.get("linger-ms") {
            yaml.push_str(&format!("    options: {{ linger.ms: {linger} }}\n"));
        }
    }
    std::fs::write(dir.path().join("bench.yaml"), &yaml).unwrap();

    let mut registry = Registry::with_builtins();
    registry.register::<CountConfig>();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rss_before = memory_kib("VmRSS:");
    let (warmup, measured, cpu, broker) = runtime.block_on(async {
        let pipeline = pipe::compiler::load(&dir.path().join("bench.yaml"), &registry, &logger)
            .unwrap_or_else(|d| panic!("{d}"));
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = Arc::clone(&stop);
        let telemetry = pipeline.telemetry.clone();
        let scraper = metrics_on.then(|| {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    let telemetry = telemetry.clone();
                    let text = tokio::task::spawn_blocking(move || {
                        telemetry.encode(pipe::telemetry::Format::Prometheus)
                    })
                    .await
                    .unwrap();
                    SCRAPED_BYTES.store(text.len(), std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
        let run = tokio::spawn(topology::run(
            pipeline,
            RunOptions::default(),
            async move { signal.notified().await },
            logger.clone(),
        ));
        let warmup_end = Instant::now() + Duration::from_secs(3);
        tokio::time::sleep_until(warmup_end.into()).await;
        let (cpu_start, broker_start) = (cpu_time(), broker_cpu());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let end = Instant::now();
        let cpu = cpu_time() - cpu_start;
        let broker = broker_cpu() - broker_start;
        stop.notify_one();
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        run.await.unwrap().unwrap();
        (warmup_end, end, cpu, broker)
    });
    let seen = seen().lock().unwrap();
    let window: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.0 >= warmup && s.0 <= measured)
        .collect();
    let elapsed = measured.duration_since(warmup).as_secs_f64();
    let ok = window.iter().filter(|s| s.1 == Some(200)).count();
    println!(
        "mode={mode} targets={targets} interval={interval} concurrency={concurrency} seconds={seconds} metrics={} sink={}",
        if metrics_on { "on" } else { "off" },
        if kafka.is_some() { "kafka" } else { "count" }
    );
    if let Some((brokers, topic)) = &kafka {
        // Every check the counting sink saw, the run's whole length, is in the topic: the run
        // ended cleanly only once the broker had confirmed them all.
        let in_topic = messages_in(brokers, topic);
        println!("kafka_messages={in_topic} checks_seen={}", seen.len());
        if !window.is_empty() {
            println!(
                "broker_cpu_us_per_message={:.1}",
                broker * 1e6 / window.len() as f64
            );
        }
        assert_eq!(
            in_topic,
            seen.len() as i64,
            "every check is in the topic, once"
        );
    }
    if metrics_on {
        println!(
            "scrape_bytes={}",
            SCRAPED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!("checks_per_second={:.0}", window.len() as f64 / elapsed);
    println!("ok_checks_per_second={:.0}", ok as f64 / elapsed);
    // The process's CPU over the same window: what one check costs, whatever the machine.
    println!("cpu_cores={:.2}", cpu.as_secs_f64() / elapsed);
    if !window.is_empty() {
        println!(
            "cpu_us_per_check={:.0}",
            cpu.as_secs_f64() * 1e6 / window.len() as f64
        );
    }
    let mut lateness: Vec<f64> = window.iter().map(|s| s.2).collect();
    lateness.sort_by(f64::total_cmp);
    if !lateness.is_empty() {
        println!(
            "lateness_ms p50={:.0} p99={:.0} max={:.0} (n={})",
            percentile(&lateness, 0.5),
            percentile(&lateness, 0.99),
            lateness[lateness.len() - 1],
            lateness.len()
        );
    }
    println!(
        "rss_mib start={:.1} peak={:.1} end={:.1}",
        rss_before as f64 / 1024.0,
        memory_kib("VmHWM:") as f64 / 1024.0,
        memory_kib("VmRSS:") as f64 / 1024.0
    );
}
