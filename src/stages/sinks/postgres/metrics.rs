//! What the `postgres` sink counts (`docs/metrics.md`).

use crate::registry::BuildContext;
use crate::telemetry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::write::Written;

/// What the sink counts (`docs/metrics.md`).
pub(super) struct SinkMetrics {
    pub(super) stored: Counter,
    pub(super) dead_letters: Counter,
    pub(super) retries: Counter,
    pub(super) errors_transient: Counter,
    pub(super) errors_permanent: Counter,
    pub(super) write_seconds: Histogram,
    pub(super) freshness: Histogram,
}

impl SinkMetrics {
    pub(super) fn new(cx: &BuildContext) -> Self {
        let labels = cx.labels();
        let telemetry = &cx.telemetry;
        let errors = telemetry.stage_errors();
        let error = |kind: &str| {
            errors
                .get_or_create(&telemetry::with(&labels, "kind", kind))
                .clone()
        };
        Self {
            stored: telemetry
                .counters(
                    "pipe_postgres_stored_rows",
                    "Checks stored (a redelivered check already there is not counted).",
                )
                .get_or_create(&labels)
                .clone(),
            dead_letters: telemetry
                .counters(
                    "pipe_postgres_dead_letters",
                    "Messages or rows stored in dead_letters instead of checks.",
                )
                .get_or_create(&labels)
                .clone(),
            retries: telemetry
                .counters(
                    "pipe_postgres_retries",
                    "Database steps tried again after a transient failure.",
                )
                .get_or_create(&labels)
                .clone(),
            errors_transient: error("database_transient"),
            errors_permanent: error("database_permanent"),
            write_seconds: telemetry
                .seconds_histograms(
                    "pipe_postgres_batch_write",
                    "Time one attempt at a database step took, a batch's transaction included.",
                )
                .get_or_create(&labels)
                .clone(),
            freshness: telemetry
                .lateness_histograms(
                    "pipe_postgres_freshness",
                    "Time from a check's scheduled slot to the commit that stored it.",
                )
                .get_or_create(&labels)
                .clone(),
        }
    }

    pub(super) fn committed(&self, written: &Written) {
        self.stored.inc_by(written.stored.len() as u64);
        self.dead_letters.inc_by(written.dead_letters as u64);
        for scheduled in &written.stored {
            let age = written
                .committed_at
                .duration_since(*scheduled)
                .unwrap_or_default();
            self.freshness.observe(age.as_secs_f64());
        }
    }
}
