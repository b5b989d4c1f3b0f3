//! End-to-end acknowledgements: how a source learns that an event it emitted has been fully handled.
//!
//! A source that needs to know (the Kafka source, to commit offsets only once PostgreSQL has
//! committed) creates a channel with [`channel`], tracks every event it emits with
//! [`Acknowledger::track`] and attaches the returned [`AckHandle`] to the event. The handle rides
//! through the pipeline; fan-out clones it. When the last copy is finished, by a sink
//! ([`crate::Event::finish`]), a transform dropping it on purpose ([`crate::Event::discard`]), or
//! dropped unfinished (a crash, an expired grace period), the source's [`Acknowledgements`]
//! receives the outcome. Any failed or unfinished copy makes the whole event `Failed`.
//!
//! Completions come out **in order per stream** (a stream is the source's own notion, such as a
//! Kafka partition): position N is reported only after every earlier position of that stream,
//! so the source can commit "everything up to here" safely. The idea follows vector's event
//! finalizers and rust-rdkafka's `examples/at_least_once.rs`; the code is ours.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The outcome of an event, as a sink reports it and as the source learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckStatus {
    /// Durably handled (stored, published, written), or dropped on purpose by a transform.
    Delivered,
    /// Not handled: the source must not consider it done (must not commit past it).
    Failed,
}

impl AckStatus {
    fn code(self) -> u8 {
        match self {
            Self::Delivered => 0,
            Self::Failed => 1,
        }
    }

    fn from_code(code: u8) -> Self {
        if code == 0 {
            Self::Delivered
        } else {
            Self::Failed
        }
    }
}

/// What every copy of one tracked event shares. Its drop, when the last copy is gone, is the
/// moment the event is complete.
trait Finalize: Send + Sync {
    fn record(&self, status: AckStatus);
}

struct Shared<S: Clone + Send + Sync + 'static> {
    worst: AtomicU8,
    tx: mpsc::UnboundedSender<Message<S>>,
    stream: S,
    id: u64,
}

impl<S: Clone + Send + Sync + 'static> Finalize for Shared<S> {
    fn record(&self, status: AckStatus) {
        // Relaxed is enough: the final read happens in `drop`, after the last `Arc` release,
        // which orders every earlier write before it.
        self.worst.fetch_max(status.code(), Ordering::Relaxed);
    }
}

impl<S: Clone + Send + Sync + 'static> Drop for Shared<S> {
    fn drop(&mut self) {
        let status = AckStatus::from_code(*self.worst.get_mut());
        // The receiver may be gone (the source stopped caring): nothing to report to then.
        let _ = self.tx.send(Message::Done {
            stream: self.stream.clone(),
            id: self.id,
            status,
        });
    }
}

/// The acknowledgement handle carried by one copy of an event.
///
/// Dropping it without [`AckHandle::finish`] marks the event failed: only an explicit verdict
/// counts as handled.
pub struct AckHandle {
    shared: Arc<dyn Finalize>,
    finished: bool,
}

impl AckHandle {
    /// Records this copy's outcome.
    pub fn finish(mut self, status: AckStatus) {
        self.shared.record(status);
        self.finished = true;
    }
}

impl Clone for AckHandle {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            finished: false,
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.record(AckStatus::Failed);
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

enum Message<S> {
    Track {
        stream: S,
        id: u64,
        position: i64,
    },
    Done {
        stream: S,
        id: u64,
        status: AckStatus,
    },
}

/// Creates the tracking side (kept by the source's emitting loop) and the receiving side.
pub fn channel<S>() -> (Acknowledger<S>, Acknowledgements<S>)
where
    S: Clone + Eq + Hash + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Acknowledger { tx, next_id: 0 },
        Acknowledgements {
            rx,
            streams: HashMap::new(),
            ready: VecDeque::new(),
        },
    )
}

/// Hands out acknowledgement handles. Not `Clone`: tracking goes through one owner so that
/// positions are registered in emission order.
pub struct Acknowledger<S: Clone + Send + Sync + 'static> {
    tx: mpsc::UnboundedSender<Message<S>>,
    next_id: u64,
}

impl<S: Clone + Send + Sync + 'static> Acknowledger<S> {
    /// Tracks an event at `position` of `stream`. Positions of one stream are reported back in
    /// the order they were tracked.
    pub fn track(&mut self, stream: S, position: i64) -> AckHandle {
        let id = self.next_id;
        self.next_id += 1;
        // The channel is unbounded on purpose: entries are bounded by the events in flight,
        // which the pipeline's bounded channels already limit.
        let _ = self.tx.send(Message::Track {
            stream: stream.clone(),
            id,
            position,
        });
        AckHandle {
            shared: Arc::new(Shared {
                worst: AtomicU8::new(AckStatus::Delivered.code()),
                tx: self.tx.clone(),
                stream,
                id,
            }),
            finished: false,
        }
    }
}

/// One event's outcome, reported in order within its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion<S> {
    /// The stream the event was tracked in (a Kafka partition, say).
    pub stream: S,
    /// The event's position in its stream (a Kafka offset).
    pub position: i64,
    /// Whether every copy of the event was handled.
    pub status: AckStatus,
}

struct Pending {
    id: u64,
    position: i64,
    status: Option<AckStatus>,
}

/// The source's receiving side: yields completions in order per stream.
pub struct Acknowledgements<S> {
    rx: mpsc::UnboundedReceiver<Message<S>>,
    streams: HashMap<S, VecDeque<Pending>>,
    ready: VecDeque<Completion<S>>,
}

impl<S: Clone + Eq + Hash + Send + Sync + 'static> Acknowledgements<S> {
    /// The next completion. `None` once the [`Acknowledger`] and every handle are gone and all
    /// completions have been returned.
    pub async fn next(&mut self) -> Option<Completion<S>> {
        loop {
            if let Some(done) = self.ready.pop_front() {
                return Some(done);
            }
            let message = self.rx.recv().await?;
            self.apply(message);
        }
    }

    /// The next completion that is already known, without waiting.
    pub fn try_next(&mut self) -> Option<Completion<S>> {
        loop {
            if let Some(done) = self.ready.pop_front() {
                return Some(done);
            }
            let message = self.rx.try_recv().ok()?;
            self.apply(message);
        }
    }

    /// Forgets every pending position of `stream` (a revoked Kafka partition, say). Outcomes
    /// that arrive for them later are ignored.
    pub fn forget(&mut self, stream: &S) {
        // Pull in what is queued first, so a Track sent before this call is forgotten too.
        while let Ok(message) = self.rx.try_recv() {
            self.apply(message);
        }
        self.streams.remove(stream);
        self.ready.retain(|c| &c.stream != stream);
    }

    /// For a source that is stopping: waits until the [`Acknowledger`] and every handle are
    /// gone, and hands `commit` each completion that may be committed, which is, per stream,
    /// every delivered one before the stream's first failure. A failure stops its own stream
    /// only, so what other streams finish afterwards is still committed, not read again.
    pub async fn drain<E>(
        &mut self,
        mut commit: impl FnMut(Completion<S>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut failed = HashSet::new();
        while let Some(done) = self.next().await {
            if failed.contains(&done.stream) {
                continue;
            }
            if done.status == AckStatus::Failed {
                failed.insert(done.stream);
                continue;
            }
            commit(done)?;
        }
        Ok(())
    }

    /// How many tracked events have not been reported yet.
    pub fn pending(&self) -> usize {
        self.streams.values().map(VecDeque::len).sum()
    }

    fn apply(&mut self, message: Message<S>) {
        match message {
            Message::Track {
                stream,
                id,
                position,
            } => self.streams.entry(stream).or_default().push_back(Pending {
                id,
                position,
                status: None,
            }),
            Message::Done { stream, id, status } => {
                let Some(queue) = self.streams.get_mut(&stream) else {
                    return; // forgotten stream
                };
                // Ids are handed out in increasing order, so each queue is sorted by id.
                if let Ok(index) = queue.binary_search_by_key(&id, |p| p.id) {
                    queue[index].status = Some(status);
                }
                while let Some(Pending {
                    status: Some(status),
                    ..
                }) = queue.front()
                {
                    let status = *status;
                    let front = queue.pop_front().expect("front exists");
                    self.ready.push_back(Completion {
                        stream: stream.clone(),
                        position: front.position,
                        status,
                    });
                }
                if queue.is_empty() {
                    self.streams.remove(&stream);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(acks: &mut Acknowledgements<u32>) -> Vec<(u32, i64, AckStatus)> {
        std::iter::from_fn(|| acks.try_next())
            .map(|c| (c.stream, c.position, c.status))
            .collect()
    }

    #[test]
    fn completions_come_in_order_per_stream() {
        let (mut tracker, mut acks) = channel::<u32>();
        let a0 = tracker.track(0, 10);
        let a1 = tracker.track(0, 11);
        let b0 = tracker.track(1, 7);
        a1.finish(AckStatus::Delivered);
        assert!(drain(&mut acks).is_empty(), "11 must wait for 10");
        b0.finish(AckStatus::Delivered);
        assert_eq!(drain(&mut acks), vec![(1, 7, AckStatus::Delivered)]);
        a0.finish(AckStatus::Delivered);
        assert_eq!(
            drain(&mut acks),
            vec![(0, 10, AckStatus::Delivered), (0, 11, AckStatus::Delivered)]
        );
        assert_eq!(acks.pending(), 0);
    }

    #[test]
    fn every_copy_must_finish_and_any_failure_fails_the_event() {
        let (mut tracker, mut acks) = channel::<u32>();
        let original = tracker.track(0, 1);
        let copy = original.clone();
        original.finish(AckStatus::Delivered);
        assert!(drain(&mut acks).is_empty(), "a copy is still in flight");
        copy.finish(AckStatus::Failed);
        assert_eq!(drain(&mut acks), vec![(0, 1, AckStatus::Failed)]);
    }

    #[tokio::test]
    async fn a_drain_commits_up_to_each_streams_first_failure_and_no_further() {
        let (mut tracker, mut acks) = channel::<u32>();
        let a1 = tracker.track(0, 1);
        let b1 = tracker.track(1, 1);
        let a2 = tracker.track(0, 2);
        let a3 = tracker.track(0, 3);
        drop(tracker);
        a1.finish(AckStatus::Delivered);
        drop(a2); // never handled
        a3.finish(AckStatus::Delivered);
        // Reported after stream 0's failure, and committed all the same.
        b1.finish(AckStatus::Delivered);
        let mut committed = Vec::new();
        acks.drain(|c| {
            committed.push((c.stream, c.position));
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
        assert_eq!(committed, [(0, 1), (1, 1)]);
    }

    #[test]
    fn dropping_an_unfinished_handle_reports_failure() {
        let (mut tracker, mut acks) = channel::<u32>();
        drop(tracker.track(0, 1));
        assert_eq!(drain(&mut acks), vec![(0, 1, AckStatus::Failed)]);
    }

    #[test]
    fn forgotten_streams_ignore_late_outcomes() {
        let (mut tracker, mut acks) = channel::<u32>();
        let late = tracker.track(3, 1);
        acks.forget(&3);
        late.finish(AckStatus::Delivered);
        let fresh = tracker.track(3, 2);
        fresh.finish(AckStatus::Delivered);
        assert_eq!(drain(&mut acks), vec![(3, 2, AckStatus::Delivered)]);
    }

    #[tokio::test]
    async fn next_ends_when_everything_is_reported() {
        let (mut tracker, mut acks) = channel::<u32>();
        let handle = tracker.track(0, 5);
        drop(tracker);
        tokio::spawn(async move { handle.finish(AckStatus::Delivered) });
        assert_eq!(
            acks.next().await,
            Some(Completion {
                stream: 0,
                position: 5,
                status: AckStatus::Delivered
            })
        );
        assert_eq!(acks.next().await, None);
    }
}
