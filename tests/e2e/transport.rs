//! TLS and mTLS handshakes on the TCP listener (certificates generated at
//! test time with rcgen), certificate reload on SIGHUP (`Daemon::reload`),
//! the refusal to serve plain gRPC on a non-loopback address, and the local
//! admin socket (ADMIN by peer uid, no key).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pbx_tokend::clock::SystemClock;
use pbx_tokend::daemon::{Daemon, DaemonError};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::{ListAuditEventsRequest, ListTenantsRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::harness::*;

/// A CA that signs server and client certificates.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// (certificate PEM, key PEM) for `name`, as a server or a client.
    fn issue(&self, name: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A TLS channel to the daemon, trusting `ca`, with an optional client identity.
async fn tls_channel(
    d: &TestDaemon,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let addr = d.daemon.as_ref().unwrap().local_addr();
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn list_with(channel: Channel, key: &str) -> Result<(), tonic::Status> {
    AdminServiceClient::with_interceptor(channel, Bearer::new(Some(key)))
        .list_tenants(ListTenantsRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_reloads_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("ca one");
    let (cert, key) = ca1.issue("localhost", true);
    let cert_file = write(certs.path(), "server.pem", &cert);
    let key_file = write(certs.path(), "server.key", &key);
    let d = TestDaemon::start(|c| {
        c.grpc.tls_cert_file = Some(cert_file.clone());
        c.grpc.tls_key_file = Some(key_file.clone());
    })
    .await;

    let channel = tls_channel(&d, &ca1.pem, None).await.unwrap();
    list_with(channel.clone(), &d.admin_key).await.unwrap();
    // TLS does not replace the API key.
    let err = AdminServiceClient::new(channel)
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Plain HTTP/2 to the TLS port gets nowhere.
    let plain = list_with(d.channel.clone(), &d.admin_key).await;
    assert!(plain.is_err());

    // New certificate from another CA; SIGHUP (reload) picks it up for new
    // connections.
    let ca2 = Ca::new("ca two");
    let (cert2, key2) = ca2.issue("localhost", true);
    write(certs.path(), "server.pem", &cert2);
    write(certs.path(), "server.key", &key2);
    d.daemon.as_ref().unwrap().reload(&d.config);
    assert!(tls_channel(&d, &ca1.pem, None).await.is_err());
    let channel = tls_channel(&d, &ca2.pem, None).await.unwrap();
    list_with(channel, &d.admin_key).await.unwrap();

    // A broken file on reload keeps the running certificate.
    write(certs.path(), "server.key", "not a key");
    d.daemon.as_ref().unwrap().reload(&d.config);
    let channel = tls_channel(&d, &ca2.pem, None).await.unwrap();
    list_with(channel, &d.admin_key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_must_finish_their_handshake_in_time() {
    use std::io::Read;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.issue("localhost", true);
    let cert_file = write(certs.path(), "server.pem", &cert);
    let key_file = write(certs.path(), "server.key", &key);
    let d = TestDaemon::start(|c| {
        c.grpc.tls_cert_file = Some(cert_file.clone());
        c.grpc.tls_key_file = Some(key_file.clone());
        c.grpc.handshake_timeout_ms = 300;
    })
    .await;
    // Connects and never starts the TLS handshake: closed by the daemon.
    let mut silent = std::net::TcpStream::connect(d.daemon.as_ref().unwrap().local_addr()).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the daemon closes the connection without a byte");
    // The count may land a moment after the close.
    let metrics = d.daemon.as_ref().unwrap().metrics();
    eventually(
        std::time::Duration::from_secs(5),
        "the refusal counted",
        || {
            let text = metrics.encode().unwrap();
            async move {
                text.contains(
                    "pbx_tokend_grpc_connections_refused_total{reason=\"handshake_timeout\"} 1",
                )
            }
        },
    )
    .await;
    // A real TLS client is not affected.
    let channel = tls_channel(&d, &ca.pem, None).await.unwrap();
    list_with(channel, &d.admin_key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_certificate_from_the_client_ca() {
    let certs = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let (cert, key) = server_ca.issue("localhost", true);
    let cert_file = write(certs.path(), "server.pem", &cert);
    let key_file = write(certs.path(), "server.key", &key);
    let ca_file = write(certs.path(), "clients.pem", &client_ca.pem);
    let d = TestDaemon::start(|c| {
        c.grpc.tls_cert_file = Some(cert_file.clone());
        c.grpc.tls_key_file = Some(key_file.clone());
        c.grpc.tls_client_ca_file = Some(ca_file.clone());
    })
    .await;

    let good = client_ca.issue("billing-service", false);
    let channel = tls_channel(&d, &server_ca.pem, Some(&good)).await.unwrap();
    list_with(channel, &d.admin_key).await.unwrap();

    // pbx-tokenctl over mTLS: CA, client certificate and key from files.
    let client_cert = write(certs.path(), "client.pem", &good.0);
    let client_key = write(certs.path(), "client.key", &good.1);
    let server_ca_file = write(certs.path(), "server-ca.pem", &server_ca.pem);
    let port = d.daemon.as_ref().unwrap().local_addr().port();
    let key_file = d.config.state_dir.join("admin.key");
    let out = tokio::task::spawn_blocking(move || {
        let arg = |p: &Path| p.to_str().unwrap().to_owned();
        std::process::Command::new(env!("CARGO_BIN_EXE_pbx-tokenctl"))
            .args(["--endpoint", &format!("https://127.0.0.1:{port}")])
            .args(["--tls-ca-file", &arg(&server_ca_file)])
            .args(["--tls-cert-file", &arg(&client_cert)])
            .args(["--tls-key-file", &arg(&client_key)])
            .args(["--admin-key-file", &arg(&key_file)])
            .args(["--json", "client", "list"])
            .env_remove("PBX_TOKEND_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No client certificate, or one from another CA: the handshake fails,
    // so no call gets through (a lazy error surfaces on connect or call).
    let stranger = Ca::new("stranger").issue("billing-service", false);
    for identity in [None, Some(&stranger)] {
        let result = match tls_channel(&d, &server_ca.pem, identity).await {
            Ok(channel) => list_with(channel, &d.admin_key).await.map_err(|e| e.code()),
            Err(_) => Err(Code::Unavailable),
        };
        assert!(result.is_err(), "{identity:?} got through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_grpc_is_refused_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    // The config names loopback, but the listener handed over is not.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = Daemon::start(config.clone(), listener, Arc::new(SystemClock))
        .await
        .err()
        .expect("must refuse");
    assert!(matches!(err, DaemonError::InsecureListen(_)), "{err}");
    assert!(err.to_string().contains("insecure_listen_public"), "{err}");

    let mut public = config.clone();
    public.grpc.listen = "0.0.0.0:50051".into();
    let err = public.validate().unwrap_err().to_string();
    assert!(err.contains("grpc.listen"), "{err}");
    public.grpc.insecure_listen_public = true;
    public.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_makes_the_local_owner_admin_without_a_key() {
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("run/admin.sock");
    let mut d = TestDaemon::start(|c| c.grpc.admin_socket = Some(socket.clone())).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let channel = Endpoint::from_shared(format!("unix:{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // No key at all: the peer runs as the daemon's own uid.
    let mut admin = AdminServiceClient::new(channel.clone());
    admin
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap();
    let (client_id, _) = d
        .create_client("via tcp", pbx_tokend::proto::ClientRole::Reader, &["x"])
        .await;
    admin
        .revoke_client(pbx_tokend::proto::RevokeClientRequest { client_id })
        .await
        .unwrap();
    let events = admin
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events[0].action, "client.revoke");
    assert!(
        events[0].client_id.starts_with("local:uid="),
        "{:?}",
        events[0]
    );
    // pbx-tokenctl over the socket, no key anywhere: the audit command.
    let socket_arg = format!("unix:{}", socket.display());
    let cwd = run.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pbx-tokenctl"))
            .args(["--endpoint", &socket_arg, "--json", "audit", "--all"])
            .current_dir(cwd)
            .env_remove("STATE_DIRECTORY")
            .env_remove("PBX_TOKEND_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["action"], "client.revoke");
    // The TCP listener still needs a key.
    let err = d
        .admin_with_key(None)
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    d.stop().await;
    assert!(!socket.exists(), "socket removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_caps_tell_tls_connections_apart() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.issue("localhost", true);
    let cert_file = write(certs.path(), "server.pem", &cert);
    let key_file = write(certs.path(), "server.key", &key);
    let d = TestDaemon::start(|c| {
        c.grpc.tls_cert_file = Some(cert_file.clone());
        c.grpc.tls_key_file = Some(key_file.clone());
        c.grpc.max_unauthenticated_streams_per_connection = 1;
    })
    .await;
    let watch = |channel: Channel| async move {
        tonic_health::pb::health_client::HealthClient::new(channel)
            .watch(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner())
    };
    let one = tls_channel(&d, &ca.pem, None).await.unwrap();
    let _held = watch(one.clone()).await.unwrap();
    let err = watch(one).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("grpc.max_unauthenticated_streams_per_connection"),
        "{}",
        err.message()
    );
    // Another TLS connection has its own allowance.
    let two = tls_channel(&d, &ca.pem, None).await.unwrap();
    let _also = watch(two).await.unwrap();
}
