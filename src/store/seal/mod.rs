//! The store's side of sealing, shared by every backend: which fields are
//! sealed, the associated data that binds each sealed value to its tenant
//! and field, and turning crypto failures into `StoreError`s that name the
//! value. `credentials.rs` and `flow.rs` bind a secret to where it may be
//! sent; `check.rs` is the master key check value. A backend stores the
//! bytes these functions make and hands them back here to open: sealing is
//! the same whatever the database, so a row copied between backends opens.
//!
//! Does not: hold keys or implement the cipher (see `crate::crypto`), or
//! know SQL.

pub(crate) mod check;
pub(crate) mod credentials;
pub(crate) mod flow;

use zeroize::{Zeroize, Zeroizing};

use super::StoreError;
use crate::crypto::{self, Keyring};
use crate::secret::Secret;

/// Every sealed column, by the field name bound into its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// Before schema 6: the trusted app's secret alone (see `credentials`).
    TrustedSecret,
    /// Before schema 6: the public app's secret alone.
    PublicSecret,
    /// The trusted app's secret sealed together with where it may be sent
    /// (base URL, client id), see `credentials::Bound`.
    TrustedApp,
    /// The public app's secret with base URL, client id and redirect URI.
    PublicApp,
    AccessToken,
    /// Before flow binding: the code exchange's public token alone.
    OnboardingPublicToken,
    /// Before flow binding: the new trusted app's secret alone.
    OnboardingTrustedSecret,
    /// Before flow binding: the new trusted app's first token alone.
    OnboardingToken,
    /// Onboarding: the public app's token from the code exchange, sealed
    /// with the base URL it may be sent to (see `flow_seal`).
    FlowPublicToken,
    /// Onboarding: the new trusted app's secret with base URL and client id.
    FlowTrustedApp,
    /// Onboarding: the new trusted app's first token with the base URL.
    FlowToken,
}

impl Field {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::TrustedSecret => "trusted_secret",
            Field::PublicSecret => "public_secret",
            Field::TrustedApp => "trusted_app",
            Field::PublicApp => "public_app",
            Field::AccessToken => "access_token",
            Field::OnboardingPublicToken => "onboarding_public_token",
            Field::OnboardingTrustedSecret => "onboarding_trusted_secret",
            Field::OnboardingToken => "onboarding_token",
            Field::FlowPublicToken => "flow_public_token",
            Field::FlowTrustedApp => "flow_trusted_app",
            Field::FlowToken => "flow_token",
        }
    }
}

pub(crate) fn seal(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    plaintext: &str,
) -> Result<Vec<u8>, StoreError> {
    keys.try_seal(&crypto::aad(tenant_id, field.name()), plaintext.as_bytes())
        .map_err(|e| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: {e}",
                field.name()
            ))
        })
}

pub(crate) fn open(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    sealed: &[u8],
) -> Result<Secret<String>, StoreError> {
    let what = || format!("{} of tenant {tenant_id}", field.name());
    let plain = keys
        .open(&crypto::aad(tenant_id, field.name()), sealed)
        .map_err(|source| StoreError::Unseal {
            what: what(),
            source,
        })?;
    match String::from_utf8(plain) {
        Ok(s) => Ok(Secret::new(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(StoreError::Corrupt(format!("{} is not UTF-8", what())))
        }
    }
}

/// Seals several strings as one value: each as a 4-byte big-endian length
/// and its bytes, so no separator needs escaping. The buffer holding the
/// plaintext is wiped after sealing.
pub(crate) fn seal_parts(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    parts: &[&str],
) -> Result<Vec<u8>, StoreError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(
        parts.iter().map(|p| 4 + p.len()).sum::<usize>(),
    ));
    for part in parts {
        let len = u32::try_from(part.len()).map_err(|_| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: a part is too long",
                field.name()
            ))
        })?;
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(part.as_bytes());
    }
    keys.try_seal(&crypto::aad(tenant_id, field.name()), &plain)
        .map_err(|e| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: {e}",
                field.name()
            ))
        })
}

/// Opens a value sealed by [`seal_parts`]; exactly `count` parts expected.
pub(crate) fn open_parts(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    sealed: &[u8],
    count: usize,
) -> Result<Vec<Secret<String>>, StoreError> {
    let what = || format!("{} of tenant {tenant_id}", field.name());
    let plain = Zeroizing::new(
        keys.open(&crypto::aad(tenant_id, field.name()), sealed)
            .map_err(|source| StoreError::Unseal {
                what: what(),
                source,
            })?,
    );
    let corrupt = || StoreError::Corrupt(format!("{} has a malformed sealed layout", what()));
    let mut rest: &[u8] = &plain;
    let mut out = Vec::with_capacity(count);
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
        if tail.len() < len {
            return Err(corrupt());
        }
        let (part, tail) = tail.split_at(len);
        let part = std::str::from_utf8(part).map_err(|_| corrupt())?;
        out.push(Secret::new(part.to_owned()));
        rest = tail;
    }
    if out.len() != count {
        return Err(corrupt());
    }
    Ok(out)
}
