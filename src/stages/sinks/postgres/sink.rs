//! The `postgres` sink at run time: batches cut by size and time, written by several blocking
//! writers at once, retried while the database is away, acknowledged after the commit, and the
//! hourly maintenance.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use slog::{debug, info, warn};

use crate::ack::{AckHandle, AckStatus};
use crate::config::duration;
use crate::event::{Event, Payload};
use crate::monitor::check::CheckResult;
use crate::monitor::database::DropOffRuntime;
use crate::monitor::history::day_of;
use crate::stage::{BoxError, Input, Sink, SinkContext};
use crate::telemetry::StageHealth;
use crate::throttle::RepeatedWarning;

use super::config::PostgresSinkConfig;
use super::maintenance;
use super::metrics::SinkMetrics;
use super::row::*;
use super::write::*;

pub(super) struct PostgresSink {
    pub(super) pool: DropOffRuntime<PgPool>,
    /// The URL with its password hidden, for messages.
    pub(super) database: String,
    pub(super) config: PostgresSinkConfig,
    pub(super) metrics: SinkMetrics,
    pub(super) health: StageHealth,
    /// A database that is down fails every attempt: logged at most once per 30 s.
    pub(super) retry_warning: Mutex<RepeatedWarning>,
}

/// How long writes may fail before the sink counts as not ready.
pub(super) const WRITES_FAILING_GRACE: Duration = Duration::from_secs(30);

/// How often partitions are created ahead and expired ones dropped.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

impl PostgresSink {
    /// Runs a blocking database step until it succeeds or fails permanently, backing off on
    /// transient failures. Checkout, queries and the connection's return all happen inside it.
    async fn with_retries<T: Send + 'static>(
        &self,
        what: &str,
        cx: &SinkContext,
        cache: &Arc<Mutex<Cache>>,
        step: impl Fn(&PgPool, &Mutex<Cache>) -> Result<T, WriteError> + Send + Sync + Clone + 'static,
    ) -> Result<T, String> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1_u32;
        loop {
            let pool = PgPool::clone(&self.pool);
            let cache = Arc::clone(cache);
            let step = step.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || step(&pool, &cache))
                .await
                .map_err(|e| format!("{what}: the database task failed: {e}"))?;
            match result {
                Ok(value) => {
                    self.metrics
                        .write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.resolved("writes_failing");
                    if attempt > 1 {
                        info!(cx.logger, "database reachable again"; "step" => what, "attempts" => attempt);
                    }
                    return Ok(value);
                }
                Err(WriteError::Permanent(message)) => {
                    self.metrics.errors_permanent.inc();
                    return Err(format!("{what}: {message}"));
                }
                Err(WriteError::Transient(message)) => {
                    self.metrics.retries.inc();
                    self.metrics.errors_transient.inc();
                    // Failing since the attempt began: reaching a database that is gone can
                    // take the whole connect timeout.
                    self.health.problem_since(
                        "writes_failing",
                        format!("database writes failing: {message}"),
                        WRITES_FAILING_GRACE,
                        started,
                    );
                    let report = self
                        .retry_warning
                        .lock()
                        .expect("not poisoned")
                        .occurred(std::time::Instant::now());
                    if let Some(report) = report {
                        warn!(cx.logger, "database step failed; retrying"; "step" => what, "attempt" => attempt,
                              "retry_in" => duration::format(backoff), "error" => &message, "database" => &self.database,
                              "lasted" => duration::format_approx(report.lasted), "occurrences" => report.occurrences);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    /// Turns events into a batch (keeping their acknowledgement handles); events that are not
    /// checks become dead letters.
    fn prepare(
        &self,
        events: Vec<Event>,
        cutoff_day: Option<i64>,
        acks: &mut Vec<AckHandle>,
        tls_keys: &mut TlsKeys,
    ) -> (Batch, usize) {
        let mut batch = Batch {
            rows: Vec::with_capacity(events.len()),
            names: Names::default(),
            dead: Vec::new(),
            sources: Vec::with_capacity(events.len()),
            days: HashSet::new(),
            tls: HashMap::new(),
        };
        let mut expired = 0;
        for event in events {
            let origin = event.origin().cloned();
            let letter =
                |error: String, payload: Vec<u8>| DeadLetter::at(origin.as_ref(), error, payload);
            if let Some(error) = event.dead_letter_error() {
                let payload = event.raw().map(|b| b.to_vec()).unwrap_or_default();
                batch.dead.push(letter(error.to_owned(), payload));
                acks.extend(event.into_parts().1);
                continue;
            }
            let (payload, ack) = event.into_payload();
            acks.extend(ack);
            // The check stays in the box it was decoded into: moved out, it was copied twice
            // more (about 600 bytes each time), and the batch's list of them was a fresh
            // allocation of 12 MB at the default batch size.
            let decoded = match payload.downcast::<CheckResult>() {
                Ok(check) => Ok(check),
                // Fields from elsewhere (a `json` source, a transform that rewrote them).
                Err(Payload::Fields(fields)) => {
                    serde_json::from_value::<CheckResult>(Value::Object(fields)).map(Box::new)
                }
                // A user's own typed record: read through its fields.
                Err(Payload::Typed(record)) => {
                    serde_json::from_value::<CheckResult>(Value::Object(record.to_fields()))
                        .map(Box::new)
                }
            };
            let check = match decoded {
                Ok(check) => check,
                Err(e) => {
                    batch
                        .dead
                        .push(letter(format!("not a check result: {e}"), Vec::new()));
                    continue;
                }
            };
            // Before anything is made of it: a check past the retention is not kept, stored or
            // not (its partition is dropped, or about to be).
            let day = day_of(check.scheduled_at);
            if cutoff_day.is_some_and(|cutoff| day < cutoff) {
                expired += 1;
                continue;
            }
            match Row::from_check(&check, tls_keys, &mut batch.names) {
                Ok(row) => {
                    batch.days.insert(day);
                    if let (Some(key), Some(tls)) = (row.tls_key, &check.tls) {
                        batch.tls.entry(key).or_insert_with(|| tls.clone());
                    }
                    // Serialized again only if the database refuses the row.
                    batch.sources.push((origin.clone(), check));
                    batch.rows.push(row);
                }
                Err(error) => {
                    let payload = serde_json::to_vec(&check).unwrap_or_default();
                    batch.dead.push(letter(error, payload));
                }
            }
        }
        (batch, expired)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn run(self: Box<Self>, mut input: Input, cx: SinkContext) -> Result<(), BoxError> {
        let cache = Arc::new(Mutex::new(Cache::default()));
        if self.config.migrate {
            let applied = self
                .with_retries("migrate", &cx, &cache, |pool, _| {
                    let mut client = pool.get()?;
                    Ok(crate::monitor::migrate::apply(&mut client)?)
                })
                .await?;
            info!(cx.logger, "migrations checked"; "applied_now" => ?applied);
        }
        let retention = self.config.retention;
        let plan = maintenance::Plan {
            partitions_ahead: self.config.partitions_ahead,
            retention,
            rollup_retention: self.config.rollup_retention,
        };
        let maintenance =
            move |pool: &PgPool, cache: &Mutex<Cache>| maintenance::run(pool, cache, &plan);
        self.with_retries("maintenance", &cx, &cache, maintenance)
            .await?
            .log(&cx.logger);
        let mut next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
        let (mut stored, mut dead_lettered) = (0_u64, 0_u64);
        let mut events = Vec::with_capacity(self.config.batch_size);
        let mut tls_keys = TlsKeys::default();
        let mut batch_started: Option<tokio::time::Instant> = None;
        let mut input_open = true;
        // Batches being written. While one waits for its commit (the WAL flush), the next is
        // collected and sent: commits overlap instead of queueing.
        let mut in_flight = FuturesUnordered::new();

        while input_open || !in_flight.is_empty() {
            let room = in_flight.len() < self.config.parallel_batches;
            let full = events.len() >= self.config.batch_size;
            let wanted = self.config.batch_size.saturating_sub(events.len()).max(1);
            let deadline = batch_started.map(|t| t + self.config.batch_timeout);
            // A batch that filled up while every slot was busy goes as soon as one is free,
            // not at its timeout.
            let cut = full && room
                || tokio::select! {
                    Some(written) = in_flight.next(), if !in_flight.is_empty() => {
                        let (written, acks): (Written, Vec<AckHandle>) = written?;
                        stored += written.stored.len() as u64;
                        dead_lettered += written.dead_letters as u64;
                        self.metrics.committed(&written);
                        if written.dead_letters > 0 {
                            warn!(cx.logger, "rows stored as dead letters"; "count" => written.dead_letters);
                        }
                        // Committed: now, and only now, the events are done.
                        for ack in acks {
                            ack.finish(AckStatus::Delivered);
                        }
                        false
                    }
                    received = input.recv_many(&mut events, wanted), if input_open && !full => {
                        if received == 0 {
                            input_open = false;
                        } else if batch_started.is_none() {
                            batch_started = Some(tokio::time::Instant::now());
                        }
                        events.len() >= self.config.batch_size || !input_open
                    }
                    // Only with room to send the batch: a passed deadline would otherwise fire again
                    // and again while every slot is busy.
                    () = crate::stage::sleep_until(deadline), if deadline.is_some() && room => true,
                    () = tokio::time::sleep_until(next_maintenance), if in_flight.is_empty() => {
                        self.with_retries("maintenance", &cx, &cache, maintenance).await?.log(&cx.logger);
                        next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
                        false
                    }
                };
            // Once the input is closed, what is left goes out as it is.
            let cut = cut || full || !input_open;
            if !cut || events.is_empty() || !room {
                continue;
            }
            batch_started = None;
            let cutoff_day =
                retention.map(|r| day_of(SystemTime::now()) - (r.as_secs() / 86_400) as i64);
            let mut acks = Vec::with_capacity(events.len());
            let (batch, expired) = self.prepare(
                std::mem::take(&mut events),
                cutoff_day,
                &mut acks,
                &mut tls_keys,
            );
            if expired > 0 {
                debug!(cx.logger, "checks older than the retention skipped"; "count" => expired);
            }
            let batch = Arc::new(batch);
            let (this, cx, cache) = (&self, &cx, &cache);
            let thresholds = self.config.thresholds();
            in_flight.push(async move {
                let written = this
                    .with_retries("write batch", cx, cache, move |pool, cache| {
                        write_batch(pool, cache, &batch, thresholds)
                    })
                    .await?;
                Ok::<_, String>((written, acks))
            });
        }
        info!(cx.logger, "postgres sink finished"; "stored" => stored, "dead_letters" => dead_lettered);
        Ok(())
    }
}
