//! The `credentials` table on PostgreSQL: the apps' client ids in clear,
//! their secrets sealed together with where they may be sent
//! (`store/seal/credentials.rs`, shared with SQLite); every read compares
//! the clear columns with the sealed copies.
//!
//! Does not: validate credentials (domain does) or check them with the PBX.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{execute, query, PgStore, Tx};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, TenantId};
use crate::store::rows::parse_id;
use crate::store::seal::credentials::{open_checked, rebound, seal_bound, CredentialRow, Kind};
use crate::store::{CredentialFault, CredentialRepo, StoreError};

/// Where a secret may be sent, besides its client id.
pub(super) struct Dest<'a> {
    pub base_url: &'a str,
    pub redirect_uri: Option<&'a str>,
}

const SELECT_ROWS: &str = "SELECT c.tenant_id, c.kind, c.client_id, c.secret_sealed, \
         c.redirect_uri, t.pbx_base_url \
     FROM credentials c JOIN tenants t ON t.tenant_id = c.tenant_id";

pub(super) fn row_from(r: &Row) -> Result<CredentialRow, StoreError> {
    let kind: String = r.try_get(1)?;
    Ok(CredentialRow {
        tenant_id: r.try_get(0)?,
        kind: Kind::parse(&kind)?,
        client_id: r.try_get(2)?,
        secret_sealed: r.try_get(3)?,
        redirect_uri: r.try_get(4)?,
        base_url: r.try_get(5)?,
    })
}

async fn rows(tx: &Tx<'_>, tenant_id: Option<&str>) -> Result<Vec<CredentialRow>, StoreError> {
    let rows = match tenant_id {
        Some(id) => {
            query(
                tx,
                &format!("{SELECT_ROWS} WHERE c.tenant_id = $1 ORDER BY c.kind"),
                &[&id],
            )
            .await?
        }
        None => {
            query(
                tx,
                &format!("{SELECT_ROWS} ORDER BY c.tenant_id, c.kind"),
                &[],
            )
            .await?
        }
    };
    rows.iter().map(row_from).collect()
}

/// Every credential of the tenant (or of every tenant) that does not open
/// or does not match its clear columns, with the reason.
async fn faults(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: Option<&str>,
) -> Result<Vec<(String, Kind, StoreError)>, StoreError> {
    let mut out = Vec::new();
    for row in rows(tx, tenant_id).await? {
        if let Err(e) = open_checked(keys, &row) {
            if !e.is_credential_fault() {
                return Err(e);
            }
            out.push((row.tenant_id, row.kind, e));
        }
    }
    Ok(out)
}

async fn load(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
) -> Result<Option<(AppCredentials, Option<String>)>, StoreError> {
    let row = rows(tx, Some(tenant_id))
        .await?
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

#[async_trait]
impl CredentialRepo for PgStore {
    async fn credential_faults(&self) -> Result<Vec<CredentialFault>, StoreError> {
        self.read(|tx, keys| {
            Box::pin(async move {
                faults(tx, keys, None)
                    .await?
                    .into_iter()
                    .map(|(id, kind, e)| {
                        Ok(CredentialFault {
                            tenant_id: parse_id(&id)?,
                            trusted: kind == Kind::Trusted,
                            message: e.to_string(),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn verify_credentials(&self, id: &TenantId) -> Result<(), StoreError> {
        let id = id.clone();
        self.read(move |tx, keys| {
            Box::pin(async move {
                match faults(tx, keys, Some(id.as_str()))
                    .await?
                    .into_iter()
                    .next()
                {
                    Some((_, _, e)) => Err(e),
                    None => Ok(()),
                }
            })
        })
        .await
    }

    async fn record_credential_fault(
        &self,
        id: &TenantId,
        message: String,
        retry_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, _, ev| {
            Box::pin(async move {
                super::tenant_writes::record_credential_fault(
                    tx,
                    ev,
                    id.as_str(),
                    &message,
                    retry_at,
                    now,
                )
                .await
            })
        })
        .await
    }

    async fn trusted_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<AppCredentials>, StoreError> {
        // Every renewal reads these: those that arrive together share one
        // statement, with no BEGIN/COMMIT.
        self.trusted_credentials_batched(id.clone()).await
    }

    async fn public_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<(AppCredentials, String)>, StoreError> {
        let id = id.clone();
        self.read(move |tx, keys| {
            Box::pin(async move {
                Ok(load(tx, keys, id.as_str(), Kind::Public)
                    .await?
                    .map(|(app, redirect_uri)| (app, redirect_uri.unwrap_or_default())))
            })
        })
        .await
    }
}

/// Inserts or replaces one kind of credentials, sealed together with the
/// tenant's base URL as it will be stored in this transaction.
pub(super) async fn upsert(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
    app: &AppCredentials,
    dest: &Dest<'_>,
    now: UnixMs,
) -> Result<(), StoreError> {
    let sealed = seal_bound(
        keys,
        tenant_id,
        kind,
        app.client_secret.expose(),
        dest.base_url,
        &app.client_id,
        dest.redirect_uri,
    )?;
    execute(
        tx,
        "INSERT INTO credentials (tenant_id, kind, client_id, secret_sealed, redirect_uri, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, kind) DO UPDATE SET client_id = excluded.client_id, \
             secret_sealed = excluded.secret_sealed, redirect_uri = excluded.redirect_uri, \
             updated_at = excluded.updated_at",
        &[
            &tenant_id,
            &kind.as_str(),
            &app.client_id,
            &sealed,
            &dest.redirect_uri,
            &now.0,
        ],
    )
    .await?;
    Ok(())
}

/// UpdateTenant moved the tenant to `new_url`: its credentials (except
/// `replaced`, written afterwards by the caller) are sealed again bound to
/// it; client id and redirect URI are still compared.
pub(super) async fn rebind_url(
    tx: &Tx<'_>,
    keys: &Keyring,
    tenant_id: &str,
    new_url: &str,
    replaced: Option<Kind>,
) -> Result<(), StoreError> {
    for row in rows(tx, Some(tenant_id)).await? {
        if Some(row.kind) == replaced {
            continue;
        }
        let sealed = rebound(keys, &row, new_url)?;
        execute(
            tx,
            "UPDATE credentials SET secret_sealed = $3 WHERE tenant_id = $1 AND kind = $2",
            &[&tenant_id, &row.kind.as_str(), &sealed],
        )
        .await?;
    }
    Ok(())
}

/// The first stored credential, for the master key probe.
pub(super) async fn first(tx: &Tx<'_>) -> Result<Option<(String, String, Vec<u8>)>, StoreError> {
    let row = super::query_opt(
        tx,
        "SELECT tenant_id, kind, secret_sealed FROM credentials LIMIT 1",
        &[],
    )
    .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()
}
