//! `--serve-baseline ADDR`: a bare tonic TokenService answering GetToken from
//! a HashMap, with no auth, no clock, no metrics: the yardstick the
//! benchmark compares pbx-tokend's GetToken against on the same machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use pbx_tokend::proto::token_service_server::{TokenService, TokenServiceServer};
use pbx_tokend::proto::{
    AccessToken, GetTokenRequest, ReportRejectedTokenRequest, WatchTokenRequest,
};
use tonic::{Request, Response, Status};

struct Baseline {
    tokens: Arc<HashMap<String, AccessToken>>,
}

#[tonic::async_trait]
impl TokenService for Baseline {
    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        match self.tokens.get(&request.get_ref().tenant_id) {
            Some(t) => Ok(Response::new(t.clone())),
            None => Err(Status::not_found("unknown tenant")),
        }
    }

    async fn report_rejected_token(
        &self,
        _request: Request<ReportRejectedTokenRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type WatchTokenStream =
        Pin<Box<dyn futures::Stream<Item = Result<AccessToken, Status>> + Send>>;

    async fn watch_token(
        &self,
        _request: Request<WatchTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

pub async fn serve(
    addr: SocketAddr,
    prefix: &str,
    count: u64,
    first: u64,
    width: usize,
) -> Result<()> {
    let now = prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    };
    let tokens: HashMap<String, AccessToken> = (first..first + count)
        .map(|i| {
            let id = super::tenant_id(prefix, i, width);
            let token = AccessToken {
                tenant_id: id.clone(),
                access_token: format!("{:030x}", i),
                token_type: "Bearer".into(),
                issued_at: Some(now),
                expires_at: Some(prost_types::Timestamp {
                    seconds: now.seconds + 3600,
                    nanos: 0,
                }),
            };
            (id, token)
        })
        .collect();
    eprintln!("baseline TokenService with {count} tenants on {addr}");
    tonic::transport::Server::builder()
        .add_service(TokenServiceServer::new(Baseline {
            tokens: Arc::new(tokens),
        }))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
