//! A checker fleet's membership of its targets topic, and the hand-over lookup.
//!
//! Checkers of one fleet are one consumer group on the compacted targets topic
//! ([`super::targets_topic`]): each owns the targets of the partitions it is assigned, reads
//! them from the partition's start (offsets are never committed: the topic is the state, not
//! a queue), and follows their changes live. The group's rebalance moves partitions between
//! members, incrementally (`cooperative-sticky`, or the broker-driven protocol of KIP-848),
//! and `group.instance.id` gives a restarted member its partitions back without one.
//!
//! A revoked partition is given up only once its owner says its targets' work is delivered
//! ([`Owner::revoked`] runs inside the rebalance): with an incremental protocol the partition
//! goes to its new owner in a later rebalance, after the old one has finished, so the new
//! owner reads the results topic ([`last_slots`]) knowing the old one will publish nothing
//! more for it.
//!
//! Blocking: one dedicated thread per checker runs [`Membership::run`]. The idea of targets
//! in a compacted topic shared by consumer groups is getsentry/uptime-checker's (its early
//! design); the code is ours.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::Value;
use slog::{error, info, warn};
use tokio_util::sync::CancellationToken;

use super::kafka::{client_config, redact, SlogContext};
use super::targets_topic::{TopicAccess, TopicError};

/// How the group shares partitions among its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol with the `cooperative-sticky` assignor: a rebalance moves only
    /// the partitions that must move.
    #[default]
    Classic,
    /// KIP-848's protocol (`group.protocol=consumer`, Kafka 4): the broker assigns,
    /// incrementally, without stopping the group.
    Consumer,
}

/// One member of a fleet.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The targets topic and how to reach it.
    pub access: TopicAccess,
    /// The fleet's name: the consumer group id.
    pub fleet: String,
    /// `group.instance.id`: static membership, kept across restarts.
    pub instance_id: Option<String>,
    /// The group protocol.
    pub protocol: GroupProtocol,
}

/// A target record of an owned partition.
#[derive(Debug)]
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The key: the target's name.
    pub name: String,
    /// The settings, or `None` for a tombstone (the target is deleted).
    pub value: Option<Value>,
}

/// What a member does with its partitions' targets. Called on the membership's thread.
pub trait Owner: Send {
    /// Partitions are now ours; their records follow from the start.
    fn assigned(&mut self, partitions: &[i32]);
    /// A record of an owned partition.
    fn record(&mut self, record: Record);
    /// Every record a partition held when it was assigned has been given: its targets can
    /// start.
    fn caught_up(&mut self, partition: i32);
    /// Partitions are taken away. Called inside the rebalance: return once nothing more of
    /// their targets will be published.
    fn revoked(&mut self, partitions: &[i32]);
}

struct State<O> {
    owner: O,
    /// Partitions assigned and not read to their end yet: the end, once asked for.
    catching_up: BTreeMap<i32, Option<i64>>,
}

struct FleetContext<O> {
    log: SlogContext,
    state: Mutex<State<O>>,
    logger: slog::Logger,
}

impl<O: Owner> ClientContext for FleetContext<O> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl<O: Owner> ConsumerContext for FleetContext<O> {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let started = Instant::now();
            let mut state = self.state.lock().expect("not poisoned");
            for partition in &partitions {
                state.catching_up.remove(partition);
            }
            state.owner.revoked(&partitions);
            info!(self.logger, "fleet partitions revoked; their targets are handed over";
                  "partitions" => format!("{partitions:?}"),
                  "handover_ms" => started.elapsed().as_millis() as u64);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                if partitions.is_empty() {
                    return;
                }
                info!(self.logger, "fleet partitions assigned";
                      "partitions" => format!("{partitions:?}"));
                let mut state = self.state.lock().expect("not poisoned");
                for &partition in &partitions {
                    state.catching_up.insert(partition, None);
                }
                state.owner.assigned(&partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                warn!(self.logger, "fleet rebalance failed"; "error" => e.to_string());
            }
        }
    }
}

/// How long leaving the group may take at shutdown before the consumer is closed anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

impl Membership {
    /// Joins the fleet and serves `owner` until `stop`, then leaves the group (handing the
    /// targets over as a revocation) and returns. Fails only when the consumer cannot be
    /// created or subscribed; a broker that is down is waited for.
    pub fn run<O: Owner>(
        &self,
        owner: O,
        logger: &slog::Logger,
        stop: &CancellationToken,
    ) -> Result<(), TopicError> {
        let access = &self.access;
        let mut defaults = vec![
            ("group.id", self.fleet.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ];
        match self.protocol {
            GroupProtocol::Classic => {
                defaults.push(("partition.assignment.strategy", "cooperative-sticky"))
            }
            GroupProtocol::Consumer => defaults.push(("group.protocol", "consumer")),
        }
        if let Some(id) = &self.instance_id {
            defaults.push(("group.instance.id", id.as_str()));
        }
        let config = client_config(&access.brokers, &access.options, &defaults)
            .map_err(|errors| access.fail(errors.iter().map(ToString::to_string)))?;
        let context = FleetContext {
            log: SlogContext::new(logger.clone(), access.options.clone()),
            state: Mutex::new(State {
                owner,
                catching_up: BTreeMap::new(),
            }),
            logger: logger.clone(),
        };
        let consumer: BaseConsumer<FleetContext<O>> = config
            .create_with_context(context)
            .map_err(|e| access.error("cannot create the fleet's consumer", e))?;
        consumer
            .subscribe(&[access.topic.as_str()])
            .map_err(|e| access.error("cannot subscribe", e))?;
        info!(logger, "joining the fleet"; "fleet" => &self.fleet, "topic" => &access.topic,
              "instance_id" => self.instance_id.as_deref().unwrap_or("-"));

        while !stop.is_cancelled() {
            let polled = consumer.poll(Duration::from_millis(100));
            let context = consumer.context();
            match polled {
                None => {}
                Some(Err(e)) => warn!(logger, "cannot read the targets topic";
                                      "topic" => &access.topic,
                                      "error" => redact(&e.to_string(), &access.options)),
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    match decode(&message) {
                        Ok((name, value)) => context
                            .state
                            .lock()
                            .expect("not poisoned")
                            .owner
                            .record(Record {
                                partition,
                                offset,
                                name,
                                value,
                            }),
                        // One bad record must not stop the fleet: it is skipped, named.
                        Err(message) => error!(logger, "targets topic record skipped: {message}";
                                               "topic" => &access.topic,
                                               "partition" => partition, "offset" => offset),
                    }
                }
            }
            self.settle_catch_up(&consumer, logger);
        }

        // Leaving hands every target over: the revocation runs inside the polls below.
        consumer.unsubscribe();
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(100));
            if consumer.assignment().map_or(true, |a| a.count() == 0) {
                break;
            }
        }
        info!(logger, "left the fleet"; "fleet" => &self.fleet);
        Ok(())
    }

    /// Finds where each partition that is catching up ends, and tells the owner of those
    /// that have been read to it.
    fn settle_catch_up<O: Owner>(
        &self,
        consumer: &BaseConsumer<FleetContext<O>>,
        logger: &slog::Logger,
    ) {
        let context = consumer.context();
        let unknown: Vec<i32> = {
            let state = context.state.lock().expect("not poisoned");
            if state.catching_up.is_empty() {
                return;
            }
            state
                .catching_up
                .iter()
                .filter(|(_, end)| end.is_none())
                .map(|(p, _)| *p)
                .collect()
        };
        for partition in unknown {
            match consumer.fetch_watermarks(&self.access.topic, partition, self.access.timeout) {
                Ok((_, high)) => {
                    let mut state = context.state.lock().expect("not poisoned");
                    if let Some(end) = state.catching_up.get_mut(&partition) {
                        *end = Some(high);
                    }
                }
                Err(e) => warn!(logger, "cannot read where a targets partition ends; retrying";
                                "partition" => partition,
                                "error" => redact(&e.to_string(), &self.access.options)),
            }
        }
        let positions = consumer.position().unwrap_or_default();
        let mut state = context.state.lock().expect("not poisoned");
        let done: Vec<i32> = state
            .catching_up
            .iter()
            .filter_map(|(&partition, end)| {
                let end = (*end)?;
                let position = positions
                    .find_partition(&self.access.topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(n) => Some(n),
                        _ => None,
                    });
                // An empty partition is read at once; a compacted one may end past its last
                // record's offset, which the position then reaches.
                (end == 0 || position.is_some_and(|p| p >= end)).then_some(partition)
            })
            .collect();
        for partition in done {
            state.catching_up.remove(&partition);
            state.owner.caught_up(partition);
        }
    }
}

/// A record's name and settings, or why it cannot be read.
fn decode(
    message: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(String, Option<Value>), String> {
    let name = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or("the record has no UTF-8 key (a target name)")?
        .to_owned();
    let value = match message.payload() {
        None => None,
        Some(bytes) => Some(
            serde_json::from_slice(bytes)
                .map_err(|e| format!("target `{name}`: the value is not JSON: {e}"))?,
        ),
    };
    Ok((name, value))
}

/// The fields of a result the hand-over needs.
#[derive(Deserialize)]
struct Published {
    target: String,
    #[serde(with = "super::check::rfc3339_millis")]
    scheduled_at: SystemTime,
    #[serde(default)]
    region: Option<String>,
}

/// What a hand-over lookup found.
#[derive(Debug, Default)]
pub struct LastSlots {
    /// The last slot published (ms since the epoch) per target asked for.
    pub slots: HashMap<String, u64>,
    /// Results read.
    pub read: u64,
    /// Records that were not results (skipped).
    pub unreadable: u64,
}

/// Reads the results topic from `since` to its end and returns the last slot published for
/// each of `names` from `region`: where a target's new owner goes on from.
pub fn last_slots(
    results: &TopicAccess,
    region: Option<&str>,
    names: &HashSet<String>,
    since: SystemTime,
) -> Result<LastSlots, TopicError> {
    let consumer: BaseConsumer = results
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", "pipe-fleet-handover"),
        ])?
        .create()
        .map_err(|e| results.error("cannot create a consumer", e))?;
    let partitions = results.partitions(
        &consumer,
        "results topic",
        "it is the topic the checkers' kafka sink publishes to",
    )?;
    let since_ms = since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted
            .add_partition_offset(&results.topic, partition, Offset::Offset(since_ms))
            .map_err(|e| results.error("cannot ask for offsets", e))?;
    }
    let starts = consumer
        .offsets_for_times(wanted, results.timeout)
        .map_err(|e| results.error("cannot find the offsets of the hand-over window", e))?;
    // A partition with nothing published since `since` has no offset for it: nothing to read.
    let starts = starts
        .elements()
        .into_iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(start) => Some((element.partition(), Some(start))),
            _ => None,
        });
    let mut found = LastSlots::default();
    results.read_to_end(&consumer, starts, |message| {
        found.read += 1;
        let Some(published) = message
            .payload()
            .and_then(|bytes| serde_json::from_slice::<Published>(bytes).ok())
        else {
            found.unreadable += 1;
            return Ok(());
        };
        if published.region.as_deref() != region || !names.contains(&published.target) {
            return Ok(());
        }
        let slot = published
            .scheduled_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let last = found.slots.entry(published.target).or_insert(slot);
        *last = (*last).max(slot);
        Ok(())
    })?;
    Ok(found)
}
