//! Changing tenants: insert (with the credentials, first token and job
//! that come with a new tenant), update, delete, PBX user. Each function
//! runs inside the caller's transaction.
//!
//! Does not: decide which state a tenant should be in, or read rows back
//! beyond returning the updated tenant (`tenants.rs` maps rows).

use rusqlite::{params, Connection, OptionalExtension};

use super::tenants::get;
use super::{credentials, jobs, tokens, NewTenant, StoreError, TenantChanges};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxUser, Tenant};

pub(super) fn insert(tx: &Connection, keys: &Keyring, t: &NewTenant) -> Result<(), StoreError> {
    let id = t.id.as_str();
    let inserted = tx
        .prepare_cached(
            "INSERT INTO tenants (tenant_id, display_name, pbx_base_url, pbx_host, state, \
                 last_refresh_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )?
        .execute(params![
            id,
            t.display_name,
            t.base_url.as_str(),
            t.base_url.host(),
            t.state.as_str(),
            t.token.as_ref().map(|k| k.issued_at.0),
            t.now.0,
        ])?;
    if inserted == 0 {
        return Err(StoreError::TenantExists(id.to_owned()));
    }
    if let Some(app) = &t.trusted_app {
        credentials::upsert(
            tx,
            keys,
            id,
            credentials::Kind::Trusted,
            app,
            None,
            t.base_url.as_str(),
            t.now,
        )?;
    }
    if let Some((app, redirect_uri)) = &t.public_app {
        credentials::upsert(
            tx,
            keys,
            id,
            credentials::Kind::Public,
            app,
            Some(redirect_uri),
            t.base_url.as_str(),
            t.now,
        )?;
    }
    if let Some(token) = &t.token {
        tokens::upsert(tx, keys, id, token)?;
    }
    if let Some(due_at) = t.renew_at {
        jobs::upsert(tx, id, t.base_url.host(), due_at, jobs::Attempts::Reset)?;
    }
    Ok(())
}

pub(super) fn update(
    tx: &Connection,
    keys: &Keyring,
    id: &str,
    ch: &TenantChanges,
    now: UnixMs,
) -> Result<Tenant, StoreError> {
    // Touching updated_at first both checks existence and learns the host.
    let (mut host, mut base_url): (String, String) = tx
        .prepare_cached(
            "UPDATE tenants SET updated_at = ?2 WHERE tenant_id = ?1 \
             RETURNING pbx_host, pbx_base_url",
        )?
        .query_row(params![id, now.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    if let Some(name) = &ch.display_name {
        tx.execute(
            "UPDATE tenants SET display_name = ?2 WHERE tenant_id = ?1",
            params![id, name],
        )?;
    }
    if let Some(url) = &ch.base_url {
        tx.execute(
            "UPDATE tenants SET pbx_base_url = ?2, pbx_host = ?3 WHERE tenant_id = ?1",
            params![id, url.as_str(), url.host()],
        )?;
        tx.execute(
            "UPDATE renewal_jobs SET pbx_host = ?2 WHERE tenant_id = ?1",
            params![id, url.host()],
        )?;
        host = url.host().to_owned();
        base_url = url.as_str().to_owned();
        // The secrets are sealed together with the URL they may be sent to.
        let replaced = ch.trusted_app.as_ref().map(|_| credentials::Kind::Trusted);
        credentials::rebind_url(tx, keys, id, &base_url, replaced)?;
        super::flow_seal::rebind_url(tx, keys, id, &base_url)?;
    }
    if let Some(state) = ch.state {
        tx.execute(
            "UPDATE tenants SET state = ?2 WHERE tenant_id = ?1",
            params![id, state.as_str()],
        )?;
    }
    if let Some(app) = &ch.trusted_app {
        credentials::upsert(
            tx,
            keys,
            id,
            credentials::Kind::Trusted,
            app,
            None,
            &base_url,
            now,
        )?;
    }
    if let Some(token) = &ch.token {
        tokens::upsert(tx, keys, id, token)?;
        tx.execute(
            "UPDATE tenants SET last_refresh_at = ?2 WHERE tenant_id = ?1",
            params![id, token.issued_at.0],
        )?;
    }
    if ch.clear_failures {
        tx.execute(
            "UPDATE tenants SET consecutive_failures = 0, last_error = NULL WHERE tenant_id = ?1",
            [id],
        )?;
    }
    if let Some(due_at) = ch.renew_at {
        let attempts = if ch.clear_failures {
            jobs::Attempts::Reset
        } else {
            jobs::Attempts::Keep
        };
        jobs::upsert(tx, id, &host, due_at, attempts)?;
    } else if ch.clear_failures {
        tx.execute(
            "UPDATE renewal_jobs SET attempts = 0 WHERE tenant_id = ?1",
            [id],
        )?;
    }
    if ch.clear_job {
        tx.execute("DELETE FROM renewal_jobs WHERE tenant_id = ?1", [id])?;
    }
    get(tx, id)?.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))
}

/// Credentials, token and job go with the tenant (ON DELETE CASCADE), and
/// `secure_delete` overwrites their bytes.
pub(super) fn delete(tx: &Connection, id: &str) -> Result<(), StoreError> {
    match tx.execute("DELETE FROM tenants WHERE tenant_id = ?1", [id])? {
        0 => Err(StoreError::TenantNotFound(id.to_owned())),
        _ => Ok(()),
    }
}

/// See `SqliteStore::record_credential_fault`. The state change mirrors a
/// refresh failure (an operator's DISABLED or PENDING_AUTHORIZATION stays).
pub(super) fn record_credential_fault(
    tx: &Connection,
    id: &str,
    message: &str,
    retry_at: UnixMs,
    now: UnixMs,
) -> Result<(), StoreError> {
    let renewing: bool = tx
        .prepare_cached(
            "UPDATE tenants SET \
                 state = CASE WHEN state IN ('active', 'renewal_failing', 'credentials_rejected') \
                              THEN 'credentials_rejected' ELSE state END, \
                 consecutive_failures = consecutive_failures + 1, last_error = ?2, \
                 updated_at = ?3 \
             WHERE tenant_id = ?1 RETURNING state = 'credentials_rejected'",
        )?
        .query_row(params![id, message, now.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    if renewing {
        tx.execute(
            "UPDATE renewal_jobs SET due_at = ?2, attempts = attempts + 1 WHERE tenant_id = ?1",
            params![id, retry_at.0],
        )?;
    }
    Ok(())
}

pub(super) fn set_pbx_user(tx: &Connection, id: &str, user: &PbxUser) -> Result<(), StoreError> {
    let json = serde_json::to_string(user)
        .map_err(|e| StoreError::Corrupt(format!("pbx_user of tenant {id}: {e}")))?;
    match tx.execute(
        "UPDATE tenants SET pbx_user = ?2 WHERE tenant_id = ?1",
        params![id, json],
    )? {
        0 => Err(StoreError::TenantNotFound(id.to_owned())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::RefreshRecord;
    use super::*;
    use crate::domain::TenantState;

    #[tokio::test]
    async fn duplicate_insert_is_refused_and_changes_nothing() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let mut again = new_tenant("acme", TenantState::Disabled);
        again.trusted_app = Some(app("other", "other-secret"));
        match t.store.insert_tenant(again).await {
            Err(StoreError::TenantExists(id)) => assert_eq!(id, "acme"),
            other => panic!("expected TenantExists, got {other:?}"),
        }
        let creds = t.store.trusted_credentials(&tid("acme")).await.unwrap();
        assert_eq!(creds.unwrap().client_id, "app-acme");
        // Bulk insert is all or nothing.
        let batch = vec![
            new_tenant("b1", TenantState::Active),
            new_tenant("acme", TenantState::Active),
        ];
        assert!(matches!(
            t.store.insert_tenants(batch).await,
            Err(StoreError::TenantExists(_))
        ));
        assert!(t.store.get_tenant(&tid("b1")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn update_applies_every_change() {
        let t = open_temp();
        let id = tid("acme");
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let failure = RefreshRecord::Failure {
            state: TenantState::CredentialsRejected,
            error: "401".into(),
            retry_at: T0.plus_ms(5),
        };
        t.store.record_refresh(&id, failure, T0).await.unwrap();

        let later = T0.plus_ms(HOUR);
        let changes = TenantChanges {
            display_name: Some("Acme Corp".into()),
            base_url: Some(base_url("new.example.com:8443")),
            state: Some(TenantState::Active),
            trusted_app: Some(app("app-2", "secret-2")),
            token: Some(token("token-2", later)),
            renew_at: Some(later.plus_ms(1000)),
            clear_job: false,
            clear_failures: true,
        };
        let got = t.store.update_tenant(&id, changes, later).await.unwrap();
        assert_eq!(got.display_name, "Acme Corp");
        assert_eq!(got.base_url.host(), "new.example.com:8443");
        assert_eq!(got.state, TenantState::Active);
        assert_eq!(got.trusted_client_id.as_deref(), Some("app-2"));
        assert_eq!(got.token_expires_at, Some(later.plus_ms(HOUR)));
        assert_eq!(got.last_refresh_at, Some(later));
        assert_eq!(got.next_refresh_at, Some(later.plus_ms(1000)));
        assert_eq!((got.consecutive_failures, got.last_error), (0, None));
        assert_eq!((got.created_at, got.updated_at), (T0, later));
        let creds = t.store.trusted_credentials(&id).await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose(), "secret-2");
        let (host, attempts): (String, i64) = t
            .raw()
            .query_row(
                "SELECT pbx_host, attempts FROM renewal_jobs WHERE tenant_id = 'acme'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((host.as_str(), attempts), ("new.example.com:8443", 0));

        // Nothing but updated_at changes with empty changes; clear_job wins.
        let same = t
            .store
            .update_tenant(&id, TenantChanges::default(), later.plus_ms(1))
            .await
            .unwrap();
        assert_eq!(same.display_name, "Acme Corp");
        assert_eq!(same.updated_at, later.plus_ms(1));
        let changes = TenantChanges {
            state: Some(TenantState::Disabled),
            renew_at: Some(later),
            clear_job: true,
            ..TenantChanges::default()
        };
        let got = t.store.update_tenant(&id, changes, later).await.unwrap();
        assert_eq!(got.state, TenantState::Disabled);
        assert!(got.next_refresh_at.is_none());

        assert!(matches!(
            t.store
                .update_tenant(&tid("nobody"), TenantChanges::default(), later)
                .await,
            Err(StoreError::TenantNotFound(_))
        ));
    }

    #[tokio::test]
    async fn delete_cascades_everywhere() {
        let t = open_temp();
        let mut n = new_tenant("acme", TenantState::Active);
        n.public_app = Some((app("pub", "pub-secret"), "https://crm/cb".into()));
        t.store.insert_tenant(n).await.unwrap();
        t.store
            .insert_tenant(new_tenant("keep", TenantState::Active))
            .await
            .unwrap();
        assert_eq!(t.count("credentials", "acme"), 2);
        t.store.delete_tenant(&tid("acme")).await.unwrap();
        for table in ["tenants", "credentials", "tokens", "renewal_jobs"] {
            assert_eq!(t.count(table, "acme"), 0, "{table}");
            assert_eq!(t.count(table, "keep"), 1, "{table}");
        }
        assert!(matches!(
            t.store.delete_tenant(&tid("acme")).await,
            Err(StoreError::TenantNotFound(_))
        ));
    }

    #[tokio::test]
    async fn pbx_user_round_trips() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let user = PbxUser {
            id: 7,
            login: "admin@acme".into(),
            client_id: 42,
            admin: true,
            dealer_id: None,
            extension_id: Some(100),
            extension_group_id: None,
        };
        t.store.set_pbx_user(&tid("acme"), &user).await.unwrap();
        let got = t.store.get_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(got.pbx_user, Some(user.clone()));
        assert_eq!(got.updated_at, T0);
        assert!(matches!(
            t.store.set_pbx_user(&tid("nobody"), &user).await,
            Err(StoreError::TenantNotFound(_))
        ));
    }
}
