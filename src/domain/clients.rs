//! API-client vocabulary: roles, tenant patterns, the authenticated
//! [`Caller`], key hashes and the listed [`ClientInfo`]. Shared vocabulary
//! rather than part of `access`, because both `access` (which keeps the
//! clients) and `store` (which persists them) speak it, and `store` must not
//! import the layer above it. `access` re-exports all of it.

use sha2::{Digest, Sha256};

use super::{TenantId, ValidationError};
use crate::clock::UnixMs;

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: tenant and client administration, every tenant's token.
    Admin,
    /// TokenService only, for tenants matching its patterns.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// A glob over tenant ids: `*` matches any run of characters (also none),
/// `?` exactly one; everything else matches itself. `acme-*` matches
/// `acme-1` and `acme-eu:prod`, not `acme`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPattern(String);

impl TenantPattern {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "tenant_patterns";
        if s.is_empty() {
            return Err(ValidationError::new(FIELD, "a pattern must not be empty"));
        }
        if s.len() > TenantId::MAX_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "pattern {s:?} is longer than {} characters",
                    TenantId::MAX_LEN
                ),
            ));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '*' | '?'))
        }) {
            return Err(ValidationError::new(
                FIELD,
                format!("pattern {s:?} contains {c:?}; use tenant id characters (letters, digits, . _ : -) and the wildcards * and ?"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// See [`super::glob_match`].
    pub fn matches(&self, tenant: &str) -> bool {
        super::glob_match(self.0.as_bytes(), tenant.as_bytes())
    }
}

/// An authenticated caller, attached to each request by `api::auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// An API client id, or `local:uid=N` for the admin socket.
    pub client_id: String,
    pub role: Role,
    pub patterns: Vec<TenantPattern>,
}

impl Caller {
    /// The ADMIN a peer of the local admin socket is (see `api::auth`).
    pub fn local_admin(uid: u32) -> Caller {
        Caller {
            client_id: format!("local:uid={uid}"),
            role: Role::Admin,
            patterns: Vec::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// A peer of the local admin socket (not an API client: nothing to
    /// revoke). API client ids are `cl_` + hex, so they never look like this.
    pub fn is_local_peer(&self) -> bool {
        self.client_id.starts_with("local:")
    }

    /// May this caller have `tenant`'s token? Decided on the name alone, so
    /// the answer says nothing about whether the tenant exists.
    pub fn may_read(&self, tenant: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Reader => self.patterns.iter().any(|p| p.matches(tenant)),
        }
    }
}

/// Why a caller authenticated earlier (an open stream) may no longer read
/// a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapsed {
    /// The client was revoked.
    Revoked,
    /// The client's tenant patterns no longer match the tenant.
    OutOfScope,
}

/// Every key starts with this, so a leaked key is recognisable (secret
/// scanners, log greps) and a key is never confused with a PBX token.
pub const KEY_PREFIX: &str = "ptk_";
/// SHA-256 of a whole API key, as stored and as looked up.
pub type KeyHash = [u8; 32];

/// The stored form of a key. A fast hash is right here (unlike passwords):
/// keys carry 256 random bits, so there is nothing to brute-force.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// An API client as listed (never with its key or hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub name: String,
    pub role: Role,
    pub tenant_patterns: Vec<String>,
    pub created_at: UnixMs,
    pub created_by: String,
    pub revoked_at: Option<UnixMs>,
}
