//! The `kafka` source's settings, the consumer settings it starts from, and its build step.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use serde::Deserialize;
use tokio::sync::Notify;

use super::context::*;
use super::source::*;
use super::stall;
use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::monitor::kafka::{self, Options, SlogContext};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::Source;

pub(super) fn default_max_message_bytes() -> usize {
    1 << 20
}

pub(super) fn default_stall_timeout() -> Duration {
    Duration::from_secs(300)
}

/// How message payloads are decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Check results in message schema v1 (docs/schema.md); anything else is a dead letter.
    #[default]
    CheckV1,
    /// Any JSON object.
    Json,
}

/// The settings of the `kafka` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// The consumer group. A new group starts from the earliest offset.
    pub group: String,
    /// `check_v1` (default): schema v1 check results; `json`: any JSON object.
    #[serde(default)]
    pub format: Format,
    /// Larger messages become dead letters. Default 1 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// This member's static identity in the group (Kafka's `group.instance.id`, KIP-345): a
    /// name unique to this writer and stable across its restarts, such as the host's name.
    /// With it, a writer that is killed and started again gets its partitions back at once,
    /// instead of after its session expires. Two running writers must never share one: the
    /// broker fences the older. Default: none (dynamic membership).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long a partition may hold messages that no fetch brings before the source stops
    /// (exit 1), naming it. It counts as not ready from the moment the stall is seen, after 30 s
    /// without progress. A broker that cannot be reached at all is not a stall: that is waited
    /// for without end. Default 5m.
    #[serde(default = "default_stall_timeout", with = "duration")]
    pub stall_timeout: Duration,
    /// More librdkafka settings: security.protocol, ssl.*, sasl.*, session.timeout.ms…
    #[serde(default)]
    pub options: Options,
}

/// Consumer settings unless `options` override them. Offsets are stored by us, after the work
/// is durable, and committed by librdkafka; a new group reads the backlog, not just new
/// messages; and prefetching is bounded so memory stays flat behind a backlog.
///
/// librdkafka stops fetching a partition whose prefetch is full for `fetch.queue.backoff.ms`,
/// 1 s by default, and its documentation warns that a low prefetch cap then leaves ~1 s gaps.
/// With the cap at 16 MiB a writer behind a backlog emptied its prefetch in about half a second
/// and waited out the rest: 31,063 rows/s, 58,363 with the backoff at 10 ms (1,000,000
/// messages, `cargo bench --bench writer -- backlog`). At 50 ms the refetch still comes long
/// before a full prefetch is drained.
///
/// The session is 10 s (Kafka's own default before 3.0) instead of librdkafka's 45 s: a writer
/// that dies holds its partitions until its session expires, and a restarted one waits that
/// long for them (measured on the local broker: 45.8 s with 45 s sessions, 12.8 s with 10 s,
/// 6.8 s with a static `instance_id`). librdkafka heartbeats from its own thread, so a busy
/// writer does not miss its session; the heartbeat stays at a third of it, as Kafka advises.
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.queue.backoff.ms", "50"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "3000"),
];

/// How long the pipeline may refuse messages before the partitions are paused. Until then the
/// source simply stops taking messages, and librdkafka's bounded prefetch stops fetching. Pausing
/// drops librdkafka's prefetched messages, so it is kept for real stalls (a database outage),
/// where it lets the source keep polling, and so stay in the group, without reading more. Far
/// below the default `max.poll.interval.ms` (5 minutes).
pub(super) const PAUSE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl StageConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka";
    const DESCRIPTION: &'static str =
        "consumes topics in a consumer group; offsets are committed only after the sinks are done";
    type Stage = dyn Source;

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.topics.is_empty() {
            errors.push(ConfigError::at("topics", "name at least one topic"));
        }
        if self.group.trim().is_empty() {
            errors.push(ConfigError::at(
                "group",
                "the consumer group must not be empty",
            ));
        }
        let mut config = match kafka::client_config(&self.brokers, &self.options, DEFAULTS) {
            Ok(config) => Some(config),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        if self
            .instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            errors.push(ConfigError::at(
                "instance_id",
                "the instance id must not be empty: leave it out for dynamic membership",
            ));
        }
        if self.stall_timeout <= stall::SUSPECT_AFTER {
            errors.push(ConfigError::at(
                "stall_timeout",
                format!(
                    "must be longer than {}, the time a partition stands still before the broker is asked about it",
                    duration::format(stall::SUSPECT_AFTER)
                ),
            ));
        }
        if self.options.contains_key("group.instance.id") {
            errors.push(ConfigError::at(
                "options",
                "set the static member id with `instance_id:`, not in `options`",
            ));
        }
        if let Some(config) = &mut config {
            config.set("group.id", &self.group);
        }
        // The same settings serve the private consumer that locates an unreadable batch; it
        // joins no group, so it takes no member identity.
        let probe_config = config.clone();
        if let (Some(config), Some(id)) = (&mut config, &self.instance_id) {
            config.set("group.instance.id", id);
        }
        let consumer = config.and_then(|config| {
            let health = cx.health();
            health.problem(
                "no_partition",
                format!("no partition of group `{}` assigned yet", self.group),
                NO_PARTITION_GRACE,
            );
            let context = KafkaContext {
                log: SlogContext::new(cx.logger.clone(), self.options.clone())
                    .with_health(health.clone()),
                revoked: Mutex::default(),
                rebalanced: Notify::new(),
                paused: AtomicBool::new(false),
                metrics: SourceMetrics::new(cx),
                health,
                group: self.group.clone(),
                watchdog: Mutex::default(),
                last_error: Mutex::default(),
            };
            match config.create_with_context::<_, StreamConsumer<KafkaContext>>(context) {
                Ok(consumer) => Some(consumer),
                Err(e) => {
                    errors.push(ConfigError::at(
                        "options",
                        kafka::redact(&e.to_string(), &self.options),
                    ));
                    None
                }
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Box::new(KafkaSource {
            consumer: consumer.expect("no errors, so a consumer"),
            probe_config: probe_config.expect("no errors, so a config"),
            instance_id: self.instance_id,
            topics: self.topics,
            format: self.format,
            max_message_bytes: self.max_message_bytes,
            stall_timeout: self.stall_timeout,
        }))
    }
}
