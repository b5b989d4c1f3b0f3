//! The writer against the local broker and PostgreSQL: every check that reached Kafka is
//! stored once, whatever is thrown at it.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::writer::{self, ids, scalar, stored_ids, strings, wait_for};
use crate::support::{pipeline, unique_name};
use pipe::topology::RunOptions;

const MINUTE: Duration = Duration::from_secs(60);

async fn fresh_database() -> support::TestDatabase {
    tokio::task::spawn_blocking(|| support::create_database("writer"))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_check_is_stored_once_even_when_delivered_twice() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("writer", 3).await;
    let db = fresh_database().await;
    let checks = writer::checks(1500, 7);
    writer::produce(&brokers, &topic, &checks).await;
    // The same checks again: a producer retry or a replayed checker.
    writer::produce(&brokers, &topic, &checks[..500]).await;

    let running = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &db.url, ""),
        RunOptions::default(),
    );
    let stored = wait_for(&db.url, "SELECT count(*) FROM check_results", 1500, MINUTE).await;
    running.stop().await.expect("a clean stop");
    assert_eq!(stored, 1500);

    let sent: BTreeSet<String> = checks.iter().map(|c| c.check_id.to_string()).collect();
    let rows: BTreeSet<String> = strings(&db.url, "SELECT check_id::text FROM check_results")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        rows, sent,
        "the rows are exactly the checks produced, by check_id"
    );
    assert_eq!(scalar(&db.url, "SELECT count(*) FROM targets").await, 7);
    assert_eq!(
        scalar(&db.url, "SELECT count(*) FROM dead_letters").await,
        0
    );

    // The view gives back what was sent, in schema units.
    let sample = &checks[0];
    let row = strings(
        &db.url,
        &format!(
            "SELECT concat_ws('|', target, url, status_code, response_time_ms, error_kind /* NULL: skipped */, regex_matched, latency_class, up,
                    dns_ms, connect_ms, tls_ms, first_byte_ms, transfer_ms, http_version, host(remote_ip), remote_port,
                    to_char(checked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS'), started_at - checked_at)
             FROM check_results WHERE check_id = '{}'",
            sample.check_id
        ),
    )
    .await;
    assert_eq!(
        row,
        [format!(
            "{}|{}|200|{}|t|ok|t|1.5|2.25|3|4|0.5|HTTP/2|93.184.215.14|443|{}|00:00:00.002",
            sample.target,
            sample.url,
            sample.response_time_ms,
            pipe::monitor::check::rfc3339_millis::format(sample.scheduled_at).trim_end_matches('Z')
        )]
    );
    let failed = &checks[7];
    let row = strings(
        &db.url,
        &format!("SELECT concat_ws('|', error_kind, error_message, up, status_code IS NULL, dns_ms IS NULL) FROM check_results WHERE check_id = '{}'", failed.check_id),
    )
    .await;
    assert_eq!(row, ["timeout|no complete response within 10s|f|t|t"]);
}

#[tokio::test]
async fn poison_messages_become_dead_letters_and_later_messages_still_land() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("poison", 1).await;
    let db = fresh_database().await;
    let good = writer::checks(3, 1);
    let json = |c: &pipe::monitor::check::CheckResult| serde_json::to_value(c).unwrap();
    let mut unknown_version = json(&good[1]);
    unknown_version["schema_version"] = 2.into();
    let mut missing = json(&good[1]);
    missing.as_object_mut().unwrap().remove("check_id");
    let mut mistyped = json(&good[1]);
    mistyped["response_time_ms"] = "fast".into();
    let mut oversized = json(&good[1]);
    oversized["error"] = serde_json::json!({"kind": "other", "message": "x".repeat(5000)});
    let mut refused = json(&good[1]);
    refused["status_code"] = 999.into(); // valid JSON and schema, refused by the table's CHECK
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("bad json", b"{\"schema_version\": 1, oops".to_vec()),
        (
            "unknown schema_version",
            unknown_version.to_string().into_bytes(),
        ),
        ("missing field", missing.to_string().into_bytes()),
        ("mistyped field", mistyped.to_string().into_bytes()),
        ("oversized", oversized.to_string().into_bytes()),
        ("refused row", refused.to_string().into_bytes()),
    ];
    let mut messages = vec![("site-0".to_owned(), serde_json::to_vec(&good[0]).unwrap())];
    messages.extend(poison.iter().map(|(_, p)| ("site-0".to_owned(), p.clone())));
    messages.push(("site-0".to_owned(), serde_json::to_vec(&good[2]).unwrap()));
    writer::produce_raw(&brokers, &topic, &messages).await;

    let running = pipeline::start(
        &writer::writer_yaml(
            &brokers,
            &topic,
            &unique_name("group"),
            &db.url,
            "    max_message_bytes: 4096",
        ),
        RunOptions::default(),
    );
    let letters = wait_for(&db.url, "SELECT count(*) FROM dead_letters", 6, MINUTE).await;
    let stored = wait_for(&db.url, "SELECT count(*) FROM checks", 2, MINUTE).await;
    running.stop().await.expect("a clean stop");
    assert_eq!((stored, letters), (2, 6));

    let rows = strings(
        &db.url,
        "SELECT concat_ws('|', topic, kafka_partition, kafka_offset, error, length(payload)) FROM dead_letters ORDER BY kafka_offset",
    )
    .await;
    let expected_errors = [
        "invalid JSON:",
        "unknown schema_version 2; this writer reads 1",
        "not a valid schema v1 check result: missing field `check_id`",
        "not a valid schema v1 check result: invalid type: string \"fast\"",
        "the message has ",
        "refused by the database: 23514:",
    ];
    assert_eq!(rows.len(), 6);
    for (i, (row, expected)) in rows.iter().zip(expected_errors).enumerate() {
        let fields: Vec<&str> = row.splitn(5, '|').collect();
        assert_eq!(fields[0], topic);
        assert_eq!(fields[1], "0");
        assert_eq!(fields[2], (i + 1).to_string(), "offset of {}", poison[i].0);
        assert!(
            fields[3].starts_with(expected),
            "{}: {}",
            poison[i].0,
            fields[3]
        );
        assert!(
            fields[4].parse::<usize>().unwrap() > 0,
            "{}: the raw bytes are kept",
            poison[i].0
        );
    }
    let raw = strings(
        &db.url,
        "SELECT convert_from(payload, 'UTF8') FROM dead_letters WHERE kafka_offset = 1",
    )
    .await;
    assert_eq!(
        raw,
        ["{\"schema_version\": 1, oops"],
        "the payload is stored byte for byte"
    );
    assert_eq!(stored_ids(&db.url).await, ids([&good[0], &good[2]]));
}

#[tokio::test]
async fn replaying_the_topic_under_a_new_group_adds_no_rows() {
    let brokers = support::kafka_brokers();
    // One partition, so the last message read means everything before it was read too.
    let topic = support::create_topic("replay", 1).await;
    let db = fresh_database().await;
    let checks = writer::checks(800, 5);
    writer::produce(&brokers, &topic, &checks).await;
    let yaml = |group: &str| writer::writer_yaml(&brokers, &topic, group, &db.url, "");
    let first = pipeline::start(&yaml(&unique_name("first")), RunOptions::default());
    assert_eq!(
        wait_for(&db.url, "SELECT count(*) FROM checks", 800, MINUTE).await,
        800
    );
    first.stop().await.unwrap();

    let marker = writer::checks(801, 5).pop().unwrap();
    writer::produce(&brokers, &topic, std::slice::from_ref(&marker)).await;
    let replay = pipeline::start(&yaml(&unique_name("second")), RunOptions::default());
    let marker_sql = format!(
        "SELECT count(*) FROM check_results WHERE check_id = '{}'",
        marker.check_id
    );
    assert_eq!(
        wait_for(&db.url, &marker_sql, 1, MINUTE).await,
        1,
        "the new group read to the end"
    );
    replay.stop().await.unwrap();
    assert_eq!(scalar(&db.url, "SELECT count(*) FROM checks").await, 801);
    assert_eq!(
        scalar(&db.url, "SELECT count(*) FROM dead_letters").await,
        0
    );
}

#[test]
fn migrations_are_idempotent() {
    let db = support::create_database("migrate");
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args(["migrate", "--database-url", &db.url])
            .output()
            .unwrap()
    };
    let first = migrate();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("migrations applied"));
    let second = migrate();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("the database is up to date"));
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // And the schema is whole: the view answers.
    client
        .query("SELECT * FROM check_results LIMIT 1", &[])
        .unwrap();
}

#[test]
fn an_upgrade_from_migration_1_keeps_the_checks_stored_before_it() {
    let db = support::create_database("upgrade");
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    // The database as release 0.1.0 left it: migration 1 only, with a check in it.
    client
        .batch_execute(pipe::monitor::migrate::MIGRATIONS[0].sql)
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                             applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version, name) VALUES (1, '0001_checks.sql');
             SELECT pipe_ensure_check_partition('2026-11-30');
             INSERT INTO targets (name, url, method) VALUES ('old', 'https://old.example/', 'GET');
             INSERT INTO checks (checked_at, check_id, target_id, start_delay_ms, response_time_us, up)
             VALUES ('2026-11-30T12:00:00Z', '8a036c86-1f8f-5289-af3e-1f909db5869c', 1, 1, 12345, true);",
        )
        .unwrap();
    // A check with the id pipe's checker derives, and a failed one, on another day.
    let slot = std::time::UNIX_EPOCH + Duration::from_secs(1_764_547_230); // 2025-12-01T00:00:30Z
    let derived = pipe::monitor::check::check_id("old", slot);
    client
        .execute("SELECT pipe_ensure_check_partition('2025-12-01')", &[])
        .unwrap();
    client
        .execute(
            "INSERT INTO checks (checked_at, check_id, target_id, start_delay_ms, response_time_us,
                                 up, error_kind, error_message)
             VALUES ($1, $2, 1, 0, 10000000, false, 'timeout', 'no complete response within 10s')",
            &[&slot, &derived],
        )
        .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = client
        .query_one(
            "SELECT target, response_time_ms, tls_version IS NULL, region IS NULL, checker IS NULL
             FROM check_results WHERE check_id = '8a036c86-1f8f-5289-af3e-1f909db5869c'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "old");
    assert_eq!(row.get::<_, f64>(1), 12.345);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3) && row.get::<_, bool>(4));
    let row = client
        .query_one(
            "SELECT check_id, error_kind, error_message, checked_at FROM check_results
             WHERE checked_at < '2026-01-01'",
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, uuid::Uuid>(0),
        derived,
        "derived again by the view"
    );
    assert_eq!(row.get::<_, String>(1), "timeout");
    assert_eq!(row.get::<_, String>(2), "no complete response within 10s");
    assert_eq!(row.get::<_, std::time::SystemTime>(3), slot);
    // Only the id pipe would not derive is kept in the compact table.
    let kept: Vec<Option<uuid::Uuid>> = client
        .query("SELECT check_id FROM checks ORDER BY checked_at", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kept,
        [
            None,
            Some("8a036c86-1f8f-5289-af3e-1f909db5869c".parse().unwrap())
        ]
    );
    // The schema is the fresh one: the key, the rollups and incidents.
    let key: String = client
        .query_one("SELECT pg_get_indexdef('checks_pkey'::regclass)", &[])
        .unwrap()
        .get(0);
    assert!(key.contains("(target_id, region_id, checked_at)"), "{key}");
    for relation in [
        "rollups_hourly",
        "rollups_daily",
        "incidents",
        "availability_daily",
    ] {
        client
            .query(&format!("SELECT * FROM {relation} LIMIT 1"), &[])
            .unwrap();
    }
}

#[tokio::test]
async fn tls_details_region_and_checker_are_stored_once_each_and_shown_per_check() {
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("details", 1).await;
    let db = fresh_database().await;
    let not_after = std::time::UNIX_EPOCH + Duration::from_secs(1_797_776_000);
    let mut checks = writer::checks(40, 2);
    for (i, check) in checks.iter_mut().enumerate() {
        check.tls = Some(pipe::monitor::check::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            cert_not_before: not_after - Duration::from_secs(90 * 86_400),
            cert_not_after: not_after,
            cert_issuer: "CN=pipe test CA".into(),
            cert_subject: format!("CN={}", check.target),
            cert_sans: vec![check.target.clone(), format!("www.{}", check.target)],
            cert_expires_soon: i % 2 == 0,
        });
        check.checker = Some("probe-1".into());
    }
    // The first check again from another region: the same slot, another check.
    let mut regional = checks[0].clone();
    regional.region = Some("eu-west".into());
    regional.checker = Some("probe-eu".into());
    regional.check_id =
        pipe::monitor::check::check_id_in(&regional.target, regional.scheduled_at, Some("eu-west"));
    checks.push(regional.clone());
    writer::produce(&brokers, &topic, &checks).await;

    let running = pipeline::start(
        &writer::writer_yaml(&brokers, &topic, &unique_name("group"), &db.url, ""),
        RunOptions::default(),
    );
    let stored = wait_for(&db.url, "SELECT count(*) FROM check_results", 41, MINUTE).await;
    running.stop().await.expect("a clean stop");
    assert_eq!(stored, 41, "two regions' checks of one slot are two checks");
    assert_eq!(
        scalar(&db.url, "SELECT count(*) FROM tls_details").await,
        2,
        "one row per distinct certificate"
    );
    assert_eq!(scalar(&db.url, "SELECT count(*) FROM checkers").await, 2);
    let row = strings(
        &db.url,
        &format!(
            "SELECT concat_ws('|', tls_version, tls_cipher, to_char(cert_not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                    cert_issuer, cert_subject, array_to_string(cert_sans, ','), cert_expires_soon,
                    coalesce(region, '-'), checker)
             FROM check_results WHERE check_id = '{}'",
            checks[0].check_id
        ),
    )
    .await;
    let target = &checks[0].target;
    assert_eq!(
        row,
        [format!(
            "TLSv1.3|TLS_AES_128_GCM_SHA256|2026-12-20 14:13:20|CN=pipe test CA|CN={target}|{target},www.{target}|t|-|probe-1"
        )]
    );
    let row = strings(
        &db.url,
        &format!(
            "SELECT concat_ws('|', region, checker) FROM check_results WHERE check_id = '{}'",
            regional.check_id
        ),
    )
    .await;
    assert_eq!(row, ["eu-west|probe-eu"]);
}

/// The sink reads nothing for 8 s after its first event: the pipeline fills, and after 5 s of
/// refusal the source pauses its partitions, then resumes them, in the middle of batches (the
/// producer writes up to 1,000 records per batch, and pausing drops librdkafka's prefetch, so
/// the resumed fetch starts inside one).
#[tokio::test]
async fn paused_partitions_resume_mid_batch_without_loss_or_repeats() {
    const N: usize = 5_000;
    let brokers = support::kafka_brokers();
    let topic = support::create_topic("paused", 3).await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "50")
        .set("batch.num.messages", "1000")
        .create()
        .unwrap();
    let checks = writer::checks(N, 30);
    let sends = checks.iter().map(|c| {
        let payload = serde_json::to_vec(c).unwrap();
        let (producer, topic) = (&producer, &topic);
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(topic)
                        .key(&c.target)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    });
    futures::future::join_all(sends).await;

    let channel = unique_name("paused");
    let group = unique_name("group");
    let mut seen = pipeline::capture(&channel);
    let yaml = format!(
        "\
sources:
  checks:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
sinks:
  out:
    type: capture
    inputs: [checks]
    channel: {channel}
    hold: 8s
"
    );
    let running = pipeline::start(&yaml, RunOptions::default());
    let mut ids = Vec::new();
    while ids.len() < N {
        let (fields, _) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {N}", ids.len()))
            .unwrap();
        ids.push(fields["check_id"].as_str().unwrap().to_owned());
    }
    // Anything more would be a repeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((fields, _)) = seen.try_recv() {
        ids.push(fields["check_id"].as_str().unwrap().to_owned());
    }
    running.stop().await.expect("a clean stop");
    let unique: BTreeSet<&String> = ids.iter().collect();
    println!("{} received, {} distinct, of {N}", ids.len(), unique.len());
    assert_eq!(ids.len(), N, "every message once, none repeated");
    assert_eq!(unique.len(), N);

    // The group's committed offsets reached the end of every partition.
    let committed = tokio::task::spawn_blocking(move || {
        support::committed_offsets(&brokers, &group, &topic, 0..3)
    })
    .await
    .unwrap();
    let total: i64 = committed
        .iter()
        .map(|offset| match offset {
            rdkafka::Offset::Offset(o) => *o,
            other => panic!("a partition has no committed offset: {other:?}"),
        })
        .sum();
    assert_eq!(total, N as i64);
}
