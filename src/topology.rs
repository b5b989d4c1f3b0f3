//! The generic executor: wires built stages together and runs them to completion.
//!
//! Every stage runs in its own task. Each transform and sink owns one bounded channel that all
//! of its inputs send into (fan-in); a stage read by several others sends a copy to each
//! (fan-out). Backpressure follows from the bounds: a full channel makes its writers wait.
//!
//! Shutdown flows downstream, as in tokio's mini-redis: a signal (or a failing stage) cancels
//! the sources; when a source returns, its senders drop; a transform whose inputs are all
//! closed drains and returns, closing its own output; sinks drain and finish last. If that takes
//! longer than the grace period, the remaining tasks are aborted and the run fails, and the
//! events they held are reported to their sources as not delivered.
//!
//! The executor also keeps each stage's counts of what crosses its channels (events received
//! and sent, events waiting in its input) and the run's health: live from the start until
//! shutdown begins, a stage that fails not ready for good.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use slog::{debug, error, info, o, warn};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::compiler::{CompiledPipeline, CompiledStage};
use crate::config::duration;
use crate::event::Event;
use crate::registry::BuiltStage;
use crate::stage::StageKind;
use crate::stage::{
    BoxError, DownstreamClosed, Input, Output, SinkContext, SourceContext, Transform,
};
use crate::telemetry::{self, Labels};

/// `pipe_stage_input_queue_events`, read from the channels at each scrape. Holds them weakly,
/// so that a channel still closes when its last writer finishes.
#[derive(Debug)]
struct QueueCollector {
    queues: Vec<(Labels, mpsc::WeakSender<Event>)>,
}

impl prometheus_client::collector::Collector for QueueCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let mut family = encoder.encode_descriptor(
            "pipe_stage_input_queue_events",
            "Events waiting in a stage's input channel.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, queue) in &self.queues {
            let waiting = queue
                .upgrade()
                .map_or(0, |sender| sender.max_capacity() - sender.capacity());
            ConstGauge::new(waiting as i64).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// How a pipeline runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long in-flight events may take to drain after shutdown starts.
    pub grace: Duration,
    /// Events each transform's and sink's input channel holds before its writers wait.
    pub channel_capacity: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            channel_capacity: 128,
        }
    }
}

/// Why a run did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage returned an error (or could not start); the pipeline stopped.
    #[error("{kind} `{id}` (type {type_name}) failed: {error}")]
    StageFailed {
        /// Source, transform or sink.
        kind: StageKind,
        /// The stage's id.
        id: String,
        /// Its `type:`.
        type_name: String,
        /// What it returned.
        #[source]
        error: BoxError,
    },
    /// The drain after a stop took longer than the grace period; the stages still running
    /// were aborted.
    #[error("the grace period of {grace} ran out while {stages} still had events in flight; they were not delivered")]
    GraceExpired {
        /// The grace period, as written (`30s`).
        grace: String,
        /// The stages that were aborted, by id.
        stages: String,
    },
}

struct StageInfo {
    kind: StageKind,
    id: Arc<str>,
    type_name: String,
}

/// Runs `pipeline` until every stage has finished, a stage fails, or `shutdown` resolves and the
/// in-flight events have drained.
pub async fn run(
    pipeline: CompiledPipeline,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    logger: slog::Logger,
) -> Result<(), RunError> {
    let capacity = options.channel_capacity.max(1);
    let index: HashMap<String, usize> = pipeline
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();

    // One input channel per stage that has inputs.
    let mut senders: Vec<Option<mpsc::Sender<Event>>> = Vec::new();
    let mut receivers: Vec<Option<mpsc::Receiver<Event>>> = Vec::new();
    for stage in &pipeline.stages {
        if stage.kind == StageKind::Source {
            senders.push(None);
            receivers.push(None);
        } else {
            let (tx, rx) = mpsc::channel(capacity);
            senders.push(Some(tx));
            receivers.push(Some(rx));
        }
    }
    // Each stage's output: a sender into every stage that reads it.
    let mut outputs: Vec<Vec<mpsc::Sender<Event>>> = vec![Vec::new(); pipeline.stages.len()];
    for (reader, stage) in pipeline.stages.iter().enumerate() {
        let mut inputs = stage.inputs.clone();
        inputs.sort();
        inputs.dedup();
        for input in inputs {
            let writer = index[&input];
            let tx = senders[reader]
                .as_ref()
                .expect("readers have an input channel");
            outputs[writer].push(tx.clone());
        }
    }
    let telemetry = pipeline.telemetry.clone();
    let labels: Vec<Labels> = pipeline
        .stages
        .iter()
        .map(|s| telemetry::stage_labels(&s.id, &s.type_name))
        .collect();
    telemetry.register_collector(Box::new(QueueCollector {
        queues: labels
            .iter()
            .zip(&senders)
            .filter_map(|(labels, sender)| Some((labels.clone(), sender.as_ref()?.downgrade())))
            .collect(),
    }));
    // Only the writers hold senders now, so a channel closes when its last writer finishes.
    drop(senders);
    let received = telemetry.counters(
        "pipe_stage_received_events",
        "Events a stage took from its input channel.",
    );
    let sent = telemetry.counters("pipe_stage_sent_events", "Events a stage emitted.");
    let errors = telemetry.stage_errors();
    let health = telemetry.health().clone();
    let stage_health: HashMap<String, _> = pipeline
        .stages
        .iter()
        .map(|s| (s.id.clone(), health.stage(&s.id)))
        .collect();

    let mut stages = pipeline.stages;
    if let Err(failure) = preflight(&mut stages, &logger).await {
        if let RunError::StageFailed { id, error, .. } = &failure {
            if let Some(stage) = stage_health.get(id) {
                stage.failed(error.to_string());
            }
        }
        health.shutting_down();
        return Err(failure);
    }

    let shutdown_token = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut infos = HashMap::new();
    for (((stage, output), receiver), labels) in
        stages.into_iter().zip(outputs).zip(receivers).zip(&labels)
    {
        let id: Arc<str> = Arc::from(stage.id.as_str());
        let stage_logger =
            logger.new(o!("stage" => stage.id.clone(), "type" => stage.type_name.clone()));
        let output = Output::new(output, sent.get_or_create(labels).clone());
        let received = received.get_or_create(labels).clone();
        let token = shutdown_token.clone();
        let task = match stage.stage {
            BuiltStage::Source(source) => tasks.spawn(source.run(SourceContext {
                id: id.clone(),
                out: output,
                shutdown: token,
                logger: stage_logger,
            })),
            BuiltStage::Transform(transform) => {
                let input = Input::new(receiver.expect("transforms have inputs"), received);
                tasks.spawn(run_transform(transform, input, output))
            }
            BuiltStage::Sink(sink) => {
                let input = Input::new(receiver.expect("sinks have inputs"), received);
                tasks.spawn(sink.run(
                    input,
                    SinkContext {
                        id: id.clone(),
                        shutdown: token,
                        grace: options.grace,
                        logger: stage_logger,
                    },
                ))
            }
        };
        infos.insert(
            task.id(),
            StageInfo {
                kind: stage.kind,
                id,
                type_name: stage.type_name,
            },
        );
    }
    info!(&logger, "pipeline started"; "pipeline" => &pipeline.name, "stages" => infos.len());
    health.started();

    let mut shutdown = std::pin::pin!(shutdown);
    let mut deadline: Option<Instant> = None;
    let mut failure: Option<RunError> = None;
    let begin_shutdown = |deadline: &mut Option<Instant>| {
        if deadline.is_none() {
            health.shutting_down();
            shutdown_token.cancel();
            *deadline = Some(Instant::now() + options.grace);
        }
    };

    loop {
        tokio::select! {
            joined = tasks.join_next_with_id() => {
                let Some(joined) = joined else { break };
                let (task_id, result) = match joined {
                    Ok((task_id, result)) => (task_id, result),
                    Err(join_error) => {
                        let task_id = join_error.id();
                        let message = if join_error.is_panic() {
                            format!("panicked: {}", panic_message(join_error.into_panic()))
                        } else {
                            "cancelled".to_owned()
                        };
                        (task_id, Err(message.into()))
                    }
                };
                let Some(info) = infos.remove(&task_id) else { continue };
                match result {
                    Ok(()) => debug!(&logger, "stage finished"; "stage" => &*info.id),
                    Err(error) => {
                        let secondary = error.downcast_ref::<DownstreamClosed>().is_some();
                        if secondary {
                            debug!(&logger, "stage stopped: its downstream is gone"; "stage" => &*info.id);
                        } else {
                            error!(&logger, "stage failed"; "stage" => &*info.id, "type" => &info.type_name, "error" => %error);
                            errors
                                .get_or_create(&telemetry::with(
                                    &telemetry::stage_labels(&info.id, &info.type_name),
                                    "kind",
                                    "failed",
                                ))
                                .inc();
                            if let Some(stage) = stage_health.get(&*info.id) {
                                stage.failed(error.to_string());
                            }
                        }
                        let replace = match &failure {
                            None => true,
                            Some(RunError::StageFailed { error: first, .. }) => {
                                first.downcast_ref::<DownstreamClosed>().is_some() && !secondary
                            }
                            Some(RunError::GraceExpired { .. }) => false,
                        };
                        if replace {
                            failure = Some(RunError::StageFailed {
                                kind: info.kind,
                                id: info.id.to_string(),
                                type_name: info.type_name,
                                error,
                            });
                        }
                        begin_shutdown(&mut deadline);
                    }
                }
            }
            () = &mut shutdown, if deadline.is_none() => {
                info!(&logger, "shutting down: sources stop, in-flight events drain";
                      "grace" => duration::format(options.grace));
                begin_shutdown(&mut deadline);
            }
            () = crate::stage::sleep_until(deadline), if deadline.is_some() => {
                let mut stages: Vec<String> = infos.values().map(|i| format!("`{}`", i.id)).collect();
                stages.sort();
                let stages = stages.join(", ");
                warn!(&logger, "grace period over; aborting"; "stages" => &stages);
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                if failure.is_none() {
                    failure = Some(RunError::GraceExpired {
                        grace: duration::format(options.grace),
                        stages,
                    });
                }
                break;
            }
        }
    }

    health.shutting_down();
    match failure {
        Some(failure) => Err(failure),
        None => {
            info!(&logger, "pipeline finished");
            Ok(())
        }
    }
}

/// Runs every sink's [`Sink::preflight`](crate::Sink::preflight) at once, before any stage
/// starts; the first failure (in pipeline order) fails the run, and every failure is logged.
async fn preflight(stages: &mut [CompiledStage], logger: &slog::Logger) -> Result<(), RunError> {
    let checks = stages
        .iter_mut()
        .filter_map(|stage| match &mut stage.stage {
            BuiltStage::Sink(sink) => {
                let logger =
                    logger.new(o!("stage" => stage.id.clone(), "type" => stage.type_name.clone()));
                let (kind, id, type_name) = (stage.kind, stage.id.clone(), stage.type_name.clone());
                Some(async move {
                    sink.preflight(&logger)
                        .await
                        .map_err(|error| RunError::StageFailed {
                            kind,
                            id,
                            type_name,
                            error,
                        })
                })
            }
            _ => None,
        });
    let mut first = None;
    for result in futures::future::join_all(checks).await {
        if let Err(failure) = result {
            error!(logger, "stage cannot start"; "error" => %failure);
            first.get_or_insert(failure);
        }
    }
    first.map_or(Ok(()), Err)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

async fn run_transform(
    mut transform: Box<dyn Transform>,
    mut input: Input,
    mut output: Output,
) -> Result<(), BoxError> {
    let mut produced = Vec::new();
    while let Some(event) = input.recv().await {
        transform.transform(event, &mut produced)?;
        for event in produced.drain(..) {
            output.send(event).await?;
        }
    }
    Ok(())
}
