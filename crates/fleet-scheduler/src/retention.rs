//! Retention: acknowledged entries are trimmed from each priority stream by age and by count, and
//! dead letters likewise, so Redis memory stays bounded. An entry still pending in any consumer
//! group, or not yet delivered, is never removed. (Idempotency keys need no task: each is written
//! with its own TTL and expires by itself.)

use std::{sync::Arc, time::Duration};

use fleet_queue::{Queue, Result, Retention as Bounds};
use fleet_runtime::Shutdown;
use serde::Deserialize;

use crate::{config::ConfigError, duration, task};

/// How often retention runs.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Acknowledged entries older than this are removed (history for inspection and debugging).
pub const ACKED_MAX_AGE_DEFAULT: Option<Duration> = Some(Duration::from_secs(3600));
/// At most this many acknowledged entries are kept per priority stream.
pub const ACKED_MAX_COUNT_DEFAULT: Option<u64> = Some(100_000);
/// Dead letters older than this are removed: two weeks to look at them and replay them.
pub const DEAD_MAX_AGE_DEFAULT: Option<Duration> = Some(Duration::from_secs(14 * 86_400));
/// At most this many dead letters are kept per queue.
pub const DEAD_MAX_COUNT_DEFAULT: Option<u64> = Some(100_000);
/// Most entries looked at (and removed) by one call, per stream.
pub const BATCH_SIZE_DEFAULT: usize = 1_000;
/// Most batches per queue per run.
pub const MAX_BATCHES_DEFAULT: u32 = 100;

/// Settings of the retention task (`[scheduler.retention]`).
///
/// Each bound is a value or `None` (written `"off"`, `"disabled"` or `-1` in the file), which
/// disables that bound. A bound of zero is not "disabled": `acked_max_count = 0` keeps no
/// acknowledged entry at all. With both bounds of a kind disabled, that kind is kept forever
/// (the dead-letter stream still has its approximate cap,
/// [`fleet_queue::DEAD_LETTER_CAP_DEFAULT`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time between runs (default [`INTERVAL_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub interval: Duration,
    /// Age past which acknowledged entries go (default [`ACKED_MAX_AGE_DEFAULT`]).
    #[serde(with = "duration::optional")]
    pub acked_max_age: Option<Duration>,
    /// Acknowledged entries kept per stream (default [`ACKED_MAX_COUNT_DEFAULT`]).
    #[serde(with = "duration::optional_count")]
    pub acked_max_count: Option<u64>,
    /// Age past which dead letters go (default [`DEAD_MAX_AGE_DEFAULT`]).
    #[serde(with = "duration::optional")]
    pub dead_max_age: Option<Duration>,
    /// Dead letters kept per queue (default [`DEAD_MAX_COUNT_DEFAULT`]).
    #[serde(with = "duration::optional_count")]
    pub dead_max_count: Option<u64>,
    /// Entries per batch (default [`BATCH_SIZE_DEFAULT`]).
    pub batch_size: usize,
    /// Batches per queue and kind per run (default [`MAX_BATCHES_DEFAULT`]).
    pub max_batches_per_run: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: INTERVAL_DEFAULT,
            acked_max_age: ACKED_MAX_AGE_DEFAULT,
            acked_max_count: ACKED_MAX_COUNT_DEFAULT,
            dead_max_age: DEAD_MAX_AGE_DEFAULT,
            dead_max_count: DEAD_MAX_COUNT_DEFAULT,
            batch_size: BATCH_SIZE_DEFAULT,
            max_batches_per_run: MAX_BATCHES_DEFAULT,
        }
    }
}

/// The queue library's bounds for an age and a count, `None` when both are disabled. A disabled
/// bound becomes one that never matches (an age beyond any clock, a count beyond any stream).
fn bounds(age: Option<Duration>, count: Option<u64>) -> Option<Bounds> {
    if age.is_none() && count.is_none() {
        return None;
    }
    Some(Bounds {
        max_age: age.unwrap_or(Duration::from_millis(u64::MAX)),
        max_count: count.unwrap_or(u64::MAX),
    })
}

impl Config {
    /// Refuses settings that would stop the task or make one call unbounded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::positive("retention.interval", self.interval)?;
        crate::config::batch("retention", self.batch_size, self.max_batches_per_run)
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Acknowledged entries removed from the priority streams.
    pub trimmed: u64,
    /// Dead letters removed.
    pub dead_trimmed: u64,
    /// Queues where the batch limit stopped the run with entries left to remove.
    pub queues_capped: u32,
}

/// The retention task over a set of queues.
#[derive(Debug, Clone)]
pub struct Retention {
    config: Config,
    queues: Vec<Queue>,
    batch: Arc<task::AdaptiveBatch>,
}

impl Retention {
    /// The task for `queues`.
    pub fn new(config: Config, queues: Vec<Queue>) -> Self {
        Retention {
            batch: Arc::new(task::AdaptiveBatch::new(config.batch_size)),
            config,
            queues,
        }
    }

    /// Removes what the bounds allow at `now_ms` (ages are measured against stream ids, which
    /// Redis stamps with its own clock), a batch at a time while batches come back full, up to
    /// the per-run limit.
    pub async fn run_once(&self, now_ms: u64) -> Result<Outcome> {
        let c = &self.config;
        let acked = bounds(c.acked_max_age, c.acked_max_count);
        let dead = bounds(c.dead_max_age, c.dead_max_count);
        let mut out = Outcome::default();
        for q in &self.queues {
            let mut capped = false;
            let mut trimmed = 0u64;
            if let Some(b) = acked {
                let (n, cap) = self.batches(|size| q.trim(b, size, now_ms)).await?;
                trimmed = n;
                capped |= cap;
            }
            let mut dead_trimmed = 0u64;
            if let Some(b) = dead {
                let (n, cap) = self.batches(|size| q.trim_dead(b, size, now_ms)).await?;
                dead_trimmed = n;
                capped |= cap;
            }
            if trimmed + dead_trimmed > 0 {
                let queue = q.name().to_owned();
                metrics::counter!("fleet_scheduler_trimmed_total", "queue" => queue.clone())
                    .increment(trimmed);
                metrics::counter!("fleet_scheduler_dead_trimmed_total", "queue" => queue)
                    .increment(dead_trimmed);
                tracing::info!(
                    queue = q.name(),
                    trimmed,
                    dead_trimmed,
                    "removed entries past retention"
                );
            }
            out.trimmed += trimmed;
            out.dead_trimmed += dead_trimmed;
            out.queues_capped += u32::from(capped);
        }
        Ok(out)
    }

    /// Calls `step` with the batch size while it removes a full batch, up to the per-run limit
    /// (batches shrink while Redis times out); returns the total and whether the limit stopped it.
    async fn batches<F, Fut>(&self, mut step: F) -> Result<(u64, bool)>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let mut total = 0;
        for _ in 0..self.config.max_batches_per_run {
            let size = self.batch.get();
            let r = step(size).await;
            self.batch.observe(&r);
            let n = r?;
            total += n;
            // A stream call removes at most one batch per priority stream; less than one batch
            // in all means nothing is left that this run may remove.
            if (n as usize) < size {
                return Ok((total, false));
            }
        }
        Ok((total, true))
    }

    /// Runs until `stop` is cancelled, every [`Config::interval`] (jittered, staggered start).
    pub async fn run(self, stop: Shutdown) {
        task::run_loop(self, stop).await;
    }
}

impl task::Task for Retention {
    type Outcome = Outcome;
    const NAME: &'static str = "retention";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn tick(&self, now_ms: u64) -> Result<Outcome> {
        self.run_once(now_ms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_bounds_never_match_and_both_disabled_skip_the_kind() {
        assert_eq!(bounds(None, None), None);
        let b = bounds(None, Some(5)).unwrap();
        assert_eq!(b.max_count, 5);
        assert_eq!(b.max_age.as_millis() as u64, u64::MAX);
        let b = bounds(Some(Duration::ZERO), None).unwrap();
        assert_eq!((b.max_age, b.max_count), (Duration::ZERO, u64::MAX));
    }
}
