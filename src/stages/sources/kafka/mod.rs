//! `kafka`: consumes topics in a consumer group, committing offsets only after the work is done.
//!
//! Every message becomes one event tracked by the framework's acknowledgements
//! ([`crate::ack`]), one stream per partition. An offset is stored (and then committed by
//! librdkafka's auto-commit) only once every sink has durably handled that message and every
//! message before it in its partition, so a crash at any moment loses nothing: the next run
//! re-reads from the last committed offset, and idempotent sinks make the re-read harmless.
//! This is rust-rdkafka's `examples/at_least_once.rs` made general.
//!
//! While the pipeline is backed up (a slow or unreachable database), the source pauses its
//! partitions but keeps polling, so it stays in the consumer group instead of being dropped
//! after `max.poll.interval.ms`. On a rebalance, positions of revoked partitions are forgotten
//! (their offsets cannot be stored any more; the new owner re-reads from the last commit), and
//! nothing is ever stored out of order, so work is neither lost nor rewound. A rebalance is
//! settled as soon as librdkafka runs it, before any message of the new assignment is taken,
//! and newly assigned partitions take the source's pause state at once.
//!
//! Messages that cannot be decoded (bad JSON, an unknown `schema_version`, a missing or mistyped
//! field, a payload over `max_message_bytes`) become dead-letter events carrying their topic,
//! partition, offset, error and raw bytes; sinks store them, and consumption goes on.
//!
//! A record batch that librdkafka itself cannot read (it cannot be decompressed or parsed) is
//! another matter: librdkafka fetches it again and again, that partition never advances, and
//! the messages behind it are never reached. That is a permanent error: the source stops, and
//! with it the pipeline, naming the topic, partition, offset and cause, after the sinks have
//! finished and committed what came before it. rdkafka reports such an error without its
//! partition, so the source finds it by reading each of its partitions once more from its
//! position with a private consumer. Transient errors (a broker down, a leader moving) are
//! retried without end, with a warning at most every 30 s saying how long they have lasted.
//!
//! A partition the broker cannot serve, where every fetch fails while messages wait, looks to
//! librdkafka like any passing fault, retried for ever: the stall watchdog (`stall.rs`) names
//! it, makes the stage not ready at once, and stops the source after `stall_timeout`.

mod stall;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::Value;
use slog::{debug, error, info, warn};
use tokio::sync::Notify;

use crate::ack::{self, AckStatus, Acknowledgements, Completion};
use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::event::{Event, Origin};
use crate::monitor::check::{CheckResult, SCHEMA_VERSION};
use crate::monitor::kafka::{self, Options, SlogContext};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Source, SourceContext};
use crate::telemetry::{self, GaugeFamily, Labels, StageHealth};
use crate::throttle::RepeatedWarning;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

fn default_max_message_bytes() -> usize {
    1 << 20
}

fn default_stall_timeout() -> Duration {
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
const DEFAULTS: &[(&str, &str)] = &[
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
const PAUSE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

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

/// A partition, as an acknowledgement stream.
type Partition = (Arc<str>, i32);

/// The consumer's context: logs through slog, hands revocations to the loop, and gives new
/// partitions the pause state of the rest. Its callbacks run inside the loop's own polls.
struct KafkaContext {
    log: SlogContext,
    /// Partitions revoked since the loop last looked.
    revoked: Mutex<Vec<Partition>>,
    /// Ends the loop's wait after a revocation, so it is settled at once, not after whatever
    /// the loop waits for next (a message, which may be long coming).
    rebalanced: Notify,
    /// Whether the source holds its partitions paused. Partitions assigned meanwhile must
    /// follow at once, and so must partitions given back: librdkafka keeps a partition's pause
    /// across a revocation, so one that left paused would come back paused for good.
    paused: AtomicBool,
    metrics: SourceMetrics,
    /// Not ready while holding no partition for [`NO_PARTITION_GRACE`], or while a partition
    /// is stalled.
    health: StageHealth,
    group: String,
    /// Each held partition's progress, from the statistics.
    watchdog: Mutex<stall::Watchdog>,
    /// The last error librdkafka reported, redacted: the likely cause of a stall.
    last_error: Mutex<Option<String>>,
}

/// How long a writer may hold no partition of its group before it counts as not ready: a
/// rebalance takes a few seconds, an orphaned writer for ever.
const NO_PARTITION_GRACE: Duration = Duration::from_secs(30);

/// What the source counts (`docs/metrics.md`).
struct SourceMetrics {
    labels: Labels,
    lag: GaugeFamily,
    /// The partitions whose lag is shown, to drop the series of those that went elsewhere.
    lagging: Mutex<Vec<Labels>>,
    rebalances: Counter,
    assigned: Gauge,
    /// The partitions held now.
    held: Mutex<std::collections::HashSet<(String, i32)>>,
}

impl SourceMetrics {
    fn new(cx: &BuildContext) -> Self {
        let labels = cx.labels();
        let telemetry = &cx.telemetry;
        Self {
            lag: telemetry.gauges(
                "pipe_kafka_consumer_lag_messages",
                "Messages between the partition's end and the consumer's position (librdkafka's statistics).",
            ),
            lagging: Mutex::default(),
            held: Mutex::default(),
            rebalances: telemetry
                .counters(
                    "pipe_kafka_consumer_rebalances",
                    "Partition assignments received from the group.",
                )
                .get_or_create(&labels)
                .clone(),
            assigned: telemetry
                .gauges(
                    "pipe_kafka_consumer_assigned_partitions",
                    "Partitions of the group this consumer holds.",
                )
                .get_or_create(&labels)
                .clone(),
            labels,
        }
    }

    /// Sets each assigned partition's lag from librdkafka's statistics.
    fn observe(&self, statistics: &rdkafka::statistics::Statistics) {
        let mut shown = Vec::new();
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1: not assigned here, or no position yet; the internal "-1" partition too.
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                let mut labels = telemetry::with(&self.labels, "topic", topic.clone());
                labels.push(("partition", partition.to_string()));
                self.lag.get_or_create(&labels).set(stats.consumer_lag);
                shown.push(labels);
            }
        }
        let mut lagging = self.lagging.lock().expect("not poisoned");
        for gone in lagging.iter().filter(|l| !shown.contains(l)) {
            self.lag.remove(gone);
        }
        *lagging = shown;
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = kafka::redact(&format!("{error}: {reason}"), &self.log.options);
        *self.last_error.lock().expect("not poisoned") = Some(text);
        self.log.error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.log.observe(&statistics);
        self.metrics.observe(&statistics);
        let held = self.metrics.held.lock().expect("not poisoned");
        self.watchdog.lock().expect("not poisoned").observe(
            &statistics,
            &held,
            std::time::Instant::now(),
        );
    }
}

impl KafkaContext {
    /// Follows what the consumer holds through a rebalance (from the partitions it names, not
    /// by asking librdkafka, which would deadlock inside the callbacks that close runs), and
    /// says whether it holds nothing.
    fn holding(&self, rebalance: &Rebalance<'_>) {
        let mut held = self.metrics.held.lock().expect("not poisoned");
        match rebalance {
            Rebalance::Assign(partitions) => {
                for element in partitions.elements() {
                    held.insert((element.topic().to_owned(), element.partition()));
                }
            }
            Rebalance::Revoke(partitions) => {
                for element in partitions.elements() {
                    held.remove(&(element.topic().to_owned(), element.partition()));
                }
            }
            Rebalance::Error(_) => {}
        }
        let held = held.len();
        self.metrics.assigned.set(held as i64);
        if held > 0 {
            self.health.resolved("no_partition");
        } else {
            self.health.problem(
                "no_partition",
                format!("no partition of group `{}` assigned", self.group),
                NO_PARTITION_GRACE,
            );
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // librdkafka commits the stored offsets of revoked partitions itself (auto-commit);
        // the loop must stop storing any for them.
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut revoked = self.revoked.lock().expect("not poisoned");
            for element in partitions.elements() {
                revoked.push((Arc::from(element.topic()), element.partition()));
            }
            self.rebalanced.notify_one();
            info!(self.log.logger, "partitions revoked"; "count" => partitions.count());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let paused = self.paused.load(Ordering::Relaxed);
            let result = if paused {
                consumer.pause(partitions)
            } else {
                consumer.resume(partitions)
            };
            if let Err(e) = result {
                warn!(self.log.logger, "cannot pause or resume assigned partitions"; "error" => %e);
            }
            info!(self.log.logger, "partitions assigned"; "count" => partitions.count(), "paused" => paused);
            self.metrics.rebalances.inc();
        }
        self.holding(rebalance);
    }
}

struct KafkaSource {
    consumer: StreamConsumer<KafkaContext>,
    probe_config: ClientConfig,
    instance_id: Option<String>,
    topics: Vec<String>,
    format: Format,
    max_message_bytes: usize,
    stall_timeout: Duration,
}

/// How often the source looks at its partitions' progress: the statistics' own interval.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The broker's answers about suspects: each with the position it was asked at and the
/// partition's first and end offsets.
type Answers = Vec<(stall::Partition, i64, (i64, i64))>;

impl KafkaSource {
    /// Turns a message into an event: the decoded check, or a dead letter.
    fn decode(&self, message: &BorrowedMessage<'_>) -> Event {
        let origin = Origin {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
        };
        let payload = message.payload().unwrap_or_default();
        match decode_payload(payload, self.format, self.max_message_bytes) {
            Ok(event) => event.with_origin(origin),
            Err(error) => Event::dead_letter(error, Bytes::copy_from_slice(payload), Some(origin)),
        }
    }

    fn is_paused(&self) -> bool {
        self.consumer.context().paused.load(Ordering::Relaxed)
    }

    /// Pauses or resumes the whole assignment. Partitions assigned later follow (see
    /// [`KafkaContext::paused`]).
    fn set_paused(&self, pause: bool, logger: &slog::Logger) {
        self.consumer
            .context()
            .paused
            .store(pause, Ordering::Relaxed);
        let result = self.consumer.assignment().and_then(|assignment| {
            if pause {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        match result {
            Ok(()) if pause => debug!(logger, "partitions paused: the pipeline is full"),
            Ok(()) => debug!(logger, "partitions resumed"),
            Err(e) => warn!(logger, "cannot pause or resume partitions"; "error" => %e),
        }
    }

    /// Nothing is held back from the pipeline any more: a paused assignment resumes.
    fn drained(&self, blocked_since: &mut Option<tokio::time::Instant>, logger: &slog::Logger) {
        *blocked_since = None;
        if self.is_paused() {
            self.set_paused(false, logger);
        }
    }

    /// Settles the revocations librdkafka ran inside the polls since the last call: revoked
    /// partitions' positions are forgotten and the messages we still hold of them are dropped
    /// (their offsets can no longer be stored; the new owner re-reads from the last commit).
    /// If that leaves nothing held, the source resumes: paused, with nothing to hand over, it
    /// would never read again.
    ///
    /// It must run before a message returned by a poll is tracked. One wait for a message can
    /// span a whole rebalance, revoke and then assign, and under the eager protocol a member
    /// gets back partitions it just lost: that first message belongs to the new assignment, and
    /// settling the revocation after tracking it would forget it, so the next message's offset
    /// would be committed over it.
    fn absorb_revocations(
        &self,
        pending: &mut VecDeque<Event>,
        blocked_since: &mut Option<tokio::time::Instant>,
        acks: &mut Acknowledgements<Partition>,
        logger: &slog::Logger,
    ) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("not poisoned"),
        );
        if revoked.is_empty() {
            return;
        }
        pending.retain(|event| {
            event.origin().is_none_or(|o| {
                !revoked
                    .iter()
                    .any(|(t, p)| **t == *o.topic && *p == o.partition)
            })
        });
        for partition in &revoked {
            acks.forget(partition);
        }
        if pending.is_empty() {
            self.drained(blocked_since, logger);
        }
    }

    /// The error that stops the source on a batch librdkafka cannot read, naming where it is.
    async fn unreadable(&self, error: &KafkaError, logger: &slog::Logger) -> BoxError {
        error!(logger, "a record batch cannot be read; finding where it is"; "error" => %error);
        let positions = self.consumer.position();
        let config = self.probe_config.clone();
        let found = match positions {
            Ok(positions) => {
                tokio::task::spawn_blocking(move || locate_unreadable(&config, &positions))
                    .await
                    .ok()
                    .flatten()
            }
            Err(_) => None,
        };
        let cause = match error {
            KafkaError::MessageConsumption(code) => code.to_string(),
            other => other.to_string(),
        };
        let message = match found {
            Some(Unreadable {
                topic,
                partition,
                offset,
            }) => format!(
                "cannot read topic `{topic}` partition {partition} at offset {offset}: {cause}; \
                 the record batch there cannot be decompressed or parsed (a codec this build lacks, or a \
                 corrupt batch), so no message at or after it in that partition can be read; offsets \
                 before it are committed"
            ),
            None => format!(
                "cannot read a record batch: {cause}; the partition it is in could not be found again, \
                 so it may have been a passing fault; offsets before it are committed"
            ),
        };
        message.into()
    }

    /// Every few seconds: restarts the watchdog's clocks while the pipeline holds the source
    /// back, else asks the broker about suspects (one question at a time, off the loop), and
    /// judges the stalls known.
    fn watch_stalls(
        &self,
        held_back: bool,
        probe: &mut Option<tokio::task::JoinHandle<Answers>>,
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let now = std::time::Instant::now();
        let mut watchdog = self
            .consumer
            .context()
            .watchdog
            .lock()
            .expect("not poisoned");
        if held_back {
            watchdog.restart(now);
        } else if probe.is_none() {
            let suspects = watchdog.suspects(now);
            if !suspects.is_empty() {
                let config = self.probe_config.clone();
                *probe = Some(tokio::task::spawn_blocking(move || {
                    ask_ends(&config, suspects)
                }));
            }
        }
        let stalls = watchdog.stalled(now);
        drop(watchdog);
        self.judge_stalls(&stalls, warning, logger)
    }

    /// Takes the broker's answers about suspects in, and judges the stalls known.
    fn answered(
        &self,
        answers: Answers,
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let now = std::time::Instant::now();
        let mut watchdog = self
            .consumer
            .context()
            .watchdog
            .lock()
            .expect("not poisoned");
        for (partition, position, offsets) in &answers {
            watchdog.answered(partition, *position, *offsets, now);
        }
        let stalls = watchdog.stalled(now);
        drop(watchdog);
        self.judge_stalls(&stalls, warning, logger)
    }

    /// Stalled partitions make the stage not ready at once, are logged (at most every 30 s),
    /// and stop the source once one has lasted `stall_timeout`.
    fn judge_stalls(
        &self,
        stalls: &[stall::Stall],
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let context = self.consumer.context();
        let now = std::time::Instant::now();
        let Some(worst) = stalls.first() else {
            context.health.resolved("partition_stalled");
            if let Some(lasted) = warning.cleared(now) {
                info!(logger, "stalled partitions are fetched again"; "lasted" => duration::format_approx(lasted));
            }
            return Ok(());
        };
        let listed: Vec<String> = stalls.iter().map(ToString::to_string).collect();
        let cause = match context.last_error.lock().expect("not poisoned").as_deref() {
            Some(error) => format!("; the last error librdkafka reported: {error}"),
            None => String::new(),
        };
        let message = format!("{}{cause}", listed.join("; "));
        context
            .health
            .problem("partition_stalled", message.clone(), Duration::ZERO);
        if worst.lasted >= self.stall_timeout {
            return Err(format!(
                "{message}; stopping after stall_timeout ({}); offsets before the stall are committed",
                duration::format(self.stall_timeout)
            )
            .into());
        }
        if let Some(report) = warning.occurred(now) {
            error!(logger, "partitions stalled: messages wait in them and no fetch brings them";
                   "stalls" => &message, "occurrences" => report.occurrences,
                   "stopping_in" => duration::format_approx(self.stall_timeout.saturating_sub(worst.lasted)));
        }
        Ok(())
    }

    /// Stores the offset after a completed message, so it is committed.
    fn complete(&self, done: Completion<Partition>, logger: &slog::Logger) -> Result<(), BoxError> {
        let (topic, partition) = &done.stream;
        if done.status == AckStatus::Failed {
            // Never commit past an event that was not handled: stop, so that a restart re-reads
            // it from the last committed offset.
            return Err(format!(
                "the message at {topic}/{partition} offset {} was not handled by every sink; stopping without committing past it",
                done.position
            )
            .into());
        }
        // store_offset takes the message's own offset and stores the next one.
        match self.consumer.store_offset(topic, *partition, done.position) {
            Ok(()) => Ok(()),
            // The partition was revoked meanwhile: its new owner re-reads from the last commit.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                debug!(logger, "offset not stored: partition no longer assigned"; "topic" => &**topic, "partition" => partition);
                Ok(())
            }
            Err(e) => Err(format!("cannot store the offset of {topic}/{partition}: {e}").into()),
        }
    }
}

/// Is this consumer error one that says a batch cannot be read? librdkafka retries fetches
/// and reconnections itself; these codes mean a batch it fetched cannot be decompressed or
/// parsed, so the same batch would come back with the same error for ever.
fn is_unreadable(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BadCompression
                | RDKafkaErrorCode::NotImplemented
                | RDKafkaErrorCode::BadMessage
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::UnsupportedCompressionType
        )
    )
}

/// The error for a fatal consumer error: the consumer cannot go on, whatever we wait for.
fn fatal(code: RDKafkaErrorCode, instance_id: Option<&str>) -> BoxError {
    let hint = match (code, instance_id) {
        (RDKafkaErrorCode::FencedInstanceId, Some(id)) => {
            format!("; another running writer uses instance_id `{id}`: give each writer its own")
        }
        _ => String::new(),
    };
    format!("the Kafka consumer hit a fatal error: {code}{hint}").into()
}

/// Where an unreadable batch is: a partition and the first offset not yet read from it.
#[derive(Debug, PartialEq, Eq)]
struct Unreadable {
    topic: String,
    partition: i32,
    offset: i64,
}

/// How long the probe reads one partition before deeming it readable.
const PROBE_PER_PARTITION: std::time::Duration = std::time::Duration::from_secs(5);

/// Finds which of `positions` (partitions with the next offset to read, or `Offset::Invalid`
/// for "from the last commit") holds a batch that fails with a permanent error, by reading
/// each once with a consumer of our own that joins no group. Blocking.
fn locate_unreadable(config: &ClientConfig, positions: &TopicPartitionList) -> Option<Unreadable> {
    let mut config = config.clone();
    config.set("enable.auto.commit", "false");
    let probe: BaseConsumer = config.create().ok()?;
    for element in positions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let offset = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            // Never read in this run: from the last commit, or the start of the partition.
            _ => {
                let mut one = TopicPartitionList::new();
                one.add_partition(topic, partition);
                let committed = probe
                    .committed_offsets(one, PROBE_PER_PARTITION)
                    .ok()
                    .and_then(|list| list.elements().first().map(|e| e.offset()));
                match committed {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => probe
                        .fetch_watermarks(topic, partition, PROBE_PER_PARTITION)
                        .ok()
                        .map(|(low, _)| low),
                }
            }
        };
        let Some(offset) = offset else { continue };
        let mut one = TopicPartitionList::new();
        if one
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .is_err()
            || probe.assign(&one).is_err()
        {
            continue;
        }
        let deadline = std::time::Instant::now() + PROBE_PER_PARTITION;
        while std::time::Instant::now() < deadline {
            match probe.poll(std::time::Duration::from_millis(100)) {
                Some(Err(e)) if is_unreadable(&e) => {
                    return Some(Unreadable {
                        topic: topic.to_owned(),
                        partition,
                        offset,
                    })
                }
                // It reads, or there is nothing to read: not this one.
                Some(Ok(_) | Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(_)) | None => {}
            }
        }
    }
    None
}

/// Asks the broker for the first and end offsets of each suspect, with a consumer of our own
/// that joins no group (a ListOffsets request, not a fetch). Blocking. It stops at the first
/// partition the broker does not answer for: a broker that cannot be reached is not a stall.
fn ask_ends(config: &ClientConfig, suspects: Vec<(stall::Partition, i64)>) -> Answers {
    let mut config = config.clone();
    // Never polled: nothing may pile up in its queues.
    config.set("enable.auto.commit", "false");
    config.set("statistics.interval.ms", "0");
    let Ok(probe) = config.create::<BaseConsumer>() else {
        return Vec::new();
    };
    let mut answers = Vec::new();
    for (partition, position) in suspects {
        match probe.fetch_watermarks(&partition.0, partition.1, PROBE_PER_PARTITION) {
            Ok(offsets) => answers.push((partition, position, offsets)),
            Err(_) => break,
        }
    }
    answers
}

/// The probe's answers once it has them; never, while no probe runs.
async fn probe_answers(probe: &mut Option<tokio::task::JoinHandle<Answers>>) -> Answers {
    let Some(handle) = probe else {
        return std::future::pending().await;
    };
    let answers = handle.await.unwrap_or_default();
    *probe = None;
    answers
}

/// Decodes one payload into an event (a typed check for `check_v1`), or says why it cannot be.
pub fn decode_payload(payload: &[u8], format: Format, max_bytes: usize) -> Result<Event, String> {
    if payload.len() > max_bytes {
        return Err(format!(
            "the message has {} bytes, more than max_message_bytes ({max_bytes})",
            payload.len()
        ));
    }
    match format {
        Format::Json => match serde_json::from_slice(payload) {
            Ok(Value::Object(fields)) => Ok(Event::new(fields)),
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        },
        Format::CheckV1 => {
            // One pass from bytes to the struct, for every good message.
            if let Ok(check) = serde_json::from_slice::<CheckResult>(payload) {
                if check.schema_version == SCHEMA_VERSION {
                    return Ok(Event::from_check(check));
                }
            }
            // A bad one is read again, only to say precisely what is wrong with it.
            let value: Value =
                serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
            match value.get("schema_version") {
                Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
                Some(v) => {
                    return Err(format!(
                        "unknown schema_version {v}; this writer reads {SCHEMA_VERSION}"
                    ))
                }
                None => return Err("no schema_version: not a check result".to_owned()),
            }
            let check: CheckResult = serde_json::from_value(value)
                .map_err(|e| format!("not a valid schema v{SCHEMA_VERSION} check result: {e}"))?;
            Ok(Event::from_check(check))
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), BoxError> {
        let SourceContext {
            out,
            shutdown,
            logger,
            ..
        } = cx;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        let (mut tracker, mut acks) = ack::channel::<Partition>();
        let mut pending: VecDeque<Event> = VecDeque::new();
        // When the pipeline started refusing the message at the front of `pending`.
        let mut blocked_since: Option<tokio::time::Instant> = None;
        let context = self.consumer.context();
        let mut consumer_errors = RepeatedWarning::default();
        let mut stall_check = tokio::time::interval(STALL_CHECK_EVERY);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = None;
        let mut stall_warning = RepeatedWarning::default();

        let result: Result<(), BoxError> = loop {
            self.absorb_revocations(&mut pending, &mut blocked_since, &mut acks, &logger);
            let paused = self.is_paused();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                () = context.rebalanced.notified() => {}
                Some(done) = acks.next() => {
                    if let Err(e) = self.complete(done, &logger) {
                        break Err(e);
                    }
                }
                permit = out.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else { break Err(crate::stage::DownstreamClosed.into()) };
                    permit.send(pending.pop_front().expect("not empty"));
                    if pending.is_empty() {
                        self.drained(&mut blocked_since, &logger);
                    }
                }
                () = crate::stage::sleep_until(blocked_since.map(|t| t + PAUSE_AFTER)), if blocked_since.is_some() && !paused => {
                    self.set_paused(true, &logger);
                }
                _ = stall_check.tick() => {
                    let held_back = paused || !pending.is_empty();
                    if let Err(e) = self.watch_stalls(held_back, &mut probe, &mut stall_warning, &logger) {
                        break Err(e);
                    }
                }
                answers = probe_answers(&mut probe) => {
                    if let Err(e) = self.answered(answers, &mut stall_warning, &logger) {
                        break Err(e);
                    }
                }
                // Taken only when the pipeline has room, or while paused: polling then returns
                // no messages but serves the group, which is what keeps us in it.
                message = self.consumer.recv(), if pending.is_empty() || paused => match message {
                    Ok(message) => {
                        if let Some(lasted) = consumer_errors.cleared(std::time::Instant::now()) {
                            info!(logger, "consuming again after consumer errors"; "lasted" => duration::format_approx(lasted));
                        }
                        // Settled before tracking: see absorb_revocations.
                        self.absorb_revocations(&mut pending, &mut blocked_since, &mut acks, &logger);
                        let event = self.decode(&message);
                        if let Some(error) = event.dead_letter_error() {
                            warn!(logger, "undecodable message: dead letter"; "topic" => message.topic(),
                                  "partition" => message.partition(), "offset" => message.offset(), "error" => error);
                        }
                        let stream = (Arc::from(message.topic()), message.partition());
                        pending.push_back(event.with_ack(tracker.track(stream, message.offset())));
                        blocked_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    Err(e) if is_unreadable(&e) => break Err(self.unreadable(&e, &logger).await),
                    Err(KafkaError::MessageConsumptionFatal(code)) => break Err(fatal(code, self.instance_id.as_deref())),
                    Err(e) => {
                        let text = kafka::redact(&e.to_string(), &self.consumer.context().log.options);
                        *context.last_error.lock().expect("not poisoned") = Some(text);
                        if let Some(report) = consumer_errors.occurred(std::time::Instant::now()) {
                            warn!(logger, "consumer error; retrying"; "error" => %e,
                                  "lasted" => duration::format_approx(report.lasted), "occurrences" => report.occurrences);
                        }
                    }
                },
            }
        };

        // Stop producing, and let the sinks finish what they have: their completions still
        // advance the offsets. Events never handed over fail as they are dropped, last in their
        // partition, and so does anything a sink could not finish within the grace period;
        // nothing is stored at or past a partition's first failure, and the next run reads from
        // there.
        drop(out);
        drop(pending);
        drop(tracker);
        acks.drain(|done| self.complete(done, &logger)).await?;
        if let Err(e) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            // Nothing stored since the last auto-commit is not an error.
            if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                error!(logger, "final offset commit failed; the next run re-reads from the previous commit"; "error" => %e);
            }
        }
        info!(logger, "kafka source stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> Value {
        serde_json::json!({
            "schema_version": 1, "check_id": "8a036c86-1f8f-5289-af3e-1f909db5869c",
            "target": "t", "url": "http://x/", "method": "GET",
            "scheduled_at": "2026-11-29T08:00:40.000Z", "started_at": "2026-11-29T08:00:40.001Z",
            "response_time_ms": 1.5,
            "timings_ms": {"dns": null, "connect": 0.1, "tls": null, "first_byte": 1.0, "transfer": 0.2},
            "status_code": 200, "error": null, "regex": null, "regex_matched": null,
            "latency_class": "ok", "up": true, "body_bytes": 10, "remote_addr": "127.0.0.1:80",
            "http_version": "HTTP/1.1"
        })
    }

    fn decode(value: &[u8]) -> Result<Event, String> {
        decode_payload(value, Format::CheckV1, 4096)
    }

    #[test]
    fn a_valid_check_decodes_typed() {
        let event = decode(check().to_string().as_bytes()).unwrap();
        assert_eq!(event.check().expect("typed").target, "t");
        assert_eq!(event.get("target"), Some(&Value::from("t")));
    }

    #[test]
    fn each_kind_of_poison_is_named() {
        assert!(decode(b"{not json")
            .unwrap_err()
            .starts_with("invalid JSON:"));
        let mut v = check();
        v["schema_version"] = 2.into();
        assert_eq!(
            decode(v.to_string().as_bytes()).unwrap_err(),
            "unknown schema_version 2; this writer reads 1"
        );
        let mut v = check();
        v.as_object_mut().unwrap().remove("check_id");
        assert!(decode(v.to_string().as_bytes())
            .unwrap_err()
            .contains("missing field `check_id`"));
        let mut v = check();
        v["up"] = "yes".into();
        assert!(decode(v.to_string().as_bytes())
            .unwrap_err()
            .contains("invalid type"));
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
        assert!(decode(big.as_bytes())
            .unwrap_err()
            .contains("more than max_message_bytes (4096)"));
        assert_eq!(
            decode(b"[1]").unwrap_err(),
            "no schema_version: not a check result"
        );
        assert_eq!(
            decode_payload(b"[1]", Format::Json, 100).unwrap_err(),
            "not a JSON object"
        );
    }
}
