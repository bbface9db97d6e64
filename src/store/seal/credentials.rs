//! A tenant's app credentials as sealed at rest, for every backend: the
//! client secret sealed together with where it may be sent.
//!
//! Why: the base URL (a `tenants` column), the client id and the redirect
//! URI decide which server receives the secret. Were they only clear
//! columns, anyone who can edit a copy of the database (or a backup later
//! restored) could point a tenant at their own server and collect its
//! secret without the master key. So the sealed value holds `[secret,
//! pbx_base_url, client_id, redirect_uri]` and every read compares the
//! clear columns with the sealed copies: a mismatch is
//! [`StoreError::CredentialTampered`] naming the column, and the secret is
//! not handed out.
//!
//! Does not: read or write rows (each backend's `credentials.rs` does).

use super::{open, open_parts, seal_parts, Field};
use crate::crypto::Keyring;
use crate::secret::Secret;
use crate::store::StoreError;

/// Which app of the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Trusted,
    Public,
}

/// Sealed parts, in order: secret, pbx_base_url, client_id, redirect_uri
/// ("" for a trusted app).
const PARTS: usize = 4;

impl Kind {
    /// The `credentials.kind` column's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Trusted => "trusted",
            Kind::Public => "public",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Kind, StoreError> {
        match s {
            "trusted" => Ok(Kind::Trusted),
            "public" => Ok(Kind::Public),
            other => Err(StoreError::Corrupt(format!(
                "unknown credentials kind {other:?}"
            ))),
        }
    }

    /// The name operators know it by (the API's field).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Trusted => "trusted_app",
            Kind::Public => "public_app",
        }
    }

    pub(crate) fn field(self) -> Field {
        match self {
            Kind::Trusted => Field::TrustedApp,
            Kind::Public => Field::PublicApp,
        }
    }

    /// The field of values sealed before schema 6 (the secret alone).
    pub(crate) fn legacy_field(self) -> Field {
        match self {
            Kind::Trusted => Field::TrustedSecret,
            Kind::Public => Field::PublicSecret,
        }
    }
}

/// One credentials row with its tenant's base URL, as a backend reads it.
pub(crate) struct CredentialRow {
    pub(crate) tenant_id: String,
    pub(crate) kind: Kind,
    pub(crate) client_id: String,
    pub(crate) secret_sealed: Vec<u8>,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) base_url: String,
}

/// Seals `secret` bound to the columns that decide where it goes.
pub(crate) fn seal_bound(
    keys: &Keyring,
    tenant_id: &str,
    kind: Kind,
    secret: &str,
    base_url: &str,
    client_id: &str,
    redirect_uri: Option<&str>,
) -> Result<Vec<u8>, StoreError> {
    seal_parts(
        keys,
        tenant_id,
        kind.field(),
        &[secret, base_url, client_id, redirect_uri.unwrap_or("")],
    )
}

/// The sealed parts of a row, or why they do not open.
pub(crate) fn open_bound(
    keys: &Keyring,
    row: &CredentialRow,
) -> Result<Vec<Secret<String>>, StoreError> {
    open_parts(
        keys,
        &row.tenant_id,
        row.kind.field(),
        &row.secret_sealed,
        PARTS,
    )
    .map_err(|e| StoreError::CredentialUnreadable {
        tenant: row.tenant_id.clone(),
        kind: row.kind.label(),
        reason: match e {
            StoreError::Unseal { source, .. } => source.to_string(),
            other => other.to_string(),
        },
    })
}

/// Compares the row's clear columns with what was sealed; `skip_url` when
/// the caller is replacing the URL anyway (UpdateTenant).
pub(crate) fn check_binding(
    row: &CredentialRow,
    parts: &[Secret<String>],
    skip_url: bool,
) -> Result<(), StoreError> {
    let clear = [
        (1, "pbx_base_url", row.base_url.as_str()),
        (2, "client_id", row.client_id.as_str()),
        (3, "redirect_uri", row.redirect_uri.as_deref().unwrap_or("")),
    ];
    for (i, column, stored) in clear {
        if skip_url && i == 1 {
            continue;
        }
        let sealed = parts.get(i).map_or("", |p| p.expose().as_str());
        if sealed != stored {
            return Err(StoreError::CredentialTampered {
                tenant: row.tenant_id.clone(),
                kind: row.kind.label(),
                field: column,
                stored: stored.to_owned(),
                sealed: sealed.to_owned(),
            });
        }
    }
    Ok(())
}

/// The secret of a row whose clear columns match what was sealed.
pub(crate) fn open_checked(
    keys: &Keyring,
    row: &CredentialRow,
) -> Result<Secret<String>, StoreError> {
    let mut parts = open_bound(keys, row)?;
    check_binding(row, &parts, false)?;
    // open_bound returned exactly PARTS parts.
    Ok(parts.swap_remove(0))
}

/// The row's value sealed again bound to `new_url` (UpdateTenant moved the
/// tenant). The old URL is not compared (the operator is replacing it,
/// also after an edit outside pbx-tokend); client id and redirect URI are.
pub(crate) fn rebound(
    keys: &Keyring,
    row: &CredentialRow,
    new_url: &str,
) -> Result<Vec<u8>, StoreError> {
    let parts = open_bound(keys, row)?;
    check_binding(row, &parts, true)?;
    seal_bound(
        keys,
        &row.tenant_id,
        row.kind,
        parts[0].expose(),
        new_url,
        &row.client_id,
        row.redirect_uri.as_deref(),
    )
}

/// Whether the value opens in either format (the master key probe of a
/// database without a check value).
pub(crate) fn opens_in_any_format(
    keys: &Keyring,
    tenant_id: &str,
    kind: &str,
    sealed_value: &[u8],
) -> Result<bool, StoreError> {
    let kind = Kind::parse(kind)?;
    Ok(
        open(keys, tenant_id, kind.legacy_field(), sealed_value).is_ok()
            || open_parts(keys, tenant_id, kind.field(), sealed_value, PARTS).is_ok(),
    )
}
