//! Start-up above the engine: the API clients, the use cases (tenants,
//! onboarding, health, overview) and the transports, each a short named
//! step; `daemon.rs` runs them after `Engine::start`. Split from
//! `daemon.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::transports::{self, Transport};
use super::{allowed_hosts, capacity_settings, tcp, DaemonError};
use crate::access::Clients;
use crate::api::accept::AcceptSettings;
use crate::api::admin::AdminApi;
use crate::api::drain::Drain;
use crate::api::serve::{self, Services};
use crate::api::streams::StreamCaps;
use crate::api::tls::ReloadableTls;
use crate::api::token::TokenApi;
use crate::audit::Audit;
use crate::broker::catch_up::CatchUp;
use crate::clock::SharedClock;
use crate::cluster::ChangeSync;
use crate::config::Config;
use crate::engine::Engine;
use crate::events::{self, TenantEvents};
use crate::health::{Health, HealthGrpc};
use crate::metrics::Metrics;
use crate::onboarding::{CrashHook, Onboarding, OnboardingParts, OnboardingSettings};
use crate::overview::{Overview, OverviewParts};
use crate::pbx::gated::GatedOnboardingPbx;
use crate::pbx::PbxOnboardingApi;
use crate::replicas::ReplicaConfirm;
use crate::tenants::{Tenants, TenantsParts};

/// The use cases and transports, built over a running engine.
pub(super) struct Serving {
    pub(super) tenants: Arc<Tenants>,
    pub(super) onboarding: Arc<Onboarding>,
    pub(super) clients: Arc<Clients>,
    pub(super) health: Arc<Health>,
    pub(super) overview: Arc<Overview>,
    pub(super) drain: Arc<Drain>,
    pub(super) callback_addr: Option<std::net::SocketAddr>,
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
}

/// The listeners bound before anything is spawned.
pub(super) struct Listeners {
    pub(super) grpc: TcpListener,
    pub(super) admin_socket: Option<(tokio::net::UnixListener, PathBuf)>,
    pub(super) tls: Option<Arc<ReloadableTls>>,
}

/// Everything above the engine: API clients, use cases, the health probe
/// and the transports (pushed onto `transports` as they start).
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    config: &Config,
    engine: &mut Engine,
    clock: &SharedClock,
    onboarding_pbx: Arc<dyn PbxOnboardingApi>,
    metrics: &Arc<Metrics>,
    listeners: Listeners,
    serving: &CancellationToken,
    transports: &mut Vec<Transport>,
) -> Result<Serving, DaemonError> {
    let audit = Audit::new(engine.store().clone(), clock.clone());
    let clients = load_clients(config, engine, clock, &audit).await?;
    let replica = replica_name(config, &listeners.grpc);
    start_cache_sync(
        engine,
        clock,
        &clients,
        metrics,
        replica.clone(),
        config.cluster.lease_ttl_ms,
    );
    let tenants = build_tenants(config, engine).await;
    let confirm = || {
        ReplicaConfirm::new(
            engine.store().clone(),
            clock.clone(),
            replica.clone(),
            config.cluster.lease_ttl_ms,
        )
    };
    tenants.set_confirm(confirm());
    clients.set_confirm(confirm());
    let onboarding = start_onboarding(config, engine, onboarding_pbx);
    onboarding.void_stale_claims().await;
    let (health, health_service) = start_health(config, engine, clock, serving).await;
    let overview = Arc::new(Overview::new(OverviewParts {
        broker: engine.broker().clone(),
        store: engine.store().clone(),
        clock: clock.clone(),
        limiter: engine.limiter().clone(),
        scheduler: engine.scheduler().status(),
        health: health.clone(),
        backup_dir: config.backup_dir(),
        duty: engine.duty().cloned(),
        replica_name: replica.clone(),
    }));
    let streams = Arc::new(StreamCaps::new(
        &config.grpc,
        clock.clone(),
        Some(metrics.clone()),
    ));
    let drain = Arc::new(Drain::default());
    let services = Services {
        tokens: Arc::new(
            TokenApi::new(
                engine.broker().clone(),
                clock.clone(),
                clients.clone(),
                streams.clone(),
                serving.clone(),
            )
            .with_metrics(metrics.clone())
            .with_request_timeout(Duration::from_millis(config.grpc.request_timeout_ms)),
        ),
        admin: Arc::new(
            AdminApi::new(
                tenants.clone(),
                onboarding.clone(),
                clients.clone(),
                audit.clone(),
            )
            .with_overview(overview.clone())
            .with_events(
                TenantEvents::new(engine.store().clone()),
                streams.clone(),
                serving.clone(),
            ),
        ),
        clients: clients.clone(),
        health: health_service,
        streams,
        drain: drain.clone(),
    };
    serve_grpc(config, &services, listeners, metrics, serving, transports)?;
    transports.push(Transport::spawned(
        "tenant event counter",
        tokio::spawn({
            let counting =
                events::count_events(engine.store().clone(), metrics.clone(), serving.clone());
            async move {
                counting.await;
                Ok(())
            }
        }),
    ));
    let callback_addr =
        match transports::serve_callback(config, &onboarding, &audit, serving).await? {
            Some((at, t)) => {
                transports.push(t);
                Some(at)
            }
            None => None,
        };
    let metrics_addr = match transports::serve_metrics(config, metrics, &overview, serving).await? {
        Some((at, t)) => {
            transports.push(t);
            Some(at)
        }
        None => None,
    };
    Ok(Serving {
        tenants,
        onboarding,
        clients,
        health,
        overview,
        drain,
        callback_addr,
        metrics_addr,
    })
}

/// This replica's name: `[cluster] replica_name`, or host name and the
/// port actually bound.
pub(super) fn replica_name(config: &Config, grpc: &TcpListener) -> String {
    let listen = grpc
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.grpc.listen.clone());
    config.cluster.replica_name(&listen)
}

/// Several replicas on one database: this one's caches follow the change
/// feed (`cluster/`). Nothing on SQLite.
fn start_cache_sync(
    engine: &mut Engine,
    clock: &SharedClock,
    clients: &Arc<Clients>,
    metrics: &Arc<Metrics>,
    name: String,
    lease_ttl_ms: u64,
) {
    let sync = ChangeSync::new(
        engine.store().clone(),
        engine.broker().clone(),
        clients.clone(),
        clock.clone(),
        name,
        engine.change_position(),
    );
    if let Some((sync, hints)) = sync {
        engine
            .broker()
            .catch_up()
            .enable(CatchUp::stale_after(lease_ttl_ms));
        let sync = sync.with_metrics(metrics.clone());
        let cancel = engine.background().clone();
        // On the serving runtime, not the niced background one: a tick
        // late only because renewals are busy is not a pause.
        tokio::spawn(crate::cluster::watch_for_pauses(
            engine.broker().clone(),
            cancel.clone(),
        ));
        engine.spawn("replica cache sync", sync.run(hints, cancel));
    }
}

/// The write probe, once now and then every `health.probe_interval_ms`.
async fn start_health(
    config: &Config,
    engine: &mut Engine,
    clock: &SharedClock,
    serving: &CancellationToken,
) -> (Arc<Health>, HealthGrpc) {
    let (health, service) = Health::new(serving.clone()).await;
    health.probe(engine.store(), clock).await;
    let probe = health.clone().run_probe(
        engine.store().clone(),
        clock.clone(),
        Duration::from_millis(config.health.probe_interval_ms),
        engine.background().clone(),
    );
    engine.spawn("health probe", probe);
    (health, service)
}

/// The gRPC server on the TCP listener and, when configured, on the local
/// admin socket.
fn serve_grpc(
    config: &Config,
    services: &Services,
    listeners: Listeners,
    metrics: &Arc<Metrics>,
    serving: &CancellationToken,
    transports: &mut Vec<Transport>,
) -> Result<(), DaemonError> {
    let router = serve::router(services, &config.grpc, serve::Listener::Tcp)
        .map_err(|e| DaemonError::Reflection(e.to_string()))?;
    let local_router = serve::router(
        services,
        &config.grpc,
        serve::Listener::LocalSocket {
            own_uid: serve::own_uid(),
        },
    )
    .map_err(|e| DaemonError::Reflection(e.to_string()))?;
    let server = tcp::spawn_server(
        router,
        listeners.grpc,
        AcceptSettings::from_config(&config.grpc, services.streams.idle().clone()),
        listeners.tls.as_ref(),
        &services.drain,
        metrics,
        serving,
    );
    transports.push(Transport::spawned("gRPC server", server));
    if let Some(socket) = listeners.admin_socket {
        transports.push(transports::serve_admin_socket(
            local_router,
            socket,
            serving,
        ));
    }
    Ok(())
}

/// A start that failed after the engine ran: stop what did start.
pub(super) async fn abandon(
    engine: Engine,
    serving: CancellationToken,
    transports: Vec<Transport>,
    error: DaemonError,
) -> DaemonError {
    serving.cancel();
    if let Err(e) = transports::drain(transports).await {
        tracing::warn!("stopping after a failed start: {e}");
    }
    if let Err(e) = engine.shutdown().await {
        tracing::warn!("closing the database after a failed start: {e}");
    }
    error
}

/// The API clients, with a bootstrap admin key written when there is none.
async fn load_clients(
    config: &Config,
    engine: &Engine,
    clock: &SharedClock,
    audit: &Audit,
) -> Result<Arc<Clients>, DaemonError> {
    let clients =
        Arc::new(Clients::load(engine.store().clone(), clock.clone(), audit.clone()).await?);
    clients.bootstrap_admin(&config.state_dir).await?;
    Ok(clients)
}

async fn build_tenants(config: &Config, engine: &Engine) -> Arc<Tenants> {
    let parts = TenantsParts {
        broker: engine.broker().clone(),
        store: engine.store().clone(),
        clock: engine.clock().clone(),
        pbx: engine.pbx().clone(),
    };
    let tenants = Arc::new(Tenants::new(
        parts,
        config.url_policy(),
        capacity_settings(config),
    ));
    tenants.set_allowed_hosts(allowed_hosts(config));
    for warning in tenants.capacity_warnings().await.unwrap_or_default() {
        tracing::warn!("{warning}");
    }
    tenants
}

/// The authorization flows; those a crash interrupted go on now, beside
/// serving.
fn start_onboarding(
    config: &Config,
    engine: &Engine,
    onboarding_pbx: Arc<dyn PbxOnboardingApi>,
) -> Arc<Onboarding> {
    let parts = OnboardingParts {
        broker: engine.broker().clone(),
        store: engine.store().clone(),
        clock: engine.clock().clone(),
        // The engine's gated client: the flow's token requests share the
        // host limits with renewals.
        pbx: Arc::new(GatedOnboardingPbx::new(
            engine.pbx().clone(),
            onboarding_pbx,
        )),
    };
    let onboarding = Arc::new(Onboarding::new(
        parts,
        OnboardingSettings::from_config(&config.onboarding),
        CrashHook::from_env(),
        engine.workers().clone(),
    ));
    engine.workers().spawn({
        let onboarding = onboarding.clone();
        let cancel = engine.background().clone();
        async move { onboarding.resume_interrupted(cancel).await }
    });
    onboarding
}
