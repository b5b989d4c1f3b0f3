//! `latency`: classifies each check's total response time as `ok`, `slow` or `critical`.
//!
//! Thresholds are stage-wide with per-target overrides. With `down_when`, a slow (or critical)
//! check also counts as down. Events without `response_time_ms` pass through untouched.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::event::Event;
use crate::monitor::check::{millis, LatencyClass};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Transform};

/// Which latency class makes a check count as down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownWhen {
    /// Latency never changes `up`.
    #[default]
    Never,
    /// `slow` and `critical` checks are down.
    Slow,
    /// `critical` checks are down.
    Critical,
}

/// Thresholds of one target, over the stage's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Overrides the stage's `slow` for this target.
    #[serde(default, with = "duration::option")]
    pub slow: Option<Duration>,
    /// Overrides the stage's `critical` for this target.
    #[serde(default, with = "duration::option")]
    pub critical: Option<Duration>,
}

/// The settings of the `latency` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// A check taking at least this long is `slow`.
    #[serde(with = "duration")]
    pub slow: Duration,
    /// A check taking at least this long is `critical`; at least `slow`.
    #[serde(with = "duration")]
    pub critical: Duration,
    /// Per-target thresholds, keyed by target name.
    #[serde(default)]
    pub overrides: BTreeMap<String, Thresholds>,
    /// `never` (default), `slow` or `critical`: which class also sets `up` to false.
    #[serde(default)]
    pub down_when: DownWhen,
}

impl StageConfig for LatencyConfig {
    const TYPE: &'static str = "latency";
    const DESCRIPTION: &'static str =
        "sets latency_class (ok, slow, critical) from response_time_ms, optionally lowering up";
    type Stage = dyn Transform;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let check = |slow: Duration, critical: Duration, at: String| {
            (critical < slow).then(|| {
                ConfigError::at(
                    at,
                    format!(
                        "`critical` ({}) is shorter than `slow` ({})",
                        duration::format(critical),
                        duration::format(slow)
                    ),
                )
            })
        };
        errors.extend(check(self.slow, self.critical, "critical".into()));
        let mut overrides = BTreeMap::new();
        for (target, thresholds) in self.overrides {
            let slow = thresholds.slow.unwrap_or(self.slow);
            let critical = thresholds.critical.unwrap_or(self.critical);
            errors.extend(check(slow, critical, format!("overrides.{target}")));
            overrides.insert(target, (millis(slow), millis(critical)));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Box::new(Latency {
            slow_ms: millis(self.slow),
            critical_ms: millis(self.critical),
            overrides,
            down_when: self.down_when,
        }))
    }
}

struct Latency {
    slow_ms: f64,
    critical_ms: f64,
    overrides: BTreeMap<String, (f64, f64)>,
    down_when: DownWhen,
}

impl Latency {
    /// The class of `elapsed` for `target`, and whether it makes the check down.
    fn classify(&self, target: Option<&str>, elapsed: f64) -> (LatencyClass, bool) {
        let (slow, critical) = target
            .and_then(|target| self.overrides.get(target))
            .copied()
            .unwrap_or((self.slow_ms, self.critical_ms));
        let class = if elapsed >= critical {
            LatencyClass::Critical
        } else if elapsed >= slow {
            LatencyClass::Slow
        } else {
            LatencyClass::Ok
        };
        let down = match self.down_when {
            DownWhen::Never => false,
            DownWhen::Slow => class != LatencyClass::Ok,
            DownWhen::Critical => class == LatencyClass::Critical,
        };
        (class, down)
    }
}

impl Transform for Latency {
    fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        let mut check = event.check_view();
        // Events without a response time (not checks) pass through untouched.
        if let Some(elapsed) = check.response_time_ms() {
            let (class, down) = self.classify(check.target(), elapsed);
            check.set_latency_class(class);
            if down {
                check.set_down();
            }
        }
        out.push(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn build(yaml: &str) -> Result<Box<dyn Transform>, Vec<ConfigError>> {
        let cx = BuildContext::new("speed", ".", slog::Logger::root(slog::Discard, slog::o!()));
        serde_norway::from_str::<LatencyConfig>(yaml)
            .unwrap()
            .build(&cx)
    }

    fn classify(stage: &mut Box<dyn Transform>, target: &str, ms: f64) -> (Value, Value) {
        let event = Event::new(
            json!({"target": target, "response_time_ms": ms, "up": true})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut out = Vec::new();
        stage.transform(event, &mut out).unwrap();
        let event = out.pop().unwrap();
        (
            event.get("latency_class").cloned().unwrap(),
            event.get("up").cloned().unwrap(),
        )
    }

    #[test]
    fn classes_follow_the_thresholds_and_overrides() {
        let mut stage = build("slow: 500ms\ncritical: 2s\noverrides:\n  api: { slow: 100ms }\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            classify(&mut stage, "web", 499.9),
            (json!("ok"), json!(true))
        );
        assert_eq!(
            classify(&mut stage, "web", 500.0),
            (json!("slow"), json!(true))
        );
        assert_eq!(
            classify(&mut stage, "web", 2000.0),
            (json!("critical"), json!(true))
        );
        assert_eq!(
            classify(&mut stage, "api", 150.0),
            (json!("slow"), json!(true))
        );
    }

    #[test]
    fn down_when_lowers_up() {
        let mut stage = build("slow: 500ms\ncritical: 2s\ndown_when: critical\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            classify(&mut stage, "web", 600.0),
            (json!("slow"), json!(true))
        );
        assert_eq!(
            classify(&mut stage, "web", 2500.0),
            (json!("critical"), json!(false))
        );
        let mut stage = build("slow: 500ms\ncritical: 2s\ndown_when: slow\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            classify(&mut stage, "web", 600.0),
            (json!("slow"), json!(false))
        );
    }

    #[test]
    fn critical_below_slow_is_refused() {
        let errors = build("slow: 2s\ncritical: 1s\noverrides:\n  api: { critical: 100ms }\n")
            .err()
            .unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("critical"));
        assert_eq!(
            errors[0].message,
            "`critical` (1s) is shorter than `slow` (2s)"
        );
        assert_eq!(errors[1].field.as_deref(), Some("overrides.api"));
    }
}
