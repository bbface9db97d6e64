//! The `audit_events` table: an append-only record of admin mutations (who,
//! what, which tenant, outcome), paged newest first by id.
//!
//! Does not: decide what is audited or check that no secret is passed in
//! (`src/audit.rs` and the API layer pass only ids, action names and
//! secret-free messages).

use async_trait::async_trait;

use crate::store::AuditLog;
use rusqlite::{params, Connection};

use super::StoreError;
use super::{AuditEntry, AuditQuery, NewAuditEvent, SqliteStore};
use crate::clock::UnixMs;

#[async_trait]
impl AuditLog for SqliteStore {
    /// Appends one event; returns its id.
    async fn insert_audit(&self, event: NewAuditEvent) -> Result<i64, StoreError> {
        self.write(move |tx, _| insert(tx, &event)).await
    }

    /// Events newest first, filtered and paged by `q`.
    async fn list_audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn, _| list(conn, &q)).await
    }
}

pub(super) fn insert(tx: &Connection, e: &NewAuditEvent) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit_events (at, client_id, action, tenant_id, outcome, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        e.at.0,
        e.client_id,
        e.action,
        e.tenant_id,
        e.outcome,
        e.detail
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Newest first. Filters are exact matches; unset filters match all.
fn list(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, client_id, action, tenant_id, outcome, detail FROM audit_events \
         WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR tenant_id = ?2) \
           AND (?3 IS NULL OR client_id = ?3) \
         ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![q.before_id, q.tenant_id, q.client_id, q.limit],
        |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                event: NewAuditEvent {
                    at: UnixMs(r.get(1)?),
                    client_id: r.get(2)?,
                    action: r.get(3)?,
                    tenant_id: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: r.get(6)?,
                },
            })
        },
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
