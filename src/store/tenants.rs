//! The `tenants` table: insert (with everything that comes with a new
//! tenant), read one, keyset-paginated listing, update, delete, PBX user,
//! counts per state. Rows are turned into `domain::Tenant` here, with the
//! token expiry, next renewal and trusted client id joined in.
//!
//! Does not: decide which state a tenant should be in, or read a secret
//! (a `Tenant` holds none).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{credentials, jobs, tokens, NewTenant, StoreError, TenantChanges};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxBaseUrl, PbxUser, Tenant, TenantId, TenantState};

/// One tenant with the columns joined in from the other tables. A macro so
/// queries can be built with `concat!` and cached as static strings.
macro_rules! select_tenant {
    () => {
        "SELECT t.tenant_id, t.display_name, t.pbx_base_url, t.state, c.client_id, \
                k.expires_at, j.due_at, t.last_refresh_at, t.consecutive_failures, \
                t.last_error, t.pbx_user, t.created_at, t.updated_at \
         FROM tenants t \
         LEFT JOIN credentials c ON c.tenant_id = t.tenant_id AND c.kind = 'trusted' \
         LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
         LEFT JOIN renewal_jobs j ON j.tenant_id = t.tenant_id "
    };
}

/// A tenant row as SQLite gives it, before validation.
struct RawTenant {
    id: String,
    display_name: String,
    base_url: String,
    state: String,
    trusted_client_id: Option<String>,
    token_expires_at: Option<i64>,
    next_refresh_at: Option<i64>,
    last_refresh_at: Option<i64>,
    consecutive_failures: i64,
    last_error: Option<String>,
    pbx_user: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl RawTenant {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            display_name: r.get(1)?,
            base_url: r.get(2)?,
            state: r.get(3)?,
            trusted_client_id: r.get(4)?,
            token_expires_at: r.get(5)?,
            next_refresh_at: r.get(6)?,
            last_refresh_at: r.get(7)?,
            consecutive_failures: r.get(8)?,
            last_error: r.get(9)?,
            pbx_user: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
        })
    }

    fn into_tenant(self) -> Result<Tenant, StoreError> {
        let pbx_user = match self.pbx_user.as_deref() {
            None => None,
            Some(json) => Some(serde_json::from_str::<PbxUser>(json).map_err(|e| {
                StoreError::Corrupt(format!("pbx_user of tenant {}: {e}", self.id))
            })?),
        };
        let consecutive_failures = u32::try_from(self.consecutive_failures).map_err(|_| {
            StoreError::Corrupt(format!(
                "consecutive_failures of tenant {} is {}",
                self.id, self.consecutive_failures
            ))
        })?;
        Ok(Tenant {
            base_url: parse_base_url(&self.id, &self.base_url)?,
            state: parse_state(&self.id, &self.state)?,
            id: parse_id(&self.id)?,
            display_name: self.display_name,
            trusted_client_id: self.trusted_client_id,
            token_expires_at: self.token_expires_at.map(UnixMs),
            next_refresh_at: self.next_refresh_at.map(UnixMs),
            last_refresh_at: self.last_refresh_at.map(UnixMs),
            consecutive_failures,
            last_error: self.last_error,
            pbx_user,
            created_at: UnixMs(self.created_at),
            updated_at: UnixMs(self.updated_at),
        })
    }
}

pub(super) fn parse_id(id: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(id).map_err(|e| StoreError::Corrupt(format!("tenant id {id:?}: {e}")))
}

pub(super) fn parse_base_url(id: &str, url: &str) -> Result<PbxBaseUrl, StoreError> {
    PbxBaseUrl::from_trusted(url)
        .map_err(|e| StoreError::Corrupt(format!("pbx_base_url of tenant {id}: {e}")))
}

pub(super) fn parse_state(id: &str, state: &str) -> Result<TenantState, StoreError> {
    TenantState::parse(state)
        .ok_or_else(|| StoreError::Corrupt(format!("state of tenant {id} is {state:?}")))
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<Tenant>, StoreError> {
    conn.prepare_cached(concat!(select_tenant!(), "WHERE t.tenant_id = ?1"))?
        .query_row([id], RawTenant::from_row)
        .optional()?
        .map(RawTenant::into_tenant)
        .transpose()
}

/// Keyset pagination: `tenant_id > after ORDER BY tenant_id LIMIT n`, so a
/// page costs the same however deep it is and concurrent inserts never
/// shift rows between pages.
pub(super) fn list(
    conn: &Connection,
    after: Option<&TenantId>,
    limit: u32,
    state: Option<TenantState>,
) -> Result<Vec<Tenant>, StoreError> {
    // Tenant ids are never empty, so "" sorts before every id.
    let after = after.map_or("", TenantId::as_str);
    let raws = match state {
        None => conn
            .prepare_cached(concat!(
                select_tenant!(),
                "WHERE t.tenant_id > ?1 ORDER BY t.tenant_id LIMIT ?2"
            ))?
            .query_map(params![after, limit], RawTenant::from_row)?
            .collect::<Result<Vec<_>, _>>()?,
        // Served by the (state, tenant_id) index in id order.
        Some(state) => conn
            .prepare_cached(concat!(
                select_tenant!(),
                "WHERE t.state = ?3 AND t.tenant_id > ?1 ORDER BY t.tenant_id LIMIT ?2"
            ))?
            .query_map(params![after, limit, state.as_str()], RawTenant::from_row)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    raws.into_iter().map(RawTenant::into_tenant).collect()
}

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
        credentials::upsert(tx, keys, id, credentials::Kind::Trusted, app, None, t.now)?;
    }
    if let Some((app, redirect_uri)) = &t.public_app {
        credentials::upsert(
            tx,
            keys,
            id,
            credentials::Kind::Public,
            app,
            Some(redirect_uri),
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
    let mut host: String = tx
        .prepare_cached(
            "UPDATE tenants SET updated_at = ?2 WHERE tenant_id = ?1 RETURNING pbx_host",
        )?
        .query_row(params![id, now.0], |r| r.get(0))
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
    }
    if let Some(state) = ch.state {
        tx.execute(
            "UPDATE tenants SET state = ?2 WHERE tenant_id = ?1",
            params![id, state.as_str()],
        )?;
    }
    if let Some(app) = &ch.trusted_app {
        credentials::upsert(tx, keys, id, credentials::Kind::Trusted, app, None, now)?;
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

pub(super) fn count_by_state(conn: &Connection) -> Result<Vec<(TenantState, u64)>, StoreError> {
    let mut counts: Vec<(TenantState, u64)> = TenantState::ALL.iter().map(|s| (*s, 0)).collect();
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM tenants GROUP BY state")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        let n: i64 = r.get(1)?;
        let state = parse_state("(any)", &state)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{RefreshRecord, TenantChanges};
    use super::*;

    #[tokio::test]
    async fn insert_then_get_joins_everything() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let got = t.store.get_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(got.id, tid("acme"));
        assert_eq!(got.display_name, "Tenant acme");
        assert_eq!(got.base_url.as_str(), "https://pbx.example.com");
        assert_eq!(got.state, TenantState::Active);
        assert_eq!(got.trusted_client_id.as_deref(), Some("app-acme"));
        assert_eq!(got.token_expires_at, Some(T0.plus_ms(HOUR)));
        assert_eq!(got.next_refresh_at, Some(T0.plus_ms(HOUR * 8 / 10)));
        assert_eq!(got.last_refresh_at, Some(T0));
        assert_eq!(got.consecutive_failures, 0);
        assert_eq!((got.created_at, got.updated_at), (T0, T0));
        assert!(got.pbx_user.is_none() && got.last_error.is_none());
        assert!(t.store.get_tenant(&tid("nobody")).await.unwrap().is_none());

        // A pending tenant has only its public app.
        let mut p = new_tenant("pend", TenantState::PendingAuthorization);
        p.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
        t.store.insert_tenant(p).await.unwrap();
        let got = t.store.get_tenant(&tid("pend")).await.unwrap().unwrap();
        assert!(got.trusted_client_id.is_none() && got.token_expires_at.is_none());
        assert!(got.next_refresh_at.is_none() && got.last_refresh_at.is_none());
        let (public, redirect) = t
            .store
            .public_credentials(&tid("pend"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(public.client_id, "pub-id");
        assert_eq!(public.client_secret.expose(), "pub-secret");
        assert_eq!(redirect, "https://crm/cb");
        assert!(t
            .store
            .trusted_credentials(&tid("pend"))
            .await
            .unwrap()
            .is_none());
    }

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
    async fn list_pages_by_id_and_filters_by_state() {
        let t = open_temp();
        let states = [
            TenantState::Active,
            TenantState::Disabled,
            TenantState::PendingAuthorization,
        ];
        let ts = (0..25)
            .map(|i| new_tenant(&format!("t{i:02}"), states[i % 3]))
            .collect();
        t.store.insert_tenants(ts).await.unwrap();

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = t.store.list_tenants(after.clone(), 10, None).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().map(|x| x.id.clone());
            seen.extend(page.into_iter().map(|x| x.id.to_string()));
        }
        let expected: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
        assert_eq!(seen, expected);

        let disabled = t
            .store
            .list_tenants(Some(tid("t03")), 3, Some(TenantState::Disabled))
            .await
            .unwrap();
        let ids: Vec<&str> = disabled.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["t04", "t07", "t10"]);
        assert!(disabled.iter().all(|x| x.state == TenantState::Disabled));
        let none = t
            .store
            .list_tenants(None, 10, Some(TenantState::RenewalFailing))
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(t
            .store
            .list_tenants(None, 0, None)
            .await
            .unwrap()
            .is_empty());

        let counts = t.store.count_by_state().await.unwrap();
        assert_eq!(counts.len(), TenantState::ALL.len());
        let get = |s| counts.iter().find(|(st, _)| *st == s).unwrap().1;
        assert_eq!(get(TenantState::Active), 9);
        assert_eq!(get(TenantState::Disabled), 8);
        assert_eq!(get(TenantState::PendingAuthorization), 8);
        assert_eq!(get(TenantState::RenewalFailing), 0);
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
