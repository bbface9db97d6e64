//! The real PBX HTTP client (reqwest + rustls): builds the requests the
//! provider's OAuth document describes, reads answers under a size cap, and
//! hands status + headers + body to the pure parsers in `parse/mod.rs`.
//!
//! Does not: rate-limit (callers go through [`super::gated::GatedPbx`],
//! which passes [`super::limiter::HostLimiters`] first, so the in-process
//! simulator is limited the same way), retry, or
//! follow redirects. Never logs secrets, tokens or bodies: at debug it logs
//! host, path, status and latency.

use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response};

use super::parse::{self, ResponseMeta};
use super::{PbxApi, PbxError, PbxOnboardingApi, TokenGrant};
use crate::config::{PbxConfig, TokenConfig};
use crate::domain::{AppCredentials, PbxBaseUrl, PbxUser};
use crate::secret::Secret;

const TOKEN_PATH: &str = "/oauth/token";
const APPLICATION_PATH: &str = "/api/ver1.0/application/";
const USER_PATH: &str = "/api/ver1.0/user/";

/// The HTTP client could not be set up (TLS back end, system resources).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the PBX HTTP client: {0}")]
pub struct ClientBuildError(String);

/// Talks to any number of PBX hosts; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PbxClient {
    http: reqwest::Client,
    allow_insecure_http: bool,
    allow_private_addresses: bool,
    max_response_bytes: u64,
    max_lifetime_secs: u64,
    request_timeout: Duration,
    connect_timeout: Duration,
    /// Counts answers per host and status, when the daemon gave a registry.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// One request, before it is sent.
struct Call<'a> {
    base: &'a PbxBaseUrl,
    method: Method,
    path: &'static str,
    bearer: Option<&'a Secret<String>>,
    body: Outgoing,
}

enum Outgoing {
    Empty,
    Form(String),
    Json(Vec<u8>),
}

struct Answer {
    status: u16,
    meta: ResponseMeta,
    /// Empty when `too_large`.
    body: Vec<u8>,
    too_large: bool,
}

impl PbxClient {
    pub fn new(pbx: &PbxConfig, token: &TokenConfig) -> Result<Self, ClientBuildError> {
        let request_timeout = Duration::from_millis(pbx.request_timeout_ms);
        let connect_timeout = Duration::from_millis(pbx.connect_timeout_ms);
        let http = reqwest::Client::builder()
            .user_agent(concat!("pbx-tokend/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            // Covers connect, headers and the whole body.
            .timeout(request_timeout)
            // A redirect from a token endpoint is a misconfigured base URL
            // at best; following it could post the client secret elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // The provider asks for `Accept-Encoding: gzip`; this sends it
            // and transparently decodes, so the size cap below applies to
            // the decoded bytes (no gzip bomb).
            .gzip(true)
            .https_only(!pbx.allow_insecure_http)
            // Every resolved address passes the SSRF guard before a connect.
            .dns_resolver(std::sync::Arc::new(super::guard::GuardedResolver::new(
                pbx.allow_private_addresses,
            )))
            .build()
            .map_err(|e| ClientBuildError(root_cause(&e)))?;
        Ok(Self {
            http,
            allow_insecure_http: pbx.allow_insecure_http,
            allow_private_addresses: pbx.allow_private_addresses,
            max_response_bytes: pbx.max_response_bytes,
            max_lifetime_secs: token.max_lifetime_seconds,
            request_timeout,
            connect_timeout,
            metrics: None,
        })
    }

    /// Counts every HTTP exchange by host and status into `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `grant_type=authorization_code` with the provider's public app, after
    /// the PBX user clicked "Allow". `code` is single-use and never logged.
    pub async fn authorization_code(
        &self,
        base: &PbxBaseUrl,
        public_app: &AppCredentials,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenGrant, PbxError> {
        let form = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", &public_app.client_id),
            ("client_secret", public_app.client_secret.expose()),
        ]);
        self.token(base, form, &[code, public_app.client_secret.expose()])
            .await
    }

    /// `POST /api/ver1.0/application/` `{"name": .., "type": "trusted"}`
    /// with the bearer token from [`Self::authorization_code`].
    ///
    /// Not idempotent: after a `Transient` error the PBX may still have
    /// created the application (and its secret is then lost, as the API has
    /// no list endpoint); the caller can only create another.
    pub async fn create_application(
        &self,
        base: &PbxBaseUrl,
        bearer: &Secret<String>,
        name: &str,
    ) -> Result<AppCredentials, PbxError> {
        let body = serde_json::json!({ "name": name, "type": "trusted" }).to_string();
        let call = Call {
            base,
            method: Method::POST,
            path: APPLICATION_PATH,
            bearer: Some(bearer),
            body: Outgoing::Json(body.into_bytes()),
        };
        self.exchange(call, &[], |a| {
            let raw = parse::parse_application_response(a.status, &a.meta, &a.body)?;
            AppCredentials::parse("application", &raw.client_id, raw.client_secret.expose())
                .map_err(|e| PbxError::Protocol {
                    reason: format!(
                        "the new application's credentials are unusable: {}",
                        e.message
                    ),
                })
        })
        .await
    }

    /// `GET /api/ver1.0/user/`: the PBX user the bearer token acts for.
    pub async fn get_user(
        &self,
        base: &PbxBaseUrl,
        bearer: &Secret<String>,
    ) -> Result<PbxUser, PbxError> {
        let call = Call {
            base,
            method: Method::GET,
            path: USER_PATH,
            bearer: Some(bearer),
            body: Outgoing::Empty,
        };
        self.exchange(call, &[], |a| {
            parse::parse_user_response(a.status, &a.meta, &a.body)
        })
        .await
    }

    async fn fetch_client_credentials(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
    ) -> Result<TokenGrant, PbxError> {
        // Exactly the three fields of the document, in its order.
        let form = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &creds.client_id),
            ("client_secret", creds.client_secret.expose()),
        ]);
        self.token(base, form, &[creds.client_secret.expose()])
            .await
    }

    /// `POST /oauth/token`; `known` are the secrets inside `form`.
    async fn token(
        &self,
        base: &PbxBaseUrl,
        form: String,
        known: &[&str],
    ) -> Result<TokenGrant, PbxError> {
        let call = Call {
            base,
            method: Method::POST,
            path: TOKEN_PATH,
            bearer: None,
            body: Outgoing::Form(form),
        };
        self.exchange(call, known, |a| {
            parse::parse_token_response(a.status, &a.meta, &a.body, self.max_lifetime_secs)
        })
        .await
    }

    /// Every PBX call goes through here: the exchange, the known secrets
    /// out of an error answer's text, its parser, and then the one
    /// redaction of the error (the secrets this call carried, in `known`
    /// and the bearer token, plus look-alikes), so an answer that echoes
    /// the request cannot leak through any path.
    async fn exchange<T>(
        &self,
        call: Call<'_>,
        known: &[&str],
        parse: impl FnOnce(Answer) -> Result<T, PbxError>,
    ) -> Result<T, PbxError> {
        let mut secrets = known.to_vec();
        secrets.extend(call.bearer.map(|b| b.expose().as_str()));
        let result = match self.call(call).await {
            Ok(mut answer) => {
                // Known secrets out of an error answer before the parser's
                // look-alike pass can redact half of one and hide the rest.
                // Success answers stay whole: they carry what we asked for.
                if !(200..300).contains(&answer.status) {
                    answer.body = super::redact::redact_known_body(&answer.body, &secrets);
                }
                parse(answer)
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| e.redact(&secrets))
    }

    /// One exchange: scheme check, send, capped read, debug log. Non-2xx
    /// answers come back as `Ok`; the parsers classify them.
    async fn call(&self, call: Call<'_>) -> Result<Answer, PbxError> {
        let Call {
            base,
            method,
            path,
            bearer,
            body,
        } = call;
        let host = base.host();
        self.check_scheme(base)?;
        let mut rb = self
            .http
            .request(method.clone(), base.join(path))
            .header(header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            // The formatted copy of the token is wiped when dropped.
            let text = zeroize::Zeroizing::new(format!("Bearer {}", token.expose()));
            let mut v = HeaderValue::from_str(&text).map_err(|_| PbxError::Misconfigured {
                reason: "the bearer token has characters that cannot go in an HTTP header".into(),
            })?;
            v.set_sensitive(true);
            rb = rb.header(header::AUTHORIZATION, v);
        }
        rb = match body {
            Outgoing::Empty => rb,
            Outgoing::Form(f) => rb
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(f),
            Outgoing::Json(j) => rb.header(header::CONTENT_TYPE, "application/json").body(j),
        };
        let started = tokio::time::Instant::now();
        let result = match rb.send().await {
            Ok(resp) => self.read(resp).await,
            Err(e) => Err(e),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        if let Some(m) = &self.metrics {
            m.pbx_request(host, result.as_ref().ok().map(|a| a.status));
        }
        match result {
            Ok(answer) => {
                tracing::debug!(host, path, %method, status = answer.status, latency_ms, "PBX answered");
                // The status still decides: a 503 with a huge HTML page is a
                // 503. A success without its body is useless.
                if answer.too_large && (200..300).contains(&answer.status) {
                    return Err(PbxError::Protocol {
                        reason: format!("answer larger than {} bytes", self.max_response_bytes),
                    });
                }
                Ok(answer)
            }
            Err(e) => {
                let err = self.transport_error(host, &e);
                tracing::debug!(host, path, %method, latency_ms, class = err.class(), error = %err, "PBX call failed");
                Err(err)
            }
        }
    }

    fn check_scheme(&self, base: &PbxBaseUrl) -> Result<(), PbxError> {
        // IP-literal hosts never reach the resolver's guard: check them here
        // (a URL stored before the setting changed, or edited by hand).
        if !self.allow_private_addresses && base.is_internal() {
            return Err(PbxError::Misconfigured {
                reason: format!(
                    "{} is an internal address and [pbx] allow_private_addresses is false; change the tenant's pbx_base_url",
                    base.host()
                ),
            });
        }
        let url = base.as_str();
        if url.starts_with("https://") || (self.allow_insecure_http && url.starts_with("http://")) {
            return Ok(());
        }
        Err(PbxError::Misconfigured {
            reason: format!(
                "the base URL of {} is not https:// and [pbx] allow_insecure_http is false; change the tenant's pbx_base_url",
                base.host()
            ),
        })
    }

    async fn read(&self, mut resp: Response) -> Result<Answer, reqwest::Error> {
        let status = resp.status().as_u16();
        let meta = meta_from_headers(resp.headers());
        let cap = self.max_response_bytes;
        let mut body = Vec::new();
        let mut too_large = resp.content_length().is_some_and(|n| n > cap);
        while !too_large {
            let Some(chunk) = resp.chunk().await? else {
                break;
            };
            if (body.len() + chunk.len()) as u64 > cap {
                too_large = true;
            } else {
                body.extend_from_slice(&chunk);
            }
        }
        if too_large {
            body.clear();
        }
        Ok(Answer {
            status,
            meta,
            body,
            too_large,
        })
    }

    fn transport_error(&self, host: &str, e: &reqwest::Error) -> PbxError {
        if let Some(refused) = refused_address(e) {
            // Not transient: the name resolves where a PBX must not be.
            return PbxError::Misconfigured {
                reason: format!("{refused}; change the tenant's pbx_base_url"),
            };
        }
        let cause = root_cause(e);
        let reason = if e.is_connect() && e.is_timeout() {
            format!(
                "cannot connect to {host} within {} ms",
                self.connect_timeout.as_millis()
            )
        } else if e.is_timeout() {
            format!(
                "no complete answer from {host} within {} ms",
                self.request_timeout.as_millis()
            )
        } else if e.is_connect() {
            format!("cannot connect to {host}: {cause}")
        } else if e.is_builder() {
            return PbxError::Misconfigured {
                reason: format!("the request to {host} cannot be built: {cause}"),
            };
        } else if e.is_decode() || e.is_body() {
            format!("the answer from {host} broke off or is badly encoded: {cause}")
        } else {
            format!("request to {host} failed: {cause}")
        };
        PbxError::Transient { reason }
    }
}

impl PbxApi for PbxClient {
    fn client_credentials<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        creds: &'a AppCredentials,
    ) -> futures::future::BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(self.fetch_client_credentials(base, creds))
    }
}

impl PbxOnboardingApi for PbxClient {
    fn authorization_code<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        public_app: &'a AppCredentials,
        code: &'a str,
        redirect_uri: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(PbxClient::authorization_code(
            self,
            base,
            public_app,
            code,
            redirect_uri,
        ))
    }

    fn create_application<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        bearer: &'a Secret<String>,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<AppCredentials, PbxError>> {
        Box::pin(PbxClient::create_application(self, base, bearer, name))
    }

    fn get_user<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        bearer: &'a Secret<String>,
    ) -> futures::future::BoxFuture<'a, Result<PbxUser, PbxError>> {
        Box::pin(PbxClient::get_user(self, base, bearer))
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn meta_from_headers(h: &HeaderMap) -> ResponseMeta {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    ResponseMeta {
        content_type: get("content-type"),
        retry_after: get("retry-after"),
        rate_limit_reset: get("x-ratelimit-reset"),
        date: get("date"),
        location: get("location"),
    }
}

/// The outbound guard's refusal, if that is why the connect failed.
fn refused_address<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a super::guard::RefusedAddress> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<super::guard::RefusedAddress>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// The innermost error's text (e.g. "Connection refused (os error 111)"),
/// cleaned and bounded. reqwest's own Display would add the URL and a
/// generic prefix; the inner causes carry neither URL nor request data.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text: String = cur
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    text.trim().to_owned()
}

#[cfg(test)]
mod tests;
