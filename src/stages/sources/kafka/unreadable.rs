//! A record batch librdkafka cannot read: which errors say so, and where the batch is, found by
//! reading each partition once more with a consumer of our own.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::stage::BoxError;

/// Is this consumer error one that says a batch cannot be read? librdkafka retries fetches
/// and reconnections itself; these codes mean a batch it fetched cannot be decompressed or
/// parsed, so the same batch would come back with the same error for ever.
pub(super) fn is_unreadable(error: &KafkaError) -> bool {
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
pub(super) fn fatal(code: RDKafkaErrorCode, instance_id: Option<&str>) -> BoxError {
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
pub(super) struct Unreadable {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// How long the probe reads one partition before deeming it readable.
pub(super) const PROBE_PER_PARTITION: std::time::Duration = std::time::Duration::from_secs(5);

/// Finds which of `positions` (partitions with the next offset to read, or `Offset::Invalid`
/// for "from the last commit") holds a batch that fails with a permanent error, by reading
/// each once with a consumer of our own that joins no group. Blocking.
pub(super) fn locate_unreadable(
    config: &ClientConfig,
    positions: &TopicPartitionList,
) -> Option<Unreadable> {
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
