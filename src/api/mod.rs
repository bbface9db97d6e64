//! The gRPC front end: tonic services that decode a request, call one use
//! case, and encode the answer. The only module that knows protobuf, and
//! (in `error_map.rs`) the one place where errors become gRPC statuses.
//! `fast_get_token.rs` answers GetToken's common case (a cached token)
//! before tonic's router, handing everything else to the services.
//! `auth.rs` authenticates callers (API keys, the local admin socket) and
//! checks tenant scopes; `rpc_audit.rs` records admin RPCs; `serve.rs` runs the
//! listeners with their limits; `accept.rs` is the accept loop (connection
//! cap, handshake deadline); `drain.rs` the lame-duck phase of a shutdown;
//! `streams.rs` caps long-lived streams; `idle.rs` closes idle
//! connections; `watch.rs` is the WatchToken
//! stream; `tls.rs` is the reloadable TLS acceptor;
//! `callback.rs` is the optional OAuth callback listener (plain HTML pages);
//! `metrics_http.rs` is the Prometheus `/metrics` endpoint; `deadline.rs`
//! a call's deadline (`grpc-timeout` cut to `[grpc] request_timeout_ms`).

pub mod accept;
pub mod access;
pub mod admin;
pub mod auth;
pub mod callback;
pub mod convert;
pub mod deadline;
pub mod drain;
pub mod error_map;
pub mod fast_get_token;
pub mod idle;
pub mod metrics_http;
pub mod oversize;
pub mod rpc_audit;
pub mod serve;
pub mod server_status;
pub mod streams;
pub mod tenant_events;
pub mod tls;
pub mod token;
pub mod watch;
pub mod wording;
