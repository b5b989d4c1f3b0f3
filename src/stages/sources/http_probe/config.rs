//! The `http_probe` source's settings, as written in a pipeline file: the stage's, and each
//! target's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;
use crate::monitor::fleet::GroupProtocol;
use crate::monitor::kafka::Options;
use crate::monitor::libcurl::IpVersion;

/// Redirects followed at most when `follow_redirects` is on.
pub const MAX_REDIRECTS: u32 = 10;

/// The `User-Agent` sent unless the stage or the target sets one: it names the monitor, so a
/// site's operators can tell its checks from visitors in their logs (and allow them through),
/// rather than seeing the HTTP library's name.
pub const DEFAULT_USER_AGENT: &str = concat!("pipe/", env!("CARGO_PKG_VERSION"), " (http_probe)");

pub(super) fn default_interval() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_concurrency() -> usize {
    100
}
pub(super) fn default_max_body_bytes() -> u64 {
    1 << 20
}
pub(super) fn default_method() -> String {
    "GET".to_owned()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_cert_expiry_warning() -> Duration {
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

pub(super) fn default_targets_topic() -> String {
    "targets".to_owned()
}
pub(super) fn default_handover_lookback() -> Duration {
    Duration::from_secs(120)
}
pub(super) fn default_handover_catch_up() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_topic_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `targets_topic:`: targets read from a compacted Kafka topic and shared by the checkers of
/// a fleet (docs/fleet.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsTopicConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The targets topic, compacted, keyed by target name. Default `targets`.
    #[serde(default = "default_targets_topic")]
    pub topic: String,
    /// The fleet this checker belongs to: the consumer group whose members share the
    /// targets. Each region runs a fleet of its own over all targets.
    pub fleet: String,
    /// A stable name for this checker (`group.instance.id`, static membership): restarted
    /// within the session timeout, it gets its targets back without a rebalance. Default:
    /// none (a restart is a leave and a join).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `classic` (the default: the classic protocol with the cooperative-sticky assignor) or
    /// `consumer` (KIP-848, Kafka 4's broker-driven protocol).
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// The topic this checker's results are published to: read on a hand-over to go on from
    /// each gained target's last published slot. Default: none, and a gained target starts at
    /// its next slot (a slot may then be checked twice, or missed).
    #[serde(default)]
    pub results_topic: Option<String>,
    /// How far back, at most, the results topic is read on a hand-over: the read goes back the
    /// longer of the catch-up bound and the group's session timeout, plus the longest interval
    /// of the targets gained. That finds every last slot that decides where a target goes on
    /// from, and a dead member's last slots (older by its session timeout), so that the slots
    /// it left unchecked are counted as gaps. Default `2m`.
    #[serde(default = "default_handover_lookback", with = "duration")]
    pub handover_lookback: Duration,
    /// How late a gained target's owed slots may be checked: the slots after its last
    /// published one, up to this far in the past, are checked at once, one after another;
    /// older ones are lost (counted in `pipe_probe_handover_gap_slots_total`). At most
    /// `handover_lookback`; `0s` checks none late. Default `10s`, which covers a graceful
    /// hand-over; a dead checker's slots are older by its session timeout.
    #[serde(default = "default_handover_catch_up", with = "duration")]
    pub handover_catch_up: Duration,
    /// librdkafka settings for both topics (security.protocol, ssl.*, sasl.*,
    /// session.timeout.ms…), as in the `kafka` stages' `options`.
    #[serde(default)]
    pub options: Options,
    /// Time limit of a metadata request or a hand-over read. Default `30s`.
    #[serde(default = "default_topic_timeout", with = "duration")]
    pub timeout: Duration,
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
    /// Targets from a Kafka topic, shared with the other checkers of a fleet and changed at
    /// run time, instead of or beside `targets` and `targets_file`.
    #[serde(default)]
    pub targets_topic: Option<TargetsTopicConfig>,
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
    /// Sites this checker must be able to reach, with the same settings as targets (give them
    /// a short `timeout`). They are not scheduled: when a check fails without a response
    /// (timeout, DNS, connect), they are asked (at most once every 5 s, the verdict shared by
    /// every failure meanwhile), and if none answers, the checker's own network is down and
    /// the result is marked `probe_fault` rather than counting the target as down. Default:
    /// none, and every failure counts.
    #[serde(default)]
    pub canary: Vec<TargetConfig>,
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

    pub(super) fn parse(items: &[StatusItem]) -> Result<Self, String> {
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
