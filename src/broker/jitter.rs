//! Where jitter comes from: uniform numbers in [0, 1) for the renewal
//! policy (renewal points, backoff, spreading). Production draws them from
//! the thread RNG (entropy); the deterministic simulation seeds one, so a
//! seed replays every random choice the daemon makes.
//!
//! Does not: decide what the numbers mean (`crate::policy` does).

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A source of jitter, shared by everything the broker schedules.
#[derive(Debug)]
pub struct Jitter(Source);

#[derive(Debug)]
enum Source {
    Entropy,
    /// A std `Mutex`: held for one draw, never across an `.await`. Boxed:
    /// the generator's state is large and production never has one.
    Seeded(Mutex<Box<StdRng>>),
}

impl Jitter {
    /// Fresh randomness on every draw (production).
    pub fn entropy() -> Self {
        Self(Source::Entropy)
    }

    /// A reproducible sequence (simulation): the same seed and the same
    /// order of draws give the same numbers, within one build (`StdRng`'s
    /// algorithm may change between `rand` versions).
    pub fn seeded(seed: u64) -> Self {
        Self(Source::Seeded(Mutex::new(Box::new(StdRng::seed_from_u64(
            seed,
        )))))
    }

    /// A uniform number in [0, 1).
    pub fn next(&self) -> f64 {
        match &self.0 {
            // The thread RNG is not Send, so it is fetched per draw and never
            // held across an await.
            Source::Entropy => rand::thread_rng().gen(),
            Source::Seeded(rng) => rng.lock().unwrap_or_else(|p| p.into_inner()).gen(),
        }
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_replays_and_stays_in_range() {
        let a = Jitter::seeded(7);
        let b = Jitter::seeded(7);
        for _ in 0..1000 {
            let x = a.next();
            assert_eq!(x, b.next());
            assert!((0.0..1.0).contains(&x));
        }
        let e = Jitter::entropy();
        assert!((0.0..1.0).contains(&e.next()));
    }
}
