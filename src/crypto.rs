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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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
    #[error("master key file {}: {source}", .path.display())]
    KeyFileIo {
        path: PathBuf,
        source: std::io::Error,
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
        match read_key_file(path) {
            Ok(key) => Ok((Keyring::from_key(&key), false)),
            Err(CryptoError::KeyFileMissing { .. }) if create_if_missing => create_key_file(path),
            Err(e) => Err(e),
        }
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

/// Version and key id, then the caller's associated data.
fn bound_aad(version_and_id: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(version_and_id.len() + aad.len());
    v.extend_from_slice(version_and_id);
    v.extend_from_slice(aad);
    v
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::KeyFileIo {
        path: path.to_owned(),
        source,
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CryptoError::KeyFileMissing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    // Check the opened file itself, not the path again (no race with a swap).
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(CryptoError::KeyFileFormat {
            path: path.to_owned(),
            message: "is not a regular file".into(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    // Never read more than a well-formed file can hold.
    const MAX_FILE_LEN: u64 = 2 * KEY_LEN as u64 + 2;
    if meta.len() > MAX_FILE_LEN {
        return Err(CryptoError::KeyFileFormat {
            path: path.to_owned(),
            message: format!(
                "holds {} bytes; expected exactly {KEY_LEN} raw bytes or {} hex characters (optionally followed by a newline)",
                meta.len(),
                2 * KEY_LEN
            ),
        });
    }
    let mut content = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN + 2));
    Read::by_ref(&mut file)
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut content)
        .map_err(io_err(path))?;
    parse_key(&content).map_err(|message| CryptoError::KeyFileFormat {
        path: path.to_owned(),
        message,
    })
}

/// 32 raw bytes, or 64 hex characters with an optional `\n` / `\r\n`.
fn parse_key(content: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if content.len() == KEY_LEN {
        key.copy_from_slice(content);
        return Ok(key);
    }
    let text = content
        .strip_suffix(b"\r\n")
        .or_else(|| content.strip_suffix(b"\n"))
        .unwrap_or(content);
    if text.len() != 2 * KEY_LEN {
        return Err(format!(
            "holds {} bytes; expected exactly {KEY_LEN} raw bytes or {} hex characters (optionally followed by a newline)",
            content.len(),
            2 * KEY_LEN
        ));
    }
    hex::decode_to_slice(text, key.as_mut()).map_err(|_| {
        format!(
            "holds {} characters but they are not all hex digits; expected {KEY_LEN} raw bytes or {} hex characters",
            text.len(),
            2 * KEY_LEN
        )
    })?;
    Ok(key)
}

/// Generates a key and writes it as hex (easy to back up) to a temporary
/// file beside `path` (0600, fsynced), then links it into place. Linking
/// fails if another process created the key meanwhile; then theirs is used,
/// so two starters can never end up sealing with different keys.
fn create_key_file(path: &Path) -> Result<(Keyring, bool), CryptoError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(io_err(&parent))?;
    }

    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(key.as_mut())
        .map_err(|e| CryptoError::Random(e.to_string()))?;
    let mut text = Zeroizing::new(hex::encode(key.as_ref()));
    text.push('\n');

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "master.key".into());
    let tmp = parent.join(format!(
        ".{file_name}.tmp.{}.{:08x}",
        std::process::id(),
        OsRng.next_u32()
    ));
    let result = write_new_file(&tmp, text.as_bytes()).and_then(|()| {
        let linked = match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // File systems without hard links: rename is still atomic.
            Err(_) => std::fs::rename(&tmp, path).map(|()| true),
        };
        linked.map_err(io_err(path))
    });
    // Best effort: the temporary name is gone after a rename already.
    let _ = std::fs::remove_file(&tmp);
    if !result? {
        let existing = read_key_file(path)?;
        return Ok((Keyring::from_key(&existing), false));
    }
    if let Ok(dir) = File::open(&parent) {
        // Make the new directory entry durable too.
        let _ = dir.sync_all();
    }
    Ok((Keyring::from_key(&key), true))
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trip() {
        let k = Keyring::ephemeral();
        let a = aad("acme", "access_token");
        let sealed = k.seal(&a, b"hello token");
        assert_eq!(sealed.len(), MIN_SEALED_LEN + 11);
        assert_eq!(sealed[0], ENVELOPE_VERSION);
        assert_eq!(&sealed[1..5], &k.current_key_id().to_be_bytes());
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

    #[test]
    fn created_file_is_0600_and_reloads_with_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sub/master.key");
        assert!(matches!(
            Keyring::load_or_create(&path, false),
            Err(CryptoError::KeyFileMissing { .. })
        ));
        let (k1, created) = Keyring::load_or_create(&path, true).unwrap();
        assert!(created);
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        assert_eq!(std::fs::read(&path).unwrap().len(), 65);
        let (k2, created) = Keyring::load_or_create(&path, true).unwrap();
        assert!(!created);
        assert_eq!(k1.current_key_id(), k2.current_key_id());
        let a = aad("t", "f");
        assert_eq!(k2.open(&a, &k1.seal(&a, b"x")).unwrap(), b"x");
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    fn write_key(dir: &Path, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join("k");
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn accepted_formats() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [0x0Au8; KEY_LEN]; // raw bytes that happen to be newlines
        let id = key_id(&raw);
        let hex_key = hex::encode(raw);
        for content in [
            raw.to_vec(),
            hex_key.clone().into_bytes(),
            format!("{hex_key}\n").into_bytes(),
            format!("{}\r\n", hex_key.to_uppercase()).into_bytes(),
        ] {
            let p = write_key(dir.path(), &content, 0o600);
            let (k, created) = Keyring::load_or_create(&p, false).unwrap();
            assert!(!created);
            assert_eq!(k.current_key_id(), id);
            // Owner-only read (0400, as systemd credentials are) is fine too.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
            assert!(Keyring::load_or_create(&p, false).is_ok());
            std::fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn bad_length_or_format_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hex64 = "ab".repeat(32);
        for content in [
            vec![1u8; 31],
            vec![1u8; 33],
            vec![1u8; 64],
            Vec::new(),
            "ab".repeat(31).into_bytes(),
            format!("{hex64}\n\n").into_bytes(),
            format!("{}zz", "ab".repeat(31)).into_bytes(),
            vec![b'a'; 4096],
        ] {
            let p = write_key(dir.path(), &content, 0o600);
            let err = Keyring::load_or_create(&p, true).unwrap_err();
            assert!(matches!(err, CryptoError::KeyFileFormat { .. }), "{err}");
            std::fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn group_or_world_readable_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            let p = write_key(dir.path(), &[1u8; KEY_LEN], mode);
            let err = Keyring::load_or_create(&p, true).unwrap_err();
            assert!(
                matches!(err, CryptoError::KeyFilePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
            std::fs::remove_file(&p).unwrap();
        }
    }
}
