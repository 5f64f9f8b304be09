//! In and out rates of a queue, computed from two successive [`QueueStats`] samples.
//!
//! The queue library exposes per-priority stream lengths and waiting counts, not the streams'
//! `entries-added` / groups' `entries-read` counters, so the rates are derived from them:
//! `in` is the growth of the streams' lengths (appends), and `out` the growth of `length - waiting`
//! (entries delivered to a consumer). Acknowledged entries stay in a stream until the scheduler
//! trims it, so a trim between two samples shrinks both; when a length shrank the rates of that
//! interval are unknown (`None`) rather than wrong.

use fleet_queue::QueueStats;

/// The monotonic-between-trims counters of one queue sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Entries in the streams, all priorities (appended and not yet trimmed).
    pub appended: u64,
    /// Entries of the streams already delivered to a consumer (`length - waiting`).
    pub delivered: u64,
}

impl Counters {
    /// The counters of a sample.
    pub fn of(stats: &QueueStats) -> Counters {
        let appended = stats.priorities.iter().map(|p| p.length).sum();
        let delivered = stats
            .priorities
            .iter()
            .map(|p| p.length.saturating_sub(p.waiting))
            .sum();
        Counters {
            appended,
            delivered,
        }
    }
}

/// Rates over one interval, per second; `None` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Rates {
    /// Entries appended per second.
    pub in_per_s: Option<f64>,
    /// Entries delivered to consumers per second.
    pub out_per_s: Option<f64>,
}

/// The rates between two samples `elapsed_ms` apart.
pub fn between(prev: Counters, cur: Counters, elapsed_ms: u64) -> Rates {
    if elapsed_ms == 0 || cur.appended < prev.appended {
        // A trim happened (or no time passed): the deltas say nothing reliable.
        return Rates::default();
    }
    let per_s = |a: u64, b: u64| {
        b.checked_sub(a)
            .map(|d| d as f64 * 1000.0 / elapsed_ms as f64)
    };
    Rates {
        in_per_s: per_s(prev.appended, cur.appended),
        out_per_s: per_s(prev.delivered, cur.delivered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_per_second() {
        let a = Counters {
            appended: 100,
            delivered: 40,
        };
        let b = Counters {
            appended: 150,
            delivered: 90,
        };
        let r = between(a, b, 2000);
        assert_eq!(r.in_per_s, Some(25.0));
        assert_eq!(r.out_per_s, Some(25.0));
    }

    #[test]
    fn a_trim_or_no_time_gives_unknown_rates() {
        let a = Counters {
            appended: 100,
            delivered: 90,
        };
        let trimmed = Counters {
            appended: 20,
            delivered: 10,
        };
        assert_eq!(between(a, trimmed, 1000), Rates::default());
        assert_eq!(between(a, a, 0), Rates::default());
        assert_eq!(between(a, a, 1000).in_per_s, Some(0.0));
    }
}
