//! The `tokens` table on PostgreSQL: each tenant's current access token
//! (sealed, bound to the tenant), written outside a refresh, and the
//! broker's start-up cache load. Refresh outcomes (token, job, state,
//! event, each behind its write fence) are written in batches by
//! `refresh_batch.rs` through `pbx_record_refreshes`
//! (`migrations/postgres/0005_record_refreshes.sql`): the tenant row is
//! locked first, so two outcomes for one tenant from two replicas apply
//! one after the other (each whole), and an outcome racing a delete either
//! lands before it or finds no row (`TenantNotFound`).
//!
//! Does not: decide when to refresh or what a failure means.

use super::{execute, query, query_opt, Tx};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::AccessToken;
use crate::store::rows::{parse_base_url, parse_id, parse_state};
use crate::store::seal::{self, Field};
use crate::store::{CacheLoad, CachedTenant, StoreError};

/// Replaces the tenant's token.
pub(super) async fn upsert(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: &str,
    token: &AccessToken,
) -> Result<(), StoreError> {
    let sealed = seal::seal(keys, tenant_id, Field::AccessToken, token.value.expose())?;
    execute(
        tx,
        "INSERT INTO tokens (tenant_id, token_sealed, token_type, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id) DO UPDATE SET token_sealed = excluded.token_sealed, \
             token_type = excluded.token_type, issued_at = excluded.issued_at, \
             expires_at = excluded.expires_at",
        &[
            &tenant_id,
            &sealed,
            &token.token_type,
            &token.issued_at.0,
            &token.expires_at.0,
        ],
    )
    .await?;
    Ok(())
}

/// The tenants named, with their tokens: one primary-key lookup per id,
/// whatever the batch's size. With `WHERE t.tenant_id = ANY($1)` the
/// planner switched, from about 100 ids on, to a hash join over a whole
/// scan of `tokens` (10.7 ms for 150 ids and 19.9 ms for 400 at 20,000
/// tenants, growing with the tenants; these lookups: 2.6 ms for 256),
/// which took a fifth of the database server's CPU during renewals: the
/// change feed reads renewed tenants in batches. OFFSET 0 keeps the
/// subquery from being merged into a join the planner could reorder.
pub(super) const SELECT_IDS: &str = "SELECT x.* FROM (SELECT DISTINCT unnest($1::text[]) AS id) w \
     CROSS JOIN LATERAL (SELECT t.tenant_id, t.pbx_base_url, t.state, \
            k.token_sealed, k.token_type, k.issued_at, k.expires_at \
         FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
         WHERE t.tenant_id = w.id COLLATE \"C\" OFFSET 0) x";

/// Every tenant with its token; a token that does not open is left out
/// with a warning naming the tenant (see the SQLite twin).
pub(super) async fn load_cache(tx: &Tx<'_>, keys: &Keyring) -> Result<CacheLoad, StoreError> {
    load_cache_of(tx, keys, None).await
}

/// As [`load_cache`], every tenant or the ones named.
pub(super) async fn load_cache_of(
    tx: &Tx<'_>,
    keys: &Keyring,
    only: Option<&[&str]>,
) -> Result<CacheLoad, StoreError> {
    const SELECT: &str = "SELECT t.tenant_id, t.pbx_base_url, t.state, \
                k.token_sealed, k.token_type, k.issued_at, k.expires_at \
         FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id";
    let rows = match only {
        None => query(tx, SELECT, &[]).await?,
        Some(ids) => query(tx, SELECT_IDS, &[&ids]).await?,
    };
    let mut out = Vec::with_capacity(rows.len());
    let mut dropped_tokens = Vec::new();
    for r in rows {
        let id: String = r.try_get(0)?;
        let base_url: String = r.try_get(1)?;
        let state: String = r.try_get(2)?;
        let sealed_token: Option<&[u8]> = r.try_get(3)?;
        let token = match sealed_token {
            None => None,
            Some(sealed_token) => match seal::open(keys, &id, Field::AccessToken, sealed_token) {
                Ok(value) => Some(AccessToken {
                    value,
                    token_type: r.try_get(4)?,
                    issued_at: UnixMs(r.try_get(5)?),
                    expires_at: UnixMs(r.try_get(6)?),
                }),
                Err(e @ (StoreError::Unseal { .. } | StoreError::Corrupt(_))) => {
                    tracing::warn!(tenant = %id, "the stored token of tenant {id} does not open ({e}); dropped, a new one is fetched");
                    dropped_tokens.push(parse_id(&id)?);
                    None
                }
                Err(e) => return Err(e),
            },
        };
        out.push(CachedTenant {
            base_url: parse_base_url(&id, &base_url)?,
            state: parse_state(&id, &state)?,
            id: parse_id(&id)?,
            token,
        });
    }
    Ok(CacheLoad {
        tenants: out,
        dropped_tokens,
    })
}

/// The `expires_at` of the stored token, if any (for
/// [`TenantChanges::check_token_swap`](crate::store::TenantChanges::check_token_swap)).
pub(super) async fn stored_expiry(
    tx: &Tx<'_>,
    tenant_id: &str,
) -> Result<Option<UnixMs>, StoreError> {
    let stored: Option<i64> = query_opt(
        tx,
        "SELECT expires_at FROM tokens WHERE tenant_id = $1",
        &[&tenant_id],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    Ok(stored.map(UnixMs))
}
