//! A message's payload to an event: a typed check (schema v1) or any JSON object, or why not.

use serde_json::Value;

use super::config::*;
use crate::event::Event;
use crate::monitor::check::{CheckResult, SCHEMA_VERSION};

/// Decodes one payload into an event (a typed check for `check_v1`), or says why it cannot be.
pub fn decode_payload(payload: &[u8], format: Format, max_bytes: usize) -> Result<Event, String> {
    if payload.len() > max_bytes {
        return Err(format!(
            "the message has {} bytes, more than max_message_bytes ({max_bytes})",
            payload.len()
        ));
    }
    match format {
        Format::Json => match serde_json::from_slice(payload) {
            Ok(Value::Object(fields)) => Ok(Event::new(fields)),
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        },
        Format::CheckV1 => {
            // One pass from bytes to the struct, for every good message.
            if let Ok(check) = serde_json::from_slice::<CheckResult>(payload) {
                if check.schema_version == SCHEMA_VERSION {
                    return Ok(Event::from_check(check));
                }
            }
            // A bad one is read again, only to say precisely what is wrong with it.
            let value: Value =
                serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
            match value.get("schema_version") {
                Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
                Some(v) => {
                    return Err(format!(
                        "unknown schema_version {v}; this writer reads {SCHEMA_VERSION}"
                    ))
                }
                None => return Err("no schema_version: not a check result".to_owned()),
            }
            let check: CheckResult = serde_json::from_value(value)
                .map_err(|e| format!("not a valid schema v{SCHEMA_VERSION} check result: {e}"))?;
            Ok(Event::from_check(check))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> Value {
        serde_json::json!({
            "schema_version": 1, "check_id": "8a036c86-1f8f-5289-af3e-1f909db5869c",
            "target": "t", "url": "http://x/", "method": "GET",
            "scheduled_at": "2026-11-29T08:00:40.000Z", "started_at": "2026-11-29T08:00:40.001Z",
            "response_time_ms": 1.5,
            "timings_ms": {"dns": null, "connect": 0.1, "tls": null, "first_byte": 1.0, "transfer": 0.2},
            "status_code": 200, "error": null, "regex": null, "regex_matched": null,
            "latency_class": "ok", "up": true, "body_bytes": 10, "remote_addr": "127.0.0.1:80",
            "http_version": "HTTP/1.1"
        })
    }

    fn decode(value: &[u8]) -> Result<Event, String> {
        decode_payload(value, Format::CheckV1, 4096)
    }

    #[test]
    fn a_valid_check_decodes_typed() {
        let event = decode(check().to_string().as_bytes()).unwrap();
        assert_eq!(event.check().expect("typed").target, "t");
        assert_eq!(event.get("target"), Some(&Value::from("t")));
    }

    #[test]
    fn each_kind_of_poison_is_named() {
        assert!(decode(b"{not json")
            .unwrap_err()
            .starts_with("invalid JSON:"));
        let mut v = check();
        v["schema_version"] = 2.into();
        assert_eq!(
            decode(v.to_string().as_bytes()).unwrap_err(),
            "unknown schema_version 2; this writer reads 1"
        );
        let mut v = check();
        v.as_object_mut().unwrap().remove("check_id");
        assert!(decode(v.to_string().as_bytes())
            .unwrap_err()
            .contains("missing field `check_id`"));
        let mut v = check();
        v["up"] = "yes".into();
        assert!(decode(v.to_string().as_bytes())
            .unwrap_err()
            .contains("invalid type"));
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
        assert!(decode(big.as_bytes())
            .unwrap_err()
            .contains("more than max_message_bytes (4096)"));
        assert_eq!(
            decode(b"[1]").unwrap_err(),
            "no schema_version: not a check result"
        );
        assert_eq!(
            decode_payload(b"[1]", Format::Json, 100).unwrap_err(),
            "not a JSON object"
        );
    }
}
