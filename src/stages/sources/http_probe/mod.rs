//! `http_probe`: checks websites over HTTP(S) on a schedule; every check becomes one event.
//!
//! Each check is a real request through libcurl ([`crate::libcurl`]), by default on a fresh
//! connection, with no DNS cache and a full TLS handshake, so the DNS, connect and TLS phases
//! are measured for real. Whatever happens on
//! the network (a timeout, a DNS failure, a refused connection, a bad certificate) the check
//! yields a result in message schema v1 ([`crate::check::CheckResult`]): failures are data, not
//! log lines. Bodies are read up to `max_body_bytes` and kept (as the event's raw bytes, never
//! a field) only when a regex needs them; `regex_match` consumes them.
//!
//! Scheduling is slot-based ([`crate::schedule`]). Typed failure reasons, per-phase timings and
//! slots follow getsentry/uptime-checker; the code is ours.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, USER_AGENT};
use http::{Method, Uri};
use serde::Deserialize;
use slog::info;
use tokio::time::Instant;

use crate::check::{self, CheckError, CheckResult, ErrorKind, Timings, TlsInfo, SCHEMA_VERSION};
use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::config::interpolate;
use crate::config::locate::Locations;
use crate::event::Event;
use crate::libcurl::{self, Agent, IpVersion, Outcome, Times};
use crate::registry::{BuildContext, StageConfig};
use crate::schedule::{self, Clock, Entry};
use crate::secrets::redact_url;
use crate::stage::{BoxError, Source, SourceContext};
use crate::stages::transforms::regex_match::compile_pattern;

mod metrics;

use metrics::{ProbeMetrics, TargetGauges};

/// Redirects followed at most when `follow_redirects` is on.
pub const MAX_REDIRECTS: u32 = 10;

/// The `User-Agent` sent unless the stage or the target sets one: it names the monitor, so a
/// site's operators can tell its checks from visitors in their logs (and allow them through),
/// rather than seeing the HTTP library's name.
pub const DEFAULT_USER_AGENT: &str = concat!("pipe/", env!("CARGO_PKG_VERSION"), " (http_probe)");

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    100
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_method() -> String {
    "GET".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_cert_expiry_warning() -> Duration {
    Duration::from_secs(14 * 86_400)
}

/// `ip_version`: `any`, `4` or `6`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpVersionSetting(pub IpVersion);

impl<'de> Deserialize<'de> for IpVersionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let version = match Raw::deserialize(deserializer)? {
            Raw::Number(4) => IpVersion::V4,
            Raw::Number(6) => IpVersion::V6,
            Raw::Text(text) => match text.as_str() {
                "any" => IpVersion::Any,
                "4" => IpVersion::V4,
                "6" => IpVersion::V6,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "ip_version `{other}`: use any, 4 or 6"
                    )))
                }
            },
            Raw::Number(other) => {
                return Err(serde::de::Error::custom(format!(
                    "ip_version {other}: use any, 4 or 6"
                )))
            }
        };
        Ok(Self(version))
    }
}

/// `down_when_cert_expires_within`: a duration, or `true` for the target's
/// `cert_expiry_warning` (`false`: report only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertExpiryDown {
    /// Down within the `cert_expiry_warning` window, or not at all.
    Warning(bool),
    /// Down when the certificate ends within this.
    Within(Duration),
}

impl<'de> Deserialize<'de> for CertExpiryDown {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(flag) => Ok(Self::Warning(flag)),
            Raw::Text(text) => duration::parse(&text)
                .map(Self::Within)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// An item of `expected_status`: a code, or an inclusive range written `"200-299"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusItem {
    /// One status code.
    Code(u16),
    /// A range, `"low-high"`, both ends included.
    Range(String),
}

/// One website to check. Unset settings take the stage's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The http:// or https:// URL to check.
    pub url: String,
    /// A unique name, used as the Kafka key and in the database. Default: the URL.
    #[serde(default)]
    pub name: Option<String>,
    /// The HTTP method. Default: the stage's `method` (GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers, added to (and overriding) the stage's `headers`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A request body to send.
    #[serde(default)]
    pub body: Option<String>,
    /// Status codes that count as up, such as `[200, "300-399"]`. Default: the stage's.
    #[serde(default)]
    pub expected_status: Option<Vec<StatusItem>>,
    /// A regex the page must match to count as up (matched by the `regex_match` transform).
    #[serde(default)]
    pub regex: Option<String>,
    /// Time between checks. Default: the stage's `interval`.
    #[serde(default, with = "duration::option")]
    pub interval: Option<Duration>,
    /// Time limit for the whole check. Default: the stage's `timeout`.
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Follow redirects (at most 10). Default: the stage's `follow_redirects`.
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    /// A PEM file of CA certificates to trust (instead of the system's), for sites with a
    /// private CA; relative to the pipeline file. Default: the stage's `tls_ca_file`.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Report (`tls.cert_expires_soon`) a certificate that ends within this. Default: the
    /// stage's `cert_expiry_warning`.
    #[serde(default, with = "duration::option")]
    pub cert_expiry_warning: Option<Duration>,
    /// Count a check down when its certificate ends within this duration (or, with `true`,
    /// within `cert_expiry_warning`). Default: the stage's.
    #[serde(default)]
    pub down_when_cert_expires_within: Option<CertExpiryDown>,
    /// The address family to connect over: `any`, `4` or `6`. Default: the stage's.
    #[serde(default)]
    pub ip_version: Option<IpVersionSetting>,
    /// A proxy to check through: `http://`, `https://`, `socks5://` or `socks5h://`, with
    /// credentials through `${VAR}`. Default: the stage's `proxy`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Refuse to connect to loopback, private, link-local and other reserved addresses, after
    /// DNS resolution. Default: the stage's `deny_private_addresses`.
    #[serde(default)]
    pub deny_private_addresses: Option<bool>,
}

/// The settings of the `http_probe` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeConfig {
    /// Targets, listed inline.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// A YAML file holding a list of targets (same fields), relative to the pipeline file.
    #[serde(default)]
    pub targets_file: Option<String>,
    /// Default time between two checks of a target. Default `30s`.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Default time limit for a whole check: DNS, connect, TLS, request and body. Default `10s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Default HTTP method. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Default request headers. Without a `User-Agent` among them or a target's, checks send
    /// `pipe/VERSION (http_probe)`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Default status codes that count as up. Default `["200-399"]`.
    #[serde(default)]
    pub expected_status: Option<Vec<StatusItem>>,
    /// Default for following redirects. Default `true`.
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    /// Checks in flight at once, across all targets. Default 100.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Reuse connections (and cached DNS answers and TLS sessions) between checks. Default
    /// `false`: each check resolves the name, opens a fresh connection and makes a full TLS
    /// handshake, so its DNS, connect and TLS times are real, and sends `Connection: close`
    /// unless the target sets a `Connection` header of its own.
    #[serde(default)]
    pub reuse_connections: bool,
    /// The most body bytes read; a longer body is a `body_too_large` failure. Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Keep every body for `regex_match`, even of targets without a regex of their own (for its
    /// stage-level `pattern`). Default `false`: only bodies a target's regex needs are kept.
    #[serde(default)]
    pub keep_bodies: bool,
    /// Default PEM file of CA certificates to trust instead of the system's, relative to the
    /// pipeline file (Telegraf's `tls_ca`, blackbox_exporter's `tls_config.ca_file`).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Default window in which a certificate's end is reported as near
    /// (`tls.cert_expires_soon`). Default `14d`.
    #[serde(default = "default_cert_expiry_warning", with = "duration")]
    pub cert_expiry_warning: Duration,
    /// Default for counting a check down because its certificate ends soon: a duration, or
    /// `true` for `cert_expiry_warning`. Default: never (reported, not judged).
    #[serde(default)]
    pub down_when_cert_expires_within: Option<CertExpiryDown>,
    /// Default address family: `any` (the default), `4` or `6`.
    #[serde(default)]
    pub ip_version: IpVersionSetting,
    /// Default proxy for every check (`http://`, `https://`, `socks5://`, `socks5h://`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Refuse to connect to loopback, private, link-local and other reserved addresses, after
    /// DNS resolution (a public name that resolves to 127.0.0.1 too), as a `connect` failure.
    /// Default `false`: monitoring internal sites is legitimate. Turn it on when targets come
    /// from users.
    #[serde(default)]
    pub deny_private_addresses: bool,
    /// Where the checker runs, such as `eu-west`: in every result, and part of `check_id`, so
    /// that checks of one slot from two regions are two checks. Default: none.
    #[serde(default)]
    pub region: Option<String>,
    /// This checker's name in every result. Default: the host name.
    #[serde(default)]
    pub checker: Option<String>,
    /// Keep gauges of each target's last check (`pipe_probe_target_*`: up, response time,
    /// status code, certificate end), as blackbox_exporter gives them. Default `false`: one
    /// series per target and gauge is a lot with thousands of targets.
    #[serde(default)]
    pub per_target_metrics: bool,
}

/// Which status codes count as up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        self.0
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&code))
    }

    fn parse(items: &[StatusItem]) -> Result<Self, String> {
        let valid = |code: u16| (100..=599).contains(&code);
        let mut ranges = Vec::new();
        for item in items {
            let (low, high) = match item {
                StatusItem::Code(code) => (*code, *code),
                StatusItem::Range(text) => text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                    .ok_or_else(|| {
                        format!("`{text}` is not a status code or a range such as \"200-299\"")
                    })?,
            };
            if !valid(low) || !valid(high) || low > high {
                return Err(format!(
                    "status {low}-{high} is not a range of HTTP status codes (100-599)"
                ));
            }
            ranges.push((low, high));
        }
        if ranges.is_empty() {
            return Err("`expected_status` is empty: no check could ever be up".to_owned());
        }
        Ok(Self(ranges))
    }
}

/// A target, validated and resolved against the stage's defaults.
#[derive(Debug)]
struct Target {
    name: String,
    /// The URL as libcurl gets it.
    url: Arc<str>,
    /// The URL as reported in results: any password replaced by `***`.
    reported_url: String,
    method: Method,
    /// Request header lines, `Name: value`.
    headers: Arc<[String]>,
    body: Option<Bytes>,
    expected: StatusSet,
    regex: Option<String>,
    interval: Duration,
    timeout: Duration,
    follow_redirects: bool,
    host_is_ip: bool,
    ca_file: Option<Arc<std::path::Path>>,
    cert_expiry_warning: Duration,
    /// Down when the certificate ends within this; `None`: report only.
    down_within: Option<Duration>,
    ip_version: IpVersion,
    proxy: Option<Arc<str>>,
    deny_private_addresses: bool,
    /// Its `pipe_probe_target_*` gauges, with `per_target_metrics`.
    gauges: Option<TargetGauges>,
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
        if entries.is_empty() && errors.is_empty() {
            errors.push(ConfigError::new(
                "no targets: list them under `targets:` or in a `targets_file`",
            ));
        }

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

        // Each agent is a thread running libcurl's event loop, which also does the kernel's TCP
        // work of every connection it opens: one per core, so checks are not bound to a single
        // thread.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut agents = Vec::with_capacity(cores);
        if errors.is_empty() {
            for i in 0..cores.min(targets.len().max(1)) {
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
        Ok(Box::new(HttpProbe {
            targets,
            agents,
            region: self.region.clone(),
            checker: self.checker.clone().unwrap_or_else(host_name),
            metrics: Arc::new(metrics),
            reuse_connections: self.reuse_connections,
            concurrency: self.concurrency,
            max_body_bytes: self.max_body_bytes,
            keep_bodies: self.keep_bodies,
        }))
    }
}

/// Reads a targets file: YAML, with `${VAR}` interpolated in string values as in pipeline
/// files. Errors say where (line and column, item path) and never echo substituted values.
fn load_targets_file(path: &std::path::Path) -> Result<Vec<TargetConfig>, String> {
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

type TargetErrors = (String, Vec<(&'static str, String)>);

fn resolve_target(
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
fn load_ca_file(path: &std::path::Path) -> Result<Arc<std::path::Path>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(Arc::from(path)),
        Ok(_) => Err("no PEM certificate in it".to_owned()),
        Err(e) => Err(format!("not PEM certificates: {e}")),
    }
}

/// The proxy schemes libcurl is built to speak here.
const PROXY_SCHEMES: &[&str] = &["http", "https", "socks4", "socks4a", "socks5", "socks5h"];

/// Validates a proxy URL; messages show it with any password hidden.
fn validate_proxy(proxy: &str) -> Result<(), String> {
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
fn validate_identity(field: &str, value: &str) -> Result<(), String> {
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
fn host_name() -> String {
    let mut buffer = [0_u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}

struct HttpProbe {
    targets: Vec<Target>,
    region: Option<String>,
    checker: String,
    metrics: Arc<ProbeMetrics>,
    /// Target `i` is always checked by agent `i % agents.len()`.
    agents: Vec<Agent>,
    reuse_connections: bool,
    concurrency: usize,
    max_body_bytes: u64,
    keep_bodies: bool,
}

#[async_trait]
impl Source for HttpProbe {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), BoxError> {
        let HttpProbe {
            targets,
            agents,
            region,
            checker,
            metrics,
            reuse_connections,
            concurrency,
            max_body_bytes,
            keep_bodies,
        } = *self;
        let entries: Vec<Entry> = targets
            .iter()
            .map(|t| Entry {
                interval: t.interval,
                offset: schedule::offset(&t.name, t.interval),
            })
            .collect();
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let targets = Arc::new(targets);
        let agents = Arc::new(agents);
        let identity = Arc::new((region, checker));
        let clock = Clock::new();
        let out = cx.out.clone();
        let logger = cx.logger.clone();

        let stats = schedule::run(
            &entries,
            clock,
            concurrency,
            cx.shutdown.clone(),
            schedule::MissedSlots {
                names: &names,
                logger: &cx.logger,
                counter: Some(&metrics.missed_slots),
            },
            |slot| {
                let targets = Arc::clone(&targets);
                let agents = Arc::clone(&agents);
                let identity = Arc::clone(&identity);
                let metrics = Arc::clone(&metrics);
                let mut out = out.clone();
                let logger = logger.clone();
                async move {
                    let target = &targets[slot.entry];
                    let scheduled_at = Clock::time_at(slot.scheduled_ms);
                    let started_at = clock.now();
                    let keep_body = keep_bodies || target.regex.is_some();
                    let agent = &agents[slot.entry % agents.len()];
                    let request = libcurl::Request {
                        url: Arc::clone(&target.url),
                        method: target.method.clone(),
                        headers: Arc::clone(&target.headers),
                        body: target.body.clone(),
                        timeout: target.timeout,
                        max_redirects: if target.follow_redirects {
                            MAX_REDIRECTS
                        } else {
                            0
                        },
                        fresh_connection: !reuse_connections,
                        max_body_bytes,
                        keep_body,
                        ip_version: target.ip_version,
                        proxy: target.proxy.clone(),
                        ca_file: target.ca_file.clone(),
                        deny_private_addresses: target.deny_private_addresses,
                    };
                    metrics.in_flight.inc();
                    let (result, reason, body) = probe(agent, request, target).await;
                    metrics.in_flight.dec();
                    let (region, checker) = &*identity;
                    let result = CheckResult {
                        schema_version: SCHEMA_VERSION,
                        check_id: check::check_id_in(&target.name, scheduled_at, region.as_deref()),
                        target: target.name.clone(),
                        url: target.reported_url.clone(),
                        method: target.method.to_string(),
                        scheduled_at,
                        started_at,
                        region: region.clone(),
                        checker: Some(checker.clone()),
                        ..result
                    };
                    metrics.record(&result, reason, target.gauges.as_ref());
                    let mut event = Event::from_check(result);
                    if let Some(body) = body {
                        event = event.with_raw(body);
                    }
                    if out.send(event).await.is_err() {
                        slog::debug!(logger, "result dropped: the pipeline is stopping";
                                     "target" => &target.name);
                    }
                }
            },
        )
        .await;
        info!(cx.logger, "checks stopped"; "started" => stats.started, "missed_slots" => stats.missed);
        Ok(())
    }
}

/// Extra time past a target's timeout before our own timer gives up on libcurl's.
const TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// Runs one check. Fills in everything but the identity and time fields, which the caller sets;
/// also says why the check is up or down, for `pipe_probe_checks_total`.
async fn probe(
    agent: &Agent,
    request: libcurl::Request,
    target: &Target,
) -> (CheckResult, &'static str, Option<Bytes>) {
    let max_body_bytes = request.max_body_bytes;
    let started = Instant::now();
    let mut result = CheckResult {
        schema_version: SCHEMA_VERSION,
        check_id: uuid::Uuid::nil(),
        target: String::new(),
        url: String::new(),
        method: String::new(),
        scheduled_at: std::time::UNIX_EPOCH,
        started_at: std::time::UNIX_EPOCH,
        response_time_ms: 0.0,
        timings_ms: Timings::default(),
        status_code: None,
        error: None,
        regex: target.regex.clone(),
        regex_matched: None,
        latency_class: None,
        up: false,
        body_bytes: None,
        remote_addr: None,
        http_version: None,
        tls: None,
        region: None,
        checker: None,
        captures: None,
    };
    // libcurl enforces the timeout; our own deadline, a little later, only guards against a
    // transfer that never ends.
    let deadline = target.timeout + TIMEOUT_SLACK;
    let outcome = match tokio::time::timeout(deadline, agent.transfer(request)).await {
        Err(_) => {
            result.error = Some(timeout_error(target.timeout));
            None
        }
        Ok(None) => {
            result.error = Some(CheckError {
                kind: ErrorKind::Other,
                message: "libcurl's thread has stopped".to_owned(),
            });
            None
        }
        Ok(Some(outcome)) => Some(outcome),
    };
    let mut kept = None;
    let measured_total = outcome.as_ref().map(|o| o.times.total);
    if let Some(Outcome {
        result: transfer,
        body_too_large,
        status,
        http_version,
        remote_addr,
        body_bytes,
        body,
        times,
        tls,
        refused_address,
    }) = outcome
    {
        result.tls = tls.map(|tls| judge_certificate(tls, target));
        result.status_code = status;
        result.http_version = http_version.map(str::to_owned);
        result.remote_addr = remote_addr;
        if status.is_some() {
            result.body_bytes = Some(body_bytes);
        }
        // The phases that happened, a failed check's too: a timeout after connecting still
        // says how long the name and the connection took.
        result.timings_ms = timings(&times, target, status.is_some());
        result.error = match transfer {
            Ok(()) => None,
            Err(_) if body_too_large => Some(CheckError {
                kind: ErrorKind::BodyTooLarge,
                message: format!("the body is larger than max_body_bytes ({max_body_bytes})"),
            }),
            Err(e) => match refused_address {
                Some((address, why)) if e.is_couldnt_connect() => Some(CheckError {
                    kind: ErrorKind::Connect,
                    message: format!(
                        "refused to connect to {address}: it is {why}, and deny_private_addresses is on"
                    ),
                }),
                _ => Some(classify(&e, target)),
            },
        };
        if result.error.is_none() {
            kept = body.map(Bytes::from);
        }
    }
    // libcurl's own total when it ran the transfer: the site's time, without the hand-offs
    // between threads; the probe's clock otherwise.
    result.response_time_ms = check::millis(match measured_total {
        Some(total) if !total.is_zero() => total,
        _ => started.elapsed(),
    });
    let certificate_ends_too_soon = match (&result.tls, target.down_within) {
        (Some(tls), Some(within)) => tls.cert_not_after < std::time::SystemTime::now() + within,
        _ => false,
    };
    let expected = result
        .status_code
        .is_some_and(|code| target.expected.contains(code));
    result.up = result.error.is_none() && expected && !certificate_ends_too_soon;
    let reason = match (&result.error, result.status_code) {
        (Some(error), _) => error.kind.as_str(),
        (None, Some(code)) if !expected => status_class(code),
        _ if certificate_ends_too_soon => "certificate",
        _ => "ok",
    };
    (result, reason, kept)
}

/// `status_4xx` and the like: a bounded label for a status code.
fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "status_1xx",
        2 => "status_2xx",
        3 => "status_3xx",
        4 => "status_4xx",
        5 => "status_5xx",
        _ => "status_other",
    }
}

/// Marks a certificate that ends within the target's `cert_expiry_warning` (or has ended).
fn judge_certificate(mut tls: TlsInfo, target: &Target) -> TlsInfo {
    tls.cert_expires_soon =
        tls.cert_not_after < std::time::SystemTime::now() + target.cert_expiry_warning;
    tls
}

fn timeout_error(timeout: Duration) -> CheckError {
    CheckError {
        kind: ErrorKind::Timeout,
        message: format!("no complete response within {}", duration::format(timeout)),
    }
}

/// Maps libcurl's failure to the schema's error kinds.
fn classify(error: &curl::Error, target: &Target) -> CheckError {
    let timeout = target.timeout;
    let kind = if error.is_operation_timedout() {
        ErrorKind::Timeout
    } else if error.is_couldnt_resolve_host() {
        ErrorKind::Dns
    } else if error.is_couldnt_connect() {
        ErrorKind::Connect
    } else if error.is_ssl_connect_error()
        || error.is_peer_failed_verification()
        || error.is_ssl_certproblem()
        || error.is_ssl_cipher()
        || error.is_ssl_cacert()
        || error.is_ssl_cacert_badfile()
        || error.is_ssl_issuer_error()
    {
        ErrorKind::Tls
    } else if error.is_too_many_redirects() {
        ErrorKind::TooManyRedirects
    } else {
        ErrorKind::Other
    };
    if kind == ErrorKind::Timeout {
        return timeout_error(timeout);
    }
    // libcurl's own words (its error buffer) say which host and port, or which certificate;
    // the code's generic text only when it gave none.
    let mut message = error
        .extra_description()
        .unwrap_or_else(|| error.description())
        .to_owned();
    // A proxy's password must not reach a result, whatever libcurl quotes.
    if let Some(password) = target
        .proxy
        .as_deref()
        .and_then(crate::secrets::url_password)
    {
        message = message.replace(password, "***");
    }
    CheckError { kind, message }
}

/// Turns libcurl's cumulative timers into per-phase durations. The response's phases only when
/// one came: libcurl sets its first-byte timer on some failures too (a refused connection).
fn timings(times: &Times, target: &Target, responded: bool) -> Timings {
    let phase = |d: Duration| (!d.is_zero()).then(|| check::millis(d));
    let connected = times.connect.max(times.name_lookup);
    let secured = if times.app_connect.is_zero() {
        connected
    } else {
        times.app_connect
    };
    Timings {
        dns: if target.host_is_ip {
            None
        } else {
            phase(times.name_lookup)
        },
        connect: phase(connected.saturating_sub(times.name_lookup)),
        tls: phase(times.app_connect.saturating_sub(connected)),
        first_byte: responded.then(|| check::millis(times.start_transfer.saturating_sub(secured))),
        transfer: responded
            .then(|| check::millis(times.total.saturating_sub(times.start_transfer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::o;

    fn build(yaml: &str) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        let cx = BuildContext::new("probe", ".", slog::Logger::root(slog::Discard, o!()));
        serde_norway::from_str::<HttpProbeConfig>(yaml)
            .unwrap()
            .build(&cx)
    }

    fn messages(yaml: &str) -> Vec<(Option<String>, String)> {
        build(yaml)
            .err()
            .expect("errors")
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn status_sets_take_codes_and_ranges() {
        let set = StatusSet::parse(&[StatusItem::Code(204), StatusItem::Range("300-302".into())])
            .unwrap();
        assert!(set.contains(204) && set.contains(301) && !set.contains(200));
        assert!(StatusSet::parse(&[StatusItem::Range("2xx".into())]).is_err());
        assert!(StatusSet::parse(&[StatusItem::Code(999)]).is_err());
        assert!(StatusSet::parse(&[]).is_err());
    }

    #[test]
    fn bad_targets_are_named_in_their_errors() {
        let errors = messages(
            "targets:\n  - url: ftp://example.com\n  - name: broken\n    url: https://example.com\n    regex: '('\n  - url: https://a.example\n    name: twice\n  - url: https://b.example\n    name: twice\n  - url: 'not a url'\n",
        );
        assert_eq!(errors[0].0.as_deref(), Some("targets[0].url"));
        assert_eq!(
            errors[0].1,
            "targets[0]: target `ftp://example.com`: unsupported scheme `ftp` in the URL; use http or https"
        );
        assert_eq!(errors[1].0.as_deref(), Some("targets[1].regex"));
        assert!(
            errors[1]
                .1
                .starts_with("targets[1]: target `broken`: invalid regex:"),
            "{}",
            errors[1].1
        );
        assert_eq!(errors[2].0.as_deref(), Some("targets[3].name"));
        assert_eq!(
            errors[2].1,
            "targets[3]: duplicate target name `twice`; names must be unique (set `name:`)"
        );
        assert_eq!(errors[3].0.as_deref(), Some("targets[4].url"));
        assert_eq!(
            errors.len(),
            4 + usize::from(errors.len() > 4),
            "{errors:?}"
        );
    }

    #[test]
    fn no_targets_is_an_error() {
        assert_eq!(
            messages("interval: 5s\n"),
            [(
                None,
                "no targets: list them under `targets:` or in a `targets_file`".to_owned()
            )]
        );
    }

    #[test]
    fn targets_file_is_read_relative_to_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("targets.yaml"),
            "- url: https://example.com\n- url: https://example.org\n  interval: 10s\n",
        )
        .unwrap();
        let cx = BuildContext::new(
            "probe",
            dir.path().to_path_buf(),
            slog::Logger::root(slog::Discard, o!()),
        );
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: targets.yaml").unwrap();
        assert!(config.build(&cx).is_ok());

        std::fs::write(
            dir.path().join("bad.yaml"),
            "- url: https://example.com\n- nme: x\n",
        )
        .unwrap();
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: bad.yaml").unwrap();
        let errors = config.build(&cx).err().unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("targets_file"));
        assert!(
            errors[0].message.starts_with(
                "targets_file `bad.yaml`: line 2 column 3: [1].nme: unknown field `nme`"
            ),
            "{}",
            errors[0].message
        );

        // ${VAR}s are interpolated as in pipeline files.
        std::env::set_var("PIPE_TEST_TARGET_HOST", "example.net");
        std::fs::write(
            dir.path().join("env.yaml"),
            "- url: https://${PIPE_TEST_TARGET_HOST}/\n- url: ${PIPE_TEST_UNSET_VAR}\n",
        )
        .unwrap();
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: env.yaml").unwrap();
        let errors = config.build(&cx).err().unwrap();
        assert_eq!(
            errors[0].message,
            "targets_file `env.yaml`: line 2 column 3: [1].url: environment variable `PIPE_TEST_UNSET_VAR` is not set and has no default (write `${PIPE_TEST_UNSET_VAR:-default}`)"
        );
    }

    #[test]
    fn probe_settings_are_checked_without_echoing_proxy_passwords() {
        let errors = messages(
            "region: ''\ntargets:\n  - url: https://a.example\n    proxy: 'ftp://u:hunter22@proxy.example'\n  - url: https://b.example\n    proxy: 'http://proxy.example:3128'\n    deny_private_addresses: true\n  - url: https://c.example\n    tls_ca_file: /nonexistent/ca.pem\n",
        );
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_deref()).collect();
        assert_eq!(
            fields,
            [
                Some("region"),
                Some("targets[0].proxy"),
                Some("targets[1].deny_private_addresses"),
                Some("targets[2].tls_ca_file")
            ],
            "{errors:?}"
        );
        assert!(
            errors[1].1.contains("unsupported proxy scheme `ftp`"),
            "{}",
            errors[1].1
        );
        assert!(
            errors.iter().all(|(_, m)| !m.contains("hunter22")),
            "{errors:?}"
        );
        assert!(errors[3].1.contains("cannot read it"), "{}", errors[3].1);
        let bad_family =
            serde_norway::from_str::<HttpProbeConfig>("ip_version: 5\ntargets: []\n").unwrap_err();
        assert!(
            bad_family.to_string().contains("use any, 4 or 6"),
            "{bad_family}"
        );
    }

    #[test]
    fn header_values_are_not_echoed() {
        let errors = messages("targets:\n  - url: https://example.com\n    headers: { Authorization: \"Bearer abc\\ndef\" }\n");
        assert_eq!(errors[0].0.as_deref(), Some("targets[0].headers"));
        assert!(!errors[0].1.contains("abc"), "{}", errors[0].1);
    }
}
