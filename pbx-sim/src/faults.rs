//! Fault injection at run time: the gate every `/oauth` and `/api` request
//! passes before the provider's logic (latency, outage, throttling, random
//! 503s, the next-N failures, the optional provider limits).

use axum::response::Response;
use rand::Rng;

use super::model::Faults;
use super::respond;
use super::stats::Arrival;
use super::Shared;
use crate::clock::UnixMs;

/// The active faults plus the absolute end of a throttle.
#[derive(Default)]
pub(crate) struct FaultState {
    pub faults: Faults,
    pub throttle_until: Option<UnixMs>,
}

impl FaultState {
    pub fn set(&mut self, faults: Faults, now: UnixMs) {
        self.throttle_until = faults
            .throttle_for_secs
            .map(|s| now.plus_ms(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)));
        self.faults = faults;
    }
}

/// The hourly REST limit the simulated provider advertises in
/// `X-RateLimit-Limit` while throttling.
const ADVERTISED_HOURLY_LIMIT: u32 = 3600;

impl Shared {
    /// Apply the injected faults to one request. `token` is set for
    /// `/oauth/token` (only those get `fail_next` and the provider limits).
    /// Returns the answer to send instead of the real one, if any.
    pub(crate) async fn gate(&self, token: Option<&Arrival>, gzip: bool) -> Option<Response> {
        let latency = self.faults().faults.latency_ms;
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        let resp = self.decide(token, gzip)?;
        self.stats.status_sent(resp.status().as_u16());
        Some(resp)
    }

    fn decide(&self, token: Option<&Arrival>, gzip: bool) -> Option<Response> {
        let now = self.now();
        let (rate, concurrent) = {
            let c = self.config();
            (c.oauth_rate_limit_per_sec, c.oauth_max_concurrent)
        };
        let mut st = self.faults();
        if st.faults.outage {
            return Some(respond::unavailable());
        }
        if let Some(until) = st.throttle_until {
            if until > now {
                let ms = until.0 - now.0;
                let secs = u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1);
                return Some(respond::throttled(ADVERTISED_HOURLY_LIMIT, secs, gzip));
            }
            st.throttle_until = None;
        }
        if let Some(a) = token {
            if let Some(limit) = rate {
                if a.in_window > u64::from(limit) {
                    return Some(respond::throttled(limit, 1, gzip));
                }
            }
            if let Some(limit) = concurrent {
                if a.in_flight > u64::from(limit) {
                    return Some(respond::throttled(limit, 1, gzip));
                }
            }
            let grant_matches = st
                .faults
                .fail_grant_type
                .as_deref()
                .is_none_or(|g| g == a.grant_type);
            if st.faults.fail_next > 0 && grant_matches {
                st.faults.fail_next -= 1;
                let status = match st.faults.fail_status {
                    0 => 500,
                    s => s,
                };
                return Some(failure(status, gzip));
            }
        }
        let rate = st.faults.error_rate;
        if rate > 0.0 && rand::thread_rng().gen::<f64>() < rate {
            return Some(respond::unavailable());
        }
        None
    }
}

/// The answer of a `fail_next` token request with `status`.
fn failure(status: u16, gzip: bool) -> Response {
    use super::state::OAuthError;
    match status {
        429 => respond::throttled(ADVERTISED_HOURLY_LIMIT, 1, gzip),
        503 => respond::unavailable(),
        400 => respond::oauth_error(
            &OAuthError {
                status,
                error: "invalid_request",
                description: "Simulated failure.".into(),
            },
            gzip,
        ),
        401 => respond::oauth_error(
            &OAuthError {
                status,
                error: "invalid_client",
                description: "Simulated failure.".into(),
            },
            gzip,
        ),
        s => respond::message(s, "Simulated failure.", gzip),
    }
}
