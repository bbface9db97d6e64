//! The master key check value, for every backend: a known text sealed
//! under the current master key and stored in `master_key_check`, so a
//! wrong key is detected at start-up, before anything else is read or
//! written.
//!
//! Does not: read or write the row (each backend does), or decide what a
//! version-1 value means for old rows (the SQLite backend upgrades them).

use crate::crypto::{self, Keyring};
use crate::store::StoreError;

const CHECK_FIELD: &str = "master_key_check";
/// Written before schema 6: credentials sealed as the secret alone.
pub(crate) const CHECK_PLAINTEXT_V1: &[u8] = b"pbx-tokend master key check v1";
/// Every credential is sealed bound to its base URL, client id and redirect
/// URI (`seal/credentials.rs`). Sealed, so an edited database cannot claim
/// to be of the old kind and have its rows "upgraded" with edited columns;
/// only a check value from before the upgrade (an old backup) can.
pub(crate) const CHECK_PLAINTEXT: &[u8] = b"pbx-tokend master key check v2";

/// Associated data of the check value: no tenant id is empty, so this
/// cannot collide with a tenant's field.
pub(crate) fn check_aad() -> Vec<u8> {
    crypto::aad("", CHECK_FIELD)
}

/// What a stored check value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckVersion {
    /// Every credential is bound (schema 6 and later).
    V2,
    /// Written before schema 6: credentials may be sealed alone.
    V1,
}

/// Opens a stored check value; `WrongMasterKey` when it does not open.
pub(crate) fn open_check(keys: &Keyring, sealed: &[u8]) -> Result<CheckVersion, StoreError> {
    match keys.open(&check_aad(), sealed) {
        Ok(plain) if plain == CHECK_PLAINTEXT => Ok(CheckVersion::V2),
        Ok(plain) if plain == CHECK_PLAINTEXT_V1 => Ok(CheckVersion::V1),
        _ => Err(wrong_key(keys, sealed)),
    }
}

/// A new check value (version 2) under the current key.
pub(crate) fn seal_check(keys: &Keyring) -> Result<Vec<u8>, StoreError> {
    keys.try_seal(&check_aad(), CHECK_PLAINTEXT)
        .map_err(|e| StoreError::Task(format!("cannot seal the master key check: {e}")))
}

/// The error for a value the configured key does not open, naming both
/// keys' ids.
pub(crate) fn wrong_key(keys: &Keyring, sealed: &[u8]) -> StoreError {
    StoreError::WrongMasterKey {
        configured: format!("{:08x}", keys.current_key_id()),
        sealed_with: crypto::envelope_key_id(sealed)
            .map(|id| format!("{id:08x}"))
            .unwrap_or_else(|| "unknown".into()),
    }
}
