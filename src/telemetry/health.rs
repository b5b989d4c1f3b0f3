//! Liveness and readiness: what `/health` and `/ready` answer.
//!
//! Liveness is the process running its pipeline: true from the start until shutdown begins.
//! It never depends on progress (lag, a slow database), since a restart cannot fix those and
//! only adds a rebalance.
//!
//! Readiness is each stage's: a stage reports problems by name (`no_partition`,
//! `writes_failing`…), each with how long it may last before it counts (a writer between two
//! rebalances holds no partition for a moment, which is no reason to page anyone), and clears
//! them when they are over. A stage that failed is not ready for good. The pipeline is ready
//! when every stage is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// The health of one pipeline run.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stages: Mutex<BTreeMap<String, StageState>>,
    running: AtomicBool,
    shutting_down: AtomicBool,
}

#[derive(Default)]
struct StageState {
    problems: BTreeMap<&'static str, Problem>,
    failed: Option<(String, SystemTime)>,
    /// How many problems there are, readable without the lock: clearing a problem that is not
    /// there (on every delivery, say) then costs one atomic load.
    active: Arc<AtomicUsize>,
}

struct Problem {
    reason: String,
    since: SystemTime,
    began: Instant,
    grace: Duration,
}

/// One stage's handle on its readiness; cheap to clone.
#[derive(Clone)]
pub struct StageHealth {
    health: Health,
    stage: Arc<str>,
    active: Arc<AtomicUsize>,
}

/// A stage as `/ready` shows it.
#[derive(Debug, Serialize)]
pub struct StageReport {
    /// The stage's id.
    pub stage: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Why not (or what is wrong but not yet for long enough to count), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The body of `/ready`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether every stage is ready (and the pipeline runs).
    pub ready: bool,
    /// Each stage, in id order.
    pub stages: Vec<StageReport>,
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StageState>> {
        self.inner
            .stages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The handle of stage `id`, which counts as ready until it says otherwise.
    pub fn stage(&self, id: &str) -> StageHealth {
        let active = Arc::clone(&self.lock().entry(id.to_owned()).or_default().active);
        StageHealth {
            health: self.clone(),
            stage: Arc::from(id),
            active,
        }
    }

    /// The pipeline has started.
    pub fn started(&self) {
        self.inner.running.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun (or the pipeline has ended): no longer live, no longer ready.
    pub fn shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// `/health`: the pipeline runs and is not shutting down.
    pub fn is_live(&self) -> bool {
        self.inner.running.load(Ordering::SeqCst)
            && !self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// `/ready`: every stage's state now.
    pub fn readiness(&self) -> Readiness {
        let now = Instant::now();
        let stages: Vec<StageReport> = self
            .lock()
            .iter()
            .map(|(id, state)| state.report(id, now))
            .collect();
        Readiness {
            ready: self.is_live() && stages.iter().all(|s| s.ready),
            stages,
        }
    }
}

impl StageState {
    fn report(&self, id: &str, now: Instant) -> StageReport {
        if let Some((reason, since)) = &self.failed {
            return StageReport {
                stage: id.to_owned(),
                ready: false,
                reason: Some(format!("failed: {reason}")),
                since: Some(rfc3339(*since)),
            };
        }
        // The problem that has lasted past its grace, else the oldest one still within it.
        let counted = self
            .problems
            .values()
            .filter(|p| now.duration_since(p.began) >= p.grace)
            .min_by_key(|p| p.began);
        let pending = self.problems.values().min_by_key(|p| p.began);
        let shown = counted.or(pending);
        StageReport {
            stage: id.to_owned(),
            ready: counted.is_none(),
            reason: shown.map(|p| p.reason.clone()),
            since: shown.map(|p| rfc3339(p.since)),
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl StageHealth {
    fn update(&self, change: impl FnOnce(&mut StageState)) {
        let mut stages = self.health.lock();
        change(stages.entry(self.stage.to_string()).or_default());
    }

    /// Reports problem `key` (a fixed name), which makes the stage not ready once it has
    /// lasted `grace`. Reported again, it keeps its start and takes the new reason.
    pub fn problem(&self, key: &'static str, reason: impl Into<String>, grace: Duration) {
        self.problem_since(key, reason, grace, Instant::now());
    }

    /// As [`StageHealth::problem`], for a problem that began at `began` (the start of an
    /// attempt that took a while to fail, say).
    pub fn problem_since(
        &self,
        key: &'static str,
        reason: impl Into<String>,
        grace: Duration,
        began: Instant,
    ) {
        let reason = reason.into();
        let since = SystemTime::now() - began.elapsed();
        self.update(|state| match state.problems.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut known) => {
                known.get_mut().reason = reason;
            }
            std::collections::btree_map::Entry::Vacant(new) => {
                new.insert(Problem {
                    reason,
                    since,
                    began,
                    grace,
                });
                state.active.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    /// Problem `key` is over.
    pub fn resolved(&self, key: &'static str) {
        if self.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.update(|state| {
            if state.problems.remove(key).is_some() {
                state.active.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    /// The stage has failed: not ready for good.
    pub fn failed(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|state| state.failed = Some((reason, SystemTime::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_counts_only_after_its_grace_and_until_resolved() {
        let health = Health::default();
        health.started();
        let sink = health.stage("db");
        health.stage("probe");
        assert!(health.readiness().ready);

        sink.problem(
            "writes_failing",
            "connection refused",
            Duration::from_secs(3600),
        );
        let report = health.readiness();
        assert!(report.ready, "within its grace");
        assert_eq!(
            report.stages[0].reason.as_deref(),
            Some("connection refused")
        );

        sink.problem("queue_full", "the producer queue is full", Duration::ZERO);
        let report = health.readiness();
        assert!(!report.ready);
        assert_eq!(report.stages[0].stage, "db");
        assert_eq!(
            report.stages[0].reason.as_deref(),
            Some("the producer queue is full")
        );
        sink.resolved("queue_full");
        sink.resolved("writes_failing");
        assert!(health.readiness().ready);

        sink.failed("permission denied for table checks");
        let report = health.readiness();
        assert!(!report.ready);
        assert!(report.stages[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("failed: "));
    }

    #[test]
    fn liveness_ends_with_shutdown() {
        let health = Health::default();
        assert!(!health.is_live(), "not before the pipeline runs");
        health.started();
        assert!(health.is_live());
        health.shutting_down();
        assert!(!health.is_live() && !health.readiness().ready);
    }
}

/// `pipe_ready` and `pipe_stage_ready{stage}`: readiness as metrics, read at each scrape, so
/// dashboards and alerts see what `/ready` says.
#[derive(Debug)]
pub(super) struct ReadinessCollector(pub(super) Health);

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Health")
    }
}

impl prometheus_client::collector::Collector for ReadinessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let readiness = self.0.readiness();
        let ready = ConstGauge::new(i64::from(readiness.ready));
        let metric = encoder.encode_descriptor(
            "pipe_ready",
            "Whether the pipeline is ready (1) or not (0), as /ready says",
            None,
            MetricType::Gauge,
        )?;
        ready.encode(metric)?;
        let mut family = encoder.encode_descriptor(
            "pipe_stage_ready",
            "Whether a stage is ready (1) or not (0)",
            None,
            MetricType::Gauge,
        )?;
        for stage in &readiness.stages {
            let labels = vec![("stage", stage.stage.clone())];
            ConstGauge::new(i64::from(stage.ready)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
