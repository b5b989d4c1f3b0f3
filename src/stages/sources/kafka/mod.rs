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

mod config;
mod context;
mod decode;
mod source;
mod stall;
mod unreadable;

pub use config::{Format, KafkaSourceConfig};
pub use decode::decode_payload;
