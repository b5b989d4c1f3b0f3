//! What delivery through Kafka depends on: the local broker keeps Kafka's semantics (a fetch
//! from inside a batch, data across a restart), every codec both ways, a missing topic refused
//! at start, a lost result reflected in the exit code, and an unreadable batch that stops the
//! writer with its location instead of spinning.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{pipeline, unique_name};
use pipe::topology::RunOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A producer that writes real batches: up to 1,000 records each, within 50 ms.
fn batching_producer(brokers: &str, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "50")
        .set("batch.num.messages", "1000")
        .set("compression.type", compression)
        .create()
        .unwrap()
}

/// Sends `payloads` to one partition, all at once, so that they travel in batches.
async fn produce_batched(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    payloads: &[String],
) {
    let sends = payloads.iter().map(|payload| {
        producer.send(
            FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("delivered");
    }
}

/// Reads `topic`/`partition` from `offset` with a consumer outside any group until `want`
/// messages arrive or the partition stays quiet for 3 s; returns their (offset, payload).
fn read_from(
    brokers: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    want: usize,
) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let mut quiet_since = std::time::Instant::now();
    while read.len() < want && quiet_since.elapsed() < Duration::from_secs(3) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                read.push((
                    message.offset(),
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                ));
                quiet_since = std::time::Instant::now();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    read
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("message {i}")).collect()
}

fn offsets(read: &[(i64, String)]) -> Vec<i64> {
    read.iter().map(|(offset, _)| *offset).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_from_inside_a_batch_returns_the_rest_of_it() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("midbatch", 1).await;
    let producer = batching_producer(&brokers, "none");
    produce_batched(&producer, &topic, 0, &numbered(0..10)).await;

    let read = tokio::task::block_in_place(|| read_from(&brokers, &topic, 0, 5, 5));
    println!("fetch from 5 after batch 0-9: offsets {:?}", offsets(&read));
    assert_eq!(offsets(&read), [5, 6, 7, 8, 9]);
    assert_eq!(read[0].1, "message 5");

    produce_batched(&producer, &topic, 0, &numbered(10..20)).await;
    let read = tokio::task::block_in_place(|| read_from(&brokers, &topic, 0, 5, 15));
    println!(
        "fetch from 5 after batch 10-19: offsets {:?}",
        offsets(&read)
    );
    assert_eq!(offsets(&read), (5..20).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_records_and_committed_offsets_survive_a_broker_restart() {
    const N: usize = 3_000;
    let mut broker =
        tokio::task::block_in_place(|| support::PrivateBroker::start(support::http::closed_port()));
    let topic = unique_name("restart");
    support::create_topic_on(&broker.brokers, &topic, 3).await;
    let producer = batching_producer(&broker.brokers, "lz4");
    for partition in 0..3 {
        produce_batched(&producer, &topic, partition, &numbered(0..N / 3)).await;
    }
    drop(producer);
    let group = unique_name("group");
    let commit = |brokers: &str| {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut offsets = TopicPartitionList::new();
        for partition in 0..3 {
            offsets
                .add_partition_offset(
                    &topic,
                    partition,
                    Offset::Offset(100 + i64::from(partition)),
                )
                .unwrap();
        }
        // A broker that has just started loads its offsets topic on the first request for a
        // group's coordinator, and says NotCoordinator until then: Kafka's word to try again.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync) {
                Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NotCoordinator
                    | rdkafka::types::RDKafkaErrorCode::CoordinatorLoadInProgress,
                )) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                result => break result.expect("commit"),
            }
        }
    };
    tokio::task::block_in_place(|| commit(&broker.brokers));

    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| {
        broker.stop();
        broker.resume();
    });
    println!(
        "broker restarted in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let brokers = broker.brokers.clone();
    let (records, offsets) = tokio::task::block_in_place(|| {
        let records: usize = (0..3)
            .map(|partition| read_from(&brokers, &topic, partition, 0, N / 3).len())
            .sum();
        (
            records,
            support::committed_offsets(&brokers, &group, &topic, 0..3),
        )
    });
    println!("after the restart: {records} of {N} records, committed offsets {offsets:?}");
    assert_eq!(records, N, "every record is still there");
    assert_eq!(
        offsets,
        [
            Offset::Offset(100),
            Offset::Offset(101),
            Offset::Offset(102)
        ],
        "committed offsets are still there"
    );
}

/// Every codec both ways: the `kafka` sink writes batches with it, and the `kafka` source reads
/// them. On librdkafka's mock cluster, which keeps each batch exactly as the producer
/// compressed it, and on the local Apache Kafka, which also keeps a producer's batches as they
/// came (its topics' `compression.type` is `producer`), so that the source really decompresses
/// every codec from a real broker.
#[tokio::test]
async fn every_codec_is_written_by_the_sink_and_read_by_the_source() {
    const N: u64 = 300;
    let mock = MockCluster::new(1).unwrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        for (broker, brokers) in [
            ("local broker", support::kafka_brokers()),
            ("mock cluster", mock.bootstrap_servers()),
        ] {
            let topic = unique_name(codec);
            if broker == "mock cluster" {
                mock.create_topic(&topic, 3, 1).unwrap();
            } else {
                support::create_topic_on(&brokers, &topic, 3).await;
            }
            let produce = format!(
                "\
sources:
  gen:
    type: generate
    interval: 1ms
    count: {N}
    fields: {{ target: codec-site, up: true, codec: {codec} }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: {brokers}
    topic: {topic}
    key: codec
    options: {{ compression.type: {codec}, linger.ms: 50 }}
"
            );
            pipeline::start(&produce, RunOptions::default())
                .wait()
                .await
                .unwrap_or_else(|e| panic!("{codec} to the {broker}: {e}"));

            let channel = unique_name("codec");
            let mut seen = pipeline::capture(&channel);
            let consume = format!(
                "\
sources:
  kafka:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    format: json
sinks:
  seen:
    type: capture
    inputs: [kafka]
    channel: {channel}
",
                group = unique_name("group")
            );
            let running = pipeline::start(&consume, RunOptions::default());
            let mut received = 0;
            while received < N {
                let (fields, _) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{codec} from the {broker}: stalled after {received} of {N}")
                    })
                    .unwrap();
                assert_eq!(fields["codec"], codec);
                received += 1;
            }
            running.stop().await.expect("a clean stop");
            assert!(seen.try_recv().is_err(), "{codec}: nothing more than {N}");
            println!("{codec}: {N} messages through the {broker}");
        }
    }
}

/// Runs `pipe run` on a pipeline file holding `yaml`, off the runtime's threads.
async fn run_pipe(yaml: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, yaml).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args(["run", file.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_missing_topic_stops_the_run_before_anything_is_produced() {
    let brokers = support::kafka_brokers();
    let topic = unique_name("never_created");
    let yaml = format!(
        "\
sources:
  gen:
    type: generate
    interval: 10ms
    fields: {{ target: site }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: {brokers}
    topic: {topic}
  copy:
    type: console
    inputs: [gen]
"
    );
    let started = std::time::Instant::now();
    let out = run_pipe(yaml).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "exit {:?} after {:.1} s",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no event was produced: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.lines().any(
            |line| line.contains(&format!("topic `{topic}` does not exist"))
                && line.contains(&brokers)
                && line.contains("avn service topic-create")
                && line.contains("kafka-topics.sh")
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_run_that_lost_results_exits_1_with_the_counts() {
    // No broker at all: every message expires after message.timeout.ms.
    let brokers = format!("127.0.0.1:{}", support::http::closed_port());
    let yaml = format!(
        "\
sources:
  gen:
    type: generate
    interval: 10ms
    count: 7
    fields: {{ target: site }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: {brokers}
    topic: checks
    connect_timeout: 1s
    options: {{ message.timeout.ms: 1500 }}
"
    );
    let out = run_pipe(yaml).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    println!("last log line: {last}");
    assert!(
        last.contains(
            "7 of 7 messages to topic `checks` were not delivered: 0 delivered, 7 failed"
        ),
        "{stderr}"
    );
}

/// A batch that cannot be decompressed, between readable ones, on the mock cluster: no real
/// broker stores a batch it cannot read, but Apache Kafka keeps whatever a producer's codec
/// wrote, so a consumer built without that codec meets exactly this.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_batch_stops_the_writer_naming_where_it_is() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let topic = unique_name("unreadable");
    mock.create_topic(&topic, 3, 1).unwrap();
    let producer = batching_producer(&brokers, "none");
    for partition in 0..3 {
        produce_batched(&producer, &topic, partition, &numbered(0..40)).await;
    }
    let code = support::wire::produce_batch(
        &brokers,
        &topic,
        1,
        &support::wire::undecompressable_batch(5),
    );
    assert_eq!(code, 0, "the mock cluster stores the batch");
    for partition in 0..3 {
        produce_batched(&producer, &topic, partition, &numbered(100..110)).await;
    }

    let channel = unique_name("unreadable");
    let mut seen = pipeline::capture(&channel);
    let group = unique_name("group");
    let yaml = format!(
        "\
sources:
  kafka:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    format: json
    options: {{ auto.commit.interval.ms: 100 }}
sinks:
  seen:
    type: capture
    inputs: [kafka]
    channel: {channel}
"
    );
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline::start(&yaml, RunOptions::default()).wait(),
    )
    .await
    .expect("the writer stops by itself instead of spinning");
    let error = result
        .expect_err("an unreadable batch fails the run")
        .to_string();
    println!(
        "stopped after {:.1} s: {error}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        error.contains(&format!(
            "cannot read topic `{topic}` partition 1 at offset 40"
        )) && error.contains("BadCompression"),
        "{error}"
    );
    let mut handed_over = 0;
    while seen.try_recv().is_ok() {
        handed_over += 1;
    }
    println!("{handed_over} messages handed over before the stop");
    assert!(
        handed_over >= 40,
        "at least partition 1's 40 readable messages"
    );

    // Everything before the batch was handled and committed, and nothing past it.
    let committed =
        tokio::task::block_in_place(|| support::committed_offsets(&brokers, &group, &topic, 1..2));
    assert_eq!(committed, [Offset::Offset(40)]);
}

/// A topic that is missing while results are made (a broker that came up without it, as
/// after a deletion) and created 5 s later: librdkafka gives up on each result after
/// `topic.metadata.propagation.max.ms` (1 s here), the sink sends it again every second, and
/// every result lands once the topic is there; the run ends well.
#[tokio::test(flavor = "multi_thread")]
async fn results_for_a_missing_topic_wait_until_it_exists() {
    const N: usize = 20;
    let port = support::http::closed_port();
    let topic = unique_name("late_topic");
    let yaml = format!(
        "\
sources:
  gen:
    type: generate
    interval: 50ms
    count: {N}
    fields: {{ target: site, up: true }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: 127.0.0.1:{port}
    topic: {topic}
    connect_timeout: 1s
    options: {{ topic.metadata.propagation.max.ms: 1000 }}
"
    );
    // No broker at start: the check finds nobody, and the results wait.
    let running = pipeline::start(&yaml, RunOptions::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker = tokio::task::block_in_place(|| support::PrivateBroker::start(port));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!running.is_finished(), "the results wait for their topic");
    let created = std::time::Instant::now();
    support::create_topic_on(&broker.brokers, &topic, 1).await;
    tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the run ends once the topic exists")
        .expect("no result was dropped");
    println!(
        "all {N} results sent {:.1} s after the topic was created",
        created.elapsed().as_secs_f64()
    );
    let messages = support::consume_all(&broker.brokers, &topic, N).await;
    assert_eq!(messages.len(), N, "every result once");
}

/// Sends `messages` (key, payload) with kafka-python, compressed with `codec`, to `partition`.
fn produce_with_kafka_python(
    brokers: &str,
    topic: &str,
    partition: i32,
    codec: &str,
    messages: &[(String, Vec<u8>)],
) {
    use std::io::Write;
    let python = std::env::var("PIPE_KAFKA_PYTHON").unwrap_or_else(|_| {
        panic!("PIPE_KAFKA_PYTHON is not set: this test needs Python with kafka-python; run it with scripts/test, which installs them")
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/kafka_python_produce.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args([brokers, topic, &partition.to_string(), codec])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    for (key, payload) in messages {
        stdin.write_all(key.as_bytes()).unwrap();
        stdin.write_all(b"\t").unwrap();
        stdin.write_all(payload).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka-python with {codec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Checks compressed with every codec, by librdkafka (the project's own producer) and by
/// kafka-python, each batch followed by a poison message, all in one partition, read by one
/// writer: every check stored once, and every poison message dead-lettered, right where it was.
#[tokio::test(flavor = "multi_thread")]
async fn every_codec_from_either_client_is_stored_once_and_poison_behind_each_is_dead_lettered() {
    use support::writer;
    const PER_BATCH: usize = 300;
    const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("codecs", 1).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("codecs"))
        .await
        .unwrap();
    let checks = writer::checks(PER_BATCH * CODECS.len() * 2, 10);
    let mut batches = checks.chunks(PER_BATCH);
    let mut poison = Vec::new();
    for codec in CODECS {
        for client in ["librdkafka", "kafka-python"] {
            let mut messages: Vec<(String, Vec<u8>)> = batches
                .next()
                .unwrap()
                .iter()
                .map(|c| (c.target.clone(), serde_json::to_vec(c).unwrap()))
                .collect();
            let bad = format!("{{\"schema_version\": 1, \"poison\": \"{codec} by {client}\"");
            messages.push(("site-0".into(), bad.clone().into_bytes()));
            poison.push(bad);
            if client == "librdkafka" {
                let producer = batching_producer(&brokers, codec);
                let payloads: Vec<(String, Vec<u8>)> = messages;
                let sends = payloads.iter().map(|(key, payload)| {
                    producer.send(
                        FutureRecord::to(&topic)
                            .partition(0)
                            .key(key)
                            .payload(payload),
                        Duration::from_secs(30),
                    )
                });
                for result in futures::future::join_all(sends).await {
                    result.map_err(|(e, _)| e).expect("delivered");
                }
                println!("{} messages with {codec} by librdkafka", payloads.len());
            } else {
                let brokers = brokers.clone();
                let topic = topic.clone();
                tokio::task::spawn_blocking(move || {
                    produce_with_kafka_python(&brokers, &topic, 0, codec, &messages)
                })
                .await
                .unwrap();
            }
        }
    }

    let started = std::time::Instant::now();
    let running = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &db.url, ""),
        RunOptions::default(),
    );
    let minute = Duration::from_secs(60);
    let total = checks.len() as i64;
    let letters = writer::wait_for(&db.url, "SELECT count(*) FROM dead_letters", 10, minute).await;
    let stored = writer::wait_for(&db.url, "SELECT count(*) FROM checks", total, minute).await;
    running.stop().await.expect("a clean stop");
    let distinct = writer::stored_ids(&db.url).await;
    let lost = writer::ids(&checks).difference(&distinct).count();
    println!(
        "stored {stored}, distinct {}, lost {lost}, dead letters {letters} of 10, {:.1} s",
        distinct.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stored, total, "every check once");
    assert_eq!(distinct, writer::ids(&checks));
    let letters = writer::strings(
        &db.url,
        "SELECT kafka_offset::text || ' ' || convert_from(payload, 'UTF8') FROM dead_letters ORDER BY kafka_offset",
    )
    .await;
    let expected: Vec<String> = poison
        .iter()
        .enumerate()
        .map(|(i, bad)| format!("{} {bad}", (i + 1) * (PER_BATCH + 1) - 1))
        .collect();
    assert_eq!(letters, expected, "each poison message, at its own offset");
}

/// A broker that takes every connection and answers every request but fetches, which it
/// drops (tansu 0.6.0 did this to every fetch of a snappy batch): librdkafka reconnects and
/// retries for ever and reports nothing but dropped connections. The source names the
/// partitions and how far behind they are, is not ready from the moment it sees the stall, and
/// stops after `stall_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_whose_fetches_keep_failing_is_named_then_stops_the_run() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let topic = unique_name("stalled");
    mock.create_topic(&topic, 2, 1).unwrap();
    let producer = batching_producer(&brokers, "none");
    produce_batched(&producer, &topic, 0, &numbered(0..30)).await;
    produce_batched(&producer, &topic, 1, &numbered(0..20)).await;
    // Every fetch from now on: the connection drops.
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT; 100_000],
    );

    let channel = unique_name("stalled");
    let mut seen = pipeline::capture(&channel);
    let yaml = format!(
        "\
sources:
  kafka:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    format: json
    stall_timeout: 45s
sinks:
  seen:
    type: capture
    inputs: [kafka]
    channel: {channel}
",
        group = unique_name("group")
    );
    let started = std::time::Instant::now();
    let running = pipeline::start(&yaml, RunOptions::default());
    let health = running.telemetry.health();
    // Not ready once the stall is seen, naming both partitions, well before the run stops.
    let reason = loop {
        let readiness = health.readiness();
        let stage = readiness.stages.iter().find(|s| s.stage == "kafka");
        if let Some(reason) = stage
            .filter(|s| !s.ready)
            .and_then(|s| s.reason.clone())
            .filter(|r| r.contains("partition"))
        {
            break reason;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no stall seen: {readiness:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let not_ready_after = started.elapsed();
    println!(
        "not ready after {:.1} s: {reason}",
        not_ready_after.as_secs_f64()
    );
    assert!(
        reason.contains(&format!(
            "topic `{topic}` partition 0 at offset 0: the broker holds messages up to offset 30"
        )) && reason.contains(&format!(
            "topic `{topic}` partition 1 at offset 0: the broker holds messages up to offset 20"
        )),
        "{reason}"
    );
    let error = tokio::time::timeout(Duration::from_secs(90), running.wait())
        .await
        .expect("the run stops by itself")
        .expect_err("a stalled partition fails the run")
        .to_string();
    println!(
        "stopped after {:.1} s: {error}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        error.contains("stopping after stall_timeout (45s)")
            && error.contains(&format!("topic `{topic}` partition 0"))
            && error.contains("the last error librdkafka reported"),
        "{error}"
    );
    assert!(seen.try_recv().is_err(), "nothing was fetched");
}
