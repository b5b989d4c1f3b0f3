//! `pipe report` on data the tests write through the postgres sink: the JSON figures against the
//! raw checks, the table against the JSON, and the HTML page in a real browser (Debian's
//! headless Chromium, installed by `scripts/test`): no console error, no network request, one
//! section per target, charts drawn, the same figures as the JSON; and a screenshot under
//! `target/report/`. Needs the local PostgreSQL.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::support::history::{day_start, store, with_client, Random};
use pipe::monitor::check::{check_id, CheckError, CheckResult, ErrorKind, Timings, SCHEMA_VERSION};
use serde_json::Value;

const STATED_ERROR: f64 = 0.0433;

fn check(target: &str, slot: SystemTime, ms: f64, status: Option<u16>) -> CheckResult {
    let up = status.is_some_and(|s| s < 400);
    CheckResult {
        schema_version: SCHEMA_VERSION,
        check_id: check_id(target, slot),
        target: target.into(),
        url: format!("https://{target}.example/"),
        method: "GET".into(),
        scheduled_at: slot,
        started_at: slot,
        response_time_ms: ms,
        timings_ms: Timings::default(),
        status_code: status,
        error: status.is_none().then(|| CheckError {
            kind: ErrorKind::Timeout,
            message: "no complete response within 10s".into(),
        }),
        regex: None,
        regex_matched: None,
        latency_class: None,
        up,
        body_bytes: None,
        remote_addr: None,
        http_version: None,
        tls: None,
        region: None,
        checker: None,
        captures: None,
        probe_fault: false,
    }
}

/// Two days of checks every 5 minutes, up to `until`, of four targets: one steady, one with a
/// 30-minute outage, one with a slow afternoon, one flaky and down at the end.
fn two_days(until: SystemTime) -> Vec<CheckResult> {
    let mut random = Random(7);
    let start = until - Duration::from_secs(2 * 86_400);
    let mut checks = Vec::new();
    for slot in 0..576u64 {
        let at = start + Duration::from_secs(slot * 300);
        let jitter = random.unit();
        // Its checker's network down for its last three slots: probe faults, which say
        // nothing of it.
        checks.push(if slot >= 573 {
            CheckResult {
                probe_fault: true,
                error: Some(CheckError {
                    kind: ErrorKind::Connect,
                    message: "Failed to connect to steady.example port 443".into(),
                }),
                ..check("steady", at, 0.5, None)
            }
        } else {
            check("steady", at, 40.0 + 20.0 * jitter, Some(200))
        });
        let outage = (300..306).contains(&slot);
        checks.push(if outage {
            check("outage", at, 10_000.0, None)
        } else {
            check("outage", at, 90.0 + 30.0 * jitter, Some(200))
        });
        let slow = (400..424).contains(&slot);
        checks.push(check(
            "slow",
            at,
            if slow {
                2500.0 + 500.0 * jitter
            } else {
                120.0 + 10.0 * jitter
            },
            Some(200),
        ));
        let down = slot % 37 == 5 || slot >= 572;
        checks.push(check(
            "flaky",
            at,
            60.0 + 40.0 * jitter,
            Some(if down { 503 } else { 200 }),
        ));
    }
    checks
}

fn pipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn success(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A report database: the two days stored through the sink; returns it with `until`.
async fn report_database() -> (support::TestDatabase, SystemTime) {
    let db = tokio::task::spawn_blocking(|| support::create_database("report"))
        .await
        .unwrap();
    let until = day_start(0);
    store(&db.url, two_days(until), "batch_size: 500\n").await;
    (db, until)
}

fn range_args(url: &str, until: SystemTime) -> Vec<String> {
    let until = pipe::monitor::check::rfc3339_millis::format(until);
    [
        "report",
        "--database-url",
        url,
        "--since",
        "2d",
        "--until",
        &until,
    ]
    .map(String::from)
    .to_vec()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Figures of the raw checks between `since` and `until`, per target, probe faults left out:
/// checks, up checks and the exact p95 (percentile_disc) of those that got a response.
async fn raw_figures(
    url: &str,
    since: SystemTime,
    until: SystemTime,
) -> BTreeMap<String, (i64, i64, f64)> {
    with_client(url, move |client| {
        client
            .query(
                "SELECT target, count(*), count(*) FILTER (WHERE up),
                        (percentile_disc(0.95) WITHIN GROUP (ORDER BY response_time_ms)
                             FILTER (WHERE status_code IS NOT NULL))::float8
                 FROM check_results
                 WHERE checked_at >= $1 AND checked_at < $2 AND NOT probe_fault GROUP BY 1",
                &[&since, &until],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect()
    })
    .await
}

#[tokio::test]
async fn json_and_table_give_the_raw_checks_figures_worst_first() {
    let (db, until) = report_database().await;
    let args = range_args(&db.url, until);
    let mut json_args = as_strs(&args);
    json_args.extend(["--format", "json"]);
    let report: Value = serde_json::from_str(&success(pipe(&json_args))).unwrap();
    assert_eq!(report["bucket"], "hour", "two days are reported in hours");
    let raw = raw_figures(&db.url, until - Duration::from_secs(2 * 86_400), until).await;
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 4);
    for target in targets {
        let name = target["target"].as_str().unwrap();
        let (checks, up, p95) = raw[name];
        println!(
            "{name}: {checks} checks, {up} up, p95 {p95:.1} ms exact, {} from the rollups",
            target["p95_ms"]
        );
        assert_eq!(target["checks"], checks, "{name}");
        assert_eq!(target["up_checks"], up, "{name}");
        let uptime = target["uptime_pct"].as_f64().unwrap();
        assert!((uptime - up as f64 * 100.0 / checks as f64).abs() < 1e-9);
        let from_rollups = target["p95_ms"].as_f64().unwrap();
        assert!(
            (from_rollups - p95).abs() / p95 <= STATED_ERROR,
            "{name}: p95 {from_rollups} against {p95}"
        );
        assert_eq!(target["series"].as_array().unwrap().len(), 48, "{name}");
    }
    let by_name: BTreeMap<&str, &Value> = targets
        .iter()
        .map(|t| (t["target"].as_str().unwrap(), t))
        .collect();
    let outage = &by_name["outage"]["incidents"][0];
    assert_eq!(by_name["outage"]["incidents"].as_array().unwrap().len(), 1);
    assert_eq!(outage["cause"], "timeout");
    assert_eq!(outage["duration_s"], 1800.0, "six checks 5 minutes apart");
    assert_eq!(by_name["outage"]["downtime_s"], 1800.0);
    let flaky = by_name["flaky"]["incidents"].as_array().unwrap();
    assert_eq!(flaky.len(), 1, "single 503s make no incident");
    assert!(flaky[0]["ended_at"].is_null(), "still open at the end");
    assert_eq!(flaky[0]["cause"], "http_503");
    assert!(by_name["steady"]["incidents"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(
        by_name["slow"]["p99_ms"].as_f64().unwrap() > 2000.0,
        "the slow afternoon shows at p99"
    );
    // The probe faults: counted apart, in no incident (three in a row would be one), and
    // not the last check shown.
    let faults = with_client(&db.url, |client| {
        client
            .query_one(
                "SELECT count(*) FROM check_results WHERE target = 'steady' AND probe_fault",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
    })
    .await;
    assert_eq!(faults, 3);
    assert_eq!(by_name["steady"]["probe_faults"], faults);
    assert_eq!(by_name["steady"]["last"]["up"], true);
    assert_eq!(by_name["steady"]["last"]["status_code"], 200);
    for name in ["outage", "slow", "flaky"] {
        assert_eq!(by_name[name]["probe_faults"], 0, "{name}");
    }
    assert_eq!(by_name["flaky"]["last"]["up"], false);
    assert_eq!(by_name["flaky"]["last"]["status_code"], 503);
    // Worst first.
    let order: Vec<&str> = targets
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(order[0], "flaky");

    let table = success(pipe(&as_strs(&args)));
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.iter().all(|l| l.chars().count() <= 100));
    assert!(!table.contains('\x1b'), "NO_COLOR: no colour");
    let rows: Vec<&str> = lines[2..].to_vec();
    assert_eq!(rows.len(), 4);
    for (row, target) in rows.iter().zip(targets) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], target["target"].as_str().unwrap(), "same order");
        assert_eq!(cells[1], target["checks"].to_string());
        let mut uptime = format!("{:.2}%", target["uptime_pct"].as_f64().unwrap());
        if uptime == "100.00%" && target["up_checks"] != target["checks"] {
            uptime = "99.99%".into();
        }
        assert_eq!(cells[2], uptime);
        assert_eq!(
            cells[3],
            target["global_incidents"]
                .as_array()
                .unwrap()
                .len()
                .to_string()
        );
        assert_eq!(
            cells[4],
            target["incidents"].as_array().unwrap().len().to_string()
        );
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("PIPE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: this test needs Debian's chromium package; run the tests with scripts/test, which installs it",
        path.display()
    );
    path
}

/// What headless Chromium made of a page: its DOM after scripts ran, its console messages,
/// and the network requests made on its behalf.
struct Rendered {
    dom: String,
    console: Vec<String>,
    requests: Vec<String>,
}

fn render(page: &Path, screenshot: Option<&Path>) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let net_log = dir.path().join("net.json");
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    command.arg(format!(
        "--user-data-dir={}",
        dir.path().join("profile").display()
    ));
    command.arg(format!("--log-net-log={}", net_log.display()));
    match screenshot {
        Some(file) => {
            command.arg(format!("--screenshot={}", file.display()));
            command.arg("--window-size=1000,1700");
        }
        None => {
            command.arg("--dump-dom");
        }
    }
    command.arg(format!("file://{}", page.display()));
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    // Requests made for the page carry its origin (file://) in their network isolation key;
    // the browser's own (component updates) do not.
    let log: Value = serde_json::from_slice(&std::fs::read(&net_log).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    let requests = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == start_job)
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("file://"))
        })
        .map(|e| e["params"]["url"].as_str().unwrap_or_default().to_owned())
        .collect();
    Rendered {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        console,
        requests,
    }
}

#[test]
fn the_browser_check_sees_console_errors_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!doctype html><img src=\"http://192.0.2.1/x.png\"><script>console.error('seen')</script>",
    )
    .unwrap();
    let rendered = render(&page, None);
    assert!(
        rendered.console.iter().any(|l| l.contains("seen")),
        "{:?}",
        rendered.console
    );
    assert_eq!(rendered.requests, ["http://192.0.2.1/x.png"]);
}

/// The value of `attribute` in an element's start tag.
fn attribute<'a>(tag: &'a str, attribute: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {attribute}=\""))? + attribute.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

#[tokio::test]
async fn the_html_page_draws_every_target_offline_with_the_json_figures() {
    let (db, until) = report_database().await;
    let args = range_args(&db.url, until);
    let mut json_args = as_strs(&args);
    json_args.extend(["--format", "json"]);
    let report: Value = serde_json::from_str(&success(pipe(&json_args))).unwrap();

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../report");
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    let page = out.join("report.html");
    let mut html_args = as_strs(&args);
    let page_arg = page.to_str().unwrap().to_owned();
    html_args.extend(["--format", "html", "--output", &page_arg]);
    success(pipe(&html_args));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no address to fetch"
    );

    let rendered = render(&page, None);
    assert!(
        rendered.console.is_empty(),
        "console: {:?}",
        rendered.console
    );
    assert!(
        rendered.requests.is_empty(),
        "requests: {:?}",
        rendered.requests
    );
    let dom = &rendered.dom;
    assert!(
        dom.contains("data-ready=\"yes\""),
        "the page's script ran to its end"
    );
    assert!(dom.contains("data-sections=\"4\""));

    let sections: Vec<&str> = dom.split("<section ").skip(1).collect();
    assert_eq!(sections.len(), 4, "one section per target");
    let targets = report["targets"].as_array().unwrap();
    for (section, target) in sections.iter().zip(targets) {
        let tag = &section[..section.find('>').unwrap()];
        let name = target["target"].as_str().unwrap();
        assert_eq!(attribute(tag, "data-target"), Some(name));
        for (attr, field) in [
            ("data-checks", "checks"),
            ("data-up-checks", "up_checks"),
            ("data-uptime-pct", "uptime_pct"),
            ("data-downtime-s", "downtime_s"),
            ("data-p50-ms", "p50_ms"),
            ("data-p95-ms", "p95_ms"),
            ("data-p99-ms", "p99_ms"),
            ("data-probe-faults", "probe_faults"),
        ] {
            // The same number: serde_json's reader may land one unit in the last place off
            // the shortest form both writers use.
            let shown = attribute(tag, attr).unwrap();
            match target[field].as_f64() {
                Some(expected) => {
                    let shown: f64 = shown.parse().unwrap();
                    assert!(
                        (shown - expected).abs() <= expected.abs() * 1e-12,
                        "{name}: {attr} {shown} against {expected}"
                    );
                }
                None => assert_eq!(shown, "null", "{name}: {attr}"),
            }
        }
        let incidents = target["incidents"].as_array().unwrap();
        assert_eq!(
            section.matches("<tr class=\"incident\"").count(),
            incidents.len()
        );
        for incident in incidents {
            assert!(section.contains(&format!(
                "data-duration-s=\"{}\" data-cause=\"{}\"",
                incident["duration_s"],
                incident["cause"].as_str().unwrap()
            )));
        }
        // Drawn: a p50 and a p95 line of a point per bucket, and a bar per bucket.
        let buckets = target["series"].as_array().unwrap().len();
        for line in ["p50", "p95"] {
            let at = section
                .find(&format!("<polyline class=\"{line}\" points=\""))
                .unwrap();
            let points = attribute(&section[at..], "points").unwrap();
            assert_eq!(points.split_whitespace().count(), buckets, "{name} {line}");
        }
        assert_eq!(
            section.matches("<rect class=\"b-").count(),
            buckets,
            "{name}"
        );
    }

    let screenshot = out.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = render(&page, Some(&screenshot));
    assert!(shot.console.is_empty() && shot.requests.is_empty());
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot of a drawn page"
    );
    println!(
        "report: {} ({} bytes), screenshot: {} ({} bytes)",
        page.display(),
        html.len(),
        screenshot.display(),
        png.len()
    );
}

#[tokio::test]
async fn errors_name_the_target_the_range_or_the_database_without_its_password() {
    let (db, until) = report_database().await;
    let mut args = range_args(&db.url, until);
    args.extend(["--target", "stedy", "--target", "flaky"].map(String::from));
    let output = pipe(&as_strs(&args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown target `stedy` (closest: `steady`)"),
        "{stderr}"
    );

    let old = pipe(&[
        "report",
        "--database-url",
        &db.url,
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "2020-01-08T00:00:00Z",
    ]);
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success());
    assert!(
        stderr.contains("no checks in the range; the rollups hold"),
        "{stderr}"
    );

    let empty = tokio::task::spawn_blocking(|| support::create_database("unmigrated"))
        .await
        .unwrap();
    let bare = pipe(&["report", "--database-url", &empty.url]);
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success());
    assert!(stderr.contains("run `pipe migrate`"), "{stderr}");

    let away = pipe(&[
        "report",
        "--database-url",
        "postgres://reader:hunter22@127.0.0.1:1/pipe?connect_timeout=2",
    ]);
    let stderr = String::from_utf8_lossy(&away.stderr);
    assert!(!away.status.success());
    assert!(stderr.contains("cannot reach the database"), "{stderr}");
    assert!(!stderr.contains("hunter22"), "{stderr}");

    // One target, as asked.
    let mut one = range_args(&db.url, until);
    one.extend(["--target", "steady", "--format", "json"].map(String::from));
    let report: Value = serde_json::from_str(&success(pipe(&as_strs(&one)))).unwrap();
    assert_eq!(report["targets"].as_array().unwrap().len(), 1);
    assert_eq!(report["targets"][0]["target"], "steady");
}

#[tokio::test]
async fn a_page_of_100_targets_over_30_days_is_under_1_mb() {
    let db = tokio::task::spawn_blocking(|| support::create_database("report_size"))
        .await
        .unwrap();
    with_client(&db.url, |client| {
        pipe::monitor::migrate::apply(client).unwrap();
        client
            .batch_execute(
                "INSERT INTO targets (name, url, method)
                 SELECT 'service-number-' || i, 'https://s' || i || '.example/', 'GET'
                 FROM generate_series(1, 100) i;
                 INSERT INTO rollups_daily (target_id, bucket, checks, up_checks, down_timeout,
                                            responses, latency_histogram)
                 SELECT t, d, 2880, 2880 - (t * extract(doy FROM d)::int) % 7,
                        (t * extract(doy FROM d)::int) % 7, 2880,
                        ('[40:63]={' || array_to_string(array_fill(120, ARRAY[24]), ',') || '}')::int[]
                 FROM generate_series(1, 100) t,
                      generate_series(date_trunc('day', now(), 'UTC') - interval '30 days',
                                      date_trunc('day', now(), 'UTC') - interval '1 day',
                                      interval '1 day') d;
                 INSERT INTO target_incidents (target_id, region_id, started_at, confirmed_at,
                                               ended_at, closed_at, failed_checks, cause)
                 SELECT t, 0, now() - k * interval '1 day', now() - k * interval '1 day',
                        now() - k * interval '1 day' + interval '5 minutes',
                        now() - k * interval '1 day' + interval '5 minutes', 10, 'timeout'
                 FROM generate_series(1, 100) t, generate_series(1, 5) k;",
            )
            .unwrap();
    })
    .await;
    let html = success(pipe(&[
        "report",
        "--database-url",
        &db.url,
        "--since",
        "30d",
        "--format",
        "html",
    ]));
    println!("100 targets over 30 days: {} bytes of HTML", html.len());
    assert_eq!(html.matches("<section class=\"target\"").count(), 100);
    assert!(html.len() < 1_000_000, "{} bytes", html.len());
}
