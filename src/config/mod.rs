//! Pipeline files: reading the YAML into stage entries, with every problem located.
//!
//! A pipeline file has three optional maps, `sources:`, `transforms:` and `sinks:`, keyed by
//! stage id. Each entry has `type:`, transforms and sinks have `inputs:`, and the rest of the
//! entry is the stage's own settings, deserialized later into the stage's config struct (see
//! [`crate::registry`]). This module does the structural part and collects diagnostics; the
//! graph checks and stage builds happen in [`crate::compiler`].

pub mod diagnostic;
pub mod duration;
pub mod interpolate;
pub mod locate;

use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::stage::StageKind;
use diagnostic::{Diagnostic, Location, Severity, StageRef};
use locate::{join_key, Locations};

/// One stage entry of a pipeline file, before its settings are deserialized.
#[derive(Debug, Clone)]
pub struct StageEntry {
    /// Which section the entry is in.
    pub kind: StageKind,
    /// The entry's key: the stage id.
    pub id: String,
    /// `None` when the entry has no usable `type:` (already reported).
    pub type_name: Option<String>,
    /// The ids in its `inputs:`, as written.
    pub inputs: Vec<String>,
    /// The entry without `type` and `inputs`: the stage's own settings.
    pub settings: Value,
    /// Where the entry sits in the document, e.g. `sinks.out`.
    pub path: String,
}

impl StageEntry {
    /// How diagnostics name this stage.
    pub fn stage_ref(&self) -> StageRef {
        StageRef {
            kind: self.kind,
            id: self.id.clone(),
            type_name: self.type_name.clone(),
        }
    }
}

/// A parsed pipeline file: its stage entries and what is needed to report about them.
#[derive(Debug)]
pub struct PipelineFile {
    /// The file's name as the user gave it, used in every diagnostic.
    pub name: String,
    /// The directory relative paths in stage settings are resolved against.
    pub base_dir: PathBuf,
    /// Every stage entry, sources first, in file order within each section.
    pub stages: Vec<StageEntry>,
    locations: Locations,
    secrets: Vec<String>,
}

impl PipelineFile {
    /// Builds a diagnostic located at `path` (or its nearest known ancestor), with every
    /// interpolated value scrubbed from the message.
    pub fn diagnostic(
        &self,
        severity: Severity,
        path: &str,
        stage: Option<&StageEntry>,
        message: &str,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.name.clone(),
            location: self.locations.find(path),
            stage: stage.map(StageEntry::stage_ref),
            message: interpolate::redact(message, &self.secrets),
        }
    }

    /// The entry with id `id`.
    pub fn stage(&self, id: &str) -> Option<&StageEntry> {
        self.stages.iter().find(|s| s.id == id)
    }
}

/// Reads and parses the pipeline file at `path`, interpolating from the process environment.
pub fn load(path: &Path) -> (Option<PipelineFile>, Vec<Diagnostic>) {
    let name = path.display().to_string();
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&name, base_dir, &text, &|var| std::env::var(var).ok()),
        Err(error) => (
            None,
            vec![Diagnostic {
                severity: Severity::Error,
                file: name,
                location: None,
                stage: None,
                message: format!("cannot read the file: {error}"),
            }],
        ),
    }
}

/// Parses pipeline text. `lookup` resolves `${VAR}` references.
pub fn parse(
    name: &str,
    base_dir: PathBuf,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Option<PipelineFile>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut document: Value = match serde_norway::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Mapping::new()),
        Ok(value) => value,
        Err(error) => {
            let location = error.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: name.to_owned(),
                location,
                stage: None,
                message: format!("invalid YAML: {error}"),
            });
            return (None, diagnostics);
        }
    };

    let mut file = PipelineFile {
        name: name.to_owned(),
        base_dir,
        stages: Vec::new(),
        locations: Locations::index(text),
        secrets: Vec::new(),
    };

    let mut secrets = Vec::new();
    let interpolation_errors = interpolate::interpolate(&mut document, "", lookup, &mut secrets);
    file.secrets = secrets;
    for error in interpolation_errors {
        diagnostics.push(file.diagnostic(Severity::Error, &error.path, None, &error.message));
    }

    let Value::Mapping(top) = document else {
        diagnostics.push(file.diagnostic(
            Severity::Error,
            "",
            None,
            "a pipeline file must be a mapping with `sources:`, `transforms:` and `sinks:`",
        ));
        return (None, diagnostics);
    };

    for (key, value) in top {
        let section = match key.as_str().and_then(StageKind::from_section) {
            Some(kind) => kind,
            None => {
                let key = key_text(&key);
                diagnostics.push(file.diagnostic(
                    Severity::Error,
                    &key,
                    None,
                    &format!("unknown top-level key `{key}`, expected `sources`, `transforms` or `sinks`"),
                ));
                continue;
            }
        };
        let section_name = section.section();
        let entries = match value {
            Value::Mapping(entries) => entries,
            Value::Null => continue,
            _ => {
                diagnostics.push(file.diagnostic(
                    Severity::Error,
                    section_name,
                    None,
                    &format!("`{section_name}` must be a map of stage ids to stage settings"),
                ));
                continue;
            }
        };
        for (id, entry) in entries {
            let id = key_text(&id);
            let path = join_key(section_name, &id);
            if let Some(stage) = stage_entry(&file, section, id, path, entry, &mut diagnostics) {
                file.stages.push(stage);
            }
        }
    }

    (Some(file), diagnostics)
}

fn stage_entry(
    file: &PipelineFile,
    kind: StageKind,
    id: String,
    path: String,
    entry: Value,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<StageEntry> {
    let mut stage = StageEntry {
        kind,
        id,
        type_name: None,
        inputs: Vec::new(),
        settings: Value::Mapping(Mapping::new()),
        path,
    };
    let mut error = |stage: &StageEntry, at: &str, message: String| {
        diagnostics.push(file.diagnostic(Severity::Error, at, Some(stage), &message));
    };

    if !is_valid_id(&stage.id) {
        error(
            &stage,
            &stage.path,
            format!(
                "invalid stage id `{}`: use letters, digits, `_` and `-`",
                stage.id
            ),
        );
        return None;
    }
    let Value::Mapping(mut settings) = entry else {
        error(
            &stage,
            &stage.path,
            "a stage entry must be a map with at least `type:`".to_owned(),
        );
        return Some(stage);
    };

    let type_path = join_key(&stage.path, "type");
    match settings.shift_remove("type") {
        Some(Value::String(type_name)) => stage.type_name = Some(type_name),
        Some(_) => error(&stage, &type_path, "`type` must be a string".to_owned()),
        None => error(
            &stage,
            &stage.path,
            "missing required field `type`".to_owned(),
        ),
    }

    let inputs_path = join_key(&stage.path, "inputs");
    match (kind, settings.shift_remove("inputs")) {
        (StageKind::Source, Some(_)) => error(
            &stage,
            &inputs_path,
            "sources do not take `inputs`: they are where events enter the pipeline".to_owned(),
        ),
        (StageKind::Source, None) => {}
        (_, None) => error(
            &stage,
            &stage.path,
            format!(
                "missing required field `inputs`: a {} reads from at least one stage",
                kind
            ),
        ),
        (_, Some(Value::Sequence(items))) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(input) => stage.inputs.push(input),
                    _ => error(
                        &stage,
                        &locate::join_index(&inputs_path, i),
                        "each input must be a stage id (a string)".to_owned(),
                    ),
                }
            }
            if stage.inputs.is_empty() {
                error(
                    &stage,
                    &inputs_path,
                    format!("`inputs` is empty: a {kind} reads from at least one stage"),
                );
            }
        }
        (_, Some(_)) => error(
            &stage,
            &inputs_path,
            "`inputs` must be a list of stage ids, such as `inputs: [source_id]`".to_owned(),
        ),
    }

    stage.settings = Value::Mapping(settings);
    Some(stage)
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned()),
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<PipelineFile>, Vec<String>) {
        let (file, diagnostics) = parse("p.yaml", PathBuf::from("."), text, &|v| match v {
            "SECRET" => Some("s3cr3t-value".into()),
            _ => None,
        });
        (file, diagnostics.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn splits_entries_into_type_inputs_and_settings() {
        let (file, errors) = parse_text(
            "sources:\n  gen:\n    type: generate\n    count: 3\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let file = file.unwrap();
        let out = file.stage("out").unwrap();
        assert_eq!(out.kind, StageKind::Sink);
        assert_eq!(out.type_name.as_deref(), Some("console"));
        assert_eq!(out.inputs, vec!["gen"]);
        let gen = file.stage("gen").unwrap();
        assert_eq!(gen.settings["count"], Value::Number(3.into()));
        assert!(gen.settings.get("type").is_none());
    }

    #[test]
    fn reports_structural_mistakes_with_locations() {
        let (_, errors) = parse_text(
            "source:\n  x: {}\nsources:\n  gen:\n    count: 3\n    inputs: [a]\nsinks:\n  out:\n    type: console\n  bad:\n    type: console\n    inputs: oops\n  empty:\n    type: console\n    inputs: []\n",
        );
        assert_eq!(
            errors,
            vec![
                "p.yaml:1:1: error: unknown top-level key `source`, expected `sources`, `transforms` or `sinks`",
                "p.yaml:4:3: error: source `gen`: missing required field `type`",
                "p.yaml:6:5: error: source `gen`: sources do not take `inputs`: they are where events enter the pipeline",
                "p.yaml:8:3: error: sink `out` (type console): missing required field `inputs`: a sink reads from at least one stage",
                "p.yaml:12:5: error: sink `bad` (type console): `inputs` must be a list of stage ids, such as `inputs: [source_id]`",
                "p.yaml:15:5: error: sink `empty` (type console): `inputs` is empty: a sink reads from at least one stage",
            ]
        );
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        let (file, errors) = parse_text("sources:\n  gen: [unclosed\n");
        assert!(file.is_none());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("p.yaml:3:1: error: invalid YAML:"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn interpolation_errors_are_located_and_secrets_never_echoed() {
        let (file, errors) = parse_text(
            "sources:\n  gen:\n    type: generate\n    fields:\n      a: ${MISSING}\n      b: ${SECRET}\n",
        );
        assert_eq!(
            errors,
            vec!["p.yaml:5:7: error: environment variable `MISSING` is not set and has no default (write `${MISSING:-default}`)"]
        );
        let file = file.unwrap();
        let diagnostic = file.diagnostic(Severity::Error, "sources.gen", None, "bad s3cr3t-value");
        assert_eq!(diagnostic.message, "bad ***");
    }
}
