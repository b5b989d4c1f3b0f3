//! Two writers sharing a consumer group, and rebalances while the `kafka` source waits or is
//! paused, on the local Apache Kafka: its group coordinator is the one a deployment meets.
//!
//! Rebalances: a member that waits for a message while the group rebalances gets, at the end
//! of that one wait, the first message of its new assignment. Before the source settled the
//! revocation ahead of tracking that message, it forgot it, and the next offset was committed
//! over it: two writers in one group stored 3,999 of 4,000 checks, on two different brokers,
//! whenever the second writer joined after the group had formed. And a rebalance while
//! the source was paused left it paused with nothing to hand over, reading nothing again: the
//! messages it held went with the revoked partitions, and librdkafka keeps a partition's pause
//! when it is given back.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::writer::{ids, stored_ids, wait_for};
use crate::support::{pipeline, unique_name, writer};
use pipe::topology::RunOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Source options for tests that rebalance: short sessions (6 s, the broker's least by default)
/// and frequent heartbeats, so that a member that left is noticed soon.
const QUICK_REBALANCES: &str = "    options:
      session.timeout.ms: '6000'
      heartbeat.interval.ms: '250'
";

#[tokio::test]
async fn two_writers_in_one_group_split_the_partitions_and_survive_one_leaving() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("shared", 4).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("shared"))
        .await
        .unwrap();
    let group = unique_name("group");
    let yaml = |channel: &str| {
        writer::writer_yaml(&brokers, &topic, &group, &db.url, QUICK_REBALANCES).replace(
            "sinks:\n",
            &format!("sinks:\n  seen:\n    type: capture\n    inputs: [checks]\n    channel: {channel}\n"),
        )
    };
    let (a_name, b_name) = (unique_name("a"), unique_name("b"));
    let mut a_seen = pipeline::capture(&a_name);
    let mut b_seen = pipeline::capture(&b_name);
    // Writers scale out one at a time: the second joins a group that has formed, so the first
    // goes through a rebalance while it waits for messages. Both hold partitions before the
    // data arrives.
    let a = pipeline::start(&yaml(&a_name), RunOptions::default());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = pipeline::start(&yaml(&b_name), RunOptions::default());
    tokio::time::sleep(Duration::from_secs(8)).await;

    let checks = writer::checks(8_000, 40);
    writer::produce(&brokers, &topic, &checks[..4_000]).await;
    assert_eq!(
        wait_for(
            &db.url,
            "SELECT count(*) FROM checks",
            4_000,
            Duration::from_secs(120)
        )
        .await,
        4_000
    );
    let count = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    let (a_first, b_first) = (count(&mut a_seen), count(&mut b_seen));
    assert!(
        a_first > 0 && b_first > 0,
        "both writers took partitions: {a_first} and {b_first}"
    );

    a.stop().await.expect("a clean leave");
    writer::produce(&brokers, &topic, &checks[4_000..]).await;
    assert_eq!(
        wait_for(
            &db.url,
            "SELECT count(*) FROM checks",
            8_000,
            Duration::from_secs(120)
        )
        .await,
        8_000
    );
    b.stop().await.expect("a clean stop");
    assert_eq!(stored_ids(&db.url).await, ids(&checks));
    assert!(count(&mut b_seen) > 0, "the remaining writer took over");
}

/// The rebalance comes while the source waits for a message: librdkafka runs the revoke and
/// the assign inside that one wait, and the wait ends with the first message of the new
/// assignment. A second member that subscribes to another topic makes the group rebalance
/// without taking any of the source's partitions, so (with Kafka's default eager protocol) the
/// source loses all of them and gets the same ones back.
#[tokio::test]
async fn a_rebalance_during_an_idle_wait_keeps_the_first_message_after_it() {
    let (brokers, topic, other_topic) = rebalance_topics().await;
    let group = unique_name("group");
    let channel = unique_name("idle");
    let mut seen = pipeline::capture(&channel);
    let options = format!(
        "{QUICK_REBALANCES}      # Offsets are committed before each rebalance, so nothing is read twice.
      auto.commit.interval.ms: '100'
"
    );
    let yaml = captured(&brokers, &topic, &group, &channel, &options, "");
    let running = pipeline::start(&yaml, RunOptions::default());
    let checks = writer::checks(400, 40);
    let mut received = Vec::new();

    // The source owns all four partitions and has handled everything in them: it now waits.
    writer::produce(&brokers, &topic, &checks[..100]).await;
    take(&mut seen, 100, &mut received).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Another member joins; once it holds its partition the rebalance is over.
    let other = join_group(&brokers, &group, &other_topic).await;

    writer::produce(&brokers, &topic, &checks[100..200]).await;
    take(&mut seen, 100, &mut received).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // And leaves again: another rebalance while the source waits.
    drop(other);
    tokio::time::sleep(Duration::from_secs(5)).await;
    writer::produce(&brokers, &topic, &checks[200..]).await;
    take(&mut seen, 200, &mut received).await;

    running.stop().await.expect("a clean stop");
    while let Ok((fields, _)) = seen.try_recv() {
        received.push(fields["check_id"].as_str().unwrap().to_owned());
    }
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    let expected = ids(&checks);
    let missing: Vec<_> = expected.difference(&unique).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(received.len(), checks.len(), "repeated");
}

/// A rebalance while the source is paused (the pipeline has refused its messages for seconds,
/// as in a database outage) takes away every message it held. When the pipeline takes messages
/// again, the source must be reading, not paused with nothing left to hand over.
#[tokio::test]
async fn a_rebalance_while_paused_leaves_the_source_reading() {
    const N: usize = 2_000;
    let (brokers, topic, other_topic) = rebalance_topics().await;
    let group = unique_name("group");
    let channel = unique_name("paused");
    let mut seen = pipeline::capture(&channel);
    // The sink reads nothing for 20 s after its first event: after 5 s the source pauses, and
    // the rebalance comes and goes while it is paused.
    let yaml = captured(
        &brokers,
        &topic,
        &group,
        &channel,
        QUICK_REBALANCES,
        "    hold: 20s\n",
    );
    let started = tokio::time::Instant::now();
    let running = pipeline::start(&yaml, RunOptions::default());
    let checks = writer::checks(N, 40);
    writer::produce(&brokers, &topic, &checks).await;
    // The group forms at once (the local broker's group.initial.rebalance.delay.ms is 0), the
    // sink takes its first event and holds, and 5 s later the source pauses.
    tokio::time::sleep_until(started + Duration::from_secs(10)).await;
    let other = join_group(&brokers, &group, &other_topic).await;

    // Repeats are allowed: what was in flight when the partitions were revoked is read again.
    let mut received = BTreeSet::new();
    while received.len() < N {
        received.insert(next_id(&mut seen, received.len()).await);
    }
    running.stop().await.expect("a clean stop");
    drop(other);
    assert_eq!(received, ids(&checks));
}

/// A pipeline from the `kafka` source (`topic`) to a `capture` sink, with more lines for each.
fn captured(
    brokers: &str,
    topic: &str,
    group: &str,
    channel: &str,
    source: &str,
    sink: &str,
) -> String {
    format!(
        "\
sources:
  checks:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
{source}sinks:
  out:
    type: capture
    inputs: [checks]
    channel: {channel}
{sink}"
    )
}

/// The local broker, a topic for the source to read (4 partitions) and one for a second member
/// to join the group with.
async fn rebalance_topics() -> (String, String, String) {
    (
        support::kafka_brokers(),
        support::create_topic("rebalance", 4).await,
        support::create_topic("other", 1).await,
    )
}

/// A second member of `group`, subscribed to `topic`, once the rebalance that lets it in is
/// over (it holds a partition).
async fn join_group(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let other: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&[topic]).unwrap();
    // Polled off the runtime, which the source needs meanwhile to rejoin the group.
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while other.assignment().unwrap().count() == 0 {
            assert!(std::time::Instant::now() < deadline, "no rebalance");
            other.poll(Duration::from_millis(100));
        }
        other
    })
    .await
    .unwrap()
}

type Seen = tokio::sync::mpsc::UnboundedReceiver<(pipe::Fields, Option<bytes::Bytes>)>;

/// Waits for `n` more captured checks and records their ids.
async fn take(seen: &mut Seen, n: usize, received: &mut Vec<String>) {
    for _ in 0..n {
        received.push(next_id(seen, received.len()).await);
    }
}

/// The id of the next captured check, `so_far` having come before it.
async fn next_id(seen: &mut Seen, so_far: usize) -> String {
    let (fields, _) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
        .await
        .unwrap_or_else(|_| panic!("stalled after {so_far} messages"))
        .unwrap();
    fields["check_id"].as_str().unwrap().to_owned()
}
