//! Slot-based scheduling of periodic checks, after getsentry/uptime-checker.
//!
//! Each target is checked every `interval`, at a fixed offset inside the interval derived from
//! a hash of its name. Slots are aligned to the wall clock (`t ≡ offset mod interval`), so a
//! thousand targets with one interval spread over it instead of firing together, and a restarted
//! checker uses the same slots, and so the same `check_id`s, as before.
//!
//! A check never overlaps the previous check of the same target: a slot that comes while it
//! still runs is counted as missed and skipped, not queued. A global concurrency limit caps the
//! checks in flight; a check waiting for a permit starts late, and its lateness shows in
//! `started_at − scheduled_at`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use slog::{error, warn};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The offset of a target's slots inside its interval: stable across runs and machines.
pub fn offset(name: &str, interval: Duration) -> Duration {
    let interval_ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(fnv1a(name.as_bytes()) % interval_ms)
}

/// The first slot at or after `after` (ms since the epoch).
pub fn next_slot(after_ms: u64, interval: Duration, offset: Duration) -> u64 {
    let interval_ms = interval.as_millis().max(1) as u64;
    let offset_ms = offset.as_millis() as u64 % interval_ms;
    let base = after_ms - after_ms % interval_ms + offset_ms;
    if base >= after_ms {
        base
    } else {
        base + interval_ms
    }
}

/// FNV-1a, 64 bits: tiny, stable, and spreads short strings well enough for slot offsets.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Wall-clock time read once and then advanced by the monotonic clock, so that slot times,
/// `scheduled_at` and `started_at` share one time line (and tests can pause it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_instant: Instant,
    base_ms: u64,
}

impl Clock {
    /// A clock that reads the current time now.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that reads `now` at this instant.
    pub fn starting_at(now: SystemTime) -> Self {
        Self {
            base_instant: Instant::now(),
            base_ms: now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base_instant.elapsed().as_millis() as u64
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.base_ms) + self.base_instant.elapsed()
    }

    /// The instant at which the clock reads `ms`.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.base_instant + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }

    /// The time `ms` milliseconds after the epoch.
    pub fn time_at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One entry to schedule.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Time between two of the entry's slots.
    pub interval: Duration,
    /// Where in each interval its slot falls.
    pub offset: Duration,
}

/// A due check: which entry, and the slot it was scheduled for (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The index of the entry.
    pub entry: usize,
    /// The slot's time, in milliseconds since the epoch.
    pub scheduled_ms: u64,
}

/// Where a schedule reports the slots it skips: a warning at most every 30 s naming a few of
/// the targets, and a counter.
pub struct MissedSlots<'a> {
    /// The entries' names, in the order of the entries.
    pub names: &'a [String],
    /// Where the warnings go.
    pub logger: &'a slog::Logger,
    /// Counts every skipped slot (`pipe_probe_missed_slots_total`).
    pub counter: Option<&'a Counter>,
}

/// What a schedule run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Checks started.
    pub started: u64,
    /// Slots skipped because the entry's previous check still ran.
    pub missed: u64,
}

/// How often, at most, skipped slots are reported. An overloaded checker can skip thousands of
/// slots a second; one line per slot would bury everything else in the log.
const MISSED_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Target names a missed-slot report lists before it just counts.
const MISSED_REPORT_NAMES: usize = 5;

/// Runs `check` for every slot of every entry until `shutdown`, then waits for the checks in
/// flight, reporting skipped slots to `missed_slots`.
///
/// At most `concurrency` checks run at once. A due slot that finds them all taken waits in a
/// first-come-first-served queue; its check (and its future, with whatever buffers it holds) is
/// only created when it starts, so an overloaded checker holds a queue of small slots rather
/// than thousands of parked futures.
///
/// The checks are polled by this task rather than spawned. Their I/O completes on other
/// threads (libcurl's), and every completion wakes the task that awaits it: with one task for
/// all checks, wake-ups that come while it is already awake or queued cost nothing, where
/// separate tasks would each wake a runtime thread. Measured in BENCHMARKS.md.
pub async fn run<F, Fut>(
    entries: &[Entry],
    clock: Clock,
    concurrency: usize,
    shutdown: CancellationToken,
    missed_slots: MissedSlots<'_>,
    mut check: F,
) -> Stats
where
    F: FnMut(Slot) -> Fut,
    Fut: Future<Output = ()> + Send,
{
    let concurrency = concurrency.max(1);
    let now = clock.now_ms();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Reverse((next_slot(now, e.interval, e.offset), i)))
        .collect();
    // An entry is busy from its slot coming due until its check ends, waiting or running.
    let mut busy = vec![false; entries.len()];
    let mut waiting: VecDeque<Slot> = VecDeque::new();
    let mut running = FuturesUnordered::new();
    let mut stats = Stats::default();
    let MissedSlots {
        names,
        logger,
        counter: missed_slots,
    } = missed_slots;
    let mut missed = MissedReport::new(names, logger);

    // A check that panics is a bug, but it must not stop its target (or the others) forever.
    let mut start = |slot: Slot| {
        let work = AssertUnwindSafe(check(slot)).catch_unwind();
        async move { (slot.entry, work.await.is_err()) }
    };

    let Some(Reverse((first_ms, _))) = heap.peek().copied() else {
        return stats;
    };
    // One timer, moved as the next slot changes, rather than a new one every turn of the loop.
    let timer = tokio::time::sleep_until(clock.instant_at(first_ms));
    tokio::pin!(timer);

    while let Some(Reverse((due_ms, _))) = heap.peek().copied() {
        let due = clock.instant_at(due_ms);
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = running.next(), if !running.is_empty() => {
                // Take every check that has finished by now in one turn.
                let mut done = Some(done);
                while let Some((entry, panicked)) = done {
                    if panicked {
                        error!(logger, "a check panicked; the target stays scheduled";
                               "target" => names.get(entry).map_or("?", String::as_str));
                    }
                    busy[entry] = false;
                    if let Some(slot) = waiting.pop_front() {
                        running.push(start(slot));
                        stats.started += 1;
                    }
                    done = running.next().now_or_never().flatten();
                }
            }
            () = &mut timer => {}
        }
        // Slots that are due are taken whichever branch ran, so that a steady stream of
        // finished checks cannot hold them back; checks that finished at the very time of
        // their next slot were taken first, so that slot is not counted as missed.
        if Instant::now() < due {
            continue;
        }
        while let Some(mut top) = heap.peek_mut() {
            let Reverse((slot_ms, entry)) = *top;
            if slot_ms > due_ms {
                break;
            }
            // Reschedule in place: one sift instead of a pop and a push.
            let interval_ms = entries[entry].interval.as_millis().max(1) as u64;
            *top = Reverse((slot_ms + interval_ms, entry));
            drop(top);
            if busy[entry] {
                stats.missed += 1;
                if let Some(counter) = missed_slots {
                    counter.inc();
                }
                missed.add(entry);
                continue;
            }
            busy[entry] = true;
            let slot = Slot {
                entry,
                scheduled_ms: slot_ms,
            };
            if running.len() < concurrency {
                running.push(start(slot));
                stats.started += 1;
            } else {
                waiting.push_back(slot);
            }
        }
        missed.report_if_due();
    }
    missed.report();
    while running.next().await.is_some() {}
    stats
}

/// Counts missed slots and reports them at most every [`MISSED_REPORT_EVERY`], naming a few
/// of the targets.
struct MissedReport<'a> {
    names: &'a [String],
    logger: &'a slog::Logger,
    slots: u64,
    /// Entries with a miss since the last report, and a flag per entry to count each once.
    targets: Vec<usize>,
    listed: Vec<bool>,
    last: Option<Instant>,
}

impl<'a> MissedReport<'a> {
    fn new(names: &'a [String], logger: &'a slog::Logger) -> Self {
        Self {
            names,
            logger,
            slots: 0,
            targets: Vec::new(),
            listed: vec![false; names.len()],
            last: None,
        }
    }

    fn add(&mut self, entry: usize) {
        self.slots += 1;
        if let Some(listed) = self.listed.get_mut(entry) {
            if !*listed {
                *listed = true;
                self.targets.push(entry);
            }
        }
    }

    fn report_if_due(&mut self) {
        if self.slots > 0 && self.last.is_none_or(|t| t.elapsed() >= MISSED_REPORT_EVERY) {
            self.report();
        }
    }

    fn report(&mut self) {
        if self.slots == 0 {
            return;
        }
        let mut examples: Vec<&str> = self
            .targets
            .iter()
            .take(MISSED_REPORT_NAMES)
            .map(|&i| self.names[i].as_str())
            .collect();
        if self.targets.len() > MISSED_REPORT_NAMES {
            examples.push("…");
        }
        warn!(self.logger, "checks still running at their next slot; slots skipped";
              "skipped_slots" => self.slots,
              "targets" => self.targets.len(),
              "examples" => examples.join(", "));
        for &entry in &self.targets {
            self.listed[entry] = false;
        }
        self.slots = 0;
        self.targets.clear();
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests;
