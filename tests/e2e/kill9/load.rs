//! What runs against the daemon while it is being killed: GetToken checkers
//! (a sweep over every tenant after each restart, plus random sampling) and
//! a creator of new trusted-app tenants (the authorization flows are in
//! `flows.rs`), with the state they share; plus seeding and the
//! restart-to-first-token timer. Every answer is judged; what
//! must never happen is recorded as a violation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pbx_sim::{AppInfo, Simulator};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::{self, AppCredentials};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};

use super::process::Setup;
use crate::harness::{now_ms, ts_ms};

/// Counters, all monotonic.
#[derive(Default)]
pub struct Counters {
    pub get_ok: AtomicU64,
    pub get_unavailable: AtomicU64,
    pub get_transport: AtomicU64,
    /// Valid when the daemon answered, expired by the time the answer arrived.
    pub expired_in_transit: AtomicU64,
    /// Checked against the simulator (`token_valid`).
    pub sim_checked: AtomicU64,
    pub sweeps: AtomicU64,
    pub late_created: AtomicU64,
    pub late_failed: AtomicU64,
    pub begins: AtomicU64,
    pub completes: AtomicU64,
    pub completes_ok: AtomicU64,
    pub resumes_by_tenant: AtomicU64,
    pub flows_completed: AtomicU64,
}

pub struct Shared {
    pub channel: Channel,
    pub key: RwLock<Option<String>>,
    pub sim: Simulator,
    pub sim_url: String,
    pub public: AppInfo,
    /// Tenants that must serve a token from now on.
    pub pool: RwLock<Vec<String>>,
    /// Tenants whose creation the daemon acknowledged.
    pub acked: Mutex<HashSet<String>>,
    /// Onboarded tenant -> every trusted client_id it was seen ACTIVE
    /// with, oldest first (re-authorizations add to it).
    pub onboarded: Mutex<HashMap<String, Vec<String>>>,
    /// Cancelled after the last kill: drivers finish their flow and stop.
    pub flows_stop: CancellationToken,
    pub counters: Counters,
    pub violations: Mutex<Vec<String>>,
    pub stop: CancellationToken,
}

impl Shared {
    pub fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.set_timeout(Duration::from_secs(5));
        if let Some(key) = self.key.read().unwrap().as_ref() {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        r
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    pub fn violation(&self, v: String) {
        eprintln!("kill9 VIOLATION: {v}");
        let mut all = self.violations.lock().unwrap();
        if all.len() < 200 {
            all.push(v);
        }
    }

    pub fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_to_pool(&self, id: &str) {
        self.pool.write().unwrap().push(id.to_owned());
    }

    /// One GetToken, judged. Transport errors and UNAVAILABLE are what a
    /// killed daemon looks like; a missing or unservable tenant that must
    /// serve, or an expired token, is a violation.
    pub async fn check_token(&self, id: &str) {
        let sent = now_ms();
        let answer = self
            .tokens()
            .get_token(self.req(proto::GetTokenRequest {
                tenant_id: id.to_owned(),
                min_valid_seconds: 0,
            }))
            .await;
        let received = now_ms();
        let token = match answer {
            Ok(t) => t.into_inner(),
            Err(s) => {
                match s.code() {
                    Code::Unavailable if s.message().contains("no valid token") => {
                        Self::count(&self.counters.get_unavailable)
                    }
                    Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded => Self::count(&self.counters.get_transport),
                    _ => self.violation(format!("GetToken({id}): {s:?}")),
                }
                return;
            }
        };
        Self::count(&self.counters.get_ok);
        let expires = ts_ms(&token.expires_at);
        if expires <= sent {
            self.violation(format!(
                "GetToken({id}) served a token that had expired {} ms before the call",
                sent - expires
            ));
            return;
        }
        if expires <= received {
            Self::count(&self.counters.expired_in_transit);
            return;
        }
        // The daemon counts a token's life from before its request, the
        // simulator from its answer: the daemon's expiry is never later.
        if expires - received > 250 {
            Self::count(&self.counters.sim_checked);
            if !self.sim.issued_token_valid(&token.access_token) {
                self.violation(format!(
                    "GetToken({id}) served a token the PBX does not accept (expires_at in {} ms)",
                    expires - received
                ));
            }
        }
    }
}

/// Random GetToken calls over the pool until stopped.
pub async fn sampler(sh: Arc<Shared>) {
    while !sh.stop.is_cancelled() {
        let id = {
            let pool = sh.pool.read().unwrap();
            if pool.is_empty() {
                None
            } else {
                Some(pool[rand::thread_rng().gen_range(0..pool.len())].clone())
            }
        };
        if let Some(id) = id {
            sh.check_token(&id).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// After each restart (a new value on `restarts`): GetToken for every
/// tenant of the pool, 16 at a time.
pub async fn sweeper(sh: Arc<Shared>, mut restarts: watch::Receiver<u32>) {
    loop {
        tokio::select! {
            _ = sh.stop.cancelled() => return,
            changed = restarts.changed() => if changed.is_err() { return },
        }
        let ids = sh.pool.read().unwrap().clone();
        let run = *restarts.borrow();
        futures::stream::iter(ids)
            .take_while(|_| {
                let same = *restarts.borrow() == run && !sh.stop.is_cancelled();
                async move { same }
            })
            .for_each_concurrent(16, |id| {
                let sh = sh.clone();
                async move { sh.check_token(&id).await }
            })
            .await;
        Shared::count(&sh.counters.sweeps);
    }
}

/// Registers new tenants with fresh trusted apps, one every `every`.
pub async fn late_creator(sh: Arc<Shared>, every: Duration) {
    let mut n = 0u32;
    while !sh.stop.is_cancelled() {
        tokio::time::sleep(every).await;
        n += 1;
        let id = format!("late-{n:05}");
        let app = sh.sim.add_trusted_app(None, None).unwrap();
        let r = sh
            .admin()
            .create_tenant(sh.req(proto::CreateTenantRequest {
                tenant_id: id.clone(),
                pbx_base_url: sh.sim_url.clone(),
                trusted_app: Some(AppCredentials {
                    client_id: app.client_id,
                    client_secret: app.client_secret,
                }),
                ..Default::default()
            }))
            .await;
        match r {
            Ok(_) => {
                sh.acked.lock().unwrap().insert(id.clone());
                sh.add_to_pool(&id);
                Shared::count(&sh.counters.late_created);
            }
            Err(_) => Shared::count(&sh.counters.late_failed),
        }
    }
}

/// After a restart: how long until GetToken answers (one tenant, polled
/// every 5 ms); nothing is recorded when the next kill comes first.
pub async fn time_to_first_token(
    sh: Arc<Shared>,
    out: Arc<Mutex<Vec<u64>>>,
    run: watch::Receiver<u32>,
) {
    let t0 = Instant::now();
    let this = *run.borrow();
    while t0.elapsed() < Duration::from_secs(10) && *run.borrow() == this {
        let r = sh
            .tokens()
            .get_token(sh.req(proto::GetTokenRequest {
                tenant_id: "k9-000000".into(),
                min_valid_seconds: 0,
            }))
            .await;
        if r.is_ok() {
            out.lock().unwrap().push(t0.elapsed().as_millis() as u64);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With caller authentication (issue 4) the first start writes the
/// bootstrap admin key to `<state_dir>/admin.key`: use it when asked to.
pub async fn use_admin_key_if_needed(sh: &Shared, setup: &Setup) {
    for _ in 0..200 {
        let r = sh
            .admin()
            .list_tenants(sh.req(proto::ListTenantsRequest::default()))
            .await;
        match r {
            Ok(_) => return,
            Err(s) if s.code() == Code::Unauthenticated => {
                let key = std::fs::read_to_string(setup.state_dir.join("admin.key")).unwrap();
                *sh.key.write().unwrap() = Some(key.trim().to_owned());
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("the daemon never answered ListTenants");
}

/// Registers `n` tenants with the simulator's k9-NNNNNN apps (no kills yet).
pub async fn seed_tenants(sh: &Arc<Shared>, n: u32) {
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let sh = sh.clone();
            async move {
                let id = format!("k9-{i:06}");
                loop {
                    let r = sh
                        .admin()
                        .create_tenant(sh.req(proto::CreateTenantRequest {
                            tenant_id: id.clone(),
                            pbx_base_url: sh.sim_url.clone(),
                            trusted_app: Some(AppCredentials {
                                client_id: id.clone(),
                                client_secret: format!("k9-secret-{i:06}"),
                            }),
                            ..Default::default()
                        }))
                        .await;
                    match r {
                        Ok(_) => break,
                        Err(s) if s.code() == Code::AlreadyExists => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                sh.acked.lock().unwrap().insert(id.clone());
                sh.add_to_pool(&id);
            }
        })
        .await;
}
