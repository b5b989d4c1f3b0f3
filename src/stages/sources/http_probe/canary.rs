//! Canaries: sites the checker itself must be able to reach (`canary:`). When a check fails
//! without a response (a timeout, a DNS failure, a refused connection) the probe asks them,
//! and if none answers either the fault is the checker's own network: the result is marked
//! `probe_fault` instead of counting the target as down.
//!
//! One verdict serves every failure around the same time: an outage of the checker's network
//! fails thousands of checks at once, and asking the canaries once per failure would add
//! thousands of requests to a network that is already down. The verdict is made by one check
//! of all canaries at a time (callers wait for it under the lock) and kept for [`FRESH`].

use std::time::Duration;

use slog::{info, warn};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::monitor::check::{CheckResult, ErrorKind};
use crate::monitor::libcurl::Agent;

use super::metrics::ProbeMetrics;
use super::target::Target;

/// How long a verdict holds. Short against an outage (minutes), long against a burst of
/// failures (one per target, within a second or two).
pub(super) const FRESH: Duration = Duration::from_secs(5);

/// Canary bodies are not read: any response at all says the network works.
const MAX_BODY_BYTES: u64 = 0;

pub(super) struct Canaries {
    targets: Vec<Target>,
    /// When the last verdict was made, and whether it found the network down.
    verdict: Mutex<Option<(Instant, bool)>>,
}

impl Canaries {
    /// `None` without canaries: then no result is ever a probe fault.
    pub(super) fn new(targets: Vec<Target>) -> Option<Self> {
        (!targets.is_empty()).then(|| Self {
            targets,
            verdict: Mutex::new(None),
        })
    }

    /// Whether `result` is a probe fault: it failed in a way the checker's own network could
    /// cause, and no canary answers.
    pub(super) async fn judge(
        &self,
        result: &CheckResult,
        agent: &Agent,
        metrics: &ProbeMetrics,
        logger: &slog::Logger,
    ) -> bool {
        could_be_the_network(result) && self.network_down(agent, metrics, logger).await
    }

    async fn network_down(
        &self,
        agent: &Agent,
        metrics: &ProbeMetrics,
        logger: &slog::Logger,
    ) -> bool {
        let mut verdict = self.verdict.lock().await;
        if let Some((at, down)) = *verdict {
            if at.elapsed() < FRESH {
                return down;
            }
        }
        let checks = self.targets.iter().map(|canary| async move {
            // Not through `probe`'s result: a canary's status, whatever it is, is an answer.
            let request = canary.request(true, MAX_BODY_BYTES, false);
            let deadline = canary.timeout + super::probe::TIMEOUT_SLACK;
            match tokio::time::timeout(deadline, agent.transfer(request)).await {
                Ok(Some(outcome)) => outcome.status.is_some(),
                Ok(None) | Err(_) => false,
            }
        });
        let answered = futures::future::join_all(checks).await;
        let down = !answered.contains(&true);
        let was_down = verdict.is_some_and(|(_, down)| down);
        if down && !was_down {
            warn!(logger, "no canary answers: this checker's network is down, and its failed checks are marked probe_fault";
                  "canaries" => self.targets.len());
        } else if !down && was_down {
            info!(
                logger,
                "a canary answers again: failed checks count against their targets"
            );
        }
        metrics.network_down.set(i64::from(down));
        *verdict = Some((Instant::now(), down));
        down
    }
}

/// A failure the checker's own network could cause: no response at all, for want of a name,
/// a connection or time. A response (any status), a TLS failure or a bad body says the
/// network reached the site.
fn could_be_the_network(result: &CheckResult) -> bool {
    result.status_code.is_none()
        && result.error.as_ref().is_some_and(|e| {
            matches!(
                e.kind,
                ErrorKind::Timeout | ErrorKind::Dns | ErrorKind::Connect
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::check::CheckError;

    fn failed(kind: Option<ErrorKind>, status_code: Option<u16>) -> CheckResult {
        let mut result: CheckResult = serde_json::from_value(serde_json::json!({
            "schema_version": 1,
            "check_id": "00000000-0000-0000-0000-000000000000",
            "target": "t", "url": "https://t.example/", "method": "GET",
            "scheduled_at": "2026-12-01T00:00:00.000Z", "started_at": "2026-12-01T00:00:00.000Z",
            "response_time_ms": 1.0, "timings_ms": {}, "status_code": null, "error": null,
            "regex": null, "regex_matched": null, "latency_class": null, "up": false,
            "body_bytes": null, "remote_addr": null, "http_version": null
        }))
        .unwrap();
        result.status_code = status_code;
        result.error = kind.map(|kind| CheckError {
            kind,
            message: String::new(),
        });
        result
    }

    #[test]
    fn only_failures_without_a_response_may_be_the_network() {
        for kind in [ErrorKind::Timeout, ErrorKind::Dns, ErrorKind::Connect] {
            assert!(could_be_the_network(&failed(Some(kind), None)), "{kind:?}");
        }
        for kind in [
            ErrorKind::Tls,
            ErrorKind::TooManyRedirects,
            ErrorKind::BodyTooLarge,
            ErrorKind::Other,
        ] {
            assert!(!could_be_the_network(&failed(Some(kind), None)), "{kind:?}");
        }
        // A timeout while the body came: the site answered.
        assert!(!could_be_the_network(&failed(
            Some(ErrorKind::Timeout),
            Some(200)
        )));
        // Down by its status: the site answered.
        assert!(!could_be_the_network(&failed(None, Some(503))));
    }
}
