//! The store's side of sealing: which fields are sealed, the associated
//! data that binds each sealed value to its tenant and field, and turning
//! crypto failures into `StoreError`s that name the value.
//!
//! Does not: hold keys or implement the cipher (see `crate::crypto`).

use zeroize::{Zeroize, Zeroizing};

use super::StoreError;
use crate::crypto::{self, Keyring};
use crate::secret::Secret;

/// Every sealed column, by the field name bound into its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// Before schema 6: the trusted app's secret alone (see `credentials`).
    TrustedSecret,
    /// Before schema 6: the public app's secret alone.
    PublicSecret,
    /// The trusted app's secret sealed together with where it may be sent
    /// (base URL, client id), see `credentials::Bound`.
    TrustedApp,
    /// The public app's secret with base URL, client id and redirect URI.
    PublicApp,
    AccessToken,
    /// Before flow binding: the code exchange's public token alone.
    OnboardingPublicToken,
    /// Before flow binding: the new trusted app's secret alone.
    OnboardingTrustedSecret,
    /// Before flow binding: the new trusted app's first token alone.
    OnboardingToken,
    /// Onboarding: the public app's token from the code exchange, sealed
    /// with the base URL it may be sent to (see `flow_seal`).
    FlowPublicToken,
    /// Onboarding: the new trusted app's secret with base URL and client id.
    FlowTrustedApp,
    /// Onboarding: the new trusted app's first token with the base URL.
    FlowToken,
}

impl Field {
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::TrustedSecret => "trusted_secret",
            Field::PublicSecret => "public_secret",
            Field::TrustedApp => "trusted_app",
            Field::PublicApp => "public_app",
            Field::AccessToken => "access_token",
            Field::OnboardingPublicToken => "onboarding_public_token",
            Field::OnboardingTrustedSecret => "onboarding_trusted_secret",
            Field::OnboardingToken => "onboarding_token",
            Field::FlowPublicToken => "flow_public_token",
            Field::FlowTrustedApp => "flow_trusted_app",
            Field::FlowToken => "flow_token",
        }
    }
}

pub(super) fn seal(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    plaintext: &str,
) -> Result<Vec<u8>, StoreError> {
    keys.try_seal(&crypto::aad(tenant_id, field.name()), plaintext.as_bytes())
        .map_err(|e| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: {e}",
                field.name()
            ))
        })
}

pub(super) fn open(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    sealed: &[u8],
) -> Result<Secret<String>, StoreError> {
    let what = || format!("{} of tenant {tenant_id}", field.name());
    let plain = keys
        .open(&crypto::aad(tenant_id, field.name()), sealed)
        .map_err(|source| StoreError::Unseal {
            what: what(),
            source,
        })?;
    match String::from_utf8(plain) {
        Ok(s) => Ok(Secret::new(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(StoreError::Corrupt(format!("{} is not UTF-8", what())))
        }
    }
}

/// Seals several strings as one value: each as a 4-byte big-endian length
/// and its bytes, so no separator needs escaping. The buffer holding the
/// plaintext is wiped after sealing.
pub(super) fn seal_parts(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    parts: &[&str],
) -> Result<Vec<u8>, StoreError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(
        parts.iter().map(|p| 4 + p.len()).sum::<usize>(),
    ));
    for part in parts {
        let len = u32::try_from(part.len()).map_err(|_| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: a part is too long",
                field.name()
            ))
        })?;
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(part.as_bytes());
    }
    keys.try_seal(&crypto::aad(tenant_id, field.name()), &plain)
        .map_err(|e| {
            StoreError::Task(format!(
                "cannot seal the {} of tenant {tenant_id}: {e}",
                field.name()
            ))
        })
}

/// Opens a value sealed by [`seal_parts`]; exactly `count` parts expected.
pub(super) fn open_parts(
    keys: &Keyring,
    tenant_id: &str,
    field: Field,
    sealed: &[u8],
    count: usize,
) -> Result<Vec<Secret<String>>, StoreError> {
    let what = || format!("{} of tenant {tenant_id}", field.name());
    let plain = Zeroizing::new(
        keys.open(&crypto::aad(tenant_id, field.name()), sealed)
            .map_err(|source| StoreError::Unseal {
                what: what(),
                source,
            })?,
    );
    let corrupt = || StoreError::Corrupt(format!("{} has a malformed sealed layout", what()));
    let mut rest: &[u8] = &plain;
    let mut out = Vec::with_capacity(count);
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
        if tail.len() < len {
            return Err(corrupt());
        }
        let (part, tail) = tail.split_at(len);
        let part = std::str::from_utf8(part).map_err(|_| corrupt())?;
        out.push(Secret::new(part.to_owned()));
        rest = tail;
    }
    if out.len() != count {
        return Err(corrupt());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::connection::sibling;
    use super::super::testutil::*;
    use super::super::{SqliteStore, TenantChanges};
    use crate::domain::TenantState;

    const TRUSTED: &str = "TRUSTED-SECRET-7f3a9c";
    const PUBLIC: &str = "PUBLIC-SECRET-51e0d2";
    const TOKEN_1: &str = "ACCESS-TOKEN-ONE-2b8e44";
    const TOKEN_2: &str = "ACCESS-TOKEN-TWO-93c1aa";

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// Every file SQLite keeps for the database (main, WAL, shared memory).
    fn files_bytes(t: &TestStore) -> Vec<(String, Vec<u8>)> {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let p = sibling(&t.path, suffix);
                std::fs::read(&p).ok().map(|b| (format!("db{suffix}"), b))
            })
            .collect()
    }

    fn assert_no_secret_in_files(t: &TestStore, when: &str) {
        let files = files_bytes(t);
        assert!(files.iter().any(|(n, b)| n == "db-wal" && !b.is_empty()) || when == "closed");
        for (name, bytes) in &files {
            for secret in [TRUSTED, PUBLIC, TOKEN_1, TOKEN_2] {
                assert!(
                    !contains(bytes, secret),
                    "{secret} in clear in {name} ({when})"
                );
            }
        }
        // Control: non-secret values of the same rows are there in clear, so
        // the search itself works.
        assert!(
            files.iter().any(|(_, b)| contains(b, "client-id-visible")),
            "control string missing ({when})"
        );
    }

    #[tokio::test]
    async fn no_secret_or_token_in_clear_in_any_database_file() {
        let t = open_temp();
        let mut n = new_tenant("acme", TenantState::Active);
        n.trusted_app = Some(app("client-id-visible", TRUSTED));
        n.public_app = Some((app("public-id", PUBLIC), "https://crm/cb".into()));
        n.token = Some(token(TOKEN_1, T0));
        t.store.insert_tenant(n).await.unwrap();
        let changes = TenantChanges {
            token: Some(token(TOKEN_2, T0.plus_ms(HOUR))),
            ..Default::default()
        };
        t.store
            .update_tenant(&tid("acme"), changes, T0.plus_ms(HOUR))
            .await
            .unwrap();
        // While open: the committed pages sit in the WAL.
        assert_no_secret_in_files(&t, "open");
        t.store.close().await.unwrap();
        assert_no_secret_in_files(&t, "closed");

        // And the values are really there, sealed.
        let s = SqliteStore::open(&t.path, Arc::clone(&t.keys)).unwrap();
        let creds = s.trusted_credentials(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose(), TRUSTED);
        let cache = s.load_cache().await.unwrap();
        assert_eq!(cache[0].token.as_ref().unwrap().value.expose(), TOKEN_2);
    }
}
