//! The report as one self-contained HTML page: inline CSS, inline SVG charts drawn here, and a
//! few lines of inline script; nothing is fetched, so it works offline and from a mail
//! attachment. No library is used.
//!
//! Every figure is also in `data-*` attributes, written exactly as the JSON report writes
//! them, so a test can compare the page with `--format json`.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{format_ms, human_duration, BucketReport, Report, TargetReport};
use crate::monitor::check::rfc3339_millis;

const CHART_WIDTH: f64 = 800.0;
const CHART_HEIGHT: f64 = 140.0;
const BAR_HEIGHT: f64 = 18.0;

/// Text safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as the JSON report writes it (`null` for none).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn date(time: SystemTime) -> String {
    let text = rfc3339_millis::format(time);
    format!("{} {}", &text[..10], &text[11..16])
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:860px;color:#1d232a;background:#fff}
h1{font-size:1.5em;margin:0}h2{font-size:1.15em;margin:0 0 .3em}
.range{color:#5b6570;margin:.2em 0 1.5em}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{text-align:right;padding:.2em .5em;border-bottom:1px solid #e3e7eb;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}
th{font-weight:600;color:#5b6570}
section{border-top:2px solid #e3e7eb;padding-top:1em;margin-top:1.5em}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;color:#fff;font-weight:600;margin-left:.5em;font-size:.9em}
.good{background:#1f883d}.fair{background:#bf8700}.poor{background:#cf222e}
.figures{color:#5b6570}
svg{display:block;margin:.3em 0}
svg text{font-size:10px;fill:#5b6570}
.p50{stroke:#0969da;fill:none;stroke-width:1.5}
.p95{stroke:#8250df;fill:none;stroke-width:1.5}
.grid{stroke:#e3e7eb}
.b-good{fill:#1f883d}.b-fair{fill:#d4a72c}.b-poor{fill:#cf222e}
.legend span{margin-right:1em}.legend .k50{color:#0969da}.legend .k95{color:#8250df}
.none{color:#5b6570}
";

/// Reads the page's own figures once it has loaded; marks the body ready, so that a test knows
/// the script ran to the end without error.
const SCRIPT: &str = "
(function(){
  var sections = document.querySelectorAll('section.target');
  document.querySelectorAll('svg.availability rect').forEach(function(r){
    r.addEventListener('mouseenter', function(){ r.style.opacity = 0.6; });
    r.addEventListener('mouseleave', function(){ r.style.opacity = 1; });
  });
  document.body.setAttribute('data-sections', String(sections.length));
  document.body.setAttribute('data-ready', 'yes');
})();
";

fn class_of(availability: f64) -> &'static str {
    if availability >= 0.999 {
        "good"
    } else if availability >= 0.99 {
        "fair"
    } else {
        "poor"
    }
}

/// The range's length in seconds (at least 1).
fn span_seconds(report: &Report) -> f64 {
    report
        .until
        .duration_since(report.since)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1.0)
}

/// Where a bucket starts along the chart, 0–CHART_WIDTH.
fn x_of(report: &Report, at: SystemTime) -> f64 {
    let offset = at
        .duration_since(report.since)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    (offset / span_seconds(report) * CHART_WIDTH).clamp(0.0, CHART_WIDTH)
}

fn bucket_width(report: &Report) -> f64 {
    (report.bucket.seconds() as f64 / span_seconds(report) * CHART_WIDTH).max(1.0)
}

fn latency_chart(out: &mut String, report: &Report, series: &[BucketReport]) {
    let top = series
        .iter()
        .filter_map(|b| b.p95_ms)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let y = |ms: f64| CHART_HEIGHT - 14.0 - (ms / top) * (CHART_HEIGHT - 24.0);
    let half = bucket_width(report) / 2.0;
    let points = |pick: &dyn Fn(&BucketReport) -> Option<f64>| {
        let mut text = String::new();
        for bucket in series {
            if let Some(ms) = pick(bucket) {
                let x = (x_of(report, bucket.start) + half).min(CHART_WIDTH);
                let _ = write!(text, "{x:.1},{:.1} ", y(ms));
            }
        }
        text
    };
    let _ = write!(
        out,
        "<svg class=\"latency\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" aria-label=\"response time, p50 and p95\">\
         <line class=\"grid\" x1=\"0\" y1=\"{y0:.1}\" x2=\"{CHART_WIDTH}\" y2=\"{y0:.1}\"/>\
         <line class=\"grid\" x1=\"0\" y1=\"{ym:.1}\" x2=\"{CHART_WIDTH}\" y2=\"{ym:.1}\"/>\
         <text x=\"2\" y=\"{ytext:.1}\">{label}</text>\
         <text x=\"2\" y=\"{CHART_HEIGHT}\">{start}</text>\
         <text x=\"{CHART_WIDTH}\" y=\"{CHART_HEIGHT}\" text-anchor=\"end\">{end}</text>\
         <polyline class=\"p50\" points=\"{p50}\"/><polyline class=\"p95\" points=\"{p95}\"/></svg>",
        y0 = y(0.0),
        ym = y(top / 1.1),
        ytext = y(top / 1.1) - 2.0,
        label = escape(&format_ms(Some(top / 1.1))),
        start = escape(&date(report.since)),
        end = escape(&date(report.until)),
        p50 = points(&|b| b.p50_ms),
        p95 = points(&|b| b.p95_ms),
    );
}

fn availability_bar(out: &mut String, report: &Report, series: &[BucketReport]) {
    let width = bucket_width(report);
    let _ = write!(
        out,
        "<svg class=\"availability\" width=\"{CHART_WIDTH}\" height=\"{BAR_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {BAR_HEIGHT}\" role=\"img\" aria-label=\"availability per bucket\">"
    );
    for bucket in series {
        let _ = write!(
            out,
            "<rect class=\"b-{}\" x=\"{:.1}\" width=\"{:.1}\" height=\"{BAR_HEIGHT}\"><title>{} {:.2}%</title></rect>",
            class_of(bucket.availability),
            x_of(report, bucket.start),
            (width - 0.5).max(0.5),
            escape(&date(bucket.start)),
            bucket.availability * 100.0
        );
    }
    out.push_str("</svg>");
}

fn incidents(out: &mut String, target: &TargetReport) {
    if target.incidents.is_empty() {
        out.push_str("<p class=\"none\">No incidents in the range.</p>");
        return;
    }
    out.push_str("<table class=\"incidents\"><tr><th>started</th><th>duration</th><th>cause</th><th>failed checks</th><th>region</th></tr>");
    for incident in &target.incidents {
        let duration = match incident.ended_at {
            Some(_) => human_duration(incident.duration_s),
            None => format!("{} (open)", human_duration(incident.duration_s)),
        };
        let _ = write!(
            out,
            "<tr class=\"incident\" data-started-at=\"{}\" data-duration-s=\"{}\" data-cause=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&rfc3339_millis::format(incident.started_at)),
            json(&incident.duration_s),
            escape(&incident.cause),
            escape(&date(incident.started_at)),
            escape(&duration),
            escape(&incident.cause),
            incident.failed_checks,
            escape(incident.region.as_deref().unwrap_or("-")),
        );
    }
    out.push_str("</table>");
}

fn figures(target: &TargetReport) -> String {
    format!(
        "data-target=\"{}\" data-checks=\"{}\" data-up-checks=\"{}\" data-uptime-pct=\"{}\" data-downtime-s=\"{}\" data-p50-ms=\"{}\" data-p95-ms=\"{}\" data-p99-ms=\"{}\" data-incidents=\"{}\"",
        escape(&target.target),
        target.checks,
        target.up_checks,
        json(&target.uptime_pct),
        json(&target.downtime_s),
        json(&target.p50_ms),
        json(&target.p95_ms),
        json(&target.p99_ms),
        target.incidents.len()
    )
}

/// Renders `report` as a whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(4096 + report.targets.len() * 8192);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>pipe report: {since} to {until}</title><style>{STYLE}</style></head>\
         <body data-since=\"{since_raw}\" data-until=\"{until_raw}\" data-bucket=\"{bucket}\">\
         <h1>Uptime report</h1><p class=\"range\">{n} targets, {since} to {until} UTC, {bucket_words}; generated by pipe {version}.</p>",
        since = escape(&date(report.since)),
        until = escape(&date(report.until)),
        since_raw = escape(&rfc3339_millis::format(report.since)),
        until_raw = escape(&rfc3339_millis::format(report.until)),
        bucket = json(&report.bucket).trim_matches('"'),
        bucket_words = match report.bucket {
            super::BucketSize::Hour => "in hours",
            super::BucketSize::Day => "in days",
        },
        n = report.targets.len(),
        version = env!("CARGO_PKG_VERSION"),
    );
    out.push_str("<table id=\"summary\"><tr><th>target</th><th>checks</th><th>uptime</th><th>incidents</th><th>downtime</th><th>p50</th><th>p95</th><th>p99</th></tr>");
    for (i, target) in report.targets.iter().enumerate() {
        let _ = write!(
            out,
            "<tr {}><td><a href=\"#t{i}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            figures(target),
            escape(&target.target),
            target.checks,
            escape(&super::table::format_uptime(target)),
            target.incidents.len(),
            escape(&human_duration(target.downtime_s)),
            escape(&format_ms(target.p50_ms)),
            escape(&format_ms(target.p95_ms)),
            escape(&format_ms(target.p99_ms)),
        );
    }
    out.push_str("</table>");
    for (i, target) in report.targets.iter().enumerate() {
        let _ = write!(
            out,
            "<section class=\"target\" id=\"t{i}\" {}><h2>{}<span class=\"badge {}\">{}</span></h2>\
             <p class=\"figures\">{} checks · p50 {} · p95 {} · p99 {} · downtime {}</p>\
             <p class=\"legend\"><span class=\"k50\">━ p50</span><span class=\"k95\">━ p95</span></p>",
            figures(target),
            escape(&target.target),
            class_of(target.uptime_pct / 100.0),
            escape(&super::table::format_uptime(target)),
            target.checks,
            escape(&format_ms(target.p50_ms)),
            escape(&format_ms(target.p95_ms)),
            escape(&format_ms(target.p99_ms)),
            escape(&human_duration(target.downtime_s)),
        );
        latency_chart(&mut out, report, &target.series);
        availability_bar(&mut out, report, &target.series);
        incidents(&mut out, target);
        out.push_str("</section>");
    }
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
