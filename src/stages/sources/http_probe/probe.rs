//! The probe at run time: slots scheduled per target, checks handed to the libcurl agent, and
//! every outcome (a response, a timeout, a refused connection, a bad certificate) turned into a
//! schema v1 result.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use slog::info;
use tokio::time::Instant;

use crate::config::duration;
use crate::event::Event;
use crate::monitor::check::{
    self, CheckError, CheckResult, ErrorKind, Timings, TlsInfo, SCHEMA_VERSION,
};
use crate::monitor::fleet::Membership;
use crate::monitor::libcurl::{self, Agent, Outcome, Times};
use crate::monitor::schedule::{self, Clock, Command, Entry};
use crate::registry::BuildContext;
use crate::stage::{BoxError, Source, SourceContext};
use tokio::sync::mpsc;

use super::canary::Canaries;
use super::config::*;
use super::fleet::{delivery_channel, Deliveries, Handover, TargetCommand, TargetsOwner};
use super::metrics::ProbeMetrics;
use super::target::Target;

/// What a fleet member needs at run time (`targets_topic`).
pub(super) struct FleetSetup {
    pub(super) membership: Membership,
    pub(super) handover: Option<Handover>,
    /// The stage's settings and build context, to resolve the topic's targets as the file's.
    pub(super) stage: Arc<HttpProbeConfig>,
    pub(super) default_status: Option<StatusSet>,
    pub(super) cx: BuildContext,
}

pub(super) struct HttpProbe {
    pub(super) targets: Vec<Target>,
    pub(super) fleet: Option<FleetSetup>,
    pub(super) region: Option<String>,
    pub(super) checker: String,
    pub(super) metrics: Arc<ProbeMetrics>,
    /// Sites the checker must reach, asked when a check fails without a response.
    pub(super) canaries: Option<Arc<Canaries>>,
    /// Target `i` is always checked by agent `i % agents.len()`.
    pub(super) agents: Vec<Agent>,
    pub(super) reuse_connections: bool,
    pub(super) concurrency: usize,
    pub(super) max_body_bytes: u64,
    pub(super) keep_bodies: bool,
}

#[async_trait]
impl Source for HttpProbe {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), BoxError> {
        let HttpProbe {
            targets,
            fleet,
            agents,
            region,
            checker,
            metrics,
            canaries,
            reuse_connections,
            concurrency,
            max_body_bytes,
            keep_bodies,
        } = *self;
        let clock = Clock::new();
        let metrics = Arc::new(metrics);
        metrics.targets.set(targets.len() as i64);
        let initial: Vec<TargetCommand> = targets
            .into_iter()
            .map(|t| Command::Upsert {
                name: Arc::from(t.name.as_str()),
                entry: Entry {
                    interval: t.interval,
                    offset: schedule::offset(&t.name, t.interval),
                },
                first_ms: None,
                item: Arc::new(t),
            })
            .collect();

        // A fleet member: its targets come and go through commands from the membership
        // thread, and its results are tracked until the sink has them, for hand-overs.
        let stop = cx.shutdown.child_token();
        let mut commands = None;
        let mut member = None;
        let mut tracker = None;
        let deliveries = Arc::new(Deliveries::default());
        if let Some(setup) = fleet {
            let (tx, rx) = mpsc::unbounded_channel();
            commands = Some(rx);
            let (acks_tracker, acks) = delivery_channel();
            tracker = Some(acks_tracker);
            tokio::spawn(Arc::clone(&deliveries).follow(acks));
            let owner = TargetsOwner {
                fixed: initial
                    .iter()
                    .filter_map(|c| match c {
                        Command::Upsert { name, .. } => Some(name.to_string()),
                        Command::Remove { .. } => None,
                    })
                    .collect(),
                stage: setup.stage,
                default_status: setup.default_status,
                cx: setup.cx,
                topic: setup.membership.access.topic.clone(),
                commands: tx,
                deliveries: Arc::clone(&deliveries),
                handover: setup.handover,
                region: region.clone(),
                clock,
                metrics: Arc::clone(&metrics),
                longest_timeout: Duration::ZERO,
                held: Default::default(),
            };
            let membership = setup.membership;
            let logger = cx.logger.clone();
            let leave = stop.clone();
            member = Some(
                std::thread::Builder::new()
                    .name(format!("{}-fleet", cx.id))
                    .spawn(move || {
                        let outcome = membership.run(owner, &logger, &leave);
                        // Without its membership the checker would check nothing of the fleet's.
                        leave.cancel();
                        outcome
                    })
                    .map_err(|e| format!("cannot start the fleet's thread: {e}"))?,
            );
        }

        let agents = Arc::new(agents);
        let identity = Arc::new((region, checker));
        let out = cx.out.clone();
        let logger = cx.logger.clone();

        let stats = schedule::run_dynamic(
            initial,
            commands,
            clock,
            concurrency,
            stop.clone(),
            schedule::MissedSlots {
                names: &[],
                logger: &cx.logger,
                counter: Some(&metrics.missed_slots),
            },
            |slot, target: &Arc<Target>| {
                let target = Arc::clone(target);
                let ack = tracker.as_mut().map(|tracker| {
                    deliveries.track(tracker, &Arc::from(target.name.as_str()), slot.scheduled_ms)
                });
                let agents = Arc::clone(&agents);
                let identity = Arc::clone(&identity);
                let metrics = Arc::clone(&metrics);
                let canaries = canaries.clone();
                let mut out = out.clone();
                let logger = logger.clone();
                async move {
                    let target = &*target;
                    let scheduled_at = Clock::time_at(slot.scheduled_ms);
                    let started_at = clock.now();
                    let keep_body = keep_bodies || target.regex.is_some();
                    let agent = &agents[slot.entry % agents.len()];
                    let request = target.request(!reuse_connections, max_body_bytes, keep_body);
                    metrics.in_flight.inc();
                    let (mut result, mut reason, body) = probe(agent, request, target).await;
                    if let Some(canaries) = &canaries {
                        if canaries.judge(&result, agent, &metrics, &logger).await {
                            result.probe_fault = true;
                            reason = "probe_fault";
                        }
                    }
                    metrics.in_flight.dec();
                    let (region, checker) = &*identity;
                    let result = CheckResult {
                        schema_version: SCHEMA_VERSION,
                        check_id: check::check_id_in(&target.name, scheduled_at, region.as_deref()),
                        target: target.name.clone(),
                        url: target.reported_url.clone(),
                        method: target.method.to_string(),
                        scheduled_at,
                        started_at,
                        region: region.clone(),
                        checker: Some(checker.clone()),
                        ..result
                    };
                    metrics.record(&result, reason, target.gauges.as_ref());
                    let mut event = Event::from_check(result);
                    if let Some(body) = body {
                        event = event.with_raw(body);
                    }
                    if let Some(ack) = ack {
                        event = event.with_ack(ack);
                    }
                    if out.send(event).await.is_err() {
                        slog::debug!(logger, "result dropped: the pipeline is stopping";
                                     "target" => &target.name);
                    }
                }
            },
        )
        .await;
        info!(cx.logger, "checks stopped"; "started" => stats.started, "missed_slots" => stats.missed);
        // The member leaves its fleet once its last results are handed to the pipeline.
        stop.cancel();
        if let Some(member) = member {
            let outcome = tokio::task::spawn_blocking(move || member.join())
                .await
                .map_err(|e| format!("the fleet's thread: {e}"))?;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("the fleet's membership failed: {e}").into()),
                Err(_) => return Err("the fleet's thread panicked".into()),
            }
        }
        Ok(())
    }
}

/// Extra time past a target's timeout before our own timer gives up on libcurl's.
pub(super) const TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// Runs one check. Fills in everything but the identity and time fields, which the caller sets;
/// also says why the check is up or down, for `pipe_probe_checks_total`.
async fn probe(
    agent: &Agent,
    request: libcurl::Request,
    target: &Target,
) -> (CheckResult, &'static str, Option<Bytes>) {
    let max_body_bytes = request.max_body_bytes;
    let started = Instant::now();
    let mut result = CheckResult {
        schema_version: SCHEMA_VERSION,
        check_id: uuid::Uuid::nil(),
        target: String::new(),
        url: String::new(),
        method: String::new(),
        scheduled_at: std::time::UNIX_EPOCH,
        started_at: std::time::UNIX_EPOCH,
        response_time_ms: 0.0,
        timings_ms: Timings::default(),
        status_code: None,
        error: None,
        regex: target.regex.clone(),
        regex_matched: None,
        latency_class: None,
        up: false,
        body_bytes: None,
        remote_addr: None,
        http_version: None,
        tls: None,
        region: None,
        checker: None,
        captures: None,
        probe_fault: false,
    };
    // libcurl enforces the timeout; our own deadline, a little later, only guards against a
    // transfer that never ends.
    let deadline = target.timeout + TIMEOUT_SLACK;
    let outcome = match tokio::time::timeout(deadline, agent.transfer(request)).await {
        Err(_) => {
            result.error = Some(timeout_error(target.timeout));
            None
        }
        Ok(None) => {
            result.error = Some(CheckError {
                kind: ErrorKind::Other,
                message: "libcurl's thread has stopped".to_owned(),
            });
            None
        }
        Ok(Some(outcome)) => Some(outcome),
    };
    let mut kept = None;
    let measured_total = outcome.as_ref().map(|o| o.times.total);
    if let Some(Outcome {
        result: transfer,
        body_too_large,
        status,
        http_version,
        remote_addr,
        body_bytes,
        body,
        times,
        tls,
        refused_address,
    }) = outcome
    {
        result.tls = tls.map(|tls| judge_certificate(tls, target));
        result.status_code = status;
        result.http_version = http_version.map(str::to_owned);
        result.remote_addr = remote_addr;
        if status.is_some() {
            result.body_bytes = Some(body_bytes);
        }
        // The phases that happened, a failed check's too: a timeout after connecting still
        // says how long the name and the connection took.
        result.timings_ms = timings(&times, target, status.is_some());
        result.error = match transfer {
            Ok(()) => None,
            Err(_) if body_too_large => Some(CheckError {
                kind: ErrorKind::BodyTooLarge,
                message: format!("the body is larger than max_body_bytes ({max_body_bytes})"),
            }),
            Err(e) => match refused_address {
                Some((address, why)) if e.is_couldnt_connect() => Some(CheckError {
                    kind: ErrorKind::Connect,
                    message: format!(
                        "refused to connect to {address}: it is {why}, and deny_private_addresses is on"
                    ),
                }),
                _ => Some(classify(&e, target)),
            },
        };
        if result.error.is_none() {
            kept = body.map(Bytes::from);
        }
    }
    // libcurl's own total when it ran the transfer: the site's time, without the hand-offs
    // between threads; the probe's clock otherwise.
    result.response_time_ms = check::millis(match measured_total {
        Some(total) if !total.is_zero() => total,
        _ => started.elapsed(),
    });
    let certificate_ends_too_soon = match (&result.tls, target.down_within) {
        (Some(tls), Some(within)) => tls.cert_not_after < std::time::SystemTime::now() + within,
        _ => false,
    };
    let expected = result
        .status_code
        .is_some_and(|code| target.expected.contains(code));
    result.up = result.error.is_none() && expected && !certificate_ends_too_soon;
    let reason = match (&result.error, result.status_code) {
        (Some(error), _) => error.kind.as_str(),
        (None, Some(code)) if !expected => status_class(code),
        _ if certificate_ends_too_soon => "certificate",
        _ => "ok",
    };
    (result, reason, kept)
}

/// `status_4xx` and the like: a bounded label for a status code.
pub(super) fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "status_1xx",
        2 => "status_2xx",
        3 => "status_3xx",
        4 => "status_4xx",
        5 => "status_5xx",
        _ => "status_other",
    }
}

/// Marks a certificate that ends within the target's `cert_expiry_warning` (or has ended).
pub(super) fn judge_certificate(mut tls: TlsInfo, target: &Target) -> TlsInfo {
    tls.cert_expires_soon =
        tls.cert_not_after < std::time::SystemTime::now() + target.cert_expiry_warning;
    tls
}

pub(super) fn timeout_error(timeout: Duration) -> CheckError {
    CheckError {
        kind: ErrorKind::Timeout,
        message: format!("no complete response within {}", duration::format(timeout)),
    }
}

/// Maps libcurl's failure to the schema's error kinds.
pub(super) fn classify(error: &curl::Error, target: &Target) -> CheckError {
    let timeout = target.timeout;
    let kind = if error.is_operation_timedout() {
        ErrorKind::Timeout
    } else if error.is_couldnt_resolve_host() {
        ErrorKind::Dns
    } else if error.is_couldnt_connect() {
        ErrorKind::Connect
    } else if error.is_ssl_connect_error()
        || error.is_peer_failed_verification()
        || error.is_ssl_certproblem()
        || error.is_ssl_cipher()
        || error.is_ssl_cacert()
        || error.is_ssl_cacert_badfile()
        || error.is_ssl_issuer_error()
    {
        ErrorKind::Tls
    } else if error.is_too_many_redirects() {
        ErrorKind::TooManyRedirects
    } else {
        ErrorKind::Other
    };
    if kind == ErrorKind::Timeout {
        return timeout_error(timeout);
    }
    // libcurl's own words (its error buffer) say which host and port, or which certificate;
    // the code's generic text only when it gave none.
    let mut message = error
        .extra_description()
        .unwrap_or_else(|| error.description())
        .to_owned();
    // A proxy's password must not reach a result, whatever libcurl quotes.
    if let Some(password) = target
        .proxy
        .as_deref()
        .and_then(crate::monitor::secrets::url_password)
    {
        message = message.replace(password, "***");
    }
    CheckError { kind, message }
}

/// Turns libcurl's cumulative timers into per-phase durations. The response's phases only when
/// one came: libcurl sets its first-byte timer on some failures too (a refused connection).
pub(super) fn timings(times: &Times, target: &Target, responded: bool) -> Timings {
    let phase = |d: Duration| (!d.is_zero()).then(|| check::millis(d));
    let connected = times.connect.max(times.name_lookup);
    let secured = if times.app_connect.is_zero() {
        connected
    } else {
        times.app_connect
    };
    Timings {
        dns: if target.host_is_ip {
            None
        } else {
            phase(times.name_lookup)
        },
        connect: phase(connected.saturating_sub(times.name_lookup)),
        tls: phase(times.app_connect.saturating_sub(connected)),
        first_byte: responded.then(|| check::millis(times.start_transfer.saturating_sub(secured))),
        transfer: responded
            .then(|| check::millis(times.total.saturating_sub(times.start_transfer))),
    }
}
