//! The pipeline files shipped in `pipelines/` work as written, run by the real binary.

use crate::support;

use std::process::{Command, Stdio};

use pipe::monitor::check::CheckResult;

fn pipe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// `pipe validate FILE` with the Aiven-style settings in the environment.
fn validate_with(
    file: &str,
    files: &(String, String, String),
    extra: &[(&str, &str)],
) -> std::process::Output {
    let (ca, cert, key) = files;
    let mut command = pipe();
    command
        .args(["validate", file])
        .env("KAFKA_BROKERS", "kafka.example.invalid:12345")
        .env("KAFKA_CA_FILE", ca)
        .env("KAFKA_CERT_FILE", cert)
        .env("KAFKA_KEY_FILE", key);
    for (name, value) in extra {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Asserts that `pipe validate` accepted its file, showing what it printed if not.
fn assert_valid(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a client certificate it signed and the client's key, as files the way Aiven gives them:
/// (ca.pem, service.cert, service.key).
fn aiven_files(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = support::tls::key();
    let ca = support::tls::certificate("Test CA", &ca_key, None, true);
    let client_key = support::tls::key();
    let client = support::tls::certificate("client", &client_key, Some((&ca, &ca_key)), false);
    let write = |name: &str, pem: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (
        write("ca.pem", ca.to_pem().unwrap()),
        write("service.cert", client.to_pem().unwrap()),
        write(
            "service.key",
            client_key.private_key_to_pem_pkcs8().unwrap(),
        ),
    )
}

#[tokio::test]
async fn checker_yaml_publishes_schema_v1_messages() {
    // A broker of its own, so the shared `website-checks` topic stays untouched.
    let broker = support::PrivateBroker::start(support::http::closed_port());
    support::create_topic_on(&broker.brokers, "website-checks", 3).await;
    let mut checker = pipe()
        .args(["run", "pipelines/checker.yaml", "--grace", "10s"])
        .env("KAFKA_BROKERS", &broker.brokers)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `example` is checked every 10 s: within 10 s at least one result is published. Its site
    // may be unreachable from here; a failed check is a result all the same.
    let messages = support::consume_all(&broker.brokers, "website-checks", 1).await;
    let _ = Command::new("kill")
        .args(["-TERM", &checker.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || {
        let status = checker.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut checker.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(!messages.is_empty(), "no result published within a minute");
    for (_, key, payload) in &messages {
        let result: CheckResult = serde_json::from_slice(payload).expect("schema v1");
        assert_eq!(result.schema_version, 1);
        assert!(["https://aiven.io", "example"].contains(&result.target.as_str()));
        assert_eq!(key.as_deref(), Some(result.target.as_str()));
    }
}

#[test]
fn aiven_checker_yaml_validates_with_real_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = aiven_files(dir.path());

    let out = validate_with("pipelines/aiven/checker.yaml", &files, &[]);
    assert_valid(&out);

    // A missing key file is caught by validation, located at the sink's options.
    let out = validate_with(
        "pipelines/aiven/checker.yaml",
        &(
            files.0.clone(),
            files.1.clone(),
            "/nonexistent/service.key".to_owned(),
        ),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pipelines/aiven/checker.yaml:37:5: error: sink `kafka` (type kafka):"),
        "{stderr}"
    );
    // Unset variables are named, not guessed.
    let out = pipe()
        .args(["validate", "pipelines/aiven/checker.yaml"])
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("environment variable `KAFKA_BROKERS` is not set"));
}

#[test]
fn writer_yaml_and_aiven_writer_yaml_validate() {
    let out = pipe()
        .args(["validate", "pipelines/writer.yaml"])
        .output()
        .unwrap();
    assert_valid(&out);

    let dir = tempfile::tempdir().unwrap();
    let files = aiven_files(dir.path());
    let ca_file = &files.0;
    let url = format!("postgres://avnadmin:n0tAr3alPassw0rd@pg.example.invalid:12346/defaultdb?sslmode=require&sslrootcert={ca_file}");
    let out = validate_with(
        "pipelines/aiven/writer.yaml",
        &files,
        &[("DATABASE_URL", url.as_str())],
    );
    assert_valid(&out);

    // A CA file that is not there: located, and the password is not in the message.
    let out = validate_with(
        "pipelines/aiven/writer.yaml",
        &files,
        &[("DATABASE_URL", &url.replace("ca.pem", "missing.pem"))],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pipelines/aiven/writer.yaml:24:5: error: sink `db` (type postgres): database URL postgres://avnadmin:***@pg.example.invalid"), "{stderr}");
    assert!(stderr.contains("cannot load sslrootcert"), "{stderr}");
    assert!(!stderr.contains("n0tAr3alPassw0rd"), "{stderr}");
}
