//! The `audit_events` table on PostgreSQL: an append-only record of admin
//! mutations, paged newest first by id (an identity column: ids grow and
//! are never reused, also across replicas).
//!
//! Does not: decide what is audited (`src/audit.rs` does).

use async_trait::async_trait;

use super::{query, query_one, PgStore};
use crate::clock::UnixMs;
use crate::store::{AuditEntry, AuditLog, AuditQuery, NewAuditEvent, StoreError};

#[async_trait]
impl AuditLog for PgStore {
    async fn insert_audit(&self, e: NewAuditEvent) -> Result<i64, StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                Ok(query_one(
                    tx,
                    "INSERT INTO audit_events (at, client_id, action, tenant_id, outcome, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[
                        &e.at.0,
                        &e.client_id,
                        &e.action,
                        &e.tenant_id,
                        &e.outcome,
                        &e.detail,
                    ],
                )
                .await?
                .try_get(0)?)
            })
        })
        .await
    }

    /// Newest first. Filters are exact matches; unset filters match all.
    async fn list_audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |tx, _| {
            Box::pin(async move {
                let limit = i64::from(q.limit);
                query(
                    tx,
                    "SELECT id, at, client_id, action, tenant_id, outcome, detail FROM audit_events \
                     WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR tenant_id = $2) \
                       AND ($3::text IS NULL OR client_id = $3) \
                     ORDER BY id DESC LIMIT $4",
                    &[&q.before_id, &q.tenant_id, &q.client_id, &limit],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.try_get(0)?,
                        event: NewAuditEvent {
                            at: UnixMs(r.try_get(1)?),
                            client_id: r.try_get(2)?,
                            action: r.try_get(3)?,
                            tenant_id: r.try_get(4)?,
                            outcome: r.try_get(5)?,
                            detail: r.try_get(6)?,
                        },
                    })
                })
                .collect()
            })
        })
        .await
    }
}
