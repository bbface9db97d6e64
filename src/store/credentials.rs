//! The `credentials` table: a tenant's trusted application (client
//! credentials grant) and public application (authorization flow, with its
//! redirect URI). The client id is stored in clear (it is not secret); the
//! client secret only sealed, bound to tenant and kind.
//!
//! Does not: validate credentials (domain does) or check them with the PBX.

use rusqlite::{params, Connection, OptionalExtension};

use super::sealed::{self, Field};
use super::StoreError;
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::AppCredentials;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Trusted,
    Public,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Trusted => "trusted",
            Kind::Public => "public",
        }
    }
    fn field(self) -> Field {
        match self {
            Kind::Trusted => Field::TrustedSecret,
            Kind::Public => Field::PublicSecret,
        }
    }
}

/// Inserts or replaces one kind of credentials; the old sealed secret is
/// overwritten in place (`secure_delete`).
pub(super) fn upsert(
    tx: &Connection,
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
    app: &AppCredentials,
    redirect_uri: Option<&str>,
    now: UnixMs,
) -> Result<(), StoreError> {
    let sealed = sealed::seal(keys, tenant_id, kind.field(), app.client_secret.expose())?;
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
    let row: Option<(String, Vec<u8>, Option<String>)> = conn
        .prepare_cached(
            "SELECT client_id, secret_sealed, redirect_uri FROM credentials \
             WHERE tenant_id = ?1 AND kind = ?2",
        )?
        .query_row(params![tenant_id, kind.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((client_id, secret_sealed, redirect_uri)) = row else {
        return Ok(None);
    };
    let client_secret = sealed::open(keys, tenant_id, kind.field(), &secret_sealed)?;
    Ok(Some((
        AppCredentials {
            client_id,
            client_secret,
        },
        redirect_uri,
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
