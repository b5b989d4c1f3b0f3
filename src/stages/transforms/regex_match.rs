//! `regex_match`: matches a check's page body against its target's regex and records the result.
//!
//! The body arrives as the event's raw bytes (see [`crate::Event::with_raw`]), kept by
//! `http_probe` only for targets with a regex. This stage always takes it out of the event, so
//! page contents never travel further (to Kafka, say). It sets `regex_matched`, fills `captures`
//! with named groups, and lowers `up` when the page does not match.
//!
//! Patterns run on bytes (pages come in any encoding) with the regex crate, whose matching is
//! linear in the input; what needs bounding is compiling user patterns, so every pattern goes
//! through [`compile_pattern`] with size, nesting and length limits. After vector's
//! `regex_parser` transform (v0.7.0), rewritten.

use std::collections::HashMap;
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::diagnostic::ConfigError;
use crate::event::Event;
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Transform};

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;
/// Compiled program size limit per pattern.
const SIZE_LIMIT: usize = 1 << 20;
/// Deepest nesting of groups and repetitions.
const NEST_LIMIT: u32 = 64;
/// Distinct per-target patterns kept compiled; past it the cache starts over.
const CACHE_LIMIT: usize = 100_000;

/// Compiles a user pattern with the limits every pattern in `pipe` is held to.
pub fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "the regex is {} bytes long; the limit is {MAX_PATTERN_LEN}",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .nest_limit(NEST_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))
}

/// The settings of the `regex_match` transform.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatchConfig {
    /// A pattern for checks whose target has no `regex` of its own. The source must keep those
    /// bodies too (`http_probe`'s `keep_bodies: true`).
    #[serde(default)]
    pub pattern: Option<String>,
}

impl StageConfig for RegexMatchConfig {
    const TYPE: &'static str = "regex_match";
    const DESCRIPTION: &'static str =
        "matches each check's page body against its regex, sets regex_matched and captures, drops the body";
    type Stage = dyn Transform;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Transform>, Vec<ConfigError>> {
        let pattern = match self.pattern {
            Some(pattern) => {
                let regex = compile_pattern(&pattern).map_err(|e| ConfigError::at("pattern", e))?;
                Some((pattern, Arc::new(regex)))
            }
            None => None,
        };
        Ok(Box::new(RegexMatch {
            pattern,
            cache: HashMap::new(),
        }))
    }
}

/// The built `regex_match` transform.
pub struct RegexMatch {
    pattern: Option<(String, Arc<Regex>)>,
    cache: HashMap<String, Arc<Regex>>,
}

impl RegexMatch {
    /// The compiled form of a per-target pattern, compiled on first sight and kept.
    fn compiled(&mut self, pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(regex) = self.cache.get(pattern) {
            return Ok(Arc::clone(regex));
        }
        let regex = Arc::new(compile_pattern(pattern)?);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(pattern.to_owned(), Arc::clone(&regex));
        Ok(regex)
    }
}

/// What matching made of one event.
enum Verdict {
    /// No pattern applies: the event passes untouched.
    NoPattern,
    /// A pattern applies but there is no body (the check failed first): `regex_matched` stays
    /// null and `up` is already false.
    NoBody,
    /// The event's own pattern does not compile (only events from outside `http_probe`, which
    /// validates, can carry one).
    BadPattern(String),
    /// The page matched, with these named groups.
    Matched(Map<String, Value>),
    /// The page did not match.
    Unmatched,
}

impl RegexMatch {
    fn judge(&mut self, own: Option<&str>, body: Option<&[u8]>) -> Verdict {
        let regex = match (own, &self.pattern) {
            (Some(pattern), _) => self.compiled(pattern),
            (None, Some((_, regex))) => Ok(Arc::clone(regex)),
            (None, None) => return Verdict::NoPattern,
        };
        let Some(body) = body else {
            return Verdict::NoBody;
        };
        let regex = match regex {
            Ok(regex) => regex,
            Err(message) => return Verdict::BadPattern(message),
        };
        match regex.captures(body) {
            Some(found) => {
                let mut captures = Map::new();
                for name in regex.capture_names().flatten() {
                    if let Some(group) = found.name(name) {
                        let text = String::from_utf8_lossy(group.as_bytes()).into_owned();
                        captures.insert(name.to_owned(), Value::String(text));
                    }
                }
                Verdict::Matched(captures)
            }
            None => Verdict::Unmatched,
        }
    }

    /// The stage-level pattern, for an event without a pattern of its own.
    fn default_pattern(&self, own: bool) -> Option<String> {
        match (own, &self.pattern) {
            (false, Some((pattern, _))) => Some(pattern.clone()),
            _ => None,
        }
    }
}

impl Transform for RegexMatch {
    fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        let body = event.take_raw();
        let mut check = event.check_view();
        let has_own = check.regex().is_some();
        let verdict = self.judge(check.regex(), body.as_deref());
        if !matches!(verdict, Verdict::NoPattern) {
            if let Some(pattern) = self.default_pattern(has_own) {
                check.set_regex(pattern);
            }
        }
        match verdict {
            Verdict::NoPattern | Verdict::NoBody => {}
            Verdict::BadPattern(message) => {
                check.set_regex_matched(None);
                check.set_down();
                // Not a field of the schema: a typed check becomes a plain field map.
                event.insert("regex_error", message);
            }
            Verdict::Matched(captures) => {
                check.set_regex_matched(Some(true));
                if !captures.is_empty() {
                    check.set_captures(captures);
                }
            }
            Verdict::Unmatched => {
                check.set_regex_matched(Some(false));
                check.set_down();
            }
        }
        out.push(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn stage(pattern: Option<&str>) -> Box<dyn Transform> {
        let cx = BuildContext::new("body", ".", slog::Logger::root(slog::Discard, slog::o!()));
        RegexMatchConfig {
            pattern: pattern.map(str::to_owned),
        }
        .build(&cx)
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn check(fields: Value, body: Option<&'static str>) -> Event {
        let event = Event::new(fields.as_object().unwrap().clone());
        match body {
            Some(body) => event.with_raw(Bytes::from_static(body.as_bytes())),
            None => event,
        }
    }

    fn run(stage: &mut Box<dyn Transform>, event: Event) -> Event {
        let mut out = Vec::new();
        stage.transform(event, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn a_match_sets_regex_matched_and_named_captures_and_drops_the_body() {
        let mut stage = stage(None);
        let out = run(
            &mut stage,
            check(
                json!({"regex": "version (?P<major>\\d+)\\.(?P<minor>\\d+)", "up": true}),
                Some("<p>version 4.2</p>"),
            ),
        );
        assert_eq!(out.get("regex_matched"), Some(&json!(true)));
        assert_eq!(
            out.get("captures"),
            Some(&json!({"major": "4", "minor": "2"}))
        );
        assert_eq!(out.get("up"), Some(&json!(true)));
        assert!(out.raw().is_none(), "the body must not travel on");
    }

    #[test]
    fn no_match_lowers_up() {
        let mut stage = stage(None);
        let out = run(
            &mut stage,
            check(json!({"regex": "Aiven", "up": true}), Some("nothing here")),
        );
        assert_eq!(out.get("regex_matched"), Some(&json!(false)));
        assert_eq!(out.get("up"), Some(&json!(false)));
        assert!(out.get("captures").is_none());
    }

    #[test]
    fn without_a_body_nothing_is_matched() {
        let mut stage = stage(None);
        let out = run(
            &mut stage,
            check(json!({"regex": "Aiven", "up": false}), None),
        );
        assert!(out.get("regex_matched").is_none());
    }

    #[test]
    fn the_stage_pattern_applies_to_targets_without_their_own() {
        let mut stage = stage(Some("ok"));
        let out = run(
            &mut stage,
            check(json!({"regex": null, "up": true}), Some("all ok")),
        );
        assert_eq!(out.get("regex"), Some(&json!("ok")));
        assert_eq!(out.get("regex_matched"), Some(&json!(true)));
        // A target's own regex wins.
        let out = run(
            &mut stage,
            check(json!({"regex": "nope", "up": true}), Some("all ok")),
        );
        assert_eq!(out.get("regex_matched"), Some(&json!(false)));
    }

    #[test]
    fn invalid_utf8_in_a_page_does_not_stop_matching() {
        let mut stage = stage(None);
        let event = Event::new(
            json!({"regex": "latin-\\d", "up": true})
                .as_object()
                .unwrap()
                .clone(),
        )
        .with_raw(Bytes::from_static(b"caf\xe9 latin-1"));
        assert_eq!(
            run(&mut stage, event).get("regex_matched"),
            Some(&json!(true))
        );
    }

    #[test]
    fn patterns_are_bounded() {
        assert!(compile_pattern("(")
            .unwrap_err()
            .starts_with("invalid regex:"));
        assert!(compile_pattern(&"a".repeat(MAX_PATTERN_LEN + 1))
            .unwrap_err()
            .contains("the limit is 4096"));
        assert!(
            compile_pattern(&format!("{}a{}", "(".repeat(100), ")".repeat(100)))
                .unwrap_err()
                .contains("nest")
        );
        assert!(
            compile_pattern("\\w{1000}{1000}").is_err(),
            "a huge program is refused"
        );
    }
}
