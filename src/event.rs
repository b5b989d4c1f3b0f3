//! The unit of data that flows through a pipeline.
//!
//! An [`Event`] is a map of JSON-like fields plus an optional acknowledgement handle. Stages read and
//! change the fields; the handle rides along untouched so the source that emitted the event learns
//! when it has been fully handled (see [`crate::ack`]).
//!
//! An event may instead carry a **typed payload**: any `Serialize + Clone` type (the monitor's
//! check result is one). A source makes it with [`Event::from_typed`], a stage that knows the
//! type reads or changes it in place ([`Event::payload`], [`Event::payload_mut`]), and sinks
//! encode it straight from the struct ([`Event::to_json`]). A stage that asks for the fields
//! gets them, made from the payload on first use (once per event); one that changes them turns
//! the event into a plain field map for good. So a record is decoded once and converted at the
//! edges, and stages written against fields keep working.

use std::any::Any;
use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ack::{AckHandle, AckStatus};

/// The fields of an event: a JSON object.
pub type Fields = Map<String, Value>;

/// A record an event carries typed. Implemented for every `Serialize + Clone` type that is
/// `Send + Sync + Debug + 'static`: a stage author never implements it by hand.
pub trait Typed: Any + Send + Sync + fmt::Debug {
    /// The record as fields, for stages that read fields. A record that does not serialize to
    /// a JSON object is the one field `value`.
    fn to_fields(&self) -> Fields;
    /// The record encoded as JSON.
    fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    /// A copy of the record, for fan-out.
    fn clone_typed(&self) -> Box<dyn Typed>;
    /// The record as `Any`, to find its type.
    fn as_any(&self) -> &dyn Any;
    /// The record as `Any`, to change it.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The record as `Any`, to take it out.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Serialize + Clone + Send + Sync + fmt::Debug + 'static> Typed for T {
    fn to_fields(&self) -> Fields {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            Ok(other) => Fields::from_iter([("value".to_owned(), other)]),
            Err(e) => Fields::from_iter([(
                "error".to_owned(),
                Value::String(format!("cannot serialize the payload: {e}")),
            )]),
        }
    }

    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    fn clone_typed(&self) -> Box<dyn Typed> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl Clone for Box<dyn Typed> {
    fn clone(&self) -> Self {
        self.clone_typed()
    }
}

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
    /// The typed payload, while the event has one.
    typed: Option<Box<dyn Typed>>,
    /// The payload itself without a typed one; with one, its fields once asked for (a cache
    /// that every change to the typed payload clears).
    fields: OnceLock<Fields>,
    raw: Option<Bytes>,
    origin: Option<Box<Origin>>,
    ack: Option<AckHandle>,
}

impl Event {
    /// An event with these fields and no acknowledgement handle.
    pub fn new(fields: Fields) -> Self {
        Self {
            typed: None,
            fields: OnceLock::from(fields),
            raw: None,
            origin: None,
            ack: None,
        }
    }

    /// An event whose payload is `record`, kept typed.
    pub fn from_typed<T: Typed>(record: T) -> Self {
        Self {
            typed: Some(Box::new(record)),
            fields: OnceLock::new(),
            raw: None,
            origin: None,
            ack: None,
        }
    }

    /// The typed payload, if the event carries a `T` (and no stage has rewritten its fields).
    pub fn payload<T: Typed>(&self) -> Option<&T> {
        self.typed.as_deref()?.as_any().downcast_ref()
    }

    /// The typed payload, to change in place.
    pub fn payload_mut<T: Typed>(&mut self) -> Option<&mut T> {
        let record = self.typed.as_deref_mut()?.as_any_mut().downcast_mut()?;
        // The fields made from the payload so far no longer describe it.
        self.fields.take();
        Some(record)
    }

    /// A dead letter: an input that could not be decoded, kept whole with why and where from.
    pub fn dead_letter(error: impl Into<String>, raw: Bytes, origin: Option<Origin>) -> Self {
        let mut fields = Fields::new();
        let mut detail = Fields::new();
        detail.insert("error".to_owned(), Value::String(error.into()));
        fields.insert(DEAD_LETTER.to_owned(), Value::Object(detail));
        Self {
            typed: None,
            fields: OnceLock::from(fields),
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
        if self.typed.is_some() {
            return None;
        }
        self.fields().get(DEAD_LETTER)?.get("error")?.as_str()
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

    /// The event's fields (a typed payload's, made from it on first use).
    pub fn fields(&self) -> &Fields {
        self.fields.get_or_init(|| match &self.typed {
            Some(record) => record.to_fields(),
            None => Fields::new(),
        })
    }

    /// The event's fields, to change. A typed payload becomes a plain field map from here on:
    /// the fields may no longer be a valid record of its type.
    pub fn fields_mut(&mut self) -> &mut Fields {
        if let Some(record) = self.typed.take() {
            if self.fields.get().is_none() {
                let _ = self.fields.set(record.to_fields());
            }
        }
        if self.fields.get().is_none() {
            let _ = self.fields.set(Fields::new());
        }
        self.fields.get_mut().expect("set above")
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields().get(key)
    }

    /// Sets field `key`, returning its previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.fields_mut().insert(key.into(), value.into())
    }

    /// Removes field `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.fields_mut().shift_remove(key)
    }

    /// Separates the fields from the acknowledgement handle, so that a batching sink can keep
    /// the small handle until its write is durable and let the payload go.
    pub fn into_parts(mut self) -> (Fields, Option<AckHandle>) {
        self.fields_mut();
        (self.fields.into_inner().unwrap_or_default(), self.ack)
    }

    /// Like [`Event::into_parts`], with the payload as it is: the typed record itself when the
    /// event has one, otherwise its fields.
    pub fn into_payload(self) -> (Payload, Option<AckHandle>) {
        let payload = match self.typed {
            Some(record) => Payload::Typed(record),
            None => Payload::Fields(self.fields.into_inner().unwrap_or_default()),
        };
        (payload, self.ack)
    }

    /// The payload encoded as JSON: straight from the typed record when the event has one.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match &self.typed {
            Some(record) => record.to_json(),
            None => serde_json::to_vec(self.fields()),
        }
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

/// What an event carries, taken out of it by [`Event::into_payload`].
#[derive(Debug)]
pub enum Payload {
    /// A typed record.
    Typed(Box<dyn Typed>),
    /// Fields.
    Fields(Fields),
}

impl Payload {
    /// The typed record, if it is a `T`; the payload back otherwise.
    pub fn downcast<T: Typed>(self) -> Result<Box<T>, Self> {
        match self {
            Self::Typed(record) if record.as_any().is::<T>() => {
                Ok(record.into_any().downcast().expect("the type was checked"))
            }
            other => Err(other),
        }
    }
}

impl From<Fields> for Event {
    fn from(fields: Fields) -> Self {
        Self::new(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user's own record type, as a custom source would make.
    #[derive(Debug, Clone, Serialize)]
    struct Reading {
        sensor: String,
        celsius: f64,
        ok: bool,
    }

    fn reading() -> Reading {
        Reading {
            sensor: "roof".into(),
            celsius: 21.5,
            ok: true,
        }
    }

    #[test]
    fn a_typed_payload_is_seen_as_fields_and_changed_in_place() {
        let mut event = Event::from_typed(reading());
        assert_eq!(event.get("sensor"), Some(&Value::from("roof")));
        event.payload_mut::<Reading>().unwrap().ok = false;
        assert_eq!(
            event.get("ok"),
            Some(&Value::from(false)),
            "the view follows the payload"
        );
        assert_eq!(
            event.to_json().unwrap(),
            serde_json::to_vec(event.fields()).unwrap(),
            "the same bytes whichever way"
        );
        assert!(event.payload::<String>().is_none(), "another type: none");
        let copy = event.clone();
        assert_eq!(copy.payload::<Reading>().unwrap().sensor, "roof");
        let (payload, _) = event.into_payload();
        assert_eq!(payload.downcast::<Reading>().unwrap().celsius, 21.5);
    }

    #[test]
    fn changing_a_typed_payloads_fields_makes_it_a_field_map() {
        let mut event = Event::from_typed(reading());
        event.insert("note", "by a user's transform");
        assert!(event.payload::<Reading>().is_none());
        assert_eq!(event.get("sensor"), Some(&Value::from("roof")));
        assert_eq!(
            event.get("note"),
            Some(&Value::from("by a user's transform"))
        );
        match event.into_payload().0 {
            Payload::Fields(fields) => assert_eq!(fields.len(), 4),
            Payload::Typed(_) => panic!("no longer typed"),
        }
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_one_field() {
        assert_eq!(
            Event::from_typed(42_u32).fields(),
            &Fields::from_iter([("value".to_owned(), Value::from(42))])
        );
    }
}
