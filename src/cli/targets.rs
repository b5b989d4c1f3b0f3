//! `pipe targets apply FILE` and `pipe targets list`: the targets topic
//! ([`crate::monitor::targets_topic`]) kept in step with a targets file, as `kubectl apply`
//! keeps a cluster: the plan is printed first, then published (unless `--dry-run`).
//!
//! The file is a `targets_file` of `http_probe` (a YAML list of targets). Each entry is checked
//! as a target before anything is published, and stored as written: `${VAR}`s are substituted
//! by the checkers that read the topic, so secrets never reach Kafka.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use slog::error;

use crate::config::duration;
use crate::config::locate::Locations;
use crate::monitor::kafka::{OptionValue, Options};
use crate::monitor::targets_topic::{Current, Plan, TopicAccess};
use crate::stages::sources::http_probe::TargetConfig;

/// `pipe targets`.
#[derive(Debug, Subcommand)]
pub(super) enum TargetsCommand {
    /// Make the targets topic hold exactly a file's targets: create, update and delete,
    /// printing the plan first.
    Apply {
        /// The targets file: a YAML list of targets, as `http_probe`'s `targets_file`.
        file: PathBuf,
        /// Print the plan and publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        topic: TopicArgs,
    },
    /// Print the targets in the topic: name and URL, one per line.
    List {
        #[command(flatten)]
        topic: TopicArgs,
    },
}

/// Where the targets topic is.
#[derive(Debug, Args)]
pub(super) struct TopicArgs {
    /// The Kafka brokers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// The targets topic (compacted).
    #[arg(long, default_value = "targets")]
    topic: String,
    /// A librdkafka setting, `key=value`, such as `security.protocol=SSL` or
    /// `ssl.ca.location=ca.pem`; repeat for more.
    // Parsed by `access`, not by clap, whose errors repeat the value given (a password).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// How long reading or publishing may take.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,
}

/// One `--option`: `KEY=VALUE`. The error names the option by its place, never by its text,
/// which may hold a secret.
fn parse_option(place: usize, text: &str) -> Result<(String, OptionValue), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), OptionValue::Text(value.to_owned())))
        }
        _ => Err(format!(
            "--option number {place} is not KEY=VALUE (it is not shown: it may hold a secret)"
        )),
    }
}

impl TopicArgs {
    fn access(self) -> Result<TopicAccess, String> {
        let options: Options = self
            .options
            .iter()
            .enumerate()
            .map(|(i, text)| parse_option(i + 1, text))
            .collect::<Result<_, _>>()?;
        Ok(TopicAccess {
            brokers: self.brokers,
            topic: self.topic,
            options,
            timeout: self.timeout,
        })
    }
}

pub(super) async fn targets(logger: &slog::Logger, command: TargetsCommand) -> ExitCode {
    let logger = logger.clone();
    let work = tokio::task::spawn_blocking(move || match command {
        TargetsCommand::Apply {
            file,
            dry_run,
            topic,
        } => apply(&file, dry_run, topic.access()?),
        TargetsCommand::List { topic } => list(topic.access()?),
    });
    match work.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => {
            error!(logger, "{message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(logger, "pipe targets stopped"; "error" => %e);
            ExitCode::FAILURE
        }
    }
}

fn apply(file: &Path, dry_run: bool, access: TopicAccess) -> Result<(), String> {
    let desired = load(file)?;
    let current = access.read().map_err(|e| e.to_string())?;
    let plan = Plan::between(&current, &desired);
    println!("{plan}");
    if dry_run || plan.changes.is_empty() {
        return Ok(());
    }
    let sent = access.publish(&plan).map_err(|e| e.to_string())?;
    println!("published {sent} records to `{}`", access.topic);
    Ok(())
}

fn list(access: TopicAccess) -> Result<(), String> {
    let current = access.read().map_err(|e| e.to_string())?;
    for (name, value) in &current {
        let url = value.get("url").and_then(|u| u.as_str()).unwrap_or("?");
        println!(
            "{}\t{}",
            crate::monitor::secrets::redact_url(name),
            crate::monitor::secrets::redact_url(url)
        );
    }
    Ok(())
}

/// The file's targets by name, each checked as a target, with `name` written out (it defaults
/// to the URL) so that a checker reads the same name whatever its defaults.
fn load(file: &Path) -> Result<Current, String> {
    let at = format!("targets file `{}`", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| format!("{at}: cannot read it: {e}"))?;
    let entries: Vec<serde_json::Value> =
        serde_norway::from_str(&text).map_err(|e| format!("{at}: {e}"))?;
    // Errors give the line and column, as `targets_file` errors do.
    let locations = Locations::index(&text);
    let line_of = |path: &str| match locations.find(path) {
        Some(l) => format!("line {} column {}: ", l.line, l.column),
        None => String::new(),
    };
    let mut errors = Vec::new();
    let mut desired = Current::new();
    let mut seen = BTreeSet::new();
    for (i, mut entry) in entries.into_iter().enumerate() {
        let target: TargetConfig = match serde_path_to_error::deserialize(&entry) {
            Ok(target) => target,
            Err(e) => {
                let path = format!("[{i}].{}", e.path());
                errors.push(format!(
                    "{at}: {}{path}: {}",
                    line_of(&path),
                    e.into_inner()
                ));
                continue;
            }
        };
        let name = target.name.unwrap_or(target.url);
        if !seen.insert(name.clone()) {
            errors.push(format!(
                "{at}: {}[{i}]: duplicate target name `{}`; names must be unique (set `name:`)",
                line_of(&format!("[{i}]")),
                crate::monitor::secrets::redact_url(&name)
            ));
            continue;
        }
        if let Some(fields) = entry.as_object_mut() {
            fields.insert("name".into(), name.clone().into());
        }
        desired.insert(name, entry);
    }
    if errors.is_empty() {
        Ok(desired)
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_option_is_named_by_its_place_and_never_shown() {
        let args = TopicArgs {
            brokers: "127.0.0.1:9092".into(),
            topic: "targets".into(),
            options: vec![
                "security.protocol=SSL".into(),
                "sasl.password:hunter2".into(),
            ],
            timeout: Duration::from_secs(1),
        };
        let Err(message) = args.access() else {
            panic!("a malformed option is refused");
        };
        assert!(message.contains("--option number 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let args = TopicArgs {
            brokers: "127.0.0.1:9092".into(),
            topic: "targets".into(),
            options: vec!["=x".into()],
            timeout: Duration::from_secs(1),
        };
        assert!(args.access().is_err(), "an empty key is refused");
    }

    #[test]
    fn a_targets_file_is_checked_before_anything_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("targets.yaml");
        std::fs::write(
            &file,
            "- url: https://a.example\n- url: https://b.example\n  name: b\n  interval: 10s\n  headers: { Authorization: 'Bearer ${TOKEN}' }\n",
        )
        .unwrap();
        let desired = load(&file).unwrap();
        assert_eq!(
            desired.keys().collect::<Vec<_>>(),
            ["b", "https://a.example"]
        );
        // Stored as written: the checker substitutes `${TOKEN}`.
        assert_eq!(desired["b"]["headers"]["Authorization"], "Bearer ${TOKEN}");
        assert_eq!(desired["https://a.example"]["name"], "https://a.example");

        std::fs::write(
            &file,
            "- url: https://a.example\n- url: https://a.example\n- url: https://c.example\n  intervl: 5s\n",
        )
        .unwrap();
        let errors = load(&file).unwrap_err();
        assert!(
            errors.contains("[1]: duplicate target name `https://a.example`"),
            "{errors}"
        );
        assert!(
            errors.contains("[2].intervl: unknown field `intervl`"),
            "{errors}"
        );
    }
}
