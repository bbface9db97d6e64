//! Everything that speaks HTTP to a PBX: the client (`client/`), the
//! response parsers (`parse/`, pure and fuzzable), the error model
//! (`error.rs`), the per-host request limiter (`limiter/`), the one place
//! requests pass it (`gated/`: [`gated::GatedPbx`], what the broker,
//! tenants and onboarding call), the outbound address guard against SSRF
//! (`guard.rs`), and the redaction of secrets from PBX-supplied text
//! (`redact/`).
//! Nothing outside this module knows a URL path or a status code.

pub mod client;
pub mod error;
pub mod gated;
pub mod guard;
pub mod limiter;
pub mod parse;
pub mod redact;

use futures::future::BoxFuture;

pub use error::PbxError;

use crate::domain::{AppCredentials, PbxBaseUrl, PbxUser};
use crate::secret::Secret;

/// A token answer from `POST /oauth/token`, validated.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: Secret<String>,
    /// Always "Bearer" (anything else is a protocol error).
    pub token_type: String,
    /// `None` when the PBX omitted `expires_in`; the caller applies the
    /// configured default lifetime.
    pub expires_in_secs: Option<u64>,
    pub refresh_token: Option<Secret<String>>,
}

/// The PBX operations the broker needs, behind a trait so the deterministic
/// simulation can run the real broker against an in-process PBX.
pub trait PbxApi: Send + Sync + 'static {
    /// `grant_type=client_credentials` for a trusted application.
    fn client_credentials<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        creds: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>>;
}

/// The PBX operations of the authorization flow (`onboarding`), apart from
/// [`PbxApi`] so an implementation of the broker's one call stays small.
pub trait PbxOnboardingApi: Send + Sync + 'static {
    /// `grant_type=authorization_code` with the provider's public app.
    fn authorization_code<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        public_app: &'a AppCredentials,
        code: &'a str,
        redirect_uri: &'a str,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>>;

    /// `POST /api/ver1.0/application/` creating a trusted app named `name`.
    fn create_application<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        bearer: &'a Secret<String>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<AppCredentials, PbxError>>;

    /// `GET /api/ver1.0/user/`: the PBX user the token acts for.
    fn get_user<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        bearer: &'a Secret<String>,
    ) -> BoxFuture<'a, Result<PbxUser, PbxError>>;
}
