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

/// The API key to send, in order: --api-key / PBX_TOKEND_API_KEY,
/// --admin-key-file, ./pbx-tokend-data/admin.key, $STATE_DIRECTORY/admin.key.
/// `None` when there is none: the call goes out without a key.
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

/// Where the daemon's bootstrap admin key is looked for by default. Under
/// systemd `STATE_DIRECTORY` may list several directories; the first is ours.
pub fn default_key_files(state_directory: Option<&str>) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("./pbx-tokend-data/admin.key")];
    if let Some(dir) = state_directory
        .and_then(|s| s.split(':').next())
        .filter(|d| !d.is_empty())
    {
        v.push(Path::new(dir).join("admin.key"));
    }
    v
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
        assert_eq!(
            default_key_files(None),
            vec![PathBuf::from("./pbx-tokend-data/admin.key")]
        );
        assert_eq!(
            default_key_files(Some("/var/lib/pbx-tokend:/var/lib/other")),
            vec![
                PathBuf::from("./pbx-tokend-data/admin.key"),
                PathBuf::from("/var/lib/pbx-tokend/admin.key")
            ]
        );
        assert_eq!(default_key_files(Some("")).len(), 1);
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
