//! The store's side of sealing: which fields are sealed, the associated
//! data that binds each sealed value to its tenant and field, and turning
//! crypto failures into `StoreError`s that name the value.
//!
//! Does not: hold keys or implement the cipher (see `crate::crypto`).

use zeroize::Zeroize;

use super::StoreError;
use crate::crypto::{self, Keyring};
use crate::secret::Secret;

/// Every sealed column, by the field name bound into its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    TrustedSecret,
    PublicSecret,
    AccessToken,
}

impl Field {
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::TrustedSecret => "trusted_secret",
            Field::PublicSecret => "public_secret",
            Field::AccessToken => "access_token",
        }
    }
}

pub(super) fn seal(
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

pub(super) fn open(
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
