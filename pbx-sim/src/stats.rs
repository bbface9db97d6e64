//! What the simulator saw: request counters, the peak number of token
//! requests in flight, and the peak number of token requests in any sliding
//! one-second window, so tests can assert the daemon kept its limits. The
//! same in-flight count and window drive the optional provider limits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A snapshot of the counters (`Simulator::stats`, `GET /_sim/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests to `POST /oauth/token`, whatever their outcome.
    pub token_requests_total: u64,
    /// The same by `grant_type` ("" when it was missing).
    pub token_requests_by_grant_type: BTreeMap<String, u64>,
    /// Answers of `POST /oauth/token` by HTTP status.
    pub token_responses_by_status: BTreeMap<u16, u64>,
    /// Access tokens issued (successful grants, malformed answers included).
    pub tokens_issued: u64,
    /// Distinct `client_id`s seen on `/oauth/token`.
    pub distinct_token_clients: u64,
    /// `GET` and `POST /oauth/authorize`.
    pub authorize_requests: u64,
    /// Requests to `/api/*`.
    pub api_requests: u64,
    /// Trusted apps created through `POST /api/ver1.0/application/`.
    pub apps_created_via_api: u64,
    /// 429 answers on `/oauth` and `/api`.
    pub responses_429: u64,
    /// 503 answers on `/oauth` and `/api`.
    pub responses_503: u64,
    /// `/oauth/token` and `/api` requests without `Accept-Encoding: gzip`.
    pub requests_without_gzip: u64,
    /// Peak of `/oauth/token` requests being handled at once.
    pub max_concurrent_token_requests: u64,
    /// Peak of `/oauth/token` arrivals within any sliding one-second window.
    pub max_token_requests_in_any_1s_window: u64,
    /// Peak of `/oauth/token` requests of one `client_id` being handled at
    /// once (above 1: a client's token requests overlapped).
    #[serde(default)]
    pub max_concurrent_token_requests_per_client: u64,
    /// `/oauth/token` requests that came within N seconds of the same
    /// `client_id`'s previous one, keyed by N (see [`REPEAT_GAPS_SECS`]):
    /// a load test picks the gap below one renewal interval and counts
    /// renewals beyond one per interval (duplicate renewals).
    #[serde(default)]
    pub token_requests_repeated_within_s: BTreeMap<u64, u64>,
}

/// The gaps (seconds) of [`SimStats::token_requests_repeated_within_s`].
pub const REPEAT_GAPS_SECS: [u64; 8] = [1, 5, 10, 30, 60, 150, 300, 1800];

#[derive(Default)]
struct Inner {
    snap: SimStats,
    by_client: HashMap<String, u64>,
    /// When each client's previous token request arrived.
    last_arrival: HashMap<String, Instant>,
    window: VecDeque<Instant>,
}

#[derive(Default)]
pub(crate) struct Collector {
    inner: Mutex<Inner>,
    in_flight: Arc<AtomicU64>,
    /// Token requests being handled, per client_id.
    per_client: Arc<Mutex<HashMap<String, u64>>>,
}

type PerClient = Arc<Mutex<HashMap<String, u64>>>;

/// Held while a token request is handled; decrements the in-flight counts.
pub(crate) struct InFlight(Arc<AtomicU64>, Option<(PerClient, String)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        if let Some((map, client)) = self.1.take() {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&client);
                }
            }
        }
    }
}

/// What the limits need to know about a token request that just arrived.
pub(crate) struct Arrival {
    _guard: InFlight,
    /// The request's `grant_type` (for `Faults::fail_grant_type`).
    pub grant_type: String,
    /// Requests in flight, this one included.
    pub in_flight: u64,
    /// Arrivals in the last second, this one included.
    pub in_window: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

impl Collector {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave counters inconsistent
        // in a way that matters; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn token_arrival(&self, grant_type: &str, client_id: Option<&str>, gzip: bool) -> Arrival {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let client = client_id.filter(|c| !c.is_empty()).map(str::to_owned);
        let mut client_in_flight = 0;
        if let Some(c) = &client {
            let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(c.clone()).or_default();
            *n += 1;
            client_in_flight = *n;
        }
        let guard = InFlight(
            Arc::clone(&self.in_flight),
            client.map(|c| (Arc::clone(&self.per_client), c)),
        );
        let now = Instant::now();
        let mut g = self.lock();
        while g
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            g.window.pop_front();
        }
        g.window.push_back(now);
        let in_window = g.window.len() as u64;
        let s = &mut g.snap;
        s.token_requests_total += 1;
        *s.token_requests_by_grant_type
            .entry(grant_type.to_owned())
            .or_default() += 1;
        if !gzip {
            s.requests_without_gzip += 1;
        }
        s.max_concurrent_token_requests = s.max_concurrent_token_requests.max(in_flight);
        s.max_concurrent_token_requests_per_client = s
            .max_concurrent_token_requests_per_client
            .max(client_in_flight);
        s.max_token_requests_in_any_1s_window =
            s.max_token_requests_in_any_1s_window.max(in_window);
        if let Some(c) = client_id.filter(|c| !c.is_empty()) {
            let n = g.by_client.entry(c.to_owned()).or_default();
            *n += 1;
            if *n == 1 {
                g.snap.distinct_token_clients += 1;
            }
            if let Some(prev) = g.last_arrival.insert(c.to_owned(), now) {
                let gap = now.duration_since(prev);
                for secs in REPEAT_GAPS_SECS {
                    if gap < Duration::from_secs(secs) {
                        *g.snap
                            .token_requests_repeated_within_s
                            .entry(secs)
                            .or_default() += 1;
                    }
                }
            }
        }
        Arrival {
            _guard: guard,
            grant_type: grant_type.to_owned(),
            in_flight,
            in_window,
        }
    }

    pub fn token_response(&self, status: u16, issued: bool) {
        let mut g = self.lock();
        *g.snap.token_responses_by_status.entry(status).or_default() += 1;
        if issued {
            g.snap.tokens_issued += 1;
        }
    }

    pub fn api_request(&self, gzip: bool) {
        let mut g = self.lock();
        g.snap.api_requests += 1;
        if !gzip {
            g.snap.requests_without_gzip += 1;
        }
    }

    pub fn authorize_request(&self) {
        self.lock().snap.authorize_requests += 1;
    }

    pub fn app_created(&self) {
        self.lock().snap.apps_created_via_api += 1;
    }

    /// Counts 429 and 503 answers; other statuses are ignored here.
    pub fn status_sent(&self, status: u16) {
        let mut g = self.lock();
        match status {
            429 => g.snap.responses_429 += 1,
            503 => g.snap.responses_503 += 1,
            _ => {}
        }
    }

    pub fn snapshot(&self) -> SimStats {
        self.lock().snap.clone()
    }

    pub fn token_requests_for(&self, client_id: &str) -> u64 {
        self.lock().by_client.get(client_id).copied().unwrap_or(0)
    }

    /// Zero every counter and peak. The sliding window keeps its recent
    /// arrivals, so an enforced rate limit stays exact across a reset.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.snap = SimStats::default();
        g.by_client.clear();
        g.last_arrival.clear();
    }
}
