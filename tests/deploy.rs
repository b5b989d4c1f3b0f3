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
