//! The source's loop: messages decoded and tracked, offsets stored once the sinks are done,
//! pauses while the pipeline is full, revocations settled, and stalls judged.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientConfig;
use slog::{debug, error, info, warn};

use super::config::*;
use super::context::*;
use super::decode::*;
use super::stall;
use super::unreadable::*;
use crate::ack::{self, AckStatus, Acknowledgements, Completion};
use crate::config::duration;
use crate::event::{Event, Origin};
use crate::monitor::kafka::{self};
use crate::stage::{BoxError, Source, SourceContext};
use crate::throttle::RepeatedWarning;

pub(super) struct KafkaSource {
    pub(super) consumer: StreamConsumer<KafkaContext>,
    pub(super) probe_config: ClientConfig,
    pub(super) instance_id: Option<String>,
    pub(super) topics: Vec<String>,
    pub(super) format: Format,
    pub(super) max_message_bytes: usize,
    pub(super) stall_timeout: Duration,
}

/// Most messages taken from librdkafka's queue in one turn of the source's loop.
const READ_AHEAD: usize = 256;

/// How often the source looks at its partitions' progress: the statistics' own interval.
pub(super) const STALL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The broker's answers about suspects: each with the position it was asked at and the
/// partition's first and end offsets.
pub(super) type Answers = Vec<(stall::Partition, i64, (i64, i64))>;

impl KafkaSource {
    /// Turns a message into an event: the decoded check, or a dead letter.
    fn decode(&self, message: &BorrowedMessage<'_>) -> Event {
        let origin = Origin {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
        };
        let payload = message.payload().unwrap_or_default();
        match decode_payload(payload, self.format, self.max_message_bytes) {
            Ok(event) => event.with_origin(origin),
            Err(error) => Event::dead_letter(error, Bytes::copy_from_slice(payload), Some(origin)),
        }
    }

    fn is_paused(&self) -> bool {
        self.consumer.context().paused.load(Ordering::Relaxed)
    }

    /// Pauses or resumes the whole assignment. Partitions assigned later follow (see
    /// [`KafkaContext::paused`]).
    fn set_paused(&self, pause: bool, logger: &slog::Logger) {
        self.consumer
            .context()
            .paused
            .store(pause, Ordering::Relaxed);
        let result = self.consumer.assignment().and_then(|assignment| {
            if pause {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        match result {
            Ok(()) if pause => debug!(logger, "partitions paused: the pipeline is full"),
            Ok(()) => debug!(logger, "partitions resumed"),
            Err(e) => warn!(logger, "cannot pause or resume partitions"; "error" => %e),
        }
    }

    /// Nothing is held back from the pipeline any more: a paused assignment resumes.
    fn drained(&self, blocked_since: &mut Option<tokio::time::Instant>, logger: &slog::Logger) {
        *blocked_since = None;
        if self.is_paused() {
            self.set_paused(false, logger);
        }
    }

    /// Settles the revocations librdkafka ran inside the polls since the last call: revoked
    /// partitions' positions are forgotten and the messages we still hold of them are dropped
    /// (their offsets can no longer be stored; the new owner re-reads from the last commit).
    /// If that leaves nothing held, the source resumes: paused, with nothing to hand over, it
    /// would never read again.
    ///
    /// It must run before a message returned by a poll is tracked. One wait for a message can
    /// span a whole rebalance, revoke and then assign, and under the eager protocol a member
    /// gets back partitions it just lost: that first message belongs to the new assignment, and
    /// settling the revocation after tracking it would forget it, so the next message's offset
    /// would be committed over it.
    fn absorb_revocations(
        &self,
        pending: &mut VecDeque<Event>,
        blocked_since: &mut Option<tokio::time::Instant>,
        acks: &mut Acknowledgements<Partition>,
        logger: &slog::Logger,
    ) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("not poisoned"),
        );
        if revoked.is_empty() {
            return;
        }
        pending.retain(|event| {
            event.origin().is_none_or(|o| {
                !revoked
                    .iter()
                    .any(|(t, p)| **t == *o.topic && *p == o.partition)
            })
        });
        for partition in &revoked {
            acks.forget(partition);
        }
        if pending.is_empty() {
            self.drained(blocked_since, logger);
        }
    }

    /// The error that stops the source on a batch librdkafka cannot read, naming where it is.
    async fn unreadable(&self, error: &KafkaError, logger: &slog::Logger) -> BoxError {
        error!(logger, "a record batch cannot be read; finding where it is"; "error" => %error);
        let positions = self.consumer.position();
        let config = self.probe_config.clone();
        let found = match positions {
            Ok(positions) => {
                tokio::task::spawn_blocking(move || locate_unreadable(&config, &positions))
                    .await
                    .ok()
                    .flatten()
            }
            Err(_) => None,
        };
        let cause = match error {
            KafkaError::MessageConsumption(code) => code.to_string(),
            other => other.to_string(),
        };
        let message = match found {
            Some(Unreadable {
                topic,
                partition,
                offset,
            }) => format!(
                "cannot read topic `{topic}` partition {partition} at offset {offset}: {cause}; \
                 the record batch there cannot be decompressed or parsed (a codec this build lacks, or a \
                 corrupt batch), so no message at or after it in that partition can be read; offsets \
                 before it are committed"
            ),
            None => format!(
                "cannot read a record batch: {cause}; the partition it is in could not be found again, \
                 so it may have been a passing fault; offsets before it are committed"
            ),
        };
        message.into()
    }

    /// Every few seconds: restarts the watchdog's clocks while the pipeline holds the source
    /// back, else asks the broker about suspects (one question at a time, off the loop), and
    /// judges the stalls known.
    fn watch_stalls(
        &self,
        held_back: bool,
        probe: &mut Option<tokio::task::JoinHandle<Answers>>,
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let stalls = self.update_watchdog(|watchdog, now| {
            if held_back {
                watchdog.restart(now);
            } else if probe.is_none() {
                let suspects = watchdog.suspects(now);
                if !suspects.is_empty() {
                    let config = self.probe_config.clone();
                    *probe = Some(tokio::task::spawn_blocking(move || {
                        ask_ends(&config, suspects)
                    }));
                }
            }
        });
        self.judge_stalls(&stalls, warning, logger)
    }

    /// Takes the broker's answers about suspects in, and judges the stalls known.
    fn answered(
        &self,
        answers: Answers,
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let stalls = self.update_watchdog(|watchdog, now| {
            for (partition, position, offsets) in &answers {
                watchdog.answered(partition, *position, *offsets, now);
            }
        });
        self.judge_stalls(&stalls, warning, logger)
    }

    /// Changes the watchdog under its lock, and returns the stalls it then knows.
    fn update_watchdog(
        &self,
        change: impl FnOnce(&mut stall::Watchdog, std::time::Instant),
    ) -> Vec<stall::Stall> {
        let now = std::time::Instant::now();
        let mut watchdog = self
            .consumer
            .context()
            .watchdog
            .lock()
            .expect("not poisoned");
        change(&mut watchdog, now);
        watchdog.stalled(now)
    }

    /// Stalled partitions make the stage not ready at once, are logged (at most every 30 s),
    /// and stop the source once one has lasted `stall_timeout`.
    fn judge_stalls(
        &self,
        stalls: &[stall::Stall],
        warning: &mut RepeatedWarning,
        logger: &slog::Logger,
    ) -> Result<(), BoxError> {
        let context = self.consumer.context();
        let now = std::time::Instant::now();
        let Some(worst) = stalls.first() else {
            context.health.resolved("partition_stalled");
            if let Some(lasted) = warning.cleared(now) {
                info!(logger, "stalled partitions are fetched again"; "lasted" => duration::format_approx(lasted));
            }
            return Ok(());
        };
        let listed: Vec<String> = stalls.iter().map(ToString::to_string).collect();
        let cause = match context.last_error.lock().expect("not poisoned").as_deref() {
            Some(error) => format!("; the last error librdkafka reported: {error}"),
            None => String::new(),
        };
        let message = format!("{}{cause}", listed.join("; "));
        context
            .health
            .problem("partition_stalled", message.clone(), Duration::ZERO);
        if worst.lasted >= self.stall_timeout {
            return Err(format!(
                "{message}; stopping after stall_timeout ({}); offsets before the stall are committed",
                duration::format(self.stall_timeout)
            )
            .into());
        }
        if let Some(report) = warning.occurred(now) {
            error!(logger, "partitions stalled: messages wait in them and no fetch brings them";
                   "stalls" => &message, "occurrences" => report.occurrences,
                   "stopping_in" => duration::format_approx(self.stall_timeout.saturating_sub(worst.lasted)));
        }
        Ok(())
    }

    /// Stores the offset after a completed message, so it is committed.
    fn complete(&self, done: Completion<Partition>, logger: &slog::Logger) -> Result<(), BoxError> {
        let (topic, partition) = &done.stream;
        if done.status == AckStatus::Failed {
            // Never commit past an event that was not handled: stop, so that a restart re-reads
            // it from the last committed offset.
            return Err(format!(
                "the message at {topic}/{partition} offset {} was not handled by every sink; stopping without committing past it",
                done.position
            )
            .into());
        }
        // store_offset takes the message's own offset and stores the next one.
        match self.consumer.store_offset(topic, *partition, done.position) {
            Ok(()) => Ok(()),
            // The partition was revoked meanwhile: its new owner re-reads from the last commit.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                debug!(logger, "offset not stored: partition no longer assigned"; "topic" => &**topic, "partition" => partition);
                Ok(())
            }
            Err(e) => Err(format!("cannot store the offset of {topic}/{partition}: {e}").into()),
        }
    }
}

/// `first` and the completions known now, with each run of delivered ones in a partition
/// folded into its last: storing that offset stores the run (one `store_offset` instead of one
/// a message). Order within a partition is kept, so a failure still comes after the delivered
/// completions before it.
fn coalesced(
    first: Completion<Partition>,
    acks: &mut Acknowledgements<Partition>,
) -> impl Iterator<Item = Completion<Partition>> {
    let mut done = vec![first];
    while let Some(next) = acks.try_next() {
        let last_of_its_partition = done.iter_mut().rev().find(|d| d.stream == next.stream);
        match last_of_its_partition {
            Some(last)
                if last.status == AckStatus::Delivered && next.status == AckStatus::Delivered =>
            {
                *last = next;
            }
            _ => done.push(next),
        }
    }
    done.into_iter()
}

/// Asks the broker for the first and end offsets of each suspect, with a consumer of our own
/// that joins no group (a ListOffsets request, not a fetch). Blocking. It stops at the first
/// partition the broker does not answer for: a broker that cannot be reached is not a stall.
pub(super) fn ask_ends(config: &ClientConfig, suspects: Vec<(stall::Partition, i64)>) -> Answers {
    let mut config = config.clone();
    // Never polled: nothing may pile up in its queues.
    config.set("enable.auto.commit", "false");
    config.set("statistics.interval.ms", "0");
    let Ok(probe) = config.create::<BaseConsumer>() else {
        return Vec::new();
    };
    let mut answers = Vec::new();
    for (partition, position) in suspects {
        match probe.fetch_watermarks(&partition.0, partition.1, PROBE_PER_PARTITION) {
            Ok(offsets) => answers.push((partition, position, offsets)),
            Err(_) => break,
        }
    }
    answers
}

/// The probe's answers once it has them; never, while no probe runs.
pub(super) async fn probe_answers(probe: &mut Option<tokio::task::JoinHandle<Answers>>) -> Answers {
    let Some(handle) = probe else {
        return std::future::pending().await;
    };
    let answers = handle.await.unwrap_or_default();
    *probe = None;
    answers
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), BoxError> {
        let SourceContext {
            out,
            shutdown,
            logger,
            ..
        } = cx;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        let (mut tracker, mut acks) = ack::channel::<Partition>();
        let mut pending: VecDeque<Event> = VecDeque::new();
        // When the pipeline started refusing the message at the front of `pending`.
        let mut blocked_since: Option<tokio::time::Instant> = None;
        let context = self.consumer.context();
        let mut consumer_errors = RepeatedWarning::default();
        let mut stall_check = tokio::time::interval(STALL_CHECK_EVERY);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = None;
        let mut stall_warning = RepeatedWarning::default();

        // An error that stops the source, once what was read before it is handed over.
        let mut stopping: Option<KafkaError> = None;

        let result: Result<(), BoxError> = 'read: loop {
            self.absorb_revocations(&mut pending, &mut blocked_since, &mut acks, &logger);
            if pending.is_empty() {
                match stopping.take() {
                    Some(KafkaError::MessageConsumptionFatal(code)) => {
                        break Err(fatal(code, self.instance_id.as_deref()));
                    }
                    Some(e) => break Err(self.unreadable(&e, &logger).await),
                    None => {}
                }
            }
            let paused = self.is_paused();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                () = context.rebalanced.notified() => {}
                Some(done) = acks.next() => {
                    if let Err(e) = coalesced(done, &mut acks).try_for_each(|done| self.complete(done, &logger)) {
                        break Err(e);
                    }
                }
                permit = out.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else { break Err(crate::stage::DownstreamClosed.into()) };
                    permit.send(pending.pop_front().expect("not empty"));
                    // What else the pipeline has room for goes now, not one turn of this loop
                    // each.
                    loop {
                        match out.try_reserve() {
                            Ok(Some(permit)) if !pending.is_empty() => {
                                permit.send(pending.pop_front().expect("not empty"));
                            }
                            Ok(_) => break,
                            Err(closed) => break 'read Err(closed.into()),
                        }
                    }
                    if pending.is_empty() {
                        self.drained(&mut blocked_since, &logger);
                    }
                }
                () = crate::stage::sleep_until(blocked_since.map(|t| t + PAUSE_AFTER)), if blocked_since.is_some() && !paused => {
                    self.set_paused(true, &logger);
                }
                _ = stall_check.tick() => {
                    let held_back = paused || !pending.is_empty();
                    if let Err(e) = self.watch_stalls(held_back, &mut probe, &mut stall_warning, &logger) {
                        break Err(e);
                    }
                }
                answers = probe_answers(&mut probe) => {
                    if let Err(e) = self.answered(answers, &mut stall_warning, &logger) {
                        break Err(e);
                    }
                }
                // Taken only when the pipeline has room, or while paused: polling then returns
                // no messages but serves the group, which is what keeps us in it.
                message = self.consumer.recv(), if (pending.is_empty() || paused) && stopping.is_none() => {
                    // Every message already fetched is taken in this turn (up to READ_AHEAD):
                    // a turn of this loop per message cost more than decoding it.
                    let mut next = Some(message);
                    while let Some(message) = next.take() {
                        match message {
                            Ok(message) => {
                                if let Some(lasted) = consumer_errors.cleared(std::time::Instant::now()) {
                                    info!(logger, "consuming again after consumer errors"; "lasted" => duration::format_approx(lasted));
                                }
                                // Settled before tracking: see absorb_revocations.
                                self.absorb_revocations(&mut pending, &mut blocked_since, &mut acks, &logger);
                                let event = self.decode(&message);
                                if let Some(error) = event.dead_letter_error() {
                                    warn!(logger, "undecodable message: dead letter"; "topic" => message.topic(),
                                          "partition" => message.partition(), "offset" => message.offset(), "error" => error);
                                }
                                let stream = (Arc::from(message.topic()), message.partition());
                                pending.push_back(event.with_ack(tracker.track(stream, message.offset())));
                                blocked_since.get_or_insert_with(tokio::time::Instant::now);
                                if pending.len() < READ_AHEAD {
                                    next = self.consumer.recv().now_or_never();
                                }
                            }
                            // The messages read before it are handed over first: their
                            // offsets are committed, and the stop names the first one after.
                            Err(e) if is_unreadable(&e) || matches!(e, KafkaError::MessageConsumptionFatal(_)) => {
                                stopping = Some(e);
                            }
                            Err(e) => {
                                let text = kafka::redact(&e.to_string(), &self.consumer.context().log.options);
                                *context.last_error.lock().expect("not poisoned") = Some(text);
                                if let Some(report) = consumer_errors.occurred(std::time::Instant::now()) {
                                    warn!(logger, "consumer error; retrying"; "error" => %e,
                                          "lasted" => duration::format_approx(report.lasted), "occurrences" => report.occurrences);
                                }
                            }
                        }
                    }
                }
            }
        };

        // Stop producing, and let the sinks finish what they have: their completions still
        // advance the offsets. Events never handed over fail as they are dropped, last in their
        // partition, and so does anything a sink could not finish within the grace period;
        // nothing is stored at or past a partition's first failure, and the next run reads from
        // there.
        drop(out);
        drop(pending);
        drop(tracker);
        acks.drain(|done| self.complete(done, &logger)).await?;
        if let Err(e) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            // Nothing stored since the last auto-commit is not an error.
            if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                error!(logger, "final offset commit failed; the next run re-reads from the previous commit"; "error" => %e);
            }
        }
        info!(logger, "kafka source stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_of_delivered_offsets_fold_into_their_last_and_a_failure_stays_behind_them() {
        let (mut tracker, mut acks) = ack::channel::<Partition>();
        let (a, b): (Partition, Partition) = ((Arc::from("t"), 0), (Arc::from("t"), 1));
        let outcomes = [
            (&a, 10, AckStatus::Delivered),
            (&b, 20, AckStatus::Delivered),
            (&a, 11, AckStatus::Delivered),
            (&a, 12, AckStatus::Delivered),
            (&b, 21, AckStatus::Failed),
            (&b, 22, AckStatus::Delivered),
        ];
        let handles: Vec<_> = outcomes
            .iter()
            .map(|(p, offset, _)| tracker.track((*p).clone(), *offset))
            .collect();
        for (handle, (_, _, status)) in handles.into_iter().zip(outcomes) {
            handle.finish(status);
        }
        let first = acks.next().await.expect("a completion");
        let done: Vec<(i32, i64, AckStatus)> = coalesced(first, &mut acks)
            .map(|c| (c.stream.1, c.position, c.status))
            .collect();
        assert_eq!(
            done,
            [
                (0, 12, AckStatus::Delivered),
                (1, 20, AckStatus::Delivered),
                (1, 21, AckStatus::Failed),
                (1, 22, AckStatus::Delivered),
            ]
        );
    }
}
