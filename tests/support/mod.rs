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

/// A broker of the test's own (tansu) on 127.0.0.1, on the storage engine `scripts/dev-services`
/// uses (`PIPE_KAFKA_STORAGE`, default SQLite) with its data in a folder of its own; stopped
/// when dropped.
pub struct PrivateBroker {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
    advertised: String,
    pub brokers: String,
}

impl PrivateBroker {
    /// Starts a broker on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> Self {
        Self::start_advertising(port, &format!("127.0.0.1:{port}"))
    }

    /// Starts a broker on `port` that tells clients to connect to `advertised` (a proxy in
    /// front of it, say).
    pub fn start_advertising(port: u16, advertised: &str) -> Self {
        let mut broker = Self {
            child: None,
            dir: tempfile::tempdir().expect("a folder for the broker's data"),
            port,
            advertised: format!("tcp://{advertised}"),
            brokers: format!("127.0.0.1:{port}"),
        };
        broker.resume();
        broker
    }

    /// Creates a topic with tansu's own command, which needs no advertised address.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.topic_command(&["create", topic, "--partitions", &partitions.to_string()]);
    }

    /// Deletes a topic, with tansu's own command.
    pub fn delete_topic(&self, topic: &str) {
        self.topic_command(&["delete", topic]);
    }

    fn topic_command(&self, args: &[&str]) {
        let binary = std::env::var("TANSU_BIN").expect("TANSU_BIN: run scripts/test");
        let out = std::process::Command::new(binary)
            .arg("topic")
            .args(args)
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .expect("run tansu topic");
        assert!(
            out.status.success(),
            "tansu topic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the broker (SIGKILL: nothing is flushed on the way out); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: tansu's own shutdown.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data. tansu binds without SO_REUSEADDR,
    /// so right after a stop it may exit with "Address already in use": it is retried.
    pub fn resume(&mut self) {
        let binary = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("TANSU_BIN is not set: run the tests with scripts/test, which builds and names the broker")
        });
        let engine = match std::env::var("PIPE_KAFKA_STORAGE").as_deref() {
            Ok("memory") => "memory://tansu/",
            _ => "sqlite://tansu.db",
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mut child = std::process::Command::new(&binary)
                .args([
                    "broker",
                    "--storage-engine",
                    engine,
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &self.advertised,
                ])
                .current_dir(self.dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("the broker's status").is_some() {
                    break; // most likely the port is still in TIME_WAIT: start it again
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the private broker did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the private broker kept exiting at start"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
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
