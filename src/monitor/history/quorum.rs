//! Global incidents: the region quorum. A target is globally down while at least
//! `down_regions` of its regions have an open regional incident ([`super::incidents`]) at once,
//! so one region's network fault opens a regional incident and not a global one.
//!
//! A target's global incidents are a pure function of its regional ones and the quorum
//! ([`overlaps`]). The writer keeps them in `target_global_incidents` (migration 4) in the
//! transaction that changes the regional ones: a change from time `t` on recomputes the
//! target's global incidents from `t`, or from the start of the global incident that holds at
//! `t`, since the regional incidents before `t` are as they were. Two transactions never
//! recompute one target at once: [`lock_targets`] takes a lock per target, in id order, before
//! the series' own locks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use postgres::GenericClient;

/// The first key of the advisory locks a transaction holds on the targets whose global
/// incidents it may recompute ("pipg"); the second is the target's id.
const TARGET_LOCK: i32 = 0x7069_7067;

/// A regional incident, as the quorum sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regional {
    /// The region it was seen from.
    pub region_id: i16,
    /// Its first failed check's slot.
    pub started_at: SystemTime,
    /// Its first good check's slot; `None` while open.
    pub ended_at: Option<SystemTime>,
    /// Its cause.
    pub cause: String,
}

/// A global incident, as `target_global_incidents` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// When the quorum was reached.
    pub started_at: SystemTime,
    /// When it was lost; `None` while it holds.
    pub ended_at: Option<SystemTime>,
    /// The most regions down at once within it.
    pub regions: u16,
    /// The cause of the earliest regional incident in it.
    pub cause: String,
}

/// The spans, from `from` on, in which at least `quorum` of `regionals` are open at once.
/// A regional incident is open from its start (inclusive) to its end (exclusive), and one
/// that starts when another ends keeps the count: the slot is the same moment. Regional
/// incidents that started before `from` count from `from`.
pub fn overlaps(regionals: &[Regional], quorum: u32, from: SystemTime) -> Vec<Global> {
    // (time, 0 for an end and 1 for a start, index): ends sort first within a moment.
    let mut events: Vec<(SystemTime, u8, usize)> = Vec::with_capacity(regionals.len() * 2);
    for (i, regional) in regionals.iter().enumerate() {
        let start = regional.started_at.max(from);
        if regional.ended_at.is_some_and(|end| end <= start) {
            continue;
        }
        events.push((start, 1, i));
        if let Some(end) = regional.ended_at {
            events.push((end, 0, i));
        }
    }
    events.sort();
    let quorum = quorum.max(1) as usize;
    let mut open: BTreeSet<(SystemTime, i16, usize)> = BTreeSet::new();
    let mut found: Vec<Global> = Vec::new();
    let mut holding: Option<Global> = None;
    let mut at = 0;
    while at < events.len() {
        let moment = events[at].0;
        while at < events.len() && events[at].0 == moment {
            let (_, kind, i) = events[at];
            let key = (regionals[i].started_at, regionals[i].region_id, i);
            if kind == 1 {
                open.insert(key);
            } else {
                open.remove(&key);
            }
            at += 1;
        }
        let down = open.len();
        match holding.as_mut() {
            Some(global) if down >= quorum => {
                global.regions = global.regions.max(down as u16);
            }
            Some(_) => {
                let mut global = holding.take().expect("holding");
                global.ended_at = Some(moment);
                found.push(global);
            }
            None if down >= quorum => {
                let first = open.first().expect("a quorum of at least 1").2;
                holding = Some(Global {
                    started_at: moment,
                    ended_at: None,
                    regions: down as u16,
                    cause: regionals[first].cause.clone(),
                });
            }
            None => {}
        }
    }
    found.extend(holding);
    found
}

/// Where each target's regional incidents changed in a transaction: the earliest time.
#[derive(Debug, Default)]
pub struct Touched(BTreeMap<i32, SystemTime>);

impl Touched {
    /// Notes a change of `target`'s regional incidents from `at` on.
    pub fn touch(&mut self, target: i32, at: SystemTime) {
        self.0
            .entry(target)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Locks `targets` (sorted, no duplicates) until the transaction ends.
pub fn lock_targets(tx: &mut impl GenericClient, targets: &[i32]) -> Result<(), postgres::Error> {
    debug_assert!(targets.windows(2).all(|w| w[0] < w[1]));
    // unnest yields the sorted array in order, so every transaction locks in id order.
    tx.execute(
        "SELECT count(pg_advisory_xact_lock($1, t)) FROM unnest($2::int4[]) AS t",
        &[&TARGET_LOCK, &targets],
    )?;
    Ok(())
}

/// Recomputes the global incidents of the targets in `touched` with `quorum`; returns how
/// many were written. The targets must be locked ([`lock_targets`]).
pub fn update(
    tx: &mut impl GenericClient,
    quorum: u32,
    touched: &Touched,
) -> Result<u64, postgres::Error> {
    if touched.is_empty() {
        return Ok(0);
    }
    let targets: Vec<i32> = touched.0.keys().copied().collect();
    let changed: Vec<SystemTime> = touched.0.values().copied().collect();
    // From the start of the global incident holding at the change (or ending right at it: a
    // regional one starting then would have kept it going), else from the change.
    let froms: Vec<SystemTime> = tx
        .query(
            "SELECT least(a.f, (SELECT min(g.started_at) FROM target_global_incidents g
                                WHERE g.target_id = a.t AND g.started_at <= a.f
                                  AND (g.ended_at IS NULL OR g.ended_at >= a.f)))
             FROM unnest($1::int4[], $2::timestamptz[]) WITH ORDINALITY AS a(t, f, n)
             ORDER BY a.n",
            &[&targets, &changed],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.execute(
        "DELETE FROM target_global_incidents g
         USING unnest($1::int4[], $2::timestamptz[]) AS a(t, f)
         WHERE g.target_id = a.t AND (g.ended_at IS NULL OR g.ended_at >= a.f)",
        &[&targets, &froms],
    )?;
    let mut regionals: BTreeMap<i32, Vec<Regional>> = BTreeMap::new();
    for row in tx.query(
        "SELECT i.target_id, i.region_id, i.started_at, i.ended_at, i.cause
         FROM unnest($1::int4[], $2::timestamptz[]) AS a(t, f)
         JOIN target_incidents i ON i.target_id = a.t AND (i.ended_at IS NULL OR i.ended_at > a.f)
         ORDER BY 1, 3, 2",
        &[&targets, &froms],
    )? {
        regionals.entry(row.get(0)).or_default().push(Regional {
            region_id: row.get(1),
            started_at: row.get(2),
            ended_at: row.get(3),
            cause: row.get(4),
        });
    }
    let mut rows: (Vec<i32>, Vec<SystemTime>, Vec<Option<SystemTime>>) = Default::default();
    let (mut regions, mut causes): (Vec<i16>, Vec<String>) = Default::default();
    for (target, from) in targets.iter().zip(&froms) {
        let Some(regional) = regionals.get(target) else {
            continue;
        };
        for global in overlaps(regional, quorum, *from) {
            rows.0.push(*target);
            rows.1.push(global.started_at);
            rows.2.push(global.ended_at);
            regions.push(i16::try_from(global.regions).unwrap_or(i16::MAX));
            causes.push(global.cause);
        }
    }
    if rows.0.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "INSERT INTO target_global_incidents (target_id, started_at, ended_at, regions, cause)
         SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[], $4::int2[],
                              $5::text[])",
        &[&rows.0, &rows.1, &rows.2, &regions, &causes],
    )?;
    Ok(rows.0.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(minute: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + minute * 60)
    }

    fn regional(region_id: i16, from: u64, to: Option<u64>, cause: &str) -> Regional {
        Regional {
            region_id,
            started_at: at(from),
            ended_at: to.map(at),
            cause: cause.into(),
        }
    }

    fn global(from: u64, to: Option<u64>, regions: u16, cause: &str) -> Global {
        Global {
            started_at: at(from),
            ended_at: to.map(at),
            regions,
            cause: cause.into(),
        }
    }

    #[test]
    fn one_region_down_is_no_global_incident_under_a_quorum_of_two() {
        let one = [regional(1, 10, Some(20), "connect_refused")];
        assert!(overlaps(&one, 2, at(0)).is_empty());
        assert_eq!(
            overlaps(&one, 1, at(0)),
            [global(10, Some(20), 1, "connect_refused")]
        );
    }

    #[test]
    fn a_quorum_holds_from_the_kth_region_down_to_the_first_one_up() {
        let three = [
            regional(1, 10, Some(40), "timeout"),
            regional(2, 15, Some(30), "http_503"),
            regional(3, 20, None, "http_503"),
        ];
        // Two or more down from 15 (1 and 2, then all three from 20, then 1 and 3 from 30)
        // until 1 comes up at 40.
        assert_eq!(
            overlaps(&three, 2, at(0)),
            [global(15, Some(40), 3, "timeout")]
        );
        assert_eq!(
            overlaps(&three, 3, at(0)),
            [global(20, Some(30), 3, "timeout")]
        );
    }

    #[test]
    fn an_incident_starting_as_another_ends_keeps_the_quorum() {
        let handover = [
            regional(1, 10, Some(20), "timeout"),
            regional(2, 5, None, "timeout"),
            regional(1, 20, Some(30), "dns"),
        ];
        assert_eq!(
            overlaps(&handover, 2, at(0)),
            [global(10, Some(30), 2, "timeout")]
        );
    }

    #[test]
    fn recomputing_from_a_global_incidents_start_gives_what_a_whole_run_gives() {
        let regionals = [
            regional(1, 0, Some(8), "timeout"),
            regional(2, 2, Some(12), "timeout"),
            regional(3, 6, Some(20), "dns"),
            regional(1, 15, Some(25), "timeout"),
            regional(2, 30, Some(31), "timeout"),
        ];
        let whole = overlaps(&regionals, 2, at(0));
        assert_eq!(
            whole,
            [
                global(2, Some(12), 3, "timeout"),
                global(15, Some(20), 2, "dns")
            ]
        );
        for start in &whole {
            let later: Vec<Regional> = regionals
                .iter()
                .filter(|r| r.ended_at.is_none_or(|end| end > start.started_at))
                .cloned()
                .collect();
            let again = overlaps(&later, 2, start.started_at);
            let expected: Vec<Global> = whole
                .iter()
                .filter(|g| g.started_at >= start.started_at)
                .cloned()
                .collect();
            assert_eq!(again, expected, "from {:?}", start.started_at);
        }
    }
}
