//! The three kinds of stage and what the executor hands each of them.
//!
//! A [`Source`] produces events into an [`Output`] until it runs dry or is asked to stop. A
//! [`Transform`] turns one event into zero or more. A [`Sink`] drains its [`Input`] and finishes
//! each event (see [`crate::ack`]). Each stage runs in its own task; the channels between them
//! are bounded, so a slow sink slows its sources down instead of growing memory.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;

/// Source, transform or sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageKind {
    /// Produces events.
    Source,
    /// Turns each event into zero or more.
    Transform,
    /// Consumes events.
    Sink,
}

impl StageKind {
    /// The top-level key of a pipeline file that holds this kind.
    pub fn section(self) -> &'static str {
        match self {
            Self::Source => "sources",
            Self::Transform => "transforms",
            Self::Sink => "sinks",
        }
    }

    /// The kind a top-level key of a pipeline file holds (`sources` → source).
    pub fn from_section(section: &str) -> Option<Self> {
        [Self::Source, Self::Transform, Self::Sink]
            .into_iter()
            .find(|kind| kind.section() == section)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Transform => "transform",
            Self::Sink => "sink",
        })
    }
}

/// The error type stages return: anything that can explain itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Produces events. Returns when it has nothing more to emit or when `cx.shutdown` fires.
#[async_trait]
pub trait Source: Send {
    /// Runs the source until it has nothing more to emit or `cx.shutdown` fires.
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), BoxError>;
}

/// Turns each event into zero or more events, synchronously. An error stops the pipeline, so
/// per-event problems that should not do that belong in the event (a field), not in an error.
///
/// An event that is not pushed to `out` must be [`Event::discard`]ed, or its source is told it
/// failed.
pub trait Transform: Send {
    /// Handles one event, pushing what it produces to `out`.
    fn transform(&mut self, event: Event, out: &mut Vec<Event>) -> Result<(), BoxError>;
}

/// Consumes events. Returns once its input is closed and drained (that is how shutdown reaches
/// it), after finishing every event it received.
#[async_trait]
pub trait Sink: Send {
    /// Runs once before any source starts, so that a sink that can never work (its topic or
    /// table does not exist) stops the pipeline before anything is produced for it. An error
    /// here fails the run. It must not wait for a service that is down: when it cannot tell
    /// yet, it returns `Ok` and lets [`Sink::run`] wait as it always does. The default checks
    /// nothing.
    async fn preflight(&mut self, _logger: &slog::Logger) -> Result<(), BoxError> {
        Ok(())
    }

    /// Runs the sink until its input is closed and everything received is finished.
    async fn run(self: Box<Self>, input: Input, cx: SinkContext) -> Result<(), BoxError>;
}

/// What a source gets from the executor.
pub struct SourceContext {
    /// The source's stage id.
    pub id: Arc<str>,
    /// Where its events go.
    pub out: Output,
    /// Fires when the pipeline is asked to stop: stop producing and return.
    pub shutdown: CancellationToken,
    /// The stage's logger, with its id and type as fields.
    pub logger: slog::Logger,
}

/// What a sink gets from the executor.
pub struct SinkContext {
    /// The sink's stage id.
    pub id: Arc<str>,
    /// Fires when the pipeline is asked to stop. Sinks keep draining their input regardless;
    /// this only tells a sink that is retrying forever that the grace period is running.
    pub shutdown: CancellationToken,
    /// How long the whole pipeline has to drain once `shutdown` fires: a sink's final flush
    /// should fit in it, so that it can report what it could not deliver before being aborted.
    pub grace: Duration,
    /// The stage's logger, with its id and type as fields.
    pub logger: slog::Logger,
}

/// The downstream side of a stage: one channel per reader. Sending waits for room in every
/// reader's channel (backpressure), and each reader gets its own copy (fan-out). Cloning it lets
/// concurrent tasks of one source send on their own.
#[derive(Clone)]
pub struct Output {
    senders: Vec<mpsc::Sender<Event>>,
    /// The stage's `pipe_stage_sent_events_total`.
    sent: Counter,
}

/// A downstream stage is gone: the pipeline is failing or stopping.
#[derive(Debug, thiserror::Error)]
#[error("a downstream stage stopped")]
pub struct DownstreamClosed;

impl Output {
    pub(crate) fn new(senders: Vec<mpsc::Sender<Event>>, sent: Counter) -> Self {
        Self { senders, sent }
    }

    /// An output read by one test, outside any pipeline: what the stage sends arrives on the
    /// receiver, `capacity` events at most before the stage waits. For unit tests of a source
    /// (see [`crate::testing`]).
    pub fn for_test(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (Self::new(vec![sender], Counter::default()), receiver)
    }

    /// Waits until every reader's channel has room for one event, and holds that room. Unlike
    /// [`Output::send`], this can be abandoned (in a `select!`) without losing an event: the
    /// event is handed over only once there is room, with [`Permit::send`].
    pub async fn reserve(&self) -> Result<Permit<'_>, DownstreamClosed> {
        let mut permit = Permit::new(&self.sent);
        for sender in &self.senders {
            permit.hold(sender.reserve().await.map_err(|_| DownstreamClosed)?);
        }
        Ok(permit)
    }

    /// Room for one event in every reader's channel if there is some now, without waiting: a
    /// source holding several events hands them over in one go after a [`Output::reserve`].
    pub fn try_reserve(&self) -> Result<Option<Permit<'_>>, DownstreamClosed> {
        let mut permit = Permit::new(&self.sent);
        for sender in &self.senders {
            match sender.try_reserve() {
                Ok(room) => permit.hold(room),
                Err(mpsc::error::TrySendError::Full(())) => return Ok(None),
                Err(mpsc::error::TrySendError::Closed(())) => return Err(DownstreamClosed),
            }
        }
        Ok(Some(permit))
    }

    /// Sends `event` to every reader, waiting while any of their channels is full.
    pub async fn send(&mut self, event: Event) -> Result<(), DownstreamClosed> {
        self.sent.inc();
        let Some((last, rest)) = self.senders.split_last() else {
            // Nobody reads this stage (validation warned): the event is done with.
            event.discard();
            return Ok(());
        };
        for sender in rest {
            sender
                .send(event.clone())
                .await
                .map_err(|_| DownstreamClosed)?;
        }
        last.send(event).await.map_err(|_| DownstreamClosed)
    }
}

/// Room for one event in every reader's channel, from [`Output::reserve`].
pub struct Permit<'a> {
    /// The first reader's room, held inline: most stages have one reader, and a `Vec` for it
    /// was an allocation for every event.
    first: Option<mpsc::Permit<'a, Event>>,
    /// The other readers' (fan-out); empty, so never allocated, with one reader.
    rest: Vec<mpsc::Permit<'a, Event>>,
    sent: &'a Counter,
}

impl<'a> Permit<'a> {
    fn new(sent: &'a Counter) -> Self {
        Self {
            first: None,
            rest: Vec::new(),
            sent,
        }
    }

    fn hold(&mut self, room: mpsc::Permit<'a, Event>) {
        if self.first.is_none() {
            self.first = Some(room);
        } else {
            self.rest.push(room);
        }
    }

    /// Hands `event` (a copy to each reader) over, without waiting.
    pub fn send(self, event: Event) {
        self.sent.inc();
        let Some(first) = self.first else {
            event.discard();
            return;
        };
        let mut rest = self.rest;
        match rest.pop() {
            None => first.send(event),
            Some(last) => {
                first.send(event.clone());
                for permit in rest {
                    permit.send(event.clone());
                }
                last.send(event);
            }
        }
    }
}

/// The upstream side of a sink: every event from all of its inputs (fan-in).
pub struct Input {
    receiver: mpsc::Receiver<Event>,
    /// The stage's `pipe_stage_received_events_total`.
    received: Counter,
}

impl Input {
    pub(crate) fn new(receiver: mpsc::Receiver<Event>, received: Counter) -> Self {
        Self { receiver, received }
    }

    /// An input fed by one test, outside any pipeline: what the test sends on the sender
    /// reaches the stage, and dropping the sender closes the input, as the executor does at
    /// shutdown. For unit tests of a sink (see [`crate::testing`]).
    pub fn for_test(capacity: usize) -> (mpsc::Sender<Event>, Self) {
        let (sender, receiver) = mpsc::channel(capacity);
        (sender, Self::new(receiver, Counter::default()))
    }

    /// The next event, or `None` once every upstream stage has finished and the channel is empty.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.receiver.recv().await;
        if event.is_some() {
            self.received.inc();
        }
        event
    }

    /// Waits for at least one event, then appends up to `limit` events that are ready to
    /// `buffer`. Returns how many were added; 0 means the input is closed and drained.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Event>, limit: usize) -> usize {
        let received = self.receiver.recv_many(buffer, limit).await;
        self.received.inc_by(received as u64);
        received
    }

    /// An event if one is ready now.
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.receiver.try_recv().ok();
        if event.is_some() {
            self.received.inc();
        }
        event
    }
}

/// Sleeps until `deadline`, or for ever without one: a `select!` branch for an optional timer
/// (a batch's timeout, a grace period), which a stage then guards with `if deadline.is_some()`.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn event(n: u64) -> Event {
        Event::new(crate::event::Fields::from_iter([(
            "n".to_owned(),
            Value::from(n),
        )]))
    }

    fn output(readers: usize, capacity: usize) -> (Output, Vec<mpsc::Receiver<Event>>) {
        let (senders, receivers) = (0..readers).map(|_| mpsc::channel(capacity)).unzip();
        (Output::new(senders, Counter::default()), receivers)
    }

    #[tokio::test]
    async fn a_permit_hands_each_reader_the_event() {
        for readers in [1, 2, 3] {
            let (out, mut receivers) = output(readers, 4);
            out.reserve().await.unwrap().send(event(1));
            out.try_reserve().unwrap().expect("room").send(event(2));
            for receiver in &mut receivers {
                let got: Vec<_> = [receiver.try_recv(), receiver.try_recv()]
                    .into_iter()
                    .map(|e| e.expect("an event").get("n").cloned())
                    .collect();
                assert_eq!(
                    got,
                    [Some(Value::from(1)), Some(Value::from(2))],
                    "{readers} readers"
                );
                assert!(receiver.try_recv().is_err(), "one copy each");
            }
            assert_eq!(out.sent.get(), 2);
        }
    }

    #[tokio::test]
    async fn try_reserve_waits_for_room_in_every_reader() {
        let (out, mut receivers) = output(2, 1);
        out.try_reserve().unwrap().expect("room").send(event(1));
        // The second reader's channel is full: no room, and the first keeps its own.
        let _ = receivers[0].try_recv();
        assert!(out.try_reserve().unwrap().is_none());
        let _ = receivers[1].try_recv();
        assert!(out.try_reserve().unwrap().is_some());
        drop(receivers);
        assert!(out.try_reserve().is_err(), "readers gone");
    }
}
