//! Metrics, liveness and readiness: the counters equal what a run did, the exposition passes
//! `promtool check metrics` and carries no secret, and `pipe run --http-addr` serves all three
//! endpoints. Readiness under stopped services is in `tests/faults.rs`.

use crate::support;

use std::time::Duration;

use crate::support::metrics::{self, sum};
use crate::support::writer::{self, wait_for};
use crate::support::{http, pipeline, unique_name};
use pipe::telemetry::Format;
use pipe::topology::RunOptions;

#[tokio::test]
async fn checker_counters_equal_the_checks_made_and_pass_promtool() {
    let server = http::start().await;
    let closed = http::closed_port();
    let channel = unique_name("metrics");
    let mut rx = pipeline::capture(&channel);
    // The unnamed target is named by its URL, password and all: no label may show it.
    let secret_url = format!("http://probe:s3cr3t-pw-91@{}/ok", server.addr);
    let yaml = format!(
        "\
sources:
  probe:
    type: http_probe
    interval: 200ms
    timeout: 2s
    per_target_metrics: true
    targets:
      - {{ name: ok, url: '{}' }}
      - {{ name: error500, url: '{}' }}
      - {{ name: refused, url: 'http://127.0.0.1:{closed}/' }}
      - {{ url: '{secret_url}' }}
sinks:
  out:
    type: capture
    inputs: [probe]
    channel: {channel}
",
        server.url("/ok"),
        server.url("/status/500"),
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let telemetry = running.telemetry.clone();
    let mut captured = 0;
    while captured < 40 {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("checks keep coming")
            .expect("the pipeline runs");
        captured += 1;
    }
    running.stop().await.expect("a clean stop");
    while rx.try_recv().is_ok() {
        captured += 1;
    }

    let text = telemetry.encode(Format::Prometheus);
    metrics::promtool_check(&text);
    let checks = sum(&text, "pipe_probe_checks_total", &[("stage", "probe")]);
    println!("checks counted {checks}, captured {captured}");
    assert_eq!(checks, captured as f64, "every check made is counted once");
    assert_eq!(
        sum(&text, "pipe_stage_sent_events_total", &[("stage", "probe")]),
        captured as f64
    );
    assert_eq!(
        sum(
            &text,
            "pipe_stage_received_events_total",
            &[("stage", "out")]
        ),
        captured as f64
    );
    assert!(
        sum(
            &text,
            "pipe_probe_checks_total",
            &[("outcome", "up"), ("reason", "ok")]
        ) > 0.0
    );
    assert!(
        sum(
            &text,
            "pipe_probe_checks_total",
            &[("outcome", "down"), ("reason", "status_5xx")]
        ) > 0.0
    );
    assert!(
        sum(
            &text,
            "pipe_probe_checks_total",
            &[("outcome", "down"), ("reason", "connect")]
        ) > 0.0
    );
    assert_eq!(
        sum(
            &text,
            "pipe_probe_response_seconds_count",
            &[("stage", "probe")]
        ),
        captured as f64
    );
    assert_eq!(
        sum(
            &text,
            "pipe_probe_target_status_code",
            &[("target", "error500")]
        ),
        500.0
    );
    assert_eq!(sum(&text, "pipe_probe_target_up", &[("target", "ok")]), 1.0);
    assert!(
        !text.contains("pipe_probe_target_cert_not_after_seconds{"),
        "no certificate end for plain-HTTP targets: an expiry alert would take 0 for long past"
    );
    assert_eq!(
        sum(&text, "pipe_probe_checks_in_flight", &[("stage", "probe")]),
        0.0
    );
    assert!(
        !text.contains("s3cr3t-pw-91"),
        "a password in the exposition"
    );
    assert!(text.contains("target=\"http://probe:***@"), "{text}");
    assert_eq!(
        sum(
            &text,
            "pipe_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(sum(&text, "pipe_process_resident_memory_bytes", &[]) > 1e6);

    let open = telemetry.encode(Format::OpenMetrics);
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE pipe_probe_checks counter\n"));
}

#[tokio::test]
async fn writer_counters_equal_the_rows_stored() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("metrics", 2).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("metrics"))
        .await
        .unwrap();
    let checks = writer::checks(1200, 5);
    writer::produce(&brokers, &topic, &checks).await;
    // Redelivered: stored once, counted once.
    writer::produce(&brokers, &topic, &checks[..200]).await;
    let running = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &db.url, ""),
        RunOptions::default(),
    );
    let telemetry = running.telemetry.clone();
    wait_for(
        &db.url,
        "SELECT count(*) FROM checks",
        1200,
        Duration::from_secs(60),
    )
    .await;
    // The source reports each partition's lag with librdkafka's statistics, every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = telemetry.encode(Format::Prometheus);
        let consumed = sum(
            &text,
            "pipe_stage_received_events_total",
            &[("stage", "db")],
        );
        let lag_series = text
            .lines()
            .filter(|l| l.starts_with("pipe_kafka_consumer_lag_messages{"))
            .count();
        if consumed >= 1400.0 && lag_series == 2 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumed {consumed}, {lag_series} lag series:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    running.stop().await.expect("a clean stop");
    metrics::promtool_check(&text);
    let stored = sum(&text, "pipe_postgres_stored_rows_total", &[("stage", "db")]);
    println!("stored {stored} of 1400 messages (1200 distinct)");
    assert_eq!(stored, 1200.0, "redelivered checks are not counted again");
    assert_eq!(
        sum(
            &text,
            "pipe_postgres_freshness_seconds_count",
            &[("stage", "db")]
        ),
        1200.0
    );
    assert_eq!(sum(&text, "pipe_postgres_dead_letters_total", &[]), 0.0);
    assert_eq!(
        sum(
            &text,
            "pipe_kafka_consumer_assigned_partitions",
            &[("stage", "checks")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &text,
            "pipe_kafka_consumer_lag_messages",
            &[("topic", &topic)]
        ),
        0.0,
        "caught up"
    );
    assert!(sum(&text, "pipe_kafka_consumer_rebalances_total", &[]) >= 1.0);
    assert!(sum(&text, "pipe_postgres_batch_write_seconds_count", &[]) >= 1.0);
}

#[tokio::test]
async fn a_writer_holding_no_partition_for_30_s_is_not_ready() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("orphan", 1).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("orphan"))
        .await
        .unwrap();
    let group = unique_name("group");
    let first = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &group, &db.url, &writer::static_member()),
        RunOptions::default(),
    );
    let second = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &group, &db.url, &writer::static_member()),
        RunOptions::default(),
    );
    let started = std::time::Instant::now();
    // One partition for two writers: one of them holds nothing, and after 30 s says so.
    let deadline = started + Duration::from_secs(60);
    let (ready, not_ready) = loop {
        let reports = [
            first.telemetry.health().readiness(),
            second.telemetry.health().readiness(),
        ];
        let ready = reports.iter().filter(|r| r.ready).count();
        if ready == 1 && started.elapsed() > Duration::from_secs(31) {
            let idle = reports.into_iter().find(|r| !r.ready).unwrap();
            break (ready, idle);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ready} of 2 writers ready after {:?}: {reports:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "{ready} writer ready, the other not after {:.1} s: {not_ready:?}",
        started.elapsed().as_secs_f64()
    );
    let stage = not_ready
        .stages
        .iter()
        .find(|s| s.stage == "checks")
        .unwrap();
    assert!(!stage.ready);
    assert!(
        stage.reason.as_deref().unwrap().contains("no partition"),
        "{stage:?}"
    );
    first.stop().await.expect("a clean stop");
    second.stop().await.expect("a clean stop");
}

#[test]
fn pipe_run_serves_metrics_health_and_readiness() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gen.yaml");
    std::fs::write(
        &file,
        "sources:\n  gen:\n    type: generate\n    interval: 50ms\nsinks:\n  out:\n    type: console\n    inputs: [gen]\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .arg("run")
        .arg(&file)
        .args(["--http-addr", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let health = loop {
        if std::net::TcpStream::connect(&addr).is_ok() {
            let (status, _, body) = metrics::get(&addr, "/health", None);
            if status == 200 {
                break body;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no /health on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health, "ok\n");
    let (status, headers, body) = metrics::get(&addr, "/ready", None);
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["stages"].as_array().unwrap().len(), 2);
    assert!(headers.contains(&("content-type".into(), "application/json".into())));

    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, text) = metrics::get(&addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")));
    metrics::promtool_check(&text);
    assert!(sum(&text, "pipe_stage_sent_events_total", &[("stage", "gen")]) >= 1.0);
    let (_, headers, open) = metrics::get(
        &addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text")));
    assert!(open.ends_with("# EOF\n"));
    assert_eq!(metrics::get(&addr, "/nothing", None).0, 404);

    // SIGTERM: the pipeline drains and the process exits cleanly.
    let rc = unsafe { libc_kill(child.id() as i32, 15) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("serving /metrics, /health and /ready"),
        "{stderr}"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// The metric names in docs/metrics.md's tables.
fn documented() -> std::collections::BTreeSet<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `pipe_"))
        .map(|rest| format!("pipe_{}", rest.split('`').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn every_metric_is_documented_and_the_dashboard_uses_only_those() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("names", 1).await;
    let db = tokio::task::spawn_blocking(|| support::create_database("names"))
        .await
        .unwrap();
    let server = http::start().await;
    // Every stage type that has metrics of its own, in one pipeline.
    let yaml = format!(
        "\
sources:
  probe:
    type: http_probe
    interval: 200ms
    per_target_metrics: true
    targets:
      - {{ name: ok, url: '{}' }}
  checks:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {}
sinks:
  out:
    type: kafka
    inputs: [probe]
    brokers: {brokers}
    topic: {topic}
  db:
    type: postgres
    inputs: [checks]
    url: '{}'
    migrate: true
",
        server.url("/ok"),
        unique_name("group"),
        db.url
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let telemetry = running.telemetry.clone();
    wait_for(
        &db.url,
        "SELECT count(*) FROM checks",
        3,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await.expect("a clean stop");
    let text = telemetry.encode(Format::Prometheus);
    let exposed: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| rest.split(' ').next().unwrap().to_owned())
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}"
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/pipe.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("pipe_") {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
                    used.push(family.to_owned());
                }
            }
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            documented.contains(name),
            "the dashboard uses {name}, which is not a metric"
        );
    }
}
