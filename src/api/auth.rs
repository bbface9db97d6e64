//! Authentication and authorization at the gRPC edge. [`Authenticate`] is a
//! tonic interceptor: it resolves `authorization: Bearer <key>` to a
//! [`Caller`] (one SHA-256 and one map lookup, see `access::registry`),
//! refuses READERs on AdminService, and attaches the caller to the request
//! for the handlers. On the local admin socket a peer whose uid is the
//! daemon's own or root (SO_PEERCRED) is ADMIN without a key.
//!
//! Health and reflection are served without this interceptor.
//!
//! Statuses: no or unknown key, or more than one `authorization` entry (which
//! one would count is ambiguous) -> UNAUTHENTICATED; READER on AdminService,
//! or on a tenant outside its patterns -> PERMISSION_DENIED. The scope check
//! looks only at the requested tenant id, before anything else, so a caller
//! outside its scope gets the same answer whether the tenant exists or not.
//! No message ever repeats the presented key.
//!
//! GetToken calls it refuses are counted in `get_token_requests_total`
//! (by code) like those the handler answers: [`SplitGetToken`] routes
//! GetToken through an interceptor that counts, so the other methods pay
//! nothing and the count costs one relaxed atomic add.
//!
//! Does not: store clients or keys (`access`).

use std::sync::Arc;

use tonic::codegen::{http, Context, Poll, Service};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
use tonic::service::Interceptor;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::access::{Caller, Clients};
use crate::metrics::Metrics;

/// The authenticated caller, in the request's extensions.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Caller>);

/// Which service an interceptor guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// TokenService: any valid key; scopes are checked per tenant.
    Tokens,
    /// AdminService: ADMIN only.
    Admin,
}

/// Peers of the local admin socket that are ADMIN without a key.
#[derive(Clone, Debug)]
struct LocalPeers {
    own_uid: u32,
    own: Arc<Caller>,
    root: Arc<Caller>,
}

#[derive(Clone)]
pub struct Authenticate {
    clients: Arc<Clients>,
    guard: Guard,
    local: Option<LocalPeers>,
    /// Set for the GetToken route: refusals count as GetToken results.
    get_token_metrics: Option<Arc<Metrics>>,
}

impl Authenticate {
    /// For the TCP listener: a key is always needed.
    pub fn new(clients: Arc<Clients>, guard: Guard) -> Self {
        Self {
            clients,
            guard,
            local: None,
            get_token_metrics: None,
        }
    }

    /// Counts every refusal in `metrics` as a GetToken result (for the
    /// interceptor [`SplitGetToken`] puts in front of GetToken only).
    pub fn counting_get_token(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.get_token_metrics = metrics;
        self
    }

    /// For the local admin socket: peers running as `own_uid` or root are
    /// ADMIN; other peers need a key as on TCP.
    pub fn local_socket(clients: Arc<Clients>, guard: Guard, own_uid: u32) -> Self {
        Self {
            clients,
            guard,
            local: Some(LocalPeers {
                own_uid,
                own: Arc::new(Caller::local_admin(own_uid)),
                root: Arc::new(Caller::local_admin(0)),
            }),
            get_token_metrics: None,
        }
    }

    fn local_peer<T>(&self, req: &Request<T>) -> Option<Arc<Caller>> {
        let local = self.local.as_ref()?;
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()?
            .peer_cred
            .as_ref()?
            .uid();
        if uid == local.own_uid {
            Some(local.own.clone())
        } else if uid == 0 {
            Some(local.root.clone())
        } else {
            None
        }
    }

    fn bearer(&self, value: Option<&MetadataValue<Ascii>>) -> Result<Arc<Caller>, Status> {
        let Some(value) = value else {
            return Err(Status::unauthenticated(
                "no API key: send `authorization: Bearer <api key>` metadata (an admin creates keys with `pbx-tokenctl client create`; the bootstrap admin key is <state_dir>/admin.key)",
            ));
        };
        let key = value.to_str().ok().and_then(bearer_key).ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <api key>`")
        })?;
        self.clients.authenticate(key).ok_or_else(|| {
            Status::unauthenticated(
                "the API key is not valid (unknown or revoked); ask an admin for a key",
            )
        })
    }
}

impl Authenticate {
    fn check(&self, req: &mut Request<()>) -> Result<(), Status> {
        // Before anything else, also for trusted local peers: with two
        // entries, which one counts would depend on the proxy or library
        // in between.
        let mut entries = req.metadata().get_all("authorization").iter();
        let first = entries.next();
        if entries.next().is_some() {
            return Err(Status::unauthenticated(
                "more than one `authorization` metadata entry: send exactly one, `authorization: Bearer <api key>`",
            ));
        }
        let caller = match self.local_peer(req) {
            Some(c) => c,
            None => self.bearer(first)?,
        };
        if self.guard == Guard::Admin && !caller.is_admin() {
            return Err(Status::permission_denied(
                "AdminService needs an ADMIN API key; this key is a READER (TokenService only)",
            ));
        }
        req.extensions_mut().insert(Authenticated(caller));
        Ok(())
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&mut req) {
            Ok(()) => Ok(req),
            Err(status) => {
                if let Some(m) = &self.get_token_metrics {
                    m.get_token(status.code());
                }
                Err(status)
            }
        }
    }
}

/// The key of an `authorization: Bearer <key>` value (scheme in any case).
pub fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The HTTP/2 path of TokenService.GetToken.
pub const GET_TOKEN_PATH: &str = "/pbxtokend.v1.TokenService/GetToken";

/// TokenService with GetToken routed to its own copy of the service (whose
/// interceptor counts refusals) and the other methods to the plain one.
/// Both copies share the same handler (`TokenServiceServer` is an `Arc`).
#[derive(Clone)]
pub struct SplitGetToken<S> {
    get_token: S,
    other: S,
}

impl<S> SplitGetToken<S> {
    pub fn new(get_token: S, other: S) -> Self {
        Self { get_token, other }
    }
}

impl<S: NamedService> NamedService for SplitGetToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for SplitGetToken<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both are tonic services that are always ready; ask both anyway.
        match self.get_token.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.other.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == GET_TOKEN_PATH {
            self.get_token.call(req)
        } else {
            self.other.call(req)
        }
    }
}

/// The caller the interceptor attached. Fails closed: a request that did
/// not pass the interceptor is unauthenticated.
pub fn caller<T>(req: &Request<T>) -> Result<Arc<Caller>, Status> {
    req.extensions()
        .get::<Authenticated>()
        .map(|a| a.0.clone())
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// PERMISSION_DENIED unless the caller may read `tenant`. Decided on the
/// name alone (existence is not looked at), and the message does not repeat
/// the requested id.
pub fn require_tenant<T>(req: &Request<T>, tenant: &str) -> Result<(), Status> {
    let allowed = req
        .extensions()
        .get::<Authenticated>()
        .is_some_and(|a| a.0.may_read(tenant));
    if allowed {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "this API key may not read that tenant (none of its tenant patterns matches the id); ask an admin for a key that covers it",
        ))
    }
}

#[cfg(test)]
mod tests {
    use tonic::server::NamedService;

    use super::GET_TOKEN_PATH;
    use crate::api::token::TokenApi;
    use crate::proto::token_service_server::TokenServiceServer;

    #[test]
    fn the_get_token_path_is_the_generated_one() {
        let name = <TokenServiceServer<TokenApi> as NamedService>::NAME;
        assert_eq!(GET_TOKEN_PATH, format!("/{name}/GetToken"));
    }
}
