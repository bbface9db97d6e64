//! Who may call what. The vocabulary of API access: roles, tenant patterns,
//! API keys and the authenticated [`Caller`]; `registry.rs` keeps the API
//! clients (create, list, revoke, the bootstrap admin key) and the in-memory
//! table that authenticates a presented key without touching SQLite.
//!
//! Rules: an ADMIN may call everything; a READER may call TokenService for
//! tenants matching one of its glob patterns, nothing else. Only the SHA-256
//! of a key is ever stored; the key itself exists once, in the answer to
//! CreateClient (or in the bootstrap `admin.key` file).
//!
//! Does not: know gRPC metadata or statuses (api/auth.rs does) or SQL.

pub mod registry;

use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clock::UnixMs;
use crate::domain::{TenantId, ValidationError};
use crate::secret::Secret;

pub use registry::{ClientError, Clients, NewClient};

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

    /// See [`crate::domain::glob_match`].
    pub fn matches(&self, tenant: &str) -> bool {
        crate::domain::glob_match(self.0.as_bytes(), tenant.as_bytes())
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
/// Random bytes per key: 256 bits, far beyond guessing.
const KEY_RANDOM_BYTES: usize = 32;

/// SHA-256 of a whole API key, as stored and as looked up.
pub type KeyHash = [u8; 32];

/// A new API key: `ptk_` + 43 base64url characters (256 random bits).
/// Shown once; only [`hash_key`] of it is kept.
pub fn generate_key() -> Result<Secret<String>, ClientError> {
    let mut bytes = Zeroizing::new([0u8; KEY_RANDOM_BYTES]);
    OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| ClientError::Random(e.to_string()))?;
    let mut key = String::with_capacity(KEY_PREFIX.len() + 43);
    key.push_str(KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes.as_ref(), &mut key);
    Ok(Secret::new(key))
}

/// The stored form of a key. A fast hash is right here (unlike passwords):
/// keys carry 256 random bits, so there is nothing to brute-force.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A random client id, `cl_` + 16 hex characters. Not secret.
pub fn generate_client_id() -> Result<String, ClientError> {
    let mut bytes = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ClientError::Random(e.to_string()))?;
    Ok(format!("cl_{}", hex::encode(bytes)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> TenantPattern {
        TenantPattern::parse(s).unwrap()
    }

    #[test]
    fn glob_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("acme-*", "acme-1", true),
            ("acme-*", "acme-", true),
            ("acme-*", "acme", false),
            ("acme-*", "xacme-1", false),
            ("*", "anything", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-prod", "eu-1-prod", true),
            ("*-prod", "eu-1-prod2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "", true),
            (
                "*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
        ];
        for (p, t, want) in cases {
            assert_eq!(pat(p).matches(t), *want, "{p} vs {t}");
        }
    }

    #[test]
    fn pattern_validation() {
        for bad in ["", "a b", "a/b", "[ab]", "a\n", &"a".repeat(129)] {
            assert!(TenantPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TenantPattern::parse("eu.acme_1:prod-*?").is_ok());
    }

    #[test]
    fn reader_scope_and_admin() {
        let reader = Caller {
            client_id: "cl_1".into(),
            role: Role::Reader,
            patterns: vec![pat("acme-*"), pat("beta")],
        };
        assert!(reader.may_read("acme-1"));
        assert!(reader.may_read("beta"));
        assert!(!reader.may_read("betamax"));
        assert!(!reader.may_read("other"));
        assert!(!reader.is_admin());
        let admin = Caller::local_admin(0);
        assert!(admin.is_admin() && admin.may_read("anything"));
        assert_eq!(admin.client_id, "local:uid=0");
    }

    #[test]
    fn keys_are_prefixed_random_and_hashed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash_key(a.expose()), hash_key(a.expose()));
        assert_ne!(hash_key(a.expose()), hash_key(b.expose()));
        assert!(!format!("{a:?}").contains(KEY_PREFIX));
        let id = generate_client_id().unwrap();
        assert!(id.starts_with("cl_") && id.len() == 19);
    }
}
