//! Exponential backoff with full jitter, capped: how long a failed job waits before its next attempt.
//!
//! Full jitter (a uniformly random delay between zero and the exponential ceiling) spreads the
//! retries of many jobs that failed together, so a provider outage does not come back as a
//! thundering herd when it ends (see AWS's "Exponential Backoff And Jitter").

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A backoff policy, carried in each job's envelope so a retry uses the policy it was enqueued with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Ceiling of the first retry's delay, in milliseconds; each later attempt doubles it.
    pub initial_ms: u64,
    /// Largest ceiling any retry may reach, in milliseconds.
    pub max_ms: u64,
}

impl Backoff {
    /// The default: from 1 s, doubling, up to 5 min.
    pub const DEFAULT: Backoff = Backoff {
        initial_ms: 1_000,
        max_ms: 300_000,
    };

    /// Builds a policy from durations.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial_ms: u64::try_from(initial.as_millis()).unwrap_or(u64::MAX),
            max_ms: u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The largest delay the retry after `failed_attempts` failures may get:
    /// `min(max, initial * 2^(failed_attempts - 1))`, and zero before any failure.
    pub fn ceiling(&self, failed_attempts: u32) -> Duration {
        if failed_attempts == 0 {
            return Duration::ZERO;
        }
        let exponent = (failed_attempts - 1).min(63);
        let ceiling = self
            .initial_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        Duration::from_millis(ceiling)
    }

    /// A delay drawn uniformly from `[0, ceiling(failed_attempts)]` (full jitter).
    pub fn delay<R: Rng + ?Sized>(&self, failed_attempts: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(failed_attempts).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn ceilings_double_then_cap() {
        let b = Backoff::DEFAULT;
        assert_eq!(b.ceiling(0), Duration::ZERO);
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(9), Duration::from_secs(256));
        assert_eq!(b.ceiling(10), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::DEFAULT;
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..200).map(|_| b.delay(6, &mut rng)).collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 150,
            "full jitter must spread retries, got {}",
            distinct.len()
        );
        let below_half = delays.iter().filter(|d| **d < b.ceiling(6) / 2).count();
        assert!(
            (60..140).contains(&below_half),
            "about half below the midpoint, got {below_half}"
        );
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling_or_cap(
            initial in 1u64..100_000,
            max in 1u64..10_000_000,
            attempts in 0u32..200,
            seed in any::<u64>(),
        ) {
            let b = Backoff { initial_ms: initial, max_ms: max };
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.delay(attempts, &mut rng);
            prop_assert!(d <= b.ceiling(attempts));
            prop_assert!(d <= Duration::from_millis(max));
        }

        #[test]
        fn ceiling_is_monotonic(initial in 1u64..100_000, max in 1u64..10_000_000, attempts in 0u32..200) {
            let b = Backoff { initial_ms: initial, max_ms: max };
            prop_assert!(b.ceiling(attempts) <= b.ceiling(attempts + 1));
        }
    }
}
