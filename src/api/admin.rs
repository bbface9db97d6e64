//! AdminService: tenant management. Handlers translate proto to use-case
//! input and back; the rules live in `tenants`. Every mutation is recorded
//! in the audit log (`audited`); API clients and the audit log itself are
//! handled in `access.rs`. WatchTenantEvents streams tenant events
//! (`tenant_events.rs`, over the `events` use case). Only ADMIN callers get
//! here (see `auth.rs`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::rpc_audit::audited;
use super::streams::{StreamCaps, StreamKind};
use super::tenant_events::{self, EventWatcher};
use super::{access, auth, convert};
use crate::access::Clients;
use crate::audit::{action, Audit};
use crate::events::TenantEvents;
use crate::onboarding::{CompleteInput, Onboarding};
use crate::overview::Overview;
use crate::proto;
use crate::proto::admin_service_server::AdminService;
use crate::tenants::{CreateTenantInput, Tenants, UpdateTenantInput};

pub struct AdminApi {
    tenants: Arc<Tenants>,
    onboarding: Arc<Onboarding>,
    clients: Arc<Clients>,
    audit: Audit,
    overview: Option<Arc<Overview>>,
    events: Option<EventsParts>,
}

/// What WatchTenantEvents needs.
struct EventsParts {
    events: TenantEvents,
    streams: Arc<StreamCaps>,
    shutdown: CancellationToken,
}

pub type TenantEventStream =
    Pin<Box<dyn Stream<Item = Result<proto::TenantEvent, Status>> + Send + 'static>>;

impl AdminApi {
    pub fn new(
        tenants: Arc<Tenants>,
        onboarding: Arc<Onboarding>,
        clients: Arc<Clients>,
        audit: Audit,
    ) -> Self {
        Self {
            tenants,
            onboarding,
            clients,
            audit,
            overview: None,
            events: None,
        }
    }

    /// Enables WatchTenantEvents: streams capped per connection by
    /// `streams`, ended when `shutdown` fires.
    pub fn with_events(
        mut self,
        events: TenantEvents,
        streams: Arc<StreamCaps>,
        shutdown: CancellationToken,
    ) -> Self {
        self.events = Some(EventsParts {
            events,
            streams,
            shutdown,
        });
        self
    }

    /// Enables GetServerStatus.
    pub fn with_overview(mut self, overview: Arc<Overview>) -> Self {
        self.overview = Some(overview);
        self
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type WatchTenantEventsStream = TenantEventStream;

    async fn watch_tenant_events(
        &self,
        request: Request<proto::WatchTenantEventsRequest>,
    ) -> Result<Response<Self::WatchTenantEventsStream>, Status> {
        let caller = auth::caller(&request)?;
        let Some(parts) = &self.events else {
            return Err(Status::unimplemented(
                "WatchTenantEvents is not served by this listener",
            ));
        };
        let permit = parts
            .streams
            .acquire(StreamKind::Events, request.extensions())?;
        let r = request.into_inner();
        let pattern =
            crate::events::pattern(&r.tenant_pattern).map_err(super::error_map::invalid)?;
        // Subscribe before the first read; refusals (bad cursor, pruned
        // events) come back as the call's status, before any message.
        let wake = parts.events.subscribe();
        let first = parts.events.after(r.after_event_id).await?;
        let cursor = first.last().map_or(r.after_event_id, |e| e.event_id);
        let stream = tenant_events::stream(EventWatcher {
            events: parts.events.clone(),
            wake,
            pattern,
            caller,
            clients: self.clients.clone(),
            shutdown: parts.shutdown.clone(),
            first,
            cursor,
            stop_at_end: r.stop_at_end,
            permit,
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_tenant(
        &self,
        request: Request<proto::CreateTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let id = r.tenant_id.clone();
        let result = self
            .tenants
            .create(CreateTenantInput {
                tenant_id: r.tenant_id,
                display_name: r.display_name,
                pbx_base_url: r.pbx_base_url,
                trusted_app: convert::app(r.trusted_app),
                public_app: convert::app(r.public_app),
                redirect_uri: r.redirect_uri,
            })
            .await
            .map_err(Status::from);
        let tenant = audited(
            &self.audit,
            &caller,
            action::TENANT_CREATE,
            Some(&id),
            "",
            result,
        )
        .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn get_tenant(
        &self,
        request: Request<proto::GetTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let tenant = self.tenants.get(&request.into_inner().tenant_id).await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<proto::ListTenantsRequest>,
    ) -> Result<Response<proto::ListTenantsResponse>, Status> {
        let r = request.into_inner();
        let state = convert::state_from_proto(r.state).map_err(super::error_map::invalid)?;
        let page = self.tenants.list(r.page_size, &r.page_token, state).await?;
        Ok(Response::new(proto::ListTenantsResponse {
            tenants: page.tenants.iter().map(convert::tenant).collect(),
            next_page_token: page.next_page_token,
            warnings: page.warnings,
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<proto::UpdateTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let id = r.tenant_id.clone();
        let changed = update_summary(&r);
        let result = self
            .tenants
            .update(UpdateTenantInput {
                tenant_id: r.tenant_id,
                display_name: r.display_name,
                pbx_base_url: r.pbx_base_url,
                trusted_app: convert::app(r.trusted_app),
                enabled: r.enabled,
            })
            .await
            .map_err(Status::from);
        let tenant = audited(
            &self.audit,
            &caller,
            action::TENANT_UPDATE,
            Some(&id),
            &changed,
            result,
        )
        .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn delete_tenant(
        &self,
        request: Request<proto::DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().tenant_id;
        let result = self.tenants.delete(&id).await.map_err(Status::from);
        audited(
            &self.audit,
            &caller,
            action::TENANT_DELETE,
            Some(&id),
            "",
            result,
        )
        .await?;
        Ok(Response::new(()))
    }

    async fn refresh_tenant(
        &self,
        request: Request<proto::RefreshTenantRequest>,
    ) -> Result<Response<proto::AccessToken>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().tenant_id;
        let result = self.tenants.refresh(&id).await.map_err(Status::from);
        let token = audited(
            &self.audit,
            &caller,
            action::TENANT_REFRESH,
            Some(&id),
            "",
            result,
        )
        .await?;
        Ok(Response::new(convert::access_token(&id, &token)))
    }

    async fn begin_authorization(
        &self,
        request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = request.into_inner().tenant_id;
        let result = self.onboarding.begin(&id).await.map_err(Status::from);
        let a = audited(
            &self.audit,
            &caller,
            action::AUTHORIZATION_BEGIN,
            Some(&id),
            "",
            result,
        )
        .await?;
        Ok(Response::new(proto::BeginAuthorizationResponse {
            authorization_url: a.url,
            state: a.state.expose().clone(),
            expires_at: Some(convert::timestamp(a.expires_at)),
        }))
    }

    async fn complete_authorization(
        &self,
        request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let named = (!r.tenant_id.is_empty()).then(|| r.tenant_id.clone());
        let result = self
            .onboarding
            .complete(CompleteInput {
                state: r.state,
                tenant_id: r.tenant_id,
                code: r.code,
            })
            .await
            .map_err(Status::from);
        // With only a state, the tenant is known once the flow answers.
        let tenant_id = match (&result, named) {
            (Ok(t), _) => Some(t.id.to_string()),
            (Err(_), named) => named,
        };
        let tenant = audited(
            &self.audit,
            &caller,
            action::AUTHORIZATION_COMPLETE,
            tenant_id.as_deref(),
            "",
            result,
        )
        .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn create_client(
        &self,
        request: Request<proto::CreateClientRequest>,
    ) -> Result<Response<proto::CreateClientResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        access::create_client(&self.clients, &self.audit, &caller, r)
            .await
            .map(Response::new)
    }

    async fn list_clients(
        &self,
        _request: Request<proto::ListClientsRequest>,
    ) -> Result<Response<proto::ListClientsResponse>, Status> {
        access::list_clients(&self.clients).await.map(Response::new)
    }

    async fn revoke_client(
        &self,
        request: Request<proto::RevokeClientRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        access::revoke_client(&self.clients, &self.audit, &caller, r)
            .await
            .map(Response::new)
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        access::list_audit_events(&self.audit, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_server_status(
        &self,
        request: Request<proto::GetServerStatusRequest>,
    ) -> Result<Response<proto::ServerStatus>, Status> {
        let overview = self
            .overview
            .as_ref()
            .ok_or_else(|| Status::unimplemented("GetServerStatus is not wired in this server"))?;
        let status =
            super::server_status::get(overview, &self.tenants, request.into_inner()).await?;
        Ok(Response::new(status))
    }
}

/// Which fields an UpdateTenant changes, for the audit log (never values
/// of secrets; the URL and name are not secret).
fn update_summary(r: &proto::UpdateTenantRequest) -> String {
    let mut parts = Vec::new();
    if r.display_name.is_some() {
        parts.push("display_name".to_string());
    }
    if let Some(url) = &r.pbx_base_url {
        parts.push(format!("pbx_base_url={url}"));
    }
    if let Some(app) = &r.trusted_app {
        parts.push(format!("trusted_app client_id={}", app.client_id));
    }
    if let Some(enabled) = r.enabled {
        parts.push(format!("enabled={enabled}"));
    }
    parts.join(", ")
}
