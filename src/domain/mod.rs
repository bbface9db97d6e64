//! The nouns of the product: tenant ids, PBX base URLs, tenant states, app
//! credentials, access tokens, PBX users. Validation of user input lives on
//! the constructors here, so a value of one of these types is known good.
//! No protobuf, no SQL, no HTTP in this file.

pub mod clients;
mod net;

use crate::clock::UnixMs;
use crate::secret::Secret;

use net::forbidden_host;
pub use net::{glob_match, internal_range, is_private, HostPattern};

/// What is wrong with one input field, said so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A tenant id: 1-128 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::validate(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The same rules as `parse`, without allocating (GetToken hot path).
    pub fn validate(s: &str) -> Result<(), ValidationError> {
        if s.is_empty() {
            return Err(ValidationError::new("tenant_id", "is required"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "tenant_id",
                format!(
                    "is {} characters long; at most {} are allowed",
                    s.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(ValidationError::new(
                "tenant_id",
                format!("contains {c:?}; only letters, digits and . _ : - are allowed"),
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rules for which PBX base URLs are acceptable (from `[pbx]` config).
#[derive(Clone, Copy, Debug, Default)]
pub struct UrlPolicy {
    pub allow_insecure_http: bool,
    pub allow_private_addresses: bool,
}

/// The root of a tenant's PBX API, e.g. `https://pbx.example.com`. Stored
/// without a trailing slash; endpoints are appended with [`PbxBaseUrl::join`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PbxBaseUrl {
    url: String,
    host: String,
}

impl PbxBaseUrl {
    pub fn parse(s: &str, policy: UrlPolicy) -> Result<Self, ValidationError> {
        const FIELD: &str = "pbx_base_url";
        if s.is_empty() {
            return Err(ValidationError::new(FIELD, "is required"));
        }
        if s.len() > 2048 {
            return Err(ValidationError::new(
                FIELD,
                "is longer than 2048 characters",
            ));
        }
        let url = url::Url::parse(s).map_err(|e| {
            ValidationError::new(FIELD, format!("{s:?} is not an absolute URL ({e})"))
        })?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_insecure_http => {}
            "http" => {
                return Err(ValidationError::new(
                    FIELD,
                    "must use https:// (set [pbx] allow_insecure_http = true only for a simulator or a test PBX)",
                ))
            }
            other => {
                return Err(ValidationError::new(
                    FIELD,
                    format!("scheme {other:?} is not allowed; use https://"),
                ))
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ValidationError::new(
                FIELD,
                "must not contain user info (user:password@)",
            ));
        }
        if url.query().is_some() {
            return Err(ValidationError::new(
                FIELD,
                "must not contain a query (?...)",
            ));
        }
        if url.fragment().is_some() {
            return Err(ValidationError::new(
                FIELD,
                "must not contain a fragment (#...)",
            ));
        }
        let host_str = match url.host() {
            Some(h) => h.to_string(),
            None => return Err(ValidationError::new(FIELD, "has no host")),
        };
        if !policy.allow_private_addresses {
            if let Some(reason) = forbidden_host(&url) {
                return Err(ValidationError::new(
                    FIELD,
                    format!("{reason}; set [pbx] allow_private_addresses = true for an on-premises PBX or the simulator"),
                ));
            }
        }
        let host = match url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str,
        };
        let url = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self { url, host })
    }

    /// Rebuild from a value that was validated before (database rows).
    pub fn from_trusted(url: &str) -> Result<Self, ValidationError> {
        Self::parse(
            url,
            UrlPolicy {
                allow_insecure_http: true,
                allow_private_addresses: true,
            },
        )
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `host[:port]`: the unit of rate limiting.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host alone (no port; IPv6 in brackets), for allow lists.
    pub fn host_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((name, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!name.starts_with('[') || name.ends_with(']')) =>
            {
                name
            }
            _ => &self.host,
        }
    }

    /// Whether this URL names an internal host or address (see
    /// [`is_private`]); the PBX client re-checks stored URLs with it.
    pub fn is_internal(&self) -> bool {
        url::Url::parse(&self.url)
            .ok()
            .is_some_and(|u| forbidden_host(&u).is_some())
    }

    /// `path` must start with `/`, e.g. `/oauth/token`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

/// Where a tenant is in its life. Stored as the lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TenantState {
    PendingAuthorization,
    Active,
    RenewalFailing,
    CredentialsRejected,
    Disabled,
}

impl TenantState {
    pub const ALL: [TenantState; 5] = [
        TenantState::PendingAuthorization,
        TenantState::Active,
        TenantState::RenewalFailing,
        TenantState::CredentialsRejected,
        TenantState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::PendingAuthorization => "pending_authorization",
            TenantState::Active => "active",
            TenantState::RenewalFailing => "renewal_failing",
            TenantState::CredentialsRejected => "credentials_rejected",
            TenantState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States in which the tenant has trusted credentials and gets renewals.
    pub fn is_renewing(self) -> bool {
        matches!(
            self,
            TenantState::Active | TenantState::RenewalFailing | TenantState::CredentialsRejected
        )
    }
}

impl std::fmt::Display for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth application: `client_id` + `client_secret`.
#[derive(Clone, Debug)]
pub struct AppCredentials {
    pub client_id: String,
    pub client_secret: Secret<String>,
}

impl AppCredentials {
    pub const MAX_ID_LEN: usize = 256;
    pub const MAX_SECRET_LEN: usize = 1024;

    /// `field` names the request field ("trusted_app", "public_app") in errors.
    pub fn parse(
        field: &'static str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, ValidationError> {
        if client_id.is_empty() {
            return Err(ValidationError::new(field, "client_id is required"));
        }
        if client_id.len() > Self::MAX_ID_LEN {
            return Err(ValidationError::new(
                field,
                format!("client_id is longer than {} characters", Self::MAX_ID_LEN),
            ));
        }
        if client_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ValidationError::new(
                field,
                "client_id must not contain spaces or control characters",
            ));
        }
        if client_secret.is_empty() {
            return Err(ValidationError::new(field, "client_secret is required"));
        }
        if client_secret.len() > Self::MAX_SECRET_LEN {
            return Err(ValidationError::new(
                field,
                format!(
                    "client_secret is longer than {} bytes",
                    Self::MAX_SECRET_LEN
                ),
            ));
        }
        if client_secret.chars().any(|c| c.is_control()) {
            return Err(ValidationError::new(
                field,
                "client_secret must not contain control characters",
            ));
        }
        Ok(Self {
            client_id: client_id.to_owned(),
            client_secret: Secret::new(client_secret.to_owned()),
        })
    }
}

/// A Bearer token as held and served by the broker.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub value: Secret<String>,
    pub token_type: String,
    pub issued_at: UnixMs,
    pub expires_at: UnixMs,
}

impl AccessToken {
    pub fn lifetime_ms(&self) -> i64 {
        self.expires_at.0 - self.issued_at.0
    }
    /// True when the token is still valid `margin_ms` from `now`.
    pub fn valid_for(&self, now: UnixMs, margin_ms: i64) -> bool {
        self.expires_at.0 > now.0.saturating_add(margin_ms)
    }
}

/// The PBX user a trusted application acts for (`GET /api/ver1.0/user/`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PbxUser {
    pub id: i64,
    pub login: String,
    pub client_id: i64,
    pub admin: bool,
    pub dealer_id: Option<i64>,
    pub extension_id: Option<i64>,
    pub extension_group_id: Option<i64>,
}

/// A tenant as the admin API shows it. Holds no secret.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
    pub base_url: PbxBaseUrl,
    pub state: TenantState,
    pub trusted_client_id: Option<String>,
    pub token_expires_at: Option<UnixMs>,
    pub next_refresh_at: Option<UnixMs>,
    pub last_refresh_at: Option<UnixMs>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub pbx_user: Option<PbxUser>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

/// Display names are free text, bounded so a row stays small.
pub fn validate_display_name(s: &str) -> Result<(), ValidationError> {
    if s.len() > 256 {
        return Err(ValidationError::new(
            "display_name",
            "is longer than 256 characters",
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            "display_name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_insecure_http: false,
        allow_private_addresses: false,
    };

    #[test]
    fn tenant_id_rules() {
        assert!(TenantId::parse("acme-1.eu:prod_2").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse(&"a".repeat(128)).is_ok());
        assert!(TenantId::parse(&"a".repeat(129)).is_err());
        for bad in ["a b", "a/b", "ü", "a\n", "a;b"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_url_rules() {
        let u = PbxBaseUrl::parse("https://pbx.example.com/", STRICT).unwrap();
        assert_eq!(u.as_str(), "https://pbx.example.com");
        assert_eq!(u.host(), "pbx.example.com");
        assert_eq!(
            u.join("/oauth/token"),
            "https://pbx.example.com/oauth/token"
        );
        let u = PbxBaseUrl::parse("https://pbx.example.com:8443", STRICT).unwrap();
        assert_eq!(u.host(), "pbx.example.com:8443");
        for bad in [
            "",
            "pbx.example.com",
            "http://pbx.example.com",
            "ftp://pbx.example.com",
            "https://user:pw@pbx.example.com",
            "https://pbx.example.com/?a=1",
            "https://pbx.example.com/#x",
            "https://127.0.0.1",
            "https://10.1.2.3",
            "https://[::1]",
            "https://[::ffff:192.168.1.1]",
            "https://169.254.169.254",
            "https://localhost",
        ] {
            assert!(PbxBaseUrl::parse(bad, STRICT).is_err(), "{bad:?}");
        }
        let open = UrlPolicy {
            allow_insecure_http: true,
            allow_private_addresses: true,
        };
        assert!(PbxBaseUrl::parse("http://127.0.0.1:8080", open).is_ok());
    }

    #[test]
    fn credentials_rules() {
        assert!(AppCredentials::parse("trusted_app", "id", "secret").is_ok());
        assert!(AppCredentials::parse("trusted_app", "", "secret").is_err());
        assert!(AppCredentials::parse("trusted_app", "id", "").is_err());
        assert!(AppCredentials::parse("trusted_app", "i d", "s").is_err());
        assert!(AppCredentials::parse("trusted_app", "id", &"s".repeat(1025)).is_err());
    }

    #[test]
    fn state_names_round_trip() {
        for s in TenantState::ALL {
            assert_eq!(TenantState::parse(s.as_str()), Some(s));
        }
    }
}
