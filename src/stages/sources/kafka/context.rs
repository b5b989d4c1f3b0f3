//! The consumer's context: librdkafka's logs and statistics, the rebalance callbacks (revoked
//! partitions handed to the loop, new ones given the pause state), and what the source counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use slog::{info, warn};
use tokio::sync::Notify;

use super::stall;
use crate::monitor::kafka::{self, SlogContext};
use crate::registry::BuildContext;
use crate::telemetry::{self, GaugeFamily, Labels, StageHealth};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// A partition, as an acknowledgement stream.
pub(super) type Partition = (Arc<str>, i32);

/// The consumer's context: logs through slog, hands revocations to the loop, and gives new
/// partitions the pause state of the rest. Its callbacks run inside the loop's own polls.
pub(super) struct KafkaContext {
    pub(super) log: SlogContext,
    /// Partitions revoked since the loop last looked.
    pub(super) revoked: Mutex<Vec<Partition>>,
    /// Ends the loop's wait after a revocation, so it is settled at once, not after whatever
    /// the loop waits for next (a message, which may be long coming).
    pub(super) rebalanced: Notify,
    /// Whether the source holds its partitions paused. Partitions assigned meanwhile must
    /// follow at once, and so must partitions given back: librdkafka keeps a partition's pause
    /// across a revocation, so one that left paused would come back paused for good.
    pub(super) paused: AtomicBool,
    pub(super) metrics: SourceMetrics,
    /// Not ready while holding no partition for [`NO_PARTITION_GRACE`], or while a partition
    /// is stalled.
    pub(super) health: StageHealth,
    pub(super) group: String,
    /// Each held partition's progress, from the statistics.
    pub(super) watchdog: Mutex<stall::Watchdog>,
    /// The last error librdkafka reported, redacted: the likely cause of a stall.
    pub(super) last_error: Mutex<Option<String>>,
}

/// How long a writer may hold no partition of its group before it counts as not ready: a
/// rebalance takes a few seconds, an orphaned writer for ever.
pub(super) const NO_PARTITION_GRACE: Duration = Duration::from_secs(30);

/// What the source counts (`docs/metrics.md`).
pub(super) struct SourceMetrics {
    pub(super) labels: Labels,
    pub(super) lag: GaugeFamily,
    /// The partitions whose lag is shown, to drop the series of those that went elsewhere.
    pub(super) lagging: Mutex<Vec<Labels>>,
    pub(super) rebalances: Counter,
    pub(super) assigned: Gauge,
    /// The partitions held now.
    pub(super) held: Mutex<std::collections::HashSet<(String, i32)>>,
}

impl SourceMetrics {
    pub(super) fn new(cx: &BuildContext) -> Self {
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
