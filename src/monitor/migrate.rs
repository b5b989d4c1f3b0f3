//! Applying the SQL files in `migrations/` to a database, once each.
//!
//! The files are compiled into the binary, in order of their number. `schema_migrations` records
//! what ran; everything happens in one transaction under an advisory lock, so running twice, or
//! from two writers at once, applies each migration exactly once.

/// One numbered SQL file.
pub struct Migration {
    /// Its number, from the file name; applied in increasing order.
    pub version: i32,
    /// The file name.
    pub name: &'static str,
    /// The SQL, compiled into the binary.
    pub sql: &'static str,
}

/// Every migration, oldest first. A new file in `migrations/` needs a line here (a test checks).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_checks.sql",
        sql: include_str!("../../migrations/0001_checks.sql"),
    },
    Migration {
        version: 2,
        name: "0002_tls_and_checkers.sql",
        sql: include_str!("../../migrations/0002_tls_and_checkers.sql"),
    },
    Migration {
        version: 3,
        name: "0003_compact_checks_rollups_incidents.sql",
        sql: include_str!("../../migrations/0003_compact_checks_rollups_incidents.sql"),
    },
    Migration {
        version: 4,
        name: "0004_global_incidents.sql",
        sql: include_str!("../../migrations/0004_global_incidents.sql"),
    },
    Migration {
        version: 5,
        name: "0005_probe_faults.sql",
        sql: include_str!("../../migrations/0005_probe_faults.sql"),
    },
];

/// Any key will do, as long as it is fixed: it serializes migration runs.
const LOCK_KEY: i64 = 0x7069_7065_6d69_6772; // "pipemigr"

/// Applies what has not been applied yet; returns the versions applied now. Blocking.
pub fn apply(client: &mut postgres::Client) -> Result<Vec<i32>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )?;
        applied.push(migration.version);
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1);
            assert!(migration
                .name
                .starts_with(&format!("{:04}_", migration.version)));
        }
    }
}
