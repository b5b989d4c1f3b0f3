//! What a check records beyond status and timings, against local servers made by the tests:
//! TLS details of accepted and refused certificates, certificate expiry reported and judged,
//! the address family, checks through a proxy, the private-address guard, and the checker's
//! identity. Every message is validated against `docs/check-v1.schema.json`.

use crate::support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{http, pipeline, tls};
use openssl::asn1::Asn1Time;
use openssl::x509::X509;
use pipe::monitor::check::{CheckResult, ErrorKind};
use pipe::topology::RunOptions;
use serde_json::Value;

/// Runs `http_probe` with `settings` (stage-level YAML lines, indented four spaces) and
/// `targets` until each of `count` targets has reported once; returns the first result of each.
async fn first_results(
    settings: &str,
    targets: &str,
    count: usize,
) -> HashMap<String, CheckResult> {
    let channel = support::unique_name("details");
    let mut rx = pipeline::capture(&channel);
    let yaml = format!(
        "\
sources:
  probe:
    type: http_probe
    interval: 1s
    timeout: 5s
{settings}
    targets:
{targets}
sinks:
  out:
    type: capture
    inputs: [probe]
    channel: {channel}
"
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let first = pipeline::first_by_target(&mut rx, count, Duration::from_secs(30)).await;
    let results = first
        .into_iter()
        .map(|(target, (fields, _))| {
            (
                target,
                serde_json::from_value(Value::Object(fields)).unwrap(),
            )
        })
        .collect();
    running.stop().await.expect("a clean stop");
    results
}

/// A test CA, written to a PEM file for `tls_ca_file`.
struct Ca {
    cert: X509,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn ca() -> Ca {
    let key = tls::key();
    let cert = tls::certificate("pipe test CA", &key, None, true);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, cert.to_pem().unwrap()).unwrap();
    Ca {
        cert,
        key,
        file,
        _dir: dir,
    }
}

fn time(seconds_from_now: i64) -> Asn1Time {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Asn1Time::from_unix(now + seconds_from_now).unwrap()
}

const DAY: i64 = 86_400;

/// A TLS server for `sans`, its certificate signed by `ca`, valid between the two offsets.
fn site(ca: &Ca, sans: &[&str], from: i64, until: i64) -> (SocketAddr, X509) {
    let key = tls::key();
    let cert = tls::certificate_with(
        sans[0],
        sans,
        &key,
        Some((&ca.cert, &ca.key)),
        false,
        (time(from), time(until)),
    );
    (http::start_tls(&cert, &key), cert)
}

/// The certificate's validity as the result must report it.
fn validity(cert: &X509) -> (SystemTime, SystemTime) {
    let epoch = Asn1Time::from_unix(0).unwrap();
    let at = |t: &openssl::asn1::Asn1TimeRef| {
        let diff = epoch.diff(t).unwrap();
        UNIX_EPOCH + Duration::from_secs(diff.days as u64 * 86_400 + diff.secs as u64)
    };
    (at(cert.not_before()), at(cert.not_after()))
}

#[tokio::test]
async fn a_certificate_near_its_end_is_reported_and_judged_only_when_asked() {
    let ca = ca();
    let (addr, cert) = site(&ca, &["localhost", "alt.localhost"], -DAY, 3 * DAY);
    let url = format!("https://localhost:{}/", addr.port());
    let results = first_results(
        &format!("    tls_ca_file: '{}'", ca.file.display()),
        &format!(
            "      - {{ name: reported, url: '{url}' }}\n\
             \x20     - {{ name: judged, url: '{url}', down_when_cert_expires_within: 7d }}\n\
             \x20     - {{ name: judged-by-warning, url: '{url}', cert_expiry_warning: 5d, down_when_cert_expires_within: true }}\n\
             \x20     - {{ name: far-enough, url: '{url}', cert_expiry_warning: 2d, down_when_cert_expires_within: true }}"
        ),
        4,
    )
    .await;

    let reported = &results["reported"];
    assert!(reported.error.is_none(), "{:?}", reported.error);
    assert!(
        reported.up,
        "near expiry is reported, not judged, by default"
    );
    let details = reported
        .tls
        .as_ref()
        .expect("TLS details on an HTTPS check");
    assert!(details.version.starts_with("TLSv1."), "{}", details.version);
    assert!(details.cipher.starts_with("TLS_"), "{}", details.cipher);
    assert_eq!(
        (details.cert_not_before, details.cert_not_after),
        validity(&cert)
    );
    assert_eq!(details.cert_issuer, "CN=pipe test CA");
    assert_eq!(details.cert_subject, "CN=localhost");
    assert_eq!(details.cert_sans, ["localhost", "alt.localhost"]);
    assert!(
        details.cert_expires_soon,
        "3 days is within the default 14d"
    );

    let judged = &results["judged"];
    assert!(!judged.up && judged.error.is_none(), "{judged:?}");
    assert_eq!(judged.status_code, Some(200));
    assert!(!results["judged-by-warning"].up);
    let far = &results["far-enough"];
    assert!(far.up, "3 days left is outside a 2d window");
    assert!(!far.tls.as_ref().unwrap().cert_expires_soon);
}

#[tokio::test]
async fn refused_certificates_are_still_described() {
    let ca = ca();
    let (expired, expired_cert) = site(&ca, &["localhost"], -10 * DAY, -DAY);
    let (wrong_host, wrong_cert) = site(&ca, &["other.example"], -DAY, 90 * DAY);
    let untrusted = http::start_self_signed_tls();
    let results = first_results(
        &format!("    tls_ca_file: '{}'", ca.file.display()),
        &format!(
            "      - {{ name: expired, url: 'https://localhost:{}/' }}\n\
             \x20     - {{ name: wrong-host, url: 'https://localhost:{}/' }}\n\
             \x20     - {{ name: untrusted, url: 'https://localhost:{}/' }}",
            expired.port(),
            wrong_host.port(),
            untrusted.port()
        ),
        3,
    )
    .await;

    for (name, cert, words) in [
        ("expired", Some(&expired_cert), "expired"),
        ("wrong-host", Some(&wrong_cert), "localhost"),
        ("untrusted", None, "certificate"),
    ] {
        let result = &results[name];
        let error = result.error.as_ref().expect("a refused certificate fails");
        assert_eq!(error.kind, ErrorKind::Tls, "{name}: {error:?}");
        assert!(error.message.contains(words), "{name}: {}", error.message);
        assert!(!result.up);
        let details = result
            .tls
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: the refused certificate is still described"));
        if let Some(cert) = cert {
            assert_eq!(
                (details.cert_not_before, details.cert_not_after),
                validity(cert),
                "{name}"
            );
        }
    }
    let expired = results["expired"].tls.as_ref().unwrap();
    assert!(
        expired.cert_expires_soon,
        "an ended certificate is past its warning"
    );
    assert_eq!(
        results["wrong-host"].tls.as_ref().unwrap().cert_sans,
        ["other.example"]
    );
    assert_eq!(
        results["untrusted"].tls.as_ref().unwrap().cert_subject,
        "CN=localhost"
    );
}

/// Answers every connection with 200 and counts them.
fn serve_plain(listener: TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    accepted
}

#[tokio::test]
async fn ip_version_picks_the_address_family() {
    // One port free on both loopbacks: the kernel picks it on [::1], and another test of this
    // binary may hold the same number on 127.0.0.1, so a few picks may be needed.
    let (v6, v4, port) = (0..50)
        .find_map(|_| {
            let v6 = TcpListener::bind("[::1]:0").unwrap_or_else(|e| {
                panic!("this machine has no IPv6 loopback (binding [::1] failed: {e}); the ip_version test needs one")
            });
            let port = v6.local_addr().unwrap().port();
            let v4 = TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some((v6, v4, port))
        })
        .expect("no port free on both 127.0.0.1 and [::1] in 50 tries");
    serve_plain(v6);
    serve_plain(v4);
    // libcurl resolves `localhost` to both loopback addresses itself (RFC 6761), whatever
    // /etc/hosts says.
    let url = format!("http://localhost:{port}/");
    let results = first_results(
        "",
        &format!(
            "      - {{ name: six, url: '{url}', ip_version: 6 }}\n\
             \x20     - {{ name: four, url: '{url}', ip_version: 4 }}\n\
             \x20     - {{ name: any, url: '{url}', ip_version: any }}"
        ),
        3,
    )
    .await;
    assert_eq!(
        results["six"].remote_addr.as_deref(),
        Some(format!("[::1]:{port}").as_str())
    );
    assert_eq!(
        results["four"].remote_addr.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert!(results.values().all(|r| r.up), "{results:?}");
}

/// A forward proxy that wants `user:password` and answers requests itself, recording each
/// request line it was sent.
fn start_proxy(credentials: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let wanted = format!("proxy-authorization: basic {}", base64(credentials)).to_lowercase();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut buffer = [0; 4096];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            record
                .lock()
                .unwrap()
                .push(head.lines().next().unwrap_or("").to_owned());
            let allowed = head.lines().any(|line| line.to_lowercase() == wanted);
            let response: &[u8] = if allowed {
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia proxy"
            } else {
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = stream.write_all(response);
        }
    });
    (addr, seen)
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn checks_go_through_a_proxy_whose_password_stays_secret() {
    const PASSWORD: &str = "pr0xy-pa55-7f3a";
    std::env::set_var("PIPE_TEST_PROXY_PASSWORD", PASSWORD);
    let (proxy, seen) = start_proxy("probe:pr0xy-pa55-7f3a");
    let results = first_results(
        "",
        &format!(
            "      - {{ name: proxied, url: 'http://origin.invalid/status', proxy: 'http://probe:${{PIPE_TEST_PROXY_PASSWORD}}@{proxy}' }}\n\
             \x20     - {{ name: refused, url: 'http://origin.invalid/other', proxy: 'http://probe:wrong-pass-1@{proxy}' }}"
        ),
        2,
    )
    .await;

    let proxied = &results["proxied"];
    assert!(proxied.up, "{proxied:?}");
    assert_eq!(proxied.status_code, Some(200));
    assert_eq!(
        proxied.remote_addr.as_deref(),
        Some(proxy.to_string().as_str())
    );
    let refused = &results["refused"];
    assert_eq!(refused.status_code, Some(407));
    assert!(!refused.up);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|line| line == "GET http://origin.invalid/status HTTP/1.1"),
        "the proxy resolves and fetches the target: {seen:?}"
    );
    for result in results.values() {
        let text = serde_json::to_string(result).unwrap();
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong-pass-1"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn private_addresses_are_refused_after_resolution_when_asked() {
    let guarded = TcpListener::bind("127.0.0.1:0").unwrap();
    let guarded_port = guarded.local_addr().unwrap().port();
    let reached = serve_plain(guarded);
    let open = http::start().await;
    let results = first_results(
        "",
        &format!(
            "      - {{ name: by-name, url: 'http://localhost:{guarded_port}/', deny_private_addresses: true }}\n\
             \x20     - {{ name: by-address, url: 'http://127.0.0.1:{guarded_port}/', deny_private_addresses: true }}\n\
             \x20     - {{ name: allowed, url: '{}' }}",
            open.url("/ok")
        ),
        3,
    )
    .await;
    for name in ["by-name", "by-address"] {
        let result = &results[name];
        let error = result.error.as_ref().expect("refused");
        assert_eq!(error.kind, ErrorKind::Connect, "{name}: {error:?}");
        assert!(
            error.message.contains("loopback") && error.message.contains("deny_private_addresses"),
            "{name}: {}",
            error.message
        );
        assert!(!result.up && result.remote_addr.is_none());
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "no connection was made");
    assert!(results["allowed"].up, "the guard is off by default");
}

#[tokio::test]
async fn region_and_checker_name_each_result_and_region_is_part_of_check_id() {
    let server = http::start().await;
    let target = format!("      - {{ name: site, url: '{}' }}", server.url("/ok"));
    let regional = first_results("    region: eu-west\n    checker: probe-7", &target, 1).await;
    let result = &regional["site"];
    assert_eq!(result.region.as_deref(), Some("eu-west"));
    assert_eq!(result.checker.as_deref(), Some("probe-7"));
    assert_eq!(
        result.check_id,
        pipe::monitor::check::check_id_in("site", result.scheduled_at, Some("eu-west"))
    );

    let plain = first_results("", &target, 1).await;
    let result = &plain["site"];
    assert_eq!(result.region, None);
    assert_eq!(
        result.check_id,
        pipe::monitor::check::check_id("site", result.scheduled_at)
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        result.checker.as_deref(),
        Some(host.trim()),
        "the host name by default"
    );
}

#[tokio::test]
async fn a_reply_that_is_not_http_is_an_other_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buffer = [0; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
        }
    });
    let results = first_results(
        "",
        &format!("      - {{ name: not-http, url: 'http://{addr}/' }}"),
        1,
    )
    .await;
    let error = results["not-http"].error.as_ref().expect("a failure");
    assert_eq!(error.kind, ErrorKind::Other, "{error:?}");
}

#[tokio::test]
async fn per_target_metrics_give_the_end_of_the_certificate_presented() {
    let ca = ca();
    let (addr, cert) = site(&ca, &["localhost"], -DAY, 3 * DAY);
    let channel = support::unique_name("certgauge");
    let mut rx = pipeline::capture(&channel);
    let running = pipeline::start(
        &format!(
            "\
sources:
  probe:
    type: http_probe
    interval: 1s
    per_target_metrics: true
    tls_ca_file: '{}'
    targets:
      - {{ name: secure, url: 'https://localhost:{}/' }}
sinks:
  out:
    type: capture
    inputs: [probe]
    channel: {channel}
",
            ca.file.display(),
            addr.port()
        ),
        RunOptions::default(),
    );
    pipeline::first_by_target(&mut rx, 1, Duration::from_secs(30)).await;
    let text = running
        .telemetry
        .encode(pipe::telemetry::Format::Prometheus);
    running.stop().await.expect("a clean stop");
    let end = validity(&cert)
        .1
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        support::metrics::sum(
            &text,
            "pipe_probe_target_cert_not_after_seconds",
            &[("target", "secure")]
        ),
        end,
        "{text}"
    );
}
