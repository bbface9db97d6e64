//! Schema migrations: every `migrations/NNNN_name.sql` file is compiled in,
//! in order; `PRAGMA user_version` records the number of the last one
//! applied. Numbers increase but need not be consecutive (branches add
//! migrations in parallel; a merged list is simply sorted). Pending
//! ones run in ONE transaction, so a database is always at a version this
//! list names, never half-way. A database newer than the binary is refused.
//!
//! Does not: migrate down, or touch data outside the SQL files.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

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
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_onboarding",
        sql: include_str!("../../../migrations/0002_onboarding.sql"),
    },
    Migration {
        version: 3,
        name: "0003_clients_audit",
        sql: include_str!("../../../migrations/0003_clients_audit.sql"),
    },
    Migration {
        version: 4,
        name: "0004_heartbeat",
        sql: include_str!("../../../migrations/0004_heartbeat.sql"),
    },
    Migration {
        version: 5,
        name: "0005_jobs_by_host",
        sql: include_str!("../../../migrations/0005_jobs_by_host.sql"),
    },
    Migration {
        version: 6,
        name: "0006_bound_credentials",
        sql: include_str!("../../../migrations/0006_bound_credentials.sql"),
    },
    Migration {
        version: 7,
        name: "0007_host_leases",
        sql: include_str!("../../../migrations/0007_host_leases.sql"),
    },
    Migration {
        version: 8,
        name: "0008_tenant_events",
        sql: include_str!("../../../migrations/0008_tenant_events.sql"),
    },
    Migration {
        version: 9,
        name: "0009_state_claim",
        sql: include_str!("../../../migrations/0009_state_claim.sql"),
    },
];

/// The schema version this binary writes.
pub(super) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

pub(super) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database up to the last of `migrations`. Returns the version
/// found before.
pub(super) fn apply(conn: &mut Connection, migrations: &[Migration]) -> Result<i64, StoreError> {
    let supported = migrations.last().map_or(0, |m| m.version);
    // IMMEDIATE takes the write lock first, so a second process starting at
    // the same moment waits and then sees the version this one wrote.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = user_version(&tx)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        tracing::info!(version = m.version, name = m.name, "applying migration");
        tx.execute_batch(m.sql)?;
        // user_version lives in the database header and is part of the
        // transaction: it commits or rolls back with the schema.
        tx.pragma_update(None, "user_version", m.version)?;
    }
    tx.commit()?;
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
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
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
        assert_eq!(
            files, listed,
            "every migrations/*.sql must be in MIGRATIONS"
        );
    }

    #[test]
    fn failing_migration_leaves_nothing_behind() {
        let mut conn = Connection::open_in_memory().unwrap();
        let bad = [
            Migration {
                version: 1,
                name: "0001_ok",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                version: 2,
                name: "0002_broken",
                sql: "CREATE TABLE b (x INTEGER); THIS IS NOT SQL;",
            },
        ];
        assert!(apply(&mut conn, &bad).is_err());
        assert_eq!(user_version(&conn).unwrap(), 0);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
        // The good prefix alone applies, and applying again is a no-op.
        assert_eq!(apply(&mut conn, &bad[..1]).unwrap(), 0);
        assert_eq!(apply(&mut conn, &bad[..1]).unwrap(), 1);
        assert_eq!(user_version(&conn).unwrap(), 1);
    }

    #[test]
    fn newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        match apply(&mut conn, MIGRATIONS) {
            Err(StoreError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (99, latest_version()));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::Arc;

    use super::super::testutil::*;
    use super::super::SqliteStore;
    use super::*;
    use crate::domain::TenantState;

    #[tokio::test]
    async fn migrations_are_idempotent_across_reopen() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        t.store.close().await.unwrap();
        for _ in 0..2 {
            let s = SqliteStore::open(&t.path, Arc::clone(&t.keys)).unwrap();
            let got = s.get_tenant(&tid("acme")).await.unwrap().unwrap();
            assert_eq!(got.state, TenantState::Active);
            assert!(s.trusted_credentials(&tid("acme")).await.unwrap().is_some());
            s.close().await.unwrap();
        }
        let v = user_version(&t.raw()).unwrap();
        assert_eq!(v, latest_version());
    }
}
