//! The simulator's public knobs: start-up configuration (`SimConfig`),
//! run-time fault injection (`Faults`, `Malformed`, `AppResponseShape`),
//! the seed file format and the simulator's error type.

use serde::{Deserialize, Serialize};

/// Start-up configuration. `token_lifetime_secs` and `omit_expires_in` can
/// also be changed at run time (`Simulator::set_token_lifetime`,
/// `PUT /_sim/config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// `expires_in` of every issued access token (the provider: ~3600).
    pub token_lifetime_secs: u64,
    /// Leave `expires_in` out of token answers (some deployments do).
    pub omit_expires_in: bool,
    /// How long an authorization code may be redeemed.
    pub code_lifetime_secs: u64,
    /// When set, `/oauth/*` answers 429 to requests beyond this many in any
    /// sliding one-second window (the provider allows about 20/s).
    pub oauth_rate_limit_per_sec: Option<u32>,
    /// When set, `/oauth/*` answers 429 to a request that would make more
    /// than this many in flight at once (the provider allows about 6).
    pub oauth_max_concurrent: Option<u32>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 3600,
            omit_expires_in: false,
            code_lifetime_secs: 60,
            oauth_rate_limit_per_sec: None,
            oauth_max_concurrent: None,
        }
    }
}

/// A partial update of the run-time configuration (`PUT /_sim/config`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigUpdate {
    pub token_lifetime_secs: Option<u64>,
    pub omit_expires_in: Option<bool>,
    pub code_lifetime_secs: Option<u64>,
    pub oauth_rate_limit_per_sec: Option<Option<u32>>,
    pub oauth_max_concurrent: Option<Option<u32>>,
}

/// How a successful token answer is broken, to exercise the client's parser.
/// The access token in it (when there is one) is really issued and valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    /// 200 with a `text/html` login page (a captive portal or a proxy).
    Html,
    /// 200 with an empty body.
    EmptyBody,
    /// 200, `application/json`, but the body is not JSON.
    NotJson,
    /// Valid JSON without `access_token`.
    MissingAccessToken,
    /// `"expires_in": -5`.
    NegativeExpiresIn,
    /// `"token_type": "mac"`.
    NonBearerType,
    /// No `expires_in` field.
    OmitExpiresIn,
    /// `"expires_in": 1000000000000`.
    AbsurdExpiresIn,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::Html,
        Malformed::EmptyBody,
        Malformed::NotJson,
        Malformed::MissingAccessToken,
        Malformed::NegativeExpiresIn,
        Malformed::NonBearerType,
        Malformed::OmitExpiresIn,
        Malformed::AbsurdExpiresIn,
    ];
}

/// Field names of the `POST /api/ver1.0/application/` answer (undocumented
/// by the provider, so the client must cope with several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppResponseShape {
    /// `{"client_id": .., "client_secret": .., "name": .., "type": "trusted"}`
    #[default]
    ClientIdSecret,
    /// `{"id": .., "secret": .., "name": .., "type": "trusted"}`
    IdSecret,
    /// `{"app_key": .., "app_password": .., "name": .., "type": "trusted"}`:
    /// the app is created but a client cannot find its credentials.
    Unknown,
}

/// Faults injected into `/oauth/*` and `/api/*` (never into `/_sim/*`).
/// `Faults::default()` is a healthy provider. Setting faults replaces the
/// previous set as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every `/oauth` and `/api` request answers 503.
    pub outage: bool,
    /// This fraction (0.0..=1.0) of `/oauth` and `/api` requests answers 503.
    pub error_rate: f64,
    /// Delay added before answering every `/oauth` and `/api` request.
    pub latency_ms: u64,
    /// The next `fail_next` requests to `/oauth/token` answer `fail_status`.
    pub fail_next: u32,
    /// Status for `fail_next` (default 500 when left at 0).
    pub fail_status: u16,
    /// When set, `fail_next` counts and fails only token requests of this
    /// `grant_type` (e.g. `client_credentials`: the first token of a new
    /// trusted app fails while the code exchange before it succeeds).
    pub fail_grant_type: Option<String>,
    /// Answer 429 with `X-RateLimit-*` and `Retry-After` headers to every
    /// `/oauth` and `/api` request for this many seconds from now.
    pub throttle_for_secs: Option<u64>,
    /// Break successful token answers this way while set.
    pub malformed: Option<Malformed>,
    /// Field names of the app-creation answer.
    pub app_response_shape: AppResponseShape,
    /// `POST /api/ver1.0/application/` answers 403 `{"message": ..}`.
    pub forbid_app_creation: bool,
    /// `GET /api/ver1.0/user/` answers `[user]` instead of `user`.
    pub wrap_user_in_array: bool,
    /// While set, the chosen endpoints answer an error whose text echoes
    /// the request back (secrets included), as careless providers do.
    pub echo: Option<EchoFault>,
}

/// An error answer that echoes the request (`Faults::echo`). The echo is
/// the text of the error (`error_description` on `/oauth/token`,
/// `message` elsewhere), so a client that shows provider error text shows
/// the request's secrets unless it redacts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoFault {
    /// 400 and 401 on `/oauth/token` answer `{"error": "invalid_client",
    /// "error_description": ECHO}` (401 with its challenge); any other
    /// status, and every status on `/api`, answers `{"message": ECHO}`.
    pub status: u16,
    /// How the echo spells the request.
    pub form: EchoForm,
    /// Which endpoints echo (default: `/oauth/token` only).
    #[serde(default)]
    pub endpoints: EchoEndpoints,
}

/// How an echoing error spells the request it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EchoForm {
    /// The Authorization header (if any), then the body byte for byte as
    /// received (a form stays URL-encoded).
    Raw,
    /// The decoded values alone, without their keys: nothing marks them
    /// as secrets.
    Values,
    /// The decoded fields (and the Authorization header) as a JSON object
    /// spelled the PHP `json_encode` way (`\"`, `\/`, `\u00fc`), inside
    /// the JSON string of the answer.
    Json,
}

impl EchoForm {
    pub const ALL: [EchoForm; 3] = [EchoForm::Raw, EchoForm::Values, EchoForm::Json];
}

/// The endpoints an [`EchoFault`] applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EchoEndpoints {
    /// `POST /oauth/token`.
    #[default]
    Token,
    /// `POST /api/ver1.0/application/` and `GET /api/ver1.0/user/`.
    Api,
    /// Both.
    All,
}

impl EchoEndpoints {
    pub fn token(self) -> bool {
        matches!(self, EchoEndpoints::Token | EchoEndpoints::All)
    }
    pub fn api(self) -> bool {
        matches!(self, EchoEndpoints::Api | EchoEndpoints::All)
    }
}

/// Apps to create at start-up (`pbx-sim --seed-file FILE`, JSON).
///
/// ```json
/// {"trusted": [{"client_id": "a", "client_secret": "s"}],
///  "public": [{"client_id": "p", "client_secret": "s", "redirect_uri": "https://crm/cb"}]}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedFile {
    pub trusted: Vec<SeedApp>,
    pub public: Vec<SeedApp>,
}

/// One app of a [`SeedFile`]; `redirect_uri` is required for public apps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedApp {
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

/// Credentials of an app the simulator knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub client_id: String,
    pub client_secret: String,
}

/// Why a simulator operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("client_id {0:?} is already registered")]
    DuplicateClient(String),
    #[error("client_id {0:?} is not registered")]
    UnknownClient(String),
    #[error("client_id {0:?} is not a public application")]
    NotPublic(String),
    #[error("client_id {0:?} has been revoked")]
    Revoked(String),
    #[error("redirect_uri {given:?} does not match the registered {registered:?}")]
    RedirectMismatch { given: String, registered: String },
    #[error("invalid input: {0}")]
    Invalid(String),
}
