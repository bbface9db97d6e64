//! The `tokens` table: each tenant's current access token (sealed, bound to
//! the tenant), the broker's start-up cache load, and recording the outcome
//! of a refresh (token, tenant state and counters, next job) in one
//! transaction.
//!
//! Does not: decide when to refresh or what state a failure means (renewal
//! and the broker do); it records what they decided.

use rusqlite::{params, Connection, OptionalExtension};

use super::sealed::{self, Field};
use super::tenants::{parse_base_url, parse_id, parse_state};
use super::{jobs, CacheLoad, CachedTenant, RefreshRecord, StoreError};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::AccessToken;

/// Replaces the tenant's token; the old sealed bytes are overwritten in
/// place (`secure_delete`).
pub(super) fn upsert(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    token: &AccessToken,
) -> Result<(), StoreError> {
    let sealed = sealed::seal(keys, tenant_id, Field::AccessToken, token.value.expose())?;
    tx.prepare_cached(
        "INSERT INTO tokens (tenant_id, token_sealed, token_type, issued_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (tenant_id) DO UPDATE SET token_sealed = excluded.token_sealed, \
             token_type = excluded.token_type, issued_at = excluded.issued_at, \
             expires_at = excluded.expires_at",
    )?
    .execute(params![
        tenant_id,
        sealed,
        token.token_type,
        token.issued_at.0,
        token.expires_at.0
    ])?;
    Ok(())
}

/// One pass over tenants joined with tokens, unsealing each token. Linear
/// in the number of tenants with no query per row: 100,000 tenants load in
/// a fraction of a second in a release build.
///
/// A token that does not open (moved from another row, damaged) is left
/// out with a warning naming the tenant: it is only a cached copy the PBX
/// gives again, and refusing the load would stop every tenant for one row.
pub(super) fn load_cache(conn: &Connection, keys: &Keyring) -> Result<CacheLoad, StoreError> {
    let total: i64 = conn.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))?;
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut dropped_tokens = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT t.tenant_id, t.pbx_base_url, t.state, \
                k.token_sealed, k.token_type, k.issued_at, k.expires_at \
         FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let base_url: String = r.get(1)?;
        let state: String = r.get(2)?;
        // Borrow the blob from SQLite's row buffer: no copy before unsealing.
        let sealed_blob = r
            .get_ref(3)?
            .as_blob_or_null()
            .map_err(|e| StoreError::Corrupt(format!("token_sealed of tenant {id}: {e}")))?;
        let token = match sealed_blob {
            None => None,
            Some(sealed_token) => match sealed::open(keys, &id, Field::AccessToken, sealed_token) {
                Ok(value) => Some(AccessToken {
                    value,
                    token_type: r.get(4)?,
                    issued_at: UnixMs(r.get(5)?),
                    expires_at: UnixMs(r.get(6)?),
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

/// The outcome of one refresh, in the caller's transaction. Returns
/// consecutive_failures after the update.
pub(super) fn record_refresh(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    record: &RefreshRecord,
    now: UnixMs,
) -> Result<u32, StoreError> {
    // A tenant an operator disabled, or sent back to authorization, while
    // this refresh was in flight keeps that state.
    let row: Option<(String, i64)> = match record {
        RefreshRecord::Success { token, .. } => tx
            .prepare_cached(
                "UPDATE tenants SET \
                     state = CASE WHEN state IN ('disabled', 'pending_authorization') \
                                  THEN state ELSE 'active' END, \
                     consecutive_failures = 0, last_error = NULL, \
                     last_refresh_at = ?2, updated_at = ?3 \
                 WHERE tenant_id = ?1 RETURNING pbx_host, consecutive_failures",
            )?
            .query_row(params![tenant_id, token.issued_at.0, now.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?,
        RefreshRecord::Failure { state, error, .. } => tx
            .prepare_cached(
                "UPDATE tenants SET \
                     state = CASE WHEN state IN ('disabled', 'pending_authorization') \
                                  THEN state ELSE ?2 END, \
                     consecutive_failures = consecutive_failures + 1, last_error = ?3, \
                     updated_at = ?4 \
                 WHERE tenant_id = ?1 RETURNING pbx_host, consecutive_failures",
            )?
            .query_row(params![tenant_id, state.as_str(), error, now.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?,
    };
    let Some((host, failures)) = row else {
        return Err(StoreError::TenantNotFound(tenant_id.to_owned()));
    };
    match record {
        RefreshRecord::Success { token, renew_at } => {
            upsert(tx, keys, tenant_id, token)?;
            jobs::upsert(tx, tenant_id, &host, *renew_at, jobs::Attempts::Reset)?;
        }
        RefreshRecord::Failure { retry_at, .. } => {
            jobs::upsert(tx, tenant_id, &host, *retry_at, jobs::Attempts::Increment)?;
        }
    }
    u32::try_from(failures).map_err(|_| {
        StoreError::Corrupt(format!(
            "consecutive_failures of tenant {tenant_id} is {failures}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::domain::TenantState;

    #[tokio::test]
    async fn record_refresh_counts_failures_and_resets_on_success() {
        let t = open_temp();
        let id = tid("acme");
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let fail = |state, n: i64| RefreshRecord::Failure {
            state,
            error: format!("failure {n}"),
            retry_at: T0.plus_ms(n * 1000),
        };
        let n1 = t
            .store
            .record_refresh(&id, fail(TenantState::RenewalFailing, 1), T0.plus_ms(1))
            .await
            .unwrap();
        let n2 = t
            .store
            .record_refresh(
                &id,
                fail(TenantState::CredentialsRejected, 2),
                T0.plus_ms(2),
            )
            .await
            .unwrap();
        assert_eq!((n1, n2), (1, 2));
        let got = t.store.get_tenant(&id).await.unwrap().unwrap();
        assert_eq!(got.state, TenantState::CredentialsRejected);
        assert_eq!(got.consecutive_failures, 2);
        assert_eq!(got.last_error.as_deref(), Some("failure 2"));
        assert_eq!(got.next_refresh_at, Some(T0.plus_ms(2000)));
        assert_eq!(got.updated_at, T0.plus_ms(2));
        // The held token is untouched by failures.
        assert_eq!(got.token_expires_at, Some(T0.plus_ms(HOUR)));
        assert_eq!(got.last_refresh_at, Some(T0));
        let attempts = |t: &TestStore| -> i64 {
            t.raw()
                .query_row(
                    "SELECT attempts FROM renewal_jobs WHERE tenant_id = 'acme'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(attempts(&t), 2);

        let issued = T0.plus_ms(HOUR);
        let ok = RefreshRecord::Success {
            token: token("fresh-token", issued),
            renew_at: issued.plus_ms(HOUR / 2),
        };
        let n = t.store.record_refresh(&id, ok, issued).await.unwrap();
        assert_eq!(n, 0);
        let got = t.store.get_tenant(&id).await.unwrap().unwrap();
        assert_eq!(got.state, TenantState::Active);
        assert_eq!((got.consecutive_failures, got.last_error), (0, None));
        assert_eq!(got.last_refresh_at, Some(issued));
        assert_eq!(got.token_expires_at, Some(issued.plus_ms(HOUR)));
        assert_eq!(got.next_refresh_at, Some(issued.plus_ms(HOUR / 2)));
        assert_eq!(attempts(&t), 0);
        let cache = t.store.load_cache().await.unwrap();
        let tok = cache[0].token.as_ref().unwrap();
        assert_eq!(tok.value.expose(), "fresh-token");
        assert_eq!(tok.issued_at, issued);

        let gone = tid("gone");
        assert!(matches!(
            t.store
                .record_refresh(&gone, fail(TenantState::RenewalFailing, 3), T0)
                .await,
            Err(StoreError::TenantNotFound(_))
        ));
    }

    #[tokio::test]
    async fn record_refresh_does_not_undo_an_operator_decision() {
        let t = open_temp();
        let id = tid("acme");
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Disabled))
            .await
            .unwrap();
        let ok = RefreshRecord::Success {
            token: token("late", T0),
            renew_at: T0.plus_ms(HOUR),
        };
        t.store.record_refresh(&id, ok, T0).await.unwrap();
        let got = t.store.get_tenant(&id).await.unwrap().unwrap();
        assert_eq!(got.state, TenantState::Disabled);
        // Its job exists but is never due while disabled.
        assert!(t
            .store
            .due_jobs(T0.plus_ms(2 * HOUR), 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn load_cache_returns_every_tenant_with_its_token() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("a", TenantState::Active))
            .await
            .unwrap();
        t.store
            .insert_tenant(new_tenant("p", TenantState::PendingAuthorization))
            .await
            .unwrap();
        let mut cache = t.store.load_cache().await.unwrap();
        cache.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache[0].state, TenantState::Active);
        assert_eq!(cache[0].base_url.host(), "pbx.example.com");
        let tok = cache[0].token.as_ref().unwrap();
        assert_eq!(tok.value.expose(), "token-a");
        assert_eq!(tok.token_type, "Bearer");
        assert_eq!((tok.issued_at, tok.expires_at), (T0, T0.plus_ms(HOUR)));
        assert_eq!(cache[1].state, TenantState::PendingAuthorization);
        assert!(cache[1].token.is_none());
    }

    #[tokio::test]
    async fn load_cache_of_ten_thousand_tenants() {
        let t = open_temp();
        insert_many(&t.store, 10_000).await;
        let started = std::time::Instant::now();
        let cache = t.store.load_cache().await.unwrap();
        // Reported, not asserted: debug builds and busy CI machines vary.
        eprintln!("load_cache: 10,000 tenants in {:?}", started.elapsed());
        assert_eq!(cache.len(), 10_000);
        assert!(cache.iter().all(|c| c.token.is_some()));
        let c = cache.iter().find(|c| c.id.as_str() == "t004321").unwrap();
        assert_eq!(c.token.as_ref().unwrap().value.expose(), "token-t004321");
    }
}
