//! One batch in one transaction: its partitions, targets, TLS details and checkers, its checks
//! (a plain insert first, `ON CONFLICT` after a redelivery), what they add to the rollups and
//! incidents, and its dead letters; on a row the database refuses, row by row under savepoints.
//! Blocking: called inside `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::error::SqlState;
use postgres::types::{IsNull, Kind, ToSql, Type};
use postgres_openssl::MakeTlsConnector;
use r2d2::Pool;
use r2d2_postgres::PostgresConnectionManager;
use uuid::Uuid;

use crate::event::Origin;
use crate::monitor::check::CheckResult;
use crate::monitor::check::TlsInfo;
use crate::monitor::database;
use crate::monitor::history::dimensions::{self, CheckerKey};
use crate::monitor::history::incidents::{self, Series, Thresholds};
use crate::monitor::history::{date_of_day, down_cause, rollups, StoredCheck, REBUILD_LOCK};

use super::row::*;

/// The connection pool.
pub(super) type PgPool = Pool<PostgresConnectionManager<MakeTlsConnector>>;

/// A failed database step: retry it, or isolate the rows that cause it.
pub(super) enum WriteError {
    Transient(String),
    Permanent(String),
}

impl From<postgres::Error> for WriteError {
    fn from(error: postgres::Error) -> Self {
        if database::is_transient(&error) {
            Self::Transient(database::describe(&error))
        } else {
            Self::Permanent(database::describe(&error))
        }
    }
}

impl From<r2d2::Error> for WriteError {
    fn from(error: r2d2::Error) -> Self {
        // No connection could be had: the database is down or unreachable.
        Self::Transient(format!("no database connection: {error}"))
    }
}

/// The columns of `checks` a check fills, in the order of every statement below.
macro_rules! check_columns {
    () => {
        "checked_at, target_id, start_delay_ms, response_time_us, dns_us, connect_us, tls_us,
    first_byte_us, transfer_us, body_bytes, remote_port, tls_id, error_kind, latency_class,
    region_id, checker_id, status_code, http_version, up, regex_matched, cert_expires_soon,
    remote_ip, check_id, error_message, captures, probe_fault"
    };
}

/// The insert of a batch's checks, one `unnest` per column in the select list: set-returning
/// functions there run in step (PostgreSQL 10 and later), and unlike `unnest(a, b, …)` in
/// `FROM` their rows are not first collected in a tuplestore (5,000-check inserts: 32–43 ms,
/// against 48–50 ms).
macro_rules! insert_checks_sql {
    () => {
        concat!(
            "INSERT INTO checks (",
            check_columns!(),
            ")
SELECT unnest($1::timestamptz[]), unnest($2::int4[]), unnest($3::int4[]), unnest($4::int4[]),
    unnest($5::int4[]), unnest($6::int4[]), unnest($7::int4[]), unnest($8::int4[]),
    unnest($9::int4[]), unnest($10::int4[]), unnest($11::int4[]), unnest($12::int4[]),
    unnest($13::text[]::check_error_kind[]), unnest($14::text[]::check_latency_class[]),
    unnest($15::int2[]), unnest($16::int2[]), unnest($17::int2[]), unnest($18::int2[]),
    unnest($19::bool[]), unnest($20::bool[]), unnest($21::bool[]), unnest($22::inet[]),
    unnest($23::uuid[]), unnest($24::text[]), unnest($25::jsonb[]), unnest($26::bool[])"
        )
    };
}

/// Stores checks none of which is stored yet, a batch's first attempt, as one binary `COPY`.
/// A check already stored (a redelivery) fails it with a unique violation, and the batch goes
/// again with [`INSERT_CHECKS`]. In the common case a conflict check and `RETURNING` would be
/// work for nothing. PostgreSQL's statement log put a text `COPY` at 3.8 µs a check against
/// 7.7 through `INSERT … unnest`; in the whole writer the difference stayed inside the noise
/// of PostgreSQL's CPU a row (BENCHMARKS.md, 2026-12-04).
pub(super) const COPY_NEW_CHECKS: &str = concat!(
    "COPY checks (",
    check_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// One row of the same columns as parameters. Preparing it tells the types a binary `COPY`
/// must send, the enums' (whose ids differ from database to database) among them.
const CHECK_COLUMN_TYPES: &str = concat!(
    "INSERT INTO checks (",
    check_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
    $19, $20, $21, $22, $23, $24, $25, $26)"
);

/// An enum's label in a binary `COPY`: the driver sends a `&str` only as a text type.
#[derive(Debug)]
struct Label(&'static str);

impl ToSql for Label {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Enum(_))
    }

    postgres::types::to_sql_checked!();
}

/// Inserts checks some of which may be stored already, and returns those inserted, with what
/// the rollups and incidents need of them.
pub(super) const INSERT_CHECKS: &str = concat!(
    insert_checks_sql!(),
    "\nON CONFLICT DO NOTHING
RETURNING target_id, region_id, checked_at, ",
    crate::monitor::history::stored_check_columns!()
);

/// `time` as a `timestamptz` column holds it: in whole microseconds, cut toward
/// 2000-01-01 (PostgreSQL's epoch) as the driver's conversion cuts it.
pub(super) fn stored_time(time: SystemTime) -> SystemTime {
    const POSTGRES_EPOCH: Duration = Duration::from_secs(946_684_800);
    let epoch = UNIX_EPOCH + POSTGRES_EPOCH;
    let whole = |d: Duration| Duration::new(d.as_secs(), d.subsec_micros() * 1000);
    match time.duration_since(epoch) {
        Ok(after) => epoch + whole(after),
        Err(before) => epoch - whole(before.duration()),
    }
}

/// A row the transaction inserted, as it is stored.
pub(super) fn stored_check(row: &Row, series: Series) -> StoredCheck {
    StoredCheck {
        series,
        at: stored_time(row.checked_at),
        up: row.up,
        cause: down_cause(
            row.up,
            row.error_kind,
            row.status_code,
            row.regex_matched,
            row.latency_class,
            row.cert_expires_soon,
        ),
        responded: row.status_code.is_some(),
        response_time_us: row.response_time_us,
        probe_fault: row.probe_fault == Some(true),
    }
}

pub(super) const UPSERT_TARGETS: &str = "\
INSERT INTO targets (name, url, method, regex)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (name) DO UPDATE
    SET url = excluded.url, method = excluded.method, regex = excluded.regex, updated_at = now()
RETURNING id, name";

pub(super) const INSERT_DEAD_LETTERS: &str = "\
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, error, payload)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::text[], $5::bytea[])
ON CONFLICT DO NOTHING";

/// The ids a batch's rows point to: of its targets, regions and checkers in the order of its
/// [`Names`].
pub(super) struct Ids {
    pub(super) targets: Vec<i32>,
    pub(super) tls: HashMap<Uuid, i32>,
    pub(super) checkers: Vec<i16>,
    pub(super) regions: Vec<i16>,
}

/// What an insert may assume of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Insert {
    /// None is stored yet ([`COPY_NEW_CHECKS`]): a check already there fails the statement.
    New,
    /// Some may be stored already, and are left as they are ([`INSERT_CHECKS`]).
    MaybeStored,
}

/// Inserts `rows` (all of whose targets, TLS details, checkers and regions have ids) with one
/// statement; returns the checks stored (not those already there).
pub(super) fn insert_checks(
    client: &mut impl postgres::GenericClient,
    rows: &[&Row],
    ids: &Ids,
    insert: Insert,
) -> Result<Vec<StoredCheck>, postgres::Error> {
    let target_ids: Vec<i32> = rows
        .iter()
        .map(|r| ids.targets[r.target as usize])
        .collect();
    let tls_ids: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.tls_key.map(|key| ids.tls[&key]))
        .collect();
    let checker_ids: Vec<Option<i16>> = rows
        .iter()
        .map(|r| r.checker.map(|c| ids.checkers[c as usize]))
        .collect();
    let region_ids: Vec<i16> = rows
        .iter()
        .map(|r| ids.regions[r.region as usize])
        .collect();
    let keys = Keys {
        targets: &target_ids,
        tls: &tls_ids,
        checkers: &checker_ids,
        regions: &region_ids,
    };
    match insert {
        Insert::New if copy_new_checks(client, rows, &keys)? => Ok(rows
            .iter()
            .zip(target_ids.iter().zip(&region_ids))
            .map(|(row, (&target, &region))| stored_check(row, (target, region)))
            .collect()),
        // What the COPY could not encode the insert cannot either, and its error names it
        // (after an abandoned COPY, the failed transaction's error sends the batch row by row).
        Insert::New => insert_maybe_stored(client, rows, &keys),
        Insert::MaybeStored => insert_maybe_stored(client, rows, &keys),
    }
}

/// Each row's ids, in the order of the rows.
struct Keys<'a> {
    targets: &'a [i32],
    tls: &'a [Option<i32>],
    checkers: &'a [Option<i16>],
    regions: &'a [i16],
}

/// [`COPY_NEW_CHECKS`]: every row, or none. Returns `false` if the rows were not sent: a value
/// could not be encoded (none should be: each column's type is checked), and nothing was sent;
/// or the driver's writer did not take the batch (it always does, below), and the abandoned
/// `COPY` fails the transaction.
fn copy_new_checks(
    client: &mut impl postgres::GenericClient,
    rows: &[&Row],
    keys: &Keys<'_>,
) -> Result<bool, postgres::Error> {
    let statement = client.prepare(CHECK_COLUMN_TYPES)?;
    let Ok(data) = binary_copy(rows, keys, statement.params()) else {
        return Ok(false);
    };
    let mut writer = client.copy_in(COPY_NEW_CHECKS)?;
    // The driver's writer keeps what it is given until it holds 4 KiB, and only then sends it.
    // Given the whole batch while it holds nothing, it keeps all of it and sends it in
    // `finish`, one round trip whose error is the database's. Driving it row by row
    // (`BinaryCopyInWriter`) entered the driver's runtime once a row: 12% of the writer's CPU.
    if !matches!(writer.write(&data), Ok(kept) if kept == data.len()) {
        return Ok(false);
    }
    writer.finish().map(|_| true)
}

/// `rows` in PostgreSQL's binary `COPY` format ("Binary Format" in its documentation of
/// `COPY`): a header, then per row its number of fields and each field as its length (-1 for
/// null) and bytes, then a trailer.
fn binary_copy(
    rows: &[&Row],
    keys: &Keys<'_>,
    types: &[Type],
) -> Result<bytes::BytesMut, Box<dyn std::error::Error + Sync + Send>> {
    use bytes::BufMut;
    let mut data = bytes::BytesMut::with_capacity(19 + rows.len() * 192 + 2);
    data.put_slice(b"PGCOPY\n\xff\r\n\0");
    data.put_i32(0); // flags
    data.put_i32(0); // header extension length
    for (i, r) in rows.iter().enumerate() {
        let (error_kind, latency_class) = (r.error_kind.map(Label), r.latency_class.map(Label));
        let values: [&(dyn ToSql + Sync); 26] = [
            &r.checked_at,
            &keys.targets[i],
            &r.start_delay_ms,
            &r.response_time_us,
            &r.dns_us,
            &r.connect_us,
            &r.tls_us,
            &r.first_byte_us,
            &r.transfer_us,
            &r.body_bytes,
            &r.remote_port,
            &keys.tls[i],
            &error_kind,
            &latency_class,
            &keys.regions[i],
            &keys.checkers[i],
            &r.status_code,
            &r.http_version,
            &r.up,
            &r.regex_matched,
            &r.cert_expires_soon,
            &r.remote_ip,
            &r.check_id,
            &r.error_message,
            &r.captures,
            &r.probe_fault,
        ];
        data.put_i16(values.len() as i16);
        for (value, ty) in values.iter().zip(types) {
            let at = data.len();
            data.put_i32(0);
            let length = match value.to_sql_checked(ty, &mut data)? {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(data.len() - at - 4)?,
            };
            data[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
    }
    data.put_i16(-1);
    Ok(data)
}

/// [`INSERT_CHECKS`]: the rows not stored yet.
fn insert_maybe_stored(
    client: &mut impl postgres::GenericClient,
    rows: &[&Row],
    keys: &Keys<'_>,
) -> Result<Vec<StoredCheck>, postgres::Error> {
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| &r.$field).collect::<Vec<_>>()
        };
    }
    let params: [&(dyn ToSql + Sync); 26] = [
        &column!(checked_at),
        &keys.targets,
        &column!(start_delay_ms),
        &column!(response_time_us),
        &column!(dns_us),
        &column!(connect_us),
        &column!(tls_us),
        &column!(first_byte_us),
        &column!(transfer_us),
        &column!(body_bytes),
        &column!(remote_port),
        &keys.tls,
        &column!(error_kind),
        &column!(latency_class),
        &keys.regions,
        &keys.checkers,
        &column!(status_code),
        &column!(http_version),
        &column!(up),
        &column!(regex_matched),
        &column!(cert_expires_soon),
        &column!(remote_ip),
        &column!(check_id),
        &column!(error_message),
        &column!(captures),
        &column!(probe_fault),
    ];
    Ok(client
        .query(INSERT_CHECKS, &params)?
        .iter()
        .map(StoredCheck::from_row)
        .collect())
}

pub(super) fn insert_dead_letters(
    client: &mut impl postgres::GenericClient,
    letters: &[DeadLetter],
) -> Result<u64, postgres::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let topics: Vec<Option<&str>> = letters.iter().map(|l| l.topic.as_deref()).collect();
    let partitions: Vec<Option<i32>> = letters.iter().map(|l| l.partition).collect();
    let offsets: Vec<Option<i64>> = letters.iter().map(|l| l.offset).collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    client.execute(
        INSERT_DEAD_LETTERS,
        &[&topics, &partitions, &offsets, &errors, &payloads],
    )
}

/// One batch, ready to write.
pub(super) struct Batch {
    pub(super) rows: Vec<Row>,
    /// The rows' targets, regions and checkers.
    pub(super) names: Names,
    pub(super) dead: Vec<DeadLetter>,
    /// Where each row came from, and the check itself, in case the database refuses it.
    pub(super) sources: Vec<(Option<Origin>, Box<CheckResult>)>,
    pub(super) days: HashSet<i64>,
    /// The distinct TLS details of the rows.
    pub(super) tls: HashMap<Uuid, TlsInfo>,
}

/// What the blocking side keeps between batches.
#[derive(Default)]
pub(super) struct Cache {
    /// Target name → (id, settings last written).
    pub(super) targets: HashMap<String, (i32, TargetRow)>,
    /// Days (since the epoch) whose partition is known to exist.
    pub(super) days: HashSet<i64>,
    /// TLS details and checkers known to be stored, by key.
    pub(super) dimensions: dimensions::Known,
}

/// Creates the partition of each day (autocommitted: DDL outside the batch's transaction).
pub(super) fn ensure_partitions(
    client: &mut postgres::Client,
    days: impl IntoIterator<Item = i64>,
) -> Result<(), postgres::Error> {
    for day in days {
        client.execute(
            "SELECT pipe_ensure_check_partition(($1::timestamptz AT TIME ZONE 'UTC')::date)",
            &[&date_of_day(day)],
        )?;
    }
    Ok(())
}

/// A target's name, with its id and the settings last written.
pub(super) type KnownTarget = (String, (i32, TargetRow));

/// Upserts `targets` (new or changed ones) and returns their ids. Sorted by name, so that
/// concurrent batches lock target rows in one order and cannot deadlock each other.
pub(super) fn upsert_targets(
    client: &mut impl postgres::GenericClient,
    targets: &mut [TargetRow],
) -> Result<Vec<KnownTarget>, postgres::Error> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let urls: Vec<&str> = targets.iter().map(|t| t.url.as_str()).collect();
    let methods: Vec<&str> = targets.iter().map(|t| t.method.as_str()).collect();
    let regexes: Vec<Option<&str>> = targets.iter().map(|t| t.regex.as_deref()).collect();
    let mut fresh = Vec::with_capacity(targets.len());
    for row in client.query(UPSERT_TARGETS, &[&names, &urls, &methods, &regexes])? {
        let (id, name): (i32, String) = (row.get(0), row.get(1));
        // Sorted above: a search per row, not a scan (the first batch brings every target).
        let at = targets
            .binary_search_by(|t| t.name.as_str().cmp(name.as_str()))
            .expect("returned names were sent");
        fresh.push((name, (id, targets[at].clone())));
    }
    Ok(fresh)
}

/// Writes one batch in one transaction; on a permanent error, row by row with savepoints.
/// The cache is locked only briefly, so several batches can be written at once.
pub(super) fn write_batch(
    pool: &PgPool,
    cache: &Mutex<Cache>,
    batch: &Batch,
    thresholds: Thresholds,
) -> Result<Written, WriteError> {
    let (missing_days, mut changed, known) = {
        let cache = cache.lock().expect("not poisoned");
        let missing: Vec<i64> = batch
            .days
            .iter()
            .copied()
            .filter(|d| !cache.days.contains(d))
            .collect();
        let mut changed = Vec::new();
        // Every one is set before the insert: by the cache, or by the upsert of the changed.
        let mut ids = vec![0; batch.names.targets.len()];
        for (target, id) in batch.names.targets.iter().zip(&mut ids) {
            match cache.targets.get(&target.name) {
                Some((known_id, known)) if known == target => *id = *known_id,
                _ => changed.push(target.clone()),
            }
        }
        (missing, changed, ids)
    };
    let mut client = pool.get()?;
    ensure_partitions(&mut client, missing_days.iter().copied())?;
    cache
        .lock()
        .expect("not poisoned")
        .days
        .extend(missing_days);
    let dimension_ids = dimension_ids(&mut client, cache, batch)?;

    let all: Vec<&Row> = batch.rows.iter().collect();
    // Fresh checks first. A batch holding one already stored (a redelivery, or the same check
    // twice) fails that insert, and the whole transaction goes again skipping what is stored.
    let mut insert = Insert::New;
    let mut ids = Ids {
        targets: known,
        ..dimension_ids
    };
    loop {
        let mut tx = client.transaction()?;
        hold_rebuild_lock(&mut tx)?;
        // Again on a second attempt: the first one's new targets were rolled back.
        let fresh = upsert_targets(&mut tx, &mut changed)?;
        set_target_ids(&mut ids.targets, &batch.names, &fresh);
        let stored = match insert_checks(&mut tx, &all, &ids, insert) {
            Ok(stored) => stored,
            Err(e) if database::is_transient(&e) => return Err(e.into()),
            Err(e) if insert == Insert::New && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                drop(tx);
                insert = Insert::MaybeStored;
                continue;
            }
            Err(_) => {
                // Some row is refused: start over on the same connection, one savepoint per row.
                drop(tx);
                return write_rows_one_by_one(cache, batch, ids, thresholds, &mut client);
            }
        };
        rollups::add(&mut tx, &stored)?;
        incidents::add(&mut tx, thresholds, &stored)?;
        insert_dead_letters(&mut tx, &batch.dead)?;
        tx.commit()?;
        cache.lock().expect("not poisoned").targets.extend(fresh);
        return Ok(Written {
            stored: stored.iter().map(|s| s.at).collect(),
            dead_letters: batch.dead.len(),
            committed_at: SystemTime::now(),
        });
    }
}

/// Puts the ids of `fresh` targets at their places in the batch's `Names`.
fn set_target_ids(ids: &mut [i32], names: &Names, fresh: &[KnownTarget]) {
    for (name, (id, _)) in fresh {
        let index = names
            .target_index(name)
            .expect("upserted targets are the batch's");
        ids[index] = *id;
    }
}

pub(super) fn hold_rebuild_lock(
    tx: &mut impl postgres::GenericClient,
) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&REBUILD_LOCK])
        .map(drop)
}

/// What a committed batch wrote.
pub(super) struct Written {
    /// The scheduled times of the checks stored (redelivered ones excluded).
    pub(super) stored: Vec<SystemTime>,
    pub(super) dead_letters: usize,
    pub(super) committed_at: SystemTime,
}

/// The ids of the batch's TLS details, checkers and regions, inserting those not stored yet;
/// the targets' are left for the transaction.
pub(super) fn dimension_ids(
    client: &mut postgres::Client,
    cache: &Mutex<Cache>,
    batch: &Batch,
) -> Result<Ids, WriteError> {
    let names = &batch.names;
    let (missing_tls, missing_checkers, missing_regions) = {
        let cache = cache.lock().expect("not poisoned");
        let known = &cache.dimensions;
        let missing_tls: Vec<(Uuid, &TlsInfo)> = batch
            .tls
            .iter()
            .filter(|(key, _)| !known.tls.contains_key(key))
            .map(|(key, tls)| (*key, tls))
            .collect();
        let missing_checkers: Vec<CheckerKey> = names
            .checkers
            .iter()
            .filter(|key| !known.checkers.contains_key(key))
            .cloned()
            .collect();
        let missing_regions: Vec<String> = names
            .regions
            .iter()
            .filter(|region| !region.is_empty() && !known.regions.contains_key(*region))
            .cloned()
            .collect();
        (missing_tls, missing_checkers, missing_regions)
    };
    let cache =
        if missing_tls.is_empty() && missing_checkers.is_empty() && missing_regions.is_empty() {
            cache.lock().expect("not poisoned")
        } else {
            let fresh =
                dimensions::ensure(client, &missing_tls, &missing_checkers, &missing_regions)?;
            let mut cache = cache.lock().expect("not poisoned");
            cache.dimensions.tls.extend(fresh.tls);
            cache.dimensions.checkers.extend(fresh.checkers);
            cache.dimensions.regions.extend(fresh.regions);
            cache
        };
    let known = &cache.dimensions;
    Ok(Ids {
        targets: Vec::new(),
        tls: batch.tls.keys().map(|key| (*key, known.tls[key])).collect(),
        checkers: names
            .checkers
            .iter()
            .map(|key| known.checkers[key])
            .collect(),
        // `""` is always 0 (migration 3).
        regions: names
            .regions
            .iter()
            .map(|region| {
                if region.is_empty() {
                    0
                } else {
                    known.regions[region]
                }
            })
            .collect(),
    })
}

pub(super) fn write_rows_one_by_one(
    cache: &Mutex<Cache>,
    batch: &Batch,
    mut ids: Ids,
    thresholds: Thresholds,
    client: &mut postgres::Client,
) -> Result<Written, WriteError> {
    let mut tx = client.transaction()?;
    hold_rebuild_lock(&mut tx)?;
    let mut targets = batch.names.targets.clone();
    let fresh = upsert_targets(&mut tx, &mut targets)?;
    set_target_ids(&mut ids.targets, &batch.names, &fresh);
    let mut dead = batch.dead.clone();
    let mut stored = Vec::new();
    for (row, (source, check)) in batch.rows.iter().zip(&batch.sources) {
        let mut savepoint = tx.savepoint("row")?;
        match insert_checks(&mut savepoint, &[row], &ids, Insert::MaybeStored) {
            Ok(rows) => {
                savepoint.commit()?;
                stored.extend(rows);
            }
            Err(e) if database::is_transient(&e) => return Err(e.into()),
            Err(e) => {
                savepoint.rollback()?;
                dead.push(DeadLetter::at(
                    source.as_ref(),
                    format!("refused by the database: {}", database::describe(&e)),
                    serde_json::to_vec(check).unwrap_or_default(),
                ));
            }
        }
    }
    rollups::add(&mut tx, &stored)?;
    incidents::add(&mut tx, thresholds, &stored)?;
    insert_dead_letters(&mut tx, &dead)?;
    tx.commit()?;
    cache.lock().expect("not poisoned").targets.extend(fresh);
    Ok(Written {
        stored: stored.iter().map(|s| s.at).collect(),
        dead_letters: dead.len(),
        committed_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_time_is_what_the_driver_sends() {
        use postgres::types::{FromSql, ToSql, Type};
        for time in [
            UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789),
            UNIX_EPOCH + Duration::new(1_796_000_000, 999),
            UNIX_EPOCH + Duration::new(946_684_800, 0),
            UNIX_EPOCH + Duration::new(946_684_799, 999_999_999),
            UNIX_EPOCH - Duration::new(5, 1_500),
        ] {
            let mut sent = bytes::BytesMut::new();
            time.to_sql(&Type::TIMESTAMPTZ, &mut sent).unwrap();
            let stored = SystemTime::from_sql(&Type::TIMESTAMPTZ, &sent).unwrap();
            assert_eq!(stored_time(time), stored, "{time:?}");
        }
    }
}
