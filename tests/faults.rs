//! The fault suite: real `pipe` processes against the local services of `scripts/dev-services`,
//! batched data on three partitions, and the faults an operator meets: a writer killed again
//! and again, the broker stopped under a running checker and writer, PostgreSQL stopped or not
//! yet up. Each test prints what it saw (stored, distinct, dead letters, seconds).
//!
//! These tests stop and start the shared services, so they must not run beside the other
//! tests: the target is left out of a plain `cargo test` (`test = false` in Cargo.toml), and
//! `scripts/test` runs it on its own after the rest. Inside it, one test runs at a time.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::writer::{
    self, ids, scalar, scalar_or_minus_one, static_member, stored_ids, wait_for,
};
use support::{history, http, unique_name};

/// The postgres sink's default incident thresholds, which the writers here use.
const THRESHOLDS: pipe::monitor::history::incidents::Thresholds =
    pipe::monitor::history::incidents::Thresholds {
        down_after: 3,
        up_after: 1,
        down_regions: 1,
    };

/// One test at a time: each stops services the others use. (tokio's lock does not poison, so a
/// failed test does not fail the ones after it.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TWO_MINUTES: Duration = Duration::from_secs(120);

/// `scripts/dev-services ARGS`, which must succeed.
fn dev_services(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-services");
    let status = Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "scripts/dev-services {args:?} failed");
}

/// Stops one service for the length of a test section, and always starts it again, even when
/// the test fails, so the next test finds it running.
struct Stopped(&'static str);

impl Stopped {
    fn service(name: &'static str) -> Self {
        dev_services(&["stop", name]);
        Self(name)
    }

    fn start(self) {
        dev_services(&["start", self.0]);
        std::mem::forget(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        dev_services(&["start", self.0]);
    }
}

/// A `pipe run` process, its log kept in a file for the failure message.
struct Pipe {
    child: Child,
    log: PathBuf,
}

impl Pipe {
    fn start(file: &Path, name: &str) -> Self {
        Self::start_with(file, name, &[])
    }

    fn start_with(file: &Path, name: &str, args: &[&str]) -> Self {
        let log = file.with_file_name(format!("{name}-{}.log", unique_name("run")));
        let child = Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args(["run", file.to_str().unwrap(), "--log-level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then its exit code.
    fn stop(mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().code()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small PRNG (xorshift64*), seeded from the clock and printed, so a failing run's random
/// moments can be told apart.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("random seed {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A free port on 127.0.0.1 for `--http-addr`.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `/ready`'s status and body now (0 while nothing answers).
async fn ready(addr: &str) -> (u16, String) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || {
        if std::net::TcpStream::connect(&addr).is_err() {
            return (0, String::new());
        }
        let (status, _, body) = support::metrics::get(&addr, "/ready", None);
        (status, body)
    })
    .await
    .unwrap()
}

/// Waits until `/ready` answers `status`; returns how long that took and the body.
async fn wait_ready(addr: &str, status: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (now, body) = ready(addr).await;
        if now == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/ready on {addr} did not answer {status} within {within:?}: {now} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/health`'s status now.
async fn health(addr: &str) -> u16 {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || support::metrics::get(&addr, "/health", None).0)
        .await
        .unwrap()
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn new_database(prefix: &'static str) -> support::TestDatabase {
    tokio::task::spawn_blocking(move || support::create_database(prefix))
        .await
        .unwrap()
}

/// A topic holding `n` checks over `targets` targets (batched, three partitions), a fresh
/// database, and a writer pipeline file from one to the other with `extra_source` settings.
struct Backlog {
    brokers: String,
    topic: String,
    db: support::TestDatabase,
    checks: Vec<pipe::monitor::check::CheckResult>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn backlog(prefix: &'static str, n: usize, targets: usize, extra_source: &str) -> Backlog {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic(prefix, 3).await;
    let db = new_database(prefix).await;
    let checks = writer::checks(n, targets);
    writer::produce(&brokers, &topic, &checks).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "writer.yaml",
        &writer::writer_yaml(
            &brokers,
            &topic,
            &unique_name("group"),
            &db.url,
            extra_source,
        ),
    );
    Backlog {
        brokers,
        topic,
        db,
        checks,
        file,
        _dir: dir,
    }
}

const COUNT: &str = "SELECT count(*) FROM checks";

/// Waits until the writer has stored more than `rows` (or `timeout` passes); the count then.
async fn wait_for_more(url: &str, rows: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = scalar_or_minus_one(url, COUNT).await;
        if now > rows || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A writer without `instance_id`, as `pipelines/writer.yaml` ships: each restarted writer
/// joins as a new member, and gets the partitions once the broker has dropped the dead one at
/// the end of its session (10 s, the `kafka` source's default).
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_killed_six_times_and_a_postgres_restart_store_every_check_once() {
    killed_six_times("", Duration::from_secs(15)).await;
}

/// The same with a static `instance_id` (KIP-345): the broker hands the dead writer's
/// partitions to its restarted self at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_writer_killed_six_times_and_a_postgres_restart_store_every_check_once() {
    killed_six_times(&static_member(), Duration::from_secs(10)).await;
}

/// 50,000 checks with re-sent duplicates, poison and late checks behind them, and six writers
/// SIGKILLed one after the other (PostgreSQL restarted under the fourth): every check stored
/// once, rollups and incidents as the raw checks say, and each restarted writer's first row
/// within `first_row_within` of its start.
async fn killed_six_times(extra_source: &str, first_row_within: Duration) {
    let _serial = SERIAL.lock().await;
    const N: usize = 50_000;
    const RESENT: usize = 5_000;
    const POISON: usize = 100;
    const LATE: usize = 2_000;
    let test_started = Instant::now();
    let Backlog {
        brokers,
        topic,
        db,
        checks,
        file,
        _dir,
    } = backlog("killed", N, 200, extra_source).await;
    // Re-sent duplicates, as a checker whose confirmation was lost sends them again, and
    // poison: two kinds of message no writer can store.
    writer::produce(&brokers, &topic, &checks[..RESENT]).await;
    let poison: Vec<(String, Vec<u8>)> = (0..POISON)
        .map(|i| {
            let payload = if i % 2 == 0 {
                format!("{{not json {i}").into_bytes()
            } else {
                format!("{{\"schema_version\": 99, \"n\": {i}}}").into_bytes()
            };
            (format!("poison-{i}"), payload)
        })
        .collect();
    writer::produce_raw(&brokers, &topic, &poison).await;
    // Late checks: slots an hour before the others, sent after them.
    let late: Vec<pipe::monitor::check::CheckResult> = writer::checks(LATE, 200)
        .into_iter()
        .map(|mut check| {
            check.scheduled_at -= Duration::from_secs(3600);
            check.started_at -= Duration::from_secs(3600);
            check.check_id = pipe::monitor::check::check_id(&check.target, check.scheduled_at);
            check
        })
        .collect();
    writer::produce(&brokers, &topic, &late).await;
    let total = N + LATE;
    let mut expected = ids(&checks);
    expected.extend(ids(&late));

    let mut random = Random::new();
    let mut kills = Vec::new();
    let mut first_rows = Vec::new();
    let mut stored = 0;
    for round in 0..5 {
        let mut writer = Pipe::start(&file, "writer");
        let started = Instant::now();
        // A random moment, within 0.4 s of this writer storing something of its own: it
        // stores thousands of checks a second, and 50,000 must outlast six writers.
        let more = wait_for_more(&db.url, stored, TWO_MINUTES).await;
        assert!(
            more > stored,
            "writer {round} stored nothing; log:\n{}",
            writer.log_tail()
        );
        if round > 0 {
            first_rows.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(random.below(400))).await;
        writer.kill(); // SIGKILL: no drain, no final commit
                       // Transactions the writer had sent may still commit just after it died: they are not
                       // the next writer's first rows.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stored = scalar(&db.url, COUNT).await;
        kills.push(stored);
        assert!(
            (stored as usize) < total,
            "killed after the end ({stored} rows): the test proves nothing; log:\n{}",
            writer.log_tail()
        );
        if round == 2 {
            // PostgreSQL restarted while the next writer starts.
            let postgres = Stopped::service("postgres");
            let writer = Pipe::start(&file, "writer");
            tokio::time::sleep(Duration::from_secs(3)).await;
            postgres.start();
            let more = wait_for_more(&db.url, stored, TWO_MINUTES).await;
            assert!(
                more > stored,
                "no progress after PostgreSQL restarted; log:\n{}",
                writer.log_tail()
            );
            drop(writer); // killed
            tokio::time::sleep(Duration::from_millis(300)).await;
            stored = scalar(&db.url, COUNT).await;
            kills.push(stored);
        }
    }
    let last = Pipe::start(&file, "writer");
    let started = Instant::now();
    wait_for_more(&db.url, stored, TWO_MINUTES).await;
    first_rows.push(started.elapsed());
    let final_count = wait_for(&db.url, COUNT, total as i64, TWO_MINUTES).await;
    let dead = wait_for(
        &db.url,
        "SELECT count(*) FROM dead_letters",
        POISON as i64,
        Duration::from_secs(10),
    )
    .await;
    let log = last.log_tail();
    let code = last.stop();
    let distinct = scalar(
        &db.url,
        "SELECT count(DISTINCT check_id) FROM check_results",
    )
    .await;
    let dead_positions = scalar(
        &db.url,
        "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM dead_letters",
    )
    .await;
    let url = db.url.clone();
    let (hourly, daily, incidents, replayed) = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        (
            history::rollup_differences(&mut client, "rollups_hourly", "hour"),
            history::rollup_differences(&mut client, "rollups_daily", "day"),
            history::stored_incidents(&mut client),
            history::replayed_incidents(&mut client, THRESHOLDS),
        )
    })
    .await
    .unwrap();
    let shown: Vec<String> = first_rows
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect();
    println!(
        "{}: killed at {kills:?} rows; stored {final_count}, distinct {distinct}, lost {}, dead letters {dead} ({dead_positions} positions) of {POISON} poison, {:.1} s",
        if extra_source.is_empty() { "dynamic members" } else { "static members" },
        total as i64 - distinct,
        test_started.elapsed().as_secs_f64()
    );
    println!("restarted writers' first rows, seconds after their start: {shown:?}");
    println!(
        "rollups: {} hourly rows ({} differ from the raw checks), {} daily ({} differ); incidents in {} series, {} as a replay",
        hourly.1, hourly.0, daily.1, daily.0, incidents.len(), replayed.len()
    );
    assert_eq!(final_count, total as i64, "log:\n{log}");
    assert_eq!(distinct, total as i64);
    assert_eq!(stored_ids(&db.url).await, expected);
    assert_eq!(hourly.0, 0, "hourly rollups count each stored check once");
    assert_eq!(daily.0, 0, "daily rollups count each stored check once");
    assert_eq!(
        incidents, replayed,
        "incidents equal a replay in slot order"
    );
    assert_eq!(
        dead, POISON as i64,
        "every poison message dead-lettered once"
    );
    assert_eq!(dead_positions, POISON as i64);
    assert_eq!(code, Some(0), "the last writer stops cleanly; log:\n{log}");
    let slowest = first_rows.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= first_row_within,
        "a restarted writer's first row came {:.1} s after its start, past {} s",
        slowest.as_secs_f64(),
        first_row_within.as_secs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_stopped_for_15_s_under_a_checker_and_a_writer_loses_no_slot() {
    let _serial = SERIAL.lock().await;
    const TARGETS: usize = 10;
    let started = Instant::now();
    let server = http::start().await;
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("outage", 3).await;
    let db = new_database("outage").await;
    let dir = tempfile::tempdir().unwrap();
    let targets: String = (0..TARGETS)
        .map(|i| {
            format!(
                "      - {{ name: site-{i}, url: '{}' }}\n",
                server.url("/ok")
            )
        })
        .collect();
    let checker_file = write_file(
        dir.path(),
        "checker.yaml",
        &format!(
            "\
sources:
  probe:
    type: http_probe
    interval: 1s
    targets:
{targets}sinks:
  kafka:
    type: kafka
    inputs: [probe]
    brokers: {brokers}
    topic: {topic}
"
        ),
    );
    let writer_file = write_file(
        dir.path(),
        "writer.yaml",
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &db.url, ""),
    );
    let checker = Pipe::start(&checker_file, "checker");
    let writer = Pipe::start(&writer_file, "writer");
    let before = wait_for_more(&db.url, 5 * TARGETS as i64, TWO_MINUTES).await;
    let broker = Stopped::service("kafka");
    tokio::time::sleep(Duration::from_secs(15)).await;
    broker.start();
    // Ten more seconds of checks after the broker is back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let checker_log = checker.log_tail();
    let checker_code = checker.stop();
    assert_eq!(
        checker_code,
        Some(0),
        "the checker delivered everything; log:\n{checker_log}"
    );
    // The writer catches up: nothing new for 5 s.
    let mut rows = scalar(&db.url, COUNT).await;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the writer never caught up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = scalar(&db.url, COUNT).await;
        if now != rows {
            rows = now;
            quiet_since = Instant::now();
        }
    }
    let writer_log = writer.log_tail();
    assert_eq!(writer.stop(), Some(0), "log:\n{writer_log}");

    let slots = support::writer::strings(
        &db.url,
        "SELECT target || ' ' || (extract(epoch FROM checked_at) * 1000)::bigint FROM check_results",
    )
    .await;
    let mut per_target: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for slot in &slots {
        let (target, ms) = slot.split_once(' ').unwrap();
        per_target
            .entry(target.to_owned())
            .or_default()
            .push(ms.parse().unwrap());
    }
    let distinct = scalar(
        &db.url,
        "SELECT count(DISTINCT check_id) FROM check_results",
    )
    .await;
    let mut gaps = Vec::new();
    for (target, slots) in &mut per_target {
        slots.sort_unstable();
        for pair in slots.windows(2) {
            if pair[1] - pair[0] != 1_000 {
                gaps.push(format!("{target}: {} -> {}", pair[0], pair[1]));
            }
        }
    }
    let spans: Vec<i64> = per_target
        .values()
        .map(|s| (s[s.len() - 1] - s[0]) / 1_000 + 1)
        .collect();
    println!(
        "stored {rows} ({before} before the outage), distinct {distinct}, {} targets, slots per target {spans:?}, gaps {}, {:.1} s",
        per_target.len(),
        gaps.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(per_target.len(), TARGETS);
    assert_eq!(rows, distinct, "no check stored twice");
    assert!(gaps.is_empty(), "every slot stored, none missing: {gaps:?}");
    assert!(
        spans.iter().all(|&n| n >= 30),
        "each target's slots span the outage: {spans:?}"
    );
    assert_eq!(rows, spans.iter().sum::<i64>());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_for_40_s_under_a_running_writer_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    const N: usize = 20_000;
    let started = Instant::now();
    let Backlog {
        db,
        checks,
        file,
        _dir,
        ..
    } = backlog("pgdown", N, 40, "").await;
    let addr = free_addr();
    let mut writer = Pipe::start_with(&file, "writer", &["--http-addr", &addr]);
    let at_stop = wait_for_more(&db.url, 1_000, TWO_MINUTES).await;
    wait_ready(&addr, 200, Duration::from_secs(40)).await;
    let stopping = Instant::now();
    let postgres = Stopped::service("postgres");
    // Not ready once writes have failed for 30 s; alive all along.
    let (_, body) = wait_ready(&addr, 503, Duration::from_secs(45)).await;
    let unready_after = stopping.elapsed();
    assert!(body.contains("database writes failing"), "{body}");
    assert_eq!(
        health(&addr).await,
        200,
        "liveness does not depend on the database"
    );
    tokio::time::sleep(Duration::from_secs(40).saturating_sub(unready_after)).await;
    assert!(
        writer.is_running(),
        "the writer waits for the database instead of failing; log:\n{}",
        writer.log_tail()
    );
    postgres.start();
    let recovered = Instant::now();
    let (ready_after, _) = wait_ready(&addr, 200, Duration::from_secs(60)).await;
    let stored = wait_for(&db.url, COUNT, N as i64, TWO_MINUTES).await;
    let caught_up = recovered.elapsed();
    println!(
        "/ready: 503 {:.1} s after PostgreSQL stopped, 200 again {:.1} s after it started",
        unready_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    assert!(
        unready_after >= Duration::from_secs(30),
        "not before 30 s of failures: {unready_after:?}"
    );
    // A database that is down fails every retry; the log says so at most once per 30 s.
    let log = std::fs::read_to_string(&writer.log).unwrap();
    let warnings = log.matches("database step failed; retrying").count();
    println!("{warnings} retry warnings logged over the 40 s outage");
    assert!((1..=3).contains(&warnings), "{warnings} warnings:\n{log}");
    let log = writer.log_tail();
    let code = writer.stop();
    let distinct = scalar(
        &db.url,
        "SELECT count(DISTINCT check_id) FROM check_results",
    )
    .await;
    println!(
        "{at_stop} stored when PostgreSQL stopped; stored {stored}, distinct {distinct}, lost {}, caught up {:.1} s after the restart, {:.1} s",
        N as i64 - distinct,
        caught_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stored, N as i64, "log:\n{log}");
    assert_eq!(stored_ids(&db.url).await, ids(&checks));
    assert_eq!(
        code,
        Some(0),
        "recovered by itself and stops cleanly; log:\n{log}"
    );
}

/// Kills a writer that is storing, starts it again at once, and returns how long after the
/// kill the new one stored its first row; checks that it then stores everything once.
async fn restart_at_once(extra_source: &str) -> Duration {
    const N: usize = 20_000;
    let Backlog {
        db,
        checks,
        file,
        _dir,
        ..
    } = backlog("rejoin", N, 40, extra_source).await;
    let mut first = Pipe::start(&file, "writer");
    wait_for_more(&db.url, 1_000, TWO_MINUTES).await;
    first.kill();
    let killed = Instant::now();
    let second = Pipe::start(&file, "writer");
    // Transactions the first writer had sent may still commit just after it died.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = scalar(&db.url, COUNT).await;
    let next = wait_for_more(&db.url, at_kill, Duration::from_secs(60)).await;
    let first_new_row = killed.elapsed();
    let stored = wait_for(&db.url, COUNT, N as i64, TWO_MINUTES).await;
    let log = second.log_tail();
    let code = second.stop();
    println!(
        "killed at {at_kill} rows; the new writer stored its first row {:.1} s after the kill ({next} rows), then {stored} of {N}",
        first_new_row.as_secs_f64()
    );
    assert_eq!(stored, N as i64, "log:\n{log}");
    assert_eq!(stored_ids(&db.url).await, ids(&checks));
    assert_eq!(code, Some(0), "log:\n{log}");
    first_new_row
}

/// Without `instance_id` the new writer is a new member: the broker gives it the partitions
/// once the dead member's session (10 s) has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_killed_and_started_again_at_once_stores_within_15_s() {
    let _serial = SERIAL.lock().await;
    let first_new_row = restart_at_once("").await;
    assert!(
        first_new_row < Duration::from_secs(15),
        "{:.1} s",
        first_new_row.as_secs_f64()
    );
}

/// With a static `instance_id` (KIP-345), the broker hands the dead writer's partitions to its
/// restarted self at once, without waiting for its session to end.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_writer_killed_and_started_again_at_once_stores_within_10_s() {
    let _serial = SERIAL.lock().await;
    let first_new_row = restart_at_once(&static_member()).await;
    assert!(
        first_new_row < Duration::from_secs(10),
        "{:.1} s",
        first_new_row.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_started_before_postgres_waits_then_stores_everything() {
    let _serial = SERIAL.lock().await;
    const N: usize = 5_000;
    let started = Instant::now();
    let Backlog {
        db,
        checks,
        file,
        _dir,
        ..
    } = backlog("pglate", N, 10, "").await;
    let postgres = Stopped::service("postgres");
    let mut writer = Pipe::start(&file, "writer");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        writer.is_running(),
        "the writer waits for PostgreSQL; log:\n{}",
        writer.log_tail()
    );
    postgres.start();
    let up = Instant::now();
    let stored = wait_for(&db.url, COUNT, N as i64, TWO_MINUTES).await;
    let after = up.elapsed();
    let log = writer.log_tail();
    let code = writer.stop();
    println!(
        "stored {stored} of {N}, {:.1} s after PostgreSQL came up, {:.1} s in all",
        after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stored, N as i64, "log:\n{log}");
    assert_eq!(stored_ids(&db.url).await, ids(&checks));
    assert_eq!(code, Some(0), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkers_are_not_ready_while_their_broker_is_down_or_their_queue_full() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let server = http::start().await;
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("unready", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let targets: String = (0..10)
        .map(|i| {
            format!(
                "      - {{ name: site-{i}, url: '{}' }}\n",
                server.url("/ok")
            )
        })
        .collect();
    let checker = |name: &str, options: &str| {
        write_file(
            dir.path(),
            &format!("{name}.yaml"),
            &format!(
                "\
sources:
  probe:
    type: http_probe
    interval: 500ms
    targets:
{targets}sinks:
  kafka:
    type: kafka
    inputs: [probe]
    brokers: {brokers}
    topic: {topic}
{options}"
            ),
        )
    };
    let roomy = checker("roomy", "");
    // A queue of 5 messages fills within a second of the broker going away.
    let cramped = checker(
        "cramped",
        "    options:\n      queue.buffering.max.messages: 5\n",
    );
    let (roomy_addr, cramped_addr) = (free_addr(), free_addr());
    let roomy = Pipe::start_with(&roomy, "roomy", &["--http-addr", &roomy_addr]);
    let cramped = Pipe::start_with(&cramped, "cramped", &["--http-addr", &cramped_addr]);
    wait_ready(&roomy_addr, 200, Duration::from_secs(30)).await;
    wait_ready(&cramped_addr, 200, Duration::from_secs(30)).await;

    let stopping = Instant::now();
    let broker = Stopped::service("kafka");
    let (_, full_body) = wait_ready(&cramped_addr, 503, Duration::from_secs(20)).await;
    let full_after = stopping.elapsed();
    assert!(full_body.contains("queue is full"), "{full_body}");
    let (_, body) = wait_ready(&roomy_addr, 503, Duration::from_secs(50)).await;
    let unreachable_after = stopping.elapsed();
    assert!(body.contains("Kafka broker"), "{body}");
    assert_eq!(
        health(&roomy_addr).await,
        200,
        "liveness does not depend on the broker"
    );
    broker.start();
    let (back_after, _) = wait_ready(&roomy_addr, 200, Duration::from_secs(60)).await;
    let (cramped_back_after, _) = wait_ready(&cramped_addr, 200, Duration::from_secs(60)).await;
    println!(
        "/ready: 503 for a full queue {:.1} s and for an unreachable broker {:.1} s after the broker stopped; \
         200 again {:.1} s and {:.1} s after it started; {:.1} s",
        full_after.as_secs_f64(),
        unreachable_after.as_secs_f64(),
        back_after.as_secs_f64(),
        cramped_back_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        unreachable_after >= Duration::from_secs(30),
        "an unreachable broker counts after 30 s: {unreachable_after:?}"
    );
    let (roomy_log, cramped_log) = (roomy.log_tail(), cramped.log_tail());
    assert_eq!(
        roomy.stop(),
        Some(0),
        "everything delivered; log:\n{roomy_log}"
    );
    assert_eq!(
        cramped.stop(),
        Some(0),
        "everything delivered; log:\n{cramped_log}"
    );
}
