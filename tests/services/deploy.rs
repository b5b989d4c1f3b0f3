//! The deployment files in `deploy/`: the systemd units pass `systemd-analyze verify`, keep the
//! hardening and the restart policy docs/deploy.md promises, and stop within their own timeout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const UNITS: [&str; 2] = ["pipe-checker.service", "pipe-writer.service"];

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key=` in a unit (its last assignment).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in UNITS {
        // verify wants the programs to exist: point them at the binary under test.
        let text = unit(name).replace("/usr/local/bin/pipe", env!("CARGO_BIN_EXE_pipe"));
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        files.push(file);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or misspelt settings are only warnings to systemd: none is allowed here.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_units_are_hardened_restart_on_failure_and_read_secrets_from_a_file() {
    for name in UNITS {
        let text = unit(name);
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("Restart", "on-failure"),
            ("EnvironmentFile", "/etc/pipe/pipe.env"),
        ] {
            assert_eq!(setting(&text, key), Some(value), "{name}: {key}");
        }
        let key = text
            .lines()
            .any(|l| l.starts_with("LoadCredential=kafka-service.key:"));
        assert!(
            key,
            "{name}: the Kafka key reaches the dynamic user as a credential"
        );
        let settings = text.lines().filter(|l| !l.starts_with('#'));
        assert!(
            !settings.into_iter().any(|l| {
                let l = l.to_lowercase();
                l.contains("password")
                    || l.contains("database_url=")
                    || (l.contains("://") && l.contains('@'))
            }),
            "{name}: no secret in the unit"
        );
    }
    assert!(
        unit("pipe-writer.service").contains("ExecStartPre=/usr/local/bin/pipe migrate"),
        "the writer applies migrations before it starts"
    );
}

/// The drain must end, and its counts be logged, before systemd's SIGKILL.
#[test]
fn the_grace_period_ends_before_systemds_stop_timeout() {
    for name in UNITS {
        let text = unit(name);
        let start = setting(&text, "ExecStart").unwrap();
        let grace = start
            .split_whitespace()
            .skip_while(|word| *word != "--grace")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: ExecStart sets --grace"));
        let grace = pipe::config::duration::parse(grace).unwrap();
        let timeout =
            pipe::config::duration::parse(setting(&text, "TimeoutStopSec").unwrap()).unwrap();
        assert!(
            grace + Duration::from_secs(5) <= timeout,
            "{name}: --grace {grace:?} leaves no room before TimeoutStopSec {timeout:?}"
        );
    }
}

/// The GitHub workflow runs what CI here runs, with what it needs installed and cached, and the
/// full dependency policy. (scripts/test also lints it with action-validator.)
#[test]
fn the_github_workflow_runs_ci_and_the_dependency_policy() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/ci.yml");
    let workflow: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let steps = |job: &str| -> Vec<serde_json::Value> {
        workflow["jobs"][job]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no job `{job}` with steps"))
            .clone()
    };
    let text = |steps: &[serde_json::Value]| serde_json::to_string(steps).unwrap();
    let test = text(&steps("test"));
    for needed in [
        "bash .ci/run",
        "postgresql",
        "graphviz",
        "maven",
        "prometheus",
        "PIPE_CHROMIUM",
        "~/.cache/pipe-tools",
        "target",
    ] {
        assert!(test.contains(needed), "the test job lacks `{needed}`");
    }
    assert_eq!(workflow["jobs"]["test"]["runs-on"], "ubuntu-latest");
    let dependencies = text(&steps("dependencies"));
    assert!(
        dependencies.contains("cargo-deny-action")
            && dependencies.contains("check advisories bans licenses sources"),
        "{dependencies}"
    );
    let on = &workflow["on"];
    assert!(on.get("push").is_some() && on.get("pull_request").is_some());
}

/// What `cargo package` would publish: everything the build needs (the migrations are compiled
/// in), nothing large, and no key or certificate.
#[test]
fn the_package_holds_what_the_build_needs_and_nothing_secret_or_large() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["package", "--list", "--allow-dirty"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "LICENSE",
        "README.md",
        "src/main.rs",
        "src/lib.rs",
        "migrations/0001_checks.sql",
        "pipelines/checker.yaml",
        "pipelines/writer.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "the package lacks {needed}"
        );
    }
    for file in &files {
        assert!(!file.starts_with("target/"), "{file}");
        let lower = file.to_lowercase();
        assert!(
            !(lower.ends_with(".pem") || lower.ends_with(".key") || lower.ends_with(".env")),
            "{file}: key or certificate material in the package"
        );
        let path = root.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // generated by cargo: .cargo_vcs_info.json, Cargo.toml.orig
        };
        assert!(bytes.len() < 256 * 1024, "{file}: {} bytes", bytes.len());
        let text = String::from_utf8_lossy(&bytes);
        // Put together here, so that this file does not hold the marker it looks for.
        let marker = ["-----BEGIN ", "PRIVATE KEY-----"];
        let found = ["", "EC ", "RSA "]
            .iter()
            .any(|kind| text.contains(&format!("{}{kind}{}", marker[0], marker[1])));
        assert!(!found, "{file}: a private key");
    }
}
