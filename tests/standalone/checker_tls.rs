//! A TLS site the probe trusts, checked again and again: every check must make a full
//! handshake, so that its `tls` phase is what a first-time visitor waits for, not a resumed
//! session's shortcut.
//!
//! A test binary of its own: the trusted certificate reaches libcurl through `SSL_CERT_FILE`,
//! which is read once per process, before the first request.

use crate::support;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::pipeline;
use openssl::ssl::{SslAcceptor, SslMethod};
use pipe::monitor::check::CheckResult;
use pipe::topology::RunOptions;
use serde_json::Value;

/// A TLS server for `localhost` that records, for each handshake, whether it resumed a session.
/// It keeps OpenSSL's defaults, which offer resumption (session cache and TLS 1.3 tickets).
fn start_trusted_tls(
    cert: &openssl::x509::X509,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
) -> (u16, Arc<Mutex<Vec<bool>>>) {
    let mut acceptor = SslAcceptor::mozilla_intermediate(SslMethod::tls()).unwrap();
    acceptor.set_private_key(key).unwrap();
    acceptor.set_certificate(cert).unwrap();
    let acceptor = acceptor.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let resumed = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&resumed);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(mut tls) = acceptor.accept(stream) else {
                continue;
            };
            record.lock().unwrap().push(tls.ssl().session_reused());
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match tls.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = tls.shutdown();
        }
    });
    (port, resumed)
}

#[tokio::test]
async fn every_check_makes_a_full_tls_handshake() {
    let (cert, key) = support::tls::self_signed("localhost");
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("trusted.pem");
    std::fs::write(&trusted, cert.to_pem().unwrap()).unwrap();
    let (port, resumed) = start_trusted_tls(&cert, &key);

    let channel = support::unique_name("tls");
    let mut rx = pipeline::capture(&channel);
    let running = pipeline::start(
        &format!(
            "\
sources:
  probe:
    type: http_probe
    interval: 200ms
    timeout: 5s
    tls_ca_file: '{}'
    targets:
      - {{ name: site, url: 'https://localhost:{port}/' }}
sinks:
  out:
    type: capture
    inputs: [probe]
    channel: {channel}
",
            trusted.display()
        ),
        RunOptions::default(),
    );
    let mut results = Vec::new();
    while results.len() < 5 {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("five checks within 30 s")
            .expect("the pipeline is running");
        let result: CheckResult = serde_json::from_value(Value::Object(fields)).unwrap();
        results.push(result);
    }
    running.stop().await.expect("a clean stop");

    for result in &results {
        assert!(
            result.up && result.error.is_none(),
            "a trusted site is up: {:?}",
            result.error
        );
        assert_eq!(result.status_code, Some(200));
        assert!(
            result.timings_ms.tls.is_some_and(|ms| ms > 0.0),
            "each check measures its handshake: {:?}",
            result.timings_ms
        );
    }
    let resumed = resumed.lock().unwrap();
    assert!(resumed.len() >= 5, "{} handshakes", resumed.len());
    assert!(
        resumed.iter().all(|&r| !r),
        "no check resumes an earlier session: {resumed:?}"
    );
}
