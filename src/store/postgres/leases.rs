//! The `host_leases` table on PostgreSQL: renewal duty per PBX host, on the
//! DATABASE's clock (the caller's `now` is ignored, except in the
//! conformance suite's store), so replicas whose clocks disagree still
//! agree on who holds a lease.
//!
//! A claim is one upsert whose conflict branch only fires when the lease
//! is free, expired or the claimant's own: PostgreSQL locks the row while
//! it decides, so two replicas claiming at once never both win. The epoch
//! grows by one at every change of holder and is never reset (the row is
//! never deleted, and the table is a normal, logged one).
//!
//! Does not: decide when to claim or what a lost lease stops.

use async_trait::async_trait;

use super::{execute, query, query_one, query_opt, PgStore};
use crate::clock::UnixMs;
use crate::store::{Lease, LeaseClaim, LeaseTable, StoreError};

/// Now on the database's clock, in ms since the Unix epoch.
/// `clock_timestamp()`, not `now()`: the time of this statement, not of the
/// transaction's start (a claim that waited for a row lock must not use
/// the time from before the wait).
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn lease(r: &tokio_postgres::Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        host: r.try_get(0)?,
        holder: r.try_get(1)?,
        epoch: r.try_get(2)?,
        expires_at: UnixMs(r.try_get(3)?),
    })
}

#[async_trait]
impl LeaseTable for PgStore {
    async fn claim_lease(
        &self,
        host: &str,
        holder: &str,
        ttl_ms: i64,
        now: UnixMs,
    ) -> Result<LeaseClaim, StoreError> {
        let (host, holder) = (host.to_owned(), holder.to_owned());
        let ttl = ttl_ms.max(0);
        let caller_now: Option<i64> = self.caller_lease_clock.then_some(now.0);
        self.write(move |tx, _| {
            Box::pin(async move {
                // $4 is NULL (the database's clock) except in the suite.
                let now = format!("COALESCE($4::bigint, {DB_NOW_MS})");
                let claim = format!(
                    "INSERT INTO host_leases AS l (pbx_host, holder, epoch, expires_at) \
                     VALUES ($1, $2, 1, {now} + $3) \
                     ON CONFLICT (pbx_host) DO UPDATE SET \
                         holder = excluded.holder, \
                         epoch = CASE WHEN l.holder = excluded.holder \
                                       AND l.expires_at > {now} \
                                      THEN l.epoch ELSE l.epoch + 1 END, \
                         expires_at = {now} + $3 \
                     WHERE l.holder = excluded.holder OR l.expires_at <= {now} \
                     RETURNING pbx_host, holder, epoch, expires_at"
                );
                let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&host, &holder, &ttl, &caller_now];
                if let Some(r) = query_opt(tx, &claim, &args).await? {
                    return Ok(LeaseClaim::Granted(lease(&r)?));
                }
                // Refused: the row is locked by the upsert above, so this
                // reads the lease that won.
                let r = query_one(
                    tx,
                    "SELECT pbx_host, holder, epoch, expires_at FROM host_leases \
                     WHERE pbx_host = $1",
                    &[&host],
                )
                .await?;
                Ok(LeaseClaim::Refused(lease(&r)?))
            })
        })
        .await
    }

    async fn release_lease(&self, host: &str, holder: &str, epoch: i64) -> Result<(), StoreError> {
        let (host, holder) = (host.to_owned(), holder.to_owned());
        self.write(move |tx, _| {
            Box::pin(async move {
                // Expired at once rather than deleted: the epoch must survive.
                execute(
                    tx,
                    "UPDATE host_leases SET expires_at = LEAST(expires_at, 0) \
                     WHERE pbx_host = $1 AND holder = $2 AND epoch = $3",
                    &[&host, &holder, &epoch],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                query(
                    tx,
                    "SELECT pbx_host, holder, epoch, expires_at FROM host_leases ORDER BY pbx_host",
                    &[],
                )
                .await?
                .iter()
                .map(lease)
                .collect()
            })
        })
        .await
    }
}
