//! The report as a terminal table: one row per target, worst first, in at most 100 columns
//! (`INC` its global incidents, `REG` its regional ones),
//! coloured only when asked (a terminal, and no `NO_COLOR`).

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{format_ms, human_duration, Report, TargetReport};

/// The widest the table gets.
pub const WIDTH: usize = 100;
const TARGET_WIDTH: usize = 20;
/// What is left of [`WIDTH`] for the last result, after the other columns (83 characters).
const LAST_WIDTH: usize = WIDTH - 83;

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// A name cut to `width` characters, with `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Uptime to two decimals, never rounded up to 100.00% while anything was down.
pub fn format_uptime(target: &TargetReport) -> String {
    let text = format!("{:.2}%", target.uptime_pct);
    if text == "100.00%" && target.up_checks < target.checks {
        "99.99%".to_owned()
    } else {
        text
    }
}

fn last(target: &TargetReport, now: SystemTime) -> String {
    match &target.last {
        None => "-".to_owned(),
        Some(last) => {
            let age = human_duration(
                now.duration_since(last.at)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            let what = if last.up {
                "up".to_owned()
            } else {
                last.cause.clone().unwrap_or_else(|| "down".into())
            };
            format!("{what} {age} ago")
        }
    }
}

/// Renders `report`; `colour` adds ANSI colours.
pub fn render(report: &Report, colour: bool) -> String {
    let paint = |text: String, code: &str| {
        if colour {
            format!("{code}{text}{RESET}")
        } else {
            text
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        paint(
            format!(
                "{} targets, {} to {} ({} buckets)",
                report.targets.len(),
                crate::monitor::check::rfc3339_millis::format(report.since),
                crate::monitor::check::rfc3339_millis::format(report.until),
                match report.bucket {
                    super::BucketSize::Hour => "hourly",
                    super::BucketSize::Day => "daily",
                }
            ),
            DIM
        )
    );
    let _ = writeln!(
        out,
        "{:<TARGET_WIDTH$} {:>8} {:>8} {:>4} {:>3} {:>9} {:>7} {:>7} {:>7}  LAST",
        "TARGET", "CHECKS", "UPTIME", "INC", "REG", "DOWNTIME", "P50", "P95", "P99"
    );
    for target in &report.targets {
        let uptime = format!("{:>8}", format_uptime(target));
        let uptime = match target.uptime_pct {
            u if u < 99.0 => paint(uptime, RED),
            u if u < 99.9 => paint(uptime, YELLOW),
            _ => paint(uptime, GREEN),
        };
        let last_text = fit(&last(target, report.until), LAST_WIDTH);
        let last_text = match &target.last {
            Some(l) if !l.up => paint(last_text, RED),
            _ => last_text,
        };
        let _ = writeln!(
            out,
            "{:<TARGET_WIDTH$} {:>8} {uptime} {:>4} {:>3} {:>9} {:>7} {:>7} {:>7}  {last_text}",
            fit(&target.target, TARGET_WIDTH),
            target.checks,
            target.global_incidents.len(),
            target.incidents.len(),
            human_duration(target.downtime_s),
            format_ms(target.p50_ms),
            format_ms(target.p95_ms),
            format_ms(target.p99_ms),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{BucketSize, LastResult};
    use std::time::Duration;

    fn target(name: &str, checks: u64, up: u64) -> TargetReport {
        TargetReport {
            target: name.into(),
            checks,
            up_checks: up,
            probe_faults: 0,
            uptime_pct: up as f64 * 100.0 / checks as f64,
            downtime_s: 750.0,
            p50_ms: Some(81.2),
            p95_ms: Some(140.0),
            p99_ms: Some(12_500.0),
            last: Some(LastResult {
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - 12),
                up: false,
                status_code: (name != "redirects").then_some(503),
                cause: Some(
                    if name == "redirects" {
                        "too_many_redirects"
                    } else {
                        "http_503"
                    }
                    .into(),
                ),
                response_time_ms: 35.0,
            }),
            incidents: vec![],
            global_incidents: vec![],
            series: vec![],
        }
    }

    #[test]
    fn rows_fit_in_100_columns_and_colour_only_when_asked() {
        let report = Report {
            since: SystemTime::UNIX_EPOCH,
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            bucket: BucketSize::Day,
            generated_at: SystemTime::UNIX_EPOCH,
            targets: vec![
                target(
                    "a-target-name-far-too-long-for-the-table-to-hold",
                    20_160,
                    20_159,
                ),
                target("shop", 2880, 2800),
                target("redirects", 99_999_999, 0),
            ],
        };
        let plain = render(&report, false);
        for line in plain.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} columns: {line}",
                line.len()
            );
        }
        assert!(!plain.contains('\x1b'));
        assert!(plain.contains("a-target-name-far-t… "));
        assert!(plain.contains("99.99%"), "never 100.00% with a check down");
        assert!(plain.contains("97.22%"));
        assert!(plain.contains("http_503 12s ago"));
        assert!(plain.contains("12m30s"));
        assert!(render(&report, true).contains(RED));
    }
}
