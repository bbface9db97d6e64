//! Prometheus metrics: one registry per daemon (no global recorder, so
//! tests run many daemons in one process), served as text by
//! `api/metrics_http.rs` when `[metrics] listen` is set. A leaf: it imports
//! no other layer, so anything may record into it.
//!
//! Two kinds of values:
//! - events, counted where they happen (GetToken results and the age of the
//!   token served, renewals and their latency, PBX HTTP answers, backups);
//! - levels, read when Prometheus scrapes (`scrape.rs`: tenants by state,
//!   tokens near or past expiry, the renewal queue, limiter waits), pushed
//!   in at scrape time by the endpoint from `overview` so `pbx-tokenctl
//!   status` shows the same numbers.
//!
//! The GetToken path costs two relaxed atomic adds and a histogram
//! observation: counters per gRPC code are looked up once, at start-up.
//!
//! Does not: decide anything; nothing reads these numbers back.

pub mod histogram;
pub mod scrape;

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use histogram::AtomicHistogram;
pub use scrape::ScrapeValues;

type Labels = Vec<(&'static str, String)>;

/// Upper bounds of the token-age histogram, in seconds: tokens live about an
/// hour and are renewed at ~80 %, so most answers fall below 48 minutes.
const AGE_BUCKETS: [f64; 12] = [
    10.0, 60.0, 300.0, 600.0, 1200.0, 1800.0, 2400.0, 2880.0, 3300.0, 3600.0, 7200.0, 86400.0,
];
/// Upper bounds of the renewal latency histogram, in seconds (limiter wait
/// plus the PBX round trip).
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The stages of one token fetch, timed apart in `renewal_stage_seconds`,
/// so a slow renewal shows where it waits: in the database or at the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStage {
    /// Reading and opening the tenant's app credentials.
    Credentials,
    /// Waiting for this replica's host limiter (rate window, concurrency).
    Limiter,
    /// Taking a slot of the host budget the replicas share (PostgreSQL).
    SharedBudget,
    /// The HTTP request to the PBX.
    Pbx,
    /// Writing the outcome to the database.
    Record,
}

impl FetchStage {
    const ALL: [FetchStage; 5] = [
        FetchStage::Credentials,
        FetchStage::Limiter,
        FetchStage::SharedBudget,
        FetchStage::Pbx,
        FetchStage::Record,
    ];

    fn label(self) -> &'static str {
        match self {
            FetchStage::Credentials => "credentials",
            FetchStage::Limiter => "limiter",
            FetchStage::SharedBudget => "shared_budget",
            FetchStage::Pbx => "pbx",
            FetchStage::Record => "record",
        }
    }
}

/// Upper bounds of the change-feed lag histogram, in seconds (a change
/// committed on one replica until applied in this one's cache; the goal is
/// under 1 s, the catch-up poll bounds it at about 2 s).
const FEED_LAG_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0,
];

/// GetToken results are labelled by gRPC code name in lower case.
const CODE_LABELS: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Indexed by `tonic::Code as usize`.
    get_token: Vec<Counter>,
    token_age: AtomicHistogram,
    renewals: Family<Labels, Counter>,
    renewal_latency: AtomicHistogram,
    /// Indexed by `FetchStage as usize` (the order of [`FetchStage::ALL`]).
    fetch_stages: [AtomicHistogram; 5],
    pbx_http: Family<Labels, Counter>,
    backups: Family<Labels, Counter>,
    streams_refused: Family<Labels, Counter>,
    backup_last_success: Gauge<i64, AtomicI64>,
    token_store_failures: Counter,
    connections_open: Gauge<i64, AtomicI64>,
    connections_refused: Family<Labels, Counter>,
    connections_closed_idle: Counter,
    report_rejected_held: Family<Labels, Counter>,
    fenced_writes: Counter,
    database_reachable: Gauge<i64, AtomicI64>,
    lease_held: Family<Labels, Gauge<i64, AtomicI64>>,
    feed_listener_connected: Gauge<i64, AtomicI64>,
    feed_lag: AtomicHistogram,
    tenant_events: Family<Labels, Counter>,
    webhook_deliveries: Family<Labels, Counter>,
    webhook_outbox_depth: Gauge<i64, AtomicI64>,
    webhook_oldest_undelivered: Gauge<i64, AtomicI64>,
    /// GetToken misses (no token valid for min_valid in memory): [busy, idle].
    cache_misses: [Counter; 2],
    scrape: std::sync::Arc<scrape::ScrapeCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("pbx_tokend");

        let get_token_family = Family::<Labels, Counter>::default();
        registry.register(
            "get_token_requests",
            "GetToken calls by result (gRPC code)",
            get_token_family.clone(),
        );
        let get_token = CODE_LABELS
            .iter()
            .map(|code| {
                get_token_family
                    .get_or_create(&vec![("result", (*code).to_owned())])
                    .clone()
            })
            .collect();

        let token_age = AtomicHistogram::new(&AGE_BUCKETS);
        registry.register(
            "token_age_served_seconds",
            "Age of the token handed out by GetToken (time since the PBX issued it)",
            token_age.clone(),
        );
        let renewals = Family::<Labels, Counter>::default();
        registry.register(
            "renewals",
            "Token fetches from the PBX (scheduled, on demand, forced) by result: success or the error class",
            renewals.clone(),
        );
        let renewal_latency = AtomicHistogram::new(&LATENCY_BUCKETS);
        registry.register(
            "renewal_duration_seconds",
            "Time a token fetch took: waiting for the host limiter plus the PBX round trip",
            renewal_latency.clone(),
        );
        let stages =
            Family::<Labels, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
                || AtomicHistogram::new(&LATENCY_BUCKETS),
            );
        registry.register(
            "renewal_stage_seconds",
            "Time each stage of a token fetch took, by stage: credentials (read and open the app credentials), limiter (wait for this replica's host limiter), shared_budget (take a slot of the host budget the replicas share; PostgreSQL only), pbx (the HTTP request), record (write the outcome to the database)",
            stages.clone(),
        );
        let fetch_stages = FetchStage::ALL.map(|stage| {
            stages
                .get_or_create(&vec![("stage", stage.label().to_owned())])
                .clone()
        });
        let pbx_http = Family::<Labels, Counter>::default();
        registry.register(
            "pbx_http_requests",
            "HTTP requests to PBX hosts by host and answer status (\"transport_error\" when no answer came)",
            pbx_http.clone(),
        );
        let backups = Family::<Labels, Counter>::default();
        registry.register(
            "backups",
            "Database backups by result (ok, error)",
            backups.clone(),
        );
        let streams_refused = Family::<Labels, Counter>::default();
        registry.register(
            "streams_refused",
            "Streams refused with RESOURCE_EXHAUSTED by a [grpc] stream cap, by kind (watch_token, watch_tenant_events, unauthenticated: health Watch and reflection) and limit (per_connection, total)",
            streams_refused.clone(),
        );
        let tenant_events = Family::<Labels, Counter>::default();
        registry.register(
            "tenant_events",
            "Tenant events committed, by kind (created, updated, deleted, state_changed, authorization_completed)",
            tenant_events.clone(),
        );
        let backup_last_success = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last backup succeeded (Unix seconds; 0: none since start)",
            backup_last_success.clone(),
        );
        let token_store_failures = Counter::default();
        registry.register(
            "token_store_failures",
            "Refresh outcomes (tokens, failures, job times) the database could not write; the token is served from memory and written later",
            token_store_failures.clone(),
        );
        let connections_open = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "grpc_connections_open",
            "TCP connections to the gRPC listener open now (handshakes in progress included; capped by grpc.max_connections)",
            connections_open.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "grpc_connections_refused",
            "gRPC listener connections closed before serving, by reason: limit (grpc.max_connections), handshake_timeout, handshake_failed",
            connections_refused.clone(),
        );
        let connections_closed_idle = Counter::default();
        registry.register(
            "grpc_connections_closed_idle",
            "gRPC listener connections closed because no request was in progress and no stream open for grpc.idle_timeout_ms",
            connections_closed_idle.clone(),
        );
        let report_rejected_held = Family::<Labels, Counter>::default();
        registry.register(
            "report_rejected_held",
            "ReportRejectedToken calls for the held token within [token] report_rejected_interval_ms of the last report-forced refresh, by outcome: waited (for the next allowed refresh), unavailable (the caller's deadline left no room)",
            report_rejected_held.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "fenced_writes",
            "Token writes the database refused because this replica no longer held the host's renewal duty at its epoch, or another replica stored a newer token meanwhile; the fetched token was dropped",
            fenced_writes.clone(),
        );
        let database_reachable = Gauge::<i64, AtomicI64>::default();
        // One node on SQLite: the file is always there to ask.
        database_reachable.set(1);
        registry.register(
            "database_reachable",
            "1 while the last lease round trip to the database worked (always 1 on SQLite); 0: tokens are served from memory and nothing is renewed",
            database_reachable.clone(),
        );
        let lease_held = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "lease_held",
            "1 while this replica holds the renewal duty (lease) of the PBX host, 0 otherwise (PostgreSQL only)",
            lease_held.clone(),
        );
        let feed_listener_connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "change_feed_listener_connected",
            "1 while this replica's LISTEN connection for the change feed is up, 0 otherwise (PostgreSQL only; while 0, changes of other replicas arrive by the 2 s poll)",
            feed_listener_connected.clone(),
        );
        let feed_lag = AtomicHistogram::new(&FEED_LAG_BUCKETS);
        registry.register(
            "change_feed_lag_seconds",
            "Time from a change's write in the database (its row's time on the database clock) until this replica applied it to its cache (PostgreSQL only)",
            feed_lag.clone(),
        );
        let misses = Family::<Labels, Counter>::default();
        registry.register(
            "get_token_cache_misses",
            "GetToken calls that found no token valid for min_valid_seconds in memory and fetched on demand (single-flight), by whether the tenant was busy or idle before the call ([refresh] idle_after_seconds)",
            misses.clone(),
        );
        let cache_misses = ["busy", "idle"].map(|a| {
            misses
                .get_or_create(&vec![("activity", a.to_owned())])
                .clone()
        });
        let webhook_deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook POSTs by outcome: delivered (2xx) or failed (any other status, a timeout or a connection error; retried with backoff)",
            webhook_deliveries.clone(),
        );
        // Both series exist from the start, so alerts on increase() see 0.
        for outcome in ["delivered", "failed"] {
            drop(webhook_deliveries.get_or_create(&vec![("outcome", outcome.to_owned())]));
        }
        let webhook_outbox_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "webhook_outbox_depth",
            "Tenant events waiting in the durable outbox for webhook delivery (0 while webhooks are off; on PostgreSQL set by the replica that delivers)",
            webhook_outbox_depth.clone(),
        );
        let webhook_oldest_undelivered = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "webhook_oldest_undelivered_seconds",
            "Age of the oldest tenant event not yet delivered to the webhook (0 when none waits)",
            webhook_oldest_undelivered.clone(),
        );
        registry.register(
            "build",
            "Build of the running daemon",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("name", env!("CARGO_PKG_NAME").to_owned()),
            ]),
        );
        let scrape = std::sync::Arc::new(scrape::ScrapeCollector::default());
        registry.register_collector(Box::new(scrape.clone()));
        Self {
            registry: root,
            get_token,
            token_age,
            renewals,
            renewal_latency,
            fetch_stages,
            pbx_http,
            backups,
            streams_refused,
            backup_last_success,
            token_store_failures,
            connections_open,
            connections_refused,
            connections_closed_idle,
            report_rejected_held,
            fenced_writes,
            database_reachable,
            lease_held,
            feed_listener_connected,
            feed_lag,
            tenant_events,
            webhook_deliveries,
            webhook_outbox_depth,
            webhook_oldest_undelivered,
            cache_misses,
            scrape,
        }
    }

    /// One GetToken answered with `code`.
    pub fn get_token(&self, code: tonic::Code) {
        if let Some(c) = self.get_token.get(code as usize) {
            c.inc();
        }
    }

    /// A token of this age (ms since issue) was handed out.
    pub fn token_served(&self, age_ms: i64) {
        self.token_age.observe(age_ms as f64 / 1000.0);
    }

    /// A token fetch ended: `result` is "success" or an error class.
    pub fn renewal(&self, result: &'static str, latency: Duration) {
        self.renewals
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        self.renewal_latency.observe(latency.as_secs_f64());
    }

    /// One stage of a token fetch took `took`.
    pub fn fetch_stage(&self, stage: FetchStage, took: Duration) {
        if let Some(h) = self.fetch_stages.get(stage as usize) {
            h.observe(took.as_secs_f64());
        }
    }

    /// An HTTP exchange with a PBX host ended with `status` (None: no answer).
    pub fn pbx_request(&self, host: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "transport_error".to_owned(), |s| s.to_string());
        self.pbx_http
            .get_or_create(&vec![("host", host.to_owned()), ("status", status)])
            .inc();
    }

    /// A backup ended; `at_secs` is when (Unix seconds).
    pub fn backup(&self, ok: bool, at_secs: i64) {
        let result = if ok { "ok" } else { "error" };
        self.backups
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        if ok {
            self.backup_last_success.set(at_secs);
        }
    }

    /// A stream cap refused a stream (`api::streams`; not a hot path).
    pub fn stream_refused(&self, kind: &'static str, limit: &'static str) {
        self.streams_refused
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("limit", limit.to_owned()),
            ])
            .inc();
    }

    /// A tenant event was committed (`events::count_events`; not a hot
    /// path).
    pub fn tenant_event(&self, kind: &'static str) {
        self.tenant_events
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// One webhook POST ended: `outcome` is "delivered" or "failed".
    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook_deliveries
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// The webhook outbox as last read: rows waiting, and the age of the
    /// oldest waiting event in seconds.
    pub fn set_webhook_outbox(&self, depth: u64, oldest_age_secs: i64) {
        self.webhook_outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.webhook_oldest_undelivered.set(oldest_age_secs.max(0));
    }

    /// A refresh outcome could not be written to the database.
    pub fn token_store_failed(&self) {
        self.token_store_failures.inc();
    }

    /// A gRPC listener connection was accepted (and holds a slot).
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A gRPC listener connection was closed (its slot is free again).
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A gRPC listener connection was closed before serving.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// A gRPC listener connection was closed for being idle.
    pub fn connection_closed_idle(&self) {
        self.connections_closed_idle.inc();
    }

    /// A report of the held token came within the rate-limit interval:
    /// `outcome` is "waited" or "unavailable" (not a hot path).
    pub fn report_rejected_held(&self, outcome: &'static str) {
        self.report_rejected_held
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// A fenced token write was refused (the token was dropped).
    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// Whether the database answered the last lease round trip.
    pub fn set_database_reachable(&self, reachable: bool) {
        self.database_reachable.set(i64::from(reachable));
    }

    /// Whether this replica holds `host`'s renewal duty.
    /// The change feed's LISTEN connection is up (or not).
    pub fn set_change_feed_listener(&self, connected: bool) {
        self.feed_listener_connected.set(i64::from(connected));
    }

    /// One change applied to the cache `lag` after it was written.
    pub fn change_applied(&self, lag: Duration) {
        self.feed_lag.observe(lag.as_secs_f64());
    }

    pub fn set_lease_held(&self, host: &str, held: bool) {
        self.lease_held
            .get_or_create(&vec![("host", host.to_owned())])
            .set(i64::from(held));
    }

    /// A GetToken found no usable token in memory; `busy`: the tenant was
    /// busy before the call (a relaxed add; counters looked up at start-up).
    pub fn get_token_cache_miss(&self, busy: bool) {
        self.cache_misses[usize::from(!busy)].inc();
    }

    /// The levels the next scrape shows.
    pub fn set_levels(&self, values: ScrapeValues) {
        self.scrape.set(values);
    }

    /// Counts a failed attempt to read the levels (they keep their last value).
    pub fn levels_failed(&self) {
        self.scrape.failed();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_line_up_with_tonic() {
        for (i, label) in CODE_LABELS.iter().enumerate() {
            let code = tonic::Code::from_i32(i as i32);
            let name = format!("{code:?}");
            let snake: String = name
                .chars()
                .enumerate()
                .flat_map(|(j, c)| {
                    let lower = c.to_ascii_lowercase();
                    if c.is_ascii_uppercase() && j > 0 {
                        vec!['_', lower]
                    } else {
                        vec![lower]
                    }
                })
                .collect();
            assert_eq!(*label, snake);
        }
    }

    #[test]
    fn exposition_has_the_event_metrics() {
        let m = Metrics::new();
        m.get_token(tonic::Code::Ok);
        m.get_token(tonic::Code::NotFound);
        m.token_served(90_000);
        m.renewal("success", Duration::from_millis(20));
        m.pbx_request("pbx.example.com", Some(200));
        m.pbx_request("pbx.example.com", None);
        m.backup(true, 1_700_000_000);
        m.token_store_failed();
        m.report_rejected_held("waited");
        let text = m.encode().unwrap();
        for needle in [
            "pbx_tokend_get_token_requests_total{result=\"ok\"} 1",
            "pbx_tokend_get_token_requests_total{result=\"not_found\"} 1",
            "pbx_tokend_token_age_served_seconds_count 1",
            "pbx_tokend_renewals_total{result=\"success\"} 1",
            "pbx_tokend_renewal_duration_seconds_bucket{le=\"0.025\"} 1",
            "pbx_tokend_pbx_http_requests_total{host=\"pbx.example.com\",status=\"200\"} 1",
            "status=\"transport_error\"} 1",
            "pbx_tokend_backup_last_success_timestamp_seconds 1700000000",
            "pbx_tokend_build_info{version=",
            "pbx_tokend_token_store_failures_total 1",
            "pbx_tokend_report_rejected_held_total{outcome=\"waited\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
