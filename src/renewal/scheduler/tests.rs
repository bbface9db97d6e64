use std::sync::atomic::AtomicU32;

use futures::future::BoxFuture;

use super::*;
use crate::broker::BrokerSettings;
use crate::clock::{SharedClock, TokioClock};
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantState};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::NewTenant;

const T0: UnixMs = UnixMs(1_700_000_000_000);

/// `stuck.example.com` never answers; any other host answers at once.
#[derive(Default)]
struct OneStuckHost {
    stuck_calls: AtomicU32,
    other_calls: AtomicU32,
}

impl PbxApi for OneStuckHost {
    fn client_credentials<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            if base.as_str().contains("stuck.example.com") {
                self.stuck_calls.fetch_add(1, Ordering::Relaxed);
                futures::future::pending::<()>().await;
            }
            self.other_calls.fetch_add(1, Ordering::Relaxed);
            Ok(TokenGrant {
                access_token: Secret::new("fresh".into()),
                token_type: "Bearer".into(),
                expires_in_secs: Some(3600),
                refresh_token: None,
            })
        })
    }
}

fn tenant(id: &str, host: &str, renew_at: UnixMs) -> NewTenant {
    NewTenant {
        id: TenantId::parse(id).unwrap(),
        display_name: id.into(),
        base_url: PbxBaseUrl::from_trusted(&format!("https://{host}")).unwrap(),
        state: TenantState::Active,
        trusted_app: Some(AppCredentials {
            client_id: "app".into(),
            client_secret: Secret::new("secret".into()),
        }),
        public_app: None,
        token: Some(AccessToken {
            value: Secret::new("held".into()),
            token_type: "Bearer".into(),
            issued_at: T0.plus_ms(-3_000_000),
            expires_at: T0.plus_ms(600_000),
        }),
        renew_at: Some(renew_at),
        now: T0,
    }
}

/// Starts the scheduler over `tenants` (plus their PBX double).
async fn start(
    tenants: Vec<NewTenant>,
    limits: SchedulerLimits,
) -> (
    Arc<OneStuckHost>,
    Arc<Broker>,
    Arc<Scheduler>,
    CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[1; 32])),
    )
    .unwrap();
    store.insert_tenants(tenants).await.unwrap();
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(OneStuckHost::default());
    let broker = Arc::new(Broker::new(
        clock.clone(),
        store.clone(),
        Arc::new(GatedPbx::new(
            pbx.clone(),
            Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
            Config::default().pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&Config::default()),
    ));
    broker.load().await.unwrap();
    let scheduler = Arc::new(Scheduler::new(broker.clone(), store, clock, limits));
    let shutdown = CancellationToken::new();
    tokio::spawn(scheduler.clone().run(shutdown.clone(), TaskTracker::new()));
    (pbx, broker, scheduler, shutdown, dir)
}

/// A pass whose read filled up with one host's jobs (more than that
/// host could start) looks again at once, skipping the host, instead of
/// waiting for the next notification or MAX_IDLE.
#[tokio::test(start_paused = true)]
async fn a_pass_cut_short_by_one_host_looks_again_at_once() {
    let mut tenants: Vec<NewTenant> = (0..10)
        .map(|i| {
            tenant(
                &format!("stuck{i:02}"),
                "stuck.example.com",
                T0.plus_ms(-100 + i),
            )
        })
        .collect();
    tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(-1)));
    let limits = SchedulerLimits {
        max_concurrent: 4,
        max_concurrent_per_host: 2,
        per_host_rps: 20,
    };
    let (pbx, _broker, _scheduler, shutdown, _dir) = start(tenants, limits).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pbx.other_calls.load(Ordering::Relaxed), 1);
    shutdown.cancel();
}

/// Regression: the scheduler read the first 512 due jobs of the whole
/// queue, so a host with a larger backlog (here one that never answers)
/// hid every other host's due job behind it until the backlog drained.
#[tokio::test(start_paused = true)]
async fn a_host_with_a_backlog_never_hides_another_hosts_due_job() {
    let mut tenants: Vec<NewTenant> = (0..1_000)
        .map(|i| tenant(&format!("stuck{i:04}"), "stuck.example.com", T0.plus_ms(-i)))
        .collect();
    tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(2_000)));
    let limits = SchedulerLimits {
        max_concurrent: 64,
        max_concurrent_per_host: 16,
        per_host_rps: 20,
    };
    let (pbx, broker, scheduler, shutdown, _dir) = start(tenants, limits).await;

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        pbx.other_calls.load(Ordering::Relaxed),
        1,
        "quiet host not renewed"
    );
    let token = broker.get_token("quiet", 10).await.unwrap();
    assert_eq!(token.value.expose().as_str(), "fresh");
    // The stuck host got at most its limiter's concurrency, and the
    // scheduler never held more than its per-host cap for it.
    assert!(pbx.stuck_calls.load(Ordering::Relaxed) <= 6);
    assert_eq!(scheduler.status().in_flight.load(Ordering::Relaxed), 16);
    shutdown.cancel();
}

/// Regression (found by the full-size simulation): with the default
/// caps, 64 in all and 16 per host, four hosts that stopped answering
/// took every global permit (16 workers each, 10 of them only waiting
/// for the host's limiter), and a healthy host's renewals waited until
/// one of them recovered.
#[tokio::test(start_paused = true)]
async fn hosts_that_never_answer_leave_room_for_a_healthy_one() {
    let mut tenants: Vec<NewTenant> = Vec::new();
    for h in 0..8 {
        for i in 0..50 {
            tenants.push(tenant(
                &format!("stuck{h}x{i:02}"),
                &format!("h{h}.stuck.example.com"),
                T0.plus_ms(-100 + i),
            ));
        }
    }
    tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(-1)));
    let (pbx, _broker, scheduler, shutdown, _dir) =
        start(tenants, SchedulerLimits::from_config(&Config::default())).await;

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        pbx.other_calls.load(Ordering::Relaxed),
        1,
        "healthy host starved"
    );
    // Each stuck host holds only what its limiter lets through at once.
    assert_eq!(scheduler.status().in_flight.load(Ordering::Relaxed), 8 * 6);
    shutdown.cancel();
}

/// A restarted replica of a running cluster leaves alone the overdue jobs
/// of hosts another replica holds the lease of (it is renewing them); the
/// other hosts' overdue jobs are spread at half the host's rate.
#[tokio::test]
async fn spreading_overdue_jobs_leaves_hosts_renewed_elsewhere_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[1; 32])),
    )
    .unwrap();
    let mut tenants = Vec::new();
    for host in ["held.example.com", "free.example.com"] {
        for i in 0..30 {
            tenants.push(tenant(
                &format!("{}{i:02}", &host[..4]),
                host,
                T0.plus_ms(-1_000 - i),
            ));
        }
    }
    store.insert_tenants(tenants).await.unwrap();
    // 20 requests/s: 10/s for overdue jobs, so 30 of them need 3 s.
    let moved = spread_overdue_with(
        &store,
        T0,
        20,
        &["held.example.com".to_owned()],
        &Jitter::seeded(7),
    )
    .await
    .unwrap();
    assert_eq!(moved, 30);
    let due_now = store.due_jobs(T0, u32::MAX).await.unwrap();
    let held = due_now.iter().filter(|j| j.host == "held.example.com");
    assert_eq!(held.count(), 30);
    // The first free-host job may fall at T0 itself (no jitter drawn).
    assert!(due_now.len() <= 31, "{due_now:?}");
    let later = store.due_jobs(T0.plus_ms(3_000), u32::MAX).await.unwrap();
    assert_eq!(later.len(), 60);
}
