//! The simulator's own notion of "now". Deliberately not the daemon's
//! `pbx_tokend::clock`: this crate shares nothing with the daemon, so a fake
//! provider can never quietly agree with the code it is testing. Only what
//! the simulator needs: milliseconds since the epoch, the wall clock, and a
//! clock moved by hand so tests expire codes and tokens without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC): plain integers keep expiry
/// arithmetic exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMs(pub i64);

impl UnixMs {
    /// `self` plus `ms` milliseconds, saturating rather than wrapping.
    pub fn plus_ms(self, ms: i64) -> UnixMs {
        UnixMs(self.0.saturating_add(ms))
    }
}

/// A source of the current time for the simulator.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> UnixMs;
}

/// How the simulator holds its clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMs {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        UnixMs(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock moved only by hand (tests of code and token expiry).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: UnixMs) -> Self {
        Self(AtomicI64::new(start.0))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMs {
        UnixMs(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_by_hand() {
        let c = ManualClock::new(UnixMs(1000));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), UnixMs(3000));
        assert_eq!(UnixMs(i64::MAX).plus_ms(1), UnixMs(i64::MAX));
    }
}
