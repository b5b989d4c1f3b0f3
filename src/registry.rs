//! The explicit list of stage types a `pipe` binary knows.
//!
//! A stage type is a config struct that implements [`StageConfig`]: its YAML `type:` name, a
//! one-line description, and a `build` step that validates the settings and compiles everything
//! up front. [`Registry::register`] adds it. The built-in stages are registered by
//! `Registry::with_builtins`, one line each, in `src/stages/mod.rs` (above this module: the
//! registry knows no stage); another crate adds its own the same way before calling
//! `pipe::cli::main`. The shape follows arroyo's connector registry
//! (`crates/arroyo-connectors/src/lib.rs`): a plain list is easier to read than link-time magic,
//! and a missing stage fails loudly.

use std::path::PathBuf;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_norway::Value;

use crate::config::diagnostic::ConfigError;
use crate::stage::{Sink, Source, StageKind, Transform};
use crate::telemetry::Telemetry;

/// What a stage's build step may use.
#[derive(Clone)]
pub struct BuildContext {
    /// The id of the stage being built.
    pub stage_id: String,
    /// The stage's `type:`.
    pub type_name: String,
    /// The directory of the pipeline file: relative paths in settings are relative to it.
    pub base_dir: PathBuf,
    /// The stage's logger, with its id and type as fields.
    pub logger: slog::Logger,
    /// The run's metrics and health, where the stage takes its counters and reports its
    /// readiness.
    pub telemetry: Telemetry,
}

impl BuildContext {
    /// A context for building stage `stage_id` outside a pipeline file (tests, embedding),
    /// with a telemetry of its own.
    pub fn new(
        stage_id: impl Into<String>,
        base_dir: impl Into<PathBuf>,
        logger: slog::Logger,
    ) -> Self {
        Self {
            stage_id: stage_id.into(),
            type_name: String::new(),
            base_dir: base_dir.into(),
            logger,
            telemetry: Telemetry::new(),
        }
    }

    /// The labels of this stage's own metrics: `stage` and `type`.
    pub fn labels(&self) -> crate::telemetry::Labels {
        crate::telemetry::stage_labels(&self.stage_id, &self.type_name)
    }

    /// This stage's handle on its readiness.
    pub fn health(&self) -> crate::telemetry::StageHealth {
        self.telemetry.health().stage(&self.stage_id)
    }

    /// Resolves a path from the settings against the pipeline file's directory.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// A built stage, ready for the executor.
pub enum BuiltStage {
    /// A source.
    Source(Box<dyn Source>),
    /// A transform.
    Transform(Box<dyn Transform>),
    /// A sink.
    Sink(Box<dyn Sink>),
}

/// Ties a stage trait object type to its [`StageKind`]. Implemented for `dyn Source`,
/// `dyn Transform` and `dyn Sink`.
pub trait StageType {
    /// The kind this trait object type is.
    const KIND: StageKind;
    /// Wraps a built stage for the executor.
    fn into_built(stage: Box<Self>) -> BuiltStage;
}

impl StageType for dyn Source {
    const KIND: StageKind = StageKind::Source;
    fn into_built(stage: Box<Self>) -> BuiltStage {
        BuiltStage::Source(stage)
    }
}

impl StageType for dyn Transform {
    const KIND: StageKind = StageKind::Transform;
    fn into_built(stage: Box<Self>) -> BuiltStage {
        BuiltStage::Transform(stage)
    }
}

impl StageType for dyn Sink {
    const KIND: StageKind = StageKind::Sink;
    fn into_built(stage: Box<Self>) -> BuiltStage {
        BuiltStage::Sink(stage)
    }
}

/// A stage type's settings. Derive `Deserialize` with `#[serde(deny_unknown_fields)]`.
pub trait StageConfig: DeserializeOwned + 'static {
    /// The name used in `type:`.
    const TYPE: &'static str;
    /// One line for `pipe stages`.
    const DESCRIPTION: &'static str;
    /// `dyn Source`, `dyn Transform` or `dyn Sink`.
    type Stage: ?Sized + StageType;

    /// Validates the settings and builds the stage: compile regexes, create clients and pools,
    /// but do no I/O that could block or fail because a service is down.
    fn build(self, cx: &BuildContext) -> Result<Box<Self::Stage>, Vec<ConfigError>>;
}

type BuildFn = fn(Value, &BuildContext) -> Result<BuiltStage, Vec<ConfigError>>;

/// One registered stage type.
pub struct Registration {
    /// Source, transform or sink.
    pub kind: StageKind,
    /// The name used in `type:`.
    pub type_name: &'static str,
    /// One line for `pipe stages`.
    pub description: &'static str,
    /// The top-level settings fields, read from the config struct itself.
    pub fields: &'static [&'static str],
    build: BuildFn,
}

impl Registration {
    /// Deserializes `settings` into the stage's config and builds it.
    pub fn build(
        &self,
        settings: Value,
        cx: &BuildContext,
    ) -> Result<BuiltStage, Vec<ConfigError>> {
        (self.build)(settings, cx)
    }
}

/// The stage types a binary knows, by kind and `type:` name.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Registration>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage type.
    ///
    /// # Panics
    /// If a stage of the same kind and name is already registered: two stages claiming one name
    /// is a programming error that must not depend on registration order.
    pub fn register<C: StageConfig>(&mut self) -> &mut Self {
        let kind = <C::Stage as StageType>::KIND;
        assert!(
            self.get(kind, C::TYPE).is_none(),
            "{kind} type `{}` is registered twice",
            C::TYPE
        );
        self.entries.push(Registration {
            kind,
            type_name: C::TYPE,
            description: C::DESCRIPTION,
            fields: struct_fields::<C>(),
            build: build_stage::<C>,
        });
        self
    }

    /// The registration of `type_name` among the stages of `kind`.
    pub fn get(&self, kind: StageKind, type_name: &str) -> Option<&Registration> {
        self.entries
            .iter()
            .find(|r| r.kind == kind && r.type_name == type_name)
    }

    /// The registered names of one kind, sorted.
    pub fn type_names(&self, kind: StageKind) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .entries
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.type_name)
            .collect();
        names.sort_unstable();
        names
    }

    /// Every registration, sources first, then transforms, then sinks, each by name.
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        let mut all: Vec<_> = self.entries.iter().collect();
        all.sort_by_key(|r| (r.kind, r.type_name));
        all.into_iter()
    }
}

fn build_stage<C: StageConfig>(
    settings: Value,
    cx: &BuildContext,
) -> Result<BuiltStage, Vec<ConfigError>> {
    let config: C = serde_path_to_error::deserialize(settings).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let mut field = (path != ".").then_some(path);
        // serde reports an unknown field at its parent; point at the field itself.
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = Some(match field {
                Some(parent) => format!("{parent}.{name}"),
                None => name.to_owned(),
            });
        }
        vec![ConfigError { field, message }]
    })?;
    config.build(cx).map(<C::Stage as StageType>::into_built)
}

/// The field names of a config struct, read from its `Deserialize` impl: serde passes them to
/// `deserialize_struct`. The trick is serde-aux's `serde_introspect`; this is our own version.
fn struct_fields<C: DeserializeOwned>() -> &'static [&'static str] {
    struct Introspect<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Introspect<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = C::deserialize(Introspect(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::sinks::console::ConsoleConfig;

    #[test]
    fn reads_field_names_from_the_config_struct() {
        assert_eq!(struct_fields::<ConsoleConfig>(), &["pretty"]);
    }

    #[test]
    #[should_panic(expected = "sink type `console` is registered twice")]
    fn refuses_duplicate_registrations() {
        Registry::with_builtins().register::<ConsoleConfig>();
    }
}
