//! The provider model: the simulation's PBX, in process, behind the same
//! [`PbxApi`] trait as the HTTP client. (Not the HTTP fake provider, the
//! `pbx-sim` crate; hence the name.) It answers `client_credentials` as the provider would
//! (tokens, 401, 429 with reset headers, 503, timeouts, malformed bodies)
//! according to the fault plan, and turns each answer into a result with
//! the real parser ([`crate::pbx::parse::parse_token_response`]), so the
//! daemon sees exactly what the HTTP client would give it.
//!
//! It is also the measuring point for the limits: every arrival is counted
//! in a sliding one-second window and against the concurrency cap of its
//! host, and every token it hands out is remembered, so a token the daemon
//! serves can be checked against what the PBX actually issued.
//!
//! Does not: decide what is a violation of renewal timing (see `checker`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::Rng;

use super::plan::{OutageMode, Plan, ResetMode};
use super::record::Recorder;
use super::world::World;
use crate::clock::{SharedClock, UnixMs};
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::pbx::parse::{parse_token_response, ResponseMeta};
use crate::pbx::{PbxApi, PbxError, TokenGrant};

/// Bodies that a 200 answer may carry during a malformed-answers fault;
/// the parser must refuse every one (a unit test checks it).
pub const MALFORMED: [(&str, &str); 9] = [
    ("application/json", r#"{"access_token": "abc", "token_ty"#),
    (
        "text/html",
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    ),
    (
        "application/json",
        r#"{"token_type":"Bearer","expires_in":3600}"#,
    ),
    (
        "application/json",
        r#"{"access_token":"a b","token_type":"Bearer","expires_in":3600}"#,
    ),
    (
        "application/json",
        r#"{"access_token":"abc","token_type":"MAC","expires_in":3600}"#,
    ),
    (
        "application/json",
        r#"{"access_token":"abc","token_type":"Bearer","expires_in":"soon"}"#,
    ),
    ("application/json", ""),
    ("application/json", "[]"),
    (
        "application/json",
        r#"{"access_token":"abc","token_type":"Bearer","expires_in":0}"#,
    ),
];

/// Per-host measurements at the PBX.
#[derive(Debug, Default, Clone)]
pub struct HostMeter {
    /// Arrivals inside the last second, oldest first.
    window: VecDeque<UnixMs>,
    pub in_flight: u32,
    pub max_in_flight: u32,
    pub max_per_second: u32,
    pub requests: u64,
    /// Tenants whose last request failed (for the recovery monitor).
    pub failing: u32,
}

/// What the PBX knows about one tenant.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Every token delivered, in order; the serial in the token value
    /// indexes it.
    pub issued: Vec<Issued>,
    pub requests: u32,
    /// Requests that arrived while its credentials were revoked.
    pub requests_revoked: u32,
    pub last_failed: bool,
    /// The PBX failed one of its requests since the last token.
    failed_since_issue: bool,
}

/// One token the PBX delivered.
#[derive(Debug, Clone, Copy)]
pub struct Issued {
    pub at: UnixMs,
    pub expires: UnixMs,
    /// The PBX had failed one of the tenant's requests since its previous
    /// token (an error, a garbled answer, a timeout): this token came from
    /// a retry.
    pub after_failure: bool,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    hosts: Vec<HostMeter>,
    tenants: Vec<Ledger>,
    outcomes: [u64; 7],
}

/// Indexes into the outcome counters.
pub const OUTCOMES: [&str; 7] = [
    "token",
    "rejected",
    "throttled",
    "unavailable",
    "timeout",
    "malformed",
    "refused_conn",
];

pub struct ProviderModel {
    clock: SharedClock,
    world: Arc<World>,
    plan: Arc<Plan>,
    rec: Arc<Recorder>,
    rps: u32,
    concurrency: u32,
    timeout_ms: u64,
    max_lifetime_secs: u64,
    /// Mutation for the checker's own tests: omit `expires_in`.
    omit_expires_in: bool,
    state: Mutex<State>,
}

/// What the PBX decided at arrival.
enum Answer {
    Refused,
    Hang,
    Status {
        latency_ms: u64,
        status: u16,
        meta: ResponseMeta,
        body: Vec<u8>,
    },
    Token {
        latency_ms: u64,
        tenant: usize,
    },
}

impl ProviderModel {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clock: SharedClock,
        world: Arc<World>,
        plan: Arc<Plan>,
        rec: Arc<Recorder>,
        config: &crate::config::Config,
        rng: StdRng,
        omit_expires_in: bool,
    ) -> ProviderModel {
        let tenants = world.tenant_ids.len();
        let hosts = world.hosts.len();
        ProviderModel {
            clock,
            world,
            plan,
            rec,
            rps: config.limits.per_host_requests_per_second,
            concurrency: config.limits.per_host_concurrent,
            timeout_ms: config.pbx.request_timeout_ms,
            max_lifetime_secs: config.token.max_lifetime_seconds,
            omit_expires_in,
            state: Mutex::new(State {
                rng,
                hosts: vec![HostMeter::default(); hosts],
                tenants: vec![Ledger::default(); tenants],
                outcomes: [0; 7],
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token the initial tenants hold, as if issued before the run.
    pub fn seed_token(&self, tenant: usize, issued: UnixMs) -> String {
        let expires = issued.plus_ms(self.world.lifetime_secs as i64 * 1000);
        let mut st = self.state();
        let serial = st.tenants[tenant].issued.len();
        st.tenants[tenant].issued.push(Issued {
            at: issued,
            expires,
            after_failure: false,
        });
        let nonce: u32 = st.rng.gen();
        format!("sim{tenant}x{serial}x{nonce:08x}")
    }

    /// Who a served token value belongs to and when the PBX lets it expire.
    pub fn lookup(&self, token: &str) -> Option<(usize, UnixMs)> {
        let rest = token.strip_prefix("sim")?;
        let mut parts = rest.split('x');
        let tenant: usize = parts.next()?.parse().ok()?;
        let serial: usize = parts.next()?.parse().ok()?;
        let st = self.state();
        let issued = st.tenants.get(tenant)?.issued.get(serial)?;
        Some((tenant, issued.expires))
    }

    pub fn ledgers(&self) -> Vec<Ledger> {
        self.state().tenants.clone()
    }

    pub fn meters(&self) -> Vec<HostMeter> {
        self.state().hosts.clone()
    }

    pub fn failing(&self, host: usize) -> u32 {
        self.state().hosts.get(host).map_or(0, |h| h.failing)
    }

    pub fn outcomes(&self) -> [u64; 7] {
        self.state().outcomes
    }

    async fn serve(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
    ) -> Result<TokenGrant, PbxError> {
        let transit = self.state().rng.gen_range(0..=30);
        tokio::time::sleep(Duration::from_millis(transit)).await;
        let now = self.clock.now();
        let Some(&host) = self.world.host_index.get(base.host()) else {
            self.rec
                .violation(now, "unknown-host", format!("request to {}", base.host()));
            return Err(PbxError::Transient {
                reason: "unknown host".into(),
            });
        };
        let tenant = self
            .world
            .client_index
            .get(&creds.client_id)
            .copied()
            .filter(|&t| self.world.host_of(t) == host);
        let answer = self.arrive(now, host, tenant, creds);
        // Counted in flight until the answer is sent or the client gives
        // up (the future is dropped): what a server sees as an open request.
        let _in_flight = InFlight { pbx: self, host };
        let result = match answer {
            Answer::Refused => Err(PbxError::Transient {
                reason: "connection refused".into(),
            }),
            Answer::Hang => {
                tokio::time::sleep(Duration::from_millis(self.timeout_ms)).await;
                Err(timed_out(self.timeout_ms))
            }
            Answer::Status {
                latency_ms,
                status,
                meta,
                body,
            } => {
                if latency_ms >= self.timeout_ms {
                    tokio::time::sleep(Duration::from_millis(self.timeout_ms)).await;
                    Err(timed_out(self.timeout_ms))
                } else {
                    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                    parse_token_response(status, &meta, &body, self.max_lifetime_secs)
                }
            }
            Answer::Token { latency_ms, tenant } => {
                if latency_ms >= self.timeout_ms {
                    tokio::time::sleep(Duration::from_millis(self.timeout_ms)).await;
                    Err(timed_out(self.timeout_ms))
                } else {
                    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                    let body = self.issue(tenant);
                    let meta = ResponseMeta {
                        content_type: Some("application/json".into()),
                        ..ResponseMeta::default()
                    };
                    parse_token_response(200, &meta, body.as_bytes(), self.max_lifetime_secs)
                }
            }
        };
        let done = self.clock.now();
        let code = match &result {
            Ok(_) => 0,
            Err(PbxError::CredentialsRejected { .. }) => 1,
            Err(PbxError::Throttled { .. }) => 2,
            Err(PbxError::Transient { reason }) if reason.starts_with("HTTP") => 3,
            Err(PbxError::Transient { reason }) if reason.starts_with("timed") => 4,
            Err(PbxError::Protocol { .. }) => 5,
            Err(_) => 6,
        };
        let mut st = self.state();
        st.outcomes[code] += 1;
        if let Some(t) = tenant {
            let was = st.tenants[t].last_failed;
            // A rejection is the tenant's own state, not the host's health.
            let now_failed = code != 0 && code != 1;
            st.tenants[t].last_failed = now_failed;
            st.tenants[t].failed_since_issue |= code != 0;
            let meter = &mut st.hosts[host];
            match (was, now_failed) {
                (false, true) => meter.failing += 1,
                (true, false) => meter.failing = meter.failing.saturating_sub(1),
                _ => {}
            }
        }
        drop(st);
        self.rec
            .event(done, 1, tenant.map_or(-1, |t| t as i64), code as i64);
        result
    }

    /// Counts the arrival against the host's limits and decides the answer.
    fn arrive(
        &self,
        now: UnixMs,
        host: usize,
        tenant: Option<usize>,
        creds: &AppCredentials,
    ) -> Answer {
        let active = self.plan.active(host, now);
        let mut st = self.state();
        let st = &mut *st;
        let meter = &mut st.hosts[host];
        meter.requests += 1;
        while meter.window.front().is_some_and(|t| now.0 - t.0 >= 1000) {
            meter.window.pop_front();
        }
        meter.window.push_back(now);
        let in_window = meter.window.len() as u32;
        meter.max_per_second = meter.max_per_second.max(in_window);
        meter.in_flight += 1;
        meter.max_in_flight = meter.max_in_flight.max(meter.in_flight);
        let over_rate = in_window > self.rps;
        let over_concurrency = meter.in_flight > self.concurrency;
        if over_rate {
            self.rec.violation(
                now,
                "rate-limit",
                format!(
                    "{} got {in_window} requests within one second (limit {})",
                    self.world.hosts[host], self.rps
                ),
            );
        }
        if over_concurrency {
            self.rec.violation(
                now,
                "concurrency-limit",
                format!(
                    "{} has {} requests in flight (limit {})",
                    self.world.hosts[host], meter.in_flight, self.concurrency
                ),
            );
        }
        if let Some(t) = tenant {
            st.tenants[t].requests += 1;
            if self.plan.is_revoked(t, now) {
                st.tenants[t].requests_revoked += 1;
            }
        }
        let rng = &mut st.rng;
        let latency_ms = match active.slow {
            Some((lo, hi)) => rng.gen_range(lo..=hi),
            None => rng.gen_range(20..=250),
        };
        if let Some(mode) = active.outage {
            return match mode {
                OutageMode::Refused => Answer::Refused,
                OutageMode::Hang => Answer::Hang,
                OutageMode::Unavailable => {
                    status(latency_ms, 503, "text/plain", "Service Unavailable")
                }
            };
        }
        // The provider enforces its own limit too: an excess request gets 429.
        if over_rate {
            let mut a = status(
                latency_ms,
                429,
                "application/json",
                r#"{"error":"rate_limited"}"#,
            );
            if let Answer::Status { meta, .. } = &mut a {
                meta.retry_after = Some("1".into());
            }
            return a;
        }
        if let Some((mode, ends)) = active.storm {
            let mut a = status(
                latency_ms,
                429,
                "application/json",
                r#"{"error":"too_many_requests","error_description":"Rate limit exceeded"}"#,
            );
            if let Answer::Status { meta, .. } = &mut a {
                match mode {
                    ResetMode::Exact => {
                        let secs = (now.until(ends).as_millis() as u64).div_ceil(1000).max(1);
                        meta.retry_after = Some(secs.to_string());
                        meta.rate_limit_reset = Some(secs.to_string());
                    }
                    ResetMode::Short(s) => meta.retry_after = Some(s.to_string()),
                    ResetMode::Missing => {}
                }
            }
            return a;
        }
        let valid = tenant.is_some_and(|t| {
            self.world.secrets[t] == *creds.client_secret.expose() && !self.plan.is_revoked(t, now)
        });
        if !valid {
            return status(
                latency_ms,
                401,
                "application/json",
                r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            );
        }
        if active.malformed > 0 && rng.gen_range(0..1000) < active.malformed {
            let (ct, body) = MALFORMED[rng.gen_range(0..MALFORMED.len())];
            return status(latency_ms, 200, ct, body);
        }
        match tenant {
            Some(tenant) => Answer::Token { latency_ms, tenant },
            None => status(
                latency_ms,
                401,
                "application/json",
                r#"{"error":"invalid_client"}"#,
            ),
        }
    }

    /// Issues a token now and returns the answer body.
    fn issue(&self, tenant: usize) -> String {
        let now = self.clock.now();
        let lifetime = self.world.lifetime_secs;
        let mut st = self.state();
        let ledger = &mut st.tenants[tenant];
        let serial = ledger.issued.len();
        let after_failure = std::mem::take(&mut ledger.failed_since_issue);
        ledger.issued.push(Issued {
            at: now,
            expires: now.plus_ms(lifetime as i64 * 1000),
            after_failure,
        });
        let nonce: u32 = st.rng.gen();
        let token = format!("sim{tenant}x{serial}x{nonce:08x}");
        if self.omit_expires_in {
            format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#)
        } else {
            format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{lifetime}}}"#)
        }
    }
}

fn status(latency_ms: u64, status: u16, content_type: &str, body: &str) -> Answer {
    Answer::Status {
        latency_ms,
        status,
        meta: ResponseMeta {
            content_type: Some(content_type.into()),
            ..ResponseMeta::default()
        },
        body: body.as_bytes().to_vec(),
    }
}

fn timed_out(ms: u64) -> PbxError {
    PbxError::Transient {
        reason: format!("timed out after {ms} ms"),
    }
}

struct InFlight<'a> {
    pbx: &'a ProviderModel,
    host: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.pbx.state();
        if let Some(m) = st.hosts.get_mut(self.host) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }
}

impl PbxApi for ProviderModel {
    fn client_credentials<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        creds: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(self.serve(base, creds))
    }
}
