//! Sealing as the SQLite backend uses it: the backend-neutral code lives in
//! `store/seal/`; this file keeps the names the SQLite files use and the
//! tests that look for secrets in SQLite's own files.

pub(super) use crate::store::seal::{open, seal, seal_parts, Field};

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
            replaces_token_expiring: Some(T0.plus_ms(HOUR)),
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
