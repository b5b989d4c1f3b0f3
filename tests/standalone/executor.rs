//! The executor with in-memory stages: wiring, backpressure, shutdown, failures and
//! end-to-end acknowledgements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pipe::ack::{self, Acknowledger, Completion};
use pipe::compiler::{CompiledPipeline, CompiledStage};
use pipe::registry::BuiltStage;
use pipe::stage::StageKind;
use pipe::topology::{self, RunError, RunOptions};
use pipe::{
    AckStatus, BoxError, Event, Input, Sink, SinkContext, Source, SourceContext, Transform,
};
use serde_json::json;
use tokio::sync::Notify;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn stage(id: &str, inputs: &[&str], stage: BuiltStage) -> CompiledStage {
    let kind = match stage {
        BuiltStage::Source(_) => StageKind::Source,
        BuiltStage::Transform(_) => StageKind::Transform,
        BuiltStage::Sink(_) => StageKind::Sink,
    };
    CompiledStage {
        id: id.to_owned(),
        type_name: "test".to_owned(),
        kind,
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        stage,
    }
}

fn pipeline(stages: Vec<CompiledStage>) -> CompiledPipeline {
    CompiledPipeline {
        name: "test".to_owned(),
        stages,
        warnings: Vec::new(),
        telemetry: pipe::telemetry::Telemetry::new(),
    }
}

fn options(grace: Duration, capacity: usize) -> RunOptions {
    RunOptions {
        grace,
        channel_capacity: capacity,
    }
}

/// Emits events `{source, n}` for n in 0..count (forever without a count), tracking each on
/// stream `n % streams` when it has an acknowledger.
struct Counter {
    name: &'static str,
    count: Option<u64>,
    streams: u64,
    emitted: Arc<AtomicU64>,
    acks: Option<Acknowledger<u64>>,
}

impl Counter {
    fn new(name: &'static str, count: Option<u64>) -> Self {
        Self {
            name,
            count,
            streams: 1,
            emitted: Arc::default(),
            acks: None,
        }
    }
}

#[async_trait]
impl Source for Counter {
    async fn run(mut self: Box<Self>, mut cx: SourceContext) -> Result<(), BoxError> {
        let mut n = 0;
        while self.count.is_none_or(|c| n < c) && !cx.shutdown.is_cancelled() {
            let mut event = Event::new(
                json!({"source": self.name, "n": n})
                    .as_object()
                    .unwrap()
                    .clone(),
            );
            if let Some(acks) = &mut self.acks {
                event = event.with_ack(acks.track(n % self.streams, n as i64));
            }
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => break,
                sent = cx.out.send(event) => sent?,
            }
            self.emitted.fetch_add(1, Ordering::SeqCst);
            n += 1;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

/// Records the fields of every event and finishes it (failing the positions in `fail`).
#[derive(Default)]
struct Collect {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    fail: Vec<u64>,
    delay: Duration,
    /// Finish events in reverse order of arrival, a batch at a time, to test ordering.
    reverse_batches: bool,
    /// Waits for this before reading anything.
    gate: Option<Arc<Notify>>,
    /// Panics on this event number.
    panic_on: Option<u64>,
}

#[async_trait]
impl Sink for Collect {
    async fn run(self: Box<Self>, mut input: Input, _cx: SinkContext) -> Result<(), BoxError> {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        let mut batch = Vec::new();
        while input.recv_many(&mut batch, 8).await > 0 {
            if self.reverse_batches {
                batch.reverse();
            }
            for event in batch.drain(..) {
                tokio::time::sleep(self.delay).await;
                let n = event.get("n").and_then(|n| n.as_u64()).unwrap();
                assert!(self.panic_on != Some(n), "boom at {n}");
                self.seen
                    .lock()
                    .unwrap()
                    .push(serde_json::Value::Object(event.fields().clone()));
                let status = if self.fail.contains(&n) {
                    AckStatus::Failed
                } else {
                    AckStatus::Delivered
                };
                event.finish(status);
            }
        }
        Ok(())
    }
}

/// Passes events on, discarding odd numbers when `drop_odd`, failing at `fail_at`.
#[derive(Default)]
struct Pass {
    drop_odd: bool,
    fail_at: Option<u64>,
}

impl Transform for Pass {
    fn transform(&mut self, event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        let n = event.get("n").and_then(|n| n.as_u64()).unwrap();
        if self.fail_at == Some(n) {
            return Err(format!("cannot handle event {n}").into());
        }
        if self.drop_odd && n % 2 == 1 {
            event.discard();
        } else {
            out.push(event);
        }
        Ok(())
    }
}

fn source(counter: Counter) -> BuiltStage {
    BuiltStage::Source(Box::new(counter))
}

fn sink(collect: Collect) -> BuiltStage {
    BuiltStage::Sink(Box::new(collect))
}

/// `a → t → out`: the counter, a transform that passes events on, and the collector.
fn source_pass_sink(counter: Counter, collect: Collect) -> Vec<CompiledStage> {
    vec![
        stage("a", &[], source(counter)),
        stage(
            "t",
            &["a"],
            BuiltStage::Transform(Box::new(Pass::default())),
        ),
        stage("out", &["t"], sink(collect)),
    ]
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn fan_out_copies_and_fan_in_merges() {
    let both = Collect::default();
    let both_seen = both.seen.clone();
    let only_a = Collect::default();
    let only_a_seen = only_a.seen.clone();
    let stages = vec![
        stage("a", &[], source(Counter::new("a", Some(50)))),
        stage("b", &[], source(Counter::new("b", Some(30)))),
        stage("both", &["a", "b"], sink(both)),
        stage("only_a", &["a"], sink(only_a)),
    ];
    topology::run(pipeline(stages), RunOptions::default(), never(), logger())
        .await
        .unwrap();

    let both = both_seen.lock().unwrap();
    let from = |name: &str| both.iter().filter(|e| e["source"] == name).count();
    assert_eq!(
        (from("a"), from("b")),
        (50, 30),
        "fan-in gets every event of each input"
    );
    let only_a = only_a_seen.lock().unwrap();
    let numbers: Vec<u64> = only_a.iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!(
        numbers,
        (0..50).collect::<Vec<_>>(),
        "fan-out gives each branch every event, in order"
    );
}

#[tokio::test]
async fn backpressure_bounds_the_events_in_flight() {
    const CAPACITY: usize = 4;
    let counter = Counter::new("a", Some(1_000));
    let emitted = counter.emitted.clone();
    let gate = Arc::new(Notify::new());
    let collect = Collect {
        gate: Some(gate.clone()),
        ..Collect::default()
    };
    let seen = collect.seen.clone();
    let stages = source_pass_sink(counter, collect);
    let run = tokio::spawn(topology::run(
        pipeline(stages),
        options(Duration::from_secs(5), CAPACITY),
        never(),
        logger(),
    ));

    // The sink reads nothing: once the channels are full the source must be stuck.
    let mut last = u64::MAX;
    while emitted.load(Ordering::SeqCst) != last {
        last = emitted.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two channels of CAPACITY, plus one event held by the transform while it waits to send.
    assert!(
        last <= (2 * CAPACITY + 1) as u64,
        "{last} events in flight with a stalled sink"
    );

    gate.notify_one();
    run.await.unwrap().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1_000);
}

#[tokio::test]
async fn shutdown_stops_sources_and_drains_every_event_in_flight() {
    let (tracker, mut acks) = ack::channel();
    let counter = Counter {
        acks: Some(tracker),
        ..Counter::new("a", None)
    };
    let emitted = counter.emitted.clone();
    let collect = Collect {
        delay: Duration::from_millis(2),
        ..Collect::default()
    };
    let seen = collect.seen.clone();
    let stages = source_pass_sink(counter, collect);
    let stop = Arc::new(Notify::new());
    let stop_signal = stop.clone();
    let run = tokio::spawn(async move {
        topology::run(
            pipeline(stages),
            options(Duration::from_secs(10), 16),
            async move { stop_signal.notified().await },
            logger(),
        )
        .await
    });
    while seen.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.notify_one();
    run.await.unwrap().expect("a graceful stop is a clean exit");

    let emitted = emitted.load(Ordering::SeqCst);
    assert_eq!(
        seen.lock().unwrap().len() as u64,
        emitted,
        "every emitted event reached the sink"
    );
    let mut outcomes = Vec::new();
    while let Some(Completion {
        position, status, ..
    }) = acks.next().await
    {
        outcomes.push((position, status));
    }
    let emitted = emitted as i64;
    let delivered: Vec<_> = (0..emitted).map(|n| (n, AckStatus::Delivered)).collect();
    assert_eq!(
        outcomes[..emitted as usize],
        delivered[..],
        "every emitted event was delivered"
    );
    // The stop may interrupt the source while it waits to send one more event: that event never
    // entered the pipeline and must be reported as not delivered.
    let rest = &outcomes[emitted as usize..];
    assert!(
        rest.is_empty() || rest == [(emitted, AckStatus::Failed)],
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_failing_transform_stops_the_pipeline_with_its_error() {
    let stages = vec![
        stage("a", &[], source(Counter::new("a", None))),
        stage(
            "t",
            &["a"],
            BuiltStage::Transform(Box::new(Pass {
                fail_at: Some(3),
                ..Pass::default()
            })),
        ),
        stage("out", &["t"], sink(Collect::default())),
    ];
    let pipeline = pipeline(stages);
    let telemetry = pipeline.telemetry.clone();
    let error = topology::run(pipeline, RunOptions::default(), never(), logger())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RunError::StageFailed { id, .. } if id == "t"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "transform `t` (type test) failed: cannot handle event 3"
    );
    // A permanent error: the stage is not ready for good, and the failure is counted.
    let readiness = telemetry.health().readiness();
    assert!(!readiness.ready && !telemetry.health().is_live());
    let failed = readiness.stages.iter().find(|s| s.stage == "t").unwrap();
    assert!(!failed.ready);
    assert_eq!(
        failed.reason.as_deref(),
        Some("failed: cannot handle event 3")
    );
    let text = telemetry.encode(pipe::telemetry::Format::Prometheus);
    assert!(
        text.contains("pipe_stage_errors_total{stage=\"t\",type=\"test\",kind=\"failed\"} 1"),
        "{text}"
    );
    assert!(text.contains("pipe_stage_ready{stage=\"t\"} 0"), "{text}");
    assert!(text.contains("pipe_stage_ready{stage=\"out\"} 1"), "{text}");
}

#[tokio::test]
async fn a_panicking_sink_stops_the_pipeline() {
    let stages = vec![
        stage("a", &[], source(Counter::new("a", None))),
        stage(
            "out",
            &["a"],
            sink(Collect {
                panic_on: Some(2),
                ..Collect::default()
            }),
        ),
    ];
    let error = topology::run(pipeline(stages), RunOptions::default(), never(), logger())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "sink `out` (type test) failed: panicked: boom at 2"
    );
}

#[tokio::test]
async fn an_expired_grace_period_fails_the_run_and_the_events_it_held() {
    let (tracker, mut acks) = ack::channel();
    let counter = Counter {
        acks: Some(tracker),
        ..Counter::new("a", Some(3))
    };
    let stalled = Collect {
        gate: Some(Arc::new(Notify::new())), // never opened
        ..Collect::default()
    };
    let stages = vec![
        stage("a", &[], source(counter)),
        stage("out", &["a"], sink(stalled)),
    ];
    let error = topology::run(
        pipeline(stages),
        options(Duration::from_millis(100), 8),
        tokio::time::sleep(Duration::from_millis(50)),
        logger(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the grace period of 100ms ran out while `out` still had events in flight; they were not delivered"
    );
    let mut outcomes = Vec::new();
    while let Some(c) = acks.next().await {
        outcomes.push((c.position, c.status));
    }
    assert_eq!(
        outcomes,
        [
            (0, AckStatus::Failed),
            (1, AckStatus::Failed),
            (2, AckStatus::Failed)
        ]
    );
}

#[tokio::test]
async fn acknowledgements_arrive_in_order_per_stream_with_failures_and_discards() {
    let (tracker, mut acks) = ack::channel();
    let counter = Counter {
        acks: Some(tracker),
        streams: 2,
        ..Counter::new("a", Some(40))
    };
    // Branch one drops odd events on purpose, then a sink that fails event 10 and finishes
    // events out of order. Branch two delivers everything.
    let failing = Collect {
        fail: vec![10],
        reverse_batches: true,
        ..Collect::default()
    };
    let stages = vec![
        stage("a", &[], source(counter)),
        stage(
            "evens",
            &["a"],
            BuiltStage::Transform(Box::new(Pass {
                drop_odd: true,
                ..Pass::default()
            })),
        ),
        stage("failing", &["evens"], sink(failing)),
        stage("all", &["a"], sink(Collect::default())),
    ];
    topology::run(pipeline(stages), RunOptions::default(), never(), logger())
        .await
        .unwrap();

    let mut per_stream: [Vec<i64>; 2] = Default::default();
    let mut failed = Vec::new();
    while let Some(c) = acks.next().await {
        per_stream[c.stream as usize].push(c.position);
        if c.status == AckStatus::Failed {
            failed.push(c.position);
        }
    }
    let evens: Vec<i64> = (0..40).step_by(2).collect();
    let odds: Vec<i64> = (1..40).step_by(2).collect();
    assert_eq!(
        per_stream,
        [evens, odds],
        "every event reported once, in order per stream"
    );
    assert_eq!(
        failed,
        [10],
        "only the event a sink failed is reported failed"
    );
}
