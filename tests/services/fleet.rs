//! A checker fleet on the local Apache Kafka: targets read from the targets topic and shared by
//! the group's members, changed at run time, handed over when a member leaves or dies, and
//! checked from the slot after the last one published.
//!
//! Results are read back from the results topic, so what is asserted is what a writer gets:
//! every slot of a target once, gaps only where the documented bound allows them; and the
//! thousand-target fleet's topic goes through a writer into PostgreSQL, which must hold the
//! same slots once each.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipe::topology::RunOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::support::{self, http, pipeline, unique_name, writer};

/// A result as read back: target, slot (ms), checker, and when it was read.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    slot: u64,
    checker: String,
    /// `started_at − scheduled_at`, ms: how late the check started.
    late_ms: u64,
    /// `response_time_ms`.
    took_ms: u64,
    read_at: Instant,
}

/// Reads the results topic from its start in the background until dropped.
struct Results {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Results {
    fn follow(topic: &str, partitions: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", support::kafka_brokers())
            .set("group.id", unique_name("results-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).expect("assign");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (record, done) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                let ms = |field: &str| {
                    humantime::parse_rfc3339(value[field].as_str().unwrap())
                        .unwrap()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64
                };
                let slot = ms("scheduled_at");
                record.lock().unwrap().push(Seen {
                    target: value["target"].as_str().unwrap().to_owned(),
                    slot,
                    checker: value["checker"].as_str().unwrap_or("").to_owned(),
                    late_ms: ms("started_at").saturating_sub(slot),
                    took_ms: value["response_time_ms"].as_f64().unwrap() as u64,
                    read_at: Instant::now(),
                });
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Results {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Kills the checkers a failed test leaves behind, so they do not go on loading the machine.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in &self.0 {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Waits for a child process without holding up the test's runtime.
async fn wait_for(mut child: Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().expect("wait for a checker"))
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publishes `targets` (name, url) at `interval` to the targets topic with `pipe targets apply`.
fn apply(topic: &str, targets: &[(String, String)], interval: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    let mut yaml = String::new();
    for (name, url) in targets {
        yaml.push_str(&format!(
            "- name: {name}\n  url: '{url}'\n  interval: {interval}\n"
        ));
    }
    std::fs::write(&file, yaml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["targets", "apply", file.to_str().unwrap(), "--topic", topic])
        .env("KAFKA_BROKERS", support::kafka_brokers())
        .output()
        .expect("run pipe targets apply");
    assert!(
        output.status.success(),
        "pipe targets apply: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// When the latest record of each of `keys` went into `topic` (its timestamp, ms).
fn published_at(topic: &str, partitions: i32, keys: &[&str]) -> BTreeMap<String, u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", unique_name("targets-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(p, high);
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    let mut found = BTreeMap::new();
    let mut read: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends
        .iter()
        .any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end)
    {
        assert!(Instant::now() < deadline, "cannot read {topic} to its end");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("read the targets topic");
        read.insert(message.partition(), message.offset() + 1);
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if keys.contains(&key.as_str()) {
            let at = message.timestamp().to_millis().expect("a timestamp") as u64;
            found.insert(key, at);
        }
    }
    found
}

/// A checker pipeline of `fleet` publishing to `results`.
fn checker_yaml(targets: &str, results: &str, fleet: &str, checker: &str, extra: &str) -> String {
    let brokers = support::kafka_brokers();
    format!(
        "sources:
  probe:
    type: http_probe
    checker: {checker}
    timeout: 2s
    targets_topic:
      brokers: {brokers}
      topic: {targets}
      fleet: {fleet}
      results_topic: {results}
      options:
        session.timeout.ms: '6000'
        heartbeat.interval.ms: '500'
{extra}sinks:
  kafka:
    type: kafka
    inputs: [probe]
    brokers: {brokers}
    topic: {results}
    options:
      linger.ms: 5
"
    )
}

/// Per target, its slots seen: (duplicated slots, missing slots between its first and last).
fn tally(seen: &[Seen], interval_ms: u64) -> (BTreeMap<String, Vec<u64>>, u64, u64) {
    let mut slots: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in seen {
        slots.entry(s.target.clone()).or_default().push(s.slot);
    }
    let (mut duplicated, mut missing) = (0, 0);
    for list in slots.values_mut() {
        list.sort_unstable();
        let before = list.len();
        list.dedup();
        duplicated += (before - list.len()) as u64;
        for pair in list.windows(2) {
            missing += (pair[1] - pair[0]) / interval_ms - 1;
        }
    }
    (slots, duplicated, missing)
}

#[tokio::test]
async fn targets_added_and_removed_live_take_effect_within_two_seconds() {
    let server = http::start().await;
    let targets = support::create_topic("fleet-targets", 3).await;
    let results = support::create_topic("fleet-results", 3).await;
    let reader = Results::follow(&results, 3);
    let initial: Vec<(String, String)> = (0..5)
        .map(|i| (format!("site-{i}"), server.url("/ok")))
        .collect();
    apply(&targets, &initial, "1s");
    let fleet = unique_name("fleet");
    let running = pipeline::start(
        &checker_yaml(&targets, &results, &fleet, "solo", ""),
        RunOptions::default(),
    );
    // Wait until all five report.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally(&reader.snapshot(), 1000).0.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the first targets never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Add site-5, remove site-0.
    let mut changed = initial[1..].to_vec();
    changed.push(("site-5".into(), server.url("/ok")));
    let changed_at = now_ms();
    let apply_targets = targets.clone();
    tokio::task::spawn_blocking(move || apply(&apply_targets, &changed, "1s"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    running.stop().await.expect("the checker stops cleanly");
    let seen = reader.snapshot();
    let (slots, duplicated, _) = tally(&seen, 1000);
    let first_new = slots["site-5"][0];
    let last_removed = *slots["site-0"].last().unwrap();
    // "Within 2 s" counts from when each change is in the topic (its record's timestamp):
    // `pipe targets apply` first reads the topic for its plan, which takes its own time.
    let in_topic = published_at(&targets, 3, &["site-5", "site-0"]);
    let (added_at, removed_at) = (in_topic["site-5"], in_topic["site-0"]);
    println!(
        "live changes: `pipe targets apply` published {} ms after it started; site-5 first slot \
         {} ms after its record, site-0 last slot {} ms after its tombstone",
        added_at.min(removed_at) as i64 - changed_at as i64,
        first_new as i64 - added_at as i64,
        last_removed as i64 - removed_at as i64,
    );
    assert!(
        first_new <= added_at + 2_000,
        "added too late: {first_new} vs {added_at}"
    );
    assert!(
        last_removed <= removed_at + 2_000,
        "removed too late: {last_removed} vs {removed_at}"
    );
    assert!(slots["site-5"].len() >= 3, "{:?}", slots["site-5"]);
    assert_eq!(duplicated, 0, "no slot is published twice");
}

/// A checker process (so it can be SIGKILLed) of the fleet.
fn spawn_checker(yaml: &str, dir: &std::path::Path, name: &str) -> Child {
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

// Several threads: the test's HTTP server must answer while the test waits for a checker to
// stop, or every check of the others would time out meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_shares_a_thousand_targets_and_hands_them_over() {
    const TARGETS: usize = 1_000;
    let server = http::start().await;
    let targets = support::create_topic("fleet-targets", 6).await;
    let results = support::create_topic("fleet-results", 6).await;
    let reader = Results::follow(&results, 6);
    let list: Vec<(String, String)> = (0..TARGETS)
        .map(|i| (format!("site-{i:04}"), server.url("/ok")))
        .collect();
    let apply_targets = targets.clone();
    tokio::task::spawn_blocking(move || apply(&apply_targets, &list, "1s"))
        .await
        .unwrap();
    let fleet = unique_name("fleet");
    let dir = tempfile::tempdir().unwrap();
    let yaml = |name: &str| checker_yaml(&targets, &results, &fleet, name, "");
    let mut a = spawn_checker(&yaml("a"), dir.path(), "a");
    let mut running = KillOnDrop(vec![a.id()]);
    let b = spawn_checker(&yaml("b"), dir.path(), "b");
    let c = spawn_checker(&yaml("c"), dir.path(), "c");
    running.0.extend([b.id(), c.id()]);

    let wait_all = |what: &str, seconds: u64| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let what = what.to_owned();
        let seen = Arc::clone(&reader.seen);
        async move {
            loop {
                let checkers: BTreeSet<String> = {
                    let seen = seen.lock().unwrap();
                    let recent = Instant::now() - Duration::from_secs(2);
                    seen.iter()
                        .filter(|s| s.read_at > recent)
                        .map(|s| s.target.clone())
                        .collect()
                };
                if checkers.len() == TARGETS {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: only {} targets reported in the last 2 s",
                    checkers.len()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_all("three checkers", 60).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // SIGKILL one: its targets move after the session timeout (6 s here).
    let killed_at = now_ms();
    a.kill().unwrap();
    let a = wait_for(a).await;
    assert!(!a.success(), "a SIGKILLed checker does not exit cleanly");
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_all("after a SIGKILL", 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A new member joins: targets move to it by a cooperative rebalance, exactly.
    let joined_at = now_ms();
    let d = spawn_checker(&yaml("d"), dir.path(), "d");
    running.0.push(d.id());
    tokio::time::sleep(Duration::from_secs(15)).await;
    wait_all("after a join", 60).await;

    // A graceful stop (SIGTERM): its targets are handed over, exactly.
    let stopped_at = now_ms();
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    assert!(
        wait_for(b).await.success(),
        "a checker stops cleanly on SIGTERM"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    wait_all("after a graceful stop", 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended_at = now_ms() - 2_000;

    for child in [c, d] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_for(child).await;
    }
    let seen: Vec<Seen> = reader
        .snapshot()
        .into_iter()
        .filter(|s| s.slot <= ended_at)
        .collect();
    let (slots, duplicated, _) = tally(&seen, 1000);
    // Gaps by period: around the kill (allowed: the session timeout and the rebalance),
    // around the join and the graceful stop (hand-overs that should lose nothing).
    let mut gaps = [0_u64; 3];
    for list in slots.values() {
        for pair in list.windows(2) {
            let missing = (pair[1] - pair[0]) / 1000 - 1;
            if missing == 0 {
                continue;
            }
            let period = if pair[0] < joined_at {
                0
            } else if pair[0] < stopped_at {
                1
            } else {
                2
            };
            gaps[period] += missing;
        }
    }
    let killed_gap_ms = slots
        .values()
        .flat_map(|list| list.windows(2).map(|p| p[1] - p[0]))
        .max()
        .unwrap_or(0);
    println!(
        "fleet of three, {TARGETS} targets at 1 s: results {}, targets {}, duplicated {duplicated}, \
         missing slots after the SIGKILL {} (longest gap {killed_gap_ms} ms from {killed_at}), \
         after the join {}, after the graceful stop {}; logs in {:?}",
        seen.len(),
        slots.len(),
        gaps[0],
        gaps[1],
        gaps[2],
        dir.path(),
    );
    let mut per_checker: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        *per_checker.entry(s.checker.as_str()).or_default() += 1;
    }
    println!("results per checker: {per_checker:?}");
    let mut late: Vec<u64> = seen.iter().map(|s| s.late_ms).collect();
    let mut took: Vec<u64> = seen.iter().map(|s| s.took_ms).collect();
    late.sort_unstable();
    took.sort_unstable();
    let at = |list: &[u64], q: f64| list[((list.len() - 1) as f64 * q) as usize];
    println!(
        "started late p50/p99/max {}/{}/{} ms, response time p50/p99/max {}/{}/{} ms",
        at(&late, 0.5),
        at(&late, 0.99),
        at(&late, 1.0),
        at(&took, 0.5),
        at(&took, 0.99),
        at(&took, 1.0)
    );
    // Where the slots went missing, by second, for a failure's cause.
    let mut missing_at: BTreeMap<u64, u64> = BTreeMap::new();
    for list in slots.values() {
        for pair in list.windows(2) {
            for k in 1..(pair[1] - pair[0]) / 1000 {
                *missing_at
                    .entry((pair[0] + k * 1000) / 1000 % 1000)
                    .or_default() += 1;
            }
        }
    }
    println!("missing slots by second (mod 1000): {missing_at:?}");
    // What the members said about their hand-overs, for the figures (and a failure's cause).
    for name in ["a", "b", "c", "d"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        for line in log.lines().filter(|l| {
            l.contains("taken over")
                || l.contains("given up")
                || l.contains("ERRO")
                || l.contains("WARN")
        }) {
            println!("{name}: {line}");
        }
    }
    assert_eq!(slots.len(), TARGETS);
    assert_eq!(duplicated, 0, "no slot is checked twice");
    // The dead member's targets (a third) lose at most the session timeout and a rebalance.
    assert!(
        killed_gap_ms <= 15_000,
        "a SIGKILLed member's targets resume within 15 s: {killed_gap_ms} ms"
    );

    // What a writer makes of it: the whole results topic (read after the fleet stopped, so
    // that a writer's load does not shape the fleet's figures) into PostgreSQL. Every slot
    // published is stored once, and the longest gap in PostgreSQL is the one seen above.
    let published: usize = reader
        .snapshot()
        .iter()
        .map(|s| (s.target.clone(), s.slot))
        .collect::<BTreeSet<_>>()
        .len();
    let db = tokio::task::spawn_blocking(|| support::create_database("fleet"))
        .await
        .unwrap();
    let storing = pipeline::start(
        &writer::writer_yaml(
            &support::kafka_brokers(),
            &results,
            &unique_name("writer"),
            &db.url,
            "",
        ),
        RunOptions::default(),
    );
    let stored = writer::wait_for(
        &db.url,
        "SELECT count(*) FROM checks",
        published as i64,
        Duration::from_secs(120),
    )
    .await;
    storing.stop().await.expect("the writer stops cleanly");
    let targets_stored =
        writer::scalar(&db.url, "SELECT count(DISTINCT target_id) FROM checks").await;
    // Over the slots the gaps above were counted in (up to `ended_at`).
    let longest_gap_ms = writer::scalar(
        &db.url,
        &format!(
            "SELECT coalesce(max(gap), 0)::int8 FROM (
                 SELECT (extract(epoch FROM checked_at - lag(checked_at) OVER w) * 1000)::int8
                     AS gap
                 FROM checks WHERE checked_at <= to_timestamp({ended_at} / 1000.0)
                 WINDOW w AS (PARTITION BY target_id ORDER BY checked_at)) AS g"
        ),
    )
    .await;
    println!(
        "in PostgreSQL: {stored} checks of {published} distinct slots published, {targets_stored} \
         targets, longest gap {longest_gap_ms} ms"
    );
    assert_eq!(
        stored, published as i64,
        "every slot published is stored once"
    );
    assert_eq!(targets_stored, TARGETS as i64);
    assert_eq!(
        longest_gap_ms as u64, killed_gap_ms,
        "PostgreSQL holds the slots the topic holds"
    );
    assert_eq!(gaps[1], 0, "a join moves targets without losing a slot");
    assert_eq!(
        gaps[2], 0,
        "a graceful stop hands targets over without losing a slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_store_two_rows_per_slot() {
    const TARGETS: usize = 20;
    let server = http::start().await;
    let targets = support::create_topic("regions-targets", 2).await;
    let results = support::create_topic("regions-results", 2).await;
    let reader = Results::follow(&results, 2);
    let list: Vec<(String, String)> = (0..TARGETS)
        .map(|i| (format!("site-{i:02}"), server.url("/ok")))
        .collect();
    let apply_targets = targets.clone();
    tokio::task::spawn_blocking(move || apply(&apply_targets, &list, "1s"))
        .await
        .unwrap();
    let db = tokio::task::spawn_blocking(|| support::create_database("regions"))
        .await
        .unwrap();
    let brokers = support::kafka_brokers();
    let storing = pipeline::start(
        &writer::writer_yaml(&brokers, &results, &unique_name("writer"), &db.url, ""),
        RunOptions::default(),
    );
    // Each region runs a fleet of its own over all the targets.
    let checkers: Vec<_> = ["eu-west", "us-east"]
        .into_iter()
        .map(|region| {
            pipeline::start(
                &checker_yaml(
                    &targets,
                    &results,
                    &unique_name(&format!("fleet-{region}")),
                    &format!("probe-{region}"),
                    &format!("    region: {region}\n"),
                ),
                RunOptions::default(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    for checker in checkers {
        checker.stop().await.expect("a checker stops cleanly");
    }
    let published = reader.snapshot().len() as i64;
    let stored = writer::wait_for(
        &db.url,
        "SELECT count(*) FROM checks",
        published,
        Duration::from_secs(60),
    )
    .await;
    storing.stop().await.expect("the writer stops cleanly");
    // The slots both regions were running for, per target: a region takes its targets
    // partition by partition, so each target's window runs from its later first slot
    // (across the regions) to its earlier last one.
    let per_slot = |having: &str| {
        format!(
            "WITH spans AS (
                 SELECT target_id, region_id, min(checked_at) AS first, max(checked_at) AS last
                 FROM checks GROUP BY target_id, region_id),
             bounds AS (
                 SELECT target_id, max(first) AS lo, min(last) AS hi
                 FROM spans GROUP BY target_id HAVING count(*) = 2)
             SELECT count(*) FROM (
                 SELECT c.target_id, c.checked_at FROM checks c
                 JOIN bounds b ON b.target_id = c.target_id
                 WHERE c.checked_at BETWEEN b.lo AND b.hi
                 GROUP BY c.target_id, c.checked_at
                 HAVING {having}) s"
        )
    };
    let both = writer::scalar(
        &db.url,
        "SELECT count(*) FROM (SELECT target_id FROM checks GROUP BY target_id
                              HAVING count(DISTINCT region_id) = 2) t",
    )
    .await;
    let two = writer::scalar(&db.url, &per_slot("count(DISTINCT region_id) = 2")).await;
    let other = writer::scalar(&db.url, &per_slot("count(*) <> 2")).await;
    let regions = writer::strings(
        &db.url,
        "SELECT r.name || ' ' || count(*) FROM checks c JOIN regions r ON r.id = c.region_id
         GROUP BY r.name ORDER BY r.name",
    )
    .await;
    println!(
        "two regions, {TARGETS} targets at 1 s: published {published}, stored {stored}, \
         targets checked from both regions {both}, slots with a row from each region {two}, \
         slots with another count {other}; rows per region {regions:?}"
    );
    assert_eq!(stored, published, "every published check is stored once");
    assert_eq!(
        both, TARGETS as i64,
        "every target is checked from both regions"
    );
    assert_eq!(other, 0, "every slot both regions ran has exactly two rows");
    assert!(
        two >= (TARGETS * 4) as i64,
        "both regions checked every target for a few seconds: {two} slots"
    );
    assert_eq!(regions.len(), 2, "{regions:?}");
}

/// Per target and region, the incidents stored: `(target, region, incidents)`, and per target
/// the global ones.
async fn incident_counts(url: &str) -> (Vec<String>, Vec<String>) {
    let regional = writer::strings(
        url,
        "SELECT target || ' ' || region || ' ' || count(*) FROM incidents
         GROUP BY target, region ORDER BY target, region",
    )
    .await;
    let global = writer::strings(
        url,
        "SELECT target || ' ' || count(*) FROM global_incidents GROUP BY target ORDER BY target",
    )
    .await;
    (regional, global)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_outage_opens_a_regional_incident_and_no_global_one() {
    const TARGETS: usize = 4;
    const REGIONS: [&str; 2] = ["eu-west", "us-east"];
    let server = http::start().await;
    let targets = support::create_topic("outage-targets", 2).await;
    let results = support::create_topic("outage-results", 2).await;
    let list: Vec<(String, String)> = (0..TARGETS)
        .map(|i| (format!("shop-{i}"), server.url("/regional")))
        .collect();
    let apply_targets = targets.clone();
    tokio::task::spawn_blocking(move || apply(&apply_targets, &list, "1s"))
        .await
        .unwrap();
    let db = tokio::task::spawn_blocking(|| support::create_database("outage"))
        .await
        .unwrap();
    let brokers = support::kafka_brokers();
    // Two regions down at once make a global incident; the default of 3 failures in a row
    // make a regional one.
    let storing = pipeline::start(
        &(writer::writer_yaml(&brokers, &results, &unique_name("writer"), &db.url, "")
            + "    down_regions: 2\n"),
        RunOptions::default(),
    );
    let checkers: Vec<_> = REGIONS
        .into_iter()
        .map(|region| {
            pipeline::start(
                &checker_yaml(
                    &targets,
                    &results,
                    &unique_name(&format!("fleet-{region}")),
                    &format!("probe-{region}"),
                    &format!("    region: {region}\n    headers:\n      X-Region: {region}\n"),
                ),
                RunOptions::default(),
            )
        })
        .collect();
    // Both regions checking, all up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // us-east alone loses the targets for 6 slots, then gets them back.
    http::set_region_down("us-east", true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    http::set_region_down("us-east", false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer::wait_for(
        &db.url,
        "SELECT count(*) FROM incidents WHERE ended_at IS NOT NULL",
        TARGETS as i64,
        Duration::from_secs(30),
    )
    .await;
    let (regional, global) = incident_counts(&db.url).await;
    println!("after us-east's outage: regional incidents {regional:?}, global {global:?}");
    let expected: Vec<String> = (0..TARGETS)
        .map(|i| format!("shop-{i} us-east 1"))
        .collect();
    assert_eq!(
        regional, expected,
        "one regional incident per target, from us-east"
    );
    assert!(global.is_empty(), "no global incident: {global:?}");
    // Both regions lose them: now a quorum of 2.
    for region in REGIONS {
        http::set_region_down(region, true);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for region in REGIONS {
        http::set_region_down(region, false);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for checker in checkers {
        checker.stop().await.expect("a checker stops cleanly");
    }
    writer::wait_for(
        &db.url,
        "SELECT count(*) FROM global_incidents WHERE ended_at IS NOT NULL",
        TARGETS as i64,
        Duration::from_secs(30),
    )
    .await;
    let (regional, global) = incident_counts(&db.url).await;
    let spans = writer::strings(
        &db.url,
        "SELECT g.target || ' ' || g.regions || ' ' || g.cause || ' '
                || (g.started_at = (SELECT max(i.started_at) FROM incidents i
                                    WHERE i.target = g.target AND i.started_at <= g.started_at))
         FROM global_incidents g ORDER BY 1",
    )
    .await;
    println!("after both regions' outage: regional incidents {regional:?}, global {global:?} ({spans:?})");
    storing.stop().await.expect("the writer stops cleanly");
    let expected: Vec<String> = (0..TARGETS)
        .flat_map(|i| [format!("shop-{i} eu-west 1"), format!("shop-{i} us-east 2")])
        .collect();
    assert_eq!(regional, expected);
    let expected: Vec<String> = (0..TARGETS).map(|i| format!("shop-{i} 1")).collect();
    assert_eq!(global, expected, "one global incident per target");
    let expected: Vec<String> = (0..TARGETS)
        .map(|i| format!("shop-{i} 2 http_503 true"))
        .collect();
    assert_eq!(
        spans, expected,
        "two regions down, starting when the later region's incident started"
    );

    // The report shows both.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args([
            "report",
            "--database-url",
            &db.url,
            "--since",
            "1h",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for target in report["targets"].as_array().unwrap() {
        assert_eq!(target["incidents"].as_array().unwrap().len(), 3, "{target}");
        assert_eq!(
            target["global_incidents"].as_array().unwrap().len(),
            1,
            "{target}"
        );
        assert_eq!(target["global_incidents"][0]["regions"], 2, "{target}");
    }
}
