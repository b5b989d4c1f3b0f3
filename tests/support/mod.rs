//! Helpers shared by the integration tests that need the local services.
//!
//! `scripts/test` starts PostgreSQL and the broker and exports `DATABASE_URL` and
//! `KAFKA_BROKERS`. A test run without them fails loudly, naming `scripts/test`: a test that
//! needs a service never passes by skipping. Every test gets its own topic and database, so
//! tests run in parallel and in any order.

// Each test file uses its own part of these helpers.
#![allow(dead_code)]

pub mod history;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod schema;
pub mod tls;
pub mod wire;
pub mod writer;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn service(var: &str, what: &str) -> String {
    let value = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: this test needs {what}; run the tests with scripts/test, which starts the local services")
    });
    let address = value
        .split(',')
        .next()
        .map(|a| a.rsplit('@').next().unwrap_or(a))
        .map(|a| a.split('/').next().unwrap_or(a))
        .unwrap_or_default()
        .trim_start_matches("postgres:")
        .to_owned();
    let reachable = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{what} is not reachable at {address} ({var}); run the tests with scripts/test, which starts the local services"
    );
    value
}

/// The local broker's bootstrap servers.
pub fn kafka_brokers() -> String {
    service("KAFKA_BROKERS", "a Kafka broker")
}

/// The URL of the local PostgreSQL's project database.
pub fn database_url() -> String {
    service("DATABASE_URL", "PostgreSQL")
}

/// A name no other test in this or a concurrent run uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh topic with `partitions` partitions on the local broker and returns its name.
pub async fn create_topic(prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    create_topic_on(&kafka_brokers(), &name, partitions).await;
    name
}

/// A database of its own for one test, on the local PostgreSQL.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

/// Creates a fresh, empty database. Blocking: call it outside async code or in
/// `spawn_blocking`.
pub fn create_database(prefix: &str) -> TestDatabase {
    let admin_url = database_url();
    let name = unique_name(prefix).to_lowercase();
    let mut client = postgres::Client::connect(&admin_url, postgres::NoTls).expect("connect");
    // The name is ours (letters, digits, _), not user data: safe to put in the statement.
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database");
    TestDatabase {
        url: format!("{base}/{name}"),
        name,
    }
}

/// An Apache Kafka broker of the test's own on 127.0.0.1 (`scripts/kafka-broker`, the one
/// `scripts/dev-services` runs), its data in a folder of its own; killed when dropped.
pub struct PrivateBroker {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    pub brokers: String,
}

impl PrivateBroker {
    /// Starts a broker on `port` and waits until it serves.
    pub fn start(port: u16) -> Self {
        let mut broker = Self {
            child: None,
            dir: tempfile::tempdir().expect("a folder for the broker's data"),
            port,
            controller_port: http::closed_port(),
            brokers: format!("127.0.0.1:{port}"),
        };
        broker.resume();
        broker
    }

    /// Stops the broker (SIGKILL: nothing is flushed on the way out); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and data, and waits until it serves: until its
    /// log says it started, which comes a moment after its port opens.
    pub fn resume(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker");
        let log = self.dir.path().join("server.log");
        let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut child = std::process::Command::new(&script)
            .arg("run")
            .arg(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()])
            // A test's broker holds little: a small heap keeps several of them beside the suite.
            .env("PIPE_KAFKA_HEAP", "256m")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let started = std::fs::read(&log).is_ok_and(|text| {
                let new = text.get(logged_before..).unwrap_or(&text);
                String::from_utf8_lossy(new).contains("Kafka Server started")
            });
            if started {
                self.child = Some(child);
                return;
            }
            if let Some(status) = child.try_wait().expect("the broker's status") {
                panic!(
                    "the private broker exited at start ({status}); its log ends:\n{}",
                    last_lines(&log, 20)
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the private broker did not start within 120 s; its log ends:\n{}",
                    last_lines(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` lines of a file, for a failure message (the file goes with the test's folder).
fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `topic` with `partitions` on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
    }
}

/// Reads every message of `topic` from the beginning until `expected` have arrived (or 60 s
/// pass), returning (partition, key, payload) for each.
pub async fn consume_all(
    brokers: &str,
    topic: &str,
    expected: usize,
) -> Vec<(i32, Option<String>, Vec<u8>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let unpack = |message: rdkafka::message::BorrowedMessage<'_>| {
        (
            message.partition(),
            message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            message.payload().unwrap_or_default().to_vec(),
        )
    };
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while messages.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(message) => messages.push(unpack(message.expect("consume"))),
        }
    }
    // Anything beyond what was expected would be a duplicate: give it a moment to show up.
    while let Ok(Ok(message)) =
        tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
    {
        messages.push(unpack(message));
    }
    messages
}

/// The offsets `group` has committed for partitions `partitions` of `topic`, in that order.
/// Blocking: call it in `spawn_blocking` or `block_in_place`.
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: std::ops::Range<i32>,
) -> Vec<rdkafka::Offset> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect()
}
