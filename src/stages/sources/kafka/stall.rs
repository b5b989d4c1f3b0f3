//! The `kafka` source's stall watchdog: partitions that hold messages the source never gets.
//!
//! A broker that cannot serve a batch (tansu 0.6.0 drops the connection on every fetch of a
//! snappy batch), a log it cannot read, fetches that fail on every try: librdkafka retries
//! each of these for ever, and says at most that connections dropped ("all brokers down"),
//! naming no partition. The watchdog follows each held partition's fetch position in
//! librdkafka's statistics. One that has stood still for [`SUSPECT_AFTER`] with nothing
//! prefetched is a suspect, and the broker is asked for its end (a ListOffsets request, which
//! is not a fetch and is answered even when fetches fail). A suspect whose end lies past its
//! position is stalled: messages are there and none arrives. Any other suspect is only idle,
//! and its clock starts again.
//!
//! The source decides what a stall means (`/ready` 503 at once, the run stopped after
//! `stall_timeout`); this module only keeps the facts. A source the pipeline holds back
//! (paused, or with messages it cannot hand over) is not stalled by the broker: its clocks are
//! restarted while that lasts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

use crate::config::duration;

/// How long a held partition's position may stand still, with nothing prefetched, before the
/// broker is asked whether messages wait there. Long enough that an idle writer asks about
/// each partition at most every half minute.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(30);

/// A partition: topic and number.
pub type Partition = (Arc<str>, i32);

/// What is known of each held partition's progress.
#[derive(Debug, Default)]
pub struct Watchdog {
    partitions: HashMap<Partition, Progress>,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// librdkafka's fetch position (`next_offset`); negative while it has none.
    position: i64,
    /// Since when the position has stood still with nothing prefetched.
    still_since: Instant,
    /// The partition's end, once the broker has said it lies past the position.
    end: Option<i64>,
}

/// A stalled partition, as the source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The offset the source waits to read; `None` while librdkafka has no position.
    pub position: Option<i64>,
    /// The partition's end offset, as the broker gave it.
    pub end: i64,
    /// How long nothing has been fetched from it.
    pub lasted: Duration,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic `{}` partition {}", self.topic, self.partition)?;
        match self.position {
            Some(position) => write!(f, " at offset {position}")?,
            None => f.write_str(" (no position yet)")?,
        }
        write!(
            f,
            ": the broker holds messages up to offset {}, but none has been fetched for {}",
            self.end,
            duration::format_approx(self.lasted)
        )
    }
}

impl Watchdog {
    /// Reads one statistics report. Only partitions in `held` are followed; one whose position
    /// moved, or that has messages prefetched, is making progress.
    pub fn observe(
        &mut self,
        statistics: &Statistics,
        held: &HashSet<(String, i32)>,
        now: Instant,
    ) {
        self.partitions
            .retain(|(topic, partition), _| held.contains(&(topic.to_string(), *partition)));
        for (topic, stats) in &statistics.topics {
            for (number, stats) in &stats.partitions {
                if !held.contains(&(topic.clone(), *number)) {
                    continue;
                }
                let key: Partition = (Arc::from(topic.as_str()), *number);
                let fresh = Progress {
                    position: stats.next_offset,
                    still_since: now,
                    end: None,
                };
                let progress = self.partitions.entry(key).or_insert(fresh);
                if progress.position != stats.next_offset || stats.fetchq_cnt > 0 {
                    *progress = fresh;
                }
            }
        }
    }

    /// The pipeline holds the source back: standing still is not the broker's doing.
    pub fn restart(&mut self, now: Instant) {
        for progress in self.partitions.values_mut() {
            progress.still_since = now;
            progress.end = None;
        }
    }

    /// The partitions to ask the broker about, with their positions: still for
    /// [`SUSPECT_AFTER`] and not known to be stalled yet.
    pub fn suspects(&self, now: Instant) -> Vec<(Partition, i64)> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.end.is_none() && now.duration_since(p.still_since) >= SUSPECT_AFTER)
            .map(|(key, p)| (key.clone(), p.position))
            .collect()
    }

    /// What the broker said of a suspect asked about at `position`: its first and end
    /// offsets. Messages past the position make it stalled; otherwise it is idle, and its
    /// clock starts again at `now`. An answer about a position that has moved since is stale.
    pub fn answered(
        &mut self,
        partition: &Partition,
        position: i64,
        (low, end): (i64, i64),
        now: Instant,
    ) {
        let Some(progress) = self.partitions.get_mut(partition) else {
            return;
        };
        if progress.position != position {
            return;
        }
        // Without a position, the first message there is the one waited for.
        let waiting_for = if position >= 0 { position } else { low };
        if end > waiting_for {
            progress.end = Some(end);
        } else {
            progress.still_since = now;
        }
    }

    /// Every stalled partition, longest first.
    pub fn stalled(&self, now: Instant) -> Vec<Stall> {
        let mut stalls: Vec<Stall> = self
            .partitions
            .iter()
            .filter_map(|((topic, partition), p)| {
                Some(Stall {
                    topic: topic.clone(),
                    partition: *partition,
                    position: (p.position >= 0).then_some(p.position),
                    end: p.end?,
                    lasted: now.duration_since(p.still_since),
                })
            })
            .collect();
        stalls.sort_by(|a, b| {
            b.lasted
                .cmp(&a.lasted)
                .then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)))
        });
        stalls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statistics report in which `topic`'s partitions have these (next_offset, fetchq_cnt).
    fn report(topic: &str, partitions: &[(i32, i64, i64)]) -> Statistics {
        use rdkafka::statistics::{Partition as Stats, Topic};
        let partitions = partitions
            .iter()
            .map(|&(partition, next_offset, fetchq_cnt)| {
                let stats = Stats {
                    partition,
                    next_offset,
                    fetchq_cnt,
                    ..Stats::default()
                };
                (partition, stats)
            })
            .collect();
        let topic_stats = Topic {
            topic: topic.to_owned(),
            partitions,
            ..Topic::default()
        };
        Statistics {
            topics: HashMap::from([(topic.to_owned(), topic_stats)]),
            ..Statistics::default()
        }
    }

    fn held(topic: &str, partitions: &[i32]) -> HashSet<(String, i32)> {
        partitions.iter().map(|p| (topic.to_owned(), *p)).collect()
    }

    fn key(topic: &str, partition: i32) -> Partition {
        (Arc::from(topic), partition)
    }

    #[test]
    fn a_partition_that_stands_still_with_messages_behind_it_is_stalled() {
        let t0 = Instant::now();
        let mut dog = Watchdog::default();
        let held = held("checks", &[0, 1]);
        dog.observe(&report("checks", &[(0, 40, 0), (1, 7, 0)]), &held, t0);
        assert!(dog.suspects(t0 + SUSPECT_AFTER / 2).is_empty());

        // Partition 1 moves on; partition 0 stands still.
        let later = t0 + SUSPECT_AFTER;
        dog.observe(&report("checks", &[(0, 40, 0), (1, 9, 0)]), &held, later);
        assert_eq!(dog.suspects(later), [(key("checks", 0), 40)]);

        dog.answered(&key("checks", 0), 40, (0, 300), later);
        let stalls = dog.stalled(later + Duration::from_secs(5));
        assert_eq!(stalls.len(), 1);
        assert_eq!(
            stalls[0].to_string(),
            "topic `checks` partition 0 at offset 40: the broker holds messages up to offset 300, \
             but none has been fetched for 35s"
        );
        assert!(dog.suspects(later).is_empty(), "asked once, not again");

        // Messages arrive again: no longer stalled.
        dog.observe(
            &report("checks", &[(0, 41, 0), (1, 9, 0)]),
            &held,
            later + SUSPECT_AFTER,
        );
        assert!(dog.stalled(later + SUSPECT_AFTER).is_empty());
    }

    #[test]
    fn an_idle_partition_is_asked_about_again_only_after_another_wait() {
        let t0 = Instant::now();
        let mut dog = Watchdog::default();
        let held = held("checks", &[0]);
        dog.observe(&report("checks", &[(0, 12, 0)]), &held, t0);
        let asked = t0 + SUSPECT_AFTER;
        assert_eq!(dog.suspects(asked).len(), 1);
        dog.answered(&key("checks", 0), 12, (0, 12), asked);
        assert!(
            dog.stalled(asked).is_empty(),
            "at its end: idle, not stalled"
        );
        assert!(dog.suspects(asked + SUSPECT_AFTER / 2).is_empty());
        assert_eq!(dog.suspects(asked + SUSPECT_AFTER).len(), 1);
    }

    #[test]
    fn prefetched_messages_a_hold_back_or_a_stale_answer_are_no_stall() {
        let t0 = Instant::now();
        let mut dog = Watchdog::default();
        let held = held("checks", &[0]);
        // Messages wait in librdkafka's queue: the pipeline is slow, the broker is not.
        dog.observe(&report("checks", &[(0, 5, 100)]), &held, t0);
        let later = t0 + SUSPECT_AFTER;
        dog.observe(&report("checks", &[(0, 5, 100)]), &held, later);
        assert!(dog.suspects(later).is_empty());

        // Held back by the pipeline (paused): the clock starts again.
        dog.observe(&report("checks", &[(0, 5, 0)]), &held, later);
        dog.restart(later + SUSPECT_AFTER);
        assert!(dog.suspects(later + SUSPECT_AFTER).is_empty());

        // An answer about a position that has moved since says nothing.
        let asked = later + 2 * SUSPECT_AFTER;
        assert_eq!(dog.suspects(asked), [(key("checks", 0), 5)]);
        dog.observe(&report("checks", &[(0, 6, 0)]), &held, asked);
        dog.answered(&key("checks", 0), 5, (0, 100), asked);
        assert!(dog.stalled(asked).is_empty());
    }

    #[test]
    fn a_partition_without_a_position_waits_for_its_first_message() {
        let t0 = Instant::now();
        let mut dog = Watchdog::default();
        let held = held("checks", &[2]);
        dog.observe(&report("checks", &[(2, -1001, 0)]), &held, t0);
        let asked = t0 + SUSPECT_AFTER;
        dog.answered(&key("checks", 2), -1001, (10, 50), asked);
        let stalls = dog.stalled(asked);
        assert_eq!(stalls[0].position, None);
        assert!(stalls[0]
            .to_string()
            .contains("partition 2 (no position yet)"));

        // A partition given away is forgotten.
        dog.observe(&report("checks", &[(2, -1001, 0)]), &HashSet::new(), asked);
        assert!(dog.stalled(asked).is_empty());
    }
}
