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
        .prepare_cached("UPDATE tenants SET updated_at = ?2 WHERE tenant_id = ?1 RETURNING pbx_host")?
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
