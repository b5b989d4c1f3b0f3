//! `targets_topic`: the probe as a member of a fleet. The membership thread
//! ([`crate::monitor::fleet`]) hands this owner its partitions' records; the owner turns them
//! into targets (validated as a pipeline file's are) and into schedule commands, and on a
//! hand-over finds where each gained target goes on from, and holds a revocation until the
//! lost targets' results are in Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use slog::{error, info, warn};
use tokio::sync::{mpsc, oneshot};

use crate::ack::{self, AckHandle, Acknowledgements, Acknowledger};
use crate::config::interpolate;
use crate::monitor::fleet::{self, Owner, Record};
use crate::monitor::schedule::{self, Clock, Command, Entry};
use crate::monitor::targets_topic::TopicAccess;
use crate::registry::BuildContext;

use super::config::{HttpProbeConfig, StatusSet, TargetConfig};
use super::metrics::ProbeMetrics;
use super::target::{resolve_target, Target};

/// A schedule command for the probe's targets.
pub(super) type TargetCommand = Command<Arc<Target>>;

/// How long a revocation waits for the lost targets' checks to end and their results to be
/// acknowledged by the sink, beyond the longest check timeout.
const DELIVERY_GRACE: Duration = Duration::from_secs(30);

/// Results of the probe's targets not yet acknowledged, per target: a revocation waits for
/// those of the targets it takes away.
#[derive(Default)]
pub(super) struct Deliveries {
    pending: Mutex<HashMap<Arc<str>, usize>>,
    changed: Condvar,
}

impl Deliveries {
    /// Tracks a result of `name` about to be emitted.
    pub(super) fn track(
        &self,
        tracker: &mut Acknowledger<Arc<str>>,
        name: &Arc<str>,
        slot: u64,
    ) -> AckHandle {
        *self
            .pending
            .lock()
            .expect("not poisoned")
            .entry(Arc::clone(name))
            .or_default() += 1;
        tracker.track(Arc::clone(name), slot as i64)
    }

    /// Counts acknowledgements down until the probe's tracker and every result are gone.
    pub(super) async fn follow(self: Arc<Self>, mut acks: Acknowledgements<Arc<str>>) {
        while let Some(done) = acks.next().await {
            let mut pending = self.pending.lock().expect("not poisoned");
            if let Some(count) = pending.get_mut(&done.stream) {
                *count -= 1;
                if *count == 0 {
                    pending.remove(&done.stream);
                }
            }
            drop(pending);
            self.changed.notify_all();
        }
    }

    /// Waits until no result of `names` is pending, or `deadline`; the names still pending.
    fn wait(&self, names: &[Arc<str>], deadline: Instant) -> usize {
        let mut pending = self.pending.lock().expect("not poisoned");
        loop {
            let left = names.iter().filter(|n| pending.contains_key(*n)).count();
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            pending = self
                .changed
                .wait_timeout(pending, deadline - now)
                .expect("not poisoned")
                .0;
        }
    }
}

/// Where the hand-over lookup reads.
pub(super) struct Handover {
    pub(super) results: TopicAccess,
    pub(super) lookback: Duration,
    /// How far back owed slots are still checked.
    pub(super) catch_up: Duration,
    /// How long the group takes to notice a dead member: its last slots are that much older.
    pub(super) session_timeout: Duration,
}

impl Handover {
    /// How far back the results topic is read for targets whose longest interval is
    /// `longest`. Every last slot that decides where a target goes on from is at most the
    /// catch-up bound and one interval old; a dead member's are older by the session timeout,
    /// and without them its unchecked slots could not be counted. A fleet publishes about a
    /// thousand results a second per thousand targets at 1 s, so reading no further than that
    /// keeps a hand-over's lookup short.
    pub(super) fn window(&self, longest: Duration) -> Duration {
        (self.catch_up.max(self.session_timeout) + longest + Duration::from_secs(1))
            .min(self.lookback)
    }
}

/// What a partition holds for this checker.
pub(super) enum Held {
    /// Being read from its start: the targets seen so far, started once it is read to its end.
    CatchingUp(BTreeMap<String, Arc<Target>>),
    /// Read to its end: its targets run, by name.
    Live(HashSet<String>),
}

/// The probe's side of its fleet membership.
pub(super) struct TargetsOwner {
    pub(super) stage: Arc<HttpProbeConfig>,
    pub(super) default_status: Option<StatusSet>,
    pub(super) cx: BuildContext,
    pub(super) topic: String,
    pub(super) commands: mpsc::UnboundedSender<TargetCommand>,
    pub(super) deliveries: Arc<Deliveries>,
    pub(super) handover: Option<Handover>,
    pub(super) region: Option<String>,
    pub(super) clock: Clock,
    pub(super) metrics: Arc<ProbeMetrics>,
    /// Names listed in the pipeline file: the topic cannot take them over.
    pub(super) fixed: HashSet<String>,
    /// The longest timeout of a target this checker runs: how long a revocation may wait.
    pub(super) longest_timeout: Duration,
    pub(super) held: HashMap<i32, Held>,
}

impl TargetsOwner {
    /// A record's target, validated; errors name the record and never echo a setting.
    fn resolve(&self, record: &Record, value: &serde_json::Value) -> Result<Arc<Target>, String> {
        let mut document: serde_norway::Value =
            serde_norway::to_value(value).map_err(|e| format!("not a target: {e}"))?;
        let mut secrets = Vec::new();
        let lookup = |var: &str| std::env::var(var).ok();
        if let Some(e) = interpolate::interpolate(&mut document, "", &lookup, &mut secrets).first()
        {
            return Err(format!("{}: {}", e.path, e.message));
        }
        let mut config: TargetConfig = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            format!(
                "{path}: {}",
                interpolate::redact(&e.into_inner().to_string(), &secrets)
            )
        })?;
        match &config.name {
            Some(name) if *name != record.name => {
                return Err(format!(
                    "its `name` is not its key `{}`: publish it with `pipe targets apply`",
                    crate::monitor::secrets::redact_url(&record.name)
                ))
            }
            Some(_) => {}
            None => config.name = Some(record.name.clone()),
        }
        let mut target =
            resolve_target(&self.stage, config, self.default_status.as_ref(), &self.cx).map_err(
                |(_, failures)| {
                    failures
                        .into_iter()
                        .map(|(field, message)| format!("{field}: {message}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            )?;
        target.gauges = self
            .metrics
            .target(&crate::monitor::secrets::redact_url(&target.name));
        Ok(Arc::new(target))
    }

    /// Sets `pipe_probe_targets`: the file's targets and those of the partitions read.
    fn recount(&self) {
        let live: usize = self
            .held
            .values()
            .map(|held| match held {
                Held::Live(names) => names.len(),
                Held::CatchingUp(_) => 0,
            })
            .sum();
        self.metrics.targets.set((self.fixed.len() + live) as i64);
    }

    fn upsert(&mut self, target: Arc<Target>, first_ms: Option<u64>) {
        self.longest_timeout = self.longest_timeout.max(target.timeout);
        let entry = Entry {
            interval: target.interval,
            offset: schedule::offset(&target.name, target.interval),
        };
        // The schedule is gone only when the probe is stopping.
        let _ = self.commands.send(Command::Upsert {
            name: Arc::from(target.name.as_str()),
            entry,
            first_ms,
            item: target,
        });
    }

    /// Where each of `targets` goes on from: the slot after its last published one, if that
    /// is no older than the catch-up bound (it and the slots after it are then owed, and
    /// checked at once, late), else the first slot inside the bound; the slots skipped are
    /// gaps, counted. A target with no published slot in the window read starts at its next
    /// slot.
    fn first_slots(&self, targets: &BTreeMap<String, Arc<Target>>) -> HashMap<String, u64> {
        let Some(handover) = &self.handover else {
            return HashMap::new();
        };
        let logger = &self.cx.logger;
        let started = Instant::now();
        let names: HashSet<String> = targets.keys().cloned().collect();
        let longest = targets
            .values()
            .map(|t| t.interval)
            .max()
            .unwrap_or_default();
        let window = handover.window(longest);
        let since = self.clock.now() - window;
        let found = match fleet::last_slots(
            &handover.results,
            self.region.as_deref(),
            &names,
            since,
        ) {
            Ok(found) => found,
            Err(e) => {
                warn!(logger, "cannot read the last published slots; the targets start at their next slot";
                      "error" => e.to_string(), "targets" => names.len());
                return HashMap::new();
            }
        };
        let earliest = self
            .clock
            .now_ms()
            .saturating_sub(handover.catch_up.as_millis() as u64);
        let mut first = HashMap::new();
        let mut gaps = 0;
        for (name, &last) in &found.slots {
            let target = &targets[name];
            let interval = target.interval.as_millis().max(1) as u64;
            let after_last = last + interval;
            let from = if after_last >= earliest {
                after_last
            } else {
                schedule::next_slot(
                    earliest,
                    target.interval,
                    schedule::offset(name, target.interval),
                )
            };
            gaps += (from - after_last) / interval;
            first.insert(name.clone(), from);
        }
        self.metrics.handover_gap_slots.inc_by(gaps);
        info!(logger, "targets taken over";
              "targets" => targets.len(), "with_published_slots" => found.slots.len(),
              "results_read" => found.read, "gap_slots" => gaps,
              "lookup_ms" => started.elapsed().as_millis() as u64);
        first
    }
}

impl Owner for TargetsOwner {
    fn assigned(&mut self, partitions: &[i32]) {
        for &partition in partitions {
            self.held
                .insert(partition, Held::CatchingUp(BTreeMap::new()));
        }
    }

    fn record(&mut self, record: Record) {
        let logger = self.cx.logger.clone();
        let shown = crate::monitor::secrets::redact_url(&record.name);
        if self.fixed.contains(&record.name) {
            error!(logger, "targets topic record skipped: the pipeline file has a target of this name";
                   "topic" => &self.topic, "partition" => record.partition,
                   "offset" => record.offset, "target" => shown);
            return;
        }
        let resolved = match &record.value {
            None => None,
            Some(value) => match self.resolve(&record, value) {
                Ok(target) => Some(target),
                Err(message) => {
                    // What runs of it (an earlier version) keeps running: nothing accepted is lost.
                    self.metrics.target_errors.inc();
                    error!(logger, "targets topic record skipped: {message}";
                           "topic" => &self.topic, "partition" => record.partition,
                           "offset" => record.offset, "target" => shown);
                    return;
                }
            },
        };
        let name = record.name;
        match self.held.get_mut(&record.partition) {
            Some(Held::CatchingUp(seen)) => match resolved {
                Some(target) => {
                    seen.insert(name, target);
                }
                None => {
                    seen.remove(&name);
                }
            },
            Some(Held::Live(names)) => match resolved {
                Some(target) => {
                    names.insert(name);
                    self.upsert(target, None);
                }
                None => {
                    if names.remove(&name) {
                        let _ = self.commands.send(Command::Remove {
                            name: Arc::from(name.as_str()),
                            done: None,
                        });
                    }
                }
            },
            None => {}
        }
        self.recount();
    }

    fn caught_up(&mut self, partition: i32) {
        let Some(Held::CatchingUp(targets)) = self.held.remove(&partition) else {
            return;
        };
        let first = self.first_slots(&targets);
        let names = targets.keys().cloned().collect();
        for (name, target) in targets {
            self.upsert(target, first.get(&name).copied());
        }
        self.held.insert(partition, Held::Live(names));
        self.recount();
    }

    fn revoked(&mut self, partitions: &[i32]) {
        let started = Instant::now();
        let mut names: Vec<Arc<str>> = Vec::new();
        for partition in partitions {
            if let Some(Held::Live(held)) = self.held.remove(partition) {
                names.extend(held.iter().map(|n| Arc::from(n.as_str())));
            }
        }
        self.recount();
        if names.is_empty() {
            return;
        }
        let mut ended = Vec::with_capacity(names.len());
        for name in &names {
            let (done, wait) = oneshot::channel();
            let _ = self.commands.send(Command::Remove {
                name: Arc::clone(name),
                done: Some(done),
            });
            ended.push(wait);
        }
        // A dropped answer means the schedule has stopped: nothing of it runs any more.
        for wait in ended {
            let _ = wait.blocking_recv();
        }
        let deadline = Instant::now() + self.longest_timeout + DELIVERY_GRACE;
        let undelivered = self.deliveries.wait(&names, deadline);
        if undelivered > 0 {
            warn!(self.cx.logger, "targets handed over with results not yet acknowledged; their new owner may check those slots again";
                  "targets" => undelivered);
        }
        info!(self.cx.logger, "targets given up";
              "targets" => names.len(), "ms" => started.elapsed().as_millis() as u64);
    }
}

/// The tracker of the probe's results, and its receiving side.
pub(super) fn delivery_channel() -> (Acknowledger<Arc<str>>, Acknowledgements<Arc<str>>) {
    ack::channel()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover(catch_up: u64, session_timeout: u64, lookback: u64) -> Handover {
        Handover {
            results: TopicAccess {
                brokers: "127.0.0.1:9".into(),
                topic: "checks".into(),
                options: Default::default(),
                timeout: Duration::from_secs(1),
            },
            lookback: Duration::from_secs(lookback),
            catch_up: Duration::from_secs(catch_up),
            session_timeout: Duration::from_secs(session_timeout),
        }
    }

    #[test]
    fn the_lookup_reaches_a_dead_members_last_slots() {
        let thirty = Duration::from_secs(30);
        // Shipped settings: a SIGKILLed member's last slots are 45-75 s old at the take-over.
        assert_eq!(
            handover(10, 45, 120).window(thirty),
            Duration::from_secs(76)
        );
        // A short session timeout: the catch-up bound decides.
        assert_eq!(
            handover(10, 6, 120).window(Duration::from_secs(1)),
            Duration::from_secs(12)
        );
        // Never past handover_lookback.
        assert_eq!(handover(10, 45, 60).window(thirty), Duration::from_secs(60));
    }
}
