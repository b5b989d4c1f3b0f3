//! `pipe` runs pipelines described in YAML: a graph of [`Source`], [`Transform`] and [`Sink`]
//! stages, wired by `inputs:`, validated as a whole, and run by one generic executor.
//!
//! The crate is the framework and the monitor built with it, in layers that only import
//! downwards (docs/architecture.md, checked by a unit test):
//! - the framework core: [`config`] reads a pipeline file into stage entries, interpolating
//!   `${VAR}`s and locating every problem; [`registry`] maps each `type:` to a stage's typed
//!   config and build step; [`stage`] holds the traits and what the executor hands a stage;
//!   [`event`] and [`ack`] are what flows: events (a field map or a typed payload), and the
//!   acknowledgements that tell a source when its events are durably handled; [`telemetry`],
//!   [`throttle`] and [`logging`];
//! - the executor: [`compiler`] validates the whole pipeline and builds its stages, reporting
//!   every error at once; [`topology`] wires the built stages with bounded channels and runs
//!   them, with graceful shutdown;
//! - [`monitor`], the monitor's services: message schema v1 (`monitor::check`), the slot
//!   schedule and the libcurl agent (the checker's), the Kafka client settings, the PostgreSQL
//!   connection, migrations and history (the writer's), and secrets' redaction;
//! - the built-in stages ([`stages`], with `Registry::with_builtins`), and [`report`], which
//!   turns the writer's rollups and incidents into `pipe report`'s table, JSON and HTML;
//! - [`cli`], the `pipe` command line, which other crates call with their own registry to ship
//!   stages of their own (see `examples/custom_stage.rs`).
//!
//! A stage author needs [`prelude`], and [`testing`] to unit-test a stage alone.
//!
//! # Adding a stage
//!
//! A stage is a settings struct that implements [`StageConfig`] (its `type:` name and its
//! build step, which validates everything up front) and the stage itself, which implements
//! [`Source`], [`Transform`] or [`Sink`]. Register it beside the built-in stages and hand the
//! registry to [`cli::main`]: that is a whole `pipe` binary that knows `type: uppercase`.
//!
//! ```
//! use pipe::prelude::*;
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
//!         // A check result stays typed: change the struct, and no field map is ever made.
//!         if let Some(check) = event.check_mut() {
//!             if self.fields.iter().any(|f| f == "target") {
//!                 check.target = check.target.to_uppercase();
//!             }
//!         } else {
//!             let fields = event.fields_mut();
//!             for name in &self.fields {
//!                 if let Some(Value::String(text)) = fields.get_mut(name) {
//!                     *text = text.to_uppercase();
//!                 }
//!             }
//!         }
//!         out.push(event);
//!         Ok(())
//!     }
//! }
//!
//! // Unit-tested alone, with no pipeline and no service:
//! let mut stage = pipe::testing::build::<UppercaseConfig>("fields: [greeting]").unwrap();
//! let mut fields = Fields::new();
//! fields.insert("greeting".into(), "hello".into());
//! let out = pipe::testing::transform(&mut *stage, Event::new(fields)).unwrap();
//! assert_eq!(out[0].get("greeting"), Some(&Value::from("HELLO")));
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
pub mod cli;
pub mod compiler;
pub mod config;
pub mod event;
pub mod logging;
pub mod monitor;
pub mod registry;
pub mod report;
pub mod stage;
pub mod stages;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod topology;

/// What a stage author needs, in one `use pipe::prelude::*;`: the stage traits and their
/// contexts, events (field maps and typed payloads), acknowledgements, the registry and its
/// build context, located config errors, durations as pipeline files write them, and
/// `async_trait` for sources and sinks.
pub mod prelude {
    pub use crate::ack::AckStatus;
    pub use crate::config::diagnostic::ConfigError;
    pub use crate::config::duration;
    pub use crate::event::{Event, Fields, Origin, Typed};
    pub use crate::registry::{BuildContext, Registry, StageConfig};
    pub use crate::stage::{
        BoxError, Input, Output, Sink, SinkContext, Source, SourceContext, StageKind, Transform,
    };
    pub use async_trait::async_trait;
}

pub use ack::AckStatus;
pub use config::diagnostic::ConfigError;
pub use event::{Event, Fields, Origin};
pub use registry::{BuildContext, Registry, StageConfig};
pub use stage::{
    BoxError, Input, Output, Sink, SinkContext, Source, SourceContext, StageKind, Transform,
};

/// The layers of docs/architecture.md, checked: no module names a module of a higher layer
/// (its unit tests aside, which may build with the built-in stages).
#[cfg(test)]
mod layers {
    /// Each top-level module and its layer, as docs/architecture.md draws them.
    const LAYERS: &[(&str, u8)] = &[
        ("ack", 0),
        ("config", 0),
        ("event", 0),
        ("logging", 0),
        ("registry", 0),
        ("stage", 0),
        ("telemetry", 0),
        ("testing", 0),
        ("throttle", 0),
        ("compiler", 1),
        ("topology", 1),
        ("monitor", 2),
        ("report", 3),
        ("stages", 3),
        ("cli", 4),
    ];

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// The `crate::x` modules a source file's code names: outside comments (a doc may point
    /// anywhere) and outside its `#[cfg(test)]` module.
    fn named(text: &str) -> Vec<String> {
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
        code.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .flat_map(|line| {
                line.match_indices("crate::").map(move |(at, _)| {
                    line[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect::<String>()
                })
            })
            .collect()
    }

    #[test]
    fn no_module_imports_from_a_higher_layer() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut upward = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let Some(own) = layer(top.trim_end_matches(".rs")) else {
                continue; // lib.rs and main.rs sit above everything
            };
            let text = std::fs::read_to_string(&path).unwrap();
            for module in named(&text) {
                if layer(&module).is_some_and(|l| l > own) {
                    upward.push(format!("{} names crate::{module}", relative.display()));
                }
            }
        }
        upward.sort();
        upward.dedup();
        assert!(
            upward.is_empty(),
            "imports from a higher layer:\n{}",
            upward.join("\n")
        );
    }
}
