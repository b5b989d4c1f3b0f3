//! Answers from the rollups (migration 3): availability and p95 for 1,000 targets over 30 days,
//! and that the time does not grow with the raw checks. Needs the local PostgreSQL: run it
//! through `scripts/bench-writer`, or with `DATABASE_URL` set.
//!
//! ```sh
//! cargo bench --bench history -- query [--targets 1000] [--days 30]
//! cargo bench --bench history -- report [--targets 1000] [--days 30]
//! ```

use std::time::{Duration, Instant};

fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL: run this through scripts/bench-writer")
}

/// A fresh, migrated database; returns its URL.
fn fresh_database(name: &str) -> String {
    let admin = admin_url();
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    pipe::monitor::migrate::apply(&mut client).unwrap();
    url
}

/// Rollups as a writer leaves them for `targets` targets over `days` days before now: every
/// hour 120 checks, about 1% down, response times around 80–400 ms in a histogram of 16–24
/// buckets; and the daily rows that sum them.
fn generate_rollups(client: &mut postgres::Client, targets: i32, days: i32) {
    client
        .batch_execute(&format!(
            "INSERT INTO targets (name, url, method)
             SELECT 'site-' || i, 'https://site-' || i || '.example.com/', 'GET'
             FROM generate_series(1, {targets}) i;
             INSERT INTO rollups_hourly (target_id, bucket, checks, up_checks, down_timeout,
                                         responses, response_time_sum_us, response_time_min_us,
                                         response_time_max_us, latency_histogram)
             SELECT t, h, 120, 120 - d, d, 120 - d, (120 - d) * 150000, 80000, 400000,
                    ('[' || lo || ':' || lo + w - 1 || ']={{' ||
                     array_to_string(ARRAY(SELECT (random() * 12)::int FROM generate_series(1, w)), ',')
                     || '}}')::int[]
             FROM generate_series(1, {targets}) t,
                  generate_series(date_trunc('hour', now(), 'UTC') - interval '{days} days',
                                  date_trunc('hour', now(), 'UTC') - interval '1 hour',
                                  interval '1 hour') h,
                  LATERAL (SELECT (random() < 0.3)::int * (random() * 6)::int AS d,
                                  48 + (random() * 6)::int AS lo,
                                  16 + (random() * 8)::int AS w, t AS again) x;
             INSERT INTO rollups_daily
             SELECT target_id, date_trunc('day', bucket, 'UTC'), sum(checks), sum(up_checks),
                    sum(down_timeout), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    sum(responses), sum(response_time_sum_us), min(response_time_min_us),
                    max(response_time_max_us), pipe_histogram_sum(latency_histogram)
             FROM rollups_hourly GROUP BY 1, 2;"
        ))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();
}

/// Raw checks for every target, `slots` slots 30 s apart ending a day ago (so they do not
/// change the last 30 days' rollups); days of partitions created as needed.
fn add_raw_checks(client: &mut postgres::Client, targets: i32, slots: i32, offset: i32) {
    let first: std::time::SystemTime = client
        .query_one(
            "SELECT date_trunc('day', now(), 'UTC') - interval '40 days' + $1::int4 * interval '30 s'",
            &[&offset],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT pipe_ensure_check_partition(d::date)
             FROM generate_series($1::timestamptz AT TIME ZONE 'UTC',
                                  ($1::timestamptz + $2::int4 * interval '30 s') AT TIME ZONE 'UTC',
                                  interval '1 day') d",
            &[&first, &slots],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO checks (checked_at, target_id, start_delay_ms, response_time_us, up,
                                 status_code)
             SELECT $1::timestamptz + s * interval '30 s', t, 1, 100000 + (t * 7919 + s) % 300000,
                    true, 200
             FROM generate_series(0, $2::int4 - 1) s, generate_series(1, $3::int4) t",
            &[&first, &slots, &targets],
        )
        .unwrap();
    client.batch_execute("VACUUM ANALYZE checks").unwrap();
}

const AVAILABILITY_AND_P95: &str = "\
SELECT target, sum(checks) AS checks, sum(up_checks)::float8 / sum(checks) AS availability,
       pipe_histogram_quantile(pipe_histogram_sum(latency_histogram), 0.95) AS p95_ms
FROM availability_daily
WHERE bucket >= date_trunc('day', now(), 'UTC') - interval '30 days'
GROUP BY target";

/// The best of three runs of the query, and its row count.
fn time_query(client: &mut postgres::Client) -> (Duration, usize) {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let rows = client.query(AVAILABILITY_AND_P95, &[]).unwrap().len();
            (started.elapsed(), rows)
        })
        .min()
        .unwrap()
}

fn query_mode(targets: i32, days: i32) {
    let url = fresh_database("bench_history");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let started = Instant::now();
    generate_rollups(&mut client, targets, days);
    println!(
        "generated {targets} targets x {days} days of rollups in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let raw = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM checks", &[])
            .unwrap()
            .get(0)
    };
    let mut offset = 0;
    for round in 0..3 {
        let (elapsed, rows) = time_query(&mut client);
        println!(
            "availability and p95 of {rows} targets over {days} days: {:.0} ms (best of 3), with {} raw checks",
            elapsed.as_secs_f64() * 1000.0,
            raw(&mut client)
        );
        if round < 2 {
            let slots = 2880; // a day of checks every 30 s
            add_raw_checks(&mut client, targets, slots, offset);
            offset += slots;
        }
    }
}

/// `pipe report` over the generated rollups, in each format: the whole command, best of 3.
fn report_mode(targets: i32, days: i32) {
    let url = fresh_database("bench_report");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    generate_rollups(&mut client, targets, days);
    // Five incidents a target, and a day of raw checks for each one's last result.
    client
        .batch_execute(&format!(
            "INSERT INTO target_incidents (target_id, region_id, started_at, confirmed_at,
                                           ended_at, closed_at, failed_checks, cause)
             SELECT t, 0, now() - k * interval '5 days', now() - k * interval '5 days',
                    now() - k * interval '5 days' + interval '12 minutes',
                    now() - k * interval '5 days' + interval '12 minutes', 24, 'timeout'
             FROM generate_series(1, {targets}) t, generate_series(1, 5) k"
        ))
        .unwrap();
    let first: std::time::SystemTime = client
        .query_one("SELECT now() - interval '1 day'", &[])
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT pipe_ensure_check_partition(d::date)
             FROM generate_series(($1::timestamptz - interval '1 day') AT TIME ZONE 'UTC',
                                  (now() + interval '1 day') AT TIME ZONE 'UTC', interval '1 day') d",
            &[&first],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO checks (checked_at, target_id, start_delay_ms, response_time_us, up,
                                 status_code)
             SELECT $1::timestamptz + s * interval '30 s', t, 1, 120000, true, 200
             FROM generate_series(0, 2879) s, generate_series(1, $2::int4) t",
            &[&first, &targets],
        )
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in ["table", "json", "html"] {
        let file = dir.path().join(format!("report.{format}"));
        let runs: Vec<Duration> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let status = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
                    .args([
                        "report",
                        "--database-url",
                        &url,
                        "--since",
                        &format!("{days}d"),
                    ])
                    .args(["--format", format, "--output", file.to_str().unwrap()])
                    .args(["--log-level", "warn"])
                    .status()
                    .unwrap();
                assert!(status.success());
                started.elapsed()
            })
            .collect();
        let size = std::fs::metadata(&file).unwrap().len();
        println!(
            "pipe report, {targets} targets over {days} days, {format}: {:.0} ms (best of 3; {size} bytes)",
            runs.iter().min().unwrap().as_secs_f64() * 1000.0
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let number = |flag: &str, default: i32| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().unwrap())
    };
    match args.first().map(String::as_str) {
        Some("query") => query_mode(number("--targets", 1000), number("--days", 30)),
        Some("report") => report_mode(number("--targets", 1000), number("--days", 30)),
        _ => {
            eprintln!("usage: history query|report [--targets N] [--days N]");
            std::process::exit(2);
        }
    }
}
