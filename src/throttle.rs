//! Warnings that repeat while a fault lasts (a broker down, a topic missing), logged at most
//! once per period with how long the fault has lasted and how often it recurred, so that an
//! outage of an hour is a few dozen readable lines instead of thousands.
//!
//! It only decides *whether* to log; the caller logs, with its own message and fields.

use std::time::{Duration, Instant};

/// How often a repeated warning is logged at most.
pub const PERIOD: Duration = Duration::from_secs(30);

/// One kind of repeated warning.
#[derive(Debug)]
pub struct RepeatedWarning {
    period: Duration,
    /// The current streak: since when, when last logged, and occurrences since then.
    streak: Option<Streak>,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    since: Instant,
    last_seen: Instant,
    logged_at: Instant,
    unlogged: u64,
}

/// What to say when a warning is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// How long the fault has lasted, from its first occurrence in this streak.
    pub lasted: Duration,
    /// Occurrences this line stands for: this one and those not logged since the last line.
    pub occurrences: u64,
}

impl Default for RepeatedWarning {
    fn default() -> Self {
        Self::new(PERIOD)
    }
}

impl RepeatedWarning {
    /// A warning logged at most once per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            streak: None,
        }
    }

    /// Records an occurrence at `now`; `Some` when it should be logged. A streak ends (and the
    /// next occurrence is logged at once, as a new fault) after two periods without one.
    pub fn occurred(&mut self, now: Instant) -> Option<Report> {
        match &mut self.streak {
            Some(streak) if now.saturating_duration_since(streak.last_seen) < 2 * self.period => {
                streak.last_seen = now;
                streak.unlogged += 1;
                if now.saturating_duration_since(streak.logged_at) < self.period {
                    return None;
                }
                let report = Report {
                    lasted: now.saturating_duration_since(streak.since),
                    occurrences: streak.unlogged,
                };
                streak.logged_at = now;
                streak.unlogged = 0;
                Some(report)
            }
            _ => {
                self.streak = Some(Streak {
                    since: now,
                    last_seen: now,
                    logged_at: now,
                    unlogged: 0,
                });
                Some(Report {
                    lasted: Duration::ZERO,
                    occurrences: 1,
                })
            }
        }
    }

    /// The fault is over: how long it lasted, if there was one.
    pub fn cleared(&mut self, now: Instant) -> Option<Duration> {
        self.streak
            .take()
            .map(|streak| now.saturating_duration_since(streak.since))
    }

    /// Whether a streak is under way.
    pub fn is_active(&self) -> bool {
        self.streak.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_a_period_with_what_it_stood_for() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut warning = RepeatedWarning::new(Duration::from_secs(30));
        let logged: Vec<(u64, Report)> = (0..=130)
            .map(|s| s * 500) // every 500 ms for 65 s
            .filter_map(|ms| warning.occurred(at(ms)).map(|r| (ms, r)))
            .collect();
        let report = |secs: u64, occurrences| Report {
            lasted: Duration::from_secs(secs),
            occurrences,
        };
        assert_eq!(
            logged,
            [
                (0, report(0, 1)),
                (30_000, report(30, 60)),
                (60_000, report(60, 60))
            ]
        );
        assert_eq!(warning.cleared(at(65_000)), Some(Duration::from_secs(65)));
        assert!(!warning.is_active());
        assert_eq!(warning.cleared(at(66_000)), None);
    }

    #[test]
    fn a_quiet_spell_of_two_periods_starts_a_new_streak() {
        let start = Instant::now();
        let mut warning = RepeatedWarning::new(Duration::from_secs(30));
        assert!(warning.occurred(start).is_some());
        assert!(warning.occurred(start + Duration::from_secs(10)).is_none());
        let again = warning.occurred(start + Duration::from_secs(71));
        assert_eq!(
            again,
            Some(Report {
                lasted: Duration::ZERO,
                occurrences: 1
            })
        );
    }
}
