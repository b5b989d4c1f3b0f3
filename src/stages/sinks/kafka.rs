//! `kafka`: publishes each event as a JSON message to a Kafka topic.
//!
//! The producer is idempotent with `acks=all` and batches for up to 50 ms (`linger.ms`) unless
//! `options` say otherwise, and an event is acknowledged only once the broker has confirmed its
//! message. Many messages are in flight at once (up to `max_in_flight`); librdkafka retries until
//! `message.timeout.ms`, so a broker that is down when the checker starts gets the results once it
//! is up. A message that still fails is logged, counted and reported to its source as failed, never
//! dropped silently. On shutdown the sink waits for outstanding confirmations within the pipeline's
//! grace period and reports how many were not confirmed; dropping a producer with queued messages
//! would purge them (rust-rdkafka#518), so it never exits with any left unreported. A run that lost
//! any message (failed, or unconfirmed when the grace period ran out) ends with an error giving the
//! counts, so `pipe run` exits non-zero.
//!
//! Managed Kafka (Aiven) does not create topics on demand. Before anything runs, the sink asks
//! the cluster for its topic's metadata: a reachable cluster without the topic stops the run at
//! once with an error that says how to create it; an unreachable one is waited for, as ever.
//! A topic that disappears while running (deleted, or not yet re-created) does not drop
//! results: each is sent again until `message.timeout.ms` has passed since it was first sent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use serde_json::Value;
use slog::{error, info, warn};
use tokio::time::Instant;

use crate::ack::{AckHandle, AckStatus};
use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::monitor::kafka::{self, Options, SlogContext};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Input, Sink, SinkContext};
use crate::telemetry::StageHealth;
use crate::throttle::RepeatedWarning;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

fn default_key() -> String {
    "target".to_owned()
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The settings of the `kafka` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic to publish to.
    pub topic: String,
    /// The event field whose value keys each message, so one target's results stay in order in
    /// one partition. Default `target`. Events without it are sent without a key.
    #[serde(default = "default_key")]
    pub key: String,
    /// More librdkafka settings: security.protocol, ssl.*, sasl.*, compression.type, linger.ms…
    #[serde(default)]
    pub options: Options,
    /// Messages awaiting the broker's confirmation at once. Default 10000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long the start-up check of the topic waits for the cluster's answer. Default 10s;
    /// an unreachable cluster is then waited for while running, not refused.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
}

/// Producer settings unless `options` override them: no duplicates on retry, and a message is
/// confirmed only once every in-sync replica has it. Messages wait up to 50 ms (librdkafka's
/// default is 5) to go out together: a check's result is due in seconds, not milliseconds, and
/// each produce request costs the broker far more than each message in it. A checker sending
/// about 10,000 results a second cost a local Apache Kafka 16–44 µs of CPU a message at 5 ms, 4–7
/// at 50 (BENCHMARKS.md, "`linger.ms` 50"). Shutdown waits for the last ones at most that much
/// longer.
const DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "50"),
];

impl StageConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka";
    const DESCRIPTION: &'static str =
        "publishes events as JSON messages to a Kafka topic, acknowledging them once the broker confirms";
    type Stage = dyn Sink;

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if let Err(message) = validate_topic(&self.topic) {
            errors.push(ConfigError::at("topic", message));
        }
        if self.key.is_empty() {
            errors.push(ConfigError::at(
                "key",
                "name the field that keys the messages",
            ));
        }
        if self.max_in_flight == 0 {
            errors.push(ConfigError::at(
                "max_in_flight",
                "at least 1 message must be allowed in flight",
            ));
        }
        let message_timeout = match message_timeout(&self.options) {
            Ok(timeout) => timeout,
            Err(message) => {
                errors.push(ConfigError::at("options", message));
                DEFAULT_MESSAGE_TIMEOUT
            }
        };
        let config = kafka::client_config(&self.brokers, &self.options, DEFAULTS);
        let mut last_error = kafka::LastError::default();
        let producer = match config {
            Ok(config) => {
                let context = SlogContext::new(cx.logger.clone(), self.options.clone())
                    .with_health(cx.health());
                last_error = context.last_error();
                // Creating the producer loads certificates and keys: a missing or unreadable
                // file is reported now rather than when the first result is ready.
                match config.create_with_context::<_, FutureProducer<SlogContext>>(context) {
                    Ok(producer) => Some(producer),
                    Err(e) => {
                        errors.push(ConfigError::at(
                            "options",
                            kafka::redact(&e.to_string(), &self.options),
                        ));
                        None
                    }
                }
            }
            Err(config_errors) => {
                errors.extend(config_errors);
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Box::new(KafkaSink {
            producer: producer.expect("no errors, so a producer"),
            brokers: self.brokers,
            topic: self.topic.into(),
            key: self.key,
            max_in_flight: self.max_in_flight,
            connect_timeout: self.connect_timeout,
            message_timeout,
            last_error,
            metrics: SinkMetrics::new(cx),
            health: cx.health(),
        }))
    }
}

/// librdkafka's default `message.timeout.ms`.
const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long librdkafka tries to deliver a message (`message.timeout.ms`, or its alias
/// `delivery.timeout.ms`): as long, the sink keeps sending a result whose topic is missing.
fn message_timeout(options: &kafka::Options) -> Result<Duration, String> {
    let value = options
        .get("message.timeout.ms")
        .or_else(|| options.get("delivery.timeout.ms"));
    match value {
        None => Ok(DEFAULT_MESSAGE_TIMEOUT),
        Some(value) => value
            .to_string()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| "message.timeout.ms must be a whole number of milliseconds".to_owned()),
    }
}

/// Kafka's topic name rules: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn validate_topic(topic: &str) -> Result<(), String> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid topic name `{topic}`: use 1 to 249 letters, digits, `.`, `_` or `-`"
        ))
    }
}

struct KafkaSink {
    producer: FutureProducer<SlogContext>,
    brokers: String,
    topic: Arc<str>,
    key: String,
    max_in_flight: usize,
    connect_timeout: Duration,
    message_timeout: Duration,
    last_error: kafka::LastError,
    metrics: SinkMetrics,
    health: StageHealth,
}

/// What the sink counts (`docs/metrics.md`).
#[derive(Clone)]
struct SinkMetrics {
    delivered: Counter,
    failed: Counter,
    queued: Gauge,
}

impl SinkMetrics {
    fn new(cx: &BuildContext) -> Self {
        let labels = cx.labels();
        let telemetry = &cx.telemetry;
        Self {
            delivered: telemetry
                .counters(
                    "pipe_kafka_sink_delivered_messages",
                    "Messages the broker confirmed.",
                )
                .get_or_create(&labels)
                .clone(),
            failed: telemetry
                .counters(
                    "pipe_kafka_sink_failed_messages",
                    "Messages that finally failed (their events are reported failed).",
                )
                .get_or_create(&labels)
                .clone(),
            queued: telemetry
                .gauges(
                    "pipe_kafka_sink_producer_queue_messages",
                    "Messages waiting in the producer: queued or sent and not yet confirmed.",
                )
                .get_or_create(&labels)
                .clone(),
        }
    }
}

/// What the cluster said of the sink's topic at start.
#[derive(Debug, PartialEq, Eq)]
enum TopicCheck {
    Exists,
    Missing,
    /// The cluster did not answer (down, unreachable, or refusing our TLS): run, and wait.
    Unanswered(String),
    /// It answered with an error other than "no such topic" (not authorised, say).
    Refused(String),
}

/// Asks the cluster for `topic`'s metadata. Blocks for up to `timeout`.
fn check_topic(
    producer: &FutureProducer<SlogContext>,
    topic: &str,
    timeout: Duration,
) -> TopicCheck {
    let metadata = match producer.client().fetch_metadata(Some(topic), timeout) {
        Ok(metadata) => metadata,
        Err(e) => return TopicCheck::Unanswered(e.to_string()),
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return TopicCheck::Missing;
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None if found.partitions().is_empty() => TopicCheck::Missing,
        None => TopicCheck::Exists,
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            TopicCheck::Missing
        }
        // A topic just created may have no leader for a moment: it exists.
        Some(RDKafkaErrorCode::LeaderNotAvailable) => TopicCheck::Exists,
        Some(code) => TopicCheck::Refused(code.to_string()),
    }
}

/// The error for a topic the cluster does not have, with the ways to create it.
fn missing_topic(topic: &str, brokers: &str) -> String {
    format!(
        "topic `{topic}` does not exist on the Kafka cluster at {brokers}, and the sink does not create topics \
         (managed Kafka such as Aiven does not create them on demand): create it first, with the Aiven console \
         or `avn service topic-create SERVICE {topic} --partitions 3 --replication 2`, or \
         `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions 3`"
    )
}

/// A message on its way: resolves to its outcome, with the event's acknowledgement handle.
type Delivery = BoxFuture<'static, (Result<(), KafkaError>, Option<AckHandle>)>;

/// Deliveries so far.
struct Tally {
    delivered: u64,
    failed: u64,
    metrics: SinkMetrics,
    health: StageHealth,
}

/// Is this a delivery error that means "the topic is not there (now)"?
fn is_missing_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
    )
}

/// How long to wait before sending again a message whose topic was missing.
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(1);

/// Says, at most once per 30 s for all of the sink's messages, that results wait for their
/// missing topic, so an operator who deleted it (or never created it) sees why nothing lands.
#[derive(Clone)]
struct MissingTopicWarning {
    logger: slog::Logger,
    repeats: Arc<std::sync::Mutex<RepeatedWarning>>,
}

impl MissingTopicWarning {
    fn occurred(&self, topic: &str, error: &KafkaError) {
        let report = self
            .repeats
            .lock()
            .expect("not poisoned")
            .occurred(std::time::Instant::now());
        if let Some(report) = report {
            warn!(self.logger, "the topic is missing; results wait and are sent again until message.timeout.ms";
                  "topic" => topic, "error" => %error,
                  "lasted" => duration::format_approx(report.lasted), "occurrences" => report.occurrences);
        }
    }
}

/// Sends one message and waits for the broker's verdict. A missing topic is not final until
/// `give_up`: the message is sent again every second until then, so a topic deleted and
/// re-created (or created late) loses nothing. librdkafka retries everything else itself.
async fn deliver(
    producer: FutureProducer<SlogContext>,
    topic: Arc<str>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    give_up: Instant,
    missing: MissingTopicWarning,
    health: StageHealth,
) -> Result<(), KafkaError> {
    loop {
        let mut record = FutureRecord::to(&topic).payload(&payload);
        if let Some(key) = &key {
            record = record.key(key);
        }
        let outcome = match producer.send_result(record) {
            Ok(delivery) => {
                // Queued: whatever filled the queue has drained.
                health.resolved("queue_full");
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                health.problem(
                    "queue_full",
                    "the producer's queue is full (queue.buffering.max.messages)",
                    Duration::ZERO,
                );
                // librdkafka's own queue is full: let deliveries drain a little.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err((e, _)) => Err(e),
        };
        match outcome {
            Err(e) if is_missing_topic(&e) && Instant::now() + MISSING_TOPIC_RETRY < give_up => {
                missing.occurred(&topic, &e);
                tokio::time::sleep(MISSING_TOPIC_RETRY).await;
            }
            outcome => return outcome,
        }
    }
}

impl Tally {
    /// Counts an outcome and tells the event's source.
    fn settle(
        &mut self,
        logger: &slog::Logger,
        topic: &str,
        outcome: Result<(), KafkaError>,
        ack: Option<AckHandle>,
    ) {
        let status = match outcome {
            Ok(()) => {
                self.delivered += 1;
                self.metrics.delivered.inc();
                // A confirmation is proof of a reachable broker.
                self.health.resolved("broker_unreachable");
                AckStatus::Delivered
            }
            Err(e) => {
                self.failed += 1;
                self.metrics.failed.inc();
                error!(logger, "message not delivered"; "topic" => topic, "error" => %e,
                       "failed_so_far" => self.failed);
                AckStatus::Failed
            }
        };
        if let Some(ack) = ack {
            ack.finish(status);
        }
    }
}

/// The message key from the key field: strings as they are, other values as JSON text.
fn key_of(value: Option<&Value>) -> Option<Vec<u8>> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn preflight(&mut self, logger: &slog::Logger) -> Result<(), BoxError> {
        let (producer, topic, timeout) = (
            self.producer.clone(),
            Arc::clone(&self.topic),
            self.connect_timeout,
        );
        let check =
            tokio::task::spawn_blocking(move || check_topic(&producer, &topic, timeout)).await?;
        match check {
            TopicCheck::Exists => Ok(()),
            TopicCheck::Missing => Err(missing_topic(&self.topic, &self.brokers).into()),
            TopicCheck::Refused(why) => Err(format!(
                "the Kafka cluster at {} refused the metadata of topic `{}`: {why}",
                self.brokers, self.topic
            )
            .into()),
            TopicCheck::Unanswered(why) => match self.last_error.refusal() {
                // Waiting would not help: say why, now.
                Some(refusal) => Err(format!(
                    "cannot connect to the Kafka cluster at {}: {refusal}",
                    self.brokers
                )
                .into()),
                None => {
                    warn!(logger, "the Kafka cluster did not answer at start; results wait until it does";
                          "brokers" => &self.brokers, "topic" => &*self.topic, "error" => why);
                    Ok(())
                }
            },
        }
    }

    async fn run(self: Box<Self>, mut input: Input, cx: SinkContext) -> Result<(), BoxError> {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut tally = Tally {
            delivered: 0,
            failed: 0,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        };
        let missing = MissingTopicWarning {
            logger: cx.logger.clone(),
            repeats: Arc::default(),
        };
        let mut shutdown_at: Option<Instant> = None;

        loop {
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled(), if shutdown_at.is_none() => {
                    shutdown_at = Some(Instant::now());
                }
                Some((outcome, ack)) = in_flight.next(), if !in_flight.is_empty() => {
                    tally.settle(&cx.logger, &self.topic, outcome, ack);
                    self.metrics.queued.set(i64::from(self.producer.in_flight_count()));
                }
                event = input.recv(), if in_flight.len() < self.max_in_flight => {
                    let Some(event) = event else { break };
                    let key = match event.check() {
                        // A check's key field is read without making its fields.
                        Some(check) if self.key == "target" => Some(check.target.as_bytes().to_vec()),
                        _ => key_of(event.get(&self.key)),
                    };
                    let payload = event.to_json()?;
                    let (_, ack) = event.into_payload();
                    let delivery = deliver(
                        self.producer.clone(),
                        Arc::clone(&self.topic),
                        key,
                        payload,
                        Instant::now() + self.message_timeout,
                        missing.clone(),
                        self.health.clone(),
                    );
                    in_flight.push(Box::pin(async move { (delivery.await, ack) }));
                    self.metrics.queued.set(i64::from(self.producer.in_flight_count()));
                }
            }
        }

        // The input is closed: wait for the outstanding confirmations, within the grace period
        // when stopping (with a margin to report before the executor gives up on us).
        let deadline = shutdown_at.map(|at| at + cx.grace.mul_f64(0.9));
        while !in_flight.is_empty() {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, in_flight.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => in_flight.next().await,
            };
            let Some((outcome, ack)) = next else { break };
            tally.settle(&cx.logger, &self.topic, outcome, ack);
        }
        let unconfirmed = in_flight.len() as u64;
        info!(cx.logger, "kafka sink finished"; "delivered" => tally.delivered, "failed" => tally.failed,
              "unconfirmed" => unconfirmed);
        if unconfirmed > 0 {
            warn!(cx.logger, "messages not confirmed by the broker within the grace period";
                  "count" => unconfirmed);
        }
        if tally.failed + unconfirmed > 0 {
            return Err(format!(
                "{} of {} messages to topic `{}` were not delivered: {} delivered, {} failed, {unconfirmed} not confirmed within the grace period",
                tally.failed + unconfirmed,
                tally.delivered + tally.failed + unconfirmed,
                self.topic,
                tally.delivered,
                tally.failed,
            )
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        let cx = BuildContext::new("kafka", ".", slog::Logger::root(slog::Discard, slog::o!()));
        serde_norway::from_str::<KafkaSinkConfig>(yaml)
            .unwrap()
            .build(&cx)
    }

    #[test]
    fn topics_follow_kafka_rules() {
        assert!(validate_topic("website-checks").is_ok());
        assert!(validate_topic("a.b_c-1").is_ok());
        for bad in ["", ".", "..", "has space", "ünïcode", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_come_from_the_key_field() {
        assert_eq!(
            key_of(Some(&Value::String("site".into()))),
            Some(b"site".to_vec())
        );
        assert_eq!(key_of(Some(&serde_json::json!(42))), Some(b"42".to_vec()));
        assert_eq!(key_of(Some(&Value::Null)), None);
        assert_eq!(key_of(None), None);
    }

    #[test]
    fn settings_are_checked_up_front() {
        let errors =
            build("brokers: 127.0.0.1:9\ntopic: 'bad topic'\noptions: { linger.ms: nope }\n")
                .err()
                .unwrap();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, [Some("topic"), Some("options")]);
        assert!(build("brokers: 127.0.0.1:9\ntopic: checks\noptions: { linger.ms: 5, compression.type: lz4 }\n").is_ok());
    }

    #[test]
    fn missing_certificate_files_are_reported_at_build() {
        let errors = build(
            "brokers: 127.0.0.1:9\ntopic: checks\noptions:\n  security.protocol: ssl\n  ssl.ca.location: /nonexistent/ca.pem\n",
        )
        .err()
        .unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("options"));
        assert!(
            errors[0].message.contains("ssl.ca.location")
                || errors[0].message.contains("/nonexistent/ca.pem"),
            "{}",
            errors[0].message
        );
    }
}
