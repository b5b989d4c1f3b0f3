//! The real `pipe` binary (and the custom-stage example) from the outside.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn pipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run pipe")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_reports_five_located_mistakes_and_exits_1() {
    let out = pipe(&["validate", "tests/fixtures/five_mistakes.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(
        errors,
        [
            "tests/fixtures/five_mistakes.yaml:6:5: error: source `gen` (type generate): unknown field `intervall`, expected one of `interval`, `count`, `fields`",
            "tests/fixtures/five_mistakes.yaml:8:5: error: source `ticks` (type generator): unknown source type `generator`; known source types: generate, http_probe, kafka",
            "tests/fixtures/five_mistakes.yaml:11:5: error: transform `loud` (type uppercase): unknown transform type `uppercase`; known transform types: latency, regex_match",
            "tests/fixtures/five_mistakes.yaml:16:19: error: sink `out` (type console): unknown input `tick`; stages with output: `gen`, `loud`, `ticks`",
            "tests/fixtures/five_mistakes.yaml:17:3: error: sink `log` (type console): missing required field `inputs`: a sink reads from at least one stage",
        ]
    );
    assert!(stderr.contains("warning: transform `loud` (type uppercase): nothing reads"));
    assert!(stderr.ends_with("5 errors\n"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_accepts_good_files_and_checks_every_file_given() {
    let out = pipe(&["validate", "pipelines/hello.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pipelines/hello.yaml: ok (2 stages)\n");

    let out = pipe(&["validate", "pipelines/hello.yaml", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no/such/file.yaml: error: cannot read the file"));
}

#[test]
fn run_prints_generated_events_as_json_lines_and_exits_0() {
    let out = pipe(&["run", "pipelines/hello.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, vec![serde_json::json!({"hello": "world"}); 5]);
    // Logs go to stderr only.
    assert!(text(&out.stderr).contains("pipeline finished"));
}

#[test]
fn run_refuses_an_invalid_pipeline_before_starting() {
    let out = pipe(&["run", "tests/fixtures/five_mistakes.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(!text(&out.stderr).contains("pipeline started"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = pipe(&[
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "run",
        "pipelines/hello.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    for line in text(&out.stderr).lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        assert!(
            record["msg"].is_string() && record["level"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn graph_prints_dot() {
    let out = pipe(&["graph", "pipelines/hello.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "digraph \"pipelines/hello.yaml\" {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n  \"gen\" [label=\"gen\\ngenerate source\", shape=invhouse];\n  \"out\" [label=\"out\\nconsole sink\", shape=house];\n  \"gen\" -> \"out\";\n}\n"
    );
}

#[test]
fn stages_lists_types_descriptions_and_settings() {
    let out = pipe(&["stages"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  generate       emits the configured fields"),
        "{stdout}"
    );
    assert!(
        stdout.contains("settings: interval, count, fields"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  console        writes events to standard output"),
        "{stdout}"
    );
}

#[test]
fn sigterm_drains_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forever.yaml");
    std::fs::write(
        &file,
        "sources:\n  gen:\n    type: generate\n    interval: 10ms\n    fields: {n: 1}\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap(), "--grace", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"n\":1}\n");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.lines().all(|l| l == "{\"n\":1}"),
        "only whole events: {rest:?}"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(stderr.contains("pipeline finished"), "{stderr}");
}

/// `cargo test` builds the examples next to the test binaries (`target/<profile>/examples`).
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds examples",
        path.display()
    );
    path
}

#[test]
fn the_custom_stage_example_registers_and_runs_its_stage() {
    let binary = example("custom_stage");
    let out = Command::new(&binary)
        .args(["run", "examples/custom_stage.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "{\"greeting\":\"HELLO\",\"name\":\"pipe\"}\n".repeat(3)
    );

    let out = Command::new(&binary).arg("stages").output().unwrap();
    assert!(text(&out.stdout)
        .contains("  uppercase      upper-cases the string values of the named fields"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "sources:\n  gen:\n    type: generate\ntransforms:\n  loud:\n    type: uppercase\n    inputs: [gen]\n    fields: []\nsinks:\n  out:\n    type: console\n    inputs: [loud]\n",
    )
    .unwrap();
    let out = Command::new(&binary)
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "bad.yaml:8:5: error: transform `loud` (type uppercase): name at least one field"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completions_cover_every_subcommand_and_bash_accepts_them() {
    let subcommands = [
        "run",
        "validate",
        "graph",
        "stages",
        "migrate",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let out = pipe(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for subcommand in subcommands {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
        // Each shell spells an option its own way (fish: `-l log-level`).
        assert!(
            script.contains("log-level"),
            "{shell} lacks the global options"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipe.bash");
    std::fs::write(&file, pipe(&["completions", "bash"]).stdout).unwrap();
    let out = Command::new("bash")
        .args(["-n", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "bash -n: {}", text(&out.stderr));

    let out = pipe(&["completions", "tcsh-or-so"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_manual_page_is_roff_for_pipe_at_this_version() {
    let out = pipe(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.contains(&format!(
            ".TH pipe 1  \"pipe {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    assert!(page.contains("pipe\\-migrate") || page.contains("migrate"));
}

#[test]
fn the_version_is_the_crates_and_the_changelogs_latest() {
    let out = pipe(&["--version"]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(text(&out.stdout), format!("pipe {version}\n"));
    let changelog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/CHANGELOG.md")).unwrap();
    let latest = changelog
        .lines()
        .find(|line| line.starts_with("## [") && !line.starts_with("## [Unreleased]"))
        .expect("a released version in CHANGELOG.md");
    assert!(
        latest.starts_with(&format!("## [{version}]")),
        "CHANGELOG.md's latest release is `{latest}`, Cargo.toml says {version}"
    );
}
