//! The webhook deliverer: a background task (built and spawned by the
//! engine) that POSTs every event in the durable outbox to `[events]
//! webhook_url`, signed (`webhook.rs`), and removes its outbox row only
//! after a 2xx, so an event is delivered at least once across crashes and
//! restarts (a crash between the 2xx and the removal sends it again:
//! receivers dedupe by `event_id`).
//!
//! Order per tenant: `EventLog::outbox_due` hands out at most one row per
//! tenant, its oldest, and only when due; a tenant's next event is not
//! handed out before that row is gone. So requests in flight at the same
//! time are always for different tenants, and a tenant whose receiver
//! answer failed waits out its own backoff without holding up the others.
//!
//! Several replicas (PostgreSQL): only the replica holding the lease
//! [`LEASE`] delivers. Like renewal duty (`renewal/duty.rs`) the lease is
//! judged on the local monotonic clock from when its claim was sent, and
//! no request starts unless it ends (request timeout) before the lease's
//! last third, so a paused or cut-off holder has stopped sending before
//! another replica may take over and resend the same head.
//!
//! The HTTP client is the PBX client's outbound guard: the resolver that
//! drops internal addresses (`pbx/guard.rs`) unless `[pbx]
//! allow_private_addresses`, https only unless `[pbx] allow_insecure_http`,
//! no redirects (a redirect could carry the signed body elsewhere), a
//! request timeout. The secret is held in a `Secret` and never logged.
//!
//! Does not: write outbox rows (the store does, with each event, once the
//! engine turned the outbox on) or prune events (retention keeps those
//! still in the outbox).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::webhook::{backoff, body, signature, SIGNATURE_HEADER};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pbx::guard::GuardedResolver;
use crate::secret::Secret;
use crate::store::{LeaseClaim, OutboxEntry, Store, StoreError};

/// The lease that names the one replica delivering webhooks. Not a valid
/// host name, so it never collides with a PBX host's renewal lease.
pub const LEASE: &str = "@webhook";

/// One request, connect to last byte of the answer's headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests in flight at once (each for a different tenant).
const CONCURRENCY: usize = 8;
/// Outbox rows read per round.
const BATCH: u32 = 64;
/// How often the outbox is looked at when nothing woke the task (retries
/// falling due, events committed by other replicas).
const POLL: Duration = Duration::from_secs(1);
/// How often the outbox gauges are refreshed.
const LEVELS_EVERY: Duration = Duration::from_secs(2);
/// At most one warning per this interval; further failures go to debug.
const WARN_EVERY_MS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config key events.webhook_url: cannot build its HTTP client: {0}")]
    Client(String),
}

/// The lease state on PostgreSQL.
struct Lease {
    replica: String,
    ttl: Duration,
    /// Epoch and when its last successful claim was sent.
    held: Option<(i64, Instant)>,
}

/// The deliverer, ready to [`Deliverer::run`].
pub struct Deliverer {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    url: String,
    secret: Secret<String>,
    timeout: Duration,
    lease: Option<Lease>,
    /// Monotonic ms (since `started`) of the last warning logged.
    last_warn: AtomicI64,
    started: Instant,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// `None` when `[events] webhook_url` is empty. Reads the secret file
    /// (errors name `events.webhook_secret_file`) and builds the client.
    /// With several replicas (`shared`), delivery is gated by [`LEASE`].
    pub fn from_config(
        config: &Config,
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        shared: bool,
    ) -> Result<Option<Deliverer>, WebhookError> {
        let Some(secret) = config.events.read_webhook_secret()? else {
            return Ok(None);
        };
        let lease = shared.then(|| Lease {
            replica: config.cluster.replica_name(&config.grpc.listen),
            ttl: Duration::from_millis(config.cluster.lease_ttl_ms),
            held: None,
        });
        // Every request must end before its lease's last third begins.
        let timeout = lease
            .as_ref()
            .map_or(REQUEST_TIMEOUT, |l| REQUEST_TIMEOUT.min(l.ttl / 3));
        let http = reqwest::Client::builder()
            .user_agent(concat!("pbx-tokend/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_millis(config.pbx.connect_timeout_ms).min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!config.pbx.allow_insecure_http)
            .dns_resolver(Arc::new(GuardedResolver::new(
                config.pbx.allow_private_addresses,
            )))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Some(Deliverer {
            store,
            clock,
            metrics,
            http,
            url: config.events.webhook_url.clone(),
            secret,
            timeout,
            lease,
            last_warn: AtomicI64::new(-WARN_EVERY_MS),
            started: Instant::now(),
        }))
    }

    /// Delivers until `stop`. A request cut off by `stop` leaves its row
    /// in the outbox (sent again after the restart).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut wake = self.store.subscribe_events();
        let mut levels_at: Option<Instant> = None;
        tracing::info!(url = %self.url, "webhook delivery started");
        while !stop.is_cancelled() {
            let mut delivered = 0;
            if let Some(until) = self.may_deliver().await {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = self.round(until) => match r {
                        Ok(n) => delivered = n,
                        Err(e) => self.warn(format_args!("cannot read the webhook outbox: {e}")),
                    },
                }
                if levels_at.is_none_or(|t| t.elapsed() >= LEVELS_EVERY) || delivered > 0 {
                    self.levels().await;
                    levels_at = Some(Instant::now());
                }
            } else {
                // Another replica delivers and reports the outbox: this
                // one's gauges must not keep a stale backlog alive.
                self.metrics.set_webhook_outbox(0, 0);
                levels_at = None;
            }
            if delivered > 0 {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                changed = wake.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
        if let Some(Lease {
            replica,
            held: Some((epoch, _)),
            ..
        }) = &self.lease
        {
            if let Err(e) = self.store.release_lease(LEASE, replica, *epoch).await {
                tracing::debug!("releasing the webhook lease: {e}");
            }
        }
        tracing::debug!("webhook delivery stopped");
    }

    /// Until when requests may start: forever on one node; with several
    /// replicas, while this one holds [`LEASE`] (claimed or renewed here
    /// every third of its lifetime), up to two thirds into it.
    async fn may_deliver(&mut self) -> Option<Instant> {
        let far = Instant::now() + Duration::from_secs(3600);
        let Some(lease) = &mut self.lease else {
            return Some(far);
        };
        let renew = lease
            .held
            .is_none_or(|(_, sent)| sent.elapsed() >= lease.ttl / 3);
        if renew {
            let sent = Instant::now();
            let ttl_ms = i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX);
            match self
                .store
                .claim_lease(LEASE, &lease.replica, ttl_ms, self.clock.now())
                .await
            {
                Ok(LeaseClaim::Granted(l)) => {
                    if lease.held.is_none() {
                        tracing::info!(epoch = l.epoch, "webhook delivery duty taken");
                    }
                    lease.held = Some((l.epoch, sent));
                }
                Ok(LeaseClaim::Refused(l)) => {
                    if lease.held.take().is_some() {
                        tracing::info!(holder = %l.holder, "webhook delivery duty passed to another replica");
                    }
                }
                // Keep what we held: it runs out on its own clock.
                Err(e) => tracing::debug!("claiming the webhook lease: {e}"),
            }
        }
        let (_, sent) = lease.held?;
        let until = sent + lease.ttl * 2 / 3;
        (Instant::now() < until).then_some(until)
    }

    /// One pass over the due heads: each POSTed once, concurrently (they
    /// are all different tenants). Returns how many were delivered.
    async fn round(&self, until: Instant) -> Result<usize, StoreError> {
        let due = self.store.outbox_due(self.clock.now(), BATCH).await?;
        let delivered = futures::stream::iter(due)
            .map(|entry| self.deliver(entry, until))
            .buffer_unordered(CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        Ok(delivered)
    }

    /// POSTs one event; `true` if it was delivered (2xx) and its row
    /// removed. Not started when it could outlast `until`.
    async fn deliver(&self, entry: OutboxEntry, until: Instant) -> bool {
        if Instant::now() + self.timeout >= until {
            return false;
        }
        let id = entry.event.event_id;
        let raw = body(&entry.event);
        let sig = signature(self.secret.expose().as_bytes(), &raw);
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .body(raw)
            .send()
            .await;
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!(
                "the receiver answered HTTP {}",
                resp.status().as_u16()
            )),
            Err(e) if e.is_timeout() => {
                Some(format!("no answer within {} ms", self.timeout.as_millis()))
            }
            Err(e) => Some(format!("request failed: {}", root_cause(&e))),
        };
        let Some(error) = failure else {
            self.metrics.webhook_delivery("delivered");
            if let Err(e) = self.store.outbox_delivered(id).await {
                self.warn(format_args!(
                    "webhook event {id} was delivered but its outbox row could not be removed; it will be sent again: {e}"
                ));
                return false;
            }
            return true;
        };
        self.metrics.webhook_delivery("failed");
        let wait = backoff(entry.attempts, rand::random::<f64>());
        let next = self.clock.now().plus(wait);
        if entry.attempts == 0 {
            self.warn(format_args!(
                "webhook delivery of event {id} (tenant {}) failed: {error}; retrying with backoff",
                entry.event.tenant_id
            ));
        } else {
            tracing::debug!(
                event_id = id,
                attempts = entry.attempts + 1,
                retry_in_ms = wait.as_millis() as u64,
                "webhook delivery failed again: {error}"
            );
        }
        if let Err(e) = self.store.outbox_failed(id, next, error).await {
            tracing::debug!(event_id = id, "recording a failed webhook delivery: {e}");
        }
        false
    }

    /// Refreshes the outbox gauges (depth, age of the oldest event).
    async fn levels(&self) {
        let depth = self.store.outbox_depth().await;
        // The oldest row overall is the head of its tenant: ask for every
        // head whatever its due time, the first is the oldest.
        let oldest = self
            .store
            .outbox_due(crate::clock::UnixMs(i64::MAX), 1)
            .await;
        if let (Ok(depth), Ok(oldest)) = (depth, oldest) {
            let age = oldest.first().map_or(0, |e| {
                self.clock.now().0.saturating_sub(e.event.at.0) / 1000
            });
            self.metrics.set_webhook_outbox(depth, age);
        }
    }

    /// A warning, unless one was logged within [`WARN_EVERY_MS`] (then at
    /// debug), so a receiver that is down does not flood the log.
    fn warn(&self, message: std::fmt::Arguments<'_>) {
        let now = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let last = self.last_warn.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }
}

/// The innermost error's text (reqwest's outer ones repeat the URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;
