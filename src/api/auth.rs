//! Authentication and authorization at the gRPC edge. [`Authenticate`] is a
//! tonic interceptor: it resolves `authorization: Bearer <key>` to a
//! [`Caller`] (one SHA-256 and one map lookup, see `access::registry`),
//! refuses READERs on AdminService, and attaches the caller to the request
//! for the handlers. On the local admin socket a peer whose uid is the
//! daemon's own or root (SO_PEERCRED) is ADMIN without a key.
//!
//! Health and reflection are served without this interceptor.
//!
//! Statuses: no or unknown key -> UNAUTHENTICATED; READER on AdminService,
//! or on a tenant outside its patterns -> PERMISSION_DENIED. The scope check
//! looks only at the requested tenant id, before anything else, so a caller
//! outside its scope gets the same answer whether the tenant exists or not.
//! No message ever repeats the presented key.
//!
//! Does not: store clients or keys (`access`).

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::access::{Caller, Clients};

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
}

impl Authenticate {
    /// For the TCP listener: a key is always needed.
    pub fn new(clients: Arc<Clients>, guard: Guard) -> Self {
        Self {
            clients,
            guard,
            local: None,
        }
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

    fn bearer(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "no API key: send `authorization: Bearer <api key>` metadata (an admin creates keys with `pbx-tokenctl client create`; the bootstrap admin key is <state_dir>/admin.key)",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, key) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <api key>`")
            })?;
        self.clients.authenticate(key).ok_or_else(|| {
            Status::unauthenticated(
                "the API key is not valid (unknown or revoked); ask an admin for a key",
            )
        })
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = match self.local_peer(&req) {
            Some(c) => c,
            None => self.bearer(req.metadata())?,
        };
        if self.guard == Guard::Admin && !caller.is_admin() {
            return Err(Status::permission_denied(
                "AdminService needs an ADMIN API key; this key is a READER (TokenService only)",
            ));
        }
        req.extensions_mut().insert(Authenticated(caller));
        Ok(req)
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
