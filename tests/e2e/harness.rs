//! `TestDaemon`: a daemon on 127.0.0.1:0 with its own temp state dir,
//! pointed at a simulator on 127.0.0.1:0; plus small helpers. Its `admin()`
//! and `tokens()` clients carry the bootstrap admin key the daemon wrote to
//! `<state_dir>/admin.key`; `tokens_with_key` / `admin_with_key` use another.

use std::sync::Arc;
use std::time::Duration;

use pbx_sim::{RunningSim, SimConfig, Simulator};
use pbx_tokend::clock::SystemClock;
use pbx_tokend::config::Config;
use pbx_tokend::daemon::Daemon;
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::{self, AppCredentials, CreateTenantRequest, GetTokenRequest};
use tempfile::TempDir;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub channel: Channel,
    /// The bootstrap admin key from `<state_dir>/admin.key`.
    pub admin_key: String,
}

/// Adds `authorization: Bearer <key>` to every call (no key: nothing).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(key: Option<&str>) -> Self {
        Bearer(key.map(|k| format!("Bearer {k}").parse().unwrap()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type AuthChannel = InterceptedService<Channel, Bearer>;
pub type TokenClient = TokenServiceClient<AuthChannel>;
pub type AdminClient = AdminServiceClient<AuthChannel>;

/// The bootstrap admin key of a daemon started as a separate process, once
/// the daemon accepts it: the port is bound (and connectable) a moment
/// before the key is written and registered.
pub async fn wait_for_admin_key(state_dir: &std::path::Path, channel: &Channel) -> String {
    let path = state_dir.join("admin.key");
    eventually(Duration::from_secs(10), "admin.key to be written", || {
        let exists = path.exists();
        async move { exists }
    })
    .await;
    let key = read_admin_key(state_dir);
    eventually(
        Duration::from_secs(10),
        "the admin key to be accepted",
        || {
            let mut admin =
                AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(&key)));
            async move {
                admin
                    .list_clients(proto::ListClientsRequest {})
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    key
}

/// The bootstrap admin key the daemon wrote into `state_dir`.
pub fn read_admin_key(state_dir: &std::path::Path) -> String {
    std::fs::read_to_string(state_dir.join("admin.key"))
        .expect("the daemon writes admin.key on first start")
        .trim()
        .to_owned()
}

/// Settings every test wants: loopback simulator over http, fast backoff.
pub fn test_config(dir: &TempDir) -> Config {
    let mut c = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    c.grpc.listen = "127.0.0.1:0".into();
    c.pbx.allow_insecure_http = true;
    c.pbx.allow_private_addresses = true;
    c.pbx.request_timeout_ms = 3_000;
    c.refresh.backoff_initial_ms = 200;
    c.refresh.backoff_max_ms = 1_000;
    c.refresh.rejected_retry_seconds = 1;
    c.shutdown.drain_timeout_ms = 2_000;
    // Short lame duck: in-process tests stop many daemons.
    c.shutdown.lame_duck_ms = 200;
    c
}

impl TestDaemon {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = test_config(&dir);
        configure(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: Arc<TempDir>, config: Config) -> TestDaemon {
        config.validate().unwrap();
        let listener = tokio::net::TcpListener::bind(&config.grpc.listen)
            .await
            .unwrap();
        let daemon = Daemon::start(config.clone(), listener, Arc::new(SystemClock))
            .await
            .unwrap();
        let url = format!("http://{}", daemon.local_addr());
        // Lazy: a TLS daemon (tests/e2e/tls.rs) does not answer plain HTTP/2.
        let channel = Channel::from_shared(url).unwrap().connect_lazy();
        let admin_key = read_admin_key(&config.state_dir);
        TestDaemon {
            daemon: Some(daemon),
            dir,
            config,
            channel,
            admin_key,
        }
    }

    /// Clean shutdown, then a new daemon on the same state dir.
    pub async fn restart(mut self) -> TestDaemon {
        self.stop().await;
        Self::start_in(self.dir.clone(), self.config.clone()).await
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await.unwrap();
        }
    }

    pub fn tokens(&self) -> TokenClient {
        self.tokens_with_key(Some(&self.admin_key))
    }

    pub fn admin(&self) -> AdminClient {
        self.admin_with_key(Some(&self.admin_key))
    }

    /// TokenService with another key (`None`: no authorization metadata).
    pub fn tokens_with_key(&self, key: Option<&str>) -> TokenClient {
        TokenServiceClient::with_interceptor(self.channel.clone(), Bearer::new(key))
    }

    /// AdminService with another key (`None`: no authorization metadata).
    pub fn admin_with_key(&self, key: Option<&str>) -> AdminClient {
        AdminServiceClient::with_interceptor(self.channel.clone(), Bearer::new(key))
    }

    /// Creates an API client; returns (client_id, api_key).
    pub async fn create_client(
        &self,
        name: &str,
        role: proto::ClientRole,
        patterns: &[&str],
    ) -> (String, String) {
        let r = self
            .admin()
            .create_client(proto::CreateClientRequest {
                name: name.into(),
                role: role as i32,
                tenant_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        (r.client_id, r.api_key)
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
    }

    /// The daemon's gRPC URL, for the CLI binaries.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.daemon.as_ref().unwrap().local_addr())
    }

    /// Registers `tenant` with a new trusted app of `sim`; returns its client_id.
    pub async fn add_tenant(&self, sim: &RunningSim, tenant: &str) -> String {
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        let t = self
            .admin()
            .create_tenant(CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: format!("Tenant {tenant}"),
                pbx_base_url: sim.base_url.clone(),
                trusted_app: Some(AppCredentials {
                    client_id: app.client_id.clone(),
                    client_secret: app.client_secret.clone(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.state, proto::TenantState::Active as i32);
        app.client_id
    }

    pub async fn get_token(&self, tenant: &str) -> Result<proto::AccessToken, tonic::Status> {
        self.tokens()
            .get_token(GetTokenRequest {
                tenant_id: tenant.into(),
                min_valid_seconds: 0,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn tenant(&self, tenant: &str) -> proto::Tenant {
        self.admin()
            .get_tenant(proto::GetTenantRequest {
                tenant_id: tenant.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // A test that failed mid-way leaves the daemon running until the
        // runtime ends; nothing to do synchronously here.
    }
}

pub async fn sim_with_lifetime(secs: u64) -> RunningSim {
    Simulator::new(SimConfig {
        token_lifetime_secs: secs,
        ..SimConfig::default()
    })
    .start()
    .await
    .unwrap()
}

/// A loopback TCP port that was free a moment ago (for the real binary and
/// the simulator, which bind by address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A channel to a `pbx-tokend` child process once it accepts connections on
/// `port` (retrying for up to 20 s), or why not.
///
/// Why the child: a port from `free_port()` was only free a moment ago;
/// another test may bind it first, and then this child exits (address in
/// use) while a connect could reach the other test's daemon. Checking the
/// child before every attempt fails fast and says so, instead of retrying
/// out the timeout or talking to the wrong daemon.
pub async fn try_connect_when_listening(
    port: u16,
    child: &mut std::process::Child,
) -> Result<Channel, String> {
    let url = format!("http://127.0.0.1:{port}");
    let timeout = Duration::from_secs(20);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!(
                    "pbx-tokend exited ({status}) before it listened on port {port} \
                     (another test may have taken the port; see its stderr)"
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("pbx-tokend's state is unknown: {e}")),
        }
        if let Ok(channel) = Channel::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?
            .connect()
            .await
        {
            return Ok(channel);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "pbx-tokend did not listen on port {port} within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `try_connect_when_listening`, failing the test with its message.
pub async fn connect_when_listening(port: u16, child: &mut std::process::Child) -> Channel {
    match try_connect_when_listening(port, child).await {
        Ok(channel) => channel,
        Err(why) => panic!("{why}"),
    }
}

/// A channel to a `pbx-tokend` child process and its bootstrap admin key
/// from `<state_dir>/admin.key`, once the daemon listens and accepts the key.
pub async fn connect_with_admin_key(
    port: u16,
    child: &mut std::process::Child,
    state_dir: &std::path::Path,
) -> (Channel, String) {
    let channel = connect_when_listening(port, child).await;
    let key = wait_for_admin_key(state_dir, &channel).await;
    (channel, key)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn ts_ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
