//! A check result as a row of the `checks` table, its target's row, and what could not be
//! stored: the conversion at the sink's edge, done once per check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use uuid::Uuid;

use crate::event::Origin;
use crate::monitor::check::{CheckResult, TlsInfo};
use crate::monitor::history::dimensions::{self, CheckerKey};

/// A check, in the columns of the `checks` table.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) checked_at: SystemTime,
    /// The message's id when it is not the one derived from target, slot and region (a
    /// producer of its own); stored only then.
    pub(super) check_id: Option<Uuid>,
    pub(super) target: String,
    /// `""` without one.
    pub(super) region: String,
    pub(super) start_delay_ms: i32,
    pub(super) response_time_us: i32,
    pub(super) dns_us: Option<i32>,
    pub(super) connect_us: Option<i32>,
    pub(super) tls_us: Option<i32>,
    pub(super) first_byte_us: Option<i32>,
    pub(super) transfer_us: Option<i32>,
    pub(super) body_bytes: Option<i32>,
    pub(super) remote_port: Option<i32>,
    pub(super) error_kind: Option<&'static str>,
    pub(super) latency_class: Option<&'static str>,
    pub(super) status_code: Option<i16>,
    pub(super) http_version: Option<i16>,
    pub(super) up: bool,
    pub(super) regex_matched: Option<bool>,
    pub(super) remote_ip: Option<std::net::IpAddr>,
    pub(super) error_message: Option<String>,
    pub(super) captures: Option<Value>,
    /// `tls_details.key` of the check's TLS details.
    pub(super) tls_key: Option<Uuid>,
    pub(super) cert_expires_soon: Option<bool>,
    pub(super) checker: Option<CheckerKey>,
    /// `Some(true)` for a probe fault, `None` (stored as null) otherwise.
    pub(super) probe_fault: Option<bool>,
}

/// The TLS key of each target's latest details. A target's certificate seldom changes, and
/// working a key out for every check (its fields formatted and hashed) was 6% of the writer's
/// CPU behind a backlog.
#[derive(Default)]
pub(super) struct TlsKeys(HashMap<String, (TlsInfo, Uuid)>);

impl TlsKeys {
    pub(super) fn key(&mut self, target: &str, tls: &TlsInfo) -> Uuid {
        if let Some((known, key)) = self.0.get(target) {
            if dimensions::same_tls_key(known, tls) {
                return *key;
            }
        }
        let key = dimensions::tls_key(tls);
        self.0.insert(target.to_owned(), (tls.clone(), key));
        key
    }
}

/// A target's identity and latest settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TargetRow {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) method: String,
    pub(super) regex: Option<String>,
}

/// Something that could not be stored as a check.
#[derive(Debug, Clone)]
pub(super) struct DeadLetter {
    pub(super) topic: Option<String>,
    pub(super) partition: Option<i32>,
    pub(super) offset: Option<i64>,
    pub(super) error: String,
    pub(super) payload: Vec<u8>,
}

impl DeadLetter {
    /// A dead letter of the message at `origin` (none for an event from elsewhere).
    pub(super) fn at(origin: Option<&Origin>, error: String, payload: Vec<u8>) -> Self {
        Self {
            topic: origin.map(|o| o.topic.to_string()),
            partition: origin.map(|o| o.partition),
            offset: origin.map(|o| o.offset),
            error,
            payload,
        }
    }
}

/// Milliseconds (schema v1) to whole microseconds in an `integer` column.
pub(super) fn micros(ms: f64, field: &str) -> Result<i32, String> {
    let us = (ms * 1000.0).round();
    if us.is_finite() && us >= f64::from(i32::MIN) && us <= f64::from(i32::MAX) {
        Ok(us as i32)
    } else {
        Err(format!("{field} {ms} is out of range"))
    }
}

pub(super) fn micros_opt(ms: Option<f64>, field: &str) -> Result<Option<i32>, String> {
    ms.map(|ms| micros(ms, field)).transpose()
}

impl Row {
    pub(super) fn from_check(check: &CheckResult, tls_keys: &mut TlsKeys) -> Result<Row, String> {
        let delay = match check.started_at.duration_since(check.scheduled_at) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let start_delay_ms = i32::try_from(delay)
            .map_err(|_| "started_at is too far from scheduled_at".to_owned())?;
        let remote: Option<SocketAddr> = check.remote_addr.as_deref().and_then(|a| a.parse().ok());
        let timings = &check.timings_ms;
        let region = check.region.clone().unwrap_or_default();
        // pipe_check_id, in the view, reads the slot's milliseconds since 1970 as check_id_in
        // does, but not a slot before 1970 as 0.
        let derivable = check.scheduled_at >= UNIX_EPOCH;
        let derived = crate::monitor::check::check_id_in(
            &check.target,
            check.scheduled_at,
            Some(region.as_str()).filter(|r| !r.is_empty()),
        );
        let row = Row {
            checked_at: check.scheduled_at,
            check_id: (!derivable || derived != check.check_id).then_some(check.check_id),
            target: check.target.clone(),
            region,
            start_delay_ms,
            response_time_us: micros(check.response_time_ms, "response_time_ms")?,
            dns_us: micros_opt(timings.dns, "timings_ms.dns")?,
            connect_us: micros_opt(timings.connect, "timings_ms.connect")?,
            tls_us: micros_opt(timings.tls, "timings_ms.tls")?,
            first_byte_us: micros_opt(timings.first_byte, "timings_ms.first_byte")?,
            transfer_us: micros_opt(timings.transfer, "timings_ms.transfer")?,
            body_bytes: check
                .body_bytes
                .map(|b| i32::try_from(b).map_err(|_| format!("body_bytes {b} is out of range")))
                .transpose()?,
            remote_port: remote.map(|a| i32::from(a.port())),
            error_kind: check.error.as_ref().map(|e| e.kind.as_str()),
            latency_class: check.latency_class.map(|c| c.as_str()),
            status_code: check
                .status_code
                .map(|s| i16::try_from(s).map_err(|_| format!("status_code {s} is out of range")))
                .transpose()?,
            http_version: check.http_version.as_deref().and_then(|v| match v {
                "HTTP/0.9" => Some(9),
                "HTTP/1.0" => Some(10),
                "HTTP/1.1" => Some(11),
                "HTTP/2" => Some(20),
                "HTTP/3" => Some(30),
                _ => None,
            }),
            up: check.up,
            regex_matched: check.regex_matched,
            remote_ip: remote.map(|a| a.ip()),
            error_message: check.error.as_ref().map(|e| e.message.clone()),
            captures: check.captures.clone().map(Value::Object),
            tls_key: check
                .tls
                .as_ref()
                .map(|tls| tls_keys.key(&check.target, tls)),
            cert_expires_soon: check.tls.as_ref().map(|t| t.cert_expires_soon),
            checker: check
                .checker
                .clone()
                .map(|name| (check.region.clone().unwrap_or_default(), name)),
            probe_fault: check.probe_fault.then_some(true),
        };
        Ok(row)
    }
}

impl TargetRow {
    pub(super) fn of(check: &CheckResult) -> Self {
        Self {
            name: check.target.clone(),
            url: check.url.clone(),
            method: check.method.clone(),
            regex: check.regex.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_keeps_its_tls_key_until_its_details_change() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            cert_not_before: UNIX_EPOCH,
            cert_not_after: UNIX_EPOCH + std::time::Duration::from_secs(86_400),
            cert_issuer: "CN=ca".into(),
            cert_subject: "CN=a".into(),
            cert_sans: vec!["a".into()],
            cert_expires_soon: false,
        };
        let mut keys = TlsKeys::default();
        assert_eq!(keys.key("a", &tls), dimensions::tls_key(&tls));
        let renewed = TlsInfo {
            cert_subject: "CN=b".into(),
            ..tls.clone()
        };
        assert_eq!(keys.key("a", &renewed), dimensions::tls_key(&renewed));
        assert_eq!(keys.key("b", &tls), dimensions::tls_key(&tls));
        assert_eq!(keys.key("a", &tls), dimensions::tls_key(&tls));
    }

    #[test]
    fn milliseconds_become_microseconds_in_range() {
        assert_eq!(micros(1.2345, "x"), Ok(1235));
        assert!(micros(1e12, "response_time_ms")
            .unwrap_err()
            .contains("out of range"));
        assert!(micros(f64::NAN, "x").is_err());
    }
}
