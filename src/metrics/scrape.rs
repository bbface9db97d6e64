//! Levels read at scrape time (gauges, and counters kept elsewhere such as
//! the limiter's wait count), encoded by a prometheus-client `Collector`
//! from the last [`ScrapeValues`] the HTTP handler stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Everything the scrape shows that is a level, not an event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapeValues {
    /// (state name, tenants), every state.
    pub tenants_by_state: Vec<(&'static str, u64)>,
    pub tokens_in_renewal_window: u64,
    pub tokens_expired: u64,
    pub renewing_without_token: u64,
    pub jobs_due: u64,
    pub jobs_overdue: u64,
    pub oldest_due_age_secs: f64,
    pub renewals_in_flight: u64,
    /// (host, acquisitions that had to wait), per PBX host seen.
    pub rate_limit_waits: Vec<(String, u64)>,
    /// (host, 1 while throttled after a 429).
    pub hosts_throttled: Vec<(String, u64)>,
    /// (host, renewal demand / budget), per host with renewing tenants.
    pub host_demand_ratio: Vec<(String, f64)>,
    /// (host, renewing tenants busy / idle), same hosts.
    pub tenants_busy: Vec<(String, u64)>,
    pub tenants_idle: Vec<(String, u64)>,
    pub database_writable: bool,
    /// Tokens fetched but not yet written (held only in memory).
    pub tokens_unstored: u64,
}

#[derive(Debug, Default)]
pub struct ScrapeCollector {
    values: Mutex<ScrapeValues>,
    failures: AtomicU64,
}

impl ScrapeCollector {
    pub fn set(&self, values: ScrapeValues) {
        *self.values.lock().unwrap_or_else(|p| p.into_inner()) = values;
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    rows: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in rows {
        let labels = [(label, value.as_str())];
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*n).encode(metric)?,
            _ => ConstGauge::new(*n as i64).encode(metric)?,
        }
    }
    Ok(())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let states: Vec<(String, u64)> = v
            .tenants_by_state
            .iter()
            .map(|(s, n)| ((*s).to_owned(), *n))
            .collect();
        labelled(
            &mut encoder,
            "tenants",
            "Tenants by state",
            MetricType::Gauge,
            "state",
            &states,
        )?;
        gauge(
            &mut encoder,
            "tokens_in_renewal_window",
            "Held tokens of renewing tenants past their planned renewal point and not yet expired: renewal is due or late",
            v.tokens_in_renewal_window as f64,
        )?;
        gauge(
            &mut encoder,
            "tokens_expired",
            "Renewing tenants whose held token has expired (GetToken must fetch, or fails)",
            v.tokens_expired as f64,
        )?;
        gauge(
            &mut encoder,
            "tenants_without_token",
            "Renewing tenants that hold no token at all",
            v.renewing_without_token as f64,
        )?;
        gauge(
            &mut encoder,
            "renewal_jobs_due",
            "Renewal jobs that are due now (queue depth)",
            v.jobs_due as f64,
        )?;
        gauge(
            &mut encoder,
            "renewal_jobs_overdue",
            "Renewal jobs due for more than a minute: renewals are falling behind",
            v.jobs_overdue as f64,
        )?;
        gauge(
            &mut encoder,
            "renewal_oldest_overdue_seconds",
            "How long the oldest due renewal job has been waiting (0: none due)",
            v.oldest_due_age_secs,
        )?;
        gauge(
            &mut encoder,
            "renewals_in_flight",
            "Scheduled renewals running now",
            v.renewals_in_flight as f64,
        )?;
        labelled(
            &mut encoder,
            "rate_limit_waits",
            "Token requests that had to wait for the per-host limiter (rate or concurrency)",
            MetricType::Counter,
            "host",
            &v.rate_limit_waits,
        )?;
        labelled(
            &mut encoder,
            "host_throttled",
            "1 while a PBX host is throttled after an HTTP 429",
            MetricType::Gauge,
            "host",
            &v.hosts_throttled,
        )?;
        let mut family = encoder.encode_descriptor(
            "host_demand_ratio",
            "Proactive renewals per second a PBX host's renewing tenants need, divided by the requests per second its limiter sustains (limits.per_host_requests_per_second); above 1 idle tenants are renewed on demand only",
            None,
            MetricType::Gauge,
        )?;
        for (host, ratio) in &v.host_demand_ratio {
            let labels = [("host", host.as_str())];
            ConstGauge::new(*ratio).encode(family.encode_family(&labels)?)?;
        }
        labelled(
            &mut encoder,
            "tenants_busy",
            "Renewing tenants asked for (GetToken, ReportRejectedToken) within refresh.idle_after_seconds or with a WatchToken stream open, per PBX host",
            MetricType::Gauge,
            "host",
            &v.tenants_busy,
        )?;
        labelled(
            &mut encoder,
            "tenants_idle",
            "Renewing tenants not asked for within refresh.idle_after_seconds and without a stream, per PBX host",
            MetricType::Gauge,
            "host",
            &v.tenants_idle,
        )?;
        gauge(
            &mut encoder,
            "database_writable",
            "1 while the heartbeat write succeeds (health is NOT_SERVING otherwise)",
            if v.database_writable { 1.0 } else { 0.0 },
        )?;
        gauge(
            &mut encoder,
            "tokens_unstored",
            "Tokens fetched but not written to the database (full disk?): served from memory, lost on a restart",
            v.tokens_unstored as f64,
        )?;
        let failures = ConstCounter::new(self.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "metrics_collect_errors",
            "Scrapes whose levels could not be read from the database (the last values were shown)",
            None,
            failures.metric_type(),
        )?)
    }
}
