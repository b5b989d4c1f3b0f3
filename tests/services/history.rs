//! History in PostgreSQL (migration 3): rollups equal a recomputation from the raw checks,
//! quantiles from merged histograms stay within the stated error, incidents follow scripted
//! sequences whatever the batching, and `pipe rollups rebuild` gives the same answers.
//! Needs the local PostgreSQL (`scripts/test`).

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::support::history::{
    day_start, replayed_incidents, rollup_differences, store, stored_incidents, with_client, Random,
};
use pipe::monitor::check::{check_id, CheckError, CheckResult, ErrorKind, Timings, SCHEMA_VERSION};
use pipe::monitor::history::incidents::{Incident, Thresholds};

/// The relative error the histograms promise: (γ-1)/(γ+1) with γ = 2^(1/8).
const STATED_ERROR: f64 = 0.0433;

const DEFAULT: Thresholds = Thresholds {
    down_after: 3,
    up_after: 1,
    down_regions: 1,
};

async fn fresh_database(prefix: &'static str) -> support::TestDatabase {
    tokio::task::spawn_blocking(move || support::create_database(prefix))
        .await
        .unwrap()
}

/// What a check of the scripts below says.
#[derive(Clone, Copy, Debug)]
enum Says {
    Up(f64),
    Timeout,
    Status(u16),
    Mismatch,
    /// Refused while the checker's canaries did not answer either.
    ProbeFault,
}

fn check(target: &str, slot: SystemTime, says: Says) -> CheckResult {
    let (status, error, regex_matched, up, ms) = match says {
        Says::Up(ms) => (Some(200), None, Some(true), true, ms),
        Says::Timeout => (
            None,
            Some(CheckError {
                kind: ErrorKind::Timeout,
                message: "no complete response within 10s".into(),
            }),
            None,
            false,
            10_000.0,
        ),
        Says::Status(code) => (Some(code), None, None, false, 35.5),
        Says::Mismatch => (Some(200), None, Some(false), false, 41.25),
        Says::ProbeFault => (
            None,
            Some(CheckError {
                kind: ErrorKind::Connect,
                message: "Failed to connect to site port 443".into(),
            }),
            None,
            false,
            0.75,
        ),
    };
    let responded = status.is_some();
    CheckResult {
        schema_version: SCHEMA_VERSION,
        check_id: check_id(target, slot),
        target: target.into(),
        url: format!("https://{target}.example/"),
        method: "GET".into(),
        scheduled_at: slot,
        started_at: slot + Duration::from_millis(1),
        response_time_ms: ms,
        timings_ms: if responded {
            Timings {
                dns: Some(0.5),
                connect: Some(1.0),
                tls: Some(2.0),
                first_byte: Some(ms - 4.0_f64.min(ms / 2.0)),
                transfer: Some(0.25),
            }
        } else {
            Timings::default()
        },
        status_code: status,
        error,
        regex: Some("Welcome".into()),
        regex_matched,
        latency_class: None,
        up,
        body_bytes: responded.then_some(2048),
        remote_addr: responded.then(|| "192.0.2.10:443".into()),
        http_version: responded.then(|| "HTTP/2".into()),
        tls: None,
        region: None,
        checker: None,
        captures: None,
        probe_fault: matches!(says, Says::ProbeFault),
    }
}

/// Three days of checks of 6 targets every 5 minutes: response times spread log-uniformly
/// over 0.3 ms–90 s, and failures of every kind the rollups count.
fn three_days() -> Vec<CheckResult> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let start = day_start(2);
    let mut checks = Vec::new();
    for slot in 0..(3 * 288) {
        let at = start + Duration::from_secs(slot * 300);
        for t in 0..6 {
            let roll = random.unit();
            let says = match roll {
                r if r < 0.01 => Says::ProbeFault,
                r if r < 0.03 => Says::Timeout,
                r if r < 0.05 => Says::Status(503),
                r if r < 0.06 => Says::Status(404),
                r if r < 0.065 => Says::Status(301),
                r if r < 0.08 => Says::Mismatch,
                _ => Says::Up(0.3 * (300_000.0_f64).powf(random.unit())),
            };
            checks.push(check(&format!("site-{t}"), at, says));
        }
    }
    checks
}

#[tokio::test]
async fn rollups_equal_the_raw_checks_after_duplicates_and_late_checks() {
    let db = fresh_database("rollups").await;
    let checks = three_days();
    let n = checks.len();
    // In slot order, but the first day's checks after the rest (late), and a tenth of all
    // again (duplicates), in batches written two at a time.
    let day = n / 3;
    let mut order: Vec<CheckResult> = checks[day..].to_vec();
    order.extend_from_slice(&checks[..day]);
    order.extend(checks.iter().step_by(10).cloned());
    store(&db.url, order, "batch_size: 200\n").await;

    let faults = checks.iter().filter(|c| c.probe_fault).count() as i64;
    let (stored, shown_faults, hourly, daily, incidents, replayed) =
        with_client(&db.url, |client| {
            let stored: i64 = client
                .query_one("SELECT count(*) FROM checks", &[])
                .unwrap()
                .get(0);
            // The view shows the probe faults; the daily rollups count them apart.
            let shown: (i64, i64) = client
                .query_one(
                    "SELECT (SELECT count(*) FROM check_results WHERE probe_fault),
                        (SELECT sum(probe_faults) FROM rollups_daily)",
                    &[],
                )
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
            (
                stored,
                shown,
                rollup_differences(client, "rollups_hourly", "hour"),
                rollup_differences(client, "rollups_daily", "day"),
                stored_incidents(client),
                replayed_incidents(client, DEFAULT),
            )
        })
        .await;
    println!(
        "stored {stored} of {n}; hourly rows {} ({} differ), daily rows {} ({} differ); {} series with incidents",
        hourly.1, hourly.0, daily.1, daily.0, incidents.len()
    );
    assert_eq!(stored, n as i64, "every check once");
    println!("probe faults: {faults} made, {shown_faults:?} in check_results and rollups_daily");
    assert!(faults > 0);
    assert_eq!(shown_faults, (faults, faults));
    assert_eq!(hourly, (0, 72 * 6), "hourly rollups equal the raw checks");
    assert_eq!(daily, (0, 3 * 6), "daily rollups equal the raw checks");
    assert_eq!(
        incidents, replayed,
        "incidents equal a replay in slot order"
    );
}

#[tokio::test]
async fn quantiles_of_merged_histograms_are_within_the_stated_error_of_percentile_disc() {
    let db = fresh_database("quantiles").await;
    store(&db.url, three_days(), "batch_size: 500\n").await;
    let rows = with_client(&db.url, |client| {
        client
            .query(
                "WITH merged AS (
                     SELECT target_id, pipe_histogram_sum(latency_histogram) AS h
                     FROM rollups_daily GROUP BY 1),
                 exact AS (
                     SELECT target_id, q,
                            percentile_disc(q) WITHIN GROUP (ORDER BY response_time_us) / 1000.0
                                AS ms
                     FROM checks, unnest(ARRAY[0.5, 0.95, 0.99]::float8[]) AS q
                     WHERE status_code IS NOT NULL GROUP BY 1, 2),
                 hourly AS (
                     SELECT target_id, pipe_histogram_sum(latency_histogram) AS h
                     FROM rollups_hourly GROUP BY 1)
                 SELECT e.target_id, e.q, e.ms::float8,
                        pipe_histogram_quantile(m.h, e.q), pipe_histogram_quantile(h.h, e.q)
                 FROM exact e JOIN merged m USING (target_id) JOIN hourly h USING (target_id)
                 ORDER BY 1, 2",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0),
                    r.get::<_, f64>(1),
                    r.get::<_, f64>(2),
                    r.get::<_, f64>(3),
                    r.get::<_, f64>(4),
                )
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(rows.len(), 6 * 3);
    let mut worst = 0.0_f64;
    for (target, q, exact, from_days, from_hours) in &rows {
        let error = (from_days - exact).abs() / exact;
        worst = worst.max(error);
        println!("target {target} q{q}: exact {exact:.3} ms, from 3 days {from_days:.3} ms ({:.2}%), from 72 hours {from_hours:.3} ms", error * 100.0);
        assert!(
            error <= STATED_ERROR,
            "target {target} q{q}: {from_days} against {exact}"
        );
        assert_eq!(from_days, from_hours, "merging hours or days is the same");
    }
    println!("worst relative error {:.2}%", worst * 100.0);
}

/// Slots every 30 s from `start`, one check per character: `.` up, `t` timeout, `5` HTTP 503,
/// `r` regex mismatch, `p` probe fault.
fn scripted(target: &str, start: SystemTime, script: &str) -> Vec<CheckResult> {
    script
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let says = match c {
                '.' => Says::Up(20.0),
                't' => Says::Timeout,
                '5' => Says::Status(503),
                'r' => Says::Mismatch,
                'p' => Says::ProbeFault,
                other => panic!("no such check: {other}"),
            };
            check(target, start + Duration::from_secs(30 * i as u64), says)
        })
        .collect()
}

fn slot(start: SystemTime, i: u64) -> SystemTime {
    start + Duration::from_secs(30 * i)
}

/// The scripts, and the incidents each must give with the default thresholds.
fn scripts() -> (Vec<CheckResult>, BTreeMap<String, Vec<Incident>>) {
    let today = day_start(0) - Duration::from_secs(3600);
    // Three minutes before midnight, so the outage runs across it.
    let late_evening = day_start(0) - Duration::from_secs(180);
    let incident = |start, s: u64, c: u64, e: Option<u64>, failed, cause: &str| Incident {
        started_at: slot(start, s),
        confirmed_at: slot(start, c),
        ended_at: e.map(|e| slot(start, e)),
        closed_at: e.map(|e| slot(start, e)),
        failed_checks: failed,
        cause: cause.into(),
    };
    let cases = [
        // Flapping: never three failures in a row, no incident; then three, one.
        (
            "flapping",
            today,
            "..t.tt.t.tt.5.r..t5r..",
            vec![incident(today, 17, 19, Some(20), 3, "timeout")],
        ),
        // Across midnight: 20 failures from 23:57.
        (
            "midnight",
            late_evening,
            "5555555555tttttttttt...",
            vec![incident(late_evening, 0, 2, Some(20), 20, "http_503")],
        ),
        // The checker's own network down: probe faults neither fail nor heal a target, so
        // five of them are no incident, and three timeouts around three of them are one.
        ("network", today, "....ppppp....", vec![]),
        (
            "around-network",
            today,
            "..ttpppt..",
            vec![incident(today, 2, 7, Some(8), 3, "timeout")],
        ),
        // Still down at the end.
        (
            "open",
            today,
            "....rrrrr",
            vec![incident(today, 4, 6, None, 5, "regex_mismatch")],
        ),
    ];
    let mut checks = Vec::new();
    let mut expected = BTreeMap::new();
    for (name, start, script, incidents) in cases {
        checks.extend(scripted(name, start, script));
        expected.insert(name.to_owned(), incidents);
    }
    (checks, expected)
}

async fn incidents_by_target(url: &str) -> BTreeMap<String, Vec<Incident>> {
    with_client(url, |client| {
        let names: BTreeMap<i32, String> = client
            .query("SELECT id, name FROM targets", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        stored_incidents(client)
            .into_iter()
            .map(|((target, _), incidents)| (names[&target].clone(), incidents))
            .collect()
    })
    .await
}

#[tokio::test]
async fn incidents_follow_scripted_sequences_whatever_the_batches_order_and_redelivery() {
    let (checks, mut expected) = scripts();
    expected.retain(|_, incidents| !incidents.is_empty());

    // In order, one batch.
    let whole = fresh_database("incidents").await;
    store(&whole.url, checks.clone(), "batch_size: 1000\n").await;
    assert_eq!(
        incidents_by_target(&whole.url).await,
        expected,
        "in one batch"
    );

    // One check per batch, in a shuffled order, each sent twice, in three separate runs (as
    // three writers one after the other), two batches in flight at once.
    let shuffled = fresh_database("incidents").await;
    let mut order = checks.clone();
    let mut random = Random(42);
    for i in (1..order.len()).rev() {
        order.swap(i, (random.next() % (i as u64 + 1)) as usize);
    }
    let mut redelivered = order.clone();
    redelivered.extend(order.iter().rev().cloned());
    for part in redelivered.chunks(redelivered.len() / 3 + 1) {
        store(&shuffled.url, part.to_vec(), "batch_size: 1\n").await;
    }
    assert_eq!(
        incidents_by_target(&shuffled.url).await,
        expected,
        "shuffled, one check a batch, redelivered"
    );

    // A check of long ago arriving after everything: it is stored, and changes nothing.
    let old = scripted("open", day_start(0) - Duration::from_secs(7200), "t");
    store(&whole.url, old, "").await;
    assert_eq!(
        incidents_by_target(&whole.url).await,
        expected,
        "an old failure alone"
    );
    // One that does: the missing failure between two makes three in a row.
    let start = day_start(0) - Duration::from_secs(5400);
    let mut first = scripted("gaps", start, "..tt..");
    first.remove(4);
    store(&whole.url, first, "").await;
    assert!(!incidents_by_target(&whole.url).await.contains_key("gaps"));
    let late = scripted("gaps", start, "..ttt.").remove(4);
    store(&whole.url, vec![late], "").await;
    let found = incidents_by_target(&whole.url).await;
    assert_eq!(
        found.get("gaps").map(Vec::as_slice),
        Some(
            &[Incident {
                started_at: slot(start, 2),
                confirmed_at: slot(start, 4),
                ended_at: Some(slot(start, 5)),
                closed_at: Some(slot(start, 5)),
                failed_checks: 3,
                cause: "timeout".into(),
            }][..]
        ),
        "a late failure between two is replayed in slot order"
    );
}

fn rebuild(url: &str, args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["rollups", "rebuild", "--database-url", url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Rows of `table` not in `snapshot`, and the other way round.
fn differences(client: &mut postgres::Client, table: &str, snapshot: &str) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM ((TABLE {table} EXCEPT ALL TABLE {snapshot})
                                       UNION ALL (TABLE {snapshot} EXCEPT ALL TABLE {table})) d"
            ),
            &[],
        )
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_rebuild_gives_what_the_writer_kept_idempotently_and_from_a_date() {
    let db = fresh_database("rebuild").await;
    let (mut checks, _) = scripts();
    checks.extend(three_days());
    store(
        &db.url,
        checks,
        "batch_size: 300
",
    )
    .await;
    const TABLES: [&str; 3] = ["rollups_hourly", "rollups_daily", "target_incidents"];
    let url = db.url.clone();
    let figures = with_client(&db.url, move |client| {
        for table in TABLES {
            client
                .batch_execute(&format!("CREATE TABLE kept_{table} AS TABLE {table}"))
                .unwrap();
        }
        // As after an upgrade from migration 2: raw checks only.
        client
            .batch_execute(
                "TRUNCATE rollups_hourly, rollups_daily, target_incidents, incident_state",
            )
            .unwrap();
        let mut figures = Vec::new();
        for args in [&[][..], &[][..], &["--since", "1d"][..]] {
            let started = std::time::Instant::now();
            rebuild(&url, args);
            let seconds = started.elapsed().as_secs_f64();
            let differ: Vec<i64> = TABLES
                .iter()
                .map(|t| differences(client, t, &format!("kept_{t}")))
                .collect();
            figures.push((args.to_vec(), differ, seconds));
        }
        let rows: Vec<i64> = TABLES
            .iter()
            .map(|t| {
                client
                    .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                    .unwrap()
                    .get(0)
            })
            .collect();
        (figures, rows)
    })
    .await;
    let (runs, rows) = figures;
    println!("rows kept by the writer (hourly, daily, incidents): {rows:?}");
    for (args, differ, seconds) in &runs {
        println!("rebuild {args:?}: {differ:?} rows differ, {seconds:.1} s");
        assert_eq!(differ, &[0, 0, 0], "rebuild {args:?}");
    }
    assert!(rows.iter().all(|r| *r > 0), "{rows:?}");
}

#[test]
fn a_rebuild_names_a_database_it_cannot_reach_without_its_password() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args([
            "rollups",
            "rebuild",
            "--database-url",
            "postgres://writer:hunter22@127.0.0.1:1/pipe?connect_timeout=2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("hunter22"), "{stderr}");
}

#[tokio::test]
async fn maintenance_keeps_rollups_for_rollup_retention_and_compacts_finished_days() {
    let db = fresh_database("upkeep").await;
    store(&db.url, three_days(), "batch_size: 500\n").await;
    let two_days_ago = format!(
        "checks_{}",
        pipe::monitor::check::rfc3339_millis::format(day_start(2))[..10].replace('-', "")
    );
    let index = format!("{two_days_ago}_pkey");
    let size = |index: String| {
        move |client: &mut postgres::Client| -> (i64, Option<String>) {
            let row = client
                .query_one(
                    "SELECT pg_relation_size($1::text::regclass), obj_description($1::text::regclass, 'pg_class')",
                    &[&index],
                )
                .unwrap();
            (row.get(0), row.get(1))
        }
    };
    let (before, comment) = with_client(&db.url, size(index.clone())).await;
    assert_eq!(
        comment, None,
        "the first run's maintenance came before the checks"
    );
    // A writer started again: its maintenance runs at start.
    store(&db.url, vec![], "rollup_retention: 1d\n").await;
    let (after, comment) = with_client(&db.url, size(index.clone())).await;
    let rows = 288 * 6;
    println!(
        "{index}: {:.1} bytes a check before compaction, {:.1} after",
        before as f64 / rows as f64,
        after as f64 / rows as f64
    );
    assert_eq!(comment.as_deref(), Some("pipe: compacted"));
    assert!(after < before, "{after} < {before}");
    let (oldest_hour, oldest_day, raw, found) = with_client(&db.url, |client| {
        let row = client
            .query_one(
                "SELECT (SELECT min(bucket) FROM rollups_hourly),
                        (SELECT min(bucket) FROM rollups_daily),
                        (SELECT count(*) FROM checks),
                        (SELECT count(*) FROM check_results
                         WHERE target = 'site-3' AND checked_at >= $1 AND checked_at < $2)",
                &[&day_start(2), &day_start(1)],
            )
            .unwrap();
        (
            row.get::<_, SystemTime>(0),
            row.get::<_, SystemTime>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
        )
    })
    .await;
    assert_eq!(oldest_hour, day_start(1), "hours before yesterday deleted");
    assert_eq!(oldest_day, day_start(1));
    assert_eq!(raw, 3 * 288 * 6, "the raw checks keep their own retention");
    assert_eq!(found, 288, "the compacted index still finds a target's day");
}

#[tokio::test]
async fn a_late_check_keeps_the_incidents_whose_checks_retention_dropped() {
    let db = fresh_database("retained").await;
    let (two_days_ago, yesterday, today) = (
        day_start(2) + Duration::from_secs(3600),
        day_start(1) + Duration::from_secs(3600),
        day_start(0) + Duration::from_secs(60),
    );
    let mut checks = scripted("kept", two_days_ago, "ttt.");
    checks.extend(scripted("kept", today, "ttttt"));
    store(&db.url, checks, "").await;
    let before = incidents_by_target(&db.url).await;
    assert_eq!(before["kept"].len(), 2, "{before:?}");
    // Retention drops the day of the first incident's checks.
    let cutoff = day_start(1);
    with_client(&db.url, move |client| {
        client
            .execute(
                "SELECT pipe_drop_check_partitions_before(($1::timestamptz AT TIME ZONE 'UTC')::date)",
                &[&cutoff],
            )
            .unwrap();
    })
    .await;
    // A late failure from yesterday: no good check before it is left, so the series replays
    // from its oldest stored check.
    store(&db.url, scripted("kept", yesterday, "t"), "").await;
    let after = &incidents_by_target(&db.url).await["kept"];
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after[0], before["kept"][0],
        "the incident of dropped checks is kept"
    );
    assert_eq!(
        after[1].started_at, yesterday,
        "the open one starts at the late failure"
    );
    assert_eq!(after[1].failed_checks, 6);
    assert_eq!(after[1].ended_at, None);
}

/// The sink works out each stored check's cause in Rust (`down_cause`) from the columns it
/// stored; views, reports and the references in these tests use `pipe_down_cause` in SQL. The
/// two must agree on every combination of their arguments, every error kind included.
#[tokio::test]
async fn the_writers_down_cause_is_pipe_down_cause() {
    let db = fresh_database("cause").await;
    let (cases, differ) = with_client(&db.url, |client| {
        pipe::monitor::migrate::apply(client).expect("migrate");
        let kinds: Vec<String> = client
            .query(
                "SELECT unnest(enum_range(NULL::check_error_kind))::text",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let latency: Vec<String> = client
            .query(
                "SELECT unnest(enum_range(NULL::check_latency_class))::text",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let kinds: Vec<Option<&str>> = std::iter::once(None)
            .chain(kinds.iter().map(|k| Some(k.as_str())))
            .collect();
        let latency: Vec<Option<&str>> = std::iter::once(None)
            .chain(latency.iter().map(|k| Some(k.as_str())))
            .collect();
        let statuses = [
            None,
            Some(100),
            Some(199),
            Some(200),
            Some(204),
            Some(301),
            Some(399),
            Some(400),
            Some(404),
            Some(503),
            Some(599),
        ];
        let flags = [None, Some(false), Some(true)];
        let statement = client
            .prepare(
                "SELECT pipe_down_cause($1, $2::text::check_error_kind, $3, $4,
                                        $5::text::check_latency_class, $6)",
            )
            .unwrap();
        let (mut cases, mut differ) = (0, Vec::new());
        for up in [false, true] {
            for kind in &kinds {
                for status in statuses {
                    for regex in flags {
                        for class in &latency {
                            for cert in flags {
                                let sql: Option<String> = client
                                    .query_one(
                                        &statement,
                                        &[&up, kind, &status, &regex, class, &cert],
                                    )
                                    .unwrap()
                                    .get(0);
                                let rust = pipe::monitor::history::down_cause(
                                    up, *kind, status, regex, *class, cert,
                                );
                                cases += 1;
                                if sql != rust {
                                    differ.push(format!(
                                        "{up} {kind:?} {status:?} {regex:?} {class:?} {cert:?}: \
                                         SQL {sql:?}, Rust {rust:?}"
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        (cases, differ)
    })
    .await;
    println!("{cases} combinations, {} differ", differ.len());
    assert!(cases > 1000, "{cases}");
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
