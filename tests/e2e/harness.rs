//! `TestDaemon`: a daemon on 127.0.0.1:0 with its own temp state dir,
//! pointed at a simulator on 127.0.0.1:0; plus small helpers.

use std::sync::Arc;
use std::time::Duration;

use pbx_tokend::clock::SystemClock;
use pbx_tokend::config::Config;
use pbx_tokend::daemon::Daemon;
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::{self, AppCredentials, CreateTenantRequest, GetTokenRequest};
use pbx_tokend::sim::{RunningSim, SimConfig, Simulator};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub channel: Channel,
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
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        TestDaemon {
            daemon: Some(daemon),
            dir,
            config,
            channel,
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

    pub fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
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
