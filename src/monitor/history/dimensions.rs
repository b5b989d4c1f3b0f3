//! The small tables a check points into, `tls_details`, `checkers` (migration 2) and `regions`
//! (migration 3): each distinct value is stored once and a check holds its id.
//!
//! Their rows are immutable, so the ids the sink has seen are cached for good, and missing
//! ones are inserted before a batch's transaction, autocommitted: a row no check points to yet
//! is harmless, and batches written at once never wait on each other's dimension rows.

use std::collections::HashMap;
use std::time::SystemTime;

use uuid::Uuid;

use crate::monitor::check::TlsInfo;

/// The namespace of `tls_details.key`: fixed, so keys stay stable across releases.
const TLS_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x3d5e_9b1c_44f0_4c2a_8e61_0b7d_a2c9_5f13);

/// The key of a (handshake, certificate) pair: a v5 UUID of every field that is stored.
pub fn tls_key(tls: &TlsInfo) -> Uuid {
    let seconds = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(|e| -(e.duration().as_secs() as i64))
    };
    // Fields joined by a byte no field holds (names and SANs carry no NUL).
    let mut name = format!(
        "{}\0{}\0{}\0{}\0{}\0{}",
        tls.version,
        tls.cipher,
        seconds(tls.cert_not_before),
        seconds(tls.cert_not_after),
        tls.cert_issuer,
        tls.cert_subject
    );
    for san in &tls.cert_sans {
        name.push('\0');
        name.push_str(san);
    }
    crate::monitor::check::name_based_uuid(&TLS_KEY_NAMESPACE, &[name.as_bytes()])
}

/// Whether `a` and `b` have the same [`tls_key`] (every field it names is equal), which is much
/// cheaper to ask than to work the keys out.
pub fn same_tls_key(a: &TlsInfo, b: &TlsInfo) -> bool {
    let TlsInfo {
        version,
        cipher,
        cert_not_before,
        cert_not_after,
        cert_issuer,
        cert_subject,
        cert_sans,
        cert_expires_soon: _,
    } = a;
    *version == b.version
        && *cipher == b.cipher
        && *cert_not_before == b.cert_not_before
        && *cert_not_after == b.cert_not_after
        && *cert_issuer == b.cert_issuer
        && *cert_subject == b.cert_subject
        && *cert_sans == b.cert_sans
}

/// A checker's identity: its region (`""` without one) and name.
pub type CheckerKey = (String, String);

/// Ids already known to be in the database.
#[derive(Default)]
pub struct Known {
    pub tls: HashMap<Uuid, i32>,
    pub checkers: HashMap<CheckerKey, i16>,
    /// Region name → id; `""` is always 0 (migration 3).
    pub regions: HashMap<String, i16>,
}

const INSERT_TLS: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                         $6::text[], $7::text[], $8::jsonb[])
        AS i(key, version, cipher, not_before, not_after, issuer, subject, sans)
)
INSERT INTO tls_details (key, version, cipher, cert_not_before, cert_not_after, cert_issuer,
                         cert_subject, cert_sans)
SELECT key, version, cipher, not_before, not_after, issuer, subject,
       ARRAY(SELECT jsonb_array_elements_text(sans))
FROM input ORDER BY key
ON CONFLICT (key) DO NOTHING";

const INSERT_CHECKERS: &str = "\
INSERT INTO checkers (region, name)
SELECT * FROM unnest($1::text[], $2::text[]) AS i(region, name) ORDER BY region, name
ON CONFLICT (region, name) DO NOTHING";

/// Inserts what is missing of `tls`, `checkers` and `regions` and returns every id the batch
/// needs.
pub fn ensure(
    client: &mut postgres::Client,
    tls: &[(Uuid, &TlsInfo)],
    checkers: &[CheckerKey],
    regions: &[String],
) -> Result<Known, postgres::Error> {
    let mut known = Known::default();
    if !tls.is_empty() {
        let keys: Vec<Uuid> = tls.iter().map(|(k, _)| *k).collect();
        let versions: Vec<&str> = tls.iter().map(|(_, t)| t.version.as_str()).collect();
        let ciphers: Vec<&str> = tls.iter().map(|(_, t)| t.cipher.as_str()).collect();
        let not_before: Vec<SystemTime> = tls.iter().map(|(_, t)| t.cert_not_before).collect();
        let not_after: Vec<SystemTime> = tls.iter().map(|(_, t)| t.cert_not_after).collect();
        let issuers: Vec<&str> = tls.iter().map(|(_, t)| t.cert_issuer.as_str()).collect();
        let subjects: Vec<&str> = tls.iter().map(|(_, t)| t.cert_subject.as_str()).collect();
        let sans: Vec<serde_json::Value> = tls
            .iter()
            .map(|(_, t)| serde_json::json!(t.cert_sans))
            .collect();
        client.execute(
            INSERT_TLS,
            &[
                &keys,
                &versions,
                &ciphers,
                &not_before,
                &not_after,
                &issuers,
                &subjects,
                &sans,
            ],
        )?;
        // A statement of its own, so it sees rows another writer committed meanwhile.
        for row in client.query(
            "SELECT key, id FROM tls_details WHERE key = ANY($1)",
            &[&keys],
        )? {
            known.tls.insert(row.get(0), row.get(1));
        }
    }
    if !checkers.is_empty() {
        let regions: Vec<&str> = checkers.iter().map(|(r, _)| r.as_str()).collect();
        let names: Vec<&str> = checkers.iter().map(|(_, n)| n.as_str()).collect();
        client.execute(INSERT_CHECKERS, &[&regions, &names])?;
        for row in client.query(
            "SELECT region, name, id FROM checkers
             WHERE (region, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&regions, &names],
        )? {
            known.checkers.insert((row.get(0), row.get(1)), row.get(2));
        }
    }
    if !regions.is_empty() {
        client.execute(
            "INSERT INTO regions (name) SELECT * FROM unnest($1::text[]) AS r(name) ORDER BY name
             ON CONFLICT (name) DO NOTHING",
            &[&regions],
        )?;
        for row in client.query(
            "SELECT name, id FROM regions WHERE name = ANY($1)",
            &[&regions],
        )? {
            known.regions.insert(row.get(0), row.get(1));
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn details() -> TlsInfo {
        TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            cert_not_before: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            cert_not_after: UNIX_EPOCH + Duration::from_secs(1_797_776_000),
            cert_issuer: "CN=CA".into(),
            cert_subject: "CN=example.com".into(),
            cert_sans: vec!["example.com".into()],
            cert_expires_soon: false,
        }
    }

    #[test]
    fn tls_keys_name_every_stored_field_but_not_the_judgement() {
        let base = details();
        assert_eq!(tls_key(&base), tls_key(&base.clone()));
        let judged = TlsInfo {
            cert_expires_soon: true,
            ..base.clone()
        };
        assert_eq!(
            tls_key(&judged),
            tls_key(&base),
            "judged per check, not stored here"
        );
        let renewed = TlsInfo {
            cert_not_after: base.cert_not_after + Duration::from_secs(1),
            ..base.clone()
        };
        assert_ne!(tls_key(&renewed), tls_key(&base));
        let more_names = TlsInfo {
            cert_sans: vec!["example.com".into(), "www.example.com".into()],
            ..base.clone()
        };
        assert_ne!(tls_key(&more_names), tls_key(&base));
        for other in [&base, &judged, &renewed, &more_names] {
            assert_eq!(
                same_tls_key(&base, other),
                tls_key(&base) == tls_key(other),
                "{other:?}"
            );
        }
    }
}
