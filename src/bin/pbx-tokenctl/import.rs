//! `pbx-tokenctl tenant import FILE`: many CreateTenant calls from a CSV or
//! JSON file, a few at a time, with a progress bar on a terminal. A row
//! that fails (bad input, duplicate, PBX refusal) is reported once, in the
//! summary, with its line in the file (JSON: its position in the array),
//! and the import goes on; the summary says what happened to every row.
//!
//! The file carries client secrets: they are read into memory, sent to the
//! daemon and wiped; never printed.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;
use zeroize::Zeroize;

use pbx_tokend::proto;

use crate::cli::{ImportFormat, TenantImportArgs};
use crate::codes::code_name;
use crate::commands::{emit, emit_json};
use crate::display::{render_table, truncate};
use crate::{exit_code_for, CliError, Ctx};

/// One row of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    tenant_id: String,
    #[serde(alias = "pbx_base_url")]
    base_url: String,
    #[serde(default)]
    display_name: String,
    trusted_client_id: String,
    trusted_client_secret: String,
}

impl Drop for Row {
    fn drop(&mut self) {
        self.trusted_client_secret.zeroize();
    }
}

/// A row that did not become a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Where it is in the file: CSV the 1-based file line (the header is
    /// line 1), JSON the 1-based array position.
    pub row: usize,
    pub tenant_id: String,
    pub code: Code,
    pub message: String,
}

enum Outcome {
    Imported,
    Skipped,
    Failed(Failure),
}

fn read_input(path: &Path) -> Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(text)
}

/// A row's place in the file and the row, or the reason it is not one.
type Parsed = (usize, Result<Row, String>);

/// What a row's number counts in each format.
fn row_label(format: ImportFormat) -> &'static str {
    match format {
        ImportFormat::Csv => "line",
        ImportFormat::Json => "item",
    }
}

/// Rows, each parsed or with the reason it could not be.
fn parse(text: &str, format: ImportFormat) -> Result<Vec<Parsed>> {
    match format {
        ImportFormat::Json => {
            let values: Vec<Value> = serde_json::from_str(text).map_err(|e| {
                CliError::Usage(format!("the file is not a JSON array of objects: {e}"))
            })?;
            Ok(values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        i + 1,
                        serde_json::from_value::<Row>(v).map_err(|e| e.to_string()),
                    )
                })
                .collect())
        }
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| CliError::Usage(format!("cannot read the CSV header line: {e}")))?
                .clone();
            let mut rows = Vec::new();
            let mut last_line = 1;
            for record in reader.records() {
                let parsed = match record {
                    Ok(r) => {
                        let line = r.position().map_or(last_line + 1, |p| p.line() as usize);
                        // The message never quotes the record: it holds a secret.
                        (
                            line,
                            r.deserialize::<Row>(Some(&headers))
                                .map_err(|e| match e.kind() {
                                    csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
                                    _ => "malformed CSV record".to_owned(),
                                }),
                        )
                    }
                    Err(e) => {
                        let line = e.position().map_or(last_line + 1, |p| p.line() as usize);
                        let reason = match e.kind() {
                            csv::ErrorKind::UnequalLengths {
                                expected_len, len, ..
                            } => format!(
                                "has {len} fields, the header has {expected_len} ({})",
                                headers.iter().collect::<Vec<_>>().join(",")
                            ),
                            _ => "malformed CSV record".to_owned(),
                        };
                        (line, Err(reason))
                    }
                };
                last_line = parsed.0;
                rows.push(parsed);
            }
            Ok(rows)
        }
    }
}

fn format_of(a: &TenantImportArgs) -> ImportFormat {
    a.format.unwrap_or_else(|| {
        let json = a
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if json {
            ImportFormat::Json
        } else {
            ImportFormat::Csv
        }
    })
}

async fn create(ctx: &Ctx, row: Row, skip_existing: bool) -> Result<(), (Code, String)> {
    let req = proto::CreateTenantRequest {
        tenant_id: row.tenant_id.clone(),
        display_name: row.display_name.clone(),
        pbx_base_url: row.base_url.clone(),
        trusted_app: Some(proto::AppCredentials {
            client_id: row.trusted_client_id.clone(),
            client_secret: row.trusted_client_secret.clone(),
        }),
        ..Default::default()
    };
    drop(row);
    match ctx.unary(ctx.admin().create_tenant(ctx.request(req))).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let (code, message) = match e.downcast_ref::<tonic::Status>() {
                Some(s) => (s.code(), s.message().to_owned()),
                None => (Code::Unknown, format!("{e:#}")),
            };
            if skip_existing && code == Code::AlreadyExists {
                return Err((Code::Ok, message));
            }
            Err((code, message))
        }
    }
}

pub async fn run(ctx: &Ctx, a: TenantImportArgs) -> Result<()> {
    let mut text = read_input(&a.file)?;
    let format = format_of(&a);
    let rows = parse(&text, format);
    text.zeroize();
    let rows = rows?;
    let total = rows.len();
    let bar = if !ctx.json && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} tenants  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let skip_existing = a.skip_existing;
    let outcomes: Vec<Outcome> = futures::stream::iter(rows)
        .map(|(i, row)| {
            let bar = bar.clone();
            async move {
                let outcome = match row {
                    Err(reason) => Outcome::Failed(Failure {
                        row: i,
                        tenant_id: String::new(),
                        code: Code::InvalidArgument,
                        message: reason,
                    }),
                    Ok(row) => {
                        let tenant_id = row.tenant_id.clone();
                        match create(ctx, row, skip_existing).await {
                            Ok(()) => Outcome::Imported,
                            Err((Code::Ok, _)) => Outcome::Skipped,
                            Err((code, message)) => Outcome::Failed(Failure {
                                row: i,
                                tenant_id,
                                code,
                                message,
                            }),
                        }
                    }
                };
                bar.inc(1);
                outcome
            }
        })
        .buffered(a.concurrency.max(1) as usize)
        .collect()
        .await;
    bar.finish_and_clear();
    summarize(ctx, total, outcomes, row_label(format))
}

/// The one report of every failure (stdout), then a one-line error.
fn summarize(ctx: &Ctx, total: usize, outcomes: Vec<Outcome>, label: &str) -> Result<()> {
    let imported = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Imported))
        .count();
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Skipped))
        .count();
    let failed: Vec<Failure> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Failed(f) => Some(f),
            _ => None,
        })
        .collect();
    if ctx.json {
        let list: Vec<Value> = failed
            .iter()
            .map(|f| {
                json!({
                    "row": f.row,
                    "tenant_id": f.tenant_id,
                    "code": code_name(f.code),
                    "message": f.message,
                })
            })
            .collect();
        emit_json(&json!({
            "total": total,
            "imported": imported,
            "skipped_existing": skipped,
            "failed": list,
        }))?;
    } else {
        let mut text = format!(
            "Imported {imported} of {total} tenants; {skipped} already existed (skipped), {} failed.\n",
            failed.len()
        );
        if !failed.is_empty() {
            let rows: Vec<Vec<String>> = failed
                .iter()
                .map(|f| {
                    vec![
                        f.row.to_string(),
                        if f.tenant_id.is_empty() {
                            "-".into()
                        } else {
                            f.tenant_id.clone()
                        },
                        code_name(f.code).to_owned(),
                        truncate(&f.message, 80),
                    ]
                })
                .collect();
            text.push('\n');
            let label = label.to_uppercase();
            text.push_str(&render_table(&[&label, "TENANT", "CODE", "ERROR"], &rows));
        }
        emit(&text)?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(CliError::Partial(
        exit_code(&failed),
        format!("{} of {total} rows failed (listed above)", failed.len()),
    )
    .into())
}

/// The class's exit code when every failure has the same class, else 1.
pub fn exit_code(failed: &[Failure]) -> u8 {
    match failed.first() {
        Some(first) if failed.iter().all(|f| f.code == first.code) => exit_code_for(first.code),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_parse_and_bad_rows_say_why_without_the_secret() {
        let text = "tenant_id,base_url,trusted_client_id,trusted_client_secret\n\
                    acme, https://pbx.example.com ,app-1,s3cret-1\n\
                    beta,https://pbx.example.com,app-2\n";
        let rows = parse(text, ImportFormat::Csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[1].0), (2, 3), "numbered by file line");
        let first = rows[0].1.as_ref().map_err(|e| e.clone()).unwrap();
        assert_eq!(first.base_url, "https://pbx.example.com");
        let err = rows[1].1.as_ref().err().unwrap();
        assert!(!err.contains("app-2"), "{err}");
        assert!(err.contains("has 3 fields, the header has 4"), "{err}");
    }

    #[test]
    fn json_rows_accept_pbx_base_url() {
        let text = r#"[{"tenant_id":"a","pbx_base_url":"https://x","trusted_client_id":"i","trusted_client_secret":"s","display_name":"A"},
                       {"tenant_id":"b"}]"#;
        let rows = parse(text, ImportFormat::Json).unwrap();
        assert!(rows[0].1.is_ok());
        assert!(rows[1].1.is_err());
        assert_eq!(rows[1].0, 2);
        assert!(parse("{}", ImportFormat::Json).is_err());
    }

    #[test]
    fn exit_code_is_the_common_class() {
        let f = |code| Failure {
            row: 1,
            tenant_id: "t".into(),
            code,
            message: String::new(),
        };
        assert_eq!(
            exit_code(&[f(Code::AlreadyExists), f(Code::AlreadyExists)]),
            4
        );
        assert_eq!(
            exit_code(&[f(Code::AlreadyExists), f(Code::InvalidArgument)]),
            1
        );
    }
}
