//! What a run saw: invariant violations (the first few in full, all
//! counted) and a digest of every event, so two runs of one seed can be
//! compared: same seed, same digest, or the simulation is not
//! deterministic.
//!
//! Does not: decide what is a violation (the PBX and the checker do).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::clock::UnixMs;

/// Kept in full; later ones are only counted.
const KEEP: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: UnixMs,
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = (self.at.0 - super::plan::T0.0) as f64 / 1000.0;
        write!(f, "t={t:.3}s {}: {}", self.kind, self.detail)
    }
}

#[derive(Debug, Default)]
struct Inner {
    kept: Vec<Violation>,
    by_kind: BTreeMap<&'static str, u64>,
    /// FNV-1a over every event.
    digest: u64,
    /// Every event, when asked for (finding where two runs diverge).
    trace: Option<Vec<(i64, u8, i64, i64)>>,
}

#[derive(Debug)]
pub struct Recorder(Mutex<Inner>);

impl Default for Recorder {
    fn default() -> Self {
        Self(Mutex::new(Inner {
            digest: 0xcbf2_9ce4_8422_2325,
            ..Inner::default()
        }))
    }
}

impl Recorder {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps every event in memory too (see [`Recorder::trace`]).
    pub fn keep_trace(&self) {
        self.inner().trace = Some(Vec::new());
    }

    /// The events kept since [`Recorder::keep_trace`], as text lines.
    pub fn trace(&self) -> Option<String> {
        let i = self.inner();
        let t = i.trace.as_ref()?;
        Some(
            t.iter()
                .map(|(at, tag, a, b)| format!("{at} {tag} {a} {b}\n"))
                .collect(),
        )
    }

    pub fn violation(&self, at: UnixMs, kind: &'static str, detail: String) {
        let mut i = self.inner();
        *i.by_kind.entry(kind).or_default() += 1;
        if i.kept.len() < KEEP {
            i.kept.push(Violation { at, kind, detail });
        }
    }

    /// Mixes one event into the digest.
    pub fn event(&self, at: UnixMs, tag: u8, a: i64, b: i64) {
        let mut i = self.inner();
        if let Some(t) = i.trace.as_mut() {
            t.push((at.0, tag, a, b));
        }
        let mut h = i.digest;
        let bytes =
            at.0.to_le_bytes()
                .into_iter()
                .chain([tag])
                .chain(a.to_le_bytes())
                .chain(b.to_le_bytes());
        for byte in bytes {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        i.digest = h;
    }

    pub fn digest(&self) -> u64 {
        self.inner().digest
    }

    pub fn violations(&self) -> (Vec<Violation>, BTreeMap<&'static str, u64>) {
        let i = self.inner();
        (i.kept.clone(), i.by_kind.clone())
    }
}
