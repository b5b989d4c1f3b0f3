//! A `pipe` binary with a stage of its own: implement the trait, register it, call the CLI.
//!
//! ```sh
//! cargo run --example custom_stage -- run examples/custom_stage.yaml
//! ```

use std::process::ExitCode;

use pipe::{BoxError, BuildContext, ConfigError, Event, Registry, StageConfig, Transform};
use serde::Deserialize;
use serde_json::Value;

/// Settings of the `uppercase` transform, as written in the pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UppercaseConfig {
    /// Fields whose string values are upper-cased; other fields pass unchanged.
    fields: Vec<String>,
}

impl StageConfig for UppercaseConfig {
    const TYPE: &'static str = "uppercase";
    const DESCRIPTION: &'static str = "upper-cases the string values of the named fields";
    type Stage = dyn Transform;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, Vec<ConfigError>> {
        if self.fields.is_empty() {
            return Err(ConfigError::at("fields", "name at least one field").into());
        }
        Ok(Box::new(Uppercase {
            fields: self.fields,
        }))
    }
}

struct Uppercase {
    fields: Vec<String>,
}

impl Transform for Uppercase {
    fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        for name in &self.fields {
            if let Some(Value::String(text)) = event.fields_mut().get_mut(name) {
                *text = text.to_uppercase();
            }
        }
        out.push(event);
        Ok(())
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register::<UppercaseConfig>();
    pipe::cli::main(registry)
}
