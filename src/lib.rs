//! `pipe` runs pipelines described in YAML: a graph of [`Source`], [`Transform`] and [`Sink`]
//! stages, wired by `inputs:`, validated as a whole, and run by one generic executor.
//!
//! The pieces, in the order data meets them:
//! - [`config`] reads a pipeline file into stage entries, interpolating `${VAR}`s and locating
//!   every problem;
//! - [`registry`] maps each `type:` to a stage's typed config and build step;
//! - [`compiler`] validates the whole pipeline and builds its stages, reporting every error at
//!   once;
//! - [`topology`] wires the built stages with bounded channels and runs them, with graceful
//!   shutdown;
//! - [`event`] and [`ack`] are what flows: events, and the acknowledgements that tell a source
//!   when its events are durably handled;
//! - [`stages`] holds the built-in stages, and beside it what they share: [`check`] (message
//!   schema v1), [`schedule`] and [`libcurl`] (the checker's timing and transfers), [`kafka`],
//!   [`database`] and [`migrate`] (the writer's services), [`secrets`], [`throttle`]
//!   (warnings that repeat while a fault lasts);
//! - [`cli`] is the `pipe` command line, which other crates call with their own registry to
//!   ship stages of their own (see `examples/custom_stage.rs`).

pub mod ack;
pub mod check;
pub mod cli;
pub mod compiler;
pub mod config;
pub mod database;
pub mod event;
pub mod kafka;
pub mod libcurl;
pub mod logging;
pub mod migrate;
pub mod registry;
pub mod schedule;
pub mod secrets;
pub mod stage;
pub mod stages;
pub mod throttle;
pub mod topology;

pub use ack::AckStatus;
pub use config::diagnostic::ConfigError;
pub use event::{Event, Fields, Origin};
pub use registry::{BuildContext, Registry, StageConfig};
pub use stage::{BoxError, Input, Output, Sink, SinkContext, Source, SourceContext, Transform};
