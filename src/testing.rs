//! Unit-testing one stage, with no pipeline file, executor or service: build it from its YAML
//! settings, then feed it events and read what it makes.
//!
//! ```
//! use pipe::prelude::*;
//! use pipe::stages::transforms::latency::LatencyConfig;
//!
//! let mut stage = pipe::testing::build::<LatencyConfig>("slow: 500ms\ncritical: 2s").unwrap();
//! let out = pipe::testing::transform(&mut *stage, Event::new(Fields::new())).unwrap();
//! assert_eq!(out.len(), 1);
//! ```
//!
//! A source runs against [`Output::for_test`] and a sink against [`Input::for_test`]; the
//! contexts come from [`source_context`] and [`sink_context`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::diagnostic::ConfigError;
use crate::event::Event;
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Input, Output, SinkContext, SourceContext, Transform};

/// A build context for stage `test` that logs nowhere, relative paths from the working
/// directory.
pub fn context() -> BuildContext {
    BuildContext::new("test", ".", slog::Logger::root(slog::Discard, slog::o!()))
}

/// Reads `yaml` (the stage's settings, as under its entry in a pipeline file, without `type`
/// and `inputs`) into `C` and builds the stage, with its build step's own errors.
pub fn build<C: StageConfig>(yaml: &str) -> Result<Box<C::Stage>, Vec<ConfigError>> {
    let config: C = serde_norway::from_str(yaml)
        .map_err(|e| vec![ConfigError::new(format!("invalid settings: {e}"))])?;
    config.build(&context())
}

/// Runs one event through a transform and returns what it pushed.
pub fn transform(stage: &mut dyn Transform, event: Event) -> Result<Vec<Event>, BoxError> {
    let mut out = Vec::new();
    stage.transform(event, &mut out)?;
    Ok(out)
}

/// What a source's test needs: its context, the receiver of what it sends (up to `capacity`
/// at once), and the token that asks it to stop.
pub fn source_context(
    capacity: usize,
) -> (SourceContext, mpsc::Receiver<Event>, CancellationToken) {
    let (out, received) = Output::for_test(capacity);
    let shutdown = CancellationToken::new();
    let cx = SourceContext {
        id: "test".into(),
        out,
        shutdown: shutdown.clone(),
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    (cx, received, shutdown)
}

/// A sink's context with a grace period of `grace`, and the token that asks it to stop.
pub fn sink_context(grace: Duration) -> (SinkContext, CancellationToken) {
    let shutdown = CancellationToken::new();
    let cx = SinkContext {
        id: "test".into(),
        shutdown: shutdown.clone(),
        grace,
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    (cx, shutdown)
}

/// An input holding `events`, closed behind them: a sink reads them and then ends.
pub fn input_of(events: Vec<Event>) -> Input {
    let (sender, input) = Input::for_test(events.len().max(1));
    for event in events {
        sender
            .try_send(event)
            .expect("the channel holds every event");
    }
    input
}
