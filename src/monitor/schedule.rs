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
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn slots_align_to_the_offset_within_the_interval() {
        let ten = Duration::from_secs(10);
        let off = Duration::from_millis(3_000);
        assert_eq!(next_slot(100_000, ten, off), 103_000);
        assert_eq!(next_slot(103_000, ten, off), 103_000);
        assert_eq!(next_slot(103_001, ten, off), 113_000);
        assert_eq!(next_slot(109_999, ten, off), 113_000);
    }

    #[test]
    fn offsets_are_stable_and_within_the_interval() {
        let interval = Duration::from_secs(30);
        assert_eq!(offset("example", interval), offset("example", interval));
        // Pinned: changing the hash would move every target's slots (and check ids).
        assert_eq!(
            offset("example", interval),
            Duration::from_millis(fnv1a(b"example") % 30_000)
        );
        for i in 0..1000 {
            assert!(offset(&format!("t{i}"), interval) < interval);
        }
    }

    #[test]
    fn a_thousand_targets_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        let mut per_second = [0_u32; 10];
        for i in 0..1000 {
            let name = format!("https://site-{i}.example.com/");
            per_second[(offset(&name, interval).as_millis() / 1000) as usize] += 1;
        }
        // Even spread would be 100 a second; a hash spreads like a fair die.
        assert!(
            per_second.iter().all(|n| (70..=130).contains(n)),
            "{per_second:?}"
        );
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    /// A clock at a round time, so slot times in assertions read easily.
    fn test_clock() -> Clock {
        Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1_000_000))
    }

    /// A token cancelled after `after` of (paused) time: how long a test's schedule runs.
    fn stop_after(after: Duration) -> CancellationToken {
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            stop.cancel();
        });
        token
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_their_slots_and_never_overlap() {
        let clock = test_clock();
        let entries = [
            Entry {
                interval: Duration::from_secs(10),
                offset: Duration::from_secs(2),
            },
            Entry {
                interval: Duration::from_secs(10),
                offset: Duration::from_secs(7),
            },
        ];
        let log = Arc::new(Mutex::new(Vec::new()));
        let shutdown = stop_after(Duration::from_secs(45));
        let record = Arc::clone(&log);
        let stats = run(
            &entries,
            clock,
            10,
            shutdown,
            MissedSlots {
                names: &names(2),
                logger: &logger(),
                counter: None,
            },
            move |slot| {
                let record = Arc::clone(&record);
                async move {
                    let started = clock.now_ms();
                    // Entry 1 takes 15 s, longer than its interval.
                    let length = if slot.entry == 1 { 15 } else { 1 };
                    tokio::time::sleep(Duration::from_secs(length)).await;
                    record.lock().unwrap().push((
                        slot.entry,
                        slot.scheduled_ms,
                        started,
                        clock.now_ms(),
                    ));
                }
            },
        )
        .await;

        let log = log.lock().unwrap();
        let t0 = 1_000_000_000;
        let of = |entry| -> Vec<(u64, u64)> {
            log.iter()
                .filter(|r| r.0 == entry)
                .map(|r| (r.1 - t0, r.2 - r.1))
                .collect()
        };
        // Entry 0: every slot, started on time.
        assert_eq!(
            of(0),
            [
                (2_000, 0),
                (12_000, 0),
                (22_000, 0),
                (32_000, 0),
                (42_000, 0)
            ]
        );
        // Entry 1: the slot at 17 s comes while the 7 s check runs, so it is skipped, and so on.
        assert_eq!(of(1), [(7_000, 0), (27_000, 0)]);
        assert_eq!(
            stats,
            Stats {
                started: 7,
                missed: 2
            }
        );
        for entry in [0, 1] {
            let runs: Vec<_> = log.iter().filter(|r| r.0 == entry).collect();
            for pair in runs.windows(2) {
                assert!(pair[1].2 >= pair[0].3, "overlap: {pair:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_concurrency_limit_delays_checks_instead_of_dropping_them() {
        let clock = test_clock();
        let entries = [Entry {
            interval: Duration::from_secs(60),
            offset: Duration::ZERO,
        }; 4];
        let starts = Arc::new(Mutex::new(Vec::new()));
        let shutdown = stop_after(Duration::from_secs(30));
        let record = Arc::clone(&starts);
        run(
            &entries,
            clock,
            2,
            shutdown,
            MissedSlots {
                names: &names(4),
                logger: &logger(),
                counter: None,
            },
            move |slot| {
                let record = Arc::clone(&record);
                async move {
                    record
                        .lock()
                        .unwrap()
                        .push(clock.now_ms() - slot.scheduled_ms);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        )
        .await;
        let mut lateness = starts.lock().unwrap().clone();
        lateness.sort_unstable();
        assert_eq!(lateness, [0, 0, 1_000, 1_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_checks_are_created_only_when_they_start_and_in_order() {
        let clock = test_clock();
        let entries = [Entry {
            interval: Duration::from_secs(60),
            offset: Duration::ZERO,
        }; 6];
        // (entries created and not yet finished, the most seen at once, start order)
        let state = Arc::new(Mutex::new((0, 0, Vec::new())));
        let shutdown = stop_after(Duration::from_secs(30));
        let record = Arc::clone(&state);
        let stats = run(
            &entries,
            clock,
            2,
            shutdown,
            MissedSlots {
                names: &names(6),
                logger: &logger(),
                counter: None,
            },
            move |slot| {
                {
                    let mut state = record.lock().unwrap();
                    state.0 += 1;
                    state.1 = state.1.max(state.0);
                    state
                        .2
                        .push((slot.entry, clock.now_ms() - slot.scheduled_ms));
                }
                let record = Arc::clone(&record);
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    record.lock().unwrap().0 -= 1;
                }
            },
        )
        .await;
        let state = state.lock().unwrap();
        assert_eq!(state.1, 2, "checks created beyond the concurrency limit");
        // Equal slots come due in entry order and start first come, first served.
        assert_eq!(
            state.2,
            [
                (0, 0),
                (1, 0),
                (2, 1_000),
                (3, 1_000),
                (4, 2_000),
                (5, 2_000)
            ]
        );
        assert_eq!(
            stats,
            Stats {
                started: 6,
                missed: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_ends_exactly_at_its_next_slot_does_not_miss_it() {
        let entries = [Entry {
            interval: Duration::from_secs(10),
            offset: Duration::ZERO,
        }];
        let stats = run(
            &entries,
            test_clock(),
            1,
            stop_after(Duration::from_secs(35)),
            MissedSlots {
                names: &names(1),
                logger: &logger(),
                counter: None,
            },
            |_| tokio::time::sleep(Duration::from_secs(10)),
        )
        .await;
        // Slots at 0, 10, 20 and 30 s: each check ends as the next slot comes.
        assert_eq!(
            stats,
            Stats {
                started: 4,
                missed: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_check_leaves_its_target_scheduled() {
        let clock = test_clock();
        let entries = [Entry {
            interval: Duration::from_secs(10),
            offset: Duration::ZERO,
        }];
        let runs = Arc::new(Mutex::new(0));
        let shutdown = stop_after(Duration::from_secs(35));
        let record = Arc::clone(&runs);
        let stats = run(
            &entries,
            clock,
            1,
            shutdown,
            MissedSlots {
                names: &names(1),
                logger: &logger(),
                counter: None,
            },
            move |_| {
                let record = Arc::clone(&record);
                async move {
                    let run = {
                        let mut runs = record.lock().unwrap();
                        *runs += 1;
                        *runs
                    };
                    assert!(run != 1, "the first check fails (a deliberate test panic)");
                }
            },
        )
        .await;
        assert_eq!(*runs.lock().unwrap(), 4);
        assert_eq!(
            stats,
            Stats {
                started: 4,
                missed: 0
            }
        );
    }

    /// Keeps the key-values of every record logged.
    struct Capture(Arc<Mutex<Vec<HashMap<String, String>>>>);

    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            struct Fields(HashMap<String, String>);
            impl slog::Serializer for Fields {
                fn emit_arguments(
                    &mut self,
                    key: slog::Key,
                    value: &std::fmt::Arguments,
                ) -> slog::Result {
                    self.0.insert(key.to_string(), value.to_string());
                    Ok(())
                }
            }
            let mut fields = Fields(HashMap::new());
            fields.0.insert("msg".into(), record.msg().to_string());
            slog::KV::serialize(&record.kv(), record, &mut fields).unwrap();
            self.0.lock().unwrap().push(fields.0);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missed_slots_are_reported_in_summaries_not_one_line_each() {
        let clock = test_clock();
        let entries = [Entry {
            interval: Duration::from_secs(1),
            offset: Duration::ZERO,
        }; 7];
        let records = Arc::new(Mutex::new(Vec::new()));
        let logger = slog::Logger::root(slog::Fuse(Capture(Arc::clone(&records))), slog::o!());
        let shutdown = stop_after(Duration::from_millis(65_500));
        // Every check outlasts the run, so every later slot is missed.
        let missed_slots = Counter::default();
        let stats = run(
            &entries,
            clock,
            10,
            shutdown,
            MissedSlots {
                names: &names(7),
                logger: &logger,
                counter: Some(&missed_slots),
            },
            |_| tokio::time::sleep(Duration::from_secs(100)),
        )
        .await;
        let records = records.lock().unwrap();
        let skipped: Vec<u64> = records
            .iter()
            .map(|r| r["skipped_slots"].parse().unwrap())
            .collect();
        // Slots at 0 s start; those at 1..=65 s are missed: the first report at once (1 s), then
        // one at most every 30 s (31 s, 61 s), then the rest at the end.
        assert_eq!(skipped, [7, 210, 210, 28], "{records:?}");
        assert_eq!(
            stats,
            Stats {
                started: 7,
                missed: 7 * 65
            }
        );
        assert_eq!(missed_slots.get(), 7 * 65, "the counter follows every slot");
        for record in records.iter() {
            assert_eq!(record["targets"], "7");
            assert_eq!(record["examples"], "t0, t1, t2, t3, t4, …");
        }
    }
}
