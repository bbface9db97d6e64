//! The `tokens` table on PostgreSQL: each tenant's current access token
//! (sealed, bound to the tenant), the broker's start-up cache load, and a
//! refresh outcome recorded in one transaction.
//!
//! Concurrency: `record_refresh` starts with one `UPDATE tenants ...
//! RETURNING`, which locks the tenant row until commit; the token and job
//! writes that follow are upserts. Two outcomes for one tenant from two
//! replicas therefore apply one after the other (each whole), and an
//! outcome racing a delete either lands before it (and is deleted with the
//! tenant) or finds no row (`TenantNotFound`), never a half-written one.
//!
//! Fences (`check_fence`): the tenant row is locked first (`FOR UPDATE`)
//! and, for a lease fence, the lease row shared (`FOR SHARE`, so a claim by
//! another replica waits for this commit); the check that follows is a new
//! statement, so under READ COMMITTED it sees every write committed before
//! the lock was granted. Check and write are then one atomic step.
//!
//! Does not: decide when to refresh or what a failure means.

use super::events::{state_of, EventCx};
use super::{execute, jobs, query, query_opt, Tx};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::AccessToken;
use crate::store::rows::{parse_base_url, parse_id, parse_state};
use crate::store::seal::{self, Field};
use crate::store::{
    event_messages, CacheLoad, CachedTenant, RefreshRecord, StoreError, WriteFence,
};

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

/// Every tenant with its token; a token that does not open is left out
/// with a warning naming the tenant (see the SQLite twin).
pub(super) async fn load_cache(tx: &Tx<'_>, keys: &Keyring) -> Result<CacheLoad, StoreError> {
    load_cache_of(tx, keys, None).await
}

/// As [`load_cache`], every tenant or the one named.
pub(super) async fn load_cache_of(
    tx: &Tx<'_>,
    keys: &Keyring,
    only: Option<&str>,
) -> Result<CacheLoad, StoreError> {
    const SELECT: &str = "SELECT t.tenant_id, t.pbx_base_url, t.state, \
                k.token_sealed, k.token_type, k.issued_at, k.expires_at \
         FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id";
    let rows = match only {
        None => query(tx, SELECT, &[]).await?,
        Some(id) => query(tx, &format!("{SELECT} WHERE t.tenant_id = $1"), &[&id]).await?,
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

/// `Ok` if `fence` still holds in this transaction (see the module doc);
/// `Fenced` naming what moved on otherwise. A deleted tenant passes, so
/// the write reports `TenantNotFound` as before.
pub(super) async fn check_fence(
    tx: &Tx<'_>,
    tenant_id: &str,
    fence: &WriteFence,
) -> Result<(), StoreError> {
    let fenced = |reason: String| {
        Err(StoreError::Fenced {
            tenant: tenant_id.to_owned(),
            reason,
        })
    };
    if *fence == WriteFence::None {
        return Ok(());
    }
    let Some(row) = query_opt(
        tx,
        "SELECT pbx_host FROM tenants WHERE tenant_id = $1 FOR UPDATE",
        &[&tenant_id],
    )
    .await?
    else {
        return Ok(());
    };
    let tenant_host: String = row.try_get(0)?;
    match fence {
        WriteFence::None => Ok(()),
        WriteFence::Lease {
            host,
            holder,
            epoch,
        } => {
            if &tenant_host != host {
                return fenced(format!(
                    "the tenant moved from PBX host {host} to {tenant_host}"
                ));
            }
            let lease = query_opt(
                tx,
                "SELECT holder, epoch FROM host_leases WHERE pbx_host = $1 FOR SHARE",
                &[host],
            )
            .await?;
            let (l_holder, l_epoch): (String, i64) = match &lease {
                Some(r) => (r.try_get(0)?, r.try_get(1)?),
                None => ("nobody".into(), 0),
            };
            if &l_holder == holder && l_epoch == *epoch {
                Ok(())
            } else {
                fenced(format!(
                    "replica {holder} no longer holds the renewal duty of {host} at epoch {epoch} (held by {l_holder} at epoch {l_epoch})"
                ))
            }
        }
        WriteFence::TokenIssuedAt(expected) => {
            let stored: Option<i64> = query_opt(
                tx,
                "SELECT issued_at FROM tokens WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if stored == expected.map(|t| t.0) {
                Ok(())
            } else {
                fenced(format!(
                    "another replica stored a newer token (issued at {}) while this one was fetching",
                    stored.map_or_else(|| "-".into(), |t| UnixMs(t).to_string())
                ))
            }
        }
    }
}

/// A token written outside a refresh (UpdateTenant's first token with new
/// credentials) lands only if the stored token is not newer (by
/// `issued_at`): a call that fetched before a renewal committed, or a
/// replica paused between its fetch and its write, must not put an older
/// token back. The caller holds the tenant's row lock (as every token
/// write takes it first), so no write slips in between this check and its
/// own. `Fenced` otherwise; nothing is written then.
pub(super) async fn check_not_older(
    tx: &Tx<'_>,
    tenant_id: &str,
    issued_at: UnixMs,
) -> Result<(), StoreError> {
    let stored: Option<i64> = query_opt(
        tx,
        "SELECT issued_at FROM tokens WHERE tenant_id = $1",
        &[&tenant_id],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    match stored {
        Some(s) if s > issued_at.0 => Err(StoreError::Fenced {
            tenant: tenant_id.to_owned(),
            reason: format!(
                "a newer token (issued at {}) was stored while this call fetched its token (issued at {issued_at}), by a renewal or another replica",
                UnixMs(s)
            ),
        }),
        _ => Ok(()),
    }
}

/// The outcome of one refresh, in the caller's transaction. Returns
/// consecutive_failures after the update.
pub(super) async fn record_refresh(
    tx: &Tx<'_>,
    keys: &Keyring,
    ev: &EventCx,
    tenant_id: &str,
    record: &RefreshRecord,
    now: UnixMs,
) -> Result<u32, StoreError> {
    // Locks the row first (as the update would); a renewal that changes
    // nothing writes no event and takes no event lock.
    let before = state_of(tx, tenant_id).await?;
    // A tenant an operator disabled, or sent back to authorization, while
    // this refresh was in flight keeps that state.
    let row = match record {
        RefreshRecord::Success { token, .. } => {
            query_opt(
                tx,
                "UPDATE tenants SET \
                     state = CASE WHEN state IN ('disabled', 'pending_authorization') \
                                  THEN state ELSE 'active' END, \
                     consecutive_failures = 0, last_error = NULL, \
                     last_refresh_at = $2, updated_at = $3 \
                 WHERE tenant_id = $1 RETURNING pbx_host, consecutive_failures, state",
                &[&tenant_id, &token.issued_at.0, &now.0],
            )
            .await?
        }
        RefreshRecord::Failure { state, error, .. } => {
            query_opt(
                tx,
                "UPDATE tenants SET \
                     state = CASE WHEN state IN ('disabled', 'pending_authorization') \
                                  THEN state ELSE $2 END, \
                     consecutive_failures = consecutive_failures + 1, last_error = $3, \
                     updated_at = $4 \
                 WHERE tenant_id = $1 RETURNING pbx_host, consecutive_failures, state",
                &[&tenant_id, &state.as_str(), error, &now.0],
            )
            .await?
        }
    };
    let (Some(before), Some(row)) = (before, row) else {
        return Err(StoreError::TenantNotFound(tenant_id.to_owned()));
    };
    let host: String = row.try_get(0)?;
    let failures: i64 = row.try_get(1)?;
    let after = parse_state(tenant_id, &row.try_get::<_, String>(2)?)?;
    match record {
        RefreshRecord::Success { token, renew_at } => {
            upsert(tx, keys, tenant_id, token).await?;
            jobs::upsert(tx, tenant_id, &host, *renew_at, jobs::Attempts::Reset).await?;
            let said = event_messages::RECOVERED;
            ev.state_change(tx, tenant_id, before, after, said, now)
                .await?;
        }
        RefreshRecord::Failure {
            retry_at, error, ..
        } => {
            jobs::upsert(tx, tenant_id, &host, *retry_at, jobs::Attempts::Increment).await?;
            ev.state_change(tx, tenant_id, before, after, error, now)
                .await?;
        }
    }
    u32::try_from(failures).map_err(|_| {
        StoreError::Corrupt(format!(
            "consecutive_failures of tenant {tenant_id} is {failures}"
        ))
    })
}
