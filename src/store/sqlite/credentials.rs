//! The `credentials` table: a tenant's trusted application (client
//! credentials grant) and public application (authorization flow, with its
//! redirect URI). The client id is stored in clear (it is not secret); the
//! client secret only sealed, bound to tenant and kind.
//!
//! Why the secret is sealed together with where it may be sent: the base
//! URL (a `tenants` column), the client id and the redirect URI decide
//! which server receives the secret. Were they only clear columns, anyone
//! who can edit a copy of the database (or a backup later restored) could
//! point a tenant at their own server and collect its secret without the
//! master key. So the sealed value holds `[secret, pbx_base_url, client_id,
//! redirect_uri]` and every read compares the clear columns with the sealed
//! copies: a mismatch is [`StoreError::CredentialTampered`] naming the
//! column, and the secret is not handed out. Values sealed before schema 6
//! (the secret alone, field `trusted_secret` / `public_secret`) are
//! upgraded once at start-up, see [`upgrade_legacy`].
//!
//! The `SqliteStore` methods for credentials live here too: reading them,
//! listing the tenants whose credentials cannot be used, and recording that.
//!
//! Does not: validate credentials (domain does) or check them with the PBX.

use async_trait::async_trait;

use crate::store::CredentialRepo;
use rusqlite::{params, Connection};

use super::sealed;
use super::{CredentialFault, SqliteStore, StoreError};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::AppCredentials;
use crate::domain::TenantId;
pub(super) use crate::store::seal::credentials::Kind;
use crate::store::seal::credentials::{open_bound, open_checked, seal_bound, CredentialRow as Row};

const SELECT_ROWS: &str = "SELECT c.tenant_id, c.kind, c.client_id, c.secret_sealed, \
         c.redirect_uri, t.pbx_base_url \
     FROM credentials c JOIN tenants t ON t.tenant_id = c.tenant_id";

/// A row as SQLite gives it; the kind is parsed afterwards.
fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Row)> {
    Ok((
        r.get(1)?,
        Row {
            tenant_id: r.get(0)?,
            kind: Kind::Trusted,
            client_id: r.get(2)?,
            secret_sealed: r.get(3)?,
            redirect_uri: r.get(4)?,
            base_url: r.get(5)?,
        },
    ))
}

fn rows(conn: &Connection, tenant_id: Option<&str>) -> Result<Vec<Row>, StoreError> {
    let raw: Vec<(String, Row)> = match tenant_id {
        Some(id) => conn
            .prepare_cached(concat!(
                "SELECT c.tenant_id, c.kind, c.client_id, c.secret_sealed, ",
                "c.redirect_uri, t.pbx_base_url ",
                "FROM credentials c JOIN tenants t ON t.tenant_id = c.tenant_id ",
                "WHERE c.tenant_id = ?1"
            ))?
            .query_map([id], row_from)?
            .collect::<Result<_, _>>()?,
        None => conn
            .prepare(SELECT_ROWS)?
            .query_map([], row_from)?
            .collect::<Result<_, _>>()?,
    };
    raw.into_iter()
        .map(|(kind, row)| {
            Ok(Row {
                kind: Kind::parse(&kind)?,
                ..row
            })
        })
        .collect()
}

#[async_trait]
impl CredentialRepo for SqliteStore {
    /// Every tenant whose stored credentials do not open or do not match
    /// the base URL, client id or redirect URI they were sealed with.
    async fn credential_faults(&self) -> Result<Vec<CredentialFault>, StoreError> {
        self.read(|conn, keys| {
            faults(conn, keys, None)?
                .into_iter()
                .map(|(id, kind, e)| {
                    Ok(CredentialFault {
                        tenant_id: super::tenants::parse_id(&id)?,
                        trusted: kind == Kind::Trusted,
                        message: e.to_string(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Ok when every stored credential of the tenant opens and matches its
    /// clear columns (or it has none); otherwise the first fault's error.
    async fn verify_credentials(&self, id: &TenantId) -> Result<(), StoreError> {
        let id = id.clone();
        self.read(move |conn, keys| {
            match faults(conn, keys, Some(id.as_str()))?.into_iter().next() {
                Some((_, _, e)) => Err(e),
                None => Ok(()),
            }
        })
        .await
    }

    /// The tenant's stored credentials cannot be used: a renewing tenant
    /// becomes CREDENTIALS_REJECTED with `message` as last_error and its job
    /// moves to `retry_at` (so the scheduler does not spin on it); another
    /// state only gets the last_error. `TenantNotFound` if missing.
    async fn record_credential_fault(
        &self,
        id: &TenantId,
        message: String,
        retry_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, _, ev| {
            super::tenant_writes::record_credential_fault(
                tx,
                ev,
                id.as_str(),
                &message,
                retry_at,
                now,
            )
        })
        .await
    }

    async fn trusted_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<AppCredentials>, StoreError> {
        let id = id.clone();
        self.read(move |conn, keys| trusted(conn, keys, id.as_str()))
            .await
    }

    /// The public app and redirect URI for the authorization flow, if any.
    async fn public_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<(AppCredentials, String)>, StoreError> {
        let id = id.clone();
        self.read(move |conn, keys| public(conn, keys, id.as_str()))
            .await
    }
}

/// Inserts or replaces one kind of credentials, sealed together with
/// `base_url` (the tenant's, as it will be stored in this transaction);
/// the old sealed secret is overwritten in place (`secure_delete`).
#[allow(clippy::too_many_arguments)]
pub(super) fn upsert(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
    app: &AppCredentials,
    redirect_uri: Option<&str>,
    base_url: &str,
    now: UnixMs,
) -> Result<(), StoreError> {
    let sealed = seal_bound(
        keys,
        tenant_id,
        kind,
        app.client_secret.expose(),
        base_url,
        &app.client_id,
        redirect_uri,
    )?;
    tx.prepare_cached(
        "INSERT INTO credentials (tenant_id, kind, client_id, secret_sealed, redirect_uri, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (tenant_id, kind) DO UPDATE SET client_id = excluded.client_id, \
             secret_sealed = excluded.secret_sealed, redirect_uri = excluded.redirect_uri, \
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        tenant_id,
        kind.as_str(),
        app.client_id,
        sealed,
        redirect_uri,
        now.0
    ])?;
    Ok(())
}

fn load(
    conn: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
) -> Result<Option<(AppCredentials, Option<String>)>, StoreError> {
    let row = rows(conn, Some(tenant_id))?
        .into_iter()
        .find(|r| r.kind == kind);
    let Some(row) = row else {
        return Ok(None);
    };
    let client_secret = open_checked(keys, &row)?;
    Ok(Some((
        AppCredentials {
            client_id: row.client_id,
            client_secret,
        },
        row.redirect_uri,
    )))
}

pub(super) fn trusted(
    conn: &Connection,
    keys: &Keyring,
    tenant_id: &str,
) -> Result<Option<AppCredentials>, StoreError> {
    Ok(load(conn, keys, tenant_id, Kind::Trusted)?.map(|(app, _)| app))
}

pub(super) fn public(
    conn: &Connection,
    keys: &Keyring,
    tenant_id: &str,
) -> Result<Option<(AppCredentials, String)>, StoreError> {
    Ok(load(conn, keys, tenant_id, Kind::Public)?
        .map(|(app, redirect_uri)| (app, redirect_uri.unwrap_or_default())))
}

/// Every credential of the tenant (or of every tenant) that does not open
/// or does not match its clear columns, with the reason. Other errors
/// (SQLite) are returned as errors.
pub(super) fn faults(
    conn: &Connection,
    keys: &Keyring,
    tenant_id: Option<&str>,
) -> Result<Vec<(String, Kind, StoreError)>, StoreError> {
    let mut out = Vec::new();
    for row in rows(conn, tenant_id)? {
        if let Err(e) = open_checked(keys, &row) {
            if !e.is_credential_fault() {
                return Err(e);
            }
            out.push((row.tenant_id, row.kind, e));
        }
    }
    Ok(out)
}

/// UpdateTenant moved the tenant to `new_url`: re-seal its credentials
/// (except `replaced`, written afterwards by the caller) bound to the new
/// URL. The old URL is not compared (the operator is replacing it, also
/// after an edit outside pbx-tokend); client id and redirect URI are.
pub(super) fn rebind_url(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    new_url: &str,
    replaced: Option<Kind>,
) -> Result<(), StoreError> {
    for row in rows(tx, Some(tenant_id))? {
        if Some(row.kind) == replaced {
            continue;
        }
        let sealed = crate::store::seal::credentials::rebound(keys, &row, new_url)?;
        tx.execute(
            "UPDATE credentials SET secret_sealed = ?3 WHERE tenant_id = ?1 AND kind = ?2",
            params![tenant_id, row.kind.as_str(), sealed],
        )?;
    }
    Ok(())
}

/// Master key rotation: every credential re-sealed under the current key
/// with the parts it was sealed with (a tampered column stays detectable).
/// Fails on a value that does not open.
pub(super) fn reseal_all(tx: &Connection, keys: &Keyring) -> Result<u64, StoreError> {
    let mut count = 0;
    for row in rows(tx, None)? {
        let parts = open_bound(keys, &row)?;
        let refs: Vec<&str> = parts.iter().map(|p| p.expose().as_str()).collect();
        let sealed = sealed::seal_parts(keys, &row.tenant_id, row.kind.field(), &refs)?;
        tx.execute(
            "UPDATE credentials SET secret_sealed = ?3 WHERE tenant_id = ?1 AND kind = ?2",
            params![row.tenant_id, row.kind.as_str(), sealed],
        )?;
        count += 1;
    }
    Ok(count)
}

pub(super) use crate::store::seal::credentials::opens_in_any_format;

/// The one-time upgrade of values sealed before schema 6 (the secret
/// alone): each is opened with its old associated data and sealed again
/// bound to the row's current base URL, client id and redirect URI, in the
/// caller's transaction. Rows already bound are left alone; a row that
/// opens in neither format is left as it is (it is reported as unreadable
/// when read, and does not stop the upgrade of the others). Returns how
/// many rows were upgraded.
pub(super) fn upgrade_legacy(tx: &Connection, keys: &Keyring) -> Result<u64, StoreError> {
    let mut upgraded = 0;
    for row in rows(tx, None)? {
        if open_bound(keys, &row).is_ok() {
            continue;
        }
        let Ok(secret) = sealed::open(
            keys,
            &row.tenant_id,
            row.kind.legacy_field(),
            &row.secret_sealed,
        ) else {
            tracing::warn!(tenant = %row.tenant_id, kind = row.kind.label(), "stored credentials open in neither format; left as they are");
            continue;
        };
        let sealed = seal_bound(
            keys,
            &row.tenant_id,
            row.kind,
            secret.expose(),
            &row.base_url,
            &row.client_id,
            row.redirect_uri.as_deref(),
        )?;
        tx.execute(
            "UPDATE credentials SET secret_sealed = ?3 WHERE tenant_id = ?1 AND kind = ?2",
            params![row.tenant_id, row.kind.as_str(), sealed],
        )?;
        upgraded += 1;
    }
    Ok(upgraded)
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
