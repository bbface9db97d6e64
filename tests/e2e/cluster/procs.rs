//! Replicas as real daemon processes (the binary) on one PostgreSQL
//! database: started with a config file of their own, the first one
//! writing the bootstrap admin key and the others sharing its master key;
//! each killed (SIGKILL, after a SIGCONT) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use pbx_sim::RunningSim;
use pbx_tokend::proto;
use tonic::transport::Channel;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// The lease TTL every process replica runs with (the shortest allowed).
pub const TTL_MS: u64 = 3_000;

/// One daemon process; killed (SIGKILL) when dropped.
pub struct Replica {
    pub name: String,
    pub child: Child,
    pub channel: Channel,
    pub state: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` (as `kill` spells it: "-KILL", "-STOP") to `child`.
pub fn signal(child: &Child, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts replica `name` on `db_url`. `key_from`: the state dir whose
/// master.key this one shares (every replica must use the same key).
pub async fn replica(name: &str, db_url: &str, key_from: Option<&Replica>) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    if let Some(first) = key_from {
        std::fs::copy(first.state.join("master.key"), state.join("master.key")).unwrap();
    }
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n\
             [pbx]\nallow_insecure_http = true\nallow_private_addresses = true\nrequest_timeout_ms = 2000\n\
             [refresh]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
             [store]\nbackend = \"postgres\"\npostgres_url = \"{db_url}\"\n\
             [cluster]\nreplica_name = \"{name}\"\nlease_ttl_ms = {TTL_MS}\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            state.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let channel = connect_when_listening(port, &mut child).await;
    Replica {
        name: name.to_owned(),
        child,
        channel,
        state,
        log,
        _dir: dir,
    }
}

pub fn admin(channel: &Channel, key: &str) -> AdminClient {
    proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(key)),
    )
}

pub fn tokens(channel: &Channel, key: &str) -> TokenClient {
    proto::token_service_client::TokenServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(key)),
    )
}

/// What [`replicas`] started.
pub struct Started {
    pub replicas: Vec<Replica>,
    pub admin_key: String,
    /// The trusted app's client_id of each tenant, in `tenants` order.
    pub apps: Vec<String>,
}

/// `names.len()` replicas: the first writes the bootstrap admin key, the
/// tenants are created through it, then the others start (sharing its
/// master key) and load them.
pub async fn replicas(db_url: &str, sim: &RunningSim, names: &[&str], tenants: &[&str]) -> Started {
    let first = replica(names[0], db_url, None).await;
    let key = wait_for_admin_key(&first.state, &first.channel).await;
    let mut apps = Vec::new();
    for tenant in tenants {
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        apps.push(app.client_id.clone());
        admin(&first.channel, &key)
            .create_tenant(proto::CreateTenantRequest {
                tenant_id: (*tenant).into(),
                pbx_base_url: sim.base_url.clone(),
                trusted_app: Some(proto::AppCredentials {
                    client_id: app.client_id,
                    client_secret: app.client_secret,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut started = vec![];
    for name in &names[1..] {
        started.push(replica(name, db_url, Some(&first)).await);
    }
    started.insert(0, first);
    Started {
        replicas: started,
        admin_key: key,
        apps,
    }
}
