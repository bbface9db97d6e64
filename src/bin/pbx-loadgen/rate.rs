//! `--rate N`: open-loop load at a steady N calls/s, for soak tests where
//! the daemon must be judged at a given load rather than at saturation.
//!
//! `--concurrency` tasks share the schedule: call j is due at
//! `start + j / N` and task i makes calls i, i + K, i + 2K, ... (K tasks).
//! A task that is still waiting for an earlier answer when its next call is
//! due sends it late, and that call's latency counts from when it was due,
//! so a stalled server shows in the percentiles instead of quietly lowering
//! the rate (no coordinated omission). The timer wakes up to about a
//! millisecond late by itself; a call sent within `TIMER_SLACK` of its due
//! time counts from when it was really sent, so timer resolution is not
//! reported as server latency.
//!
//! Does not: open connections or report (main.rs does).

use std::time::Duration;

use tokio::time::Instant;

/// How late the timer may wake a task before the lateness is blamed on
/// the server.
pub const TIMER_SLACK: Duration = Duration::from_millis(2);

/// When call `index` of a schedule of `rate` calls/s starting at `start`
/// is due.
pub fn due(start: Instant, rate: f64, index: u64) -> Instant {
    start + Duration::from_secs_f64(index as f64 / rate)
}

/// Where a call's latency is measured from: its due time when it was sent
/// late because the task was busy, its real start otherwise.
pub fn latency_origin(due: Instant, sent: Instant) -> Instant {
    if sent > due + TIMER_SLACK {
        due
    } else {
        sent
    }
}

/// True when the call went out later than the timer alone explains.
pub fn is_late(due: Instant, sent: Instant) -> bool {
    sent > due + TIMER_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced() {
        let t0 = Instant::now();
        assert_eq!(due(t0, 1000.0, 0), t0);
        assert_eq!(due(t0, 1000.0, 1), t0 + Duration::from_millis(1));
        assert_eq!(due(t0, 2000.0, 3), t0 + Duration::from_micros(1500));
        assert_eq!(due(t0, 0.5, 1), t0 + Duration::from_secs(2));
    }

    #[test]
    fn late_calls_count_from_their_due_time() {
        let t0 = Instant::now();
        let on_time = t0 + Duration::from_micros(900);
        assert_eq!(latency_origin(t0, on_time), on_time);
        assert!(!is_late(t0, on_time));
        let late = t0 + Duration::from_millis(30);
        assert_eq!(latency_origin(t0, late), t0);
        assert!(is_late(t0, late));
    }
}
