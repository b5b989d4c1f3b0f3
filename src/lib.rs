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
//! - [`report`] turns the writer's rollups and incidents into `pipe report`'s table, JSON and
//!   HTML;
//! - [`cli`] is the `pipe` command line, which other crates call with their own registry to
//!   ship stages of their own (see `examples/custom_stage.rs`).
//!
//! # Adding a stage
//!
//! A stage is a settings struct that implements [`StageConfig`] (its `type:` name and its
//! build step, which validates everything up front) and the stage itself, which implements
//! [`Source`], [`Transform`] or [`Sink`]. Register it beside the built-in stages and hand the
//! registry to [`cli::main`]: that is a whole `pipe` binary that knows `type: uppercase`.
//!
//! ```
//! use pipe::{BoxError, BuildContext, ConfigError, Event, Registry, StageConfig, Transform};
//! use serde::Deserialize;
//! use serde_json::Value;
//!
//! /// Settings of the `uppercase` transform, as written in the pipeline file.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct UppercaseConfig {
//!     /// Fields whose string values are upper-cased.
//!     fields: Vec<String>,
//! }
//!
//! impl StageConfig for UppercaseConfig {
//!     const TYPE: &'static str = "uppercase";
//!     const DESCRIPTION: &'static str = "upper-cases the string values of the named fields";
//!     type Stage = dyn Transform;
//!
//!     fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, Vec<ConfigError>> {
//!         if self.fields.is_empty() {
//!             return Err(ConfigError::at("fields", "name at least one field").into());
//!         }
//!         Ok(Box::new(Uppercase { fields: self.fields }))
//!     }
//! }
//!
//! struct Uppercase {
//!     fields: Vec<String>,
//! }
//!
//! impl Transform for Uppercase {
//!     fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
//!         for name in &self.fields {
//!             if let Some(Value::String(text)) = event.fields_mut().get_mut(name) {
//!                 *text = text.to_uppercase();
//!             }
//!         }
//!         out.push(event);
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::with_builtins();
//! registry.register::<UppercaseConfig>();
//! assert!(registry.iter().any(|stage| stage.type_name == "uppercase"));
//! // In a binary: `fn main() -> std::process::ExitCode { pipe::cli::main(registry) }`
//! ```
//!
//! A built-in stage lives in one file under `src/stages/{sources,transforms,sinks}/` and is
//! registered by one line in `src/stages/mod.rs`. A source that must know when its events are
//! durably handled tracks them with [`ack`]; a sink that can check, before anything runs,
//! that it can work at all implements [`Sink::preflight`].

#![warn(missing_docs)]

pub mod ack;
pub mod check;
pub mod cli;
pub mod compiler;
pub mod config;
pub mod database;
pub mod event;
pub mod ip_guard;
pub mod kafka;
pub mod libcurl;
pub mod logging;
pub mod migrate;
pub mod registry;
pub mod report;
pub mod schedule;
pub mod secrets;
pub mod stage;
pub mod stages;
pub mod telemetry;
pub mod throttle;
pub mod topology;

pub use ack::AckStatus;
pub use config::diagnostic::ConfigError;
pub use event::{Event, Fields, Origin};
pub use registry::{BuildContext, Registry, StageConfig};
pub use stage::{BoxError, Input, Output, Sink, SinkContext, Source, SourceContext, Transform};
