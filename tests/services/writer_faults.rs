//! The writer when things go wrong: killed mid-stream, its database restarted, its consumer
//! group shared and left, and its TLS checked against certificates made here.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::writer::{self, ids, scalar_or_minus_one, stored_ids, wait_for};
use crate::support::{pipeline, unique_name};
use pipe::monitor::database::Database;
use pipe::topology::RunOptions;

const TWO_MINUTES: Duration = Duration::from_secs(120);

fn start_writer(file: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_writer_killed_mid_stream_and_restarted_stores_every_check_once() {
    const N: usize = 30_000;
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("killed", 3).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("killed"))
        .await
        .unwrap();
    let checks = writer::checks(N, 50);
    writer::produce(&brokers, &topic, &checks).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("writer.yaml");
    std::fs::write(
        &file,
        writer::writer_yaml(
            &brokers,
            &topic,
            &unique_name("group"),
            &db.url,
            &writer::static_member(),
        ),
    )
    .unwrap();

    let mut first = start_writer(&file);
    let sql = "SELECT count(*) FROM checks";
    let deadline = tokio::time::Instant::now() + TWO_MINUTES;
    let mut at_kill = scalar_or_minus_one(&db.url, sql).await;
    while at_kill < 2_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        at_kill = scalar_or_minus_one(&db.url, sql).await;
    }
    first.kill().unwrap(); // SIGKILL: no drain, no final commit
    first.wait().unwrap();
    assert!(
        (at_kill as usize) < N,
        "killed after the end ({at_kill} rows): the test proves nothing"
    );

    let mut second = start_writer(&file);
    let stored = wait_for(&db.url, sql, N as i64, TWO_MINUTES).await;
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert_eq!(stored, N as i64, "killed at {at_kill} rows");
    assert!(status.success(), "the restarted writer stops cleanly");
    assert_eq!(stored_ids(&db.url).await, ids(&checks));
}

#[tokio::test]
async fn postgres_stopped_and_restarted_during_ingestion_loses_and_duplicates_nothing() {
    const N: usize = 20_000;
    let pg = tokio::task::spawn_blocking(|| support::pg::PrivatePostgres::start(None))
        .await
        .unwrap();
    let url = pg.url("127.0.0.1", "?sslmode=disable");
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("pgrestart", 3).await;
    let checks = writer::checks(N, 20);
    writer::produce(&brokers, &topic, &checks).await;

    let running = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &url, ""),
        RunOptions::default(),
    );
    let sql = "SELECT count(*) FROM checks";
    let deadline = tokio::time::Instant::now() + TWO_MINUTES;
    while scalar_or_minus_one(&url, sql).await < 1_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !running.is_finished(),
        "the writer waits for the database instead of failing"
    );
    let pg = tokio::task::spawn_blocking(move || {
        pg.resume();
        pg
    })
    .await
    .unwrap();

    let stored = wait_for(&url, sql, N as i64, TWO_MINUTES).await;
    running
        .stop()
        .await
        .expect("recovered by itself, and stops cleanly");
    assert_eq!(stored, N as i64);
    assert_eq!(stored_ids(&url).await, ids(&checks));
    drop(pg);
}

#[test]
fn postgres_tls_verifies_the_ca_and_the_host_name() {
    use support::tls;
    let ca_key = tls::key();
    let ca = tls::certificate("pipe test CA", &ca_key, None, true);
    let server_key = tls::key();
    let server = tls::certificate("localhost", &server_key, Some((&ca, &ca_key)), false);
    let other_ca_key = tls::key();
    let other_ca = tls::certificate("another CA", &other_ca_key, None, true);
    let pg = support::pg::PrivatePostgres::start(Some((
        server.to_pem().unwrap(),
        server_key.private_key_to_pem_pkcs8().unwrap(),
    )));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
    std::fs::write(&other_file, other_ca.to_pem().unwrap()).unwrap();

    let connect = |host: &str, params: String| -> Result<bool, String> {
        let database = Database::from_url(&pg.url(host, &params))?;
        let mut client = database
            .connect()
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    };
    let ca_param = |file: &std::path::Path| format!("sslrootcert={}", file.display());

    assert_eq!(
        connect(
            "localhost",
            format!("?sslmode=require&{}", ca_param(&ca_file))
        ),
        Ok(true),
        "the right CA connects"
    );
    assert_eq!(
        connect(
            "localhost",
            format!("?sslmode=verify-full&{}", ca_param(&ca_file))
        ),
        Ok(true)
    );
    let wrong_ca = connect(
        "localhost",
        format!("?sslmode=require&{}", ca_param(&other_file)),
    );
    assert!(
        wrong_ca
            .as_ref()
            .is_err_and(|e| e.contains("certificate verify failed")),
        "a wrong CA is refused: {wrong_ca:?}"
    );
    let wrong_host = connect(
        "127.0.0.1",
        format!("?sslmode=require&{}", ca_param(&ca_file)),
    );
    assert!(
        wrong_host
            .as_ref()
            .is_err_and(|e| e.contains("certificate verify failed")),
        "a wrong host name is refused: {wrong_host:?}"
    );
    // verify-ca checks the chain only, as in libpq.
    assert_eq!(
        connect(
            "127.0.0.1",
            format!("?sslmode=verify-ca&{}", ca_param(&ca_file))
        ),
        Ok(true)
    );
    // Plaintext only when the URL says so.
    assert_eq!(
        connect("127.0.0.1", "?sslmode=disable".to_owned()),
        Ok(false)
    );
}
