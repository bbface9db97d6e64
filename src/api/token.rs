//! TokenService: GetToken, ReportRejectedToken, WatchToken. Each handler
//! checks the caller's tenant scope (first, so an out-of-scope caller learns
//! nothing about the tenant), decodes, calls the broker, encodes. WatchToken
//! streams are built in `watch.rs` and capped per connection
//! (`streams.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::streams::{StreamCaps, StreamKind};
use super::watch::{self, Watcher};
use super::{auth, convert, deadline};
use crate::access::{Caller, Clients};
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::proto;
use crate::proto::token_service_server::TokenService;

pub struct TokenApi {
    broker: Arc<Broker>,
    /// Token ages for the metrics; WatchToken's re-checks.
    clock: SharedClock,
    /// Open WatchToken streams re-check their caller against it.
    clients: Arc<Clients>,
    /// The per-connection cap on WatchToken streams.
    streams: Arc<StreamCaps>,
    /// Ends open WatchToken streams when the daemon drains.
    shutdown: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    /// `[grpc] request_timeout_ms`: with the caller's `grpc-timeout`, how
    /// long ReportRejectedToken may wait for an allowed refresh.
    request_timeout: Option<Duration>,
}

impl TokenApi {
    pub fn new(
        broker: Arc<Broker>,
        clock: SharedClock,
        clients: Arc<Clients>,
        streams: Arc<StreamCaps>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            broker,
            clock,
            clients,
            streams,
            shutdown,
            metrics: None,
            request_timeout: None,
        }
    }

    /// Counts GetToken results and the age of the tokens served.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The server's own per-call timeout (`[grpc] request_timeout_ms`).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The broker's catch-up guard (a replica resumed after a long pause
    /// answers after its next change-feed pass; `broker/catch_up.rs`).
    pub fn catch_up(&self) -> &crate::broker::catch_up::CatchUp {
        self.broker.catch_up()
    }

    /// GetToken's answer when the cache holds a servable token and the
    /// caller may read the tenant, counted like [`TokenService::get_token`]
    /// counts it; `None` (nothing counted, nothing noted) for the full path
    /// (`fast_get_token.rs`).
    pub fn cached_answer(
        &self,
        caller: &Caller,
        request: &proto::GetTokenRequest,
    ) -> Option<proto::AccessToken> {
        if !caller.may_read(&request.tenant_id) {
            return None;
        }
        let token = self
            .broker
            .cached_token(&request.tenant_id, request.min_valid_seconds)?;
        self.count_served(&token);
        Some(convert::access_token(&request.tenant_id, &token))
    }

    /// A GetToken answered OK, and the age of the token it handed out.
    fn count_served(&self, token: &crate::domain::AccessToken) {
        if let Some(m) = &self.metrics {
            m.get_token(tonic::Code::Ok);
            m.token_served(self.clock.now().0 - token.issued_at.0);
        }
    }

    /// Where GetToken results are counted (the interceptor counts the
    /// calls it refuses there too).
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.metrics.clone()
    }
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<proto::AccessToken, Status>> + Send>>;

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn get_token(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<proto::AccessToken>, Status> {
        if let Err(status) = auth::require_tenant(&request, &request.get_ref().tenant_id) {
            if let Some(m) = &self.metrics {
                m.get_token(status.code());
            }
            return Err(status);
        }
        let req = request.into_inner();
        let result = self
            .broker
            .get_token(&req.tenant_id, req.min_valid_seconds)
            .await
            .map_err(Status::from);
        if let Some(m) = &self.metrics {
            match &result {
                Ok(t) => self.count_served(t),
                Err(status) => m.get_token(status.code()),
            }
        }
        let token = result?;
        Ok(Response::new(convert::access_token(&req.tenant_id, &token)))
    }

    async fn report_rejected_token(
        &self,
        request: Request<proto::ReportRejectedTokenRequest>,
    ) -> Result<Response<proto::AccessToken>, Status> {
        auth::require_tenant(&request, &request.get_ref().tenant_id)?;
        let budget = deadline::budget(request.metadata(), self.request_timeout);
        let req = request.into_inner();
        if req.access_token.is_empty() {
            return Err(Status::invalid_argument(
                "access_token: is required (the token the PBX rejected)",
            ));
        }
        let token = self
            .broker
            .report_rejected(&req.tenant_id, &req.access_token, budget)
            .await?;
        Ok(Response::new(convert::access_token(&req.tenant_id, &token)))
    }

    type WatchTokenStream = TokenStream;

    async fn watch_token(
        &self,
        request: Request<proto::WatchTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        auth::require_tenant(&request, &request.get_ref().tenant_id)?;
        let caller = auth::caller(&request)?;
        let permit = self
            .streams
            .acquire(StreamKind::Watch, request.extensions())?;
        let tenant = request.into_inner().tenant_id;
        let watch = self.broker.watch_or_load(&tenant).await?;
        let stream = watch::stream(Watcher {
            tenant,
            caller,
            clients: self.clients.clone(),
            watch,
            shutdown: self.shutdown.clone(),
            clock: self.clock.clone(),
            permit,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
