//! Kafka over TLS as Aiven offers it, on the local Apache Kafka's own listeners
//! (`scripts/dev-services`): SSL requiring a client certificate signed by the local CA
//! (`ssl.client.auth=required`), and SASL_SSL with a SCRAM user. Both serve a certificate for
//! `localhost` only, so a client that connects by address fails host-name verification.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{pipeline, tls, unique_name};
use pipe::topology::RunOptions;

/// What `scripts/dev-services env` says of the broker's TLS listeners.
struct Listeners {
    ssl: String,
    sasl: String,
    ca: String,
    client_cert: String,
    client_key: String,
    user: String,
    password: String,
    /// A CA that signed nothing here, and a folder for the test's files.
    dir: tempfile::TempDir,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test needs the local Apache Kafka's TLS listeners; run it with scripts/test")
    })
}

impl Listeners {
    fn from_env() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let other_key = tls::key();
        let other = tls::certificate("another CA", &other_key, None, true);
        std::fs::write(dir.path().join("other-ca.pem"), other.to_pem().unwrap()).unwrap();
        let listeners = Self {
            ssl: var("KAFKA_SSL_BROKERS"),
            sasl: var("KAFKA_SASL_BROKERS"),
            ca: var("KAFKA_CA"),
            client_cert: var("KAFKA_CLIENT_CERT"),
            client_key: var("KAFKA_CLIENT_KEY"),
            user: var("KAFKA_SASL_USERNAME"),
            password: var("KAFKA_SASL_PASSWORD"),
            dir,
        };
        // Fails loudly, naming the listener, when the broker is not there.
        support::kafka_brokers();
        listeners
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The `options:` of a stage on the SSL listener, trusting `ca`, with or without the
    /// client's certificate.
    fn ssl_options(&self, ca: &Path, client: bool) -> String {
        let mut options = format!(
            "    options:\n      security.protocol: ssl\n      ssl.ca.location: '{}'\n",
            ca.display()
        );
        if client {
            options.push_str(&format!(
                "      ssl.certificate.location: '{}'\n      ssl.key.location: '{}'\n",
                self.client_cert, self.client_key
            ));
        }
        options
    }

    /// The `options:` of a stage on the SASL_SSL listener with SCRAM-SHA-512 and `password`.
    fn sasl_options(&self, password: &str) -> String {
        format!(
            "    options:\n      security.protocol: sasl_ssl\n      ssl.ca.location: '{}'\n      \
             sasl.mechanism: SCRAM-SHA-512\n      sasl.username: {}\n      sasl.password: '{password}'\n",
            self.ca, self.user
        )
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

/// The checker's sink writes `N` results through `brokers`, and the writer's source reads them
/// back through the same listener.
async fn round_trip(brokers: &str, options: &str, how: &str) {
    const N: u32 = 200;
    let topic = support::create_topic("tls", 3).await;
    pipeline::start(
        &checker_yaml(brokers, &topic, options, N),
        RunOptions::default(),
    )
    .wait()
    .await
    .unwrap_or_else(|e| panic!("every result delivered {how}: {e}"));

    let channel = unique_name("tls");
    let mut seen = pipeline::capture(&channel);
    let writer = format!(
        "\
sources:
  kafka:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {}
    format: json
{options}sinks:
  seen:
    type: capture
    inputs: [kafka]
    channel: {channel}
",
        unique_name("group")
    );
    let running = pipeline::start(&writer, RunOptions::default());
    for received in 0..N {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("{how}: stalled after {received} of {N}"))
            .unwrap();
        assert_eq!(fields["target"], "tls-site");
    }
    running.stop().await.expect("a clean stop");
    println!("{N} results {how}, both ways");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checker_and_the_writer_deliver_over_tls_with_client_certificates() {
    let listeners = Listeners::from_env();
    let options = listeners.ssl_options(Path::new(&listeners.ca), true);
    round_trip(
        &listeners.ssl,
        &options,
        "through TLS with a client certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checker_and_the_writer_deliver_over_sasl_ssl_with_scram() {
    let listeners = Listeners::from_env();
    let options = listeners.sasl_options(&listeners.password);
    round_trip(
        &listeners.sasl,
        &options,
        "through SASL_SSL with SCRAM-SHA-512",
    )
    .await;
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
async fn a_wrong_ca_certificate_host_name_or_password_is_refused_naming_the_broker() {
    let listeners = Listeners::from_env();
    let topic = support::create_topic("tls", 1).await;
    let ca = Path::new(&listeners.ca);
    // The SSL listener's port, by address instead of by the name its certificate holds.
    let by_address = listeners.ssl.replace("localhost", "127.0.0.1");
    let key = std::fs::read_to_string(&listeners.client_key).unwrap();
    let secrets = [
        key.lines().nth(1).unwrap().to_owned(),
        "not-the-password-1234".to_owned(),
    ];
    let cases = [
        (
            "a wrong CA",
            &listeners.ssl,
            listeners.ssl_options(&listeners.other_ca(), true),
            "certificate verify failed",
        ),
        (
            "no client certificate",
            &listeners.ssl,
            listeners.ssl_options(ca, false),
            // Java's TLS answers a missing client certificate with alert 42.
            "alert bad certificate",
        ),
        (
            "a wrong host name",
            &by_address,
            listeners.ssl_options(ca, true),
            "certificate verify failed",
        ),
        (
            "a wrong SCRAM password",
            &listeners.sasl,
            listeners.sasl_options(&secrets[1]),
            "Authentication failed",
        ),
    ];
    for (case, brokers, options, reason) in cases {
        let yaml = checker_yaml(brokers, &topic, &options, 3);
        let started = std::time::Instant::now();
        let (code, stderr) =
            tokio::task::block_in_place(|| run_checker(listeners.dir.path(), &yaml));
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        println!(
            "{case}: exit {code:?} after {:.1} s: {last}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(code, Some(1), "{case}: {stderr}");
        assert!(
            last.contains(&format!("cannot connect to the Kafka cluster at {brokers}"))
                && last.contains(reason),
            "{case}: {stderr}"
        );
        for secret in &secrets {
            assert!(!stderr.contains(secret.as_str()), "{case}: a secret leaked");
        }
    }
}
