//! What `http_probe` counts: checks by outcome, response and phase times, start lateness,
//! missed slots and checks in flight; and, with `per_target_metrics`, each target's last check
//! as gauges, as blackbox_exporter gives them (`probe_success`, `probe_duration_seconds`).
//!
//! Outcomes are the probe's own verdict; `regex_match` and `latency`, later in the pipeline,
//! may still lower `up`.

use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::monitor::check::{CheckResult, Timings};
use crate::registry::BuildContext;
use crate::telemetry::{self, FloatGaugeFamily, GaugeFamily, Labels};

/// Every reason a check can be up or down for, so that each series exists from the start
/// (a rate over a series that appears late starts from nothing) and a check is counted
/// without building labels.
const REASONS: [(bool, &str); 16] = [
    (true, "ok"),
    (false, "timeout"),
    (false, "dns"),
    (false, "connect"),
    (false, "tls"),
    (false, "too_many_redirects"),
    (false, "body_too_large"),
    (false, "other"),
    (false, "status_1xx"),
    (false, "status_2xx"),
    (false, "status_3xx"),
    (false, "status_4xx"),
    (false, "status_5xx"),
    (false, "status_other"),
    (false, "certificate"),
    (false, "probe_fault"),
];

/// The stage's metrics, shared by all its checks.
pub(super) struct ProbeMetrics {
    labels: Labels,
    /// `pipe_probe_checks_total` by (up, reason).
    checks: HashMap<(bool, &'static str), Counter>,
    response: Histogram,
    /// dns, connect, tls, first_byte, transfer.
    phases: [Histogram; 5],
    lateness: Histogram,
    pub(super) missed_slots: Counter,
    pub(super) in_flight: Gauge,
    /// Targets this checker schedules now (its share of a fleet's, with `targets_topic`).
    pub(super) targets: Gauge,
    /// Slots of targets taken over from a fleet member that no one checked.
    pub(super) handover_gap_slots: Counter,
    /// Records of the targets topic skipped as invalid.
    pub(super) target_errors: Counter,
    /// 1 while the canaries' last verdict is that the checker's own network is down.
    pub(super) network_down: Gauge,
    per_target: Option<(GaugeFamily, FloatGaugeFamily, GaugeFamily, FloatGaugeFamily)>,
}

/// One target's gauges, made once when the stage is built; the certificate's only once the
/// target has presented one, so that a plain-HTTP target (or one never reached) shows no end
/// of validity at 0, which an expiry alert would take for long past.
#[derive(Debug)]
pub(super) struct TargetGauges {
    up: Gauge,
    response: Gauge<f64, std::sync::atomic::AtomicU64>,
    status: Gauge,
    cert_family: FloatGaugeFamily,
    labels: Labels,
    cert_expiry: std::sync::OnceLock<Gauge<f64, std::sync::atomic::AtomicU64>>,
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
        let family = telemetry.counters(
            "pipe_probe_checks",
            "Checks made, by outcome (up, down) and reason (ok, an error kind, status_Nxx, certificate, probe_fault).",
        );
        let checks = REASONS
            .iter()
            .map(|&(up, reason)| {
                let mut labels =
                    telemetry::with(&labels, "outcome", if up { "up" } else { "down" });
                labels.push(("reason", reason.to_owned()));
                ((up, reason), family.get_or_create(&labels).clone())
            })
            .collect();
        Self {
            checks,
            response: telemetry
                .seconds_histograms(
                    "pipe_probe_response",
                    "Total time of a check, failed ones too.",
                )
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
            targets: telemetry
                .gauges("pipe_probe_targets", "Targets this checker schedules now.")
                .get_or_create(&labels)
                .clone(),
            handover_gap_slots: telemetry
                .counters(
                    "pipe_probe_handover_gap_slots",
                    "Slots of targets taken over from another fleet member that neither checked.",
                )
                .get_or_create(&labels)
                .clone(),
            target_errors: telemetry
                .counters(
                    "pipe_probe_target_errors",
                    "Records of the targets topic skipped because they are not valid targets.",
                )
                .get_or_create(&labels)
                .clone(),
            network_down: telemetry
                .gauges(
                    "pipe_probe_network_down",
                    "Whether the canaries last said this checker's own network is down (1) or not (0).",
                )
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
            cert_family: cert.clone(),
            labels,
            cert_expiry: std::sync::OnceLock::new(),
        })
    }

    /// Counts a finished check; `reason` is one of [`REASONS`].
    pub(super) fn record(
        &self,
        result: &CheckResult,
        reason: &'static str,
        target: Option<&TargetGauges>,
    ) {
        match self.checks.get(&(result.up, reason)) {
            Some(counter) => {
                counter.inc();
            }
            None => debug_assert!(false, "an unlisted reason: {reason} (up: {})", result.up),
        }
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
        // A probe fault says nothing of the target: its gauges keep its last real check.
        if let Some(gauges) = target.filter(|_| !result.probe_fault) {
            gauges.up.set(i64::from(result.up));
            gauges.response.set(seconds);
            gauges.status.set(result.status_code.map_or(0, i64::from));
            if let Some(tls) = &result.tls {
                let end = tls
                    .cert_not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                gauges
                    .cert_expiry
                    .get_or_init(|| gauges.cert_family.get_or_create(&gauges.labels).clone())
                    .set(end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::check::ErrorKind;

    #[test]
    fn every_reason_the_probe_gives_is_listed() {
        let kinds = [
            ErrorKind::Timeout,
            ErrorKind::Dns,
            ErrorKind::Connect,
            ErrorKind::Tls,
            ErrorKind::TooManyRedirects,
            ErrorKind::BodyTooLarge,
            ErrorKind::Other,
        ];
        for kind in kinds {
            assert!(REASONS.contains(&(false, kind.as_str())), "{kind:?}");
        }
        for code in [100, 200, 302, 404, 503, 600] {
            assert!(REASONS.contains(&(false, super::super::probe::status_class(code))));
        }
    }
}
