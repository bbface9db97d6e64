//! Streams and callers (issue 25): a WatchToken stream ends when its key is
//! revoked or its tenant is disabled or deleted, with a status that says
//! why; ambiguous credentials are refused on both listeners; refused
//! GetToken calls are counted; health/reflection and WatchToken streams
//! are capped, so unary calls on a connection always find room.

use std::time::Duration;

use pbx_tokend::proto::{
    self, ClientRole, DeleteTenantRequest, GetTokenRequest, RefreshTenantRequest,
    RevokeClientRequest, UpdateTenantRequest, WatchTokenRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::harness::*;

/// Long enough for a hang to be a failure, never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

async fn watch(
    client: &mut TokenClient,
    tenant: &str,
) -> Result<Streaming<proto::AccessToken>, Status> {
    client
        .watch_token(WatchTokenRequest {
            tenant_id: tenant.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The stream's next item: a token, or the status it ended with.
async fn next(stream: &mut Streaming<proto::AccessToken>) -> Result<proto::AccessToken, Status> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(token))) => Ok(token),
        Ok(Ok(None)) => Err(Status::ok("the stream ended with OK")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no message and no end within {PATIENCE:?}"),
    }
}

async fn refresh(d: &TestDaemon, tenant: &str) -> proto::AccessToken {
    d.admin()
        .refresh_tenant(RefreshTenantRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_open_watch_stream() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme-1").await;
    let (client_id, key) = d
        .create_client("svc", ClientRole::Reader, &["acme-*"])
        .await;
    let mut reader = d.tokens_with_key(Some(&key));
    let mut stream = watch(&mut reader, "acme-1").await.unwrap();
    let first = next(&mut stream).await.unwrap();
    let second = refresh(&d, "acme-1").await;
    assert_eq!(
        next(&mut stream).await.unwrap().access_token,
        second.access_token
    );
    assert_ne!(first.access_token, second.access_token);
    // Another reader's stream on the same tenant is not affected.
    let (_, other_key) = d
        .create_client("svc2", ClientRole::Reader, &["acme-*"])
        .await;
    let mut other = watch(&mut d.tokens_with_key(Some(&other_key)), "acme-1")
        .await
        .unwrap();
    next(&mut other).await.unwrap();

    d.admin()
        .revoke_client(RevokeClientRequest { client_id })
        .await
        .unwrap();
    // Tokens issued after the revocation never reach the revoked key.
    let third = refresh(&d, "acme-1").await;
    let end = next(&mut stream).await.unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("revoked"), "{}", end.message());
    assert!(stream.message().await.unwrap_or(None).is_none());
    assert_eq!(
        next(&mut other).await.unwrap().access_token,
        third.access_token
    );
    // And a new stream with the revoked key is refused outright.
    let err = watch(&mut reader, "acme-1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_deleting_a_tenant_ends_its_streams_with_a_reason() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "off").await;
    d.add_tenant(&sim, "gone").await;
    let mut off = watch(&mut d.tokens(), "off").await.unwrap();
    let mut gone = watch(&mut d.tokens(), "gone").await.unwrap();
    next(&mut off).await.unwrap();
    next(&mut gone).await.unwrap();

    // A no-op update does not end anything; disabling does.
    d.admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "off".into(),
            display_name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    d.admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "off".into(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = next(&mut off).await.unwrap_err();
    assert_eq!(end.code(), Code::FailedPrecondition, "{end:?}");
    assert!(
        end.message().contains("disabled") && end.message().contains("stream ends"),
        "{}",
        end.message()
    );

    d.admin()
        .delete_tenant(DeleteTenantRequest {
            tenant_id: "gone".into(),
        })
        .await
        .unwrap();
    let end = next(&mut gone).await.unwrap_err();
    assert_eq!(end.code(), Code::NotFound, "{end:?}");
    assert!(end.message().contains("was deleted"), "{}", end.message());

    // Enabled again: a new stream works.
    d.admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "off".into(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut again = watch(&mut d.tokens(), "off").await.unwrap();
    next(&mut again).await.unwrap();
}

/// Sends the bootstrap key twice as two `authorization` entries.
fn twice(key: &str) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    move |mut req| {
        req.metadata_mut().append("authorization", value.clone());
        req.metadata_mut().append("authorization", value.clone());
        Ok(req)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_entries_are_refused_on_both_listeners() {
    let sim = sim_with_lifetime(3600).await;
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("admin.sock");
    let d = TestDaemon::start(|c| c.grpc.admin_socket = Some(socket.clone())).await;
    d.add_tenant(&sim, "acme").await;
    let local = Endpoint::from_shared(format!("unix:{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for channel in [d.channel.clone(), local] {
        let mut tokens = proto::token_service_client::TokenServiceClient::with_interceptor(
            channel.clone(),
            twice(&d.admin_key),
        );
        let err = tokens
            .get_token(GetTokenRequest {
                tenant_id: "acme".into(),
                min_valid_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(
            err.message().contains("more than one `authorization`"),
            "{}",
            err.message()
        );
        let mut admin = proto::admin_service_client::AdminServiceClient::with_interceptor(
            channel,
            twice(&d.admin_key),
        );
        let err = admin
            .list_tenants(proto::ListTenantsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // One entry still works.
    d.get_token("acme").await.unwrap();
}

async fn scrape(d: &TestDaemon) -> String {
    let addr = d.daemon.as_ref().unwrap().metrics_addr().unwrap();
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_get_token_calls_are_counted_by_code() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.metrics.listen = Some("127.0.0.1:0".into())).await;
    d.add_tenant(&sim, "acme-1").await;
    let (_, key) = d
        .create_client("svc", ClientRole::Reader, &["acme-*"])
        .await;
    let get = |tenant: &str| GetTokenRequest {
        tenant_id: tenant.into(),
        min_valid_seconds: 0,
    };
    for _ in 0..3 {
        let e = d.tokens_with_key(None).get_token(get("acme-1")).await;
        assert_eq!(e.unwrap_err().code(), Code::Unauthenticated);
    }
    let e = d
        .tokens_with_key(Some("ptk_not_a_key"))
        .get_token(get("acme-1"))
        .await;
    assert_eq!(e.unwrap_err().code(), Code::Unauthenticated);
    for _ in 0..2 {
        let e = d.tokens_with_key(Some(&key)).get_token(get("other")).await;
        assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
    }
    d.tokens_with_key(Some(&key))
        .get_token(get("acme-1"))
        .await
        .unwrap();
    // Refused calls to other methods are not GetToken results.
    let e = watch(&mut d.tokens_with_key(None), "acme-1").await;
    assert_eq!(e.unwrap_err().code(), Code::Unauthenticated);

    let text = scrape(&d).await;
    let series = |code: &str| format!("pbx_tokend_get_token_requests_total{{result=\"{code}\"}}");
    assert_eq!(sample(&text, &series("unauthenticated")), 4, "{text}");
    assert_eq!(sample(&text, &series("permission_denied")), 2, "{text}");
    assert_eq!(sample(&text, &series("ok")), 1, "{text}");
}

async fn connection(d: &TestDaemon) -> Channel {
    Endpoint::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health_watch(channel: &Channel) -> Result<Streaming<HealthCheckResponse>, Status> {
    HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_streams_are_capped_per_connection_and_in_total() {
    let d = TestDaemon::start(|c| {
        c.metrics.listen = Some("127.0.0.1:0".into());
        c.grpc.max_unauthenticated_streams_per_connection = 2;
        c.grpc.max_unauthenticated_streams = 3;
    })
    .await;
    let a = connection(&d).await;
    let b = connection(&d).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = health_watch(&a).await.unwrap();
        s.message().await.unwrap().unwrap();
        open.push(s);
    }
    let err = health_watch(&a).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("grpc.max_unauthenticated_streams_per_connection = 2"),
        "{}",
        err.message()
    );
    // Unary health checks are not streams: still answered.
    HealthClient::new(a.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    let mut s = health_watch(&b).await.unwrap();
    s.message().await.unwrap().unwrap();
    let err = health_watch(&b).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("grpc.max_unauthenticated_streams = 3"),
        "{}",
        err.message()
    );
    // A stream that ends gives its place back.
    open.pop();
    eventually(PATIENCE, "a freed place to be reused", || {
        let b = b.clone();
        async move { health_watch(&b).await.is_ok() }
    })
    .await;
    let text = scrape(&d).await;
    for (limit, at_least) in [("per_connection", 1), ("total", 1)] {
        let series = format!(
            "pbx_tokend_streams_refused_total{{kind=\"unauthenticated\",limit=\"{limit}\"}}"
        );
        assert!(sample(&text, &series) >= at_least, "{series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_leave_room_for_unary_calls_on_their_connection() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| {
        c.grpc.max_concurrent_streams = 8;
        c.grpc.max_watch_streams_per_connection = 4;
        c.grpc.max_unauthenticated_streams_per_connection = 2;
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    let conn = connection(&d).await;
    let mut tokens = proto::token_service_client::TokenServiceClient::with_interceptor(
        conn.clone(),
        Bearer::new(Some(&d.admin_key)),
    );
    let mut admin = proto::admin_service_client::AdminServiceClient::with_interceptor(
        conn.clone(),
        Bearer::new(Some(&d.admin_key)),
    );
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = watch(&mut tokens, "acme").await.unwrap();
        next(&mut s).await.unwrap();
        open.push(s);
    }
    let err = watch(&mut tokens, "acme").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("grpc.max_watch_streams_per_connection = 4"),
        "{}",
        err.message()
    );
    // Unary calls on the same connection are not starved by the streams.
    let fresh = tokio::time::timeout(
        PATIENCE,
        admin.refresh_tenant(RefreshTenantRequest {
            tenant_id: "acme".into(),
        }),
    )
    .await
    .expect("RefreshTenant is not stuck behind the streams")
    .unwrap()
    .into_inner();
    for s in &mut open {
        assert_eq!(next(s).await.unwrap().access_token, fresh.access_token);
    }
    // Another connection has its own allowance.
    let mut elsewhere = watch(&mut d.tokens(), "acme").await.unwrap();
    next(&mut elsewhere).await.unwrap();
    // A closed stream frees its place.
    open.pop();
    eventually(PATIENCE, "a freed WatchToken place to be reused", || {
        let mut tokens = tokens.clone();
        async move { watch(&mut tokens, "acme").await.is_ok() }
    })
    .await;
}
