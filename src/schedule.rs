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
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slog::warn;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
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

    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.base_ms) + self.base_instant.elapsed()
    }

    /// The instant at which the clock reads `ms`.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.base_instant + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }

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
    pub interval: Duration,
    pub offset: Duration,
}

/// A due check: which entry, and the slot it was scheduled for (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub entry: usize,
    pub scheduled_ms: u64,
}

/// What a schedule run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub started: u64,
    pub missed: u64,
}

/// Runs `check` for every slot of every entry until `shutdown`, then waits for the checks in
/// flight. `names` label the warnings about missed slots.
pub async fn run<F, Fut>(
    entries: &[Entry],
    names: &[String],
    clock: Clock,
    concurrency: usize,
    shutdown: CancellationToken,
    logger: &slog::Logger,
    mut check: F,
) -> Stats
where
    F: FnMut(Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let now = clock.now_ms();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Reverse((next_slot(now, e.interval, e.offset), i)))
        .collect();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = vec![false; entries.len()];
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    let mut tasks = JoinSet::new();
    let mut stats = Stats::default();

    while let Some(Reverse((due_ms, _))) = heap.peek().copied() {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(entry) = done_rx.recv() => running[entry] = false,
            () = tokio::time::sleep_until(clock.instant_at(due_ms)) => {
                while let Some(Reverse((slot_ms, entry))) = heap.peek().copied() {
                    if slot_ms > due_ms {
                        break;
                    }
                    heap.pop();
                    let interval_ms = entries[entry].interval.as_millis().max(1) as u64;
                    heap.push(Reverse((slot_ms + interval_ms, entry)));
                    if running[entry] {
                        stats.missed += 1;
                        warn!(logger, "check still running at its next slot; slot skipped";
                              "target" => names.get(entry).map_or("?", String::as_str));
                        continue;
                    }
                    running[entry] = true;
                    stats.started += 1;
                    let work = check(Slot { entry, scheduled_ms: slot_ms });
                    let permits = Arc::clone(&permits);
                    let done = done_tx.clone();
                    tasks.spawn(async move {
                        // The semaphore is never closed, so acquiring cannot fail.
                        let _permit = permits.acquire_owned().await;
                        work.await;
                        let _ = done.send(entry);
                    });
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_their_slots_and_never_overlap() {
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1_000_000));
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
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(45)).await;
            stop.cancel();
        });
        let record = Arc::clone(&log);
        let stats = run(
            &entries,
            &names(2),
            clock,
            10,
            shutdown,
            &logger(),
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
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1_000_000));
        let entries = [Entry {
            interval: Duration::from_secs(60),
            offset: Duration::ZERO,
        }; 4];
        let starts = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.cancel();
        });
        let record = Arc::clone(&starts);
        run(
            &entries,
            &names(4),
            clock,
            2,
            shutdown,
            &logger(),
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
}
