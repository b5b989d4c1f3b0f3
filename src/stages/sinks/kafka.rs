//! `kafka`: publishes each event as a JSON message to a Kafka topic.
//!
//! The producer is idempotent with `acks=all` unless `options` say otherwise, and an event is
//! acknowledged only once the broker has confirmed its message. Many messages are in flight at
//! once (up to `max_in_flight`); librdkafka retries until `message.timeout.ms`, so a broker that
//! is down when the checker starts gets the results once it is up. A message that still fails is
//! logged, counted and reported to its source as failed, never dropped silently. On shutdown
//! the sink waits for outstanding confirmations within the pipeline's grace period and reports
//! how many were not confirmed; dropping a producer with queued messages would purge them
//! (rust-rdkafka#518), so it never exits with any left unreported.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::Value;
use slog::{error, info, warn};
use tokio::time::Instant;

use crate::ack::{AckHandle, AckStatus};
use crate::config::diagnostic::ConfigError;
use crate::kafka::{self, Options, SlogContext};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Input, Sink, SinkContext};

fn default_key() -> String {
    "target".to_owned()
}
fn default_max_in_flight() -> usize {
    10_000
}

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
}

/// Producer settings unless `options` override them: no duplicates on retry, and a message is
/// confirmed only once every in-sync replica has it.
const DEFAULTS: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

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
        let config = kafka::client_config(&self.brokers, &self.options, DEFAULTS);
        let producer = match config {
            Ok(config) => {
                let context = SlogContext {
                    logger: cx.logger.clone(),
                    options: self.options.clone(),
                };
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
            topic: self.topic,
            key: self.key,
            max_in_flight: self.max_in_flight,
        }))
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
    topic: String,
    key: String,
    max_in_flight: usize,
}

/// A message on its way: resolves to its outcome, with the event's acknowledgement handle.
type Delivery = BoxFuture<'static, (Result<(), KafkaError>, Option<AckHandle>)>;

/// Deliveries so far.
#[derive(Default)]
struct Tally {
    delivered: u64,
    failed: u64,
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
                AckStatus::Delivered
            }
            Err(e) => {
                self.failed += 1;
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
    async fn run(self: Box<Self>, mut input: Input, cx: SinkContext) -> Result<(), BoxError> {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut tally = Tally::default();
        let mut shutdown_at: Option<Instant> = None;

        loop {
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled(), if shutdown_at.is_none() => {
                    shutdown_at = Some(Instant::now());
                }
                Some((outcome, ack)) = in_flight.next(), if !in_flight.is_empty() => {
                    tally.settle(&cx.logger, &self.topic, outcome, ack);
                }
                event = input.recv(), if in_flight.len() < self.max_in_flight => {
                    let Some(event) = event else { break };
                    let key = key_of(event.get(&self.key));
                    let (fields, ack) = event.into_parts();
                    let payload = serde_json::to_vec(&fields)?;
                    loop {
                        let mut record = FutureRecord::to(&self.topic).payload(&payload);
                        if let Some(key) = &key {
                            record = record.key(key);
                        }
                        match self.producer.send_result(record) {
                            Ok(delivery) => {
                                in_flight.push(Box::pin(async move {
                                    let outcome = match delivery.await {
                                        Ok(Ok(_)) => Ok(()),
                                        Ok(Err((e, _))) => Err(e),
                                        Err(_) => Err(KafkaError::Canceled),
                                    };
                                    (outcome, ack)
                                }));
                                break;
                            }
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                                // librdkafka's own queue is full: let deliveries drain a little.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err((e, _)) => {
                                tally.settle(&cx.logger, &self.topic, Err(e), ack);
                                break;
                            }
                        }
                    }
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
            return Err(format!(
                "{unconfirmed} messages were not confirmed by the broker within the grace period"
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
        let cx = BuildContext {
            stage_id: "kafka".into(),
            base_dir: ".".into(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        };
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
