//! The master keyring and authenticated sealing of secrets with
//! XChaCha20-Poly1305. Loads (or creates, mode 0600) the master key file,
//! seals a value under the current key with caller-chosen associated data,
//! and opens envelopes sealed under any key the keyring holds.
//!
//! Does not: know which values are secret or what the associated data means
//! (the store decides, see [`aad`]), rotate keys on its own, or log anything
//! about keys beyond their public ids.
//!
//! Envelope layout (version 1):
//!
//! ```text
//! [1 byte version = 1][4 bytes key id, big endian][24 bytes nonce][ciphertext][16 bytes tag]
//! ```
//!
//! The version byte and key id are authenticated too (they are prepended to
//! the caller's associated data), so no byte of an envelope can change
//! without `open` failing.
//!
//! The key file itself (format, permissions, atomic creation) is handled in
//! `crypto/keyfile.rs`.

mod keyfile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The only envelope version this binary writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// The shortest valid envelope: header and tag around an empty plaintext.
pub const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed value is truncated ({len} bytes; at least {MIN_SEALED_LEN} expected)")]
    Truncated { len: usize },
    #[error("sealed value has unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("sealed value uses master key {0:08x}, which this keyring does not hold; start with the master key the database was written with")]
    UnknownKey(u32),
    #[error("sealed value failed authentication (wrong master key, tampered data, or moved to another tenant or field)")]
    Authentication,
    #[error("cannot seal a value of {len} bytes")]
    TooLong { len: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("master key file {} does not exist; create it (32 random bytes or 64 hex characters, mode 0600) or allow the daemon to generate it", .path.display())]
    KeyFileMissing { path: PathBuf },
    #[error("master key file {}: {message}", .path.display())]
    KeyFileFormat { path: PathBuf, message: String },
    #[error("master key file {} has mode {mode:04o}, readable by group or others; run `chmod 600 {}`", .path.display(), .path.display())]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    // `error`, not `source`: said once in the message, not again by `{:#}`.
    #[error("master key file {}: {error}", .path.display())]
    KeyFileIo {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Associated data binding a sealed value to one tenant and one field, so a
/// ciphertext copied into another row (or another column) does not open.
/// Tenant ids never contain NUL (see `TenantId::parse`), so the encoding is
/// unambiguous.
pub fn aad(tenant_id: &str, field: &str) -> Vec<u8> {
    const PREFIX: &[u8] = b"pbx-tokend/v1\0";
    let mut out = Vec::with_capacity(PREFIX.len() + tenant_id.len() + 1 + field.len());
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(tenant_id.as_bytes());
    out.push(0);
    out.extend_from_slice(field.as_bytes());
    out
}

/// Master keys by id, and the id new values are sealed with. Old keys can be
/// kept (see [`Keyring::add_retired_key`]) so a rotation never strands rows.
pub struct Keyring {
    // The cipher wipes its key on drop (chacha20poly1305 implements
    // ZeroizeOnDrop), so no raw key bytes outlive the keyring.
    keys: BTreeMap<u32, XChaCha20Poly1305>,
    current: u32,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys.keys().map(|id| format!("{id:08x}")).collect();
        f.debug_struct("Keyring")
            .field("current", &format_args!("{:08x}", self.current))
            .field("key_ids", &ids)
            .field("keys", &format_args!("[redacted]"))
            .finish()
    }
}

/// A stable public id for a key: the same key gets the same id on every
/// start, so envelopes name the key they need. Domain-separated so the id
/// is not a plain hash of the key.
pub fn key_id(key: &[u8; KEY_LEN]) -> u32 {
    let mut h = Sha256::new();
    h.update(b"pbx-tokend/key-id/v1\0");
    h.update(key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl Keyring {
    /// Loads the master key from `path`, or creates it (0600) when
    /// `create_if_missing`. Returns the keyring and whether it was created.
    ///
    /// The file holds 32 raw bytes, or 64 hex characters with an optional
    /// trailing newline. A file readable by group or others is refused.
    pub fn load_or_create(
        path: &Path,
        create_if_missing: bool,
    ) -> Result<(Keyring, bool), CryptoError> {
        match keyfile::read_key_file(path) {
            Ok(key) => Ok((Keyring::from_key(&key), false)),
            Err(CryptoError::KeyFileMissing { .. }) if create_if_missing => {
                keyfile::create_key_file(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the raw key from a key file (same format and permission rules
    /// as [`Keyring::load_or_create`]), for building a rotation keyring.
    pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        keyfile::read_key_file(path)
    }

    /// A random key, for tests.
    pub fn ephemeral() -> Keyring {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        Keyring::from_key(&key)
    }

    /// A keyring whose current key is `key`.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Keyring {
        let id = key_id(key);
        let mut keys = BTreeMap::new();
        keys.insert(id, XChaCha20Poly1305::new(key.into()));
        Keyring { keys, current: id }
    }

    /// Keeps an older key for opening values sealed under it; new values are
    /// still sealed with the current key. Returns the old key's id.
    pub fn add_retired_key(&mut self, key: &[u8; KEY_LEN]) -> u32 {
        let id = key_id(key);
        self.keys
            .entry(id)
            .or_insert_with(|| XChaCha20Poly1305::new(key.into()));
        id
    }

    /// The id of the key new values are sealed with.
    pub fn current_key_id(&self) -> u32 {
        self.current
    }

    /// Seals `plaintext` under the current key, binding `aad`.
    ///
    /// Sealing fails only if the OS random generator fails or the plaintext
    /// is longer than 256 GiB; then this returns an empty vector, which
    /// `open` rejects as truncated. Callers that store the result should use
    /// [`Keyring::try_seal`] to see the error instead.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.try_seal(aad, plaintext).unwrap_or_default()
    }

    /// [`Keyring::seal`] with its (practically impossible) failures reported.
    pub fn try_seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or(CryptoError::UnknownKey(self.current))?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| CryptoError::Random(e.to_string()))?;

        let mut out = Vec::with_capacity(MIN_SEALED_LEN + plaintext.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        let full_aad = bound_aad(&out[..1 + KEY_ID_LEN], aad);
        out.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &full_aad,
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| CryptoError::TooLong {
                len: plaintext.len(),
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens an envelope sealed by [`Keyring::seal`] with the same `aad`,
    /// under whichever held key its id names.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(&version) = sealed.first() else {
            return Err(CryptoError::Truncated { len: 0 });
        };
        if version != ENVELOPE_VERSION {
            return Err(CryptoError::UnknownVersion(version));
        }
        if sealed.len() < MIN_SEALED_LEN {
            return Err(CryptoError::Truncated { len: sealed.len() });
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let mut id_bytes = [0u8; KEY_ID_LEN];
        id_bytes.copy_from_slice(&header[1..1 + KEY_ID_LEN]);
        let id = u32::from_be_bytes(id_bytes);
        let cipher = self.keys.get(&id).ok_or(CryptoError::UnknownKey(id))?;
        let nonce = XNonce::from_slice(&header[1 + KEY_ID_LEN..]);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let full_aad = bound_aad(&header[..1 + KEY_ID_LEN], aad);

        let mut buf = ciphertext.to_vec();
        match cipher.decrypt_in_place_detached(nonce, &full_aad, &mut buf, Tag::from_slice(tag)) {
            Ok(()) => Ok(buf),
            Err(_) => Err(CryptoError::Authentication),
        }
    }
}

/// The id of the key an envelope names, if it is a version-1 envelope.
/// Public information (it is in clear in the envelope); used to say which
/// key a database needs.
pub fn envelope_key_id(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < MIN_SEALED_LEN || sealed[0] != ENVELOPE_VERSION {
        return None;
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&sealed[1..1 + KEY_ID_LEN]);
    Some(u32::from_be_bytes(id))
}

/// Version and key id, then the caller's associated data.
fn bound_aad(version_and_id: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(version_and_id.len() + aad.len());
    v.extend_from_slice(version_and_id);
    v.extend_from_slice(aad);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = Keyring::ephemeral();
        let a = aad("acme", "access_token");
        let sealed = k.seal(&a, b"hello token");
        assert_eq!(sealed.len(), MIN_SEALED_LEN + 11);
        assert_eq!(sealed[0], ENVELOPE_VERSION);
        assert_eq!(&sealed[1..5], &k.current_key_id().to_be_bytes());
        assert_eq!(envelope_key_id(&sealed), Some(k.current_key_id()));
        assert_eq!(envelope_key_id(&sealed[..10]), None);
        assert_eq!(k.open(&a, &sealed).unwrap(), b"hello token");
        assert_eq!(k.open(&a, &k.seal(&a, b"")).unwrap(), b"");
        // Random nonces: sealing twice never gives the same bytes.
        assert_ne!(k.seal(&a, b"x"), k.seal(&a, b"x"));
    }

    #[test]
    fn wrong_key_fails() {
        let k1 = Keyring::ephemeral();
        let k2 = Keyring::ephemeral();
        let a = aad("acme", "trusted_secret");
        let sealed = k1.seal(&a, b"s3cret");
        assert!(matches!(
            k2.open(&a, &sealed),
            Err(CryptoError::UnknownKey(id)) if id == k1.current_key_id()
        ));
        // Same id forged onto another key's envelope: authentication fails.
        let mut forged = k2.seal(&a, b"s3cret");
        forged[1..5].copy_from_slice(&k1.current_key_id().to_be_bytes());
        assert!(matches!(
            k1.open(&a, &forged),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn wrong_aad_fails() {
        let k = Keyring::ephemeral();
        let sealed = k.seal(&aad("acme", "trusted_secret"), b"s3cret");
        for other in [aad("other", "trusted_secret"), aad("acme", "public_secret")] {
            assert!(matches!(
                k.open(&other, &sealed),
                Err(CryptoError::Authentication)
            ));
        }
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(aad("ab", "c"), aad("a", "bc"));
    }

    #[test]
    fn every_tampered_byte_fails() {
        let k = Keyring::ephemeral();
        let a = aad("acme", "access_token");
        let sealed = k.seal(&a, b"token value");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(k.open(&a, &t).is_err(), "byte {i} flipped still opened");
        }
        let mut t = sealed.clone();
        t[0] = 2;
        assert!(matches!(
            k.open(&a, &t),
            Err(CryptoError::UnknownVersion(2))
        ));
    }

    #[test]
    fn truncated_fails() {
        let k = Keyring::ephemeral();
        let a = aad("acme", "access_token");
        let sealed = k.seal(&a, b"token value");
        assert!(matches!(
            k.open(&a, &[]),
            Err(CryptoError::Truncated { len: 0 })
        ));
        assert!(matches!(
            k.open(&a, &sealed[..MIN_SEALED_LEN - 1]),
            Err(CryptoError::Truncated { .. })
        ));
        assert!(matches!(
            k.open(&a, &sealed[..sealed.len() - 1]),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn retired_keys_still_open() {
        let old = [7u8; KEY_LEN];
        let new = [9u8; KEY_LEN];
        let a = aad("acme", "access_token");
        let sealed_old = Keyring::from_key(&old).seal(&a, b"v");
        let mut ring = Keyring::from_key(&new);
        assert_eq!(ring.add_retired_key(&old), key_id(&old));
        assert_eq!(ring.current_key_id(), key_id(&new));
        assert_eq!(ring.open(&a, &sealed_old).unwrap(), b"v");
        assert_eq!(&ring.seal(&a, b"v")[1..5], &key_id(&new).to_be_bytes());
    }

    #[test]
    fn debug_redacts() {
        let k = Keyring::from_key(&[0xAB; KEY_LEN]);
        let s = format!("{k:?}");
        assert!(s.contains("[redacted]"), "{s}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
    }
}
