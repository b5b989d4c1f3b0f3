//! `${VAR}` and `${VAR:-default}` inside string values of a parsed pipeline file.
//!
//! Interpolation runs after YAML parsing, on string values only, so a variable's value can never
//! change the document's structure. `$$` stands for a literal `$`. A variable that is unset (or
//! empty) takes its default; without one it is an error. A value with a line break is refused.
//! Every substituted value is remembered so that diagnostics can scrub it: a secret passed in
//! through the environment is never echoed back.

use serde_norway::Value;

use super::locate::{join_index, join_key};

/// An interpolation problem at a path of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// The value's path in the document, such as `sinks.db.url`.
    pub path: String,
    /// What is wrong (never the value itself).
    pub message: String,
}

/// Interpolates every string value under `value` in place. Returns the errors, and pushes each
/// substituted value onto `substituted`.
pub fn interpolate(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<String>,
) -> Vec<InterpolationError> {
    let mut errors = Vec::new();
    walk(value, path, lookup, substituted, &mut errors);
    errors
}

fn walk(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<String>,
    errors: &mut Vec<InterpolationError>,
) {
    match value {
        Value::String(text) => match expand(text, lookup, substituted) {
            Ok(Some(expanded)) => *text = expanded,
            Ok(None) => {}
            Err(message) => errors.push(InterpolationError {
                path: path.to_owned(),
                message,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &join_index(path, i), lookup, substituted, errors);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(key) => key.clone(),
                    other => serde_norway::to_string(other)
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default(),
                };
                walk(item, &join_key(path, &key), lookup, substituted, errors);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup, substituted, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string. `Ok(None)` when it has nothing to expand.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<String>,
) -> Result<Option<String>, String> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unclosed `${` (write `$$` for a literal `$`)".to_owned())?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a valid variable reference (names are letters, digits and _)"
                ));
            }
            let value = match lookup(name).filter(|v| !v.is_empty()) {
                Some(value) => {
                    if value.contains(['\n', '\r']) {
                        return Err(format!(
                            "environment variable `{name}` contains a line break, which is not allowed"
                        ));
                    }
                    substituted.push(value.clone());
                    value
                }
                None => default
                    .ok_or_else(|| {
                        format!("environment variable `{name}` is not set and has no default (write `${{{name}:-default}}`)")
                    })?
                    .to_owned(),
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every substituted value found in `message` with `***`.
pub fn redact(message: &str, secrets: &[String]) -> String {
    let mut message = message.to_owned();
    // Longest first, so a secret that contains another is scrubbed whole.
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.len() >= 3).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        message = message.replace(secret.as_str(), "***");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<Option<String>, String> {
        expand(text, &env, &mut Vec::new())
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(run("plain"), Ok(None));
        assert_eq!(run("${HOST}:5432"), Ok(Some("db.example:5432".into())));
        assert_eq!(
            run("${NOPE:-127.0.0.1:9092}"),
            Ok(Some("127.0.0.1:9092".into()))
        );
        assert_eq!(run("${EMPTY:-fallback}"), Ok(Some("fallback".into())));
        assert_eq!(run("${HOST:-unused}"), Ok(Some("db.example".into())));
        assert_eq!(run("cost: $$5 and $x"), Ok(Some("cost: $5 and $x".into())));
    }

    #[test]
    fn reports_unset_broken_and_multiline_variables() {
        assert!(run("${NOPE}")
            .unwrap_err()
            .contains("`NOPE` is not set and has no default"));
        assert!(run("${HOST").unwrap_err().contains("unclosed"));
        assert!(run("${1X}")
            .unwrap_err()
            .contains("not a valid variable reference"));
        let err = run("${MULTI}").unwrap_err();
        assert!(err.contains("`MULTI` contains a line break"));
        assert!(!err.contains("a\nb"));
    }

    #[test]
    fn interpolates_nested_strings_only_and_records_paths() {
        let mut doc: Value =
            serde_norway::from_str("a: ${HOST}\nb: [1, '${NOPE}']\nc: {d: '${HOST:-x}'}").unwrap();
        let mut seen = Vec::new();
        let errors = interpolate(&mut doc, "root", &env, &mut seen);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "root.b[1]");
        assert_eq!(doc["a"], Value::String("db.example".into()));
        assert_eq!(doc["c"]["d"], Value::String("db.example".into()));
        assert_eq!(seen, vec!["db.example".to_owned(), "db.example".to_owned()]);
    }

    #[test]
    fn redacts_substituted_values() {
        let secrets = vec!["hunter2".to_owned(), "hunter2-long".to_owned()];
        assert_eq!(
            redact("bad value `hunter2-long` and hunter2", &secrets),
            "bad value `***` and ***"
        );
    }
}
