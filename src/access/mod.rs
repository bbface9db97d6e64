//! Who may call what. The vocabulary of API access: roles, tenant patterns,
//! API keys and the authenticated [`Caller`] (defined in `domain/clients.rs`,
//! below `store`, and re-exported here); `registry.rs` keeps the API
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
use zeroize::Zeroizing;

use crate::secret::Secret;

pub use crate::domain::clients::{
    hash_key, Caller, ClientInfo, KeyHash, Lapsed, Role, TenantPattern, KEY_PREFIX,
};
pub use registry::{ClientError, Clients, NewClient};

/// Random bytes per key: 256 bits, far beyond guessing.
const KEY_RANDOM_BYTES: usize = 32;

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

/// A random client id, `cl_` + 16 hex characters. Not secret.
pub fn generate_client_id() -> Result<String, ClientError> {
    let mut bytes = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ClientError::Random(e.to_string()))?;
    Ok(format!("cl_{}", hex::encode(bytes)))
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
