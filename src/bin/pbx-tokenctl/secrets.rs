//! Reading secrets (app secrets, API keys, rejected tokens) from files,
//! standard input or the environment. Never from argv: argv shows in `ps`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use zeroize::Zeroizing;

use crate::cli::{GlobalArgs, SecretSource};
use crate::CliError;

/// Removes trailing line breaks (`\n`, `\r\n`), nothing else.
pub fn trim_trailing_newlines(s: &str) -> &str {
    s.trim_end_matches(['\n', '\r'])
}

/// Reads one secret from its source; `what` names it in messages.
pub fn read_secret(source: &SecretSource, what: &str) -> Result<Zeroizing<String>> {
    let raw = match source {
        SecretSource::File(path) => read_file(path, what)?,
        SecretSource::Stdin => read_stdin(what)?,
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(_) => {
                return Err(CliError::Usage(format!(
                    "environment variable {var} (for the {what}) is not set or not UTF-8"
                ))
                .into())
            }
        },
    };
    let value = Zeroizing::new(trim_trailing_newlines(&raw).to_string());
    if value.is_empty() {
        return Err(CliError::Usage(format!("the {what} is empty")).into());
    }
    Ok(value)
}

fn read_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot read the {what} from {}: {e}",
                path.display()
            ))
            .into()
        })
}

/// All of stdin when it is piped; one line, after a prompt, on a terminal.
fn read_stdin(what: &str) -> Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let mut buf = Zeroizing::new(String::new());
    if stdin.is_terminal() {
        eprint!("Enter the {what} (it will be echoed), then press Enter: ");
        std::io::stderr().flush()?;
        stdin.lock().read_line(&mut buf)?;
    } else {
        stdin.lock().read_to_string(&mut buf).map_err(|e| {
            CliError::Usage(format!("cannot read the {what} from standard input: {e}"))
        })?;
    }
    Ok(buf)
}

/// The state directory the packaged unit uses (`StateDirectory=pbx-tokend`).
/// Under `DynamicUser=` it is a symlink into /var/lib/private/, which only
/// root can pass: an operator runs `sudo pbx-tokenctl ...` there.
pub const PACKAGED_KEY_FILE: &str = "/var/lib/pbx-tokend/admin.key";

/// The API key to send, in order: --api-key / PBX_TOKEND_API_KEY,
/// --admin-key-file, then the first readable one of [`default_key_files`].
/// `None` when there is none: the call goes out without a key (the admin
/// socket needs none for root and the daemon's user).
pub fn resolve_api_key(global: &GlobalArgs) -> Result<Option<Zeroizing<String>>> {
    if let Some(key) = &global.api_key {
        let key = key.trim();
        if key.is_empty() {
            return Err(CliError::Usage("--api-key / PBX_TOKEND_API_KEY is empty".into()).into());
        }
        return Ok(Some(Zeroizing::new(key.to_string())));
    }
    if let Some(path) = &global.admin_key_file {
        return read_key_file(path).map(Some);
    }
    let state_dir = std::env::var("STATE_DIRECTORY").ok();
    for path in default_key_files(state_dir.as_deref()) {
        if path.is_file() {
            return read_key_file(&path).map(Some);
        }
    }
    Ok(None)
}

/// Where the daemon's bootstrap admin key is looked for by default: the
/// state directory of a daemon started in this directory with no config,
/// the one systemd names (`STATE_DIRECTORY` may list several; the first is
/// ours), and the packaged unit's. Duplicates are dropped.
pub fn default_key_files(state_directory: Option<&str>) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("./pbx-tokend-data/admin.key")];
    if let Some(dir) = state_directory
        .and_then(|s| s.split(':').next())
        .filter(|d| !d.is_empty())
    {
        v.push(Path::new(dir).join("admin.key"));
    }
    let packaged = PathBuf::from(PACKAGED_KEY_FILE);
    if !v.contains(&packaged) {
        v.push(packaged);
    }
    v
}

/// The answer to UNAUTHENTICATED when no key was sent: where the CLI looked,
/// why each place gave nothing, and how to give it a key.
pub fn missing_key_message(state_directory: Option<&str>) -> String {
    let places: Vec<String> = default_key_files(state_directory)
        .iter()
        .map(|p| format!("{} ({})", p.display(), why_not_used(p)))
        .collect();
    let mut msg = format!(
        "no API key was sent and the daemon needs one; looked for the bootstrap admin key in {}",
        places.join(", ")
    );
    if state_directory.is_none() {
        msg.push_str(" ($STATE_DIRECTORY is not set)");
    }
    msg.push_str(
        ". Pass --admin-key-file FILE (the daemon writes <state_dir>/admin.key on first start) \
         or set PBX_TOKEND_API_KEY (an admin creates keys with `pbx-tokenctl client create`)",
    );
    msg
}

fn why_not_used(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => "not readable",
        Ok(_) => "not a file",
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "not readable by this user; the packaged daemon's key needs root"
        }
        Err(_) => "not there",
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    let raw = read_file(path, "API key")?;
    let key = Zeroizing::new(raw.trim().to_string());
    if key.is_empty() {
        return Err(CliError::Usage(format!("API key file {} is empty", path.display())).into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_line_breaks() {
        assert_eq!(trim_trailing_newlines("s3cret\n"), "s3cret");
        assert_eq!(trim_trailing_newlines("s3cret\r\n\n"), "s3cret");
        assert_eq!(trim_trailing_newlines(" s3 cret "), " s3 cret ");
    }

    #[test]
    fn key_file_locations() {
        let packaged = PathBuf::from(PACKAGED_KEY_FILE);
        assert_eq!(
            default_key_files(None),
            vec![
                PathBuf::from("./pbx-tokend-data/admin.key"),
                packaged.clone()
            ]
        );
        // Under the packaged unit STATE_DIRECTORY is the packaged directory.
        assert_eq!(
            default_key_files(Some("/var/lib/pbx-tokend:/var/lib/other")),
            vec![
                PathBuf::from("./pbx-tokend-data/admin.key"),
                packaged.clone()
            ]
        );
        assert_eq!(
            default_key_files(Some("/srv/tokend")),
            vec![
                PathBuf::from("./pbx-tokend-data/admin.key"),
                PathBuf::from("/srv/tokend/admin.key"),
                packaged
            ]
        );
        assert_eq!(default_key_files(Some("")).len(), 2);
    }

    #[test]
    fn missing_key_message_names_the_ways_out_and_the_places() {
        let msg = missing_key_message(None);
        assert!(msg.contains("--admin-key-file"), "{msg}");
        assert!(msg.contains("PBX_TOKEND_API_KEY"), "{msg}");
        assert!(msg.contains("./pbx-tokend-data/admin.key"), "{msg}");
        assert!(msg.contains(PACKAGED_KEY_FILE), "{msg}");
        assert!(msg.contains("$STATE_DIRECTORY is not set"), "{msg}");
        let msg = missing_key_message(Some("/srv/tokend"));
        assert!(msg.contains("/srv/tokend/admin.key (not there)"), "{msg}");
    }

    #[test]
    fn reads_secret_from_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        std::fs::write(&path, "abc\n")?;
        let s = read_secret(&SecretSource::File(path), "secret")?;
        assert_eq!(s.as_str(), "abc");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n")?;
        assert!(read_secret(&SecretSource::File(empty), "secret").is_err());
        assert!(read_secret(&SecretSource::File(dir.path().join("missing")), "secret").is_err());
        Ok(())
    }
}
