//! The unit of data that flows through a pipeline.
//!
//! An [`Event`] is a map of JSON-like fields plus an optional acknowledgement handle. Stages read and
//! change the fields; the handle rides along untouched so the source that emitted the event learns
//! when it has been fully handled (see [`crate::ack`]).
//!
//! A check result travels typed: the probe and the Kafka source make events with
//! [`Event::from_check`], the checker's transforms change the [`CheckResult`] in place
//! ([`Event::check_mut`]), and sinks encode or store it straight from the struct. A stage that
//! asks for the fields gets them, made from the check on first use (once per event); one that
//! changes them turns the event into a plain field map for good. So a check is decoded once
//! and converted at the edges, and stages written against fields keep working.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::ack::{AckHandle, AckStatus};
use crate::check::CheckResult;

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
    /// The check this event is, while it is one.
    check: Option<Box<CheckResult>>,
    /// The payload itself without a check; with one, its fields once asked for (a cache that
    /// every change to the check clears).
    fields: OnceLock<Fields>,
    raw: Option<Bytes>,
    origin: Option<Box<Origin>>,
    ack: Option<AckHandle>,
}

impl Event {
    /// An event with these fields and no acknowledgement handle.
    pub fn new(fields: Fields) -> Self {
        Self {
            check: None,
            fields: OnceLock::from(fields),
            raw: None,
            origin: None,
            ack: None,
        }
    }

    /// An event that is a check result, kept typed.
    pub fn from_check(check: CheckResult) -> Self {
        Self {
            check: Some(Box::new(check)),
            fields: OnceLock::new(),
            raw: None,
            origin: None,
            ack: None,
        }
    }

    /// The check result, if the event is one (and no stage has rewritten its fields).
    pub fn check(&self) -> Option<&CheckResult> {
        self.check.as_deref()
    }

    /// The check result, to change in place.
    pub fn check_mut(&mut self) -> Option<&mut CheckResult> {
        let check = self.check.as_deref_mut()?;
        // The fields made from the check so far no longer describe it.
        self.fields.take();
        Some(check)
    }

    /// A dead letter: an input that could not be decoded, kept whole with why and where from.
    pub fn dead_letter(error: impl Into<String>, raw: Bytes, origin: Option<Origin>) -> Self {
        let mut fields = Fields::new();
        let mut detail = Fields::new();
        detail.insert("error".to_owned(), Value::String(error.into()));
        fields.insert(DEAD_LETTER.to_owned(), Value::Object(detail));
        Self {
            check: None,
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
        if self.check.is_some() {
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

    /// The event's fields (a check's, made from it on first use).
    pub fn fields(&self) -> &Fields {
        self.fields.get_or_init(|| match &self.check {
            Some(check) => check.to_fields(),
            None => Fields::new(),
        })
    }

    /// The event's fields, to change. A check becomes a plain field map from here on: the
    /// fields may no longer be a valid check.
    pub fn fields_mut(&mut self) -> &mut Fields {
        if let Some(check) = self.check.take() {
            if self.fields.get().is_none() {
                let _ = self.fields.set(check.to_fields());
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

    /// Like [`Event::into_parts`], with the payload as it is: the check itself when the event
    /// is one, otherwise its fields.
    pub fn into_payload(self) -> (Payload, Option<AckHandle>) {
        let payload = match self.check {
            Some(check) => Payload::Check(check),
            None => Payload::Fields(self.fields.into_inner().unwrap_or_default()),
        };
        (payload, self.ack)
    }

    /// The payload encoded as JSON: straight from the check when the event is one.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match &self.check {
            Some(check) => serde_json::to_vec(check),
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
    /// A check result, typed.
    Check(Box<CheckResult>),
    /// Fields of any other kind.
    Fields(Fields),
}

impl From<Fields> for Event {
    fn from(fields: Fields) -> Self {
        Self::new(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> CheckResult {
        let json = serde_json::json!({
            "schema_version": 1, "check_id": "8a036c86-1f8f-5289-af3e-1f909db5869c",
            "target": "site", "url": "https://example.com/", "method": "GET",
            "scheduled_at": "2026-11-29T08:00:40.000Z", "started_at": "2026-11-29T08:00:40.001Z",
            "response_time_ms": 12.5,
            "timings_ms": {"dns": null, "connect": 1.0, "tls": null, "first_byte": 2.0, "transfer": 0.5},
            "status_code": 200, "error": null, "regex": null, "regex_matched": null,
            "latency_class": null, "up": true, "body_bytes": 2, "remote_addr": "127.0.0.1:80",
            "http_version": "HTTP/1.1"
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_check_is_seen_as_fields_and_changed_in_place() {
        let mut event = Event::from_check(check());
        assert_eq!(event.get("target"), Some(&Value::from("site")));
        event.check_mut().unwrap().up = false;
        assert_eq!(
            event.get("up"),
            Some(&Value::from(false)),
            "the view follows the check"
        );
        assert_eq!(
            event.to_json().unwrap(),
            serde_json::to_vec(event.fields()).unwrap(),
            "the same bytes whichever way"
        );
    }

    #[test]
    fn changing_a_checks_fields_makes_it_a_field_map() {
        let mut event = Event::from_check(check());
        event.insert("note", "by a user's transform");
        assert!(event.check().is_none());
        assert_eq!(event.get("target"), Some(&Value::from("site")));
        assert_eq!(
            event.get("note"),
            Some(&Value::from("by a user's transform"))
        );
        match event.into_payload().0 {
            Payload::Fields(fields) => assert_eq!(fields.len(), 19),
            Payload::Check(_) => panic!("no longer a check"),
        }
    }
}
