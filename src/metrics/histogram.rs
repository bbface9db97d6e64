//! A fixed-bucket histogram on plain atomics. prometheus-client's own
//! histogram takes a mutex per observation; the token age is observed on
//! every GetToken, so here an observation is three relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Sums are kept in microseconds (of whatever unit the histogram is in),
/// so they fit an integer atomic.
const SUM_SCALE: f64 = 1_000_000.0;

/// Cheap to clone: clones share the counts (one goes in the registry).
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// `bounds` are the upper bounds, ascending; +Inf is added.
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            inner: Arc::new(Inner {
                bounds: bounds.to_vec(),
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_micros: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        self.inner.observe(value);
    }

    /// (count, sum) as of now.
    pub fn totals(&self) -> (u64, f64) {
        let i = &self.inner;
        let count = i.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let sum = i.sum_micros.load(Ordering::Relaxed) as f64 / SUM_SCALE;
        (count, sum)
    }
}

impl Inner {
    fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let idx = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * SUM_SCALE) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        let buckets: Vec<(f64, u64)> = i
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(i.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = i.sum_micros.load(Ordering::Relaxed) as f64 / SUM_SCALE;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = AtomicHistogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 100.0, f64::NAN, -3.0] {
            h.observe(v);
        }
        let counts: Vec<u64> = h
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        // NaN and negatives count as 0.
        assert_eq!(counts, [4, 1, 1]);
        let (n, sum) = h.totals();
        assert_eq!(n, 6);
        assert!((sum - 106.5).abs() < 1e-6, "{sum}");
    }
}
