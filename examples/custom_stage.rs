//! A `pipe` binary with a stage of its own: implement the trait, register it, call the CLI.
//!
//! ```sh
//! cargo run --example custom_stage -- run examples/custom_stage.yaml
//! cargo test --example custom_stage          # its unit tests, which need no service (scripts/test runs them)
//! ```
//!
//! The `uppercase` transform keeps a check result typed: it changes the struct in place
//! (`check_mut`), so no field map is made for it and the sinks write it straight from the
//! struct. Any other event is a field map, changed as one. `benches/hot_paths.rs` measures both.

use std::process::ExitCode;

use pipe::monitor::check::CheckResult;
use pipe::prelude::*;
use serde::Deserialize;
use serde_json::Value;

/// Settings of the `uppercase` transform, as written in the pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UppercaseConfig {
    /// Fields whose string values are upper-cased; other fields pass unchanged. Of a check
    /// result: `target`, `url`, `method`, `region`, `checker`.
    pub fields: Vec<String>,
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

/// A check result's text field, by its name in message schema v1.
fn check_text<'a>(check: &'a mut CheckResult, name: &str) -> Option<&'a mut String> {
    match name {
        "target" => Some(&mut check.target),
        "url" => Some(&mut check.url),
        "method" => Some(&mut check.method),
        "region" => check.region.as_mut(),
        "checker" => check.checker.as_mut(),
        _ => None,
    }
}

impl Transform for Uppercase {
    fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        if let Some(check) = event.check_mut() {
            for name in &self.fields {
                if let Some(text) = check_text(check, name) {
                    *text = text.to_uppercase();
                }
            }
        } else {
            let fields = event.fields_mut();
            for name in &self.fields {
                if let Some(Value::String(text)) = fields.get_mut(name) {
                    *text = text.to_uppercase();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> CheckResult {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "check_id": "8a036c86-1f8f-5289-af3e-1f909db5869c",
            "target": "shop", "url": "https://shop.example/", "method": "GET",
            "scheduled_at": "2026-12-02T08:00:00.000Z", "started_at": "2026-12-02T08:00:00.001Z",
            "response_time_ms": 12.5,
            "timings_ms": {"dns": 1.0, "connect": 1.0, "tls": 3.0, "first_byte": 6.0, "transfer": 0.5},
            "status_code": 200, "error": null, "regex": null, "regex_matched": null,
            "latency_class": null, "up": true, "body_bytes": 512,
            "remote_addr": "192.0.2.10:443", "http_version": "HTTP/2"
        }))
        .unwrap()
    }

    #[test]
    fn a_check_is_upper_cased_and_stays_typed() {
        let mut stage =
            pipe::testing::build::<UppercaseConfig>("fields: [target, method]").unwrap();
        let out = pipe::testing::transform(&mut *stage, Event::from_check(check())).unwrap();
        let check = out[0].check().expect("still a typed check");
        assert_eq!(
            (check.target.as_str(), check.url.as_str()),
            ("SHOP", "https://shop.example/")
        );
    }

    #[test]
    fn fields_are_upper_cased_and_others_pass() {
        let mut stage = pipe::testing::build::<UppercaseConfig>("fields: [greeting]").unwrap();
        let mut fields = Fields::new();
        fields.insert("greeting".into(), "hello".into());
        fields.insert("count".into(), 3.into());
        let out = pipe::testing::transform(&mut *stage, Event::new(fields)).unwrap();
        assert_eq!(out[0].get("greeting"), Some(&Value::from("HELLO")));
        assert_eq!(out[0].get("count"), Some(&Value::from(3)));
    }

    #[test]
    fn no_fields_is_a_located_error() {
        let errors = pipe::testing::build::<UppercaseConfig>("fields: []")
            .err()
            .unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("fields"));
    }
}
