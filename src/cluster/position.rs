//! Where this replica is in the change feed, with the ids it has not seen
//! yet below the highest it has. Ids are taken when a transaction inserts
//! its change and become visible when it commits, so id 12 can be read
//! before id 11 (whose transaction is still running): 11 is a gap, re-read
//! on every pass until it shows up or [`GAP_GIVE_UP_MS`] passes (a rolled
//! back transaction leaves a gap forever). SPIRE's event cache does the
//! same.
//!
//! What this replica reports as applied (for admin calls waiting on every
//! replica) stops below the oldest gap younger than [`GAP_BLOCK_MS`]: a
//! change that may still commit is not claimed as applied; an older gap
//! (almost surely a rollback) stops blocking so one rollback does not hold
//! every admin call for a minute.

use std::collections::BTreeMap;

use crate::clock::UnixMs;

/// How long a gap is re-read before it is taken for a rollback.
pub const GAP_GIVE_UP_MS: i64 = 60_000;

/// How long a gap holds back the applied id reported to other replicas.
pub const GAP_BLOCK_MS: i64 = 5_000;

#[derive(Debug, Clone, Default)]
pub struct Position {
    /// The highest id read.
    highest: i64,
    /// Ids below `highest` not read yet, with when each was first missed.
    gaps: BTreeMap<i64, UnixMs>,
}

impl Position {
    /// Starts after `id` (everything up to it is in the cache).
    pub fn at(id: i64) -> Self {
        Position {
            highest: id,
            gaps: BTreeMap::new(),
        }
    }

    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// Ids to re-read with the next pass.
    pub fn gaps(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// Records the ids a pass read (any order).
    pub fn observe(&mut self, ids: &[i64], now: UnixMs) {
        let mut sorted: Vec<i64> = ids.to_vec();
        sorted.sort_unstable();
        for id in sorted {
            if id > self.highest {
                // Cap how many gaps one jump can open: a feed pruned past a
                // far-behind reader is reloaded whole by the caller.
                let from = (self.highest + 1).max(id - 10_000);
                for missing in from..id {
                    self.gaps.insert(missing, now);
                }
                self.highest = id;
            } else {
                self.gaps.remove(&id);
            }
        }
    }

    /// Forgets gaps re-read for longer than [`GAP_GIVE_UP_MS`].
    pub fn expire(&mut self, now: UnixMs) {
        self.gaps
            .retain(|_, since| now.0 - since.0 < GAP_GIVE_UP_MS);
    }

    /// Every change up to this id is applied (see the module comment).
    pub fn applied(&self, now: UnixMs) -> i64 {
        self.gaps
            .iter()
            .find(|(_, since)| now.0 - since.0 < GAP_BLOCK_MS)
            .map_or(self.highest, |(id, _)| id - 1)
    }

    /// After a full reload: everything up to `id` is in the cache.
    pub fn reset(&mut self, id: i64) {
        *self = Position::at(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_seen_before_a_lower_one_leaves_a_gap_until_it_fills() {
        let mut p = Position::at(10);
        p.observe(&[13, 11], UnixMs(0));
        assert_eq!(p.highest(), 13);
        assert_eq!(p.gaps(), vec![12]);
        assert_eq!(p.applied(UnixMs(100)), 11, "12 may still commit");
        p.observe(&[12], UnixMs(200));
        assert!(p.gaps().is_empty());
        assert_eq!(p.applied(UnixMs(200)), 13);
    }

    #[test]
    fn an_old_gap_stops_blocking_then_is_forgotten() {
        let mut p = Position::at(0);
        p.observe(&[2], UnixMs(0));
        assert_eq!(p.applied(UnixMs(GAP_BLOCK_MS - 1)), 0);
        assert_eq!(p.applied(UnixMs(GAP_BLOCK_MS)), 2);
        p.expire(UnixMs(GAP_GIVE_UP_MS - 1));
        assert_eq!(p.gaps(), vec![1]);
        p.expire(UnixMs(GAP_GIVE_UP_MS));
        assert!(p.gaps().is_empty());
    }

    #[test]
    fn ids_at_or_below_the_highest_without_a_gap_change_nothing() {
        let mut p = Position::at(5);
        p.observe(&[3, 5], UnixMs(0));
        assert_eq!((p.highest(), p.gaps().len()), (5, 0));
    }
}
