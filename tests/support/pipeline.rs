//! Running real pipelines from YAML inside a test, with a `capture` sink that hands every event
//! it receives to the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use pipe::topology::{self, RunError, RunOptions};
use pipe::{
    AckStatus, BoxError, BuildContext, ConfigError, Fields, Input, Registry, Sink, SinkContext,
    StageConfig,
};
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub type Captured = (Fields, Option<Bytes>);

fn channels() -> &'static Mutex<HashMap<String, mpsc::UnboundedSender<Captured>>> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, mpsc::UnboundedSender<Captured>>>> =
        OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

/// The events a `capture` sink with `channel: name` receives.
pub fn capture(name: &str) -> mpsc::UnboundedReceiver<Captured> {
    let (tx, rx) = mpsc::unbounded_channel();
    channels().lock().unwrap().insert(name.to_owned(), tx);
    rx
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The name the test passed to `capture`.
    channel: String,
    /// After the first event, read nothing for this long, so the pipeline behind the sink fills.
    #[serde(default, with = "pipe::config::duration::option")]
    hold: Option<std::time::Duration>,
}

impl StageConfig for CaptureConfig {
    const TYPE: &'static str = "capture";
    const DESCRIPTION: &'static str = "hands events to the test";
    type Stage = dyn Sink;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        let tx = channels()
            .lock()
            .unwrap()
            .get(&self.channel)
            .cloned()
            .ok_or_else(|| ConfigError::at("channel", "call capture() first"))?;
        Ok(Box::new(Capture {
            tx,
            hold: self.hold,
        }))
    }
}

struct Capture {
    tx: mpsc::UnboundedSender<Captured>,
    hold: Option<std::time::Duration>,
}

#[async_trait]
impl Sink for Capture {
    async fn run(self: Box<Self>, mut input: Input, _cx: SinkContext) -> Result<(), BoxError> {
        let mut first = true;
        while let Some(mut event) = input.recv().await {
            if let (true, Some(hold)) = (first, self.hold) {
                tokio::time::sleep(hold).await;
            }
            first = false;
            let raw = event.take_raw();
            let _ = self.tx.send((event.fields().clone(), raw));
            event.finish(AckStatus::Delivered);
        }
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    registry.register::<CaptureConfig>();
    registry
}

pub fn logger() -> slog::Logger {
    if std::env::var_os("PIPE_TEST_LOG").is_some() {
        pipe::logging::logger(
            pipe::logging::LogLevel::Debug,
            pipe::logging::LogFormat::Text,
        )
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

/// A pipeline running in the background until `stop`.
pub struct Running {
    stop: Arc<Notify>,
    handle: JoinHandle<Result<(), RunError>>,
    /// The run's metrics and health.
    pub telemetry: pipe::telemetry::Telemetry,
}

impl Running {
    /// Asks the pipeline to stop and waits for it.
    pub async fn stop(self) -> Result<(), RunError> {
        self.stop.notify_one();
        self.handle.await.expect("the pipeline task")
    }

    /// Waits for the pipeline to end by itself (its sources finished, or a stage failed).
    pub async fn wait(self) -> Result<(), RunError> {
        self.handle.await.expect("the pipeline task")
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Validates and starts the pipeline in `yaml` (with `${VAR}`s from the environment).
pub fn start(yaml: &str, options: RunOptions) -> Running {
    let pipeline = pipe::compiler::from_str(
        "test.yaml",
        yaml,
        &|var| std::env::var(var).ok(),
        &registry(),
        &logger(),
    )
    .unwrap_or_else(|d| panic!("invalid test pipeline:\n{d}"));
    let stop = Arc::new(Notify::new());
    let signal = Arc::clone(&stop);
    let telemetry = pipeline.telemetry.clone();
    let handle = tokio::spawn(topology::run(
        pipeline,
        options,
        async move { signal.notified().await },
        logger(),
    ));
    Running {
        stop,
        handle,
        telemetry,
    }
}

/// Reads check results from `rx` until `count` targets have each reported once, validating
/// every message against docs/check-v1.schema.json; returns the first of each, by target.
/// Panics, naming who did report, when that takes longer than `within`.
pub async fn first_by_target(
    rx: &mut mpsc::UnboundedReceiver<Captured>,
    count: usize,
    within: std::time::Duration,
) -> HashMap<String, Captured> {
    let deadline = tokio::time::Instant::now() + within;
    let mut first = HashMap::new();
    while first.len() < count {
        let (fields, raw) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} targets reported: {:?}",
                    first.len(),
                    first.keys()
                )
            })
            .expect("the pipeline is running");
        let message = serde_json::Value::Object(fields.clone());
        super::schema::assert_valid(&message);
        let target = fields["target"].as_str().expect("a target").to_owned();
        first.entry(target).or_insert((fields, raw));
    }
    first
}
