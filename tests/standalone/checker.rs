//! The checker's stages end to end against local HTTP servers: one real YAML pipeline,
//! `http_probe → regex_match → latency → capture`, probing every case once.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use crate::support::http;
use crate::support::pipeline;
use pipe::monitor::check::{CheckResult, ErrorKind, LatencyClass, SCHEMA_VERSION};
use pipe::stages::sources::http_probe::DEFAULT_USER_AGENT;
use pipe::topology::RunOptions;
use serde_json::Value;

struct Outcome {
    result: CheckResult,
    fields: serde_json::Map<String, Value>,
    raw: Option<bytes::Bytes>,
}

/// Runs the pipeline until every target has reported once; returns the results by target.
async fn check_all(targets: &str, extra: &str, count: usize) -> HashMap<String, Outcome> {
    let channel = support::unique_name("checks");
    let mut rx = pipeline::capture(&channel);
    let yaml = format!(
        "\
sources:
  probe:
    type: http_probe
    interval: 1s
    timeout: 2s
{extra}
    targets:
{targets}
transforms:
  body:
    type: regex_match
    inputs: [probe]
  speed:
    type: latency
    inputs: [body]
    slow: 400ms
    critical: 1s
sinks:
  out:
    type: capture
    inputs: [speed]
    channel: {channel}
"
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    // Every real message, each error kind and the regex captures among them, is validated
    // against the published contract on the way.
    let first = pipeline::first_by_target(&mut rx, count, Duration::from_secs(30)).await;
    let outcomes = first
        .into_iter()
        .map(|(target, (fields, raw))| {
            let result: CheckResult = serde_json::from_value(Value::Object(fields.clone()))
                .unwrap_or_else(|e| panic!("not schema v1: {e}: {fields:?}"));
            (
                target,
                Outcome {
                    result,
                    fields,
                    raw,
                },
            )
        })
        .collect();
    running.stop().await.expect("a clean stop");
    outcomes
}

#[tokio::test]
async fn every_case_becomes_a_typed_result() {
    let server = http::start().await;
    let tls = http::start_self_signed_tls();
    let closed = http::closed_port();
    let url = |path| server.url(path);
    let tls_url = format!("https://localhost:{}/", tls.port());
    let refused_url = format!("http://127.0.0.1:{closed}/");
    let targets = [
        ("match", url("/ok"), "regex: 'Aiven'"),
        ("nomatch", url("/ok"), "regex: 'Nothing like this'"),
        (
            "captures",
            url("/ok"),
            r"regex: 'version (?P<major>\d+)\.(?P<minor>\d+)'",
        ),
        ("plain", url("/ok"), ""),
        ("notfound", url("/status/404"), ""),
        ("expected500", url("/status/500"), "expected_status: [500]"),
        ("error500", url("/status/500"), ""),
        ("redirects", url("/redirect/3"), ""),
        ("noredirects", url("/redirect/1"), "follow_redirects: false"),
        ("loop", url("/loop"), ""),
        ("slow", url("/slow/3000"), "timeout: 500ms"),
        ("sluggish", url("/slow/600"), ""),
        ("refused", refused_url, ""),
        ("nodns", "http://no-such-host.invalid/".to_owned(), ""),
        ("selfsigned", tls_url, ""),
        ("big", url("/big/2000000"), ""),
        ("big-with-regex", url("/big/2000000"), "regex: 'x'"),
    ]
    .iter()
    .map(|(name, url, extra)| format!("      - {{ name: {name}, url: '{url}', {extra} }}"))
    .collect::<Vec<_>>()
    .join("\n");
    let results = check_all(&targets, "", 17).await;
    let get = |name: &str| &results[name].result;
    let kind = |name: &str| get(name).error.as_ref().map(|e| e.kind);

    // A page that matches: up, with every phase that happened measured.
    let ok = get("match");
    assert_eq!(ok.schema_version, SCHEMA_VERSION);
    assert_eq!(
        (ok.status_code, ok.up, ok.regex_matched),
        (Some(200), true, Some(true))
    );
    assert_eq!(ok.regex.as_deref(), Some("Aiven"));
    assert_eq!(ok.method, "GET");
    assert_eq!(ok.http_version.as_deref(), Some("HTTP/1.1"));
    assert_eq!(
        ok.remote_addr.as_deref(),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(ok.body_bytes, Some(http::OK_PAGE.len() as u64));
    assert_eq!(ok.latency_class, Some(LatencyClass::Ok));
    assert!(ok.error.is_none());
    assert_eq!(ok.timings_ms.dns, None, "an IP literal needs no DNS");
    assert_eq!(ok.timings_ms.tls, None, "plain HTTP has no TLS");
    assert!(ok.timings_ms.first_byte.is_some() && ok.timings_ms.transfer.is_some());
    assert!(ok.response_time_ms > 0.0);
    assert!(ok.started_at >= ok.scheduled_at);
    assert_eq!(
        ok.check_id,
        pipe::monitor::check::check_id("match", ok.scheduled_at)
    );
    assert!(
        results["match"].raw.is_none(),
        "the body never leaves regex_match"
    );

    let nomatch = get("nomatch");
    assert_eq!(
        (nomatch.status_code, nomatch.up, nomatch.regex_matched),
        (Some(200), false, Some(false))
    );
    assert!(nomatch.error.is_none());
    assert_eq!(
        results["captures"].fields["captures"],
        serde_json::json!({"major": "4", "minor": "2"})
    );
    let plain = get("plain");
    assert_eq!(
        (plain.up, plain.regex.as_deref(), plain.regex_matched),
        (true, None, None)
    );

    // Status codes: the default expects 200-399; expected_status overrides.
    assert_eq!(
        (get("notfound").status_code, get("notfound").up),
        (Some(404), false)
    );
    assert!(
        get("notfound").error.is_none(),
        "a 404 is a response, not an error"
    );
    assert_eq!(
        (get("expected500").status_code, get("expected500").up),
        (Some(500), true)
    );
    assert_eq!(
        (get("error500").status_code, get("error500").up),
        (Some(500), false)
    );

    // Redirects are followed (up to 10), or not.
    assert_eq!(
        (get("redirects").status_code, get("redirects").up),
        (Some(200), true)
    );
    assert_eq!(
        (get("noredirects").status_code, get("noredirects").up),
        (Some(302), true)
    );
    assert_eq!(kind("loop"), Some(ErrorKind::TooManyRedirects));
    assert!(!get("loop").up);

    // Time: a response slower than the timeout is a timeout, measured as such.
    let slow = get("slow");
    assert_eq!(kind("slow"), Some(ErrorKind::Timeout));
    assert_eq!((slow.up, slow.status_code), (false, None));
    // The phases that happened before the timeout are reported; the others are null.
    assert!(slow.timings_ms.connect.is_some(), "{:?}", slow.timings_ms);
    assert_eq!(
        (slow.timings_ms.first_byte, slow.timings_ms.transfer),
        (None, None)
    );
    assert!(
        (450.0..2_000.0).contains(&slow.response_time_ms),
        "{}",
        slow.response_time_ms
    );
    assert_eq!(get("sluggish").latency_class, Some(LatencyClass::Slow));
    assert!(
        get("sluggish").up,
        "slow is not down unless down_when says so"
    );

    // Network failures are results with typed reasons.
    assert_eq!(kind("refused"), Some(ErrorKind::Connect));
    assert_eq!(kind("nodns"), Some(ErrorKind::Dns));
    assert_eq!(kind("selfsigned"), Some(ErrorKind::Tls));
    for name in ["refused", "nodns", "selfsigned"] {
        let result = get(name);
        assert!(!result.up && result.status_code.is_none(), "{name}");
        let phases = &result.timings_ms;
        assert_eq!(
            (phases.tls, phases.first_byte, phases.transfer),
            (None, None, None),
            "{name}"
        );
        assert!(!result.error.as_ref().unwrap().message.is_empty());
        assert!(result.response_time_ms >= 0.0);
    }
    // Their messages say where: libcurl's own words, not just its error code's.
    let message = |name: &str| get(name).error.as_ref().unwrap().message.clone();
    assert!(
        message("refused").contains(&format!("127.0.0.1:{closed}")),
        "{}",
        message("refused")
    );
    assert!(
        message("nodns").contains("no-such-host.invalid"),
        "{}",
        message("nodns")
    );
    assert!(
        message("selfsigned").contains("certificate"),
        "{}",
        message("selfsigned")
    );

    // Bodies are read up to max_body_bytes (1 MiB by default), never more.
    for name in ["big", "big-with-regex"] {
        let big = get(name);
        assert_eq!(kind(name), Some(ErrorKind::BodyTooLarge), "{name}");
        assert_eq!(
            (big.status_code, big.body_bytes, big.up),
            (Some(200), Some(1 << 20), false)
        );
        assert_eq!(big.regex_matched, None, "an incomplete body is not matched");
        assert!(results[name].raw.is_none());
    }
}

#[tokio::test]
async fn max_body_bytes_and_keep_bodies_are_honoured() {
    let server = http::start().await;
    let targets = format!(
        "      - {{ name: small-limit, url: '{}' }}\n      - {{ name: fits, url: '{}' }}",
        server.url("/big/200"),
        server.url("/big/100"),
    );
    let results = check_all(&targets, "    max_body_bytes: 150", 2).await;
    assert_eq!(
        results["small-limit"].result.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::BodyTooLarge)
    );
    assert_eq!(results["small-limit"].result.body_bytes, Some(150));
    assert_eq!(results["fits"].result.body_bytes, Some(100));
    assert!(results["fits"].result.up);
}

/// The value of the request header `header` each target's request carried, read back from the
/// server's echo.
async fn echoed_header(
    header: &str,
    extra: &str,
    targets: &[(&str, &str)],
) -> HashMap<String, Value> {
    let server = http::start().await;
    let list = targets
        .iter()
        .map(|(name, settings)| {
            format!(
                "      - {{ name: {name}, url: '{}', regex: '(?im)^{header}: (?P<value>[^\\r\\n]*)', {settings} }}",
                server.url("/headers")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    check_all(&list, extra, targets.len())
        .await
        .into_iter()
        .map(|(name, outcome)| {
            let value = outcome
                .fields
                .get("captures")
                .and_then(|captures| captures.get("value"))
                .cloned()
                .unwrap_or(Value::Null);
            (name, value)
        })
        .collect()
}

#[tokio::test]
async fn fresh_connections_tell_the_server_to_close() {
    // A client that will not reuse a connection must say so (RFC 9112, 9.6); a header of the
    // target's own wins.
    let fresh = echoed_header(
        "connection",
        "",
        &[
            ("default", ""),
            ("own", "headers: { Connection: keep-alive }"),
        ],
    )
    .await;
    assert_eq!(fresh["default"], "close");
    assert_eq!(fresh["own"], "keep-alive");

    let reused = echoed_header(
        "connection",
        "    reuse_connections: true",
        &[("reused", "")],
    )
    .await;
    assert_eq!(
        reused["reused"],
        Value::Null,
        "no Connection header when reusing"
    );
}

#[tokio::test]
async fn checks_name_the_monitor_unless_told_otherwise() {
    let agents = echoed_header(
        "user-agent",
        "    headers: { X-Team: ops }",
        &[
            ("default", ""),
            ("own", "headers: { User-Agent: status-page/2 }"),
        ],
    )
    .await;
    assert_eq!(agents["default"], DEFAULT_USER_AGENT);
    assert_eq!(agents["own"], "status-page/2");

    let stage_wide = echoed_header(
        "user-agent",
        "    headers: { User-Agent: fleet-monitor/1 }",
        &[("target", "")],
    )
    .await;
    assert_eq!(stage_wide["target"], "fleet-monitor/1");
}

#[tokio::test]
async fn methods_and_bodies_are_sent_as_configured() {
    let server = http::start().await;
    // The request line and the body's length, read back from the server's echo.
    let request =
        r"regex: '(?s)^(?P<method>[A-Z]+) /headers(?:.*\r\n(?i:content-length): (?P<length>\d+))?'";
    let targets = [
        ("get", ""),
        ("post", "method: POST, body: 'name=pipe&check=1'"),
        ("put", "method: put, body: '{}'"),
        ("delete", "method: DELETE"),
    ]
    .iter()
    .map(|(name, settings)| {
        format!(
            "      - {{ name: {name}, url: '{}', {request}, {settings} }}",
            server.url("/headers")
        )
    })
    .collect::<Vec<_>>()
    .join("\n");
    let results = check_all(&targets, "", 4).await;
    let sent = |name: &str| {
        let outcome = &results[name];
        assert!(outcome.result.up, "{name}: {:?}", outcome.result.error);
        let captures = &outcome.fields["captures"];
        (
            captures["method"].as_str().map(str::to_owned),
            captures
                .get("length")
                .and_then(Value::as_str)
                .map(str::to_owned),
        )
    };
    assert_eq!(sent("get"), (Some("GET".into()), None));
    assert_eq!(sent("post"), (Some("POST".into()), Some("17".into())));
    assert_eq!(sent("put"), (Some("PUT".into()), Some("2".into())));
    assert_eq!(sent("delete"), (Some("DELETE".into()), None));
    assert_eq!(results["post"].result.method, "POST");
}

/// What compiling `yaml` as `checker.yaml` reports; it must fail.
fn validation_errors(yaml: &str) -> String {
    pipe::compiler::from_str(
        "checker.yaml",
        yaml,
        &|_| None,
        &pipeline::registry(),
        &pipeline::logger(),
    )
    .err()
    .expect("the pipeline must fail validation")
    .to_string()
}

#[tokio::test]
async fn an_invalid_regex_is_a_located_validation_error() {
    let yaml = "\
sources:
  probe:
    type: http_probe
    targets:
      - url: https://example.com
      - name: broken
        url: https://example.org
        regex: '(unclosed'
sinks:
  out:
    type: console
    inputs: [probe]
";
    let text = validation_errors(yaml);
    assert!(
        text.starts_with("checker.yaml:8:9: error: source `probe` (type http_probe): targets[1]: target `broken`: invalid regex:"),
        "{text}"
    );
}

/// A "site" that takes connections and closes them without a word: a canary that does not
/// answer, counting how often it was asked.
fn silent_canary() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, asked)
}

#[tokio::test]
async fn failures_while_no_canary_answers_are_probe_faults_not_downs() {
    let server = http::start().await;
    let closed = http::closed_port();
    let (canary, asked) = silent_canary();
    // Twenty sites refused at once, and two that answer.
    let mut targets: Vec<String> = (0..20)
        .map(|i| format!("      - {{ name: refused-{i}, url: 'http://127.0.0.1:{closed}/{i}' }}"))
        .collect();
    targets.push(format!(
        "      - {{ name: ok, url: '{}' }}",
        server.url("/ok")
    ));
    targets.push(format!(
        "      - {{ name: answered-404, url: '{}' }}",
        server.url("/status/404")
    ));
    let targets = targets.join("\n");
    let canaries = format!(
        "    canary:\n      - {{ url: 'http://127.0.0.1:{canary}/', timeout: 1s }}\n      - {{ url: 'http://127.0.0.1:{closed}/canary', timeout: 1s }}"
    );
    let results = check_all(&targets, &canaries, 22).await;
    for i in 0..20 {
        let refused = &results[&format!("refused-{i}")];
        assert_eq!(
            refused.result.error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Connect)
        );
        assert!(!refused.result.up, "still not up");
        assert!(refused.result.probe_fault, "refused-{i}: a probe fault");
        assert_eq!(refused.fields["probe_fault"], Value::Bool(true));
    }
    // The ones that got a response are what they are.
    assert!(results["ok"].result.up && !results["ok"].result.probe_fault);
    let not_found = &results["answered-404"];
    assert!(!not_found.result.up && !not_found.result.probe_fault);
    assert!(!not_found.fields.contains_key("probe_fault"));
    // One verdict for the whole burst: the silent canary was asked once, not twenty times.
    let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
    println!("the silent canary was asked {asked} time(s) for 20 failures");
    assert_eq!(asked, 1, "the canaries' verdict is shared by the failures");

    // A canary that answers (any status): the same failures count against their targets.
    let canaries = format!(
        "    canary:\n      - {{ url: '{}' }}\n      - {{ url: 'http://127.0.0.1:{canary}/' }}",
        server.url("/status/503")
    );
    let results = check_all(&targets, &canaries, 22).await;
    for i in 0..20 {
        let refused = &results[&format!("refused-{i}")];
        assert!(!refused.result.up && !refused.result.probe_fault);
        assert!(!refused.fields.contains_key("probe_fault"));
    }
}

#[tokio::test]
async fn a_bad_canary_is_a_located_validation_error() {
    let yaml = "\
sources:
  probe:
    type: http_probe
    targets:
      - url: https://example.com
    canary:
      - url: 'ftp://canary.example'
sinks:
  out:
    type: console
    inputs: [probe]
";
    assert_eq!(
        validation_errors(yaml).lines().next().unwrap_or_default(),
        "checker.yaml:7:9: error: source `probe` (type http_probe): canary[0]: `ftp://canary.example`: unsupported scheme `ftp` in the URL; use http or https"
    );
}
