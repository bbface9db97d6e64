//! The `onboarding_flows` table: one authorization-code flow per tenant,
//! advanced one committed step at a time so it resumes after a crash. The
//! `state` is known here only by its SHA-256; the public token, the new
//! trusted app's secret and its first token are sealed, bound to the tenant,
//! the field and where they may be sent (base URL, client id: see
//! `flow_seal`); a flow whose columns no longer match refuses to be read.
//! Completing a flow moves the new credentials, token and PBX user
//! onto the tenant in the same transaction that marks the flow completed.
//!
//! Does not: decide which step comes next or what an error means (the
//! `onboarding` module does), or talk to the PBX.

use async_trait::async_trait;

use crate::store::FlowRepo;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::events::{state_of, NewEvent};
use super::flow_seal::{self, Dest, FlowSecret};
use super::tenants::{get, parse_id};
use super::{tenant_writes, SqliteStore, StoreError, TenantChanges};
use super::{Flow, FlowCompletion, FlowStep, FlowUpdate};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, Tenant, TenantId};
use crate::store::{event_messages, FlowKey, TenantEventKind};

const SELECT_FLOW: &str = "SELECT tenant_id, step, state_expires_at, \
        public_token_sealed, public_token_type, public_token_issued_at, public_token_expires_at, \
        app_name, app_client_id, app_secret_sealed, \
        token_sealed, token_type, token_issued_at, token_expires_at, \
        pbx_user, orphaned_apps, error, created_at, updated_at, \
        (SELECT pbx_base_url FROM tenants t WHERE t.tenant_id = onboarding_flows.tenant_id) \
     FROM onboarding_flows ";

/// Columns wiped when a flow ends or restarts.
const WIPE: &str = "public_token_sealed = NULL, public_token_type = NULL, \
     public_token_issued_at = NULL, public_token_expires_at = NULL, \
     app_secret_sealed = NULL, token_sealed = NULL, token_type = NULL, \
     token_issued_at = NULL, token_expires_at = NULL";

#[async_trait]
impl FlowRepo for SqliteStore {
    /// Starts (or restarts) the tenant's flow in step `Issued` with a new
    /// state hash. Everything of an earlier flow is wiped except the list of
    /// possibly orphaned apps. `TenantNotFound` if the tenant is missing.
    async fn begin_flow(
        &self,
        id: &TenantId,
        state_hash: [u8; 32],
        state_expires_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| {
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM tenants WHERE tenant_id = ?1")?
                .query_row([id.as_str()], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::TenantNotFound(id.to_string()));
            }
            tx.execute(
                &format!(
                    "INSERT INTO onboarding_flows (tenant_id, state_hash, state_expires_at, step, \
                         created_at, updated_at) VALUES (?1, ?2, ?3, 'issued', ?4, ?4) \
                     ON CONFLICT (tenant_id) DO UPDATE SET state_hash = excluded.state_hash, \
                         state_expires_at = excluded.state_expires_at, step = 'issued', {WIPE}, \
                         app_name = NULL, app_client_id = NULL, pbx_user = NULL, error = NULL, \
                         exchange_claimed_until = NULL, \
                         created_at = excluded.created_at, updated_at = excluded.updated_at"
                ),
                params![id.as_str(), &state_hash[..], state_expires_at.0, now.0],
            )?;
            Ok(())
        })
        .await
    }

    /// One `UPDATE ... RETURNING`: the claim and the check are one step.
    async fn consume_state(
        &self,
        key: FlowKey,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Option<Flow>, StoreError> {
        self.write(move |tx, keys| {
            let claim =
                |column: &str, value: &dyn rusqlite::ToSql| -> rusqlite::Result<Option<String>> {
                    tx.prepare_cached(&format!(
                        "UPDATE onboarding_flows SET exchange_claimed_until = ?3 \
                     WHERE {column} = ?1 AND step = 'issued' AND state_expires_at > ?2 \
                       AND (exchange_claimed_until IS NULL OR exchange_claimed_until <= ?2) \
                     RETURNING tenant_id"
                    ))?
                    .query_row(params![value, now.0, until.0], |r| r.get(0))
                    .optional()
                };
            let claimed = match &key {
                FlowKey::State(hash) => claim("state_hash", &&hash[..])?,
                FlowKey::Tenant(id) => claim("tenant_id", &id.as_str())?,
            };
            match claimed {
                None => Ok(None),
                Some(id) => {
                    let sql = format!("{SELECT_FLOW}WHERE tenant_id = ?1");
                    query_flow(tx, keys, &sql, id)
                }
            }
        })
        .await
    }

    async fn claim_flow(
        &self,
        id: &TenantId,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE onboarding_flows SET exchange_claimed_until = ?3 \
                     WHERE tenant_id = ?1 AND step IN ('code_exchanged', 'creating_app', 'app_stored', 'token_obtained', 'user_verified') \
                       AND (exchange_claimed_until IS NULL OR exchange_claimed_until <= ?2)",
                )?
                .execute(params![id.as_str(), now.0, until.0])?;
            Ok(n == 1)
        })
        .await
    }

    /// The flow whose state hashes to `state_hash`.
    async fn flow_by_state(&self, state_hash: [u8; 32]) -> Result<Option<Flow>, StoreError> {
        self.read(move |conn, keys| {
            let sql = format!("{SELECT_FLOW}WHERE state_hash = ?1");
            query_flow(conn, keys, &sql, &state_hash[..])
        })
        .await
    }

    /// The tenant's flow, if it ever had one.
    async fn flow_of(&self, id: &TenantId) -> Result<Option<Flow>, StoreError> {
        let id = id.clone();
        self.read(move |conn, keys| {
            let sql = format!("{SELECT_FLOW}WHERE tenant_id = ?1");
            query_flow(conn, keys, &sql, id.as_str())
        })
        .await
    }

    /// Tenants whose flow stopped between the code exchange and the end.
    async fn interrupted_flows(&self) -> Result<Vec<TenantId>, StoreError> {
        self.read(|conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT tenant_id FROM onboarding_flows WHERE step IN \
                 ('code_exchanged', 'creating_app', 'app_stored', 'token_obtained', 'user_verified') \
                 ORDER BY updated_at",
            )?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.iter().map(|id| parse_id(id)).collect()
        })
        .await
    }

    /// Commits one step's outcome. Errors are also written to the tenant's
    /// last_error. `TenantNotFound` if the flow is gone (tenant deleted).
    async fn advance_flow(
        &self,
        id: &TenantId,
        update: FlowUpdate,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            let id = id.as_str();
            // Only a failed flow may leave the tenant in another state.
            let FlowUpdate::Failed { error, .. } = &update else {
                return advance(tx, keys, id, &update, now);
            };
            let before = state_of(tx, id)?;
            advance(tx, keys, id, &update, now)?;
            if let (Some(before), Some(after)) = (before, state_of(tx, id)?) {
                ev.state_change(tx, id, before, after, error, now)?;
            }
            Ok(())
        })
        .await
    }

    /// Ends the tenant's flow without reading its sealed values (they do
    /// not open or no longer match their columns), so that a new one can
    /// begin; see [`discard_flow`]. Returns the error as stored (naming an
    /// app the flow created).
    async fn discard_flow(
        &self,
        id: &TenantId,
        error: String,
        now: UnixMs,
    ) -> Result<String, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            let id = id.as_str();
            let before = state_of(tx, id)?;
            let said = discard_flow(tx, keys, id, &error, now)?;
            if let (Some(before), Some(after)) = (before, state_of(tx, id)?) {
                ev.state_change(tx, id, before, after, &said, now)?;
            }
            Ok(said)
        })
        .await
    }

    /// Step 6 in one transaction: the tenant gets the new credentials, the
    /// first token, the PBX user, its state and renewal job; the flow is
    /// completed, its secrets wiped and its orphan list (reported in
    /// `note`) cleared. Returns the tenant as stored.
    async fn complete_flow(
        &self,
        id: &TenantId,
        c: FlowCompletion,
        now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            let id = id.as_str();
            let before =
                state_of(tx, id)?.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
            let flow: Option<(String, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT step, token_issued_at FROM onboarding_flows WHERE tenant_id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (step, flow_token) =
                flow.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
            crate::store::flow::completion_fence(id, &step, flow_token, &c)?;
            let changes = TenantChanges {
                state: Some(c.state),
                trusted_app: Some(c.app.clone()),
                token: Some(c.token.clone()),
                renew_at: c.renew_at,
                clear_job: c.renew_at.is_none(),
                clear_failures: true,
                ..TenantChanges::default()
            };
            tenant_writes::update(tx, keys, id, &changes, now)?;
            tenant_writes::set_pbx_user(tx, id, &c.user)?;
            tx.execute(
                "UPDATE tenants SET last_error = ?2 WHERE tenant_id = ?1",
                params![id, c.note],
            )?;
            let n = tx.execute(
                &format!(
                    "UPDATE onboarding_flows SET step = 'completed', {WIPE}, error = NULL, \
                     orphaned_apps = '[]', updated_at = ?2 WHERE tenant_id = ?1"
                ),
                params![id, now.0],
            )?;
            if n == 0 {
                return Err(StoreError::TenantNotFound(id.to_owned()));
            }
            let tenant = get(tx, id)?.ok_or_else(|| StoreError::TenantNotFound(id.to_owned()))?;
            ev.append(
                tx,
                &NewEvent {
                    tenant_id: id,
                    kind: TenantEventKind::AuthorizationCompleted,
                    previous_state: None,
                    state: Some(tenant.state),
                    message: event_messages::AUTHORIZED,
                    at: now,
                },
            )?;
            let said = c.note.as_deref().unwrap_or(event_messages::AUTHORIZED);
            ev.state_change(tx, id, before, tenant.state, said, now)?;
            Ok(tenant)
        })
        .await
    }
}

fn advance(
    tx: &Connection,
    keys: &Keyring,
    id: &str,
    update: &FlowUpdate,
    now: UnixMs,
) -> Result<(), StoreError> {
    let n = match update {
        FlowUpdate::CodeExchanged { public_token: t } => {
            let dest = Dest {
                base_url: &flow_seal::tenant_url(tx, id)?,
                client_id: "",
            };
            let sealed =
                flow_seal::seal(keys, id, FlowSecret::PublicToken, t.value.expose(), &dest)?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'code_exchanged', public_token_sealed = ?2, \
                     public_token_type = ?3, public_token_issued_at = ?4, \
                     public_token_expires_at = ?5, error = NULL, updated_at = ?6 \
                 WHERE tenant_id = ?1",
                params![
                    id,
                    sealed,
                    t.token_type,
                    t.issued_at.0,
                    t.expires_at.0,
                    now.0
                ],
            )?
        }
        FlowUpdate::CreatingApp { name } => tx.execute(
            "UPDATE onboarding_flows SET step = 'creating_app', app_name = ?2, updated_at = ?3 \
             WHERE tenant_id = ?1",
            params![id, name, now.0],
        )?,
        FlowUpdate::AppCreationFailed { orphan, error } => {
            if let Some(name) = orphan {
                add_orphan(tx, id, name)?;
            }
            set_tenant_error(tx, id, error)?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'code_exchanged', app_name = NULL, \
                     error = ?2, updated_at = ?3 WHERE tenant_id = ?1",
                params![id, error, now.0],
            )?
        }
        FlowUpdate::AppStored { app } => {
            let dest = Dest {
                base_url: &flow_seal::tenant_url(tx, id)?,
                client_id: &app.client_id,
            };
            let sealed = flow_seal::seal(
                keys,
                id,
                FlowSecret::AppSecret,
                app.client_secret.expose(),
                &dest,
            )?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'app_stored', app_client_id = ?2, \
                     app_secret_sealed = ?3, error = NULL, updated_at = ?4 WHERE tenant_id = ?1",
                params![id, app.client_id, sealed, now.0],
            )?
        }
        FlowUpdate::TokenObtained { token: t } => {
            let dest = Dest {
                base_url: &flow_seal::tenant_url(tx, id)?,
                client_id: "",
            };
            let sealed =
                flow_seal::seal(keys, id, FlowSecret::FirstToken, t.value.expose(), &dest)?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'token_obtained', token_sealed = ?2, \
                     token_type = ?3, token_issued_at = ?4, token_expires_at = ?5, error = NULL, \
                     updated_at = ?6 WHERE tenant_id = ?1",
                params![
                    id,
                    sealed,
                    t.token_type,
                    t.issued_at.0,
                    t.expires_at.0,
                    now.0
                ],
            )?
        }
        FlowUpdate::UserVerified { user } => {
            let json = serde_json::to_string(user)
                .map_err(|e| StoreError::Corrupt(format!("pbx_user of tenant {id}: {e}")))?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'user_verified', pbx_user = ?2, error = NULL, \
                     updated_at = ?3 WHERE tenant_id = ?1",
                params![id, json, now.0],
            )?
        }
        FlowUpdate::TokenDropped { error } => {
            set_tenant_error(tx, id, error)?;
            tx.execute(
                "UPDATE onboarding_flows SET step = 'app_stored', token_sealed = NULL, \
                     token_type = NULL, token_issued_at = NULL, token_expires_at = NULL, \
                     error = ?2, updated_at = ?3 WHERE tenant_id = ?1",
                params![id, error, now.0],
            )?
        }
        FlowUpdate::Error { error } => {
            set_tenant_error(tx, id, error)?;
            tx.execute(
                "UPDATE onboarding_flows SET error = ?2, updated_at = ?3, \
                 exchange_claimed_until = NULL WHERE tenant_id = ?1",
                params![id, error, now.0],
            )?
        }
        FlowUpdate::Failed { orphan, error } => {
            if let Some(name) = orphan {
                add_orphan(tx, id, name)?;
            }
            set_tenant_error(tx, id, error)?;
            tx.execute(
                &format!(
                    "UPDATE onboarding_flows SET step = 'failed', {WIPE}, error = ?2, \
                     updated_at = ?3 WHERE tenant_id = ?1"
                ),
                params![id, error, now.0],
            )?
        }
    };
    if n == 0 {
        return Err(StoreError::TenantNotFound(id.to_owned()));
    }
    Ok(())
}

/// Ends the tenant's flow without reading its sealed values (they may be
/// unreadable or bound to other columns): `failed`, secrets wiped, `error`
/// on the flow and the tenant, and an app it may have created named in
/// the orphan list (and in the error). Returns the error as stored. No
/// flow: nothing to do.
pub(super) fn discard_flow(
    tx: &Connection,
    keys: &Keyring,
    id: &str,
    error: &str,
    now: UnixMs,
) -> Result<String, StoreError> {
    let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT step, app_name FROM onboarding_flows WHERE tenant_id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((step, app_name)) = row else {
        return Ok(error.to_owned());
    };
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
    advance(tx, keys, id, &update, now)?;
    Ok(error)
}

/// Flow errors are shown on the tenant too: that is where operators look.
fn set_tenant_error(tx: &Connection, id: &str, error: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tenants SET last_error = ?2 WHERE tenant_id = ?1",
        params![id, error],
    )?;
    Ok(())
}

fn add_orphan(tx: &Connection, id: &str, name: &str) -> Result<(), StoreError> {
    let current: Option<String> = tx
        .prepare_cached("SELECT orphaned_apps FROM onboarding_flows WHERE tenant_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let mut names = parse_orphans(id, current.as_deref().unwrap_or("[]"))?;
    if !names.iter().any(|n| n == name) {
        names.push(name.to_owned());
    }
    let json = serde_json::to_string(&names)
        .map_err(|e| StoreError::Corrupt(format!("orphaned_apps of tenant {id}: {e}")))?;
    tx.execute(
        "UPDATE onboarding_flows SET orphaned_apps = ?2 WHERE tenant_id = ?1",
        params![id, json],
    )?;
    Ok(())
}

fn parse_orphans(id: &str, json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("orphaned_apps of tenant {id}: {e}")))
}

fn query_flow(
    conn: &Connection,
    keys: &Keyring,
    sql: &str,
    key: impl rusqlite::ToSql,
) -> Result<Option<Flow>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([key])?;
    match rows.next()? {
        Some(r) => Ok(Some(flow_from_row(r, keys)?)),
        None => Ok(None),
    }
}

fn flow_from_row(r: &Row<'_>, keys: &Keyring) -> Result<Flow, StoreError> {
    let id: String = r.get(0)?;
    let step: String = r.get(1)?;
    let step = FlowStep::parse(&step)
        .ok_or_else(|| StoreError::Corrupt(format!("onboarding step of tenant {id}: {step:?}")))?;
    let base_url: String = r.get::<_, Option<String>>(19)?.unwrap_or_default();
    let app_client_id: Option<String> = r.get(8)?;
    let token = |sealed_col: usize, which: FlowSecret| -> Result<Option<AccessToken>, StoreError> {
        let sealed: Option<Vec<u8>> = r.get(sealed_col)?;
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
                .get::<_, Option<String>>(sealed_col + 1)?
                .unwrap_or_default(),
            issued_at: UnixMs(r.get::<_, Option<i64>>(sealed_col + 2)?.unwrap_or(0)),
            expires_at: UnixMs(r.get::<_, Option<i64>>(sealed_col + 3)?.unwrap_or(0)),
        }))
    };
    let public_token = token(3, FlowSecret::PublicToken)?;
    let first_token = token(10, FlowSecret::FirstToken)?;
    let app_secret: Option<Vec<u8>> = r.get(9)?;
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
    let pbx_user = match r.get::<_, Option<String>>(14)? {
        None => None,
        Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("onboarding pbx_user of tenant {id}: {e}"))
        })?),
    };
    let orphans: String = r.get(15)?;
    Ok(Flow {
        orphaned_apps: parse_orphans(&id, &orphans)?,
        tenant_id: parse_id(&id)?,
        step,
        state_expires_at: UnixMs(r.get(2)?),
        public_token,
        app_name: r.get(7)?,
        app,
        token: first_token,
        pbx_user,
        error: r.get(16)?,
        created_at: UnixMs(r.get(17)?),
        updated_at: UnixMs(r.get(18)?),
        base_url,
    })
}

#[cfg(test)]
#[path = "onboarding_tests.rs"]
mod tests;
