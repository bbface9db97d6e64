//! The `onboarding_flows` table on PostgreSQL: one authorization-code flow
//! per tenant, one committed step at a time, its secrets sealed bound to
//! where they may be sent (`store/seal/flow.rs`, shared with SQLite).
//! Completing a flow moves the new credentials, token and PBX user onto
//! the tenant in the transaction that marks the flow completed.
//!
//! Does not: decide which step comes next (the `onboarding` module does).

use async_trait::async_trait;
use tokio_postgres::Row;

use super::events::{state_event, state_of, NewEvent};
use super::tenants::get;
use super::{execute, query, query_opt, tenant_writes, PgStore, Tx};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, Tenant, TenantId};
use crate::store::rows::parse_id;
use crate::store::seal::flow::{self as flow_seal, Dest, FlowSecret};
use crate::store::{event_messages, TenantEventKind};
use crate::store::{
    Flow, FlowCompletion, FlowKey, FlowRepo, FlowStep, FlowUpdate, StoreError, TenantChanges,
};

const SELECT_FLOW: &str = "SELECT f.tenant_id, f.step, f.state_expires_at, \
        f.public_token_sealed, f.public_token_type, f.public_token_issued_at, f.public_token_expires_at, \
        f.app_name, f.app_client_id, f.app_secret_sealed, \
        f.token_sealed, f.token_type, f.token_issued_at, f.token_expires_at, \
        f.pbx_user, f.orphaned_apps, f.error, f.created_at, f.updated_at, t.pbx_base_url \
     FROM onboarding_flows f LEFT JOIN tenants t ON t.tenant_id = f.tenant_id ";

/// Columns wiped when a flow ends or restarts.
const WIPE: &str = "public_token_sealed = NULL, public_token_type = NULL, \
     public_token_issued_at = NULL, public_token_expires_at = NULL, \
     app_secret_sealed = NULL, token_sealed = NULL, token_type = NULL, \
     token_issued_at = NULL, token_expires_at = NULL";

#[async_trait]
impl FlowRepo for PgStore {
    async fn begin_flow(
        &self,
        id: &TenantId,
        state_hash: [u8; 32],
        state_expires_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| {
            Box::pin(async move {
                // Locks the tenant row: a delete from another replica waits.
                let exists = query_opt(
                    tx,
                    "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE",
                    &[&id.as_str()],
                )
                .await?
                .is_some();
                if !exists {
                    return Err(StoreError::TenantNotFound(id.to_string()));
                }
                let hash: &[u8] = &state_hash;
                execute(
                    tx,
                    &format!(
                        "INSERT INTO onboarding_flows (tenant_id, state_hash, state_expires_at, step, \
                             created_at, updated_at) VALUES ($1, $2, $3, 'issued', $4, $4) \
                         ON CONFLICT (tenant_id) DO UPDATE SET state_hash = excluded.state_hash, \
                             state_expires_at = excluded.state_expires_at, step = 'issued', {WIPE}, \
                             app_name = NULL, app_client_id = NULL, pbx_user = NULL, error = NULL, \
                             exchange_claimed_until = NULL, \
                             created_at = excluded.created_at, updated_at = excluded.updated_at"
                    ),
                    &[&id.as_str(), &hash, &state_expires_at.0, &now.0],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// One `UPDATE ... RETURNING` (it locks the row: a second replica's
    /// claim waits, then finds it taken), then the flow in the same
    /// transaction.
    async fn claim_flow(
        &self,
        id: &TenantId,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            Box::pin(async move {
                let n = execute(
                    tx,
                    "UPDATE onboarding_flows SET exchange_claimed_until = $3 \
                     WHERE tenant_id = $1 AND step IN ('code_exchanged', 'creating_app', 'app_stored', 'token_obtained', 'user_verified') \
                       AND (exchange_claimed_until IS NULL OR exchange_claimed_until <= $2)",
                    &[&id, &now.0, &until.0],
                )
                .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn consume_state(
        &self,
        key: FlowKey,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Option<Flow>, StoreError> {
        self.write(move |tx, keys| {
            Box::pin(async move {
                let claim = |column: &str| {
                    format!(
                        "UPDATE onboarding_flows SET exchange_claimed_until = $3 \
                         WHERE {column} = $1 AND step = 'issued' AND state_expires_at > $2 \
                           AND (exchange_claimed_until IS NULL OR exchange_claimed_until <= $2) \
                         RETURNING tenant_id"
                    )
                };
                let claimed = match &key {
                    FlowKey::State(hash) => {
                        let hash: &[u8] = hash;
                        query_opt(tx, &claim("state_hash"), &[&hash, &now.0, &until.0]).await?
                    }
                    FlowKey::Tenant(id) => {
                        query_opt(tx, &claim("tenant_id"), &[&id.as_str(), &now.0, &until.0])
                            .await?
                    }
                };
                let Some(row) = claimed else { return Ok(None) };
                let id: String = row.try_get(0)?;
                let sql = format!("{SELECT_FLOW}WHERE f.tenant_id = $1");
                let row = query_opt(tx, &sql, &[&id]).await?;
                row.map(|r| flow_from_row(&r, keys)).transpose()
            })
        })
        .await
    }

    async fn flow_by_state(&self, state_hash: [u8; 32]) -> Result<Option<Flow>, StoreError> {
        self.read(move |tx, keys| {
            Box::pin(async move {
                let hash: &[u8] = &state_hash;
                let sql = format!("{SELECT_FLOW}WHERE f.state_hash = $1");
                let row = query_opt(tx, &sql, &[&hash]).await?;
                row.map(|r| flow_from_row(&r, keys)).transpose()
            })
        })
        .await
    }

    async fn flow_of(&self, id: &TenantId) -> Result<Option<Flow>, StoreError> {
        let id = id.clone();
        self.read(move |tx, keys| {
            Box::pin(async move {
                let sql = format!("{SELECT_FLOW}WHERE f.tenant_id = $1");
                let row = query_opt(tx, &sql, &[&id.as_str()]).await?;
                row.map(|r| flow_from_row(&r, keys)).transpose()
            })
        })
        .await
    }

    async fn interrupted_flows(&self) -> Result<Vec<TenantId>, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                let rows = query(
                    tx,
                    "SELECT tenant_id FROM onboarding_flows WHERE step IN \
                     ('code_exchanged', 'creating_app', 'app_stored', 'token_obtained', 'user_verified') \
                     ORDER BY updated_at, tenant_id",
                    &[],
                )
                .await?;
                rows.iter()
                    .map(|r| parse_id(&r.try_get::<_, String>(0)?))
                    .collect()
            })
        })
        .await
    }

    async fn advance_flow(
        &self,
        id: &TenantId,
        update: FlowUpdate,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move {
                let id = id.as_str();
                let before = state_of(tx, id).await?;
                advance(tx, keys, id, &update, now).await?;
                if let FlowUpdate::Failed { error, .. } = &update {
                    state_event(tx, ev, id, before, error, now).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn discard_flow(
        &self,
        id: &TenantId,
        error: String,
        now: UnixMs,
    ) -> Result<String, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move {
                let before = state_of(tx, id.as_str()).await?;
                let said = discard_flow(tx, keys, id.as_str(), &error, now).await?;
                state_event(tx, ev, id.as_str(), before, &said, now).await?;
                Ok(said)
            })
        })
        .await
    }

    async fn complete_flow(
        &self,
        id: &TenantId,
        c: FlowCompletion,
        now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move {
                let id = id.as_str();
                let before = state_of(tx, id).await?;
                const FLOW: &str = "SELECT step, token_issued_at FROM onboarding_flows WHERE tenant_id = $1 FOR UPDATE";
                let f = query_opt(tx, FLOW, &[&id]).await?;
                let f = f.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
                crate::store::flow::completion_fence(id, &f.try_get::<_, String>(0)?, f.try_get(1)?, &c)?;
                let changes = TenantChanges {
                    state: Some(c.state),
                    trusted_app: Some(c.app.clone()),
                    token: Some(c.token.clone()),
                    renew_at: c.renew_at,
                    clear_job: c.renew_at.is_none(),
                    clear_failures: true,
                    ..TenantChanges::default()
                };
                tenant_writes::update(tx, keys, id, &changes, now).await?;
                tenant_writes::set_pbx_user(tx, id, &c.user).await?;
                execute(
                    tx,
                    "UPDATE tenants SET last_error = $2 WHERE tenant_id = $1",
                    &[&id, &c.note],
                )
                .await?;
                let n = execute(
                    tx,
                    &format!(
                        "UPDATE onboarding_flows SET step = 'completed', {WIPE}, error = NULL, \
                         orphaned_apps = '[]', updated_at = $2 WHERE tenant_id = $1"
                    ),
                    &[&id, &now.0],
                )
                .await?;
                if n == 0 {
                    return Err(StoreError::TenantNotFound(id.to_owned()));
                }
                let tenant = get(tx, id)
                    .await?
                    .ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
                let e = NewEvent {
                    tenant_id: id,
                    kind: TenantEventKind::AuthorizationCompleted,
                    previous_state: None,
                    state: Some(tenant.state),
                    message: event_messages::AUTHORIZED,
                    at: now,
                };
                ev.append(tx, &e).await?;
                let said = c.note.as_deref().unwrap_or(event_messages::AUTHORIZED);
                state_event(tx, ev, id, before, said, now).await?;
                Ok(tenant)
            })
        })
        .await
    }
}

/// The tenant's base URL as stored now (in the caller's transaction).
async fn tenant_url(tx: &Tx<'_>, tenant_id: &str) -> Result<String, StoreError> {
    let row = query_opt(
        tx,
        "SELECT pbx_base_url FROM tenants WHERE tenant_id = $1",
        &[&tenant_id],
    )
    .await?
    .ok_or_else(|| StoreError::TenantNotFound(tenant_id.to_owned()))?;
    Ok(row.try_get(0)?)
}

async fn advance(
    tx: &Tx<'_>,
    keys: &Keyring,
    id: &str,
    update: &FlowUpdate,
    now: UnixMs,
) -> Result<(), StoreError> {
    let n = match update {
        FlowUpdate::CodeExchanged { public_token: t } => {
            let url = tenant_url(tx, id).await?;
            let dest = Dest {
                base_url: &url,
                client_id: "",
            };
            let sealed =
                flow_seal::seal(keys, id, FlowSecret::PublicToken, t.value.expose(), &dest)?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'code_exchanged', public_token_sealed = $2, \
                     public_token_type = $3, public_token_issued_at = $4, \
                     public_token_expires_at = $5, error = NULL, updated_at = $6 \
                 WHERE tenant_id = $1",
                &[
                    &id,
                    &sealed,
                    &t.token_type,
                    &t.issued_at.0,
                    &t.expires_at.0,
                    &now.0,
                ],
            )
            .await?
        }
        FlowUpdate::CreatingApp { name } => execute(
            tx,
            "UPDATE onboarding_flows SET step = 'creating_app', app_name = $2, updated_at = $3 \
                 WHERE tenant_id = $1",
            &[&id, name, &now.0],
        )
        .await?,
        FlowUpdate::AppCreationFailed { orphan, error } => {
            if let Some(name) = orphan {
                add_orphan(tx, id, name).await?;
            }
            set_tenant_error(tx, id, error).await?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'code_exchanged', app_name = NULL, \
                     error = $2, updated_at = $3 WHERE tenant_id = $1",
                &[&id, error, &now.0],
            )
            .await?
        }
        FlowUpdate::AppStored { app } => {
            let url = tenant_url(tx, id).await?;
            let dest = Dest {
                base_url: &url,
                client_id: &app.client_id,
            };
            let sealed = flow_seal::seal(
                keys,
                id,
                FlowSecret::AppSecret,
                app.client_secret.expose(),
                &dest,
            )?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'app_stored', app_client_id = $2, \
                     app_secret_sealed = $3, error = NULL, updated_at = $4 WHERE tenant_id = $1",
                &[&id, &app.client_id, &sealed, &now.0],
            )
            .await?
        }
        FlowUpdate::TokenObtained { token: t } => {
            let url = tenant_url(tx, id).await?;
            let dest = Dest {
                base_url: &url,
                client_id: "",
            };
            let sealed =
                flow_seal::seal(keys, id, FlowSecret::FirstToken, t.value.expose(), &dest)?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'token_obtained', token_sealed = $2, \
                     token_type = $3, token_issued_at = $4, token_expires_at = $5, error = NULL, \
                     updated_at = $6 WHERE tenant_id = $1",
                &[
                    &id,
                    &sealed,
                    &t.token_type,
                    &t.issued_at.0,
                    &t.expires_at.0,
                    &now.0,
                ],
            )
            .await?
        }
        FlowUpdate::UserVerified { user } => {
            let json = serde_json::to_string(user)
                .map_err(|e| StoreError::Corrupt(format!("pbx_user of tenant {id}: {e}")))?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'user_verified', pbx_user = $2, error = NULL, \
                     updated_at = $3 WHERE tenant_id = $1",
                &[&id, &json, &now.0],
            )
            .await?
        }
        FlowUpdate::TokenDropped { error } => {
            set_tenant_error(tx, id, error).await?;
            execute(
                tx,
                "UPDATE onboarding_flows SET step = 'app_stored', token_sealed = NULL, \
                     token_type = NULL, token_issued_at = NULL, token_expires_at = NULL, \
                     error = $2, updated_at = $3 WHERE tenant_id = $1",
                &[&id, error, &now.0],
            )
            .await?
        }
        FlowUpdate::Error { error } => {
            set_tenant_error(tx, id, error).await?;
            execute(
                tx,
                "UPDATE onboarding_flows SET error = $2, updated_at = $3, \
                 exchange_claimed_until = NULL WHERE tenant_id = $1",
                &[&id, error, &now.0],
            )
            .await?
        }
        FlowUpdate::Failed { orphan, error } => {
            if let Some(name) = orphan {
                add_orphan(tx, id, name).await?;
            }
            set_tenant_error(tx, id, error).await?;
            execute(
                tx,
                &format!(
                    "UPDATE onboarding_flows SET step = 'failed', {WIPE}, error = $2, \
                     updated_at = $3 WHERE tenant_id = $1"
                ),
                &[&id, error, &now.0],
            )
            .await?
        }
    };
    if n == 0 {
        return Err(StoreError::TenantNotFound(id.to_owned()));
    }
    Ok(())
}

/// Ends the tenant's flow without reading its sealed values (see the
/// SQLite twin). Returns the error as stored. No flow: nothing to do.
async fn discard_flow(
    tx: &Tx<'_>,
    keys: &Keyring,
    id: &str,
    error: &str,
    now: UnixMs,
) -> Result<String, StoreError> {
    let row = query_opt(
        tx,
        "SELECT step, app_name FROM onboarding_flows WHERE tenant_id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    let Some(row) = row else {
        return Ok(error.to_owned());
    };
    let step: String = row.try_get(0)?;
    let app_name: Option<String> = row.try_get(1)?;
    let created =
        FlowStep::parse(&step).is_some_and(|s| s == FlowStep::CreatingApp || s.holds_new_app());
    let orphan = app_name.filter(|_| created);
    let error = match &orphan {
        Some(name) => format!("{error}; application \"{name}\" that this flow created may exist in the PBX without being used: delete it in the PBX web UI"),
        None => error.to_owned(),
    };
    let update = FlowUpdate::Failed {
        orphan,
        error: error.clone(),
    };
    advance(tx, keys, id, &update, now).await?;
    Ok(error)
}

/// Flow errors are shown on the tenant too: that is where operators look.
async fn set_tenant_error(tx: &Tx<'_>, id: &str, error: &str) -> Result<(), StoreError> {
    execute(
        tx,
        "UPDATE tenants SET last_error = $2 WHERE tenant_id = $1",
        &[&id, &error],
    )
    .await?;
    Ok(())
}

async fn add_orphan(tx: &Tx<'_>, id: &str, name: &str) -> Result<(), StoreError> {
    let current: Option<String> = query_opt(
        tx,
        "SELECT orphaned_apps FROM onboarding_flows WHERE tenant_id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let mut names = parse_orphans(id, current.as_deref().unwrap_or("[]"))?;
    if !names.iter().any(|n| n == name) {
        names.push(name.to_owned());
    }
    let json = serde_json::to_string(&names)
        .map_err(|e| StoreError::Corrupt(format!("orphaned_apps of tenant {id}: {e}")))?;
    execute(
        tx,
        "UPDATE onboarding_flows SET orphaned_apps = $2 WHERE tenant_id = $1",
        &[&id, &json],
    )
    .await?;
    Ok(())
}

fn parse_orphans(id: &str, json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("orphaned_apps of tenant {id}: {e}")))
}

fn flow_from_row(r: &Row, keys: &Keyring) -> Result<Flow, StoreError> {
    let id: String = r.try_get(0)?;
    let step: String = r.try_get(1)?;
    let step = FlowStep::parse(&step)
        .ok_or_else(|| StoreError::Corrupt(format!("onboarding step of tenant {id}: {step:?}")))?;
    let base_url: String = r.try_get::<_, Option<String>>(19)?.unwrap_or_default();
    let app_client_id: Option<String> = r.try_get(8)?;
    let token = |sealed_col: usize, which: FlowSecret| -> Result<Option<AccessToken>, StoreError> {
        let sealed: Option<Vec<u8>> = r.try_get(sealed_col)?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let dest = Dest {
            base_url: &base_url,
            client_id: "",
        };
        Ok(Some(AccessToken {
            value: flow_seal::open(keys, &id, which, &sealed, &dest)?,
            token_type: r
                .try_get::<_, Option<String>>(sealed_col + 1)?
                .unwrap_or_default(),
            issued_at: UnixMs(r.try_get::<_, Option<i64>>(sealed_col + 2)?.unwrap_or(0)),
            expires_at: UnixMs(r.try_get::<_, Option<i64>>(sealed_col + 3)?.unwrap_or(0)),
        }))
    };
    let public_token = token(3, FlowSecret::PublicToken)?;
    let first_token = token(10, FlowSecret::FirstToken)?;
    let app_secret: Option<Vec<u8>> = r.try_get(9)?;
    let app = match (app_client_id, app_secret) {
        (client_id, Some(sealed)) => {
            // A missing client id is compared as "" and so refused too.
            let dest = Dest {
                base_url: &base_url,
                client_id: client_id.as_deref().unwrap_or(""),
            };
            let secret = flow_seal::open(keys, &id, FlowSecret::AppSecret, &sealed, &dest)?;
            Some(AppCredentials {
                client_id: client_id.unwrap_or_default(),
                client_secret: secret,
            })
        }
        _ => None,
    };
    let pbx_user = match r.try_get::<_, Option<String>>(14)? {
        None => None,
        Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("onboarding pbx_user of tenant {id}: {e}"))
        })?),
    };
    let orphans: String = r.try_get(15)?;
    Ok(Flow {
        orphaned_apps: parse_orphans(&id, &orphans)?,
        tenant_id: parse_id(&id)?,
        step,
        state_expires_at: UnixMs(r.try_get(2)?),
        public_token,
        app_name: r.try_get(7)?,
        app,
        token: first_token,
        pbx_user,
        error: r.try_get(16)?,
        created_at: UnixMs(r.try_get(17)?),
        updated_at: UnixMs(r.try_get(18)?),
        base_url,
    })
}
