//! What `http_probe` counts: checks by outcome, response and phase times, start lateness,
//! missed slots and checks in flight; and, with `per_target_metrics`, each target's last check
//! as gauges, as blackbox_exporter gives them (`probe_success`, `probe_duration_seconds`).
//!
//! Outcomes are the probe's own verdict; `regex_match` and `latency`, later in the pipeline,
//! may still lower `up`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::check::{CheckResult, Timings};
use crate::registry::BuildContext;
use crate::telemetry::{self, CounterFamily, FloatGaugeFamily, GaugeFamily, Labels};

/// The stage's metrics, shared by all its checks.
pub(super) struct ProbeMetrics {
    labels: Labels,
    checks: CounterFamily,
    response: Histogram,
    /// dns, connect, tls, first_byte, transfer.
    phases: [Histogram; 5],
    lateness: Histogram,
    pub(super) missed_slots: Counter,
    pub(super) in_flight: Gauge,
    per_target: Option<(GaugeFamily, FloatGaugeFamily, GaugeFamily, FloatGaugeFamily)>,
}

/// One target's gauges, made once when the stage is built.
#[derive(Debug)]
pub(super) struct TargetGauges {
    up: Gauge,
    response: Gauge<f64, std::sync::atomic::AtomicU64>,
    status: Gauge,
    cert_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
}

const PHASES: [&str; 5] = ["dns", "connect", "tls", "first_byte", "transfer"];

impl ProbeMetrics {
    pub(super) fn new(cx: &BuildContext, per_target_metrics: bool) -> Self {
        let telemetry = &cx.telemetry;
        let labels = cx.labels();
        let phase_family = telemetry.seconds_histograms(
            "pipe_probe_phase",
            "Time each phase of a check took (dns, connect, tls, first_byte, transfer).",
        );
        let phases = PHASES.map(|phase| {
            phase_family
                .get_or_create(&telemetry::with(&labels, "phase", phase))
                .clone()
        });
        let per_target = per_target_metrics.then(|| {
            (
                telemetry.gauges(
                    "pipe_probe_target_up",
                    "Whether the target's last check was up (1) or down (0).",
                ),
                telemetry.float_gauges(
                    "pipe_probe_target_response",
                    "The response time of the target's last check.",
                    Some(prometheus_client::registry::Unit::Seconds),
                ),
                telemetry.gauges(
                    "pipe_probe_target_status_code",
                    "The status code of the target's last check; 0 without a response.",
                ),
                telemetry.float_gauges(
                    "pipe_probe_target_cert_not_after",
                    "When the certificate the target last presented ends, in seconds since the Unix epoch.",
                    Some(prometheus_client::registry::Unit::Seconds),
                ),
            )
        });
        Self {
            checks: telemetry.counters(
                "pipe_probe_checks",
                "Checks made, by outcome (up, down) and reason (ok, an error kind, status_Nxx, certificate).",
            ),
            response: telemetry
                .seconds_histograms("pipe_probe_response", "Total time of a check, failed ones too.")
                .get_or_create(&labels)
                .clone(),
            phases,
            lateness: telemetry
                .seconds_histograms(
                    "pipe_probe_start_lateness",
                    "How late a check started after its slot (started_at - scheduled_at).",
                )
                .get_or_create(&labels)
                .clone(),
            missed_slots: telemetry
                .counters(
                    "pipe_probe_missed_slots",
                    "Slots skipped because the target's previous check still ran.",
                )
                .get_or_create(&labels)
                .clone(),
            in_flight: telemetry
                .gauges("pipe_probe_checks_in_flight", "Checks running now.")
                .get_or_create(&labels)
                .clone(),
            per_target,
            labels,
        }
    }

    /// The gauges of target `name` (already free of secrets), when `per_target_metrics` is on.
    pub(super) fn target(&self, name: &str) -> Option<TargetGauges> {
        let (up, response, status, cert) = self.per_target.as_ref()?;
        let labels = telemetry::with(&self.labels, "target", name);
        Some(TargetGauges {
            up: up.get_or_create(&labels).clone(),
            response: response.get_or_create(&labels).clone(),
            status: status.get_or_create(&labels).clone(),
            cert_expiry: cert.get_or_create(&labels).clone(),
        })
    }

    /// Counts a finished check.
    pub(super) fn record(
        &self,
        result: &CheckResult,
        reason: &'static str,
        target: Option<&TargetGauges>,
    ) {
        let outcome = if result.up { "up" } else { "down" };
        let mut labels = telemetry::with(&self.labels, "outcome", outcome);
        labels.push(("reason", reason.to_owned()));
        self.checks.get_or_create(&labels).inc();
        let seconds = result.response_time_ms / 1000.0;
        self.response.observe(seconds);
        let Timings {
            dns,
            connect,
            tls,
            first_byte,
            transfer,
        } = &result.timings_ms;
        for (histogram, phase) in self
            .phases
            .iter()
            .zip([dns, connect, tls, first_byte, transfer])
        {
            if let Some(ms) = phase {
                histogram.observe(ms / 1000.0);
            }
        }
        let late = result
            .started_at
            .duration_since(result.scheduled_at)
            .unwrap_or_default();
        self.lateness.observe(late.as_secs_f64());
        if let Some(gauges) = target {
            gauges.up.set(i64::from(result.up));
            gauges.response.set(seconds);
            gauges.status.set(result.status_code.map_or(0, i64::from));
            if let Some(tls) = &result.tls {
                let end = tls
                    .cert_not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                gauges.cert_expiry.set(end);
            }
        }
    }
}
