//! `pipe targets apply` and `pipe targets list` against a topic on the local Apache Kafka: the
//! plan printed first, `--dry-run` publishing nothing, and the topic afterwards holding exactly
//! the file's targets (updates as new records, deletions as tombstones).

use std::process::{Command, Output};

use crate::support;

fn pipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(args)
        .env("KAFKA_BROKERS", support::kafka_brokers())
        .output()
        .expect("run pipe")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "pipe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn apply_publishes_the_plan_and_list_shows_the_topic() {
    let topic = support::create_topic("targets", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    let file = file.to_str().unwrap();
    std::fs::write(
        file,
        "- url: https://a.example/\n  name: a\n- url: https://b.example/\n  name: b\n- url: https://c.example/\n  name: c\n",
    )
    .unwrap();

    let dry = stdout(&pipe(&[
        "targets",
        "apply",
        file,
        "--topic",
        &topic,
        "--dry-run",
    ]));
    assert_eq!(
        dry,
        "+ a\n+ b\n+ c\n3 to create, 0 to update, 0 to delete, 0 unchanged\n"
    );
    assert_eq!(stdout(&pipe(&["targets", "list", "--topic", &topic])), "");

    let applied = stdout(&pipe(&["targets", "apply", file, "--topic", &topic]));
    assert!(
        applied.ends_with(&format!("published 3 records to `{topic}`\n")),
        "{applied}"
    );
    assert_eq!(
        stdout(&pipe(&["targets", "list", "--topic", &topic])),
        "a\thttps://a.example/\nb\thttps://b.example/\nc\thttps://c.example/\n"
    );

    // b changes, c goes, d comes; applying twice changes nothing the second time.
    std::fs::write(
        file,
        "- url: https://a.example/\n  name: a\n- url: https://b.example/v2\n  name: b\n- url: https://d.example/\n  name: d\n",
    )
    .unwrap();
    let applied = stdout(&pipe(&["targets", "apply", file, "--topic", &topic]));
    assert!(
        applied.starts_with("~ b\n- c\n+ d\n1 to create, 1 to update, 1 to delete, 1 unchanged\n"),
        "{applied}"
    );
    assert_eq!(
        stdout(&pipe(&["targets", "apply", file, "--topic", &topic])),
        "0 to create, 0 to update, 0 to delete, 3 unchanged\n"
    );
    assert_eq!(
        stdout(&pipe(&["targets", "list", "--topic", &topic])),
        "a\thttps://a.example/\nb\thttps://b.example/v2\nd\thttps://d.example/\n"
    );
    // The topic holds the records as the checkers will read them: tombstone last for c.
    let records = support::consume_all(&support::kafka_brokers(), &topic, 6).await;
    let c: Vec<_> = records
        .iter()
        .filter(|(_, key, _)| key.as_deref() == Some("c"))
        .collect();
    assert_eq!(c.len(), 2, "{records:?}");
    assert!(c[1].2.is_empty(), "c's last record is a tombstone");
}

#[tokio::test]
async fn a_bad_file_or_a_missing_topic_publishes_nothing_and_says_where() {
    let topic = support::create_topic("targets", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "- url: https://a.example/\n- url: https://b.example/\n  intervl: 5s\n",
    )
    .unwrap();
    let output = pipe(&[
        "targets",
        "apply",
        file.to_str().unwrap(),
        "--topic",
        &topic,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[1].intervl: unknown field `intervl`"),
        "{stderr}"
    );
    assert_eq!(stdout(&pipe(&["targets", "list", "--topic", &topic])), "");

    let output = pipe(&[
        "targets",
        "list",
        "--topic",
        "no-such-targets-topic",
        "--timeout",
        "10s",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("targets topic `no-such-targets-topic` does not exist"),
        "{stderr}"
    );
}
