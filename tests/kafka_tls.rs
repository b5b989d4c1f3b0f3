//! Kafka over TLS with client certificates, as Aiven does it, locally: a private tansu behind a
//! TLS-terminating proxy (socat's OPENSSL-LISTEN from Debian's package, requiring a client
//! certificate signed by the test CA), tansu advertising the proxy's address. tansu 0.6.0's own
//! TLS flags cannot be used: its argument parser refuses `--cert` and `--key` together.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pipe::topology::RunOptions;
use support::{http, pipeline, tls, unique_name};

/// The certificates of one test: a CA, the broker's ("localhost"), a client's, and a second CA
/// that signed nothing here.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: Vec<u8>| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca_key = tls::key();
        let ca = tls::certificate("pipe test CA", &ca_key, None, true);
        let server_key = tls::key();
        let server = tls::certificate("localhost", &server_key, Some((&ca, &ca_key)), false);
        let client_key = tls::key();
        let client = tls::certificate("pipe-client", &client_key, Some((&ca, &ca_key)), false);
        let other_key = tls::key();
        let other = tls::certificate("another CA", &other_key, None, true);
        write("ca.pem", ca.to_pem().unwrap());
        write("server.pem", server.to_pem().unwrap());
        write("server.key", server_key.private_key_to_pem_pkcs8().unwrap());
        write("client.pem", client.to_pem().unwrap());
        write("client.key", client_key.private_key_to_pem_pkcs8().unwrap());
        write("other-ca.pem", other.to_pem().unwrap());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `options:` of a stage that connects with `ca` and, if given, the client pair.
    fn options(&self, ca: &str, client: bool) -> String {
        let mut options = format!(
            "    options:\n      security.protocol: ssl\n      ssl.ca.location: '{}'\n",
            self.path(ca).display()
        );
        if client {
            options.push_str(&format!(
                "      ssl.certificate.location: '{}'\n      ssl.key.location: '{}'\n",
                self.path("client.pem").display(),
                self.path("client.key").display()
            ));
        }
        options
    }
}

/// socat terminating TLS on 127.0.0.1:`port` in front of 127.0.0.1:`upstream`, requiring a
/// client certificate signed by `ca`.
struct TlsProxy(Child);

impl TlsProxy {
    fn start(port: u16, upstream: u16, certificates: &Certificates) -> Self {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            certificates.path("server.pem").display(),
            certificates.path("server.key").display(),
            certificates.path("ca.pem").display(),
        );
        let child = Command::new("socat")
            .args([&listen, &format!("TCP:127.0.0.1:{upstream}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (Debian's socat package, installed by scripts/test)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "socat did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker reachable only over TLS, at `localhost:PORT`, with one topic.
struct TlsCluster {
    _broker: support::PrivateBroker,
    _proxy: TlsProxy,
    port: u16,
    topic: String,
}

fn tls_cluster(certificates: &Certificates) -> TlsCluster {
    let (port, upstream) = (http::closed_port(), http::closed_port());
    let broker = support::PrivateBroker::start_advertising(upstream, &format!("localhost:{port}"));
    let topic = unique_name("tls");
    broker.create_topic(&topic, 3);
    let proxy = TlsProxy::start(port, upstream, certificates);
    TlsCluster {
        _broker: broker,
        _proxy: proxy,
        port,
        topic,
    }
}

fn checker_yaml(brokers: &str, topic: &str, options: &str, count: u32) -> String {
    format!(
        "\
sources:
  gen:
    type: generate
    interval: 5ms
    count: {count}
    fields: {{ target: tls-site, up: true }}
sinks:
  kafka:
    type: kafka
    inputs: [gen]
    brokers: {brokers}
    topic: {topic}
    connect_timeout: 5s
{options}      message.timeout.ms: 10000
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checker_and_the_writer_deliver_over_tls_with_client_certificates() {
    const N: u32 = 200;
    let certificates = Certificates::new();
    let cluster = tokio::task::block_in_place(|| tls_cluster(&certificates));
    let brokers = format!("localhost:{}", cluster.port);
    let options = certificates.options("ca.pem", true);

    pipeline::start(
        &checker_yaml(&brokers, &cluster.topic, &options, N),
        RunOptions::default(),
    )
    .wait()
    .await
    .expect("every result delivered over TLS");

    let channel = unique_name("tls");
    let mut seen = pipeline::capture(&channel);
    let writer = format!(
        "\
sources:
  kafka:
    type: kafka
    brokers: {brokers}
    topics: [{}]
    group: {}
    format: json
{options}sinks:
  seen:
    type: capture
    inputs: [kafka]
    channel: {channel}
",
        cluster.topic,
        unique_name("group")
    );
    let running = pipeline::start(&writer, RunOptions::default());
    for received in 0..N {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {received} of {N}"))
            .unwrap();
        assert_eq!(fields["target"], "tls-site");
    }
    running.stop().await.expect("a clean stop");
    println!("{N} results through TLS with a client certificate, both ways");
}

/// Runs the checker pipeline as a process; its exit code and standard error.
fn run_checker(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{}.yaml", unique_name("checker")));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_no_client_certificate_or_a_wrong_host_name_is_refused_naming_the_broker() {
    let certificates = Certificates::new();
    let cluster = tokio::task::block_in_place(|| tls_cluster(&certificates));
    let localhost = format!("localhost:{}", cluster.port);
    let by_address = format!("127.0.0.1:{}", cluster.port);
    let key = std::fs::read_to_string(certificates.path("client.key")).unwrap();
    let secret_line = key.lines().nth(1).unwrap().to_owned();
    let cases = [
        (
            "a wrong CA",
            &localhost,
            certificates.options("other-ca.pem", true),
            "certificate verify failed",
        ),
        (
            "no client certificate",
            &localhost,
            certificates.options("ca.pem", false),
            "alert certificate required",
        ),
        (
            "a wrong host name",
            &by_address,
            certificates.options("ca.pem", true),
            "certificate verify failed",
        ),
    ];
    for (case, brokers, options, reason) in cases {
        let yaml = checker_yaml(brokers, &cluster.topic, &options, 3);
        let started = std::time::Instant::now();
        let (code, stderr) =
            tokio::task::block_in_place(|| run_checker(certificates.dir.path(), &yaml));
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        println!(
            "{case}: exit {code:?} after {:.1} s: {last}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(code, Some(1), "{case}: {stderr}");
        assert!(
            last.contains(&format!("cannot connect to the Kafka cluster at {brokers}"))
                && last.contains(brokers.as_str())
                && last.contains(reason),
            "{case}: {stderr}"
        );
        assert!(!stderr.contains(&secret_line), "{case}: the key leaked");
    }
}
