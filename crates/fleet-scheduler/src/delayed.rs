//! Delayed promotion: entries whose retry or delay is due move from each queue's delayed set onto
//! their priority streams, in bounded atomic batches (one script call per batch).

use std::{sync::Arc, time::Duration};

use fleet_queue::{Clock, Queue, Result};
use fleet_runtime::Shutdown;
use serde::Deserialize;

use crate::{config::ConfigError, duration, task};

/// How often due entries are promoted: the precision of every retry delay.
pub const INTERVAL_DEFAULT: Duration = Duration::from_millis(250);
/// Most entries moved by one script call (bounds how long Redis is busy with one call: 500 took
/// up to 14 ms under load in the benchmark, 200 stays well under the 10 ms budget).
pub const BATCH_SIZE_DEFAULT: usize = 200;
/// Most batches per queue per run; what is left waits for the next run (bounds one run).
pub const MAX_BATCHES_DEFAULT: u32 = 50;

/// Settings of the delayed-promotion task (`[scheduler.delayed]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time between runs (default [`INTERVAL_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub interval: Duration,
    /// Entries per batch (default [`BATCH_SIZE_DEFAULT`]).
    pub batch_size: usize,
    /// Batches per queue per run (default [`MAX_BATCHES_DEFAULT`]).
    pub max_batches_per_run: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: INTERVAL_DEFAULT,
            batch_size: BATCH_SIZE_DEFAULT,
            max_batches_per_run: MAX_BATCHES_DEFAULT,
        }
    }
}

impl Config {
    /// Refuses settings that would stop the task or make one call unbounded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::positive("delayed.interval", self.interval)?;
        crate::config::batch("delayed", self.batch_size, self.max_batches_per_run)
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries moved onto their streams.
    pub promoted: u64,
    /// Queues where the batch limit stopped the run with entries still due.
    pub queues_capped: u32,
}

/// The delayed-promotion task over a set of queues.
#[derive(Debug, Clone)]
pub struct Delayed {
    config: Config,
    queues: Vec<Queue>,
    batch: Arc<task::AdaptiveBatch>,
}

impl Delayed {
    /// The task for `queues`.
    pub fn new(config: Config, queues: Vec<Queue>) -> Self {
        Delayed {
            batch: Arc::new(task::AdaptiveBatch::new(config.batch_size)),
            config,
            queues,
        }
    }

    /// Promotes the entries due at `now` in every queue, a batch at a time while batches come
    /// back full, up to the per-run limit (batches shrink while Redis times out). Several
    /// schedulers running this at once promote each entry once: each batch is one script, and
    /// scripts run one at a time. The task's loop passes [`Clock::Redis`], the clock delayed
    /// enqueues and retries are scheduled by; tests pass a time in Unix ms.
    pub async fn run_once(&self, now: impl Into<Clock>) -> Result<Outcome> {
        let now = now.into();
        let mut out = Outcome::default();
        for q in &self.queues {
            let mut promoted = 0u64;
            let mut batches = 0u32;
            loop {
                let size = self.batch.get();
                let r = q.promote_due(now, size).await;
                self.batch.observe(&r);
                let n = r?;
                promoted += n;
                batches += 1;
                if (n as usize) < size {
                    break;
                }
                if batches >= self.config.max_batches_per_run {
                    out.queues_capped += 1;
                    break;
                }
            }
            if promoted > 0 {
                metrics::counter!("fleet_scheduler_promoted_total", "queue" => q.name().to_owned())
                    .increment(promoted);
                tracing::info!(queue = q.name(), promoted, batches, "promoted due entries");
            }
            out.promoted += promoted;
        }
        Ok(out)
    }

    /// Runs until `stop` is cancelled, every [`Config::interval`] (jittered, staggered start).
    pub async fn run(self, stop: Shutdown) {
        task::run_loop(self, stop).await;
    }
}

impl task::Task for Delayed {
    type Outcome = Outcome;
    const NAME: &'static str = "delayed";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    /// Due times are read from Redis's clock, not this process's (`_now_ms`): every process
    /// agrees on it.
    async fn tick(&self, _now_ms: u64) -> Result<Outcome> {
        self.run_once(Clock::Redis).await
    }
}
