//! The provider's data and OAuth rules, without HTTP: applications, PBX
//! users, authorization codes, access and refresh tokens. Every operation
//! takes "now" as an argument, so the rules are plain functions of state.
//! Compact on purpose: 100,000 apps cost a few tens of megabytes.

use std::collections::HashMap;

use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;

use super::model::{AppInfo, SimError};
use crate::clock::UnixMs;

/// An OAuth error answer of `/oauth/token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", d)
    }
    fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", d)
    }
    fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", d)
    }
    fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(400, "unauthorized_client", d)
    }
}

/// The fields of a `POST /oauth/token` request the rules look at.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub refresh_token: Option<String>,
}

/// Tokens handed out by a successful grant.
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
}

struct App {
    secret: String,
    /// `Some` for public apps (the registered redirect URI).
    redirect_uri: Option<String>,
    /// The PBX user a trusted app acts for (public apps act for whoever
    /// authorized them).
    user: Option<u32>,
    revoked: bool,
}

struct CodeRec {
    app: u32,
    user: u32,
    redirect_uri: String,
    expires_at: UnixMs,
}

struct TokenRec {
    app: u32,
    user: u32,
    expires_at: UnixMs,
}

struct RefreshRec {
    app: u32,
    user: u32,
}

#[derive(Default)]
pub(crate) struct Registry {
    apps: Vec<App>,
    by_id: HashMap<String, u32>,
    /// Logins; the user's ids are derived from the index.
    users: Vec<String>,
    users_by_login: HashMap<String, u32>,
    codes: HashMap<String, CodeRec>,
    tokens: HashMap<String, TokenRec>,
    refresh: HashMap<String, RefreshRec>,
    created_via_api: Vec<(String, String)>,
    next_sweep: usize,
}

/// ~30 alphanumerics, like the provider's codes and tokens.
fn random_token() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 30)
}

/// 32 lowercase hex digits, like the provider's App IDs and secrets.
fn random_hex32() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

impl Registry {
    pub fn add_app(
        &mut self,
        client_id: Option<String>,
        client_secret: Option<String>,
        redirect_uri: Option<String>,
        user: Option<u32>,
    ) -> Result<AppInfo, SimError> {
        let client_id = client_id.unwrap_or_else(random_hex32);
        let client_secret = client_secret.unwrap_or_else(random_hex32);
        if client_id.is_empty() || client_secret.is_empty() {
            return Err(SimError::Invalid(
                "client_id and client_secret must not be empty".into(),
            ));
        }
        if let Some(uri) = &redirect_uri {
            if url::Url::parse(uri).is_err() {
                return Err(SimError::Invalid(format!(
                    "redirect_uri {uri:?} is not an absolute URL"
                )));
            }
        }
        if self.by_id.contains_key(&client_id) {
            return Err(SimError::DuplicateClient(client_id));
        }
        let user = match (&redirect_uri, user) {
            (Some(_), _) => None,
            (None, Some(u)) => Some(u),
            (None, None) => Some(self.new_user(None)),
        };
        let idx = u32::try_from(self.apps.len())
            .map_err(|_| SimError::Invalid("too many apps".into()))?;
        self.by_id.insert(client_id.clone(), idx);
        self.apps.push(App {
            secret: client_secret.clone(),
            redirect_uri,
            user,
            revoked: false,
        });
        Ok(AppInfo {
            client_id,
            client_secret,
        })
    }

    /// The user with this login, created on first sight; a fresh one when
    /// `login` is `None`.
    pub fn new_user(&mut self, login: Option<&str>) -> u32 {
        if let Some(l) = login {
            if let Some(&u) = self.users_by_login.get(l) {
                return u;
            }
        }
        let idx = u32::try_from(self.users.len()).unwrap_or(u32::MAX);
        let login = login
            .map(str::to_owned)
            .unwrap_or_else(|| format!("client{}", idx + 1));
        self.users_by_login.insert(login.clone(), idx);
        self.users.push(login);
        idx
    }

    pub fn revoke(&mut self, client_id: &str) -> Result<(), SimError> {
        let idx = *self
            .by_id
            .get(client_id)
            .ok_or_else(|| SimError::UnknownClient(client_id.to_owned()))?;
        if let Some(app) = self.apps.get_mut(idx as usize) {
            app.revoked = true;
        }
        Ok(())
    }

    /// Checks an authorization request for a public app; returns its index.
    pub fn check_authorize(&self, client_id: &str, redirect_uri: &str) -> Result<u32, SimError> {
        let idx = *self
            .by_id
            .get(client_id)
            .ok_or_else(|| SimError::UnknownClient(client_id.to_owned()))?;
        let app = self
            .apps
            .get(idx as usize)
            .ok_or_else(|| SimError::UnknownClient(client_id.to_owned()))?;
        if app.revoked {
            return Err(SimError::Revoked(client_id.to_owned()));
        }
        let registered = app
            .redirect_uri
            .as_deref()
            .ok_or_else(|| SimError::NotPublic(client_id.to_owned()))?;
        if registered != redirect_uri {
            return Err(SimError::RedirectMismatch {
                given: redirect_uri.to_owned(),
                registered: registered.to_owned(),
            });
        }
        Ok(idx)
    }

    /// The user allowed access: issue a single-use code.
    pub fn approve(
        &mut self,
        client_id: &str,
        redirect_uri: &str,
        login: Option<&str>,
        expires_at: UnixMs,
    ) -> Result<String, SimError> {
        let app = self.check_authorize(client_id, redirect_uri)?;
        let user = self.new_user(login.filter(|l| !l.is_empty()));
        let code = random_token();
        self.codes.insert(
            code.clone(),
            CodeRec {
                app,
                user,
                redirect_uri: redirect_uri.to_owned(),
                expires_at,
            },
        );
        Ok(code)
    }

    /// The `/oauth/token` rules. `lifetime_ms` is the real lifetime of the
    /// access token (whatever the answer claims).
    pub fn grant(
        &mut self,
        req: &TokenRequest,
        now: UnixMs,
        lifetime_ms: i64,
    ) -> Result<Issued, OAuthError> {
        let grant_type = req
            .grant_type
            .as_deref()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("Request is missing grant_type."))?;
        if !matches!(
            grant_type,
            "authorization_code" | "client_credentials" | "refresh_token"
        ) {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                format!("grant_type {grant_type:?} is not supported."),
            ));
        }
        let app_idx = self.authenticate(req)?;
        let is_public = self
            .apps
            .get(app_idx as usize)
            .is_some_and(|a| a.redirect_uri.is_some());
        let (user, refresh) = match grant_type {
            "client_credentials" => {
                if is_public {
                    return Err(OAuthError::unauthorized_client(
                        "A public application cannot use grant_type client_credentials.",
                    ));
                }
                let user = self
                    .apps
                    .get(app_idx as usize)
                    .and_then(|a| a.user)
                    .unwrap_or(0);
                (user, false)
            }
            "authorization_code" => {
                if !is_public {
                    return Err(OAuthError::unauthorized_client(
                        "Only a public application can use grant_type authorization_code.",
                    ));
                }
                (self.redeem_code(app_idx, req, now)?, true)
            }
            _ => {
                if !is_public {
                    return Err(OAuthError::unauthorized_client(
                        "Only a public application can use grant_type refresh_token.",
                    ));
                }
                (self.redeem_refresh(app_idx, req)?, true)
            }
        };
        Ok(self.issue(app_idx, user, refresh, now, lifetime_ms))
    }

    fn authenticate(&self, req: &TokenRequest) -> Result<u32, OAuthError> {
        let client_id = req
            .client_id
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                OAuthError::invalid_client("Client authentication failed: no client_id.")
            })?;
        let bad = || OAuthError::invalid_client("Client authentication failed.");
        let idx = *self.by_id.get(client_id).ok_or_else(bad)?;
        let app = self.apps.get(idx as usize).ok_or_else(bad)?;
        if app.revoked {
            return Err(OAuthError::invalid_client(
                "Client authentication failed: the application has been revoked.",
            ));
        }
        if req.client_secret.as_deref() != Some(app.secret.as_str()) {
            return Err(bad());
        }
        Ok(idx)
    }

    fn redeem_code(
        &mut self,
        app: u32,
        req: &TokenRequest,
        now: UnixMs,
    ) -> Result<u32, OAuthError> {
        let code = req
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("Missing code parameter."))?;
        let redirect_uri = req
            .redirect_uri
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("Missing redirect_uri parameter."))?;
        let rec = self
            .codes
            .get(code)
            .ok_or_else(|| OAuthError::invalid_grant("The code is invalid or was already used."))?;
        if rec.app != app {
            return Err(OAuthError::invalid_grant(
                "The code was issued to another client.",
            ));
        }
        if rec.expires_at <= now {
            self.codes.remove(code);
            return Err(OAuthError::invalid_grant("The code has expired."));
        }
        if rec.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "Mismatching redirect URI: redirect_uri does not match the one of the authorization request.",
            ));
        }
        let user = rec.user;
        self.codes.remove(code);
        Ok(user)
    }

    fn redeem_refresh(&mut self, app: u32, req: &TokenRequest) -> Result<u32, OAuthError> {
        let token = req
            .refresh_token
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("Missing refresh_token parameter."))?;
        match self.refresh.get(token) {
            Some(rec) if rec.app == app => {
                let user = rec.user;
                self.refresh.remove(token);
                Ok(user)
            }
            _ => Err(OAuthError::invalid_grant(
                "The refresh token is invalid or was already used.",
            )),
        }
    }

    fn issue(
        &mut self,
        app: u32,
        user: u32,
        refresh: bool,
        now: UnixMs,
        lifetime_ms: i64,
    ) -> Issued {
        self.maybe_sweep(now);
        let access_token = random_token();
        self.tokens.insert(
            access_token.clone(),
            TokenRec {
                app,
                user,
                expires_at: now.plus_ms(lifetime_ms),
            },
        );
        let refresh_token = refresh.then(|| {
            let t = random_token();
            self.refresh.insert(t.clone(), RefreshRec { app, user });
            t
        });
        Issued {
            access_token,
            refresh_token,
        }
    }

    /// Drop expired tokens and codes once the maps have doubled since the
    /// last sweep: memory stays proportional to the live tokens.
    fn maybe_sweep(&mut self, now: UnixMs) {
        if self.tokens.len() + self.codes.len() < self.next_sweep {
            return;
        }
        self.tokens.retain(|_, t| t.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
        self.next_sweep = ((self.tokens.len() + self.codes.len()) * 2).max(4096);
    }

    /// The user a Bearer token acts for, if the token is valid now.
    pub fn bearer_user(&self, token: &str, now: UnixMs) -> Option<u32> {
        let rec = self.tokens.get(token)?;
        let app = self.apps.get(rec.app as usize)?;
        (rec.expires_at > now && !app.revoked).then_some(rec.user)
    }

    pub fn token_valid(&self, token: &str, now: UnixMs) -> bool {
        self.bearer_user(token, now).is_some()
    }

    /// `POST /api/ver1.0/application/`: a trusted app for `user`.
    pub fn create_trusted_for(&mut self, user: u32, name: &str) -> Result<AppInfo, SimError> {
        let info = self.add_app(None, None, None, Some(user))?;
        self.created_via_api
            .push((name.to_owned(), info.client_id.clone()));
        Ok(info)
    }

    pub fn created_apps(&self) -> Vec<(String, String)> {
        self.created_via_api.clone()
    }

    pub fn user_json(&self, user: u32) -> serde_json::Value {
        let login = self
            .users
            .get(user as usize)
            .cloned()
            .unwrap_or_else(|| format!("client{}", user + 1));
        serde_json::json!({
            "access": "full",
            "admin": false,
            "client_id": 12 + i64::from(user),
            "dealer_id": null,
            "extension_group_id": null,
            "extension_id": null,
            "id": 20 + i64::from(user),
            "login": login,
            "timezone": "Europe/Moscow",
        })
    }

    pub fn app_count(&self) -> usize {
        self.apps.len()
    }

    pub fn live_token_count(&self) -> usize {
        self.tokens.len()
    }
}
