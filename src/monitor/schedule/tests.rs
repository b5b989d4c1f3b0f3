//! The scheduler's tests: slot arithmetic, and whole schedules run on paused time.

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

/// A schedule changed at run time: what each check saw, as (name, item, slot − t0 in s).
type Seen = Arc<Mutex<Vec<(String, u32, u64)>>>;

fn upsert(name: &str, interval_s: u64, offset_s: u64, item: u32) -> Command<u32> {
    upsert_from(name, interval_s, offset_s, item, None)
}

/// An entry handed over with `first_ms`, the slot after its last published one.
fn handed_over(name: &str, interval_s: u64, offset_s: u64, first_ms: u64) -> Command<u32> {
    upsert_from(name, interval_s, offset_s, 1, Some(first_ms))
}

fn upsert_from(
    name: &str,
    interval_s: u64,
    offset_s: u64,
    item: u32,
    first_ms: Option<u64>,
) -> Command<u32> {
    Command::Upsert {
        name: Arc::from(name),
        entry: Entry {
            interval: Duration::from_secs(interval_s),
            offset: Duration::from_secs(offset_s),
        },
        first_ms,
        item,
    }
}

/// Runs a dynamic schedule for `seconds` whose checks take `check_s` each, recording them.
fn dynamic(
    initial: Vec<Command<u32>>,
    commands: mpsc::UnboundedReceiver<Command<u32>>,
    seconds: u64,
    check_s: u64,
) -> (Seen, tokio::task::JoinHandle<Stats>) {
    let clock = test_clock();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let handle = tokio::spawn(async move {
        let logger = logger();
        let names: [String; 0] = [];
        run_dynamic(
            initial,
            Some(commands),
            clock,
            10,
            stop_after(Duration::from_secs(seconds)),
            MissedSlots {
                names: &names,
                logger: &logger,
                counter: None,
            },
            move |slot, item: &u32| {
                let record = Arc::clone(&record);
                let item = *item;
                async move {
                    record.lock().unwrap().push((
                        format!("#{}", slot.entry),
                        item,
                        (slot.scheduled_ms - 1_000_000_000) / 1000,
                    ));
                    tokio::time::sleep(Duration::from_secs(check_s)).await;
                }
            },
        )
        .await
    });
    (seen, handle)
}

#[tokio::test(start_paused = true)]
async fn entries_added_changed_and_removed_at_run_time() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (seen, handle) = dynamic(vec![upsert("a", 10, 1, 1)], rx, 60, 1);
    // At 15 s: b is added (slots at 10k+3 s from the next one, 23 s) and a's settings change
    // without moving its slots (same interval and offset): its next checks see item 2.
    tokio::time::sleep(Duration::from_secs(15)).await;
    tx.send(upsert("b", 10, 3, 7)).unwrap();
    tx.send(upsert("a", 10, 1, 2)).unwrap();
    // At 35 s: a moves to a 20 s interval with offset 5 (next slot 45 s); b is removed.
    tokio::time::sleep(Duration::from_secs(20)).await;
    tx.send(upsert("a", 20, 5, 3)).unwrap();
    let (done, removed) = oneshot::channel();
    tx.send(Command::Remove {
        name: Arc::from("b"),
        done: Some(done),
    })
    .unwrap();
    removed
        .await
        .expect("an idle entry's removal is answered at once");
    let stats = handle.await.unwrap();
    let seen = seen.lock().unwrap();
    let of = |item: u32| -> Vec<u64> { seen.iter().filter(|s| s.1 == item).map(|s| s.2).collect() };
    assert_eq!(of(1), [1, 11], "{seen:?}");
    assert_eq!(of(2), [21, 31], "{seen:?}");
    assert_eq!(of(3), [45], "{seen:?}");
    assert_eq!(of(7), [23, 33], "{seen:?}");
    // a's new slots come from a new heap item; the old one's are dropped, not checked.
    assert_eq!(
        stats,
        Stats {
            started: 7,
            missed: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_removal_is_answered_once_the_running_check_ends() {
    let (tx, rx) = mpsc::unbounded_channel();
    // The check at 1 s takes 5 s.
    let (seen, handle) = dynamic(vec![upsert("a", 10, 1, 1)], rx, 30, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (done, removed) = oneshot::channel();
    tx.send(Command::Remove {
        name: Arc::from("a"),
        done: Some(done),
    })
    .unwrap();
    let asked = Instant::now();
    removed.await.unwrap();
    assert_eq!(
        asked.elapsed(),
        Duration::from_secs(4),
        "answered when the check ends at 6 s"
    );
    // Added again at once: a new entry, from its next slot.
    tx.send(upsert("a", 10, 1, 2)).unwrap();
    let stats = handle.await.unwrap();
    let seen = seen.lock().unwrap();
    let slots: Vec<(u32, u64)> = seen.iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(slots, [(1, 1), (2, 11), (2, 21)]);
    assert_eq!(stats.missed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_first_slot_in_the_past_is_due_at_once() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (seen, handle) = dynamic(Vec::new(), rx, 30, 1);
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    // Handed over with its last published slot at 1 s: the next one, 11 s, is checked late,
    // then 21 s on time.
    tx.send(handed_over("a", 10, 1, 1_000_011_000)).unwrap();
    drop(tx);
    let stats = handle.await.unwrap();
    let slots: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.2).collect();
    assert_eq!(slots, [11, 21]);
    assert_eq!(
        stats,
        Stats {
            started: 2,
            missed: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_schedule_with_nothing_left_and_no_commands_ends() {
    let (tx, rx) = mpsc::unbounded_channel::<Command<u32>>();
    let (_, handle) = dynamic(Vec::new(), rx, 3_600, 1);
    drop(tx);
    let stats = handle.await.unwrap();
    assert_eq!(stats, Stats::default());
}

#[tokio::test(start_paused = true)]
async fn owed_slots_are_checked_one_after_another_then_the_schedule_goes_on() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (seen, handle) = dynamic(Vec::new(), rx, 30, 1);
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    // Handed over at 12.5 s, the last published slot 3 s: 5, 7, 9 and 11 s are owed and run
    // back to back (each check takes 1 s), never two at once, and 13 s, the first slot after
    // them, waits for them too. It ends at 17.5 s, so 15 and 17 s come while checks run and
    // are missed, as any slot is that comes while an on-time check runs.
    tx.send(handed_over("a", 2, 1, 1_000_005_000)).unwrap();
    drop(tx);
    let stats = handle.await.unwrap();
    let slots: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.2).collect();
    assert_eq!(slots, [5, 7, 9, 11, 13, 19, 21, 23, 25, 27, 29]);
    assert_eq!(
        stats,
        Stats {
            started: 11,
            missed: 2
        }
    );
}
