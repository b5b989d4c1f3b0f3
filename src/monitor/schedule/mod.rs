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
//!
//! Entries can be added, changed and removed while the schedule runs ([`run_dynamic`]): a
//! checker of a fleet gains and loses targets as its group rebalances, and the targets topic
//! changes them. An entry handed over from another checker can start in the past: the slots
//! it is owed (up to the moment it arrives), and the first one after them, are checked late,
//! one after another, instead of being skipped, so that a hand-over loses no slot.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use slog::{error, warn};
use tokio::sync::{mpsc, oneshot};
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
    /// The entries' names, in the order of the entries (for [`run`]; [`run_dynamic`] takes
    /// them from its commands).
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

/// A change to a running schedule ([`run_dynamic`]), by entry name.
#[derive(Debug)]
pub enum Command<T> {
    /// Schedules `name`, or replaces what it had. A new entry's first slot is `first_ms`, or
    /// the next slot from now. A first slot in the past is due at once, and every slot from it
    /// up to now is owed: each is checked, late, once the check before it ends.
    /// An entry that is replaced keeps its place in time unless its interval or offset
    /// changed; a check of it in flight runs to its end with the old item.
    Upsert {
        /// The entry's unique name.
        name: Arc<str>,
        /// Its interval and offset.
        entry: Entry,
        /// Its first slot (ms since the epoch); `None`: the next one from now.
        first_ms: Option<u64>,
        /// What its checks are given.
        item: T,
    },
    /// Stops scheduling `name`. `done` is answered once the check of it in flight, if any,
    /// has ended, so that whoever removes it knows nothing more of it will start or finish.
    Remove {
        /// The entry's name.
        name: Arc<str>,
        /// Answered when nothing of the entry runs any more.
        done: Option<oneshot::Sender<()>>,
    },
}

/// How often, at most, skipped slots are reported. An overloaded checker can skip thousands of
/// slots a second; one line per slot would bury everything else in the log.
const MISSED_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Target names a missed-slot report lists before it just counts.
const MISSED_REPORT_NAMES: usize = 5;

/// Runs `check` for every slot of every entry until `shutdown`, then waits for the checks in
/// flight, reporting skipped slots to `missed_slots`. A fixed list: [`run_dynamic`] with the
/// entries as its first commands, and the entries' names from `missed_slots`.
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
    let initial = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| Command::Upsert {
            name: missed_slots
                .names
                .get(i)
                .map_or_else(|| Arc::from(format!("#{i}")), |n| Arc::from(n.as_str())),
            entry: *entry,
            first_ms: None,
            item: (),
        });
    run_dynamic(
        initial,
        None,
        clock,
        concurrency,
        shutdown,
        missed_slots,
        |slot, ()| check(slot),
    )
    .await
}

/// Runs `check` for every slot of every entry, the entries being changed at run time by
/// `commands`, until `shutdown` (or until there is nothing left to run and no more commands
/// can come), then waits for the checks in flight.
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
///
/// Entries live in a slab, addressed by index ([`Slot::entry`]); heap items carry the
/// generation of the entry they were made for, so an item of a removed or rescheduled entry
/// is dropped when it comes up rather than searched for when the change comes.
pub async fn run_dynamic<T, F, Fut>(
    initial: impl IntoIterator<Item = Command<T>>,
    mut commands: Option<mpsc::UnboundedReceiver<Command<T>>>,
    clock: Clock,
    concurrency: usize,
    shutdown: CancellationToken,
    missed_slots: MissedSlots<'_>,
    mut check: F,
) -> Stats
where
    F: FnMut(Slot, &T) -> Fut,
    Fut: Future<Output = ()> + Send,
{
    let concurrency = concurrency.max(1);
    let mut table = Table::new();
    for command in initial {
        table.apply(command, clock.now_ms());
    }
    let mut running = FuturesUnordered::new();
    let mut stats = Stats::default();
    let MissedSlots {
        logger,
        counter: missed_slots,
        ..
    } = missed_slots;
    let mut missed = MissedReport::new(logger);

    // A check that panics is a bug, but it must not stop its target (or the others) forever.
    let mut start = |slot: Slot, item: &T| {
        let work = AssertUnwindSafe(check(slot, item)).catch_unwind();
        async move { (slot.entry, work.await.is_err()) }
    };

    // One timer, moved as the next slot changes, rather than a new one every turn of the loop.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);

    loop {
        let next_due = table.heap.peek().map(|Reverse(item)| item.due_ms);
        if next_due.is_none() && running.is_empty() && commands.is_none() {
            break;
        }
        if let Some(due_ms) = next_due {
            let due = clock.instant_at(due_ms);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
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
                               "target" => table.name(entry));
                    }
                    table.finished(entry);
                    // Queued slots of removed entries left the queue with them.
                    if let Some(slot) = table.waiting.pop_front() {
                        let state = table.slab[slot.entry].as_mut().expect("queued entries exist");
                        state.phase = Phase::Running;
                        running.push(start(slot, &state.item));
                        stats.started += 1;
                    }
                    done = running.next().now_or_never().flatten();
                }
            }
            command = recv(&mut commands) => match command {
                Some(command) => {
                    table.apply(command, clock.now_ms());
                    // Take every change queued by now in one turn (a rebalance brings hundreds).
                    while let Some(Ok(command)) = commands.as_mut().map(|c| c.try_recv()) {
                        table.apply(command, clock.now_ms());
                    }
                }
                None => commands = None,
            },
            () = &mut timer, if next_due.is_some() => {}
        }
        // Slots that are due are taken whichever branch ran, so that a steady stream of
        // finished checks cannot hold them back; checks that finished at the very time of
        // their next slot were taken first, so that slot is not counted as missed.
        let now_ms = clock.now_ms();
        loop {
            let Table {
                slab,
                heap,
                waiting,
                ..
            } = &mut table;
            let Some(mut top) = heap.peek_mut() else {
                break;
            };
            let Reverse(item) = *top;
            if item.due_ms > now_ms {
                break;
            }
            let Some(state) = live(slab, item) else {
                PeekMut::pop(top);
                continue;
            };
            if state.phase != Phase::Idle
                && (item.due_ms <= state.owed_through_ms || state.taken_owed)
            {
                // An owed slot waits for the check before it, out of the heap, and so does the
                // first slot after them, which a catch-up must not cost; the check's end puts
                // it back (see `Table::finished`).
                PeekMut::pop(top);
                slab[item.index].as_mut().expect("a live entry").deferred = Some(item);
                continue;
            }
            // Reschedule in place: one sift instead of a pop and a push.
            let interval_ms = state.entry.interval.as_millis().max(1) as u64;
            *top = Reverse(HeapItem {
                due_ms: item.due_ms + interval_ms,
                ..item
            });
            drop(top);
            if state.phase != Phase::Idle {
                stats.missed += 1;
                if let Some(counter) = missed_slots {
                    counter.inc();
                }
                missed.add(&state.name);
                continue;
            }
            let slot = Slot {
                entry: item.index,
                scheduled_ms: item.due_ms,
            };
            let state = slab[item.index].as_mut().expect("a live entry");
            state.taken_owed = item.due_ms <= state.owed_through_ms;
            if running.len() < concurrency {
                state.phase = Phase::Running;
                running.push(start(slot, &state.item));
                stats.started += 1;
            } else {
                state.phase = Phase::Queued;
                waiting.push_back(slot);
            }
        }
        missed.report_if_due();
    }
    missed.report();
    while let Some((entry, _)) = running.next().await {
        table.finished(entry);
    }
    stats
}

/// The next command, or never when there is no channel (a fixed list).
async fn recv<T>(commands: &mut Option<mpsc::UnboundedReceiver<Command<T>>>) -> Option<Command<T>> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

/// Where an entry's check is: none, waiting for a permit, or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Queued,
    Running,
}

/// A scheduled entry.
struct State<T> {
    name: Arc<str>,
    entry: Entry,
    item: T,
    /// Heap items made for another generation are stale.
    generation: u64,
    phase: Phase,
    /// Removed, but its check still runs: kept (and its name reserved) until it ends, so a
    /// target removed and added again never has two checks at once.
    removed: bool,
    /// Answered when its check ends, for a [`Command::Remove`] that came while it ran.
    waiters: Vec<oneshot::Sender<()>>,
    /// Slots due at or before this time (ms) are owed (it was handed over with them): one that
    /// comes while a check runs waits for it instead of being skipped.
    owed_through_ms: u64,
    /// Whether the slot in flight (or waiting for a permit) is an owed one.
    taken_owed: bool,
    /// An owed slot, or the one after them, waiting for the running check.
    deferred: Option<HeapItem>,
}

/// A slot in the heap: when, for which entry, made for which of its generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HeapItem {
    due_ms: u64,
    index: usize,
    generation: u64,
}

/// The entries, by index and by name, and their slots.
struct Table<T> {
    slab: Vec<Option<State<T>>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, usize>,
    heap: BinaryHeap<Reverse<HeapItem>>,
    waiting: VecDeque<Slot>,
    /// Never reused, so that no stale heap item can match a new entry in a reused index.
    generations: u64,
}

impl<T> Table<T> {
    fn new() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            heap: BinaryHeap::new(),
            waiting: VecDeque::new(),
            generations: 0,
        }
    }

    fn name(&self, index: usize) -> &str {
        self.slab
            .get(index)
            .and_then(Option::as_ref)
            .map_or("?", |s| &s.name)
    }

    fn schedule(&mut self, index: usize, first_ms: u64, now_ms: u64) {
        self.generations += 1;
        let generation = self.generations;
        if let Some(Some(state)) = self.slab.get_mut(index) {
            state.generation = generation;
            state.owed_through_ms = if first_ms < now_ms { now_ms } else { 0 };
            state.deferred = None;
            self.heap.push(Reverse(HeapItem {
                due_ms: first_ms,
                index,
                generation,
            }));
        }
    }

    fn apply(&mut self, command: Command<T>, now_ms: u64) {
        match command {
            Command::Upsert {
                name,
                entry,
                first_ms,
                item,
            } => {
                let first =
                    first_ms.unwrap_or_else(|| next_slot(now_ms, entry.interval, entry.offset));
                if let Some(&index) = self.by_name.get(&name) {
                    let state = self.slab[index].as_mut().expect("named entries exist");
                    let moved = state.removed
                        || state.entry.interval != entry.interval
                        || state.entry.offset != entry.offset;
                    state.entry = entry;
                    state.item = item;
                    state.removed = false;
                    if moved {
                        self.schedule(index, first, now_ms);
                    }
                    return;
                }
                let state = State {
                    name: Arc::clone(&name),
                    entry,
                    item,
                    generation: 0,
                    phase: Phase::Idle,
                    removed: false,
                    waiters: Vec::new(),
                    owed_through_ms: 0,
                    taken_owed: false,
                    deferred: None,
                };
                let index = match self.free.pop() {
                    Some(index) => {
                        self.slab[index] = Some(state);
                        index
                    }
                    None => {
                        self.slab.push(Some(state));
                        self.slab.len() - 1
                    }
                };
                self.by_name.insert(name, index);
                self.schedule(index, first, now_ms);
            }
            Command::Remove { name, done } => {
                let Some(&index) = self.by_name.get(&name) else {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                };
                let state = self.slab[index].as_mut().expect("named entries exist");
                match state.phase {
                    Phase::Running => {
                        state.removed = true;
                        state.waiters.extend(done);
                    }
                    Phase::Queued => {
                        self.waiting.retain(|slot| slot.entry != index);
                        self.release(index);
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    Phase::Idle => {
                        self.release(index);
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                }
            }
        }
    }

    /// A check of entry `index` has ended.
    fn finished(&mut self, index: usize) {
        let Some(Some(state)) = self.slab.get_mut(index) else {
            return;
        };
        state.phase = Phase::Idle;
        for waiter in state.waiters.drain(..) {
            let _ = waiter.send(());
        }
        if state.removed {
            self.release(index);
        } else if let Some(item) = state.deferred.take() {
            // Due already: the schedule takes it in this same turn.
            self.heap.push(Reverse(item));
        }
    }

    fn release(&mut self, index: usize) {
        if let Some(state) = self.slab[index].take() {
            self.by_name.remove(&state.name);
            self.free.push(index);
        }
    }
}

/// The entry a heap item was made for, if it is still scheduled as it was.
fn live<T>(slab: &[Option<State<T>>], item: HeapItem) -> Option<&State<T>> {
    slab.get(item.index)?
        .as_ref()
        .filter(|s| s.generation == item.generation && !s.removed)
}

/// Counts missed slots and reports them at most every [`MISSED_REPORT_EVERY`], naming a few
/// of the targets.
struct MissedReport<'a> {
    logger: &'a slog::Logger,
    slots: u64,
    /// Entries with a miss since the last report, each counted once.
    targets: HashSet<Arc<str>>,
    last: Option<Instant>,
}

impl<'a> MissedReport<'a> {
    fn new(logger: &'a slog::Logger) -> Self {
        Self {
            logger,
            slots: 0,
            targets: HashSet::new(),
            last: None,
        }
    }

    fn add(&mut self, name: &Arc<str>) {
        self.slots += 1;
        if !self.targets.contains(name) {
            self.targets.insert(Arc::clone(name));
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
        let mut examples: Vec<&str> = self.targets.iter().map(|n| &**n).collect();
        examples.sort_unstable();
        examples.truncate(MISSED_REPORT_NAMES);
        if self.targets.len() > MISSED_REPORT_NAMES {
            examples.push("…");
        }
        warn!(self.logger, "checks still running at their next slot; slots skipped";
              "skipped_slots" => self.slots,
              "targets" => self.targets.len(),
              "examples" => examples.join(", "));
        self.slots = 0;
        self.targets.clear();
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests;
