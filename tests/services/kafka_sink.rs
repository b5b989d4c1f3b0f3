//! The `kafka` sink against a real broker: the checker pipeline publishes exactly what it
//! produced, keyed by target, in schema v1; and results wait for a broker that starts late.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::support::{http, pipeline};
use pipe::monitor::check::CheckResult;
use pipe::topology::RunOptions;
use serde_json::Value;

#[tokio::test]
async fn the_checker_publishes_every_result_once_keyed_by_target() {
    let server = http::start().await;
    let topic = support::create_topic("checks", 3).await;
    let brokers = support::kafka_brokers();
    let channel = support::unique_name("produced");
    let mut produced = pipeline::capture(&channel);
    let yaml = format!(
        "\
sources:
  probe:
    type: http_probe
    interval: 1s
    targets:
      - {{ name: alpha, url: '{}', regex: Aiven }}
      - {{ name: beta, url: '{}' }}
      - {{ name: gamma, url: 'http://127.0.0.1:{}/' }}
transforms:
  body:
    type: regex_match
    inputs: [probe]
  speed:
    type: latency
    inputs: [body]
    slow: 500ms
    critical: 2s
sinks:
  kafka:
    type: kafka
    inputs: [speed]
    brokers: {brokers}
    topic: {topic}
    options:
      linger.ms: 5
  copy:
    type: capture
    inputs: [speed]
    channel: {channel}
",
        server.url("/ok"),
        server.url("/status/503"),
        http::closed_port(),
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    while sent.len() < 9 {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(30), produced.recv())
            .await
            .expect("results keep coming")
            .unwrap();
        sent.insert(
            fields["check_id"].as_str().unwrap().to_owned(),
            fields["target"].as_str().unwrap().to_owned(),
        );
    }
    // A clean stop waits for the broker to confirm everything in flight.
    running.stop().await.expect("a clean stop");
    while let Ok((fields, _)) = produced.try_recv() {
        sent.insert(
            fields["check_id"].as_str().unwrap().to_owned(),
            fields["target"].as_str().unwrap().to_owned(),
        );
    }

    let messages = support::consume_all(&brokers, &topic, sent.len()).await;
    assert_eq!(messages.len(), sent.len(), "exactly one message per result");
    let mut received = BTreeMap::new();
    let mut partition_of = HashMap::new();
    for (partition, key, payload) in &messages {
        let json: Value = serde_json::from_slice(payload).unwrap();
        let result: CheckResult = serde_json::from_value(json.clone()).expect("schema v1");
        assert_eq!(
            key.as_deref(),
            Some(result.target.as_str()),
            "keyed by target"
        );
        assert_eq!(
            *partition_of
                .entry(result.target.clone())
                .or_insert(*partition),
            *partition,
            "one target, one partition"
        );
        assert!(
            json.get("body").is_none() && !String::from_utf8_lossy(payload).contains("Welcome"),
            "no page content in Kafka"
        );
        received.insert(result.check_id.to_string(), result.target);
    }
    assert_eq!(received, sent);
    let targets: BTreeSet<&str> = received.values().map(String::as_str).collect();
    assert_eq!(targets, BTreeSet::from(["alpha", "beta", "gamma"]));
}

#[tokio::test]
async fn results_wait_for_a_broker_that_starts_late() {
    let port = http::closed_port();
    let brokers = format!("127.0.0.1:{port}");
    let topic = support::unique_name("late");
    // The broker, with the topic, is down when the pipeline starts, and has the topic the moment
    // it is back (its storage keeps it). Creating the topic only after the broker came up left
    // a moment when the sink's start-up check, still waiting for its first answer, could be
    // told the topic does not exist, and fail as it should for a missing topic.
    let mut broker = support::PrivateBroker::start(port);
    support::create_topic_on(&broker.brokers, &topic, 1).await;
    broker.stop();
    let yaml = format!(
        "\
sources:
  gen:
    type: generate
    interval: 20ms
    count: 25
    fields: {{ target: late-site, up: true }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: {brokers}
    topic: {topic}
"
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    // Every result is produced while no broker is there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.is_finished(),
        "the sink must wait for the broker, not give up"
    );

    broker.resume();
    // The source has finished; the pipeline ends once the broker has confirmed all 25.
    tokio::time::timeout(Duration::from_secs(60), async {
        while !running.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("delivered after the broker came up");
    running.stop().await.expect("every message confirmed");

    let messages = support::consume_all(&broker.brokers, &topic, 25).await;
    assert_eq!(messages.len(), 25);
    assert!(messages
        .iter()
        .all(|(_, key, _)| key.as_deref() == Some("late-site")));
}
