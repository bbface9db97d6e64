//! Latency over time: the measured window cut into `--series-interval`
//! slices (10 s by default), one histogram each, so a tail that drifts over
//! a long soak shows when it started instead of vanishing in the overall
//! p99.
//!
//! Each task fills a histogram for the slice it is in and hands it to the
//! shared [`Series`] when it moves on (one lock per task per slice, never
//! one per call, so the closed loop pays nothing it would notice).
//!
//! Does not: decide when a call counts (load.rs does) or print (main.rs).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Per-slice histograms: 1 µs .. 60 s at 2 significant digits (small
/// enough to keep one per slice for a 30-minute soak).
fn slice_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 2).map_err(|e| anyhow!("histogram: {e}"))
}

/// The slices of the whole run, shared by the tasks.
pub struct Series {
    interval: Duration,
    slices: Mutex<BTreeMap<u64, Histogram<u64>>>,
}

impl Series {
    pub fn new(interval: Duration) -> Self {
        Series {
            interval,
            slices: Mutex::new(BTreeMap::new()),
        }
    }

    /// The slice a call belongs to, from its latency origin's offset into
    /// the measured window.
    pub fn slice_of(&self, offset: Duration) -> u64 {
        let step = self.interval.as_micros().max(1);
        u64::try_from(offset.as_micros() / step).unwrap_or(u64::MAX)
    }

    fn add(&self, slice: u64, h: &Histogram<u64>) -> Result<()> {
        let mut slices = self
            .slices
            .lock()
            .map_err(|_| anyhow!("a load task panicked"))?;
        let entry = match slices.entry(slice) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(slice_histogram()?),
        };
        entry
            .add(h)
            .map_err(|e| anyhow!("merging slice histograms: {e}"))
    }

    /// `[{t_s, calls, p50_us, p99_us, max_us}, ...]`, one per slice with
    /// calls, `t_s` the slice's start in seconds into the measured window.
    pub fn to_json(&self) -> Result<Value> {
        let slices = self
            .slices
            .lock()
            .map_err(|_| anyhow!("a load task panicked"))?;
        let secs = self.interval.as_secs_f64();
        Ok(Value::Array(
            slices
                .iter()
                .map(|(i, h)| {
                    json!({
                        "t_s": (*i as f64) * secs,
                        "calls": h.len(),
                        "p50_us": h.value_at_quantile(0.50),
                        "p99_us": h.value_at_quantile(0.99),
                        "max_us": h.max(),
                    })
                })
                .collect(),
        ))
    }
}

/// One task's histogram for the slice it is in.
pub struct TaskSlice {
    slice: u64,
    hist: Histogram<u64>,
}

impl TaskSlice {
    pub fn new() -> Result<Self> {
        Ok(TaskSlice {
            slice: 0,
            hist: slice_histogram()?,
        })
    }

    /// Records one call; hands the previous slice over when it moved on.
    pub fn record(&mut self, series: &Series, slice: u64, micros: u64) -> Result<()> {
        if slice != self.slice {
            self.flush(series)?;
            self.slice = slice;
        }
        self.hist.saturating_record(micros.max(1));
        Ok(())
    }

    /// Hands what is recorded over (at a slice change and at the end).
    pub fn flush(&mut self, series: &Series) -> Result<()> {
        if !self.hist.is_empty() {
            series.add(self.slice, &self.hist)?;
            self.hist.reset();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_land_in_their_slice() -> Result<()> {
        let series = Series::new(Duration::from_secs(10));
        assert_eq!(series.slice_of(Duration::from_millis(9_999)), 0);
        assert_eq!(series.slice_of(Duration::from_secs(10)), 1);
        let mut a = TaskSlice::new()?;
        let mut b = TaskSlice::new()?;
        a.record(&series, 0, 100)?;
        b.record(&series, 0, 300)?;
        a.record(&series, 1, 5_000)?;
        b.record(&series, 2, 7)?;
        a.flush(&series)?;
        b.flush(&series)?;
        let json = series.to_json()?;
        let rows = json.as_array().ok_or_else(|| anyhow!("not an array"))?;
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["calls"], 2);
        assert_eq!(rows[1]["t_s"], 10.0);
        assert!(rows[1]["p99_us"].as_u64().unwrap_or(0) >= 4_900);
        assert_eq!(rows[2]["calls"], 1);
        Ok(())
    }
}
