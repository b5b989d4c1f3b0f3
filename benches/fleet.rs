//! A checker fleet at scale: 50,000 targets whose responses take 300 ms, three `pipe run`
//! checkers of one fleet on this machine, sharing the targets topic by group membership, with
//! every result read back from the results topic as a writer would read it. Halfway through,
//! one checker is SIGKILLed and the other two take its targets over.
//!
//! What it reports: scheduling lateness (p50/p99/max, before and after the kill), slots missed
//! and checked twice, the hand-over time of the killed checker's targets, and each checker's
//! resident memory and CPU. The figures are what BENCHMARKS.md ("Checker fleet at scale")
//! records.
//!
//! `scripts/bench-fleet` starts the local broker and runs it; by hand, with `KAFKA_BROKERS` set:
//!
//! ```sh
//! cargo bench --bench fleet -- [--targets 50000] [--delay-ms 300] [--checkers 3]
//!     [--interval 30s] [--concurrency 400] [--steady-s 120] [--after-s 120]
//! ```
//!
//! Checkers run with the shipped settings of the targets topic (a 45 s session timeout) and of
//! the `kafka` sink; only `concurrency` is raised: at 300 ms a response, a checker holding a
//! third of 50,000 targets at 30 s has about 170 checks in flight (250 once it holds half), more
//! than the default 100 permits.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The topics' partitions, as docs/fleet.md recommends: enough for six members to share.
const PARTITIONS: i32 = 6;
/// Loopback ports of the slow server: one would do, four spread the sockets a fresh connection
/// per check leaves behind.
const PORTS: usize = 4;

struct Options {
    targets: usize,
    delay: Duration,
    checkers: usize,
    interval: Duration,
    concurrency: usize,
    steady: Duration,
    after: Duration,
}

fn options() -> Options {
    let mut o = Options {
        targets: 50_000,
        delay: Duration::from_millis(300),
        checkers: 3,
        interval: Duration::from_secs(30),
        concurrency: 400,
        steady: Duration::from_secs(120),
        after: Duration::from_secs(120),
    };
    // `cargo bench` adds `--bench`; anything else unknown is a mistake worth stopping for.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        let number = |v: String| -> u64 { v.parse().unwrap_or_else(|_| panic!("{flag}: {v}")) };
        match flag.as_str() {
            "--targets" => o.targets = number(value()) as usize,
            "--delay-ms" => o.delay = Duration::from_millis(number(value())),
            "--checkers" => o.checkers = number(value()) as usize,
            "--interval" => o.interval = pipe::config::duration::parse(&value()).unwrap(),
            "--concurrency" => o.concurrency = number(value()) as usize,
            "--steady-s" => o.steady = Duration::from_secs(number(value())),
            "--after-s" => o.after = Duration::from_secs(number(value())),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        o.checkers >= 2,
        "--checkers: one is killed, another must take over"
    );
    o
}

/// An HTTP/1.1 server on loopback that answers every request with 200 after `delay`, on its
/// own runtime thread, and closes the connection (so the server keeps the TIME_WAIT sockets).
fn slow_server(delay: Duration) -> Vec<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listeners: Vec<_> = (0..PORTS)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .collect();
    let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            for listener in listeners {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(answer(stream, delay));
                    }
                });
            }
            std::future::pending::<()>().await
        })
    });
    addrs
}

async fn answer(mut stream: tokio::net::TcpStream, delay: Duration) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0_u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    tokio::time::sleep(delay).await;
    let body = "<html><body>up</body></html>";
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS: the local broker (scripts/bench-fleet starts it)")
}

fn create_topics(brokers: &str, names: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .unwrap()
        {
            result.unwrap_or_else(|(topic, e)| panic!("cannot create {topic}: {e}"));
        }
    });
}

/// A result as read back, small: 50,000 targets for minutes make hundreds of thousands.
struct Seen {
    target: u32,
    slot_ms: u64,
    late_ms: u32,
    took_ms: u32,
    checker: u8,
    failed: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    target: &'a str,
    #[serde(borrow)]
    scheduled_at: &'a str,
    #[serde(borrow)]
    started_at: &'a str,
    response_time_ms: f64,
    #[serde(borrow, default)]
    checker: Option<&'a str>,
    up: bool,
}

fn epoch_ms(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Reads the results topic from its start on a thread of its own until `stop`.
fn follow(
    brokers: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Seen>>>, std::thread::JoinHandle<()>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-fleet-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.expect("read the results topic");
            let wire: Wire = serde_json::from_slice(message.payload().unwrap()).unwrap();
            let slot_ms = epoch_ms(wire.scheduled_at);
            let seen = Seen {
                target: wire.target[1..].parse().unwrap(),
                slot_ms,
                late_ms: epoch_ms(wire.started_at).saturating_sub(slot_ms) as u32,
                took_ms: wire.response_time_ms as u32,
                checker: wire.checker.unwrap_or("c?")[1..].parse().unwrap_or(u8::MAX),
                failed: !wire.up,
            };
            record.lock().unwrap().push(seen);
        }
    });
    (seen, thread)
}

/// A checker pipeline of the fleet, with the shipped settings but `concurrency`.
fn checker_yaml(o: &Options, brokers: &str, targets: &str, results: &str, name: &str) -> String {
    format!(
        "sources:
  probe:
    type: http_probe
    checker: {name}
    timeout: 5s
    concurrency: {concurrency}
    targets_topic:
      brokers: {brokers}
      topic: {targets}
      fleet: {targets}-fleet
      results_topic: {results}
sinks:
  kafka:
    type: kafka
    inputs: [probe]
    brokers: {brokers}
    topic: {results}
",
        concurrency = o.concurrency
    )
}

fn spawn_checker(dir: &Path, name: &str, yaml: &str) -> Child {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a checker")
}

/// `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user and system) a process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat[end + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux target Rust supports.
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `min / p50 / p99 / max UNIT (n N)`.
fn summary(mut values: Vec<u64>, unit: &str) -> String {
    values.sort_unstable();
    format!(
        "min {} / p50 {} / p99 {} / max {} {unit} (n {})",
        percentile(&values, 0.0),
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        percentile(&values, 1.0),
        values.len()
    )
}

fn main() {
    let o = options();
    let brokers = brokers();
    let stamp = format!("{}_{}", std::process::id(), now_ms());
    let (targets_topic, results_topic) = (
        format!("bench_fleet_targets_{stamp}"),
        format!("bench_fleet_results_{stamp}"),
    );
    create_topics(&brokers, &[&targets_topic, &results_topic]);
    let addrs = slow_server(o.delay);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-fleet-{stamp}"));
    std::fs::create_dir_all(&dir).unwrap();

    // The targets, published as a user would: `pipe targets apply`.
    let file = dir.join("targets.yaml");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..o.targets {
        let addr = addrs[i % addrs.len()];
        writeln!(
            out,
            "- {{ name: t{i}, url: 'http://{addr}/?t={i}', interval: {}s }}",
            o.interval.as_secs()
        )
        .unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let applied = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args([
            "targets",
            "apply",
            file.to_str().unwrap(),
            "--topic",
            &targets_topic,
        ])
        .env("KAFKA_BROKERS", &brokers)
        .stdout(Stdio::null())
        .status()
        .expect("run pipe targets apply");
    assert!(status.success(), "pipe targets apply failed");
    let apply_s = applied.elapsed().as_secs_f64();
    println!(
        "fleet: {} targets at {:?}, responses after {:?}, {} checkers, concurrency {}; \
         `pipe targets apply` took {apply_s:.1} s; logs in {}",
        o.targets,
        o.interval,
        o.delay,
        o.checkers,
        o.concurrency,
        dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = follow(&brokers, &results_topic, Arc::clone(&stop));
    let started = Instant::now();
    let mut checkers: Vec<(String, Child)> = (0..o.checkers)
        .map(|i| {
            let name = format!("c{i}");
            let yaml = checker_yaml(&o, &brokers, &targets_topic, &results_topic, &name);
            let child = spawn_checker(&dir, &name, &yaml);
            (name, child)
        })
        .collect();
    let pids: Vec<u32> = checkers.iter().map(|(_, c)| c.id()).collect();
    let kill_all = || {
        for &pid in &pids {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    };

    // Every target reported once: the fleet holds them all.
    let deadline = Instant::now() + o.interval * 2 + Duration::from_secs(120);
    loop {
        let distinct = {
            let seen = seen.lock().unwrap();
            let mut targets: Vec<u32> = seen.iter().map(|s| s.target).collect();
            targets.sort_unstable();
            targets.dedup();
            targets.len()
        };
        if distinct == o.targets {
            break;
        }
        if Instant::now() > deadline {
            kill_all();
            panic!("only {distinct} of {} targets reported", o.targets);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let all_seen_s = started.elapsed().as_secs_f64();
    // One more interval, so steady state starts after every target's first slot.
    std::thread::sleep(o.interval);
    let steady_from = now_ms();
    let cpu_steady: Vec<Duration> = pids.iter().map(|&pid| cpu_time(pid)).collect();
    std::thread::sleep(o.steady);

    let cpu_before: Vec<Duration> = pids.iter().map(|&pid| cpu_time(pid)).collect();
    let steady_rss: Vec<(u64, u64)> = pids
        .iter()
        .map(|&pid| (memory_kib(pid, "VmRSS:"), memory_kib(pid, "VmHWM:")))
        .collect();
    let killed_at = now_ms();
    let (killed_name, mut killed) = checkers.remove(0);
    killed.kill().unwrap();
    let _ = killed.wait();
    std::thread::sleep(o.after);
    let ended_at = now_ms();

    let after_s = o.after.as_secs_f64();
    let mut rows = Vec::new();
    for (i, (name, child)) in checkers.iter().enumerate() {
        let pid = child.id();
        let cpu = cpu_time(pid) - cpu_before[i + 1];
        rows.push(format!(
            "{name}: RSS {} MiB (peak {} MiB), CPU {:.0}% of a core after the kill",
            memory_kib(pid, "VmRSS:") / 1024,
            memory_kib(pid, "VmHWM:") / 1024,
            cpu.as_secs_f64() / after_s * 100.0
        ));
    }
    for (name, child) in &mut checkers {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "{name} did not stop cleanly: {status}");
    }
    // What the stopping checkers flushed, read before the reader stops.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // Per target, its slots in order.
    let interval_ms = o.interval.as_millis() as u64;
    let mut slots: HashMap<u32, Vec<(u64, u8)>> = HashMap::new();
    for s in &seen {
        slots
            .entry(s.target)
            .or_default()
            .push((s.slot_ms, s.checker));
    }
    // Missed slots by where the gap ends: before steady state (the fleet forming), in it, and
    // after the kill.
    let (mut duplicated, mut missed) = (0_u64, [0_u64; 3]);
    let mut handover_ms = Vec::new();
    let mut handed_over_missed = Vec::new();
    for list in slots.values_mut() {
        list.sort_unstable();
        let before = list.len();
        list.dedup_by_key(|(slot, _)| *slot);
        duplicated += (before - list.len()) as u64;
        for pair in list.windows(2) {
            let missing = (pair[1].0 - pair[0].0) / interval_ms - 1;
            let period = if pair[1].0 < steady_from {
                0
            } else if pair[1].0 < killed_at {
                1
            } else {
                2
            };
            missed[period] += missing;
        }
        // The killed checker's targets: from the kill to the first slot another one checked.
        let last = list.iter().rev().find(|(slot, _)| *slot < killed_at);
        if let Some(&(last, 0)) = last {
            if let Some(next) = list.iter().find(|(slot, c)| *slot >= killed_at && *c != 0) {
                handover_ms.push(next.0 - killed_at);
                handed_over_missed.push((next.0 - last) / interval_ms - 1);
            }
        }
    }
    let late = |from: u64, to: u64| {
        summary(
            seen.iter()
                .filter(|s| s.slot_ms >= from && s.slot_ms < to)
                .map(|s| u64::from(s.late_ms))
                .collect(),
            "ms",
        )
    };
    let took: Vec<u64> = seen
        .iter()
        .filter(|s| s.slot_ms >= steady_from && s.slot_ms < killed_at)
        .map(|s| u64::from(s.took_ms))
        .collect();
    let failed = seen.iter().filter(|s| s.failed).count();
    let handed = handover_ms.len();
    let missed_per_target = summary(handed_over_missed.clone(), "slots");
    let handed_missed: u64 = handed_over_missed.iter().sum();

    println!("all targets reported within {all_seen_s:.0} s of the checkers' start");
    println!(
        "results {}, targets {}, failed {failed}, duplicated slots {duplicated}",
        seen.len(),
        slots.len()
    );
    println!("while the fleet formed: missed slots {}", missed[0]);
    println!(
        "steady ({} s, {} checkers): lateness {}, missed slots {}",
        o.steady.as_secs(),
        o.checkers,
        late(steady_from, killed_at),
        missed[1]
    );
    println!("  response time {}", summary(took, "ms"));
    println!(
        "after SIGKILL of {killed_name} ({} s): lateness {}, missed slots {}",
        o.after.as_secs(),
        late(killed_at, ended_at),
        missed[2]
    );
    println!(
        "hand-over of {handed} targets of {killed_name}: first slot checked by a new owner, after the kill: {}",
        summary(handover_ms, "ms")
    );
    println!("  slots they missed: {handed_missed} in all, per target {missed_per_target}");
    for (i, (rss, hwm)) in steady_rss.into_iter().enumerate() {
        let cpu = cpu_before[i] - cpu_steady[i];
        println!(
            "c{i} in steady state: RSS {} MiB (peak {} MiB), CPU {:.0}% of a core",
            rss / 1024,
            hwm / 1024,
            cpu.as_secs_f64() / o.steady.as_secs_f64() * 100.0
        );
    }
    for row in rows {
        println!("{row}");
    }
    // How the survivors took the dead one's partitions: the hand-over's own figures, and the
    // gaps they counted (`pipe_probe_handover_gap_slots_total`), against those seen above.
    let mut counted = 0_u64;
    for (name, _) in &checkers {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        let takeovers: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("targets taken over"))
            .collect();
        counted += takeovers
            .iter()
            .filter_map(|l| {
                l.split("gap_slots: ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
        if let Some(line) = takeovers.last() {
            println!("{name}'s last take-over: {line}");
        }
    }
    println!(
        "gap slots counted by the survivors: {counted} (missed after the kill: {})",
        missed[2]
    );
    assert_eq!(slots.len(), o.targets, "every target reported");
    assert_eq!(missed[1], 0, "no slot missed in steady state");
}
