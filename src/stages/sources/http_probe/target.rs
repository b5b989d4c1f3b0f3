//! A target as the probe runs it, and the build step that makes every target from its
//! settings: URLs, methods, headers, proxies, regexes and CA files validated and compiled up
//! front, with errors located at the target and field.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, USER_AGENT};
use http::{Method, Uri};

use crate::config::diagnostic::ConfigError;
use crate::config::interpolate;
use crate::config::locate::Locations;
use crate::monitor::libcurl::{self, Agent, IpVersion};
use crate::monitor::secrets::redact_url;
use crate::registry::{BuildContext, StageConfig};
use crate::stage::Source;
use crate::stages::transforms::regex_match::compile_pattern;

use crate::monitor::fleet::{GroupProtocol, Membership};
use crate::monitor::targets_topic::TopicAccess;

use super::canary::Canaries;
use super::config::*;
use super::fleet::Handover;
use super::metrics::{ProbeMetrics, TargetGauges};
use super::probe::{FleetSetup, HttpProbe};

/// A target, validated and resolved against the stage's defaults.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) name: String,
    /// The URL as libcurl gets it.
    pub(super) url: Arc<str>,
    /// The URL as reported in results: any password replaced by `***`.
    pub(super) reported_url: String,
    pub(super) method: Method,
    /// Request header lines, `Name: value`.
    pub(super) headers: Arc<[String]>,
    pub(super) body: Option<Bytes>,
    pub(super) expected: StatusSet,
    pub(super) regex: Option<String>,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) follow_redirects: bool,
    pub(super) host_is_ip: bool,
    pub(super) ca_file: Option<Arc<std::path::Path>>,
    pub(super) cert_expiry_warning: Duration,
    /// Down when the certificate ends within this; `None`: report only.
    pub(super) down_within: Option<Duration>,
    pub(super) ip_version: IpVersion,
    pub(super) proxy: Option<Arc<str>>,
    pub(super) deny_private_addresses: bool,
    /// Its `pipe_probe_target_*` gauges, with `per_target_metrics`.
    pub(super) gauges: Option<TargetGauges>,
}

impl Target {
    /// The request that checks this target.
    pub(super) fn request(
        &self,
        fresh_connection: bool,
        max_body_bytes: u64,
        keep_body: bool,
    ) -> libcurl::Request {
        libcurl::Request {
            url: Arc::clone(&self.url),
            method: self.method.clone(),
            headers: Arc::clone(&self.headers),
            body: self.body.clone(),
            timeout: self.timeout,
            max_redirects: if self.follow_redirects {
                MAX_REDIRECTS
            } else {
                0
            },
            fresh_connection,
            max_body_bytes,
            keep_body,
            ip_version: self.ip_version,
            proxy: self.proxy.clone(),
            ca_file: self.ca_file.clone(),
            deny_private_addresses: self.deny_private_addresses,
        }
    }
}

impl StageConfig for HttpProbeConfig {
    const TYPE: &'static str = "http_probe";
    const DESCRIPTION: &'static str =
        "checks websites over HTTP(S) on a schedule; each check, failed or not, is one event";
    type Stage = dyn Source;

    fn build(self, cx: &BuildContext) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let defaults = match StatusSet::parse(
            self.expected_status
                .as_deref()
                .unwrap_or(&[StatusItem::Range("200-399".to_owned())]),
        ) {
            Ok(set) => Some(set),
            Err(message) => {
                errors.push(ConfigError::at("expected_status", message));
                None
            }
        };
        if self.interval.is_zero() {
            errors.push(ConfigError::at(
                "interval",
                "the interval must be longer than 0",
            ));
        }
        if self.timeout.is_zero() {
            errors.push(ConfigError::at(
                "timeout",
                "the timeout must be longer than 0",
            ));
        }
        if self.concurrency == 0 {
            errors.push(ConfigError::at(
                "concurrency",
                "at least 1 check must be allowed to run",
            ));
        }
        for (field, value) in [("region", &self.region), ("checker", &self.checker)] {
            if let Some(Err(message)) = value.as_deref().map(|v| validate_identity(field, v)) {
                errors.push(ConfigError::at(field, message));
            }
        }

        // Inline targets are located by their index in the pipeline file; file targets by the
        // file and index.
        let mut entries: Vec<(String, TargetConfig)> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("targets[{i}]"), t.clone()))
            .collect();
        if let Some(file) = &self.targets_file {
            match load_targets_file(&cx.resolve_path(file)) {
                Ok(targets) => entries.extend(
                    targets
                        .into_iter()
                        .enumerate()
                        .map(|(i, t)| (format!("targets_file[{i}]"), t)),
                ),
                Err(message) => errors.push(ConfigError::at(
                    "targets_file",
                    format!("targets_file `{file}`: {message}"),
                )),
            }
        }
        if entries.is_empty() && errors.is_empty() && self.targets_topic.is_none() {
            errors.push(ConfigError::new(
                "no targets: list them under `targets:`, in a `targets_file` or in a `targets_topic`",
            ));
        }
        let fleet = self
            .targets_topic
            .as_ref()
            .and_then(|topic| validate_targets_topic(topic, &mut errors));

        let mut names = HashSet::new();
        let mut targets = Vec::with_capacity(entries.len());
        for (at, entry) in entries {
            let field = |name: &str| {
                // Targets from the file cannot be located in the pipeline file itself.
                if at.starts_with("targets_file") {
                    "targets_file".to_owned()
                } else {
                    format!("{at}.{name}")
                }
            };
            match resolve_target(&self, entry, defaults.as_ref(), cx) {
                Ok(target) => {
                    if !names.insert(target.name.clone()) {
                        errors.push(ConfigError::at(
                            field("name"),
                            format!("{at}: duplicate target name `{}`; names must be unique (set `name:`)", target.name),
                        ));
                    }
                    targets.push(target);
                }
                Err((name, failures)) => {
                    for (setting, message) in failures {
                        errors.push(ConfigError::at(
                            field(setting),
                            format!("{at}: target `{name}`: {message}"),
                        ));
                    }
                }
            }
        }

        let mut canaries = Vec::with_capacity(self.canary.len());
        for (i, entry) in self.canary.iter().enumerate() {
            match resolve_target(&self, entry.clone(), defaults.as_ref(), cx) {
                Ok(canary) => canaries.push(canary),
                Err((name, failures)) => {
                    errors.extend(failures.into_iter().map(|(setting, message)| {
                        ConfigError::at(
                            format!("canary[{i}].{setting}"),
                            format!("canary[{i}]: `{name}`: {message}"),
                        )
                    }))
                }
            }
        }

        // Each agent is a thread running libcurl's event loop, which also does the kernel's TCP
        // work of every connection it opens: one per core, so checks are not bound to a single
        // thread.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut agents = Vec::with_capacity(cores);
        if errors.is_empty() {
            let wanted = if fleet.is_some() {
                cores
            } else {
                cores.min(targets.len().max(1))
            };
            for i in 0..wanted {
                match Agent::spawn(format!("{}-curl-{i}", cx.stage_id)) {
                    Ok(agent) => agents.push(agent),
                    Err(e) => {
                        errors.push(ConfigError::new(format!(
                            "cannot start libcurl's thread: {e}"
                        )));
                        break;
                    }
                }
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        let metrics = ProbeMetrics::new(cx, self.per_target_metrics);
        for target in &mut targets {
            // A name defaults to the URL, which may carry a password.
            target.gauges = metrics.target(&redact_url(&target.name));
        }
        slog::debug!(cx.logger, "targets loaded"; "targets" => targets.len());
        let fleet = fleet.map(|(membership, handover)| FleetSetup {
            membership,
            handover,
            stage: Arc::new(self.clone()),
            default_status: defaults.clone(),
            cx: cx.clone(),
        });
        Ok(Box::new(HttpProbe {
            targets,
            fleet,
            agents,
            region: self.region.clone(),
            checker: self.checker.clone().unwrap_or_else(host_name),
            metrics: Arc::new(metrics),
            canaries: Canaries::new(canaries).map(Arc::new),
            reuse_connections: self.reuse_connections,
            concurrency: self.concurrency,
            max_body_bytes: self.max_body_bytes,
            keep_bodies: self.keep_bodies,
        }))
    }
}

/// Checks `targets_topic` without connecting anywhere: the membership and, with a
/// `results_topic`, where hand-overs look up the last published slots.
fn validate_targets_topic(
    topic: &TargetsTopicConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<(Membership, Option<Handover>)> {
    let before = errors.len();
    let at = |field: &str| format!("targets_topic.{field}");
    for (field, value) in [("topic", &topic.topic), ("fleet", &topic.fleet)] {
        if value.trim().is_empty() {
            errors.push(ConfigError::at(at(field), format!("`{field}` is empty")));
        }
    }
    if let Some(Err(message)) = topic
        .instance_id
        .as_deref()
        .map(|id| validate_identity("instance_id", id))
    {
        errors.push(ConfigError::at(at("instance_id"), message));
    }
    if topic.handover_lookback.is_zero() {
        errors.push(ConfigError::at(
            at("handover_lookback"),
            "the hand-over lookback must be longer than 0",
        ));
    }
    if topic.handover_catch_up > topic.handover_lookback {
        errors.push(ConfigError::at(
            at("handover_catch_up"),
            "the hand-over catch-up cannot reach further back than `handover_lookback`",
        ));
    }
    if topic.timeout.is_zero() {
        errors.push(ConfigError::at(
            at("timeout"),
            "the timeout must be longer than 0",
        ));
    }
    if let Err(found) = crate::monitor::kafka::client_config(&topic.brokers, &topic.options, &[]) {
        errors.extend(found.into_iter().map(|e| ConfigError {
            field: e.field.map(|f| at(&f)),
            ..e
        }));
    }
    if errors.len() > before {
        return None;
    }
    let access = |name: &str| TopicAccess {
        brokers: topic.brokers.clone(),
        topic: name.to_owned(),
        options: topic.options.clone(),
        timeout: topic.timeout,
    };
    Some((
        Membership {
            access: access(&topic.topic),
            fleet: topic.fleet.clone(),
            instance_id: topic.instance_id.clone(),
            protocol: topic.group_protocol,
        },
        topic.results_topic.as_deref().map(|results| Handover {
            results: access(results),
            lookback: topic.handover_lookback,
            catch_up: topic.handover_catch_up,
            session_timeout: session_timeout(topic),
        }),
    ))
}

/// How long the fleet's group takes to declare a member dead: `session.timeout.ms` of the
/// classic protocol, else 45 s (librdkafka's default, and the broker's
/// `group.consumer.session.timeout.ms` default for KIP-848).
pub(super) fn session_timeout(topic: &TargetsTopicConfig) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(45);
    match topic.group_protocol {
        GroupProtocol::Classic => topic
            .options
            .get("session.timeout.ms")
            .and_then(|v| v.to_string().parse().ok())
            .map_or(DEFAULT, Duration::from_millis),
        GroupProtocol::Consumer => DEFAULT,
    }
}

/// Reads a targets file: YAML, with `${VAR}` interpolated in string values as in pipeline
/// files. Errors say where (line and column, item path) and never echo substituted values.
pub(super) fn load_targets_file(path: &std::path::Path) -> Result<Vec<TargetConfig>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut document: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| format!("invalid YAML: {e}"))?;
    let locations = Locations::index(&text);
    let at = |path: &str| match locations.find(path) {
        Some(l) => format!("line {} column {}: ", l.line, l.column),
        None => String::new(),
    };
    let mut secrets = Vec::new();
    let lookup = |var: &str| std::env::var(var).ok();
    if let Some(e) = interpolate::interpolate(&mut document, "", &lookup, &mut secrets).first() {
        return Err(format!("{}{}: {}", at(&e.path), e.path, e.message));
    }
    serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let message = interpolate::redact(&e.into_inner().to_string(), &secrets);
        format!("{}{path}: {message}", at(&path))
    })
}

pub(super) type TargetErrors = (String, Vec<(&'static str, String)>);

pub(super) fn resolve_target(
    stage: &HttpProbeConfig,
    config: TargetConfig,
    default_status: Option<&StatusSet>,
    cx: &BuildContext,
) -> Result<Target, TargetErrors> {
    let name = config.name.clone().unwrap_or_else(|| config.url.clone());
    let mut failures: Vec<(&'static str, String)> = Vec::new();

    let uri = match config.url.parse::<Uri>() {
        Ok(uri) => {
            match uri.scheme_str() {
                Some("http" | "https") => {}
                Some(other) => failures.push((
                    "url",
                    format!("unsupported scheme `{other}` in the URL; use http or https"),
                )),
                None => {
                    failures.push(("url", "the URL needs a scheme (http:// or https://)".into()))
                }
            }
            if uri.host().is_none_or(str::is_empty) {
                failures.push(("url", "the URL has no host".into()));
            }
            Some(uri)
        }
        Err(e) => {
            failures.push(("url", format!("invalid URL: {e}")));
            None
        }
    };
    if name.trim().is_empty() {
        failures.push(("name", "the name is empty".into()));
    }
    let method_text = config.method.as_deref().unwrap_or(&stage.method);
    let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
        .map_err(|_| failures.push(("method", format!("invalid HTTP method `{method_text}`"))))
        .ok();
    let mut headers = Vec::new();
    let mut merged = stage.headers.clone();
    merged.extend(config.headers.clone());
    for (key, value) in &merged {
        match (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(k), Ok(v)) => headers.push((k, v)),
            // The value may be a secret (an API token): name the header only.
            _ => failures.push(("headers", format!("invalid header `{key}` or its value"))),
        }
    }
    // A client that will not reuse the connection says so (RFC 9112, section 9.6), so the
    // server closes it at once rather than keeping it open for a request that never comes.
    // libcurl leaves the header out of HTTP/2 and HTTP/3 requests, where it is not allowed.
    if !stage.reuse_connections && !headers.iter().any(|(name, _)| name == CONNECTION) {
        headers.push((CONNECTION, HeaderValue::from_static("close")));
    }
    if !headers.iter().any(|(name, _)| name == USER_AGENT) {
        headers.push((USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT)));
    }
    let expected = match &config.expected_status {
        Some(items) => StatusSet::parse(items)
            .map_err(|m| failures.push(("expected_status", m)))
            .ok(),
        None => default_status.cloned(),
    };
    if let Some(pattern) = &config.regex {
        if let Err(message) = compile_pattern(pattern) {
            failures.push(("regex", message));
        }
    }
    let interval = config.interval.unwrap_or(stage.interval);
    let timeout = config.timeout.unwrap_or(stage.timeout);
    if interval.is_zero() {
        failures.push(("interval", "the interval must be longer than 0".into()));
    }
    if timeout.is_zero() {
        failures.push(("timeout", "the timeout must be longer than 0".into()));
    }

    let ca_file = config
        .tls_ca_file
        .as_ref()
        .or(stage.tls_ca_file.as_ref())
        .and_then(|file| match load_ca_file(&cx.resolve_path(file)) {
            Ok(path) => Some(path),
            Err(message) => {
                failures.push(("tls_ca_file", format!("tls_ca_file `{file}`: {message}")));
                None
            }
        });
    let proxy = config.proxy.as_ref().or(stage.proxy.as_ref());
    if let Some(proxy) = proxy {
        if let Err(message) = validate_proxy(proxy) {
            failures.push(("proxy", message));
        }
    }
    let deny_private_addresses = config
        .deny_private_addresses
        .unwrap_or(stage.deny_private_addresses);
    if deny_private_addresses && proxy.is_some() {
        failures.push((
            "deny_private_addresses",
            "deny_private_addresses cannot guard checks through a proxy: the proxy resolves \
             the target and connects to it, out of the checker's sight"
                .into(),
        ));
    }
    let cert_expiry_warning = config
        .cert_expiry_warning
        .unwrap_or(stage.cert_expiry_warning);
    let down_within = match config
        .down_when_cert_expires_within
        .or(stage.down_when_cert_expires_within)
    {
        None | Some(CertExpiryDown::Warning(false)) => None,
        Some(CertExpiryDown::Warning(true)) => Some(cert_expiry_warning),
        Some(CertExpiryDown::Within(within)) => Some(within),
    };

    if !failures.is_empty() {
        return Err((redact_url(&name), failures));
    }
    let uri = uri.expect("no failures, so a URI");
    let host_is_ip = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok());
    Ok(Target {
        reported_url: redact_url(&config.url),
        name,
        url: uri.to_string().into(),
        method: method.expect("no failures, so a method"),
        headers: headers
            .iter()
            .map(|(name, value)| format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes())))
            .collect(),
        body: config.body.map(Bytes::from),
        expected: expected.expect("no failures, so a status set"),
        regex: config.regex,
        interval,
        timeout,
        follow_redirects: config.follow_redirects.unwrap_or(stage.follow_redirects),
        host_is_ip,
        ca_file,
        cert_expiry_warning,
        down_within,
        ip_version: config.ip_version.unwrap_or(stage.ip_version).0,
        proxy: proxy.map(|p| Arc::from(p.as_str())),
        deny_private_addresses,
        gauges: None,
    })
}

/// Checks that `path` holds PEM certificates, so a typo fails at start rather than as a `tls`
/// failure of every check.
pub(super) fn load_ca_file(path: &std::path::Path) -> Result<Arc<std::path::Path>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(Arc::from(path)),
        Ok(_) => Err("no PEM certificate in it".to_owned()),
        Err(e) => Err(format!("not PEM certificates: {e}")),
    }
}

/// The proxy schemes libcurl is built to speak here.
pub(super) const PROXY_SCHEMES: &[&str] =
    &["http", "https", "socks4", "socks4a", "socks5", "socks5h"];

/// Validates a proxy URL; messages show it with any password hidden.
pub(super) fn validate_proxy(proxy: &str) -> Result<(), String> {
    let shown = redact_url(proxy);
    let uri: Uri = proxy
        .parse()
        .map_err(|_| format!("invalid proxy URL `{shown}`"))?;
    match uri.scheme_str() {
        Some(scheme) if PROXY_SCHEMES.contains(&scheme) => {}
        Some(other) => {
            return Err(format!(
                "unsupported proxy scheme `{other}` in `{shown}`; use {}",
                PROXY_SCHEMES.join(", ")
            ))
        }
        None => {
            return Err(format!(
                "the proxy URL `{shown}` needs a scheme, such as http:// or socks5://"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("the proxy URL `{shown}` has no host"));
    }
    Ok(())
}

/// Checks a `region` or `checker` name: it goes into every result, and a region into
/// `check_id`.
pub(super) fn validate_identity(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    if value.len() > 100 || value.chars().any(char::is_control) {
        return Err(format!(
            "`{field}` must be at most 100 bytes, without control characters"
        ));
    }
    Ok(())
}

/// The host name, the default `checker`.
pub(super) fn host_name() -> String {
    let mut buffer = [0_u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}
