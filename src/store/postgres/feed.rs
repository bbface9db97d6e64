//! The change feed and the replicas table on PostgreSQL (see
//! `store/feed.rs` for the contract). The `changes` rows are written by
//! triggers (`migrations/postgres/0002_change_feed.sql`), so every write
//! path records its change in its own transaction; this file reads them,
//! prunes them, and keeps the `replicas` heartbeats. Heartbeats and
//! liveness are on the database's clock, so replicas' clocks need not
//! agree. The LISTEN side is `listen.rs`.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{execute, query, query_one, tokens, PgStore};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::{CachedTenant, Change, ChangeFeed, ChangeKind, Hint, ReplicaRow, StoreError};

/// Now on the database's clock, in ms since the Unix epoch.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

#[async_trait]
impl ChangeFeed for PgStore {
    fn change_hints(&self) -> Option<mpsc::Receiver<Hint>> {
        Some(super::listen::spawn(self.inner.listen.clone()))
    }

    async fn latest_change_id(&self) -> Result<i64, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                let row = query_one(tx, "SELECT coalesce(max(id), 0) FROM changes", &[]).await?;
                Ok(row.try_get(0)?)
            })
        })
        .await
    }

    async fn oldest_change_id(&self) -> Result<Option<i64>, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                let row = query_one(tx, "SELECT min(id) FROM changes", &[]).await?;
                Ok(row.try_get(0)?)
            })
        })
        .await
    }

    async fn changes_after(
        &self,
        after: i64,
        also: Vec<i64>,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        self.read(move |tx, _| {
            Box::pin(async move {
                let rows = query(
                    tx,
                    "SELECT id, kind, key, \
                         (extract(epoch FROM clock_timestamp()) * 1000)::bigint - at \
                     FROM ((SELECT * FROM changes WHERE id > $1 ORDER BY id LIMIT $2) \
                           UNION SELECT * FROM changes WHERE id = ANY($3)) c ORDER BY id",
                    &[&after, &super::limit(limit), &also],
                )
                .await?;
                rows.iter()
                    .map(|r| {
                        let kind: String = r.try_get(1)?;
                        let kind = match kind.as_str() {
                            "tenant" => ChangeKind::Tenant,
                            "client" => ChangeKind::Client,
                            other => {
                                return Err(StoreError::Corrupt(format!(
                                    "changes: unknown kind {other:?}"
                                )))
                            }
                        };
                        Ok(Change {
                            id: r.try_get(0)?,
                            kind,
                            key: r.try_get(2)?,
                            age_ms: r.try_get::<_, i64>(3)?.max(0),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn prune_changes(&self, age_ms: i64) -> Result<u64, StoreError> {
        self.bulk(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    &format!("DELETE FROM changes WHERE at < {DB_NOW_MS} - $1"),
                    &[&age_ms],
                )
                .await
            })
        })
        .await
    }

    async fn cached_tenant(&self, id: &TenantId) -> Result<Option<CachedTenant>, StoreError> {
        let id = id.clone();
        self.read(move |tx, keys| {
            Box::pin(async move {
                let load = tokens::load_cache_of(tx, keys, Some(&[id.as_str()])).await?;
                Ok(load.tenants.into_iter().next())
            })
        })
        .await
    }

    async fn cached_tenants(
        &self,
        ids: &[TenantId],
    ) -> Result<Vec<Option<CachedTenant>>, StoreError> {
        let wanted: Vec<TenantId> = ids.to_vec();
        let mut found = self
            .read(move |tx, keys| {
                Box::pin(async move {
                    let names: Vec<&str> = wanted.iter().map(TenantId::as_str).collect();
                    Ok(tokens::load_cache_of(tx, keys, Some(&names)).await?.tenants)
                })
            })
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect::<std::collections::HashMap<_, _>>();
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    async fn replica_heartbeat(
        &self,
        name: &str,
        applied_change_id: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    &format!(
                        "INSERT INTO replicas AS r (name, last_heartbeat, applied_change_id, started_at) \
                         VALUES ($1, {DB_NOW_MS}, $2, {DB_NOW_MS}) \
                         ON CONFLICT (name) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, \
                             applied_change_id = GREATEST(r.applied_change_id, excluded.applied_change_id)"
                    ),
                    &[&name, &applied_change_id],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn replicas(&self, live_ms: i64, keep_ms: i64) -> Result<Vec<ReplicaRow>, StoreError> {
        self.read(move |tx, _| {
            Box::pin(async move {
                let rows = query(
                    tx,
                    &format!(
                        "SELECT r.name, r.last_heartbeat, r.applied_change_id, \
                             r.last_heartbeat >= {DB_NOW_MS} - $1, \
                             coalesce(array_agg(l.pbx_host ORDER BY l.pbx_host) \
                                 FILTER (WHERE l.pbx_host IS NOT NULL), '{{}}') \
                         FROM replicas r LEFT JOIN host_leases l \
                             ON l.holder = r.name AND l.expires_at > {DB_NOW_MS} \
                         WHERE r.last_heartbeat >= {DB_NOW_MS} - $2 \
                         GROUP BY r.name, r.last_heartbeat, r.applied_change_id ORDER BY r.name"
                    ),
                    &[&live_ms, &keep_ms],
                )
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(ReplicaRow {
                            name: r.try_get(0)?,
                            last_heartbeat: UnixMs(r.try_get(1)?),
                            applied_change_id: r.try_get(2)?,
                            live: r.try_get(3)?,
                            renewing_hosts: r.try_get(4)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }
}
