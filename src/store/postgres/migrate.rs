//! PostgreSQL schema migrations: every `migrations/postgres/NNNN_name.sql`
//! compiled in, in order; the `schema_version` table records each one
//! applied. Pending ones run in ONE transaction that first takes a
//! transaction-level advisory lock, so replicas starting together migrate
//! once: the others wait on the lock, then find nothing left to do. A
//! database newer than the binary is refused (`SchemaTooNew`).
//!
//! Does not: migrate down, or touch data outside the SQL files.

use tokio_postgres::Client;

use crate::store::StoreError;

/// One schema step. `version` is the number in its file name.
pub(super) struct Migration {
    pub(super) version: i64,
    pub(super) name: &'static str,
    pub(super) sql: &'static str,
}

/// Append only: never edit a released migration, add the next file instead.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_tenant_events",
        sql: include_str!("../../../migrations/postgres/0002_tenant_events.sql"),
    },
    Migration {
        version: 3,
        name: "0003_host_budget",
        sql: include_str!("../../../migrations/postgres/0003_host_budget.sql"),
    },
    Migration {
        version: 4,
        name: "0004_change_feed",
        sql: include_str!("../../../migrations/postgres/0004_change_feed.sql"),
    },
    Migration {
        version: 5,
        name: "0005_record_refreshes",
        sql: include_str!("../../../migrations/postgres/0005_record_refreshes.sql"),
    },
    Migration {
        version: 6,
        name: "0006_host_budget_buckets",
        sql: include_str!("../../../migrations/postgres/0006_host_budget_buckets.sql"),
    },
    Migration {
        version: 7,
        name: "0007_record_refreshes_by_set",
        sql: include_str!("../../../migrations/postgres/0007_record_refreshes_by_set.sql"),
    },
];

/// The advisory lock key every replica takes while migrating (an arbitrary
/// constant: "pbxtoknd" in ASCII).
const LOCK_KEY: i64 = 0x7062_7874_6f6b_6e64;

/// The schema version this binary writes.
pub(super) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub(super) const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
         version    BIGINT NOT NULL PRIMARY KEY, \
         name       TEXT   NOT NULL, \
         applied_at BIGINT NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::bigint)";

/// Brings the database up to the last of `migrations`. Returns the version
/// found before.
pub(super) async fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<i64, StoreError> {
    let supported = migrations.last().map_or(0, |m| m.version);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(CREATE_VERSION_TABLE).await?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        tracing::info!(
            version = m.version,
            name = m.name,
            "applying PostgreSQL migration"
        );
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_every_file_is_listed() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{} is out of order", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            last = m.version;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
    }
}
