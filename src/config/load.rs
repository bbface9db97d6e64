//! Loading: built-in defaults, overlaid by the TOML file, overlaid by
//! `PBX_TOKEND_<SECTION>_<KEY>` environment variables, then validated. The
//! environment is passed in as pairs so tests need not touch the process's
//! own.

use std::path::{Path, PathBuf};

use super::{grpc, Config, ConfigError};

impl Config {
    /// Defaults, overlaid by `file` (if any), overlaid by the environment,
    /// then validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As `load`, with the environment passed in (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                        path: path.to_owned(),
                        error,
                    })?,
                )
            }
            None => None,
        };
        let origin = file
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<environment>"));
        Self::parse_with_env(text.as_deref(), &origin, env)
    }

    /// A config file's text alone (no environment), parsed and validated
    /// (the fuzz target, tests).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(Some(text), Path::new("<string>"), std::iter::empty())
    }

    /// `text` (the file's content, if any; `origin` names it in errors),
    /// overlaid by `env`, then validated.
    pub(super) fn parse_with_env(
        text: Option<&str>,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match text {
            Some(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        grpc::derive_stream_caps(&mut table);
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }
}

const ENV_PREFIX: &str = "PBX_TOKEND_";

/// Top-level keys that are not in a section, so `PBX_TOKEND_STATE_DIR` is
/// `state_dir` and not `[state] dir`.
const TOP_LEVEL_KEYS: [&str; 3] = [
    "state_dir",
    "master_key_file",
    "require_master_key_credential",
];

/// `PBX_TOKEND_*` variables that are not settings: the binaries' own flags
/// (`--config`, the CLI's endpoint and key) and the onboarding test hook.
const NOT_SETTINGS: [&str; 4] = [
    "PBX_TOKEND_CONFIG",
    "PBX_TOKEND_ENDPOINT",
    "PBX_TOKEND_API_KEY",
    "PBX_TOKEND_TEST_CRASH_AFTER_STEP",
];

/// `PBX_TOKEND_<SECTION>_<KEY>=value` overrides `[section] key`. The value is
/// parsed as a TOML value (number, bool) when it can be, else as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let sections: Vec<String> = [
        "grpc",
        "log",
        "pbx",
        "token",
        "limits",
        "refresh",
        "runtime",
        "maintenance",
        "shutdown",
        "onboarding",
        "callback",
        "metrics",
        "health",
        "backup",
        "store",
        "cluster",
        "events",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NOT_SETTINGS.contains(&var.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let value = parse_env_value(&value);
        if TOP_LEVEL_KEYS.contains(&rest.as_str()) {
            table.insert(rest, value);
            continue;
        }
        let Some(section) = sections.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "unknown setting; expected PBX_TOKEND_<SECTION>_<KEY> with a section among {} or one of PBX_TOKEND_STATE_DIR, PBX_TOKEND_MASTER_KEY_FILE, PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL",
                    sections.join(", ")
                ),
            });
        };
        let key = rest[section.len() + 1..].to_owned();
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] in the config file is not a table"),
                })
            }
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}
