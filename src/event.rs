//! The unit of data that flows through a pipeline.
//!
//! An [`Event`] is a map of JSON-like fields plus an optional acknowledgement handle. Stages read and
//! change the fields; the handle rides along untouched so the source that emitted the event learns
//! when it has been fully handled (see [`crate::ack`]).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::ack::{AckHandle, AckStatus};

/// The fields of an event: a JSON object.
pub type Fields = Map<String, Value>;

/// The field that marks a dead letter: an input the source could not decode. Its value is
/// `{"error": "…"}`; the raw bytes and the [`Origin`] travel with the event. Sinks that store
/// dead letters (the `postgres` sink) recognise it.
pub const DEAD_LETTER: &str = "dead_letter";

/// Where an event came from, for sources with positions: a Kafka topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic the message was read from.
    pub topic: std::sync::Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

/// One record flowing through the pipeline.
///
/// Cloning an event (as fan-out does) clones its acknowledgement handle too: the source is told
/// only once every copy has been finished.
#[derive(Debug, Clone, Default)]
pub struct Event {
    fields: Fields,
    raw: Option<Bytes>,
    origin: Option<Box<Origin>>,
    ack: Option<AckHandle>,
}

impl Event {
    /// An event with these fields and no acknowledgement handle.
    pub fn new(fields: Fields) -> Self {
        Self {
            fields,
            raw: None,
            origin: None,
            ack: None,
        }
    }

    /// A dead letter: an input that could not be decoded, kept whole with why and where from.
    pub fn dead_letter(error: impl Into<String>, raw: Bytes, origin: Option<Origin>) -> Self {
        let mut fields = Fields::new();
        let mut detail = Fields::new();
        detail.insert("error".to_owned(), Value::String(error.into()));
        fields.insert(DEAD_LETTER.to_owned(), Value::Object(detail));
        Self {
            fields,
            raw: Some(raw),
            origin: origin.map(Box::new),
            ack: None,
        }
    }

    /// Records where the event came from.
    #[must_use]
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(Box::new(origin));
        self
    }

    /// Where the event came from, for a source that knows.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_deref()
    }

    /// The error of a dead letter, `None` for any other event.
    pub fn dead_letter_error(&self) -> Option<&str> {
        self.fields.get(DEAD_LETTER)?.get("error")?.as_str()
    }

    /// Attaches bytes that travel with the event but are not among its fields, so no sink
    /// ever writes them: a probed page's body, kept only until `regex_match` has read it.
    #[must_use]
    pub fn with_raw(mut self, raw: Bytes) -> Self {
        self.raw = Some(raw);
        self
    }

    /// The raw bytes kept with the event (a dead letter's payload).
    pub fn raw(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// Removes and returns the attached bytes.
    pub fn take_raw(&mut self) -> Option<Bytes> {
        self.raw.take()
    }

    /// Attaches the handle a source got from [`crate::ack::Acknowledger::track`].
    #[must_use]
    pub fn with_ack(mut self, ack: AckHandle) -> Self {
        self.ack = Some(ack);
        self
    }

    /// The event's fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The event's fields, to change.
    pub fn fields_mut(&mut self) -> &mut Fields {
        &mut self.fields
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// Sets field `key`, returning its previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.fields.insert(key.into(), value.into())
    }

    /// Removes field `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.fields.shift_remove(key)
    }

    /// Separates the fields from the acknowledgement handle, so that a batching sink can keep
    /// the small handle until its write is durable and let the payload go.
    pub fn into_parts(self) -> (Fields, Option<AckHandle>) {
        (self.fields, self.ack)
    }

    /// Takes the acknowledgement handle out, leaving the event untracked.
    pub fn take_ack(&mut self) -> Option<AckHandle> {
        self.ack.take()
    }

    /// A sink calls this once the event is durably stored ([`AckStatus::Delivered`]) or has
    /// definitely failed ([`AckStatus::Failed`]).
    pub fn finish(self, status: AckStatus) {
        if let Some(ack) = self.ack {
            ack.finish(status);
        }
    }

    /// A transform calls this to drop an event on purpose (a filter, say). Counts as handled.
    ///
    /// An event dropped without `finish` or `discard` (a stage crashed, or the grace period ran
    /// out) is reported to its source as failed, so nothing is ever committed on its behalf.
    pub fn discard(self) {
        self.finish(AckStatus::Delivered);
    }
}

impl From<Fields> for Event {
    fn from(fields: Fields) -> Self {
        Self::new(fields)
    }
}
