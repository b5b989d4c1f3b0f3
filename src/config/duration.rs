//! Durations as people write them in pipeline files: `250ms`, `30s`, `5m`, `1h`, `7d`.
//!
//! Use with serde: `#[serde(with = "pipe::config::duration")]` on a `Duration` field, or
//! `#[serde(with = "pipe::config::duration::option")]` on an `Option<Duration>`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `<whole number><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let expected = || {
        format!("invalid duration `{text}`: expected a whole number and a unit (ms, s, m, h, d), such as 250ms, 30s or 5m")
    };
    if number.is_empty() {
        return Err(expected());
    }
    let factor = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, factor)| *factor)
        .ok_or_else(expected)?;
    let millis = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("duration `{text}` is too large"))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0ms".to_owned();
    }
    let (name, factor) = UNITS
        .iter()
        .rev()
        .find(|(_, factor)| millis % u128::from(*factor) == 0)
        .expect("1 ms divides every whole number of milliseconds");
    format!("{}{name}", millis / u128::from(*factor))
}

/// Formats a duration to the nearest second, for logs: `0s`, `45s`, `2m`, `150s`.
pub fn format_approx(duration: Duration) -> String {
    match duration.as_secs_f64().round() as u64 {
        0 => "0s".to_owned(),
        secs => format(Duration::from_secs(secs)),
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 250ms, 30s or 5m")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
        parse(value).map_err(E::custom)
    }
}

/// Deserializes a duration written as in [`parse`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Serializes a duration as [`format()`] writes it.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// The same for `Option<Duration>`; pair it with `#[serde(default)]`.
pub mod option {
    use super::*;

    /// Deserializes a duration written as in [`parse`].
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(deserializer).map(Some)
    }

    /// Serializes a duration as [`format()`](super::format) writes it, `None` as nothing.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "30", "s", "1.5s", "-1s", "30 sec", "5min"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number and a unit"),
                "{bad}: {err}"
            );
        }
        assert!(parse("99999999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::ZERO), "0ms");
        assert_eq!(format_approx(Duration::from_millis(400)), "0s");
        assert_eq!(format_approx(Duration::from_millis(119_600)), "2m");
        assert_eq!(format_approx(Duration::from_millis(44_900)), "45s");
    }
}
