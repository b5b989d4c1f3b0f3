//! Targets as data: the `targets` topic, compacted, keyed by target name, whose value is the
//! target's settings as JSON (the fields of a `targets_file` entry) and whose tombstone deletes
//! the target. `pipe targets apply` and `pipe targets list` read and write it through here.
//!
//! Values are stored as written, `${VAR}`s not substituted: a secret in a header stays in the
//! environment of the checkers that read the topic, never in Kafka. What a value must hold is
//! checked by the caller (the CLI validates each entry as an `http_probe` target); this module
//! knows records, not stages, so it sits below them (docs/architecture.md).
//!
//! Blocking: librdkafka's base clients, called from `spawn_blocking` or a CLI thread.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use super::kafka::{client_config, redact, Options};

/// The targets now in the topic: name to settings, the latest record of each name that is not
/// a tombstone.
pub type Current = BTreeMap<String, Value>;

/// How a client reaches the topic.
#[derive(Debug, Clone)]
pub struct TopicAccess {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The targets topic.
    pub topic: String,
    /// librdkafka settings (security.protocol, ssl.*, sasl.*), as in a Kafka stage's `options`.
    pub options: Options,
    /// How long a read or a publish may take before it fails.
    pub timeout: Duration,
}

/// A failure, with secrets redacted and the topic named.
#[derive(Debug)]
pub struct TopicError(String);

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopicError {}

impl TopicAccess {
    /// An error of this topic: `what` failed because of `e` (redacted).
    pub fn error(&self, what: &str, e: impl fmt::Display) -> TopicError {
        TopicError(format!(
            "topic `{}`: {what}: {}",
            self.topic,
            redact(&e.to_string(), &self.options)
        ))
    }

    /// An error of this topic, from messages that hold no secret.
    pub fn fail(&self, messages: impl IntoIterator<Item = String>) -> TopicError {
        let text: Vec<String> = messages.into_iter().collect();
        TopicError(format!("topic `{}`: {}", self.topic, text.join("; ")))
    }

    /// Client settings for this topic's brokers and options, over `defaults`.
    pub fn client(&self, defaults: &[(&str, &str)]) -> Result<rdkafka::ClientConfig, TopicError> {
        client_config(&self.brokers, &self.options, defaults)
            .map_err(|errors| self.fail(errors.iter().map(ToString::to_string)))
    }

    /// The topic's partitions; when it does not exist, an error naming it as `role` (such as
    /// "targets topic") and saying `how` to create it.
    pub fn partitions<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        role: &str,
        how: &str,
    ) -> Result<Vec<i32>, TopicError> {
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| self.error("cannot read the topic's metadata", e))?;
        match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => {
                Ok(topic.partitions().iter().map(|p| p.id()).collect())
            }
            _ => Err(TopicError(format!(
                "{role} `{}` does not exist: {how}",
                self.topic
            ))),
        }
    }

    /// Reads the whole topic, every partition from its start to the end it had when the read
    /// began, and keeps the latest record of each key. A record without a key, or whose value
    /// is not JSON, is an error naming its partition and offset: nothing half-read is returned.
    pub fn read(&self) -> Result<Current, TopicError> {
        let consumer: BaseConsumer = self
            .client(&[
                ("enable.auto.commit", "false"),
                ("group.id", "pipe-targets-cli"),
            ])?
            .create()
            .map_err(|e| self.error("cannot create a consumer", e))?;
        let partitions = self.partitions(
            &consumer,
            "targets topic",
            "create it compacted (cleanup.policy=compact), as docs/fleet.md shows",
        )?;
        let mut current = Current::new();
        let starts = partitions.iter().map(|&partition| (partition, None));
        self.read_to_end(&consumer, starts, |message| {
            let (partition, offset) = (message.partition(), message.offset());
            let at = format!("partition {partition} offset {offset}");
            let key = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| {
                    TopicError(format!(
                        "targets topic `{}`: {at}: the record has no UTF-8 key (a target name)",
                        self.topic
                    ))
                })?
                .to_owned();
            match message.payload() {
                None => {
                    current.remove(&key);
                }
                Some(bytes) => {
                    let value = serde_json::from_slice(bytes).map_err(|e| {
                        TopicError(format!(
                            "targets topic `{}`: {at}: target `{key}`: the value is not JSON: {e}",
                            self.topic
                        ))
                    })?;
                    current.insert(key, value);
                }
            }
            Ok(())
        })?;
        Ok(current)
    }

    /// Reads each of `starts` (a partition, and the offset to read it from: `None` for its
    /// start) up to where it ends now, handing every record to `record`: records published
    /// after the read began are not waited for. `consumer` is not subscribed; it is assigned
    /// here.
    pub fn read_to_end<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        starts: impl IntoIterator<Item = (i32, Option<i64>)>,
        mut record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), TopicError>,
    ) -> Result<(), TopicError> {
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, self.timeout)
                .map_err(|e| {
                    self.error(&format!("partition {partition}: cannot read its end"), e)
                })?;
            let start = start.unwrap_or(low).max(low);
            if high > start {
                ends.insert(partition, high);
                assignment
                    .add_partition_offset(&self.topic, partition, Offset::Offset(start))
                    .map_err(|e| self.error("cannot assign", e))?;
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        consumer
            .assign(&assignment)
            .map_err(|e| self.error("cannot assign its partitions", e))?;
        let deadline = Instant::now() + self.timeout;
        while !ends.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.fail([format!(
                    "not read to its end within {} s",
                    self.timeout.as_secs()
                )]));
            }
            let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) else {
                continue;
            };
            let message = message.map_err(|e| self.error("cannot read", e))?;
            let (partition, offset) = (message.partition(), message.offset());
            record(&message)?;
            if ends.get(&partition).is_some_and(|&end| offset + 1 >= end) {
                ends.remove(&partition);
            }
        }
        Ok(())
    }

    /// Publishes the plan's creations and updates (the settings as JSON) and its deletions
    /// (tombstones), and waits until the broker has every one.
    pub fn publish(&self, plan: &Plan) -> Result<usize, TopicError> {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client(&[("enable.idempotence", "true"), ("acks", "all")])?
            .create()
            .map_err(|e| self.error("cannot create a producer", e))?;
        let mut sent = 0;
        for change in &plan.changes {
            let (name, value) = match change {
                Change::Create(name, value) | Change::Update(name, value) => (
                    name,
                    Some(serde_json::to_vec(value).expect("JSON values serialize")),
                ),
                Change::Delete(name) => (name, None),
            };
            let mut record = BaseRecord::<str, [u8]>::to(&self.topic).key(name.as_str());
            if let Some(value) = &value {
                record = record.payload(value.as_slice());
            }
            producer
                .send(record)
                .map_err(|(e, _)| self.error(&format!("cannot queue target `{name}`"), e))?;
            sent += 1;
        }
        producer
            .flush(self.timeout)
            .map_err(|e| self.error("not every record reached the broker", e))?;
        Ok(sent)
    }
}

/// One change to the topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A target the topic does not have.
    Create(String, Value),
    /// A target whose settings differ.
    Update(String, Value),
    /// A target the file no longer has.
    Delete(String),
}

/// What `apply` will do: the changes, and how many targets stay as they are.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// In name order: creations, updates and deletions interleaved.
    pub changes: Vec<Change>,
    /// Targets already in the topic with the same settings.
    pub unchanged: usize,
}

impl Plan {
    /// What turns `current` into `desired` (both keyed by name).
    pub fn between(current: &Current, desired: &Current) -> Self {
        let mut plan = Self::default();
        for (name, value) in desired {
            match current.get(name) {
                None => plan
                    .changes
                    .push(Change::Create(name.clone(), value.clone())),
                Some(old) if old != value => plan
                    .changes
                    .push(Change::Update(name.clone(), value.clone())),
                Some(_) => plan.unchanged += 1,
            }
        }
        for name in current.keys().filter(|name| !desired.contains_key(*name)) {
            plan.changes.push(Change::Delete(name.clone()));
        }
        plan.changes.sort_by(|a, b| a.name().cmp(b.name()));
        plan
    }
}

impl Change {
    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Create(name, _) | Self::Update(name, _) | Self::Delete(name) => name,
        }
    }
}

/// `+ name`, `~ name`, `- name`, as `terraform plan` marks them, then a summary line.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut create, mut update, mut delete) = (0, 0, 0);
        for change in &self.changes {
            let mark = match change {
                Change::Create(..) => {
                    create += 1;
                    '+'
                }
                Change::Update(..) => {
                    update += 1;
                    '~'
                }
                Change::Delete(..) => {
                    delete += 1;
                    '-'
                }
            };
            writeln!(f, "{mark} {}", super::secrets::redact_url(change.name()))?;
        }
        write!(
            f,
            "{create} to create, {update} to update, {delete} to delete, {} unchanged",
            self.unchanged
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plan_creates_updates_and_deletes_by_name() {
        let current = Current::from([
            ("same".into(), json!({"url": "https://a.example"})),
            ("moved".into(), json!({"url": "https://b.example"})),
            ("gone".into(), json!({"url": "https://c.example"})),
        ]);
        let desired = Current::from([
            ("same".into(), json!({"url": "https://a.example"})),
            ("moved".into(), json!({"url": "https://b.example/v2"})),
            ("new".into(), json!({"url": "https://d.example"})),
        ]);
        let plan = Plan::between(&current, &desired);
        assert_eq!(
            plan.changes,
            [
                Change::Delete("gone".into()),
                Change::Update("moved".into(), json!({"url": "https://b.example/v2"})),
                Change::Create("new".into(), json!({"url": "https://d.example"})),
            ]
        );
        assert_eq!(plan.unchanged, 1);
        assert_eq!(
            plan.to_string(),
            "- gone\n~ moved\n+ new\n1 to create, 1 to update, 1 to delete, 1 unchanged"
        );
        assert_eq!(Plan::between(&desired, &desired).changes, []);
    }
}
