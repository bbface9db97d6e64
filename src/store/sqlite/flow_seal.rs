//! The sealed values of an authorization flow (`onboarding_flows`: the
//! public token from the code exchange, the new trusted app's secret, its
//! first token), each sealed together with where it may be sent.
//!
//! The sealing itself is backend-neutral (`store/seal/flow.rs`); this file
//! reads and writes the sealed columns in SQLite.
//!
//! Why: the flow sends these to the tenant's `pbx_base_url` (and the new
//! secret under `app_client_id`), both clear columns. Sealed alone, anyone
//! who can edit a copy of the database could point a half-done flow at
//! their own server and collect the PBX user's token or the new app's
//! secret without the master key. So, as in `credentials.rs`, the sealed
//! value holds `[value, pbx_base_url, client_id]` (client id "" for the
//! tokens) and every read compares the clear columns with the sealed
//! copies: a mismatch is [`StoreError::FlowTampered`] naming the column.
//!
//! Values sealed before this binding (the value alone, fields
//! `onboarding_*`) are not upgraded: a flow is minutes old and can be begun
//! again, while binding it to today's columns would trust exactly the
//! columns an edit could have changed. At start-up such a flow is ended
//! (`failed`, its secrets wiped, a new app it created named for deletion,
//! the tenant's last_error saying to run BeginAuthorization), see
//! [`retire_legacy`].
//!
//! Does not: decide what a flow does with a fault (`onboarding` does).

use rusqlite::{params, Connection, OptionalExtension};

use super::sealed;
use super::StoreError;
use crate::clock::{Clock, SystemClock};
use crate::crypto::Keyring;
use crate::store::seal::flow::{is_legacy, open_parts};
pub(super) use crate::store::seal::flow::{open, seal, Dest, FlowSecret, RETIRED};

/// The tenant's base URL as stored now (in the caller's transaction).
pub(super) fn tenant_url(conn: &Connection, tenant_id: &str) -> Result<String, StoreError> {
    conn.prepare_cached("SELECT pbx_base_url FROM tenants WHERE tenant_id = ?1")?
        .query_row([tenant_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::TenantNotFound(tenant_id.to_owned()))
}

/// The sealed columns of one flow row, with its app's client id.
struct FlowRow {
    tenant_id: String,
    client_id: Option<String>,
    values: Vec<(FlowSecret, Vec<u8>)>,
}

fn flow_rows(conn: &Connection, tenant_id: Option<&str>) -> Result<Vec<FlowRow>, StoreError> {
    let sql = "SELECT tenant_id, app_client_id, public_token_sealed, app_secret_sealed, \
               token_sealed FROM onboarding_flows WHERE (?1 IS NULL OR tenant_id = ?1) \
               AND (public_token_sealed IS NOT NULL OR app_secret_sealed IS NOT NULL \
                    OR token_sealed IS NOT NULL)";
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([tenant_id], |r| {
        let mut values = Vec::new();
        for (i, which) in FlowSecret::ALL.into_iter().enumerate() {
            if let Some(v) = r.get::<_, Option<Vec<u8>>>(2 + i)? {
                values.push((which, v));
            }
        }
        Ok(FlowRow {
            tenant_id: r.get(0)?,
            client_id: r.get(1)?,
            values,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn client_id_for(which: FlowSecret, row: &FlowRow) -> &str {
    match which {
        FlowSecret::AppSecret => row.client_id.as_deref().unwrap_or(""),
        _ => "",
    }
}

fn write(
    tx: &Connection,
    tenant_id: &str,
    which: FlowSecret,
    value: &[u8],
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "UPDATE onboarding_flows SET {} = ?2 WHERE tenant_id = ?1",
            which.column()
        ),
        params![tenant_id, value],
    )?;
    Ok(())
}

/// UpdateTenant moved the tenant to `new_url`: the flow's values are sealed
/// again bound to it (as its credentials are). The old URL is not
/// compared (the operator is replacing it, also after an edit outside
/// pbx-tokend); the client id is. A value that does not open or whose
/// client id does not match is left as it is: the flow keeps refusing it
/// and BeginAuthorization replaces the flow; the URL change goes on.
pub(super) fn rebind_url(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    new_url: &str,
) -> Result<(), StoreError> {
    for row in flow_rows(tx, Some(tenant_id))? {
        for (which, value) in &row.values {
            let dest = Dest {
                base_url: new_url,
                client_id: client_id_for(*which, &row),
            };
            let Some(resealed) =
                crate::store::seal::flow::rebound(keys, tenant_id, *which, value, &dest)?
            else {
                continue;
            };
            write(tx, tenant_id, *which, &resealed)?;
        }
    }
    Ok(())
}

/// Master key rotation: every flow value re-sealed under the current key
/// with the parts it was sealed with (a tampered column stays detectable).
/// Fails on a value that does not open.
pub(super) fn reseal_all(tx: &Connection, keys: &Keyring) -> Result<u64, StoreError> {
    let mut count = 0;
    for row in flow_rows(tx, None)? {
        for (which, value) in &row.values {
            let parts = open_parts(keys, &row.tenant_id, *which, value)?;
            let refs: Vec<&str> = parts.iter().map(|p| p.expose().as_str()).collect();
            let resealed = sealed::seal_parts(keys, &row.tenant_id, which.field(), &refs)?;
            write(tx, &row.tenant_id, *which, &resealed)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Start-up, in the master key check's transaction: ends every flow that
/// holds a value sealed before flows were bound (see module docs), so it
/// never sends anything. Values that open in neither format are left (the
/// flow reports them unreadable). Returns how many flows were ended.
pub(super) fn retire_legacy(tx: &Connection, keys: &Keyring) -> Result<u64, StoreError> {
    // The check has no clock of the daemon's; only `updated_at` uses it.
    let now = SystemClock.now();
    let mut retired = 0;
    for row in flow_rows(tx, None)? {
        let legacy = row
            .values
            .iter()
            .any(|(which, value)| is_legacy(keys, &row.tenant_id, *which, value));
        if legacy {
            let said = super::onboarding::discard_flow(tx, keys, &row.tenant_id, RETIRED, now)?;
            tracing::warn!(tenant = %row.tenant_id, "{said}");
            retired += 1;
        }
    }
    Ok(retired)
}
