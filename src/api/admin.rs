//! AdminService: tenant management. Handlers translate proto to use-case
//! input and back; the rules live in `tenants`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::overview::Overview;
use crate::proto;
use crate::proto::admin_service_server::AdminService;
use crate::tenants::{CreateTenantInput, Tenants, UpdateTenantInput};

pub struct AdminApi {
    tenants: Arc<Tenants>,
    overview: Option<Arc<Overview>>,
}

impl AdminApi {
    pub fn new(tenants: Arc<Tenants>) -> Self {
        Self {
            tenants,
            overview: None,
        }
    }

    /// Enables GetServerStatus.
    pub fn with_overview(mut self, overview: Arc<Overview>) -> Self {
        self.overview = Some(overview);
        self
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available in this version of pbx-tokend; register tenants with existing trusted-app credentials (CreateTenant with trusted_app)"
    ))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(
        &self,
        request: Request<proto::CreateTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let r = request.into_inner();
        let tenant = self
            .tenants
            .create(CreateTenantInput {
                tenant_id: r.tenant_id,
                display_name: r.display_name,
                pbx_base_url: r.pbx_base_url,
                trusted_app: convert::app(r.trusted_app),
                public_app: convert::app(r.public_app),
                redirect_uri: r.redirect_uri,
            })
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
        let state = convert::state_from_proto(r.state).map_err(super::status::invalid)?;
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
        let r = request.into_inner();
        let tenant = self
            .tenants
            .update(UpdateTenantInput {
                tenant_id: r.tenant_id,
                display_name: r.display_name,
                pbx_base_url: r.pbx_base_url,
                trusted_app: convert::app(r.trusted_app),
                enabled: r.enabled,
            })
            .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn delete_tenant(
        &self,
        request: Request<proto::DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        self.tenants.delete(&request.into_inner().tenant_id).await?;
        Ok(Response::new(()))
    }

    async fn refresh_tenant(
        &self,
        request: Request<proto::RefreshTenantRequest>,
    ) -> Result<Response<proto::AccessToken>, Status> {
        let id = request.into_inner().tenant_id;
        let token = self.tenants.refresh(&id).await?;
        Ok(Response::new(convert::access_token(&id, &token)))
    }

    async fn begin_authorization(
        &self,
        _request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        Err(not_yet("BeginAuthorization"))
    }

    async fn complete_authorization(
        &self,
        _request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        Err(not_yet("CompleteAuthorization"))
    }

    async fn create_client(
        &self,
        _request: Request<proto::CreateClientRequest>,
    ) -> Result<Response<proto::CreateClientResponse>, Status> {
        Err(not_yet("CreateClient"))
    }

    async fn list_clients(
        &self,
        _request: Request<proto::ListClientsRequest>,
    ) -> Result<Response<proto::ListClientsResponse>, Status> {
        Err(not_yet("ListClients"))
    }

    async fn revoke_client(
        &self,
        _request: Request<proto::RevokeClientRequest>,
    ) -> Result<Response<()>, Status> {
        Err(not_yet("RevokeClient"))
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
