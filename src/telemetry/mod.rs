//! Metrics and health of one pipeline run: what `pipe run --http-addr` serves.
//!
//! Each run has its own [`Telemetry`]: a Prometheus registry (the `prometheus-client` crate,
//! which keeps no global state, so tests and embedded pipelines never mix their figures) and
//! its [`Health`]. Stages take their metrics from it when they are built
//! ([`crate::BuildContext::telemetry`]), keep the handles (atomics behind an `Arc`) and count
//! where the event happens; the executor counts what crosses each stage's channels.
//!
//! Names are a public contract, listed in `docs/metrics.md`: the prefix `pipe_`, base units
//! (seconds, bytes), `_total` on counters, and labels from bounded sets (stage ids, outcome
//! kinds, target names only where `per_target_metrics` asks for them), never a URL's user
//! information or a header's value.
//!
//! The registry encodes OpenMetrics text; Prometheus' own text format (0.0.4), which scrapers
//! and `promtool` read by default, differs in three ways that [`to_prometheus_text`] undoes:
//! no `# UNIT` and `# EOF` lines, and a counter's family named with its `_total`.

pub mod health;
mod process;
pub mod server;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

pub use health::{Health, StageHealth};

/// Labels: pairs of a fixed name and a value from a bounded set.
pub type Labels = Vec<(&'static str, String)>;

/// A family of counters by label set.
pub type CounterFamily = Family<Labels, Counter>;
/// A family of gauges by label set.
pub type GaugeFamily = Family<Labels, Gauge>;
/// A family of floating-point gauges by label set.
pub type FloatGaugeFamily = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
/// A family of histograms by label set, all with the same buckets.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The metrics and health of one pipeline run. Cheap to clone: every clone is the same run's.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
    health: Health,
}

struct Inner {
    registry: Mutex<Registry>,
    /// Families by name, so that every stage of one type shares one family.
    families: Mutex<HashMap<String, Box<dyn Any + Send>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text exposition format 0.0.4, the default.
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper whose `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }
}

/// Seconds, for a histogram of response or write times: 1 ms to 60 s.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// Seconds, for how late something arrives: 100 ms to a day, as a writer catching up on a
/// backlog may be hours behind.
pub const LATENESS_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0,
];

fn lateness_histogram() -> Histogram {
    Histogram::new(LATENESS_BUCKETS)
}

impl Telemetry {
    /// A fresh registry with the process's metrics, and a fresh health.
    pub fn new() -> Self {
        let telemetry = Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::default()),
                families: Mutex::default(),
            }),
            health: Health::default(),
        };
        telemetry.register_collector(Box::new(process::ProcessCollector::new()));
        telemetry.register_collector(Box::new(health::ReadinessCollector(
            telemetry.health.clone(),
        )));
        telemetry
            .gauges("pipe_build_info", "The running version of pipe: always 1.")
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        telemetry
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The run's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The metric registered as `name`, registering `make()` first if there is none yet.
    /// `name` excludes the unit and, for counters, `_total`, which the encoder appends.
    fn shared<M: Metric + Clone>(
        &self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        make: impl FnOnce() -> M,
    ) -> M {
        let mut families = self
            .inner
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = families.get(name).and_then(|m| m.downcast_ref::<M>()) {
            return existing.clone();
        }
        let metric = make();
        // The encoder ends every help text with a period of its own.
        let help = help.trim_end_matches('.');
        match unit {
            Some(unit) => self
                .registry()
                .register_with_unit(name, help, unit, metric.clone()),
            None => self.registry().register(name, help, metric.clone()),
        }
        families.insert(name.to_owned(), Box::new(metric.clone()));
        metric
    }

    /// The counter family `name` (written `name_total`).
    pub fn counters(&self, name: &str, help: &str) -> CounterFamily {
        self.shared(name, help, None, CounterFamily::default)
    }

    /// `pipe_stage_errors_total{stage, type, kind}`: every stage's errors, by a kind from a
    /// set fixed by its type (`failed` for a stage that stopped with an error).
    pub fn stage_errors(&self) -> CounterFamily {
        self.counters(
            "pipe_stage_errors",
            "Errors of a stage, by kind (`failed`: the stage stopped with an error).",
        )
    }

    /// The gauge family `name`.
    pub fn gauges(&self, name: &str, help: &str) -> GaugeFamily {
        self.shared(name, help, None, GaugeFamily::default)
    }

    /// The floating-point gauge family `name` (`unit` appended).
    pub fn float_gauges(&self, name: &str, help: &str, unit: Option<Unit>) -> FloatGaugeFamily {
        self.shared(name, help, unit, FloatGaugeFamily::default)
    }

    /// The histogram family `name_seconds`, with [`SECONDS_BUCKETS`].
    pub fn seconds_histograms(&self, name: &str, help: &str) -> HistogramFamily {
        self.shared(name, help, Some(Unit::Seconds), || {
            HistogramFamily::new_with_constructor(seconds_histogram)
        })
    }

    /// The histogram family `name_seconds`, with [`LATENESS_BUCKETS`].
    pub fn lateness_histograms(&self, name: &str, help: &str) -> HistogramFamily {
        self.shared(name, help, Some(Unit::Seconds), || {
            HistogramFamily::new_with_constructor(lateness_histogram)
        })
    }

    /// Adds a collector, asked for its metrics at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry())
            .expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => text,
            Format::Prometheus => to_prometheus_text(&text),
        }
    }
}

/// The labels of a stage's own metrics.
pub fn stage_labels(stage: &str, type_name: &str) -> Labels {
    vec![("stage", stage.to_owned()), ("type", type_name.to_owned())]
}

/// `labels` with one more pair.
pub fn with(labels: &Labels, name: &'static str, value: impl Into<String>) -> Labels {
    let mut labels = labels.clone();
    labels.push((name, value.into()));
    labels
}

/// OpenMetrics text as Prometheus' text format 0.0.4 has it.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        // A family starts with its HELP, then its TYPE: a counter's are renamed together.
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap_or_default();
            let counter = lines
                .peek()
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if counter {
                lines.next();
                let text = &help[name.len()..];
                out.push_str(&format!(
                    "# HELP {name}_total{text}\n# TYPE {name}_total counter\n"
                ));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_per_name_whoever_asks() {
        let telemetry = Telemetry::new();
        let a = telemetry.counters("pipe_test_events", "Events.");
        let b = telemetry.counters("pipe_test_events", "Events.");
        a.get_or_create(&vec![("stage", "a".to_owned())]).inc();
        b.get_or_create(&vec![("stage", "a".to_owned())]).inc();
        let text = telemetry.encode(Format::Prometheus);
        assert!(
            text.contains("pipe_test_events_total{stage=\"a\"} 2\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE pipe_test_events_total counter")
                .count(),
            1
        );
    }

    #[test]
    fn the_two_formats_differ_only_where_the_specs_do() {
        let telemetry = Telemetry::new();
        telemetry
            .counters("pipe_test_things", "Things done.")
            .get_or_create(&Vec::new())
            .inc();
        telemetry
            .seconds_histograms("pipe_test_wait", "Waits.")
            .get_or_create(&Vec::new())
            .observe(0.2);
        let open = telemetry.encode(Format::OpenMetrics);
        assert!(open.contains("# TYPE pipe_test_things counter\n"), "{open}");
        assert!(open.contains("# UNIT pipe_test_wait_seconds seconds\n"));
        assert!(open.ends_with("# EOF\n"));
        let text = telemetry.encode(Format::Prometheus);
        assert!(text.contains(
            "# HELP pipe_test_things_total Things done.\n# TYPE pipe_test_things_total counter\npipe_test_things_total{} 1\n"
        ), "{text}");
        assert!(text.contains("pipe_test_wait_seconds_bucket{le=\"0.25\"} 1\n"));
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    }
}
