//! STUB: master keyring and sealing (filled in by the crypto implementation).
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("stub")]
    Stub,
}

pub struct Keyring;

impl Keyring {
    /// Loads the master key from `path`, or creates it (0600) when
    /// `create_if_missing`. Returns the keyring and whether it was created.
    pub fn load_or_create(
        _path: &Path,
        _create_if_missing: bool,
    ) -> Result<(Keyring, bool), CryptoError> {
        unimplemented!()
    }
    /// A random key, for tests.
    pub fn ephemeral() -> Keyring {
        Keyring
    }
    pub fn seal(&self, _aad: &[u8], _plaintext: &[u8]) -> Vec<u8> {
        unimplemented!()
    }
    pub fn open(&self, _aad: &[u8], _sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        unimplemented!()
    }
}
