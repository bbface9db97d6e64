//! Test-only: an ACTIVE tenant with a trusted app and a held token, the
//! starting point the broker's unit tests (`tests.rs`, `unstored/`,
//! `abandoned/`) share.

use crate::clock::UnixMs;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};
use crate::secret::Secret;
use crate::store::{NewTenant, Store};

/// Stores tenant `id` (ACTIVE, app "app"/"secret" on pbx.example.com)
/// holding `token` from `issued_at` to `expires_at`, renewal due at
/// `renew_at`, as of `now`.
pub(super) async fn insert_active(
    store: &Store,
    id: &str,
    token: &str,
    (issued_at, expires_at, renew_at): (UnixMs, UnixMs, UnixMs),
    now: UnixMs,
) {
    #[allow(clippy::unwrap_used)]
    store
        .insert_tenant(NewTenant {
            id: TenantId::parse(id).unwrap(),
            display_name: id.into(),
            base_url: PbxBaseUrl::from_trusted("https://pbx.example.com").unwrap(),
            state: TenantState::Active,
            trusted_app: Some(AppCredentials {
                client_id: "app".into(),
                client_secret: Secret::new("secret".into()),
            }),
            public_app: None,
            token: Some(AccessToken {
                value: Secret::new(token.into()),
                token_type: "Bearer".into(),
                issued_at,
                expires_at,
            }),
            renew_at: Some(renew_at),
            now,
        })
        .await
        .unwrap();
}
