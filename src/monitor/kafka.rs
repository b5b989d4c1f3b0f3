//! What the `kafka` sink and source share: client settings, secret redaction, and librdkafka's
//! logs routed into slog.
//!
//! Settings are `brokers` plus an `options:` map handed to librdkafka as is (security.protocol,
//! ssl.*, sasl.*, compression, linger…), over defaults each stage chooses. librdkafka may echo a
//! setting's value in an error, and older rdkafka versions print secrets in `ClientConfig`'s
//! Debug, so a `ClientConfig` is never logged, and every message built from a librdkafka error
//! goes through [`redact`] first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::ClientConfig;
use serde::Deserialize;
use slog::{debug, error, info, warn};

use crate::config::diagnostic::ConfigError;
use crate::telemetry::StageHealth;
use crate::throttle::RepeatedWarning;

/// A librdkafka setting's value as written in YAML: a string, number or boolean.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    /// A string.
    Text(String),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::Integer(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Values are secrets, so Debug shows keys only.
impl fmt::Debug for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<value>")
    }
}

/// The `options:` map of a Kafka stage.
pub type Options = BTreeMap<String, OptionValue>;

/// Is this setting's value a secret (never to be shown)?
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "pem",
        "token",
        "jaas",
        "credential",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Replaces the value of every secret option found in `message` with `***`.
pub fn redact(message: &str, options: &Options) -> String {
    let mut message = message.to_owned();
    for (key, value) in options {
        let value = value.to_string();
        if is_secret(key) && value.len() >= 3 {
            message = message.replace(&value, "***");
        }
    }
    message
}

/// Builds the client settings: `defaults`, then `options` over them, then `brokers`. Errors
/// name the offending option and never its value.
pub fn client_config(
    brokers: &str,
    options: &Options,
    defaults: &[(&str, &str)],
) -> Result<ClientConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if brokers.trim().is_empty() {
        errors.push(ConfigError::at(
            "brokers",
            "no brokers: give `host:port[,host:port…]`",
        ));
    }
    if options.contains_key("bootstrap.servers") || options.contains_key("metadata.broker.list") {
        errors.push(ConfigError::at(
            "options",
            "set the brokers with `brokers:`, not in `options`",
        ));
    }
    let mut config = ClientConfig::new();
    // rdkafka derives librdkafka's own level from the `log` crate, which we do not use, and so
    // would keep only errors: warnings such as an offset reset (checks skipped), a failed
    // offset commit or a session timeout would never reach the log. librdkafka writes debug
    // lines only for the `debug` contexts set in `options`, so passing everything costs
    // nothing otherwise, and our logger decides what is shown.
    config.set_log_level(RDKafkaLogLevel::Debug);
    config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in options {
        config.set(key, value.to_string());
    }
    config.set("bootstrap.servers", brokers);
    // librdkafka checks every name and value here, without connecting anywhere.
    if let Err(e) = config.create_native_config() {
        errors.push(ConfigError::at("options", redact(&e.to_string(), options)));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// A client context that sends librdkafka's own logs and errors to slog, secrets redacted.
pub struct SlogContext {
    /// Where librdkafka's lines go.
    pub logger: slog::Logger,
    /// The stage's `options`, to redact their secret values from every line.
    pub options: Options,
    /// librdkafka reports a down broker on every reconnection attempt: each kind of error is
    /// logged at most once per [`crate::throttle::PERIOD`], with how long it has lasted.
    repeats: Mutex<HashMap<String, RepeatedWarning>>,
    last_error: LastError,
    /// The stage's readiness: not ready once no broker has been reachable for
    /// [`UNREACHABLE_GRACE`].
    health: Option<StageHealth>,
}

/// How long no broker may be reachable before the stage counts as not ready.
pub const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// How often librdkafka reports its statistics (broker states, consumer lag), unless the
/// stage's `options` set `statistics.interval.ms`.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// The last error librdkafka reported that says the cluster refuses us for good: a TLS
/// handshake that failed (a wrong CA, a missing client certificate, a wrong host name) or a
/// failed authentication; redacted. A stage keeps this handle (the context itself goes into the
/// client) to explain why the cluster is silent. A down broker is not a refusal: it is waited
/// for, and its errors ("all brokers down") do not hide a refusal reported before them.
#[derive(Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// The last refusal reported, if any.
    pub fn refusal(&self) -> Option<String> {
        self.0.lock().expect("not poisoned").clone()
    }

    fn record(&self, error: &KafkaError, text: &str) {
        let refused = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication) => true,
            // Under TLS 1.3 the client's handshake is over before the server checks the client
            // certificate: a missing one comes back as a transport error carrying the server's
            // alert, in OpenSSL's words ("tlsv13 alert certificate required: SSL alert number
            // 116").
            Some(RDKafkaErrorCode::BrokerTransportFailure) => text.contains("SSL alert number"),
            _ => false,
        };
        if refused {
            *self.0.lock().expect("not poisoned") = Some(text.to_owned());
        }
    }
}

impl SlogContext {
    /// A context logging to `logger`, redacting the secret values of `options`.
    pub fn new(logger: slog::Logger, options: Options) -> Self {
        Self {
            logger,
            options,
            repeats: Mutex::default(),
            last_error: LastError::default(),
            health: None,
        }
    }

    /// Reports the reachability of the cluster to `health`.
    #[must_use]
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Reads librdkafka's statistics: a stage whose client is connected to no broker is
    /// unreachable; one connected to any is not.
    pub fn observe(&self, statistics: &Statistics) {
        let Some(health) = &self.health else { return };
        if statistics.brokers.values().any(|b| b.state == "UP") {
            health.resolved("broker_unreachable");
        } else {
            health.problem(
                "broker_unreachable",
                "no connection to any Kafka broker",
                UNREACHABLE_GRACE,
            );
        }
    }

    /// A handle on the last error this client reports.
    pub fn last_error(&self) -> LastError {
        self.last_error.clone()
    }
}

impl ClientContext for SlogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = redact(message, &self.options);
        let logger = &self.logger;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(logger, "librdkafka: {message}"; "facility" => facility)
            }
            RDKafkaLogLevel::Warning => {
                warn!(logger, "librdkafka: {message}"; "facility" => facility)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(logger, "librdkafka: {message}"; "facility" => facility)
            }
            RDKafkaLogLevel::Debug => {
                debug!(logger, "librdkafka: {message}"; "facility" => facility)
            }
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.observe(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = redact(&format!("{error}: {reason}"), &self.options);
        self.last_error.record(&error, &text);
        if let (Some(health), Some(RDKafkaErrorCode::AllBrokersDown)) =
            (&self.health, error.rdkafka_error_code())
        {
            health.problem(
                "broker_unreachable",
                format!("no connection to any Kafka broker ({text})"),
                UNREACHABLE_GRACE,
            );
        }
        let report = self
            .repeats
            .lock()
            .expect("not poisoned")
            .entry(error.to_string())
            .or_default()
            .occurred(Instant::now());
        if let Some(report) = report {
            warn!(
                self.logger,
                "librdkafka: {text}";
                "lasted" => crate::config::duration::format_approx(report.lasted),
                "occurrences" => report.occurrences,
            );
        }
    }
}

impl ConsumerContext for SlogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OptionValue::Text((*v).to_owned())))
            .collect()
    }

    #[test]
    fn secret_values_are_redacted_and_never_debug_printed() {
        let options = options(&[("sasl.password", "hunter22"), ("linger.ms", "5")]);
        assert_eq!(
            redact(
                "bad value hunter22 for sasl.password, linger.ms 5",
                &options
            ),
            "bad value *** for sasl.password, linger.ms 5"
        );
        assert!(!format!("{options:?}").contains("hunter22"));
        assert!(
            is_secret("ssl.key.pem") && is_secret("ssl.key.password") && !is_secret("linger.ms")
        );
    }

    #[test]
    fn bad_options_are_reported_by_name_without_their_value() {
        let errors = client_config(
            "127.0.0.1:9092",
            &options(&[
                ("no.such.setting", "x"),
                ("sasl.password", "topsecretvalue"),
            ]),
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("options"));
        assert!(
            errors[0].message.contains("no.such.setting"),
            "{}",
            errors[0].message
        );

        let errors = client_config(
            "127.0.0.1:9092",
            &options(&[
                ("security.protocol", "topsecretvalue"),
                ("sasl.password", "topsecretvalue"),
            ]),
            &[],
        )
        .err()
        .unwrap();
        assert!(
            !errors[0].message.contains("topsecretvalue"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn brokers_belong_in_brokers() {
        let errors = client_config("", &options(&[("bootstrap.servers", "x:1")]), &[])
            .err()
            .unwrap();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, [Some("brokers"), Some("options")]);
    }

    /// Keeps the level and message of every record.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<(slog::Level, String)>>>);

    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            let line = (record.level(), record.msg().to_string());
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    /// An offset reset means checks were skipped (retention deleted them before they were
    /// read): librdkafka says so only in a warning-level log line, never as an error.
    #[test]
    fn librdkafka_warnings_reach_the_log() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        use std::time::{Duration, Instant};

        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("checks", 1, 1).unwrap();
        let records = std::sync::Arc::default();
        let context = SlogContext::new(
            slog::Logger::root(Capture(std::sync::Arc::clone(&records)), slog::o!()),
            Options::new(),
        );
        // A group for librdkafka's sake; assign() does not join it.
        let settings = options(&[("group.id", "g")]);
        let config = client_config(&cluster.bootstrap_servers(), &settings, &[]).unwrap();
        let consumer: BaseConsumer<SlogContext> = config.create_with_context(context).unwrap();
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset("checks", 0, Offset::Offset(100))
            .unwrap();
        consumer.assign(&partitions).unwrap();

        let warned = |records: &[(slog::Level, String)]| {
            records.iter().any(|(level, message)| {
                *level == slog::Level::Warning
                    && message.contains("offset reset")
                    && message.contains("Offset out of range")
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Logs are delivered by polling.
        while !warned(&records.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "no warning: {:?}",
                records.lock().unwrap()
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
    }
}
