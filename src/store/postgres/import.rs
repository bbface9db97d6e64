//! Writing a whole SQLite state into an empty database for
//! `migrate-store` (`store/copy.rs`): every table in ONE transaction, in
//! multi-row INSERTs, audit ids kept (and the identity moved past them).

use tokio_postgres::types::ToSql;

use super::{query_one, PgStore};
use crate::store::copy::{TableRows, Value, TABLES};
use crate::store::StoreError;

/// Rows per INSERT (parameters stay far below PostgreSQL's 65,535).
const CHUNK: usize = 500;

type Param = Box<dyn ToSql + Sync + Send>;

fn param(v: &Value) -> Param {
    match v {
        Value::Null => Box::new(Option::<i64>::None),
        Value::Int(n) => Box::new(*n),
        Value::Text(t) => Box::new(t.clone()),
        Value::Blob(b) => Box::new(b.clone()),
    }
}

/// A NULL typed for its column (an untyped NULL parameter would be sent
/// as BIGINT).
fn null_param(kind: crate::store::copy::Kind) -> Param {
    use crate::store::copy::Kind;
    match kind {
        Kind::Int => Box::new(Option::<i64>::None),
        Kind::Text => Box::new(Option::<String>::None),
        Kind::Blob => Box::new(Option::<Vec<u8>>::None),
    }
}

impl PgStore {
    /// The copied tables that hold any row.
    pub(crate) async fn tables_with_rows(&self) -> Result<Vec<String>, StoreError> {
        let mut busy = Vec::new();
        for spec in TABLES {
            if self.count_rows(spec.name).await? > 0 {
                busy.push(spec.name.to_owned());
            }
        }
        Ok(busy)
    }

    /// Rows in one of the copied tables.
    pub(crate) async fn count_rows(&self, table: &'static str) -> Result<u64, StoreError> {
        if !TABLES.iter().any(|t| t.name == table) {
            return Err(StoreError::Corrupt(format!(
                "{table} is not a copied table"
            )));
        }
        self.read(move |tx, _| {
            Box::pin(async move {
                let n: i64 = query_one(tx, &format!("SELECT count(*) FROM {table}"), &[])
                    .await?
                    .try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
        .await
    }

    /// Inserts every table, all or nothing.
    pub(crate) async fn import(&self, tables: Vec<TableRows>) -> Result<(), StoreError> {
        self.bulk(move |tx, _| {
            Box::pin(async move {
                for t in &tables {
                    let cols: Vec<&str> = t.spec.columns.iter().map(|(c, _)| *c).collect();
                    let overriding = if t.spec.name == "audit_events" {
                        " OVERRIDING SYSTEM VALUE"
                    } else {
                        ""
                    };
                    for chunk in t.rows.chunks(CHUNK) {
                        let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * cols.len());
                        let mut tuples = Vec::with_capacity(chunk.len());
                        for row in chunk {
                            let mut marks = Vec::with_capacity(cols.len());
                            for (v, (_, kind)) in row.iter().zip(t.spec.columns) {
                                params.push(match v {
                                    Value::Null => null_param(*kind),
                                    v => param(v),
                                });
                                marks.push(format!("${}", params.len()));
                            }
                            tuples.push(format!("({})", marks.join(", ")));
                        }
                        let sql = format!(
                            "INSERT INTO {} ({}){overriding} VALUES {}",
                            t.spec.name,
                            cols.join(", "),
                            tuples.join(", ")
                        );
                        let refs: Vec<&(dyn ToSql + Sync)> = params
                            .iter()
                            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                            .collect();
                        tx.execute(sql.as_str(), &refs).await?;
                    }
                }
                // New audit events continue after the copied ones.
                tx.batch_execute(
                    "SELECT setval(pg_get_serial_sequence('audit_events', 'id'), \
                     coalesce((SELECT max(id) FROM audit_events), 0) + 1, false)",
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
