//! Reading a whole SQLite state for `migrate-store` (`store/copy.rs`):
//! every row of every copied table, values as they are at rest. The file
//! is opened with `query_only` (no statement may write) and nothing is
//! migrated: a state of another schema version is refused with what to do.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::migrate;
use crate::crypto::Keyring;
use crate::store::copy::{Kind, TableRows, Value, TABLES};
use crate::store::seal::check::{open_check, CheckVersion};
use crate::store::StoreError;

/// Every copied table of the database at `path`, checked against `keys`.
pub(crate) fn export(path: &Path, keys: &Keyring) -> Result<Vec<TableRows>, StoreError> {
    if !path.exists() {
        return Err(StoreError::Unsupported(format!(
            "there is no SQLite database at {}; nothing to migrate (check state_dir)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "query_only", true)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = migrate::latest_version();
    if version != latest {
        return Err(StoreError::Unsupported(format!(
            "the SQLite state at {} has schema version {version}, this pbx-tokend writes {latest}: start this version of pbx-tokend once on it (it upgrades the schema), stop it, then run migrate-store",
            path.display()
        )));
    }
    let check: Option<Vec<u8>> = conn
        .query_row(
            "SELECT sealed FROM master_key_check WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    if let Some(sealed) = check {
        if open_check(keys, &sealed)? != CheckVersion::V2 {
            return Err(StoreError::Unsupported(format!(
                "the SQLite state at {} still holds credentials sealed before schema 6: start pbx-tokend once on it, stop it, then run migrate-store",
                path.display()
            )));
        }
    }
    TABLES
        .iter()
        .map(|spec| {
            let cols: Vec<&str> = spec.columns.iter().map(|(c, _)| *c).collect();
            let sql = format!("SELECT {} FROM {}", cols.join(", "), spec.name);
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(cols.len());
                for (i, (col, kind)) in spec.columns.iter().enumerate() {
                    row.push(value(r.get_ref(i)?, *kind).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "{}.{col} holds a value of the wrong type",
                            spec.name
                        ))
                    })?);
                }
                out.push(row);
            }
            Ok(TableRows { spec, rows: out })
        })
        .collect()
}

fn value(v: ValueRef<'_>, kind: Kind) -> Option<Value> {
    Some(match (v, kind) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(n), Kind::Int) => Value::Int(n),
        (ValueRef::Text(t), Kind::Text) => Value::Text(std::str::from_utf8(t).ok()?.to_owned()),
        (ValueRef::Blob(b), Kind::Blob) => Value::Blob(b.to_vec()),
        _ => return None,
    })
}
