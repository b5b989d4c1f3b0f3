//! The check result: message schema v1, the public contract between the checker and everything
//! that reads its Kafka topic (the writer first). Field names and meanings are documented in
//! `docs/schema.md`; change them only with a new `schema_version`.
//!
//! The `http_probe` source fills in the network facts; `regex_match` sets `regex_matched` (and
//! `captures`); `latency` sets `latency_class`. Each may lower `up`, none raises it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::Event;

/// The version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The namespace of `check_id` (a v5 UUID): fixed forever, so ids stay stable across releases.
const CHECK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d7e_8a4b_4e55_9d3a_7c2e_51b0_c4a1);

/// One check of one target, whatever happened on the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Always [`SCHEMA_VERSION`] for messages written by this version.
    pub schema_version: u32,
    /// Derived from `target` and `scheduled_at`: the same check sent twice has the same id.
    pub check_id: Uuid,
    /// The target's `name` (its URL when it has none).
    pub target: String,
    /// The URL checked, with any password replaced by `***`.
    pub url: String,
    /// The HTTP method used, upper case.
    pub method: String,
    /// The slot the check was scheduled for.
    #[serde(with = "rfc3339_millis")]
    pub scheduled_at: SystemTime,
    /// When the check actually started: later than `scheduled_at` when the checker was busy.
    #[serde(with = "rfc3339_millis")]
    pub started_at: SystemTime,
    /// Total elapsed time of the check, also when it failed.
    pub response_time_ms: f64,
    /// How long each phase of the transfer took.
    pub timings_ms: Timings,
    /// `None` when no response arrived.
    pub status_code: Option<u16>,
    /// Why no complete response arrived; `None` when one did.
    pub error: Option<CheckError>,
    /// The pattern the page was matched against, if the target has one.
    pub regex: Option<String>,
    /// Whether the page matched `regex`; `None` without a regex or a page.
    pub regex_matched: Option<bool>,
    /// How the response time compares with the `latency` transform's thresholds.
    pub latency_class: Option<LatencyClass>,
    /// The verdict: a response with an expected status, matching its regex, and fast enough when the thresholds say so.
    pub up: bool,
    /// Body bytes read (at most the probe's `max_body_bytes`); `None` without a response.
    pub body_bytes: Option<u64>,
    /// The address connected to, `ip:port`.
    pub remote_addr: Option<String>,
    /// The protocol of the last response, as on its status line (`HTTP/1.1`, `HTTP/2`).
    pub http_version: Option<String>,
    /// The TLS connection and the server's leaf certificate, on HTTPS checks whose handshake
    /// got as far as the certificate (also when the certificate was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// The checker's region (its `region` setting), when it has one; part of `check_id` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The checker that made the check (its `checker` setting, by default the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
    /// Named capture groups of the regex, when it has any and matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captures: Option<Map<String, Value>>,
    /// The check failed without a response, and none of the checker's canaries answered
    /// either: the checker's own network failed, not (as far as it can tell) the target.
    /// Still `up: false`; the writer counts such a check neither up nor down. Sent only when
    /// true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe_fault: bool,
}

/// What a check learnt of the TLS connection, from the handshake's server certificate message:
/// the protocol and cipher negotiated, and the leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// The protocol version, as OpenSSL names it (`TLSv1.3`, `TLSv1.2`).
    pub version: String,
    /// The cipher suite, by its IANA name (`TLS_AES_256_GCM_SHA384`).
    pub cipher: String,
    /// The leaf certificate's start of validity.
    #[serde(with = "rfc3339_seconds")]
    pub cert_not_before: SystemTime,
    /// The leaf certificate's end of validity.
    #[serde(with = "rfc3339_seconds")]
    pub cert_not_after: SystemTime,
    /// The issuer's distinguished name, RFC 4514 style, most significant part last
    /// (`CN=R11,O=Let's Encrypt,C=US`).
    pub cert_issuer: String,
    /// The subject's distinguished name, written as `cert_issuer`.
    pub cert_subject: String,
    /// The subject alternative names: DNS names as they are, IP addresses as text.
    pub cert_sans: Vec<String>,
    /// Whether `cert_not_after` falls within the target's `cert_expiry_warning` of the check
    /// (or has passed).
    pub cert_expires_soon: bool,
}

/// Per-phase durations in milliseconds; a phase that did not happen is `None`. With redirects,
/// each phase is the sum over all hops (libcurl's accounting).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Resolving the host name.
    pub dns: Option<f64>,
    /// Opening the TCP connection.
    pub connect: Option<f64>,
    /// The TLS handshake, for HTTPS.
    pub tls: Option<f64>,
    /// From the request being sent (after connect and TLS) to the first response byte.
    pub first_byte: Option<f64>,
    /// Reading the response after its first byte.
    pub transfer: Option<f64>,
}

/// Why a check failed to get a complete response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckError {
    /// The kind of failure, for grouping and alerting.
    pub kind: ErrorKind,
    /// libcurl's own words for it (never a header value or the URL's user information).
    pub message: String,
}

/// The kinds of failure a check can have; stored as an enum in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No complete response within the target's `timeout`.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// The TCP connection was refused, reset or could not be made.
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// More redirects than `follow_redirects` allows.
    TooManyRedirects,
    /// The body was larger than `max_body_bytes`.
    BodyTooLarge,
    /// Anything else libcurl reported.
    Other,
}

impl ErrorKind {
    /// The name used in messages and in the database (`timeout`, `dns`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::TooManyRedirects => "too_many_redirects",
            Self::BodyTooLarge => "body_too_large",
            Self::Other => "other",
        }
    }
}

/// How fast a response was, as the `latency` transform classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyClass {
    /// Under the `slow` threshold.
    Ok,
    /// At or over `slow`, under `critical`.
    Slow,
    /// At or over `critical`.
    Critical,
}

impl LatencyClass {
    /// The name used in messages and in the database (`ok`, `slow`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Slow => "slow",
            Self::Critical => "critical",
        }
    }
}

/// The id of the check of `target` scheduled at `scheduled_at` (milliseconds are kept), by a
/// checker without a region.
pub fn check_id(target: &str, scheduled_at: SystemTime) -> Uuid {
    check_id_in(target, scheduled_at, None)
}

/// The id of the check of `target` scheduled at `scheduled_at` from `region`: two regions
/// checking the same slot make two checks. Without a region it is [`check_id`], unchanged.
pub fn check_id_in(target: &str, scheduled_at: SystemTime, region: Option<&str>) -> Uuid {
    use std::io::Write as _;
    let millis = scheduled_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // The name is `target\nmillis` or `target\nmillis\nregion`, hashed in parts.
    let mut digits = [0_u8; 39]; // u128::MAX has 39 digits
    let unwritten = {
        let mut cursor = &mut digits[..];
        write!(cursor, "{millis}").expect("39 bytes hold any u128");
        cursor.len()
    };
    let millis = &digits[..digits.len() - unwritten];
    let (separator, region): (&[u8], &[u8]) = match region {
        None => (b"", b""),
        Some(region) => (b"\n", region.as_bytes()),
    };
    name_based_uuid(
        &CHECK_ID_NAMESPACE,
        &[target.as_bytes(), b"\n", millis, separator, region],
    )
}

/// RFC 9562's name-based UUID (version 5, SHA-1) of the name made of `parts` in `namespace`:
/// what `Uuid::new_v5` gives for their concatenation. Hashed by the `sha1` crate, which uses
/// the CPU's SHA instructions where it has them; the portable SHA-1 behind `Uuid::new_v5` took
/// 4% of the writer's CPU behind a backlog (each message's id is worked out again, to store it
/// only when it is not the derived one) and a share of every check the checker makes.
pub(crate) fn name_based_uuid(namespace: &Uuid, parts: &[&[u8]]) -> Uuid {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(namespace.as_bytes());
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Milliseconds as the schema writes them: a number with microsecond precision.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

impl CheckResult {
    /// The result as event fields.
    pub fn into_fields(self) -> Map<String, Value> {
        self.to_fields()
    }

    /// The result as event fields, leaving it be.
    pub fn to_fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("a struct serializes to an object"),
        }
    }
}

/// A check result travels typed through the pipeline: the probe and the Kafka source make
/// events with [`Event::from_check`], the checker's transforms change it in place
/// ([`Event::check_mut`]), and the sinks encode or store it straight from the struct. These are
/// [`Event`]'s typed payload under the check's own name, kept here so that the framework's
/// event knows nothing of the monitor (docs/architecture.md).
impl Event {
    /// An event that is a check result, kept typed.
    pub fn from_check(check: CheckResult) -> Self {
        Self::from_typed(check)
    }

    /// The check result, if the event is one (and no stage has rewritten its fields).
    pub fn check(&self) -> Option<&CheckResult> {
        self.payload()
    }

    /// The check result, to change in place.
    pub fn check_mut(&mut self) -> Option<&mut CheckResult> {
        self.payload_mut()
    }

    /// The check as a transform reads and changes it, typed or as fields, so that a transform
    /// writes its logic once: a typed check stays typed, and an event that is already a field
    /// map (from a custom stage, say) is changed as one.
    pub fn check_view(&mut self) -> CheckView<'_> {
        if self.check().is_some() {
            CheckView::Typed(self.check_mut().expect("a typed check, tested above"))
        } else {
            CheckView::Fields(self.fields_mut())
        }
    }
}

/// A check, typed or as fields: the few fields the checker's transforms read and set
/// ([`Event::check_view`]). Field maps may lack any of them; a getter then gives `None`.
#[derive(Debug)]
pub enum CheckView<'a> {
    /// A typed check, changed in place.
    Typed(&'a mut CheckResult),
    /// A field map, changed field by field.
    Fields(&'a mut Map<String, Value>),
}

impl CheckView<'_> {
    /// `target`.
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::Typed(check) => Some(&check.target),
            Self::Fields(fields) => fields.get("target").and_then(Value::as_str),
        }
    }

    /// `response_time_ms`.
    pub fn response_time_ms(&self) -> Option<f64> {
        match self {
            Self::Typed(check) => Some(check.response_time_ms),
            Self::Fields(fields) => fields.get("response_time_ms").and_then(Value::as_f64),
        }
    }

    /// `regex`: the target's own pattern.
    pub fn regex(&self) -> Option<&str> {
        match self {
            Self::Typed(check) => check.regex.as_deref(),
            Self::Fields(fields) => fields.get("regex").and_then(Value::as_str),
        }
    }

    /// Sets `regex`.
    pub fn set_regex(&mut self, pattern: String) {
        match self {
            Self::Typed(check) => check.regex = Some(pattern),
            Self::Fields(fields) => {
                fields.insert("regex".into(), pattern.into());
            }
        }
    }

    /// Sets `latency_class`.
    pub fn set_latency_class(&mut self, class: LatencyClass) {
        match self {
            Self::Typed(check) => check.latency_class = Some(class),
            Self::Fields(fields) => {
                fields.insert("latency_class".into(), class.as_str().into());
            }
        }
    }

    /// Sets `regex_matched` (`None`: not known).
    pub fn set_regex_matched(&mut self, matched: Option<bool>) {
        match self {
            Self::Typed(check) => check.regex_matched = matched,
            Self::Fields(fields) => {
                fields.insert(
                    "regex_matched".into(),
                    matched.map_or(Value::Null, Value::Bool),
                );
            }
        }
    }

    /// Sets `captures`.
    pub fn set_captures(&mut self, captures: Map<String, Value>) {
        match self {
            Self::Typed(check) => check.captures = Some(captures),
            Self::Fields(fields) => {
                fields.insert("captures".into(), Value::Object(captures));
            }
        }
    }

    /// Lowers `up`: a transform may count a check down, never up.
    pub fn set_down(&mut self) {
        match self {
            Self::Typed(check) => check.up = false,
            Self::Fields(fields) => {
                fields.insert("up".into(), false.into());
            }
        }
    }
}

/// `SystemTime` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-29T07:50:00.123Z`.
pub mod rfc3339_millis {
    use std::time::SystemTime;

    use serde::{de, Deserializer, Serializer};

    /// Formats `time` as the schema writes it.
    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_millis(time).to_string()
    }

    /// Serializes `time` as the schema writes it (`with = "rfc3339_millis"`).
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    /// Parses an RFC 3339 time (any precision, `Z` or an offset).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        deserializer.deserialize_str(Rfc3339)
    }

    /// Reads the text where the deserializer has it: a check holds four times, and a `String`
    /// (or serde's `Cow`, which is always owned) for each was an allocation and a copy.
    struct Rfc3339;

    impl de::Visitor<'_> for Rfc3339 {
        type Value = SystemTime;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<SystemTime, E> {
            humantime::parse_rfc3339_weak(text)
                .map_err(|e| E::custom(format!("invalid RFC 3339 time `{text}`: {e}")))
        }
    }

    /// `Option<SystemTime>` the same way, `None` as null.
    pub mod option {
        use std::time::SystemTime;

        use serde::Serializer;

        /// Serializes `time` as the schema writes it, or null.
        pub fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }
    }
}

/// `SystemTime` as RFC 3339 in UTC to the second, e.g. `2027-03-01T12:00:00Z`: certificate
/// times have no finer precision.
pub mod rfc3339_seconds {
    use std::time::SystemTime;

    use serde::{Deserializer, Serializer};

    /// Serializes `time` to the second (`with = "rfc3339_seconds"`).
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
    }

    /// Parses an RFC 3339 time (any precision, `Z` or an offset).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        super::rfc3339_millis::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_travels_typed_seen_as_fields_and_changed_in_place() {
        let mut event = Event::from_check(sample());
        assert_eq!(event.get("target"), Some(&Value::from("example")));
        event.check_mut().unwrap().up = false;
        assert_eq!(event.get("up"), Some(&Value::from(false)));
        assert_eq!(
            event.to_json().unwrap(),
            serde_json::to_vec(&sample_with(|c| c.up = false)).unwrap()
        );
        event.insert("note", "rewritten");
        assert!(event.check().is_none(), "a field map from here on");
    }

    #[test]
    fn a_check_view_changes_typed_checks_and_field_maps_alike() {
        let change = |view: &mut CheckView<'_>| {
            assert_eq!(view.target(), Some("example"));
            assert_eq!(view.response_time_ms(), Some(12.345));
            assert_eq!(view.regex(), None);
            view.set_regex("Example (?P<word>\\w+)".into());
            view.set_latency_class(LatencyClass::Slow);
            view.set_regex_matched(Some(true));
            view.set_captures(Map::from_iter([("word".to_owned(), "Domain".into())]));
            view.set_down();
        };
        let mut typed = Event::from_check(sample());
        change(&mut typed.check_view());
        let mut fields = Event::new(sample().into_fields());
        change(&mut fields.check_view());

        assert!(typed.check().is_some(), "a typed check stays typed");
        assert_eq!(typed.fields(), fields.fields());
        assert_eq!(
            typed.check().unwrap().latency_class,
            Some(LatencyClass::Slow)
        );
        assert!(!typed.check().unwrap().up);
        // A map that is not a check: nothing to read, and setters only add their field.
        let mut other = Event::new(Map::new());
        assert_eq!(other.check_view().target(), None);
        assert_eq!(other.check_view().response_time_ms(), None);
    }

    fn sample_with(change: impl FnOnce(&mut CheckResult)) -> CheckResult {
        let mut check = sample();
        change(&mut check);
        check
    }

    fn sample() -> CheckResult {
        let scheduled_at = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        CheckResult {
            schema_version: SCHEMA_VERSION,
            check_id: check_id("example", scheduled_at),
            target: "example".into(),
            url: "https://example.com/".into(),
            method: "GET".into(),
            scheduled_at,
            started_at: scheduled_at + Duration::from_millis(2),
            response_time_ms: 12.345,
            timings_ms: Timings {
                dns: Some(1.0),
                connect: Some(2.0),
                tls: Some(3.0),
                first_byte: Some(4.0),
                transfer: Some(0.5),
            },
            status_code: Some(200),
            error: None,
            regex: None,
            regex_matched: None,
            latency_class: Some(LatencyClass::Ok),
            up: true,
            body_bytes: Some(1256),
            remote_addr: Some("93.184.216.34:443".into()),
            http_version: Some("HTTP/2".into()),
            tls: None,
            region: None,
            checker: None,
            captures: None,
            probe_fault: false,
        }
    }

    #[test]
    fn check_ids_are_stable_and_distinct() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(check_id("a", t), check_id("a", t));
        assert_ne!(check_id("a", t), check_id("b", t));
        assert_ne!(
            check_id("a", t),
            check_id("a", t + Duration::from_millis(1))
        );
        // Pinned: the id of a check must never change between releases. The values are
        // Python's `uuid.uuid5` of the same namespace and names, an implementation not ours
        // (this compared the id with the sample's, made by the same function, until
        // 2026-12-07).
        let at = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(
            check_id("example", at).to_string(),
            "8dd41c64-4b20-5463-b3e3-3c22ced15eb2"
        );
        assert_eq!(
            check_id_in("example", at, Some("eu-west")).to_string(),
            "b94a85da-24ea-5015-9f12-da716d7bded7"
        );
        assert_eq!(check_id("a", t).get_version_num(), 5);
        // A region makes another check of the same slot; none keeps the id it always had.
        assert_eq!(check_id_in("a", t, None), check_id("a", t));
        assert_ne!(check_id_in("a", t, Some("eu-west")), check_id("a", t));
        assert_ne!(
            check_id_in("a", t, Some("eu-west")),
            check_id_in("a", t, Some("us-east"))
        );
    }

    #[test]
    fn name_based_uuids_are_rfc_9562_version_5() {
        // RFC 9562, appendix A.4: "www.example.com" in the DNS namespace.
        let dns = Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);
        let expected = Uuid::from_u128(0x2ed6657d_e927_568b_95e1_2665a8aea6a2);
        assert_eq!(name_based_uuid(&dns, &[b"www.example.com"]), expected);
        // Parts hash as their concatenation.
        assert_eq!(
            name_based_uuid(&dns, &[b"www.", b"", b"example", b".com"]),
            expected
        );
    }

    #[test]
    fn tls_details_serialize_with_dates_to_the_second() {
        let mut check = sample();
        check.tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            cert_not_before: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            cert_not_after: UNIX_EPOCH + Duration::from_secs(1_797_776_000),
            cert_issuer: "CN=Test CA".into(),
            cert_subject: "CN=example.com".into(),
            cert_sans: vec!["example.com".into(), "192.0.2.1".into()],
            cert_expires_soon: false,
        });
        check.region = Some("eu-west".into());
        check.checker = Some("probe-1".into());
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["tls"]["cert_not_after"], "2026-12-20T14:13:20Z");
        assert_eq!(json["tls"]["cert_sans"][1], "192.0.2.1");
        assert_eq!(json["region"], "eu-west");
        let back: CheckResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, check);
    }

    #[test]
    fn serializes_with_the_documented_field_names() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["scheduled_at"], "2026-11-18T11:06:40.123Z");
        assert_eq!(json["started_at"], "2026-11-18T11:06:40.125Z");
        assert_eq!(json["timings_ms"]["first_byte"], 4.0);
        assert_eq!(json["latency_class"], "ok");
        assert!(json["error"].is_null());
        assert!(json.get("captures").is_none());
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "schema_version",
                "check_id",
                "target",
                "url",
                "method",
                "scheduled_at",
                "started_at",
                "response_time_ms",
                "timings_ms",
                "status_code",
                "error",
                "regex",
                "regex_matched",
                "latency_class",
                "up",
                "body_bytes",
                "remote_addr",
                "http_version"
            ]
        );
        let back: CheckResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn errors_serialize_as_kind_and_message() {
        let error = CheckError {
            kind: ErrorKind::TooManyRedirects,
            message: "too many".into(),
        };
        assert_eq!(
            serde_json::to_value(error).unwrap(),
            serde_json::json!({"kind": "too_many_redirects", "message": "too many"})
        );
    }

    #[test]
    fn millis_keep_microseconds() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.567);
    }
}
