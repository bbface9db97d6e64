//! Changing tenants: insert (with the credentials, first token and job
//! that come with a new tenant), update, delete, PBX user, each with the
//! tenant events it causes. Each function runs inside the caller's
//! transaction.
//!
//! Does not: decide which state a tenant should be in, or read rows back
//! beyond returning the updated tenant (`tenants.rs` maps rows).

use rusqlite::{params, Connection, OptionalExtension};

use super::events::{state_of, EventCx, NewEvent};
use super::tenants::{get, parse_state};
use super::{credentials, jobs, tokens, NewTenant, StoreError, TenantChanges};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxUser, Tenant};
use crate::store::{event_messages, TenantEventKind};

pub(super) fn insert(
    tx: &Connection,
    keys: &Keyring,
    ev: &EventCx,
    t: &NewTenant,
) -> Result<(), StoreError> {
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
    ev.append(
        tx,
        &NewEvent {
            tenant_id: id,
            kind: TenantEventKind::Created,
            previous_state: None,
            state: Some(t.state),
            message: event_messages::CREATED,
            at: t.now,
        },
    )?;
    Ok(())
}

/// UpdateTenant's change: [`update`] with an UPDATED event, and a
/// STATE_CHANGED one when the state differs.
pub(super) fn update_by_operator(
    tx: &Connection,
    keys: &Keyring,
    ev: &EventCx,
    id: &str,
    ch: &TenantChanges,
    now: UnixMs,
) -> Result<Tenant, StoreError> {
    let before = state_of(tx, id)?.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    if ch.token.is_some() {
        ch.check_token_swap(id, tokens::stored_expiry(tx, id)?)?;
    }
    let tenant = update(tx, keys, id, ch, now)?;
    ev.append(
        tx,
        &NewEvent {
            tenant_id: id,
            kind: TenantEventKind::Updated,
            previous_state: None,
            state: Some(tenant.state),
            message: event_messages::UPDATED,
            at: now,
        },
    )?;
    ev.state_change(
        tx,
        id,
        before,
        tenant.state,
        event_messages::BY_OPERATOR,
        now,
    )?;
    Ok(tenant)
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
/// `secure_delete` overwrites their bytes. The DELETED event keeps the
/// state the tenant had.
pub(super) fn delete(
    tx: &Connection,
    ev: &EventCx,
    id: &str,
    now: UnixMs,
) -> Result<(), StoreError> {
    let state: String = tx
        .prepare_cached("DELETE FROM tenants WHERE tenant_id = ?1 RETURNING state")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    ev.append(
        tx,
        &NewEvent {
            tenant_id: id,
            kind: TenantEventKind::Deleted,
            previous_state: None,
            state: Some(parse_state(id, &state)?),
            message: event_messages::DELETED,
            at: now,
        },
    )?;
    Ok(())
}

/// See `SqliteStore::record_credential_fault`. The state change mirrors a
/// refresh failure (an operator's DISABLED or PENDING_AUTHORIZATION stays).
pub(super) fn record_credential_fault(
    tx: &Connection,
    ev: &EventCx,
    id: &str,
    message: &str,
    retry_at: UnixMs,
    now: UnixMs,
) -> Result<(), StoreError> {
    let before = state_of(tx, id)?.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
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
        let after = crate::domain::TenantState::CredentialsRejected;
        ev.state_change(tx, id, before, after, message, now)?;
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
