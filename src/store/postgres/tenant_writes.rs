//! Changing tenants: insert (with the credentials, first token and job
//! that come with a new tenant), update, delete, PBX user, credential
//! faults. Each function runs inside the caller's transaction; the first
//! statement of an update locks the tenant row, so concurrent changes from
//! other replicas are applied one after the other, never interleaved.
//!
//! Does not: decide which state a tenant should be in.

use super::events::{state_of, EventCx, NewEvent};
use super::tenants::get;
use super::{credentials, execute, jobs, query_opt, tokens, Tx};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxUser, Tenant, TenantState};
use crate::store::rows::parse_state;
use crate::store::seal::credentials::Kind;
use crate::store::{event_messages, NewTenant, StoreError, TenantChanges, TenantEventKind};

pub(super) async fn insert(
    tx: &Tx<'_>,
    keys: &Keyring,
    ev: &EventCx,
    t: &NewTenant,
) -> Result<(), StoreError> {
    let id = t.id.as_str();
    let issued = t.token.as_ref().map(|k| k.issued_at.0);
    let inserted = execute(
        tx,
        "INSERT INTO tenants (tenant_id, display_name, pbx_base_url, pbx_host, state, \
             last_refresh_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (tenant_id) DO NOTHING",
        &[
            &id,
            &t.display_name,
            &t.base_url.as_str(),
            &t.base_url.host(),
            &t.state.as_str(),
            &issued,
            &t.now.0,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::TenantExists(id.to_owned()));
    }
    if let Some(app) = &t.trusted_app {
        let dest = credentials::Dest {
            base_url: t.base_url.as_str(),
            redirect_uri: None,
        };
        credentials::upsert(tx, keys, id, Kind::Trusted, app, &dest, t.now).await?;
    }
    if let Some((app, redirect_uri)) = &t.public_app {
        let dest = credentials::Dest {
            base_url: t.base_url.as_str(),
            redirect_uri: Some(redirect_uri),
        };
        credentials::upsert(tx, keys, id, Kind::Public, app, &dest, t.now).await?;
    }
    if let Some(token) = &t.token {
        tokens::upsert(tx, keys, id, token).await?;
    }
    if let Some(due_at) = t.renew_at {
        jobs::upsert(tx, id, t.base_url.host(), due_at, jobs::Attempts::Reset).await?;
    }
    let e = NewEvent {
        tenant_id: id,
        kind: TenantEventKind::Created,
        previous_state: None,
        state: Some(t.state),
        message: event_messages::CREATED,
        at: t.now,
    };
    ev.append(tx, &e).await?;
    Ok(())
}

/// UpdateTenant's change: [`update`] with an UPDATED event, and a
/// STATE_CHANGED one when the state differs.
pub(super) async fn update_by_operator(
    tx: &Tx<'_>,
    keys: &Keyring,
    ev: &EventCx,
    id: &str,
    ch: &TenantChanges,
    now: UnixMs,
) -> Result<Tenant, StoreError> {
    let before = state_of(tx, id)
        .await?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    // `state_of` locked the row: the check and the write see the same token.
    if ch.token.is_some() {
        ch.check_token_swap(id, tokens::stored_expiry(tx, id).await?)?;
    }
    let tenant = update(tx, keys, id, ch, now).await?;
    let e = NewEvent {
        tenant_id: id,
        kind: TenantEventKind::Updated,
        previous_state: None,
        state: Some(tenant.state),
        message: event_messages::UPDATED,
        at: now,
    };
    ev.append(tx, &e).await?;
    let said = event_messages::BY_OPERATOR;
    ev.state_change(tx, id, before, tenant.state, said, now)
        .await?;
    Ok(tenant)
}

pub(super) async fn update(
    tx: &Tx<'_>,
    keys: &Keyring,
    id: &str,
    ch: &TenantChanges,
    now: UnixMs,
) -> Result<Tenant, StoreError> {
    // Touching updated_at first checks existence, learns the host and
    // locks the row until commit.
    let row = query_opt(
        tx,
        "UPDATE tenants SET updated_at = $2 WHERE tenant_id = $1 \
         RETURNING pbx_host, pbx_base_url",
        &[&id, &now.0],
    )
    .await?
    .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    let mut host: String = row.try_get(0)?;
    let mut base_url: String = row.try_get(1)?;
    if let Some(name) = &ch.display_name {
        execute(
            tx,
            "UPDATE tenants SET display_name = $2 WHERE tenant_id = $1",
            &[&id, name],
        )
        .await?;
    }
    if let Some(url) = &ch.base_url {
        execute(
            tx,
            "UPDATE tenants SET pbx_base_url = $2, pbx_host = $3 WHERE tenant_id = $1",
            &[&id, &url.as_str(), &url.host()],
        )
        .await?;
        execute(
            tx,
            "UPDATE renewal_jobs SET pbx_host = $2 WHERE tenant_id = $1",
            &[&id, &url.host()],
        )
        .await?;
        host = url.host().to_owned();
        base_url = url.as_str().to_owned();
        // The secrets are sealed together with the URL they may be sent to.
        let replaced = ch.trusted_app.as_ref().map(|_| Kind::Trusted);
        credentials::rebind_url(tx, keys, id, &base_url, replaced).await?;
        super::flow_rebind::rebind_url(tx, keys, id, &base_url).await?;
    }
    if let Some(state) = ch.state {
        execute(
            tx,
            "UPDATE tenants SET state = $2 WHERE tenant_id = $1",
            &[&id, &state.as_str()],
        )
        .await?;
    }
    if let Some(app) = &ch.trusted_app {
        let dest = credentials::Dest {
            base_url: &base_url,
            redirect_uri: None,
        };
        credentials::upsert(tx, keys, id, Kind::Trusted, app, &dest, now).await?;
    }
    if let Some(token) = &ch.token {
        tokens::upsert(tx, keys, id, token).await?;
        execute(
            tx,
            "UPDATE tenants SET last_refresh_at = $2 WHERE tenant_id = $1",
            &[&id, &token.issued_at.0],
        )
        .await?;
    }
    if ch.clear_failures {
        execute(
            tx,
            "UPDATE tenants SET consecutive_failures = 0, last_error = NULL WHERE tenant_id = $1",
            &[&id],
        )
        .await?;
    }
    if let Some(due_at) = ch.renew_at {
        let attempts = if ch.clear_failures {
            jobs::Attempts::Reset
        } else {
            jobs::Attempts::Keep
        };
        jobs::upsert(tx, id, &host, due_at, attempts).await?;
    } else if ch.clear_failures {
        execute(
            tx,
            "UPDATE renewal_jobs SET attempts = 0 WHERE tenant_id = $1",
            &[&id],
        )
        .await?;
    }
    if ch.clear_job {
        execute(tx, "DELETE FROM renewal_jobs WHERE tenant_id = $1", &[&id]).await?;
    }
    get(tx, id)
        .await?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))
}

/// Credentials, token, job and flow go with the tenant (ON DELETE CASCADE).
/// PostgreSQL leaves dead row versions until VACUUM; they hold sealed
/// values only, never a secret in clear.
pub(super) async fn delete(
    tx: &Tx<'_>,
    ev: &EventCx,
    id: &str,
    now: UnixMs,
) -> Result<(), StoreError> {
    let row = query_opt(
        tx,
        "DELETE FROM tenants WHERE tenant_id = $1 RETURNING state",
        &[&id],
    )
    .await?
    .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    let e = NewEvent {
        tenant_id: id,
        kind: TenantEventKind::Deleted,
        previous_state: None,
        state: Some(parse_state(id, &row.try_get::<_, String>(0)?)?),
        message: event_messages::DELETED,
        at: now,
    };
    ev.append(tx, &e).await?;
    Ok(())
}

/// A renewing tenant becomes CREDENTIALS_REJECTED (an operator's DISABLED
/// or PENDING_AUTHORIZATION stays), its job moves to `retry_at`.
pub(super) async fn record_credential_fault(
    tx: &Tx<'_>,
    ev: &EventCx,
    id: &str,
    message: &str,
    retry_at: UnixMs,
    now: UnixMs,
) -> Result<(), StoreError> {
    let before = state_of(tx, id)
        .await?
        .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    let row = query_opt(
        tx,
        "UPDATE tenants SET \
             state = CASE WHEN state IN ('active', 'renewal_failing', 'credentials_rejected') \
                          THEN 'credentials_rejected' ELSE state END, \
             consecutive_failures = consecutive_failures + 1, last_error = $2, \
             updated_at = $3 \
         WHERE tenant_id = $1 RETURNING state = 'credentials_rejected'",
        &[&id, &message, &now.0],
    )
    .await?
    .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
    let renewing: bool = row.try_get(0)?;
    if renewing {
        execute(
            tx,
            "UPDATE renewal_jobs SET due_at = $2, attempts = attempts + 1 WHERE tenant_id = $1",
            &[&id, &retry_at.0],
        )
        .await?;
        let after = TenantState::CredentialsRejected;
        ev.state_change(tx, id, before, after, message, now).await?;
    }
    Ok(())
}

pub(super) async fn set_pbx_user(tx: &Tx<'_>, id: &str, user: &PbxUser) -> Result<(), StoreError> {
    let json = serde_json::to_string(user)
        .map_err(|e| StoreError::Corrupt(format!("pbx_user of tenant {id}: {e}")))?;
    match execute(
        tx,
        "UPDATE tenants SET pbx_user = $2 WHERE tenant_id = $1",
        &[&id, &json],
    )
    .await?
    {
        0 => Err(StoreError::TenantNotFound(id.to_owned())),
        _ => Ok(()),
    }
}
