//! The report as one self-contained HTML page: inline CSS, inline SVG charts drawn here, and a
//! few lines of inline script; nothing is fetched, so it works offline and from a mail
//! attachment. The page is a maud template: every value is escaped by the template itself, so
//! a target named `<script>` stays text.
//!
//! Every figure is also in `data-*` attributes, written exactly as the JSON report writes
//! them, so a test can compare the page with `--format json`.

use std::fmt::Write as _;
use std::time::SystemTime;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{format_ms, human_duration, BucketReport, Report, TargetReport};
use crate::monitor::check::rfc3339_millis;

const CHART_WIDTH: f64 = 800.0;
const CHART_HEIGHT: f64 = 140.0;
const BAR_HEIGHT: f64 = 18.0;

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

fn latency_chart(report: &Report, series: &[BucketReport]) -> Markup {
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
    let (y0, ym) = (format!("{:.1}", y(0.0)), format!("{:.1}", y(top / 1.1)));
    html! {
        svg.latency width=(CHART_WIDTH) height=(CHART_HEIGHT)
            viewBox={ "0 0 " (CHART_WIDTH) " " (CHART_HEIGHT) } role="img"
            aria-label="response time, p50 and p95" {
            line.grid x1="0" y1=(y0) x2=(CHART_WIDTH) y2=(y0) {}
            line.grid x1="0" y1=(ym) x2=(CHART_WIDTH) y2=(ym) {}
            text x="2" y=(format!("{:.1}", y(top / 1.1) - 2.0)) { (format_ms(Some(top / 1.1))) }
            text x="2" y=(CHART_HEIGHT) { (date(report.since)) }
            text x=(CHART_WIDTH) y=(CHART_HEIGHT) text-anchor="end" { (date(report.until)) }
            polyline.p50 points=(points(&|b| b.p50_ms)) {}
            polyline.p95 points=(points(&|b| b.p95_ms)) {}
        }
    }
}

fn availability_bar(report: &Report, series: &[BucketReport]) -> Markup {
    let width = format!("{:.1}", (bucket_width(report) - 0.5).max(0.5));
    html! {
        svg.availability width=(CHART_WIDTH) height=(BAR_HEIGHT)
            viewBox={ "0 0 " (CHART_WIDTH) " " (BAR_HEIGHT) } role="img"
            aria-label="availability per bucket" {
            @for bucket in series {
                rect class={ "b-" (class_of(bucket.availability)) }
                    x=(format!("{:.1}", x_of(report, bucket.start))) width=(width) height=(BAR_HEIGHT) {
                    title { (date(bucket.start)) " " (format!("{:.2}", bucket.availability * 100.0)) "%" }
                }
            }
        }
    }
}

fn incidents(target: &TargetReport) -> Markup {
    if target.incidents.is_empty() {
        return html! { p.none { "No incidents in the range." } };
    }
    html! {
        table.incidents {
            tr { th { "started" } th { "duration" } th { "cause" } th { "failed checks" } th { "region" } }
            @for incident in &target.incidents {
                @let duration = match incident.ended_at {
                    Some(_) => human_duration(incident.duration_s),
                    None => format!("{} (open)", human_duration(incident.duration_s)),
                };
                tr.incident data-started-at=(rfc3339_millis::format(incident.started_at))
                    data-duration-s=(json(&incident.duration_s)) data-cause=(incident.cause) {
                    td { (date(incident.started_at)) }
                    td { (duration) }
                    td { (incident.cause) }
                    td { (incident.failed_checks) }
                    td { (incident.region.as_deref().unwrap_or("-")) }
                }
            }
        }
    }
}

/// Renders `report` as a whole page.
pub fn render(report: &Report) -> String {
    let (since, until) = (date(report.since), date(report.until));
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "pipe report: " (since) " to " (until) }
                style { (PreEscaped(STYLE)) }
            }
            body data-since=(rfc3339_millis::format(report.since))
                data-until=(rfc3339_millis::format(report.until))
                data-bucket=(json(&report.bucket).trim_matches('"')) {
                h1 { "Uptime report" }
                p.range {
                    (report.targets.len()) " targets, " (since) " to " (until) " UTC, "
                    (match report.bucket {
                        super::BucketSize::Hour => "in hours",
                        super::BucketSize::Day => "in days",
                    })
                    "; generated by pipe " (env!("CARGO_PKG_VERSION")) "."
                }
                table #summary {
                    tr {
                        th { "target" } th { "checks" } th { "uptime" } th { "incidents" }
                        th { "downtime" } th { "p50" } th { "p95" } th { "p99" }
                    }
                    @for (i, target) in report.targets.iter().enumerate() {
                        tr data-target=(target.target) data-checks=(target.checks)
                            data-up-checks=(target.up_checks) data-uptime-pct=(json(&target.uptime_pct))
                            data-downtime-s=(json(&target.downtime_s)) data-p50-ms=(json(&target.p50_ms))
                            data-p95-ms=(json(&target.p95_ms)) data-p99-ms=(json(&target.p99_ms))
                            data-incidents=(target.incidents.len())
                            data-probe-faults=(target.probe_faults) {
                            td { a href={ "#t" (i) } { (target.target) } }
                            td { (target.checks) }
                            td { (super::table::format_uptime(target)) }
                            td { (target.incidents.len()) }
                            td { (human_duration(target.downtime_s)) }
                            td { (format_ms(target.p50_ms)) }
                            td { (format_ms(target.p95_ms)) }
                            td { (format_ms(target.p99_ms)) }
                        }
                    }
                }
                @for (i, target) in report.targets.iter().enumerate() {
                    section.target id={ "t" (i) } data-target=(target.target)
                        data-checks=(target.checks) data-up-checks=(target.up_checks)
                        data-uptime-pct=(json(&target.uptime_pct)) data-downtime-s=(json(&target.downtime_s))
                        data-p50-ms=(json(&target.p50_ms)) data-p95-ms=(json(&target.p95_ms))
                        data-p99-ms=(json(&target.p99_ms)) data-incidents=(target.incidents.len())
                        data-probe-faults=(target.probe_faults) {
                        h2 {
                            (target.target)
                            span class={ "badge " (class_of(target.uptime_pct / 100.0)) } {
                                (super::table::format_uptime(target))
                            }
                        }
                        p.figures {
                            (target.checks) " checks · p50 " (format_ms(target.p50_ms))
                            " · p95 " (format_ms(target.p95_ms)) " · p99 " (format_ms(target.p99_ms))
                            " · downtime " (human_duration(target.downtime_s))
                            " · global incidents " (target.global_incidents.len())
                            @if target.probe_faults > 0 {
                                " · probe faults " (target.probe_faults)
                            }
                        }
                        p.legend { span.k50 { "━ p50" } span.k95 { "━ p95" } }
                        (latency_chart(report, &target.series))
                        (availability_bar(report, &target.series))
                        (incidents(target))
                    }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    page.into_string() + "\n"
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::report::{BucketSize, IncidentReport, TargetReport};

    #[test]
    fn a_target_named_like_markup_stays_text() {
        let since = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let name = "<script>alert('x')</script> & \"q\"";
        let report = Report {
            since,
            until: since + Duration::from_secs(3600),
            bucket: BucketSize::Hour,
            generated_at: since,
            targets: vec![TargetReport {
                target: name.to_owned(),
                checks: 2,
                up_checks: 1,
                probe_faults: 0,
                uptime_pct: 50.0,
                downtime_s: 30.0,
                p50_ms: Some(12.0),
                p95_ms: Some(20.0),
                p99_ms: Some(20.0),
                last: None,
                incidents: vec![IncidentReport {
                    region: Some("<b>eu</b>".into()),
                    started_at: since,
                    ended_at: None,
                    duration_s: 30.0,
                    failed_checks: 3,
                    cause: "<img src=x onerror=alert(1)>".into(),
                }],
                global_incidents: vec![],
                series: Vec::new(),
            }],
        };
        let page = render(&report);
        assert!(!page.contains("<script>alert"), "the name is not markup");
        assert!(
            !page.contains("<img") && !page.contains("<b>"),
            "nor the cause or region"
        );
        assert!(page.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot;"));
        assert!(page.contains(
            "data-target=\"&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot;\""
        ));
        assert_eq!(
            page.matches("<script>").count(),
            1,
            "only the page's own script"
        );
    }
}
