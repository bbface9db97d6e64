//! The storage layer's error type, shared by every backend. Callers ask
//! what kind of failure it is (`is_transient`, `is_credential_fault`,
//! `is_flow_fault`) instead of matching a backend's own errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tenant {0} already exists")]
    TenantExists(String),
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL answered with an error that is not about reachability
    /// (those are `Unavailable`): a constraint, a type, a bug. The message
    /// is the server's (severity, SQLSTATE, message), never a value.
    #[error("database error: {0}")]
    Postgres(String),
    #[error("the database schema is version {found}, newer than this binary understands ({supported}); run a newer pbx-tokend or restore a backup")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot open a sealed value ({what}): {source}")]
    Unseal {
        what: String,
        source: crate::crypto::CryptoError,
    },
    #[error("the configured master key (id {configured}) is not the key this database was sealed with (id {sealed_with}); start with the master key file the database was written with (master_key_file, $CREDENTIALS_DIRECTORY/master.key or <state_dir>/master.key). Nothing was changed")]
    WrongMasterKey {
        configured: String,
        sealed_with: String,
    },
    /// A tenant's sealed credentials do not open (another tenant's or
    /// field's ciphertext, damaged bytes). Nothing can be sent for it.
    #[error("the stored {kind} credentials of tenant {tenant} cannot be opened ({reason}); nothing is sent to the PBX for this tenant: set new credentials with UpdateTenant (trusted_app, together with pbx_base_url) or delete and re-create the tenant")]
    CredentialUnreadable {
        tenant: String,
        kind: &'static str,
        reason: String,
    },
    /// A clear column that decides where a secret goes (base URL, client
    /// id, redirect URI) is not the value sealed with the secret: the
    /// database was edited outside pbx-tokend.
    #[error("the {field} of tenant {tenant} ({stored:?}) is not the one its {kind} secret was sealed with ({sealed:?}): the database was changed outside pbx-tokend, so the secret is not sent anywhere; put the original value back, or set the tenant's pbx_base_url and trusted_app again with UpdateTenant (a public app: delete and re-create the tenant)")]
    CredentialTampered {
        tenant: String,
        kind: &'static str,
        field: &'static str,
        stored: String,
        sealed: String,
    },
    /// A sealed value of an authorization flow does not open (another
    /// row's ciphertext, damaged bytes, or the format from before flows
    /// were bound). Nothing is sent with it.
    #[error("the {what} held by the authorization flow of tenant {tenant} cannot be opened ({reason}); nothing is sent to the PBX with it: run BeginAuthorization to start the authorization again")]
    FlowUnreadable {
        tenant: String,
        what: &'static str,
        reason: String,
    },
    /// A clear column that decides where a flow's secret goes (the
    /// tenant's base URL, the new app's client id) is not the value sealed
    /// with it: the database was edited outside pbx-tokend.
    #[error("the {column} of tenant {tenant} ({stored:?}) is not the one the {what} of its authorization flow was sealed with ({sealed:?}): the database was changed outside pbx-tokend, so the {what} is not sent anywhere; put the original value back (pbx_base_url: UpdateTenant with the right pbx_base_url) and call CompleteAuthorization(tenant_id={tenant}) again, or run BeginAuthorization to start the authorization again")]
    FlowTampered {
        tenant: String,
        what: &'static str,
        column: &'static str,
        stored: String,
        sealed: String,
    },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("cannot prepare the database location: {0}")]
    Io(#[from] std::io::Error),
    /// Opening the database failed; says which file and what was tried.
    #[error("cannot {op} {}: {message}", .path.display())]
    Open {
        op: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("backup {0}")]
    Backup(String),
    /// The database cannot be reached or is not accepting writes right now
    /// (connection lost, failover in progress). Nothing was written; the
    /// same call may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The backend does not offer this operation.
    #[error("{0}")]
    Unsupported(String),
    /// A fenced token write found the database moved on (another replica
    /// holds the host's renewal duty now, or wrote a newer token): nothing
    /// was written, and the fetched token must be dropped, never served.
    #[error(
        "the token write for tenant {tenant} was refused: {reason}; the token fetched is dropped"
    )]
    Fenced { tenant: String, reason: String },
}

impl StoreError {
    /// A failure that may pass by itself (the database busy or
    /// unreachable): nothing was written, and the call may be tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }

    /// A tenant's stored credentials cannot be used (unreadable or bound to
    /// other values): that tenant's problem, not the store's.
    pub fn is_credential_fault(&self) -> bool {
        matches!(
            self,
            StoreError::CredentialUnreadable { .. } | StoreError::CredentialTampered { .. }
        )
    }

    /// An authorization flow's sealed values cannot be used (unreadable or
    /// bound to other values): that flow's problem, not the store's.
    pub fn is_flow_fault(&self) -> bool {
        matches!(
            self,
            StoreError::FlowUnreadable { .. } | StoreError::FlowTampered { .. }
        )
    }
}
