//! The per-host PBX request budget shared by every replica, on PostgreSQL
//! (`migrations/postgres/0002_host_budget.sql`): taking a slot is one call
//! of `pbx_take_host_slot`, which locks the host's budget row, prunes the
//! window, checks the 429 reset time and the in-flight slots, and records
//! the start, all on the database's clock in one round trip and one
//! transaction. A slot is a row with an expiry, so a replica killed
//! mid-request frees its slots when they expire.
//!
//! Why each call is one autocommit statement with `synchronous_commit`
//! off for its own transaction: taking a slot locks the host's budget row
//! until commit, so every request to a host, from every replica, queues on
//! that lock. Inside an explicit transaction the lock was held across two
//! client round trips (the statement's answer, then COMMIT) and the WAL
//! flush; under load the cluster's renewals were capped by that queue (the
//! cluster campaign saw 40 sessions waiting on it and renewals falling
//! behind at ~130/s). Now the lock lasts only the server-side statement
//! and its commit, which does not wait for the disk. Losing the last few
//! slot records to a database crash is harmless: a slot is a moment in a
//! one-second window and a crash or failover takes longer than that.
//!
//! Does not: wait, retry or decide what a refusal means (`pbx::gated`
//! does, through the engine's adapter).

use async_trait::async_trait;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{error, execute, PgStore};
use crate::store::{HostBudget, SlotGrant, SlotRequest, StoreError};

impl PgStore {
    /// One statement in its own (implicit) transaction, one row back; a
    /// connection left useless is taken out of the pool, as `write` does.
    async fn autocommit_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        let client = self.client().await?;
        let out: Result<Row, StoreError> = async {
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query_one(&stmt, params).await?)
        }
        .await;
        if let Err(e) = &out {
            if error::breaks_connection(e) {
                drop(deadpool_postgres::Object::take(client));
            }
        }
        out
    }
}

#[async_trait]
impl HostBudget for PgStore {
    async fn take_host_slot(&self, req: SlotRequest) -> Result<SlotGrant, StoreError> {
        let rps = i32::try_from(req.rps).unwrap_or(i32::MAX);
        let concurrent = i32::try_from(req.concurrent).unwrap_or(i32::MAX);
        let r = self
            .autocommit_one(
                // set_config(.., true): this statement's implicit
                // transaction commits without waiting for the WAL flush.
                "SELECT outcome, slot, wait_ms, \
                        set_config('synchronous_commit', 'off', true) \
                 FROM pbx_take_host_slot($1, $2, $3, $4, $5, $6)",
                &[
                    &req.host,
                    &req.holder,
                    &rps,
                    &concurrent,
                    &req.window_ms,
                    &req.slot_ttl_ms,
                ],
            )
            .await?;
        let outcome: String = r.try_get(0)?;
        let slot: Option<i64> = r.try_get(1)?;
        let wait_ms: i64 = r.try_get::<_, i64>(2)?.max(0);
        Ok(match (outcome.as_str(), slot) {
            ("granted", Some(slot)) => SlotGrant::Granted { slot },
            ("throttled", _) => SlotGrant::Throttled { wait_ms },
            ("rate", _) => SlotGrant::RateLimited { wait_ms },
            ("busy", _) => SlotGrant::Busy,
            (other, _) => {
                return Err(StoreError::Corrupt(format!(
                    "pbx_take_host_slot answered {other:?}"
                )))
            }
        })
    }

    async fn release_host_slot(&self, slot: i64) -> Result<(), StoreError> {
        self.autocommit_one(
            "WITH gone AS (DELETE FROM host_slots WHERE slot_id = $1 RETURNING 1) \
             SELECT set_config('synchronous_commit', 'off', true), (SELECT count(*) FROM gone)",
            &[&slot],
        )
        .await?;
        Ok(())
    }

    async fn throttle_host(&self, host: &str, retry_after_ms: i64) -> Result<(), StoreError> {
        let host = host.to_owned();
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO host_budget AS b (pbx_host, throttled_until) \
                     VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2) \
                     ON CONFLICT (pbx_host) DO UPDATE SET \
                         throttled_until = GREATEST(b.throttled_until, excluded.throttled_until)",
                    &[&host, &retry_after_ms.max(0)],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
