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
    /// Its target, region and checker, as indexes into the batch's [`Names`].
    pub(super) target: u32,
    pub(super) region: u32,
    pub(super) checker: Option<u32>,
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

/// A batch's targets, regions and checkers, each once. A row holds its index in each list, so
/// that the writer finds a row's ids by index: comparing and hashing names for every row, and
/// cloning them into it, was a fifth of the sink's CPU behind a backlog.
#[derive(Debug, Default)]
pub(super) struct Names {
    /// With the settings of each one's first check in the batch.
    pub(super) targets: Vec<TargetRow>,
    target_index: HashMap<String, u32>,
    /// `""` without one.
    pub(super) regions: Vec<String>,
    /// (region, name).
    pub(super) checkers: Vec<CheckerKey>,
}

impl Names {
    /// The index of `check`'s target, added with its settings if it is new to the batch.
    fn target(&mut self, check: &CheckResult) -> u32 {
        if let Some(&index) = self.target_index.get(check.target.as_str()) {
            return index;
        }
        let index = self.targets.len() as u32;
        self.targets.push(TargetRow::of(check));
        self.target_index.insert(check.target.clone(), index);
        index
    }

    /// The index of the target named `name`, if the batch has it.
    pub(super) fn target_index(&self, name: &str) -> Option<usize> {
        self.target_index.get(name).map(|&index| index as usize)
    }

    // A batch's checks come from a few checkers in a few regions: a search of a short list,
    // most often ending at its first entry, is cheaper than hashing the name.
    fn region(&mut self, region: &str) -> u32 {
        match self.regions.iter().position(|r| r == region) {
            Some(index) => index as u32,
            None => {
                self.regions.push(region.to_owned());
                (self.regions.len() - 1) as u32
            }
        }
    }

    fn checker(&mut self, region: &str, name: &str) -> u32 {
        match self
            .checkers
            .iter()
            .position(|(r, n)| r == region && n == name)
        {
            Some(index) => index as u32,
            None => {
                self.checkers.push((region.to_owned(), name.to_owned()));
                (self.checkers.len() - 1) as u32
            }
        }
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
    /// The row of `check`, its names added to `names` once every field has converted.
    pub(super) fn from_check(
        check: &CheckResult,
        tls_keys: &mut TlsKeys,
        names: &mut Names,
    ) -> Result<Row, String> {
        let delay = match check.started_at.duration_since(check.scheduled_at) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let start_delay_ms = i32::try_from(delay)
            .map_err(|_| "started_at is too far from scheduled_at".to_owned())?;
        let remote: Option<SocketAddr> = check.remote_addr.as_deref().and_then(|a| a.parse().ok());
        let timings = &check.timings_ms;
        let region = check.region.as_deref().unwrap_or_default();
        // pipe_check_id, in the view, reads the slot's milliseconds since 1970 as check_id_in
        // does, but not a slot before 1970 as 0.
        let derivable = check.scheduled_at >= UNIX_EPOCH;
        let derived = crate::monitor::check::check_id_in(
            &check.target,
            check.scheduled_at,
            Some(region).filter(|r| !r.is_empty()),
        );
        let response_time_us = micros(check.response_time_ms, "response_time_ms")?;
        let dns_us = micros_opt(timings.dns, "timings_ms.dns")?;
        let connect_us = micros_opt(timings.connect, "timings_ms.connect")?;
        let tls_us = micros_opt(timings.tls, "timings_ms.tls")?;
        let first_byte_us = micros_opt(timings.first_byte, "timings_ms.first_byte")?;
        let transfer_us = micros_opt(timings.transfer, "timings_ms.transfer")?;
        let body_bytes = check
            .body_bytes
            .map(|b| i32::try_from(b).map_err(|_| format!("body_bytes {b} is out of range")))
            .transpose()?;
        let status_code = check
            .status_code
            .map(|s| i16::try_from(s).map_err(|_| format!("status_code {s} is out of range")))
            .transpose()?;
        // Nothing fails from here on: a check that is not stored adds no names to the batch.
        let row = Row {
            checked_at: check.scheduled_at,
            check_id: (!derivable || derived != check.check_id).then_some(check.check_id),
            target: names.target(check),
            region: names.region(region),
            checker: check
                .checker
                .as_deref()
                .map(|name| names.checker(region, name)),
            start_delay_ms,
            response_time_us,
            dns_us,
            connect_us,
            tls_us,
            first_byte_us,
            transfer_us,
            body_bytes,
            remote_port: remote.map(|a| i32::from(a.port())),
            error_kind: check.error.as_ref().map(|e| e.kind.as_str()),
            latency_class: check.latency_class.map(|c| c.as_str()),
            status_code,
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

    fn check(target: &str, region: Option<&str>, checker: &str, ms: f64) -> CheckResult {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1,
            "check_id": "00000000-0000-0000-0000-000000000000",
            "target": target, "url": format!("https://{target}/"), "method": "GET",
            "scheduled_at": "2026-12-04T10:00:00.000Z", "started_at": "2026-12-04T10:00:00.001Z",
            "response_time_ms": ms, "timings_ms": {}, "status_code": 200, "error": null,
            "regex": null, "regex_matched": null, "latency_class": "ok", "up": true,
            "body_bytes": 10, "remote_addr": null, "http_version": "HTTP/1.1",
            "region": region, "checker": checker,
        }))
        .unwrap()
    }

    #[test]
    fn a_batch_names_each_target_region_and_checker_once_and_rows_point_to_them() {
        let (mut keys, mut names) = (TlsKeys::default(), Names::default());
        let mut row = |c: CheckResult| Row::from_check(&c, &mut keys, &mut names);
        let rows = [
            row(check("a", None, "c1", 12.5)).unwrap(),
            row(check("b", Some("eu"), "c2", 12.5)).unwrap(),
            row(check("a", Some("eu"), "c2", 12.5)).unwrap(),
            row(check("b", None, "c1", 12.5)).unwrap(),
        ];
        // A check that is not stored adds none of its names.
        assert!(row(check("c", Some("us"), "c3", 1e12))
            .unwrap_err()
            .contains("response_time_ms"));
        let pointed: Vec<_> = rows
            .iter()
            .map(|r| (r.target, r.region, r.checker))
            .collect();
        assert_eq!(
            pointed,
            [
                (0, 0, Some(0)),
                (1, 1, Some(1)),
                (0, 1, Some(1)),
                (1, 0, Some(0))
            ]
        );
        let targets: Vec<&str> = names.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(targets, ["a", "b"]);
        assert_eq!(names.targets[1].url, "https://b/");
        assert_eq!(names.regions, ["", "eu"]);
        let checkers = [(String::new(), "c1".into()), ("eu".into(), "c2".into())];
        assert_eq!(names.checkers, checkers);
        assert_eq!(names.target_index("b"), Some(1));
        assert_eq!(names.target_index("c"), None);
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
