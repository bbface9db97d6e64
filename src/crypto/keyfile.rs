//! The master key file: reading it (32 raw bytes or 64 hex characters,
//! owner-only permissions) and creating it once, atomically, with mode
//! 0600 in a 0700 directory.
//!
//! Does not: seal anything or keep keys in memory (see `crypto`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use super::{CryptoError, Keyring, KEY_LEN};
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |error| CryptoError::KeyFileIo {
        path: path.to_owned(),
        error,
    }
}

pub(super) fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
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
pub(super) fn create_key_file(path: &Path) -> Result<(Keyring, bool), CryptoError> {
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
    use std::os::unix::fs::PermissionsExt;

    use super::super::{aad, key_id};
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_unreadable_key_file_is_named_once_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file where the key's directory should be: reading fails.
        std::fs::write(dir.path().join("not-a-dir"), b"x").unwrap();
        let path = dir.path().join("not-a-dir/master.key");
        let err = Keyring::load_or_create(&path, false).unwrap_err();
        assert!(matches!(err, CryptoError::KeyFileIo { .. }), "{err:?}");
        // The cause is in the message, not also in the source chain, so
        // `{:#}` (anyhow in the binaries) says it once.
        assert!(std::error::Error::source(&err).is_none());
        let shown = format!("{:#}", anyhow::Error::new(err));
        assert!(shown.contains("master key file"), "{shown}");
        assert_eq!(shown.matches("Not a directory").count(), 1, "{shown}");
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
