//! The store's side of the master key: a check value that proves at start-up
//! that the configured key is the one the database was sealed with (a wrong
//! key stops the daemon before it reads or writes anything else), a probe
//! for sealed data (so a missing key file is never silently replaced by a
//! new one), and re-sealing every sealed value under a new key in one
//! transaction (rotation).
//!
//! Does not: read key files or decide where keys live (daemon and crypto
//! do). Every sealed column is listed in [`reseal`]; a sealed column this
//! file does not know makes rotation fail, never skip it (see
//! [`foreign_envelopes`]).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::audit_events;
use super::sealed::{self, Field};
use super::{connection, credentials, flow_seal, SqliteStore, StoreError};
use super::{KeyCheck, NewAuditEvent};
use crate::crypto::{self, Keyring, MIN_SEALED_LEN};

use crate::store::seal::check::{open_check, seal_check, wrong_key, CheckVersion};

/// How many values a rotation re-sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationReport {
    pub resealed: u64,
    pub new_key_id: u32,
}

impl SqliteStore {
    /// Re-seals every sealed value under the keyring's current key, in one
    /// transaction with `audit` appended. The keyring must also hold the
    /// old key (`Keyring::add_retired_key`). Afterwards only the new key
    /// opens the database.
    pub async fn reseal_all(&self, audit: NewAuditEvent) -> Result<RotationReport, StoreError> {
        self.write(move |tx, keys| {
            let resealed = reseal(tx, keys)?;
            let foreign = foreign_envelopes(tx, keys.current_key_id())?;
            if !foreign.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{} still hold values sealed under another key after re-sealing; this binary does not know how to re-seal them. Nothing was changed",
                    foreign.join(", ")
                )));
            }
            audit_events::insert(tx, &audit)?;
            Ok(RotationReport {
                resealed,
                new_key_id: keys.current_key_id(),
            })
        })
        .await
    }
}

/// Whether the database at `path` holds any sealed value (or the check
/// value). A missing file holds none. Blocking; call before `SqliteStore::open`.
pub fn has_sealed_data(path: &Path) -> Result<bool, StoreError> {
    if !path.exists() {
        return Ok(false);
    }
    let conn = connection::open_reader(path)?;
    for table in ["master_key_check", "credentials", "tokens"] {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
            [table],
            |r| r.get(0),
        )?;
        if exists {
            let any: bool =
                conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                    r.get(0)
                })?;
            if any {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

pub(super) fn check_or_init(tx: &Connection, keys: &Keyring) -> Result<KeyCheck, StoreError> {
    let sealed: Option<Vec<u8>> = tx
        .query_row(
            "SELECT sealed FROM master_key_check WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let initialized = match sealed {
        Some(sealed) => match open_check(keys, &sealed)? {
            CheckVersion::V2 => {
                retire_legacy_flows(tx, keys)?;
                return Ok(KeyCheck::Verified);
            }
            CheckVersion::V1 => false,
        },
        None => {
            probe(tx, keys)?;
            true
        }
    };
    // Before schema 6 (or no check value yet): bind every credential to its
    // columns, then write the check value that says so, in one transaction.
    let upgraded = credentials::upgrade_legacy(tx, keys)?;
    retire_legacy_flows(tx, keys)?;
    write_check(tx, keys)?;
    if upgraded > 0 {
        tracing::info!(
            credentials = upgraded,
            "sealed credentials upgraded: each is now bound to its base URL, client id and redirect URI"
        );
    }
    Ok(if initialized {
        KeyCheck::Initialized
    } else {
        KeyCheck::Upgraded {
            credentials: upgraded,
        }
    })
}

/// Flows holding values sealed before flows were bound are ended, not
/// upgraded (see `flow_seal`). Runs at every start: after a restore of an
/// older backup too, and it finds nothing (a cheap query) otherwise.
fn retire_legacy_flows(tx: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    let retired = flow_seal::retire_legacy(tx, keys)?;
    if retired > 0 {
        tracing::warn!(
            flows = retired,
            "authorization flows sealed the old way were ended; run BeginAuthorization for those tenants"
        );
    }
    Ok(())
}

/// No check value yet: one sealed value of each kind must open.
fn probe(conn: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    let cred: Option<(String, String, Vec<u8>)> = conn
        .query_row(
            "SELECT tenant_id, kind, secret_sealed FROM credentials LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((tenant, kind, sealed_value)) = cred {
        if !credentials::opens_in_any_format(keys, &tenant, &kind, &sealed_value)? {
            return Err(wrong_key(keys, &sealed_value));
        }
    }
    let token: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT tenant_id, token_sealed FROM tokens LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((tenant, sealed_value)) = token {
        if sealed::open(keys, &tenant, Field::AccessToken, &sealed_value).is_err() {
            return Err(wrong_key(keys, &sealed_value));
        }
    }
    Ok(())
}

/// Whether `keys` opens the database on `conn` without changing it (a
/// backup before it is restored): its check value (of any version) opens,
/// or, without one, a sealed value of each kind does.
pub(super) fn verify_readonly(conn: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    let has_check: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'master_key_check')",
        [],
        |r| r.get(0),
    )?;
    let sealed: Option<Vec<u8>> = if has_check {
        conn.query_row(
            "SELECT sealed FROM master_key_check WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    match sealed {
        Some(sealed) => open_check(keys, &sealed).map(|_| ()),
        None => probe(conn, keys),
    }
}

fn write_check(tx: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    let sealed = seal_check(keys)?;
    tx.execute(
        "INSERT INTO master_key_check (id, sealed) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed",
        [sealed],
    )?;
    Ok(())
}

/// Every sealed column, opened with any held key and sealed again with the
/// current one. Plaintexts live in `Secret`s (wiped on drop).
fn reseal(tx: &Connection, keys: &Keyring) -> Result<u64, StoreError> {
    let mut count = credentials::reseal_all(tx, keys)?;
    let tokens: Vec<(String, Vec<u8>)> = tx
        .prepare("SELECT tenant_id, token_sealed FROM tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (tenant, old) in tokens {
        let plain = sealed::open(keys, &tenant, Field::AccessToken, &old)?;
        let new = sealed::seal(keys, &tenant, Field::AccessToken, plain.expose())?;
        tx.execute(
            "UPDATE tokens SET token_sealed = ?2 WHERE tenant_id = ?1",
            params![tenant, new],
        )?;
        count += 1;
    }
    count += flow_seal::reseal_all(tx, keys)?;
    write_check(tx, keys)?;
    Ok(count + 1)
}

/// `table.column` names of BLOB columns that still hold an envelope naming
/// a key other than `current`: a sealed column `reseal` does not know
/// (e.g. one added by a later migration without updating this file).
fn foreign_envelopes(tx: &Connection, current: u32) -> Result<Vec<String>, StoreError> {
    let tables: Vec<String> = tx
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::new();
    for table in tables {
        let columns: Vec<(String, String)> = tx
            .prepare(&format!("PRAGMA table_info(\"{table}\")"))?
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (column, decl) in columns {
            if !decl.eq_ignore_ascii_case("BLOB") {
                continue;
            }
            let n: i64 = tx.query_row(
                &format!(
                    "SELECT count(*) FROM \"{table}\" WHERE typeof(\"{column}\") = 'blob' \
                     AND length(\"{column}\") >= ?1 AND substr(\"{column}\", 1, 1) = ?2 \
                     AND substr(\"{column}\", 2, 4) != ?3"
                ),
                params![
                    MIN_SEALED_LEN as i64,
                    [crypto::ENVELOPE_VERSION].as_slice(),
                    current.to_be_bytes().as_slice()
                ],
                |r| r.get(0),
            )?;
            if n > 0 {
                found.push(format!("{table}.{column}"));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testutil::*;
    use super::*;
    use crate::domain::TenantState;

    fn event() -> NewAuditEvent {
        NewAuditEvent {
            at: T0,
            client_id: "cli".into(),
            action: "master_key.rotate".into(),
            tenant_id: None,
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn check_value_detects_a_wrong_key() {
        let t = open_temp();
        assert!(!has_sealed_data(&t.path).unwrap());
        assert_eq!(
            t.store.check_master_key().await.unwrap(),
            KeyCheck::Initialized
        );
        assert_eq!(
            t.store.check_master_key().await.unwrap(),
            KeyCheck::Verified
        );
        assert!(has_sealed_data(&t.path).unwrap());
        t.store.close().await.unwrap();
        let other = SqliteStore::open(&t.path, Arc::new(Keyring::ephemeral())).unwrap();
        let err = other.check_master_key().await.unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey { .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&format!("{:08x}", t.keys.current_key_id())));
    }

    #[tokio::test]
    async fn rotation_reseals_everything_under_the_new_key() {
        let old = [1u8; 32];
        let new = [2u8; 32];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = SqliteStore::open(&path, Arc::new(Keyring::from_key(&old))).unwrap();
        for id in ["a", "b"] {
            s.insert_tenant(new_tenant(id, TenantState::Active))
                .await
                .unwrap();
        }
        s.check_master_key().await.unwrap();
        s.close().await.unwrap();

        let mut ring = Keyring::from_key(&new);
        ring.add_retired_key(&old);
        let s = SqliteStore::open(&path, Arc::new(ring)).unwrap();
        let report = s.reseal_all(event()).await.unwrap();
        // 2 trusted secrets + 2 tokens + the check value.
        assert_eq!(report.resealed, 5);
        s.close().await.unwrap();

        let only_new = SqliteStore::open(&path, Arc::new(Keyring::from_key(&new))).unwrap();
        assert_eq!(
            only_new.check_master_key().await.unwrap(),
            KeyCheck::Verified
        );
        let creds = only_new.trusted_credentials(&tid("a")).await.unwrap();
        assert_eq!(creds.unwrap().client_secret.expose(), "secret-a");
        assert_eq!(only_new.load_cache().await.unwrap().len(), 2);
        only_new.close().await.unwrap();
        let only_old = SqliteStore::open(&path, Arc::new(Keyring::from_key(&old))).unwrap();
        assert!(only_old.check_master_key().await.is_err());
    }

    #[tokio::test]
    async fn unknown_sealed_column_aborts_rotation() {
        let old = [3u8; 32];
        let new = [4u8; 32];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = SqliteStore::open(&path, Arc::new(Keyring::from_key(&old))).unwrap();
        s.insert_tenant(new_tenant("a", TenantState::Active))
            .await
            .unwrap();
        s.close().await.unwrap();
        // A sealed column rotation does not know about.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch("CREATE TABLE later (v BLOB)").unwrap();
        let sealed = Keyring::from_key(&old).seal(b"x", b"y");
        raw.execute("INSERT INTO later VALUES (?1)", [sealed])
            .unwrap();
        drop(raw);
        let mut ring = Keyring::from_key(&new);
        ring.add_retired_key(&old);
        let s = SqliteStore::open(&path, Arc::new(ring)).unwrap();
        let err = s.reseal_all(event()).await.unwrap_err().to_string();
        assert!(err.contains("later.v"), "{err}");
        // All or nothing: the old key still opens everything.
        s.close().await.unwrap();
        let s = SqliteStore::open(&path, Arc::new(Keyring::from_key(&old))).unwrap();
        assert!(s.trusted_credentials(&tid("a")).await.unwrap().is_some());
    }
}
