//! Located, secret-free messages about a pipeline file.
//!
//! Every problem found while loading and validating a pipeline becomes a [`Diagnostic`] that
//! names the file, the line and column where known, and the stage (id and type). They are
//! collected, not thrown, so that one run of `pipe validate` reports every mistake at once.

use std::fmt;

use crate::stage::StageKind;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The pipeline cannot run.
    Error,
    /// The pipeline can run, but probably not as meant.
    Warning,
}

/// A 1-based line and column in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

/// The stage a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRef {
    /// Source, transform or sink.
    pub kind: StageKind,
    /// The stage id.
    pub id: String,
    /// The `type:` as written, when there is one.
    pub type_name: Option<String>,
}

/// One problem found in a pipeline file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file's name, as given.
    pub file: String,
    /// Where in the file, when it can be told.
    pub location: Option<Location>,
    /// The stage it is about, if any.
    pub stage: Option<StageRef>,
    /// What is wrong, with any interpolated value scrubbed out.
    pub message: String,
}

impl Diagnostic {
    /// Whether this diagnostic stops the pipeline.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(Location { line, column }) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if let Some(stage) = &self.stage {
            write!(f, "{} `{}`", stage.kind, stage.id)?;
            if let Some(type_name) = &stage.type_name {
                write!(f, " (type {type_name})")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a pipeline (warnings included), as one error value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The diagnostics that are errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A problem a stage found in its own settings while building. `field` is the path inside the
/// stage's entry (`regex`, `targets[2].url`), used to find the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's path inside the stage entry, if the problem is in one setting.
    pub field: Option<String>,
    /// What is wrong; must not contain a secret value.
    pub message: String,
}

impl ConfigError {
    /// An error about the stage as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field of the stage's settings.
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Vec<ConfigError> {
    fn from(error: ConfigError) -> Self {
        vec![error]
    }
}
