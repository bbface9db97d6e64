//! Sample values the conformance cases share: a keyring, times, tenants.

use std::sync::Arc;

use crate::clock::UnixMs;
use crate::crypto::Keyring;

pub(crate) const T0: UnixMs = UnixMs(1_700_000_000_000);
pub(crate) const SECOND: i64 = 1_000;

/// The same key in every case, so a reopened store can read what it wrote.
pub(crate) fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[7; 32]))
}
