//! `migrate-store`: a stopped SQLite state copied into an EMPTY PostgreSQL
//! database, table by table, with every value as it is at rest (sealed
//! values stay sealed: the same master key opens them on both backends,
//! whose sealing is shared, `store/seal/`).
//!
//! Order: the SQLite file is read (with `query_only` on: the file is never
//! written) and checked (its schema is this binary's, its master key check
//! opens under the configured key); the PostgreSQL database is migrated
//! and must hold no row of ours (refused otherwise, nothing written); every
//! table is inserted in ONE transaction (all or nothing); then the copy is
//! verified through the storage interface: the row counts are equal, the
//! check value opens, every credential opens and matches its columns,
//! every token opens, every authorization flow reads.
//!
//! Not copied: `heartbeat` (liveness of the old process), `host_leases`
//! (a single node's own leases; replicas take theirs afresh).
//!
//! Does not: lock the state directory or read the key (the caller,
//! `crate::migrate_store`, does), or touch the SQLite file.

use std::path::Path;
use std::sync::Arc;

use super::{PgStore, Store, StoreError};
use crate::crypto::Keyring;
use crate::secret::Secret;

/// How a column is typed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Text,
    Blob,
}

/// One value as read from SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A table's columns, in the order both schemas name them.
pub(crate) struct TableSpec {
    pub(crate) name: &'static str,
    pub(crate) columns: &'static [(&'static str, Kind)],
}

use Kind::{Blob as B, Int as I, Text as T};

/// Parents before children (foreign keys).
pub(crate) const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "tenants",
        columns: &[
            ("tenant_id", T),
            ("display_name", T),
            ("pbx_base_url", T),
            ("pbx_host", T),
            ("state", T),
            ("consecutive_failures", I),
            ("last_error", T),
            ("last_refresh_at", I),
            ("pbx_user", T),
            ("created_at", I),
            ("updated_at", I),
        ],
    },
    TableSpec {
        name: "credentials",
        columns: &[
            ("tenant_id", T),
            ("kind", T),
            ("client_id", T),
            ("secret_sealed", B),
            ("redirect_uri", T),
            ("updated_at", I),
        ],
    },
    TableSpec {
        name: "tokens",
        columns: &[
            ("tenant_id", T),
            ("token_sealed", B),
            ("token_type", T),
            ("issued_at", I),
            ("expires_at", I),
        ],
    },
    TableSpec {
        name: "renewal_jobs",
        columns: &[
            ("tenant_id", T),
            ("pbx_host", T),
            ("due_at", I),
            ("attempts", I),
        ],
    },
    TableSpec {
        name: "onboarding_flows",
        columns: &[
            ("tenant_id", T),
            ("state_hash", B),
            ("state_expires_at", I),
            ("step", T),
            ("public_token_sealed", B),
            ("public_token_type", T),
            ("public_token_issued_at", I),
            ("public_token_expires_at", I),
            ("app_name", T),
            ("app_client_id", T),
            ("app_secret_sealed", B),
            ("token_sealed", B),
            ("token_type", T),
            ("token_issued_at", I),
            ("token_expires_at", I),
            ("pbx_user", T),
            ("orphaned_apps", T),
            ("error", T),
            ("created_at", I),
            ("updated_at", I),
            ("exchange_claimed_until", I),
        ],
    },
    TableSpec {
        name: "api_clients",
        columns: &[
            ("client_id", T),
            ("name", T),
            ("role", T),
            ("tenant_patterns", T),
            ("key_hash", B),
            ("created_at", I),
            ("created_by", T),
            ("revoked_at", I),
        ],
    },
    TableSpec {
        name: "audit_events",
        columns: &[
            ("id", I),
            ("at", I),
            ("client_id", T),
            ("action", T),
            ("tenant_id", T),
            ("outcome", T),
            ("detail", T),
        ],
    },
    TableSpec {
        name: "master_key_check",
        columns: &[("id", I), ("sealed", B)],
    },
];

/// One table's rows.
pub(crate) struct TableRows {
    pub(crate) spec: &'static TableSpec,
    pub(crate) rows: Vec<Vec<Value>>,
}

/// What was copied: rows per table, in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
    /// Hosts and database written to (no user, no password).
    pub target: String,
}

/// Copies the SQLite database at `sqlite` into the empty PostgreSQL
/// database at `url` and verifies the copy (see the module comment).
pub async fn sqlite_to_postgres(
    sqlite: &Path,
    keys: Arc<Keyring>,
    url: &str,
    password: Option<&Secret<String>>,
) -> Result<CopyReport, StoreError> {
    let path = sqlite.to_owned();
    let export_keys = Arc::clone(&keys);
    let tables = tokio::task::spawn_blocking(move || super::sqlite::export(&path, &export_keys))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let pg = PgStore::connect(url, password, keys).await?;
    let busy = pg.tables_with_rows().await?;
    if !busy.is_empty() {
        return Err(StoreError::Unsupported(format!(
            "the PostgreSQL database {} is not empty (rows in {}): migrate-store copies into an EMPTY database only, so nothing is overwritten or mixed; create a new database (CREATE DATABASE ...) and give its URL",
            pg.target(),
            busy.join(", ")
        )));
    }
    let expected: Vec<(&'static str, u64)> = tables
        .iter()
        .map(|t| (t.spec.name, t.rows.len() as u64))
        .collect();
    pg.import(tables).await?;
    verify(&pg, &expected).await?;
    Ok(CopyReport {
        tables: expected,
        target: pg.target().to_owned(),
    })
}

/// Counts, then every sealed value through the interface.
async fn verify(pg: &PgStore, expected: &[(&'static str, u64)]) -> Result<(), StoreError> {
    let wrong = |what: String| {
        StoreError::Corrupt(format!(
            "the copy in PostgreSQL does not check out ({what}); do not start replicas on it: drop that database, create an empty one and run migrate-store again"
        ))
    };
    for (table, n) in expected {
        let found = pg.count_rows(table).await?;
        if found != *n {
            return Err(wrong(format!(
                "{table}: {n} rows read, {found} in PostgreSQL"
            )));
        }
    }
    let store = Store::new(pg.clone());
    store.check_master_key().await?;
    let faults = store.credential_faults().await?;
    if let Some(f) = faults.first() {
        return Err(wrong(format!(
            "{} credentials do not open, first of tenant {}: {}",
            faults.len(),
            f.tenant_id,
            f.message
        )));
    }
    let load = store.load_cache_checked().await?;
    if let Some(id) = load.dropped_tokens.first() {
        return Err(wrong(format!(
            "{} tokens do not open, first of tenant {id}",
            load.dropped_tokens.len()
        )));
    }
    for t in &load.tenants {
        store.flow_of(&t.id).await?;
    }
    Ok(())
}
