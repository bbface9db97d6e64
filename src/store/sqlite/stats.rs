//! Aggregate numbers for operators (metrics, `GetServerStatus`): how the
//! held tokens stand against their expiry, and how far the renewal queue
//! is behind. Read-only queries, each one pass over an index or a table.
//!
//! Does not: decide what "too late" means (the caller passes the grace
//! and the renewal window), or read a secret.

use async_trait::async_trait;

use crate::store::StoreStats;
use rusqlite::params;

use super::{HostLoad, QueueStats, TokenHealth};
use super::{SqliteStore, StoreError};
use crate::clock::UnixMs;
use crate::domain::TenantState;

/// Same join order as `jobs::DUE_SQL`: walk the due index from the start.
const QUEUE_SQL: &str = "SELECT count(*), coalesce(sum(j.due_at <= ?2), 0), min(j.due_at) \
     FROM renewal_jobs j CROSS JOIN tenants t ON t.tenant_id = j.tenant_id \
     WHERE j.due_at <= ?1 \
       AND t.state IN ('active', 'renewal_failing', 'credentials_rejected')";

const TOKENS_SQL: &str = "SELECT count(*), count(k.tenant_id), \
        coalesce(sum(k.expires_at <= ?1), 0), \
        coalesce(sum(k.expires_at > ?1 AND (k.expires_at - ?1) < (k.expires_at - k.issued_at) * ?2), 0) \
     FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
     WHERE t.state IN ('active', 'renewal_failing', 'credentials_rejected')";

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl StoreStats for SqliteStore {
    /// Per host (ordered by host): renewing tenants, how many hold a token and
    /// the sum of those tokens' lifetimes.
    async fn host_loads(&self) -> Result<Vec<HostLoad>, StoreError> {
        self.read(|conn, _| super::jobs::host_loads(conn)).await
    }

    /// Tenant count for every state (zero included), in `TenantState::ALL`
    /// order.
    async fn count_by_state(&self) -> Result<Vec<(TenantState, u64)>, StoreError> {
        self.read(|conn, _| super::tenants::count_by_state(conn))
            .await
    }

    /// Token expiry standing at `now`. `window` is the share of a token's
    /// lifetime after its planned renewal point (1 - at_fraction + jitter).
    async fn token_health(&self, now: UnixMs, window: f64) -> Result<TokenHealth, StoreError> {
        self.read(move |conn, _| {
            Ok(conn
                .prepare_cached(TOKENS_SQL)?
                .query_row(params![now.0, window], |r| {
                    Ok(TokenHealth {
                        renewing: count(r.get(0)?),
                        with_token: count(r.get(1)?),
                        expired: count(r.get(2)?),
                        in_renewal_window: count(r.get(3)?),
                    })
                })?)
        })
        .await
    }

    /// Renewal queue standing at `now`; a job is overdue when it has been
    /// due for more than `grace_ms`.
    async fn queue_stats(&self, now: UnixMs, grace_ms: i64) -> Result<QueueStats, StoreError> {
        self.read(move |conn, _| {
            Ok(conn.prepare_cached(QUEUE_SQL)?.query_row(
                params![now.0, now.0 - grace_ms],
                |r| {
                    Ok(QueueStats {
                        due: count(r.get(0)?),
                        overdue: count(r.get(1)?),
                        oldest_due_at: r.get::<_, Option<i64>>(2)?.map(UnixMs),
                    })
                },
            )?)
        })
        .await
    }
}
