//! The `kafka` source's pause and resume, and two writers sharing a consumer group, proven
//! against librdkafka's in-process mock cluster.
//!
//! Why not the local broker: tansu 0.6.0 returns nothing for a fetch that starts inside a
//! record batch, and that is exactly what a consumer asks for when it resumes paused partitions
//! (librdkafka drops its cached messages on pause and refetches from the next offset). Apache
//! Kafka returns the containing batch, as the mock cluster does. The assertions are the ones the
//! tansu-based tests make.
//!
//! Two writers in one group: against tansu, with the group formed while the topic was empty,
//! one run stored 3,999 of 4,000 checks: the broker held all 4,000, the missing one was the first
//! message of one partition, it never reached the writer (a message lost inside the pipeline
//! fails its acknowledgement and stops the source, and nothing failed), and a single consumer
//! on an empty topic received every first message. The cause was not pinned down; the same
//! scenario runs here, against a broker that follows Kafka's protocol.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use pipe::topology::RunOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::writer::{ids, stored_ids, wait_for};
use support::{pipeline, unique_name, writer};

#[tokio::test]
async fn paused_partitions_resume_mid_batch_without_loss_or_repeats() {
    const N: usize = 5_000;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("checks", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();

    // Many records per batch, as a real checker produces them.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "50")
        .set("batch.num.messages", "1000")
        .create()
        .unwrap();
    let checks = writer::checks(N, 30);
    let sends = checks.iter().map(|c| {
        let payload = serde_json::to_vec(c).unwrap();
        let key = c.target.clone();
        let producer = &producer;
        async move {
            producer
                .send(
                    FutureRecord::to("checks").key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    });
    futures::future::join_all(sends).await;

    let channel = unique_name("mock");
    let group = unique_name("group");
    let mut seen = pipeline::capture(&channel);
    // The sink reads nothing for 8 s after its first event: the pipeline fills, and after 5 s of
    // refusal the source pauses its partitions, then resumes them in the middle of batches.
    let yaml = format!(
        "\
sources:
  checks:
    type: kafka
    brokers: {brokers}
    topics: [checks]
    group: {group}
sinks:
  out:
    type: capture
    inputs: [checks]
    channel: {channel}
    hold: 8s
"
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let mut ids = Vec::new();
    while ids.len() < N {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {N}", ids.len()))
            .unwrap();
        ids.push(fields["check_id"].as_str().unwrap().to_owned());
    }
    // Anything more would be a repeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((fields, _)) = seen.try_recv() {
        ids.push(fields["check_id"].as_str().unwrap().to_owned());
    }
    running.stop().await.expect("a clean stop");
    assert_eq!(ids.len(), N, "every message once, none repeated");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), N);

    // The group's committed offsets reached the end of every partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition("checks", p);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .sum();
    assert_eq!(total, N as i64);
}

#[tokio::test]
async fn two_writers_in_one_group_split_the_partitions_and_survive_one_leaving() {
    let cluster = MockCluster::new(1).unwrap();
    let topic = unique_name("shared");
    cluster.create_topic(&topic, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let db = tokio::task::spawn_blocking(|| support::create_database("shared"))
        .await
        .unwrap();
    let group = unique_name("group");
    let yaml = |channel: &str| {
        writer::writer_yaml(&brokers, &topic, &group, &db.url, "").replace(
            "sinks:\n",
            &format!("sinks:\n  seen:\n    type: capture\n    inputs: [checks]\n    channel: {channel}\n"),
        )
    };
    let (a_name, b_name) = (unique_name("a"), unique_name("b"));
    let mut a_seen = pipeline::capture(&a_name);
    let mut b_seen = pipeline::capture(&b_name);
    let a = pipeline::start(&yaml(&a_name), RunOptions::default());
    let b = pipeline::start(&yaml(&b_name), RunOptions::default());
    // Let both join before the data arrives, so the partitions are split.
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
