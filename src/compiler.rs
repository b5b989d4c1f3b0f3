//! Turns a parsed pipeline file into built stages, or into the complete list of what is wrong.
//!
//! Nothing runs until the whole pipeline has passed: unknown types, bad settings (each stage's
//! own build step validates them), unknown or misdirected inputs, duplicate ids and cycles are
//! all collected and reported together, sorted by position in the file. The approach is
//! vector's `src/config/compiler.rs`; the code is ours.

use std::collections::HashMap;
use std::path::Path;

use crate::config::diagnostic::{Diagnostic, Diagnostics, Severity};
use crate::config::locate::{join_index, join_key};
use crate::config::{self, PipelineFile, StageEntry};
use crate::registry::{BuildContext, BuiltStage, Registry};
use crate::stage::StageKind;
use crate::telemetry::Telemetry;

/// A stage that passed validation, built and ready to run.
pub struct CompiledStage {
    /// The stage's id in the file.
    pub id: String,
    /// Its `type:`.
    pub type_name: String,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// The ids of the stages it reads from (none for a source).
    pub inputs: Vec<String>,
    /// The stage itself, built by its config's `build`.
    pub stage: BuiltStage,
}

/// A validated pipeline: its stages in file order, and the warnings found on the way.
pub struct CompiledPipeline {
    /// The file's name, as given on the command line (for logs and `pipe graph`).
    pub name: String,
    /// The stages in the order the file lists them.
    pub stages: Vec<CompiledStage>,
    /// Problems that do not stop the pipeline (a stage whose output nothing reads).
    pub warnings: Vec<Diagnostic>,
    /// The run's metrics and health, which its stages were built with.
    pub telemetry: Telemetry,
}

/// Loads, validates and builds the pipeline at `path`.
pub fn load(
    path: &Path,
    registry: &Registry,
    logger: &slog::Logger,
) -> Result<CompiledPipeline, Diagnostics> {
    let (file, diagnostics) = config::load(path);
    finish(file, diagnostics, registry, logger)
}

/// Validates and builds a pipeline from text (tests, embedding).
pub fn from_str(
    name: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    registry: &Registry,
    logger: &slog::Logger,
) -> Result<CompiledPipeline, Diagnostics> {
    let (file, diagnostics) = config::parse(name, ".".into(), text, lookup);
    finish(file, diagnostics, registry, logger)
}

fn finish(
    file: Option<PipelineFile>,
    mut diagnostics: Vec<Diagnostic>,
    registry: &Registry,
    logger: &slog::Logger,
) -> Result<CompiledPipeline, Diagnostics> {
    let Some(file) = file else {
        return Err(Diagnostics(diagnostics));
    };
    let telemetry = Telemetry::new();
    let stages = compile(&file, registry, logger, &telemetry, &mut diagnostics);
    // Stable: messages about one position keep the order they were found in.
    diagnostics.sort_by_key(|d| (d.location, d.severity));
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(Diagnostics(diagnostics));
    }
    Ok(CompiledPipeline {
        name: file.name,
        stages,
        warnings: diagnostics,
        telemetry,
    })
}

fn compile(
    file: &PipelineFile,
    registry: &Registry,
    logger: &slog::Logger,
    telemetry: &Telemetry,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<CompiledStage> {
    let mut error = |path: &str, stage: Option<&StageEntry>, message: String| {
        diagnostics.push(file.diagnostic(Severity::Error, path, stage, &message));
    };

    // Ids are unique across the three maps; later duplicates are reported and left out.
    let mut by_id: HashMap<&str, &StageEntry> = HashMap::new();
    let mut unique = Vec::new();
    for stage in &file.stages {
        match by_id.get(stage.id.as_str()) {
            Some(first) => error(
                &stage.path,
                Some(stage),
                format!(
                    "duplicate stage id `{}`: it is already a {} (`{}`)",
                    stage.id, first.kind, first.path
                ),
            ),
            None => {
                by_id.insert(&stage.id, stage);
                unique.push(stage);
            }
        }
    }
    if !unique.iter().any(|s| s.kind == StageKind::Source) {
        error("", None, "the pipeline has no sources".to_owned());
    }
    if !unique.iter().any(|s| s.kind == StageKind::Sink) {
        error("", None, "the pipeline has no sinks".to_owned());
    }

    // Inputs must name stages that produce output.
    for stage in &unique {
        for (i, input) in stage.inputs.iter().enumerate() {
            let at = join_index(&join_key(&stage.path, "inputs"), i);
            match by_id.get(input.as_str()) {
                None => {
                    let mut known: Vec<_> = unique
                        .iter()
                        .filter(|s| s.kind != StageKind::Sink)
                        .map(|s| s.id.as_str())
                        .collect();
                    known.sort_unstable();
                    let known: Vec<_> = known.iter().map(|id| format!("`{id}`")).collect();
                    error(
                        &at,
                        Some(stage),
                        format!(
                            "unknown input `{input}`; stages with output: {}",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                Some(target) if target.kind == StageKind::Sink => error(
                    &at,
                    Some(stage),
                    format!("input `{input}` is a sink, and sinks have no output to read"),
                ),
                Some(_) => {}
            }
        }
    }

    for cycle in find_cycles(&unique, &by_id) {
        let first = by_id[cycle[0].as_str()];
        error(
            &first.path,
            Some(first),
            format!("cycle in the graph: {}", cycle.join(" -> ")),
        );
    }

    for stage in &unique {
        if stage.kind != StageKind::Sink && !unique.iter().any(|s| s.inputs.contains(&stage.id)) {
            diagnostics.push(file.diagnostic(
                Severity::Warning,
                &stage.path,
                Some(stage),
                "nothing reads this stage's output; its events are dropped",
            ));
        }
    }

    let mut built = Vec::new();
    for stage in unique {
        let Some(type_name) = &stage.type_name else {
            continue; // already reported
        };
        let Some(registration) = registry.get(stage.kind, type_name) else {
            let known = registry.type_names(stage.kind);
            let known = if known.is_empty() {
                "none are registered".to_owned()
            } else {
                known.join(", ")
            };
            diagnostics.push(file.diagnostic(
                Severity::Error,
                &join_key(&stage.path, "type"),
                Some(stage),
                &format!(
                    "unknown {} type `{type_name}`; known {} types: {known}",
                    stage.kind, stage.kind
                ),
            ));
            continue;
        };
        let cx = BuildContext {
            stage_id: stage.id.clone(),
            type_name: type_name.clone(),
            base_dir: file.base_dir.clone(),
            logger: logger.new(slog::o!("stage" => stage.id.clone(), "type" => type_name.clone())),
            telemetry: telemetry.clone(),
        };
        match registration.build(stage.settings.clone(), &cx) {
            Ok(built_stage) => built.push(CompiledStage {
                id: stage.id.clone(),
                type_name: type_name.clone(),
                kind: stage.kind,
                inputs: stage.inputs.clone(),
                stage: built_stage,
            }),
            Err(errors) => {
                for e in errors {
                    let at = match &e.field {
                        Some(field) if field.starts_with('[') => format!("{}{field}", stage.path),
                        Some(field) => join_key(&stage.path, field),
                        None => stage.path.clone(),
                    };
                    diagnostics.push(file.diagnostic(
                        Severity::Error,
                        &at,
                        Some(stage),
                        &e.message,
                    ));
                }
            }
        }
    }
    built
}

/// Every cycle among the stages, each as the ids along it, first id repeated at the end.
fn find_cycles(stages: &[&StageEntry], by_id: &HashMap<&str, &StageEntry>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        by_id: &HashMap<&str, &'a StageEntry>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        marks.insert(id, Mark::OnPath);
        path.push(id);
        for input in &by_id[id].inputs {
            let Some(next) = by_id.get(input.as_str()) else {
                continue;
            };
            match marks.get(next.id.as_str()).copied().unwrap_or(Mark::New) {
                Mark::New => visit(&next.id, by_id, marks, path, cycles),
                Mark::OnPath => {
                    let start = path.iter().position(|p| *p == next.id).expect("on path");
                    // Inputs point upstream; reverse so the cycle reads in data-flow order.
                    let mut cycle: Vec<String> = path[start..]
                        .iter()
                        .rev()
                        .map(|s| (*s).to_owned())
                        .collect();
                    cycle.push(cycle[0].clone());
                    cycles.push(cycle);
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
    }

    let mut marks = HashMap::new();
    let mut cycles = Vec::new();
    for stage in stages {
        if marks.get(stage.id.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            visit(&stage.id, by_id, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that does not grow with the built-ins: one source, no transforms, one sink.
    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry
            .register::<crate::stages::sources::generate::GenerateConfig>()
            .register::<crate::stages::sinks::console::ConsoleConfig>();
        registry
    }

    fn errors(text: &str) -> Vec<String> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        match from_str("p.yaml", text, &|_| None, &registry(), &logger) {
            Ok(pipeline) => pipeline.warnings.iter().map(ToString::to_string).collect(),
            Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_valid_pipeline_compiles_in_file_order() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let pipeline = from_str(
            "p.yaml",
            "sources:\n  gen:\n    type: generate\n    count: 1\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n",
            &|_| None,
            &registry(),
            &logger,
        )
        .unwrap_or_else(|d| panic!("{d}"));
        let ids: Vec<_> = pipeline.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["gen", "out"]);
        assert!(pipeline.warnings.is_empty());
    }

    #[test]
    fn unknown_types_list_the_known_ones() {
        assert_eq!(
            errors("sources:\n  gen:\n    type: genrate\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n"),
            ["p.yaml:3:5: error: source `gen` (type genrate): unknown source type `genrate`; known source types: generate"]
        );
    }

    #[test]
    fn settings_errors_name_the_field() {
        assert_eq!(
            errors("sources:\n  gen:\n    type: generate\n    intervall: 1s\n    count: many\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n"),
            [
                "p.yaml:4:5: error: source `gen` (type generate): unknown field `intervall`, expected one of `interval`, `count`, `fields`",
            ]
        );
        assert_eq!(
            errors("sources:\n  gen:\n    type: generate\n    count: many\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n"),
            ["p.yaml:4:5: error: source `gen` (type generate): invalid type: string \"many\", expected u64"]
        );
        assert_eq!(
            errors("sources:\n  gen:\n    type: generate\n    interval: soon\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n"),
            ["p.yaml:4:5: error: source `gen` (type generate): invalid duration `soon`: expected a whole number and a unit (ms, s, m, h, d), such as 250ms, 30s or 5m"]
        );
    }

    #[test]
    fn graph_mistakes_are_all_reported() {
        let text = "\
sources:
  gen:
    type: generate
transforms:
  a:
    type: t
    inputs: [b]
  b:
    type: t
    inputs: [a]
sinks:
  out:
    type: console
    inputs: [gen, nowhere, other]
  other:
    type: console
    inputs: [gen]
  gen:
    type: console
    inputs: [gen]
";
        assert_eq!(
            errors(text),
            [
                "p.yaml:6:5: error: transform `a` (type t): unknown transform type `t`; known transform types: none are registered",
                "p.yaml:8:3: error: transform `b` (type t): cycle in the graph: b -> a -> b",
                "p.yaml:9:5: error: transform `b` (type t): unknown transform type `t`; known transform types: none are registered",
                "p.yaml:14:19: error: sink `out` (type console): unknown input `nowhere`; stages with output: `a`, `b`, `gen`",
                "p.yaml:14:28: error: sink `out` (type console): input `other` is a sink, and sinks have no output to read",
                "p.yaml:18:3: error: sink `gen` (type console): duplicate stage id `gen`: it is already a source (`sources.gen`)",
            ]
        );
    }

    #[test]
    fn an_empty_pipeline_is_an_error() {
        assert_eq!(
            errors(""),
            [
                "p.yaml: error: the pipeline has no sources",
                "p.yaml: error: the pipeline has no sinks"
            ]
        );
    }
}
