//! Stalled recovery: entries a consumer has held longer than the lease (it crashed, or hangs) go
//! back to their stream for a live consumer, with the attempt counted; an entry whose attempts are
//! exhausted goes to the dead-letter stream with the reason `stalled`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use fleet_queue::{Clock, Queue, Result};
use fleet_runtime::Shutdown;
use serde::Deserialize;

use crate::{config::ConfigError, duration, task};

/// How often pending entries are checked.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// How long a consumer may hold an entry without renewing it before it counts as stalled (as in
/// BullMQ and Asynq): the queue library's default, which consumers assume until this task
/// publishes the configured lease. Consumers renew every third of it, so only a dead, frozen or
/// cut-off consumer loses an entry.
pub const LEASE_DEFAULT: Duration = fleet_queue::LEASE_DEFAULT;
/// Most entries handled by one script call, per priority stream. Each entry costs the script a
/// read, an acknowledgement and an append: measured at about 1.5 ms of Redis time per call of
/// 200 (3.7 ms median, 10 ms worst for 500 on a loaded 2-core machine), so 200 keeps every call
/// well under the 10 ms budget (see `docs/PERFORMANCE.md`).
pub const BATCH_SIZE_DEFAULT: usize = 200;
/// Most batches per queue per run: 100,000 entries per queue per run at the default batch size.
pub const MAX_BATCHES_DEFAULT: u32 = 500;

/// Settings of the stalled-recovery task (`[scheduler.stalled]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time between runs (default [`INTERVAL_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub interval: Duration,
    /// Lease of every queue without its own (default [`LEASE_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub lease: Duration,
    /// Lease per queue name, overriding `lease` (`[scheduler.stalled.lease_per_queue]`,
    /// e.g. `outbound = "2m"`).
    #[serde(with = "duration::per_queue")]
    pub lease_per_queue: BTreeMap<String, Duration>,
    /// Entries per batch (default [`BATCH_SIZE_DEFAULT`]).
    pub batch_size: usize,
    /// Batches per queue per run (default [`MAX_BATCHES_DEFAULT`]).
    pub max_batches_per_run: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: INTERVAL_DEFAULT,
            lease: LEASE_DEFAULT,
            lease_per_queue: BTreeMap::new(),
            batch_size: BATCH_SIZE_DEFAULT,
            max_batches_per_run: MAX_BATCHES_DEFAULT,
        }
    }
}

impl Config {
    /// The lease of `queue`.
    pub fn lease_for(&self, queue: &str) -> Duration {
        self.lease_per_queue
            .get(queue)
            .copied()
            .unwrap_or(self.lease)
    }

    /// Refuses settings that would stop the task or make one call unbounded. (The lease against
    /// the workers' job timeout is checked by [`crate::SchedulerConfig::validate`]; a lease of
    /// zero is allowed here so tests can treat every pending entry as stalled.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::positive("stalled.interval", self.interval)?;
        crate::config::batch("stalled", self.batch_size, self.max_batches_per_run)
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries appended again for a live consumer, their attempt counted.
    pub reclaimed: u64,
    /// Entries whose attempts were exhausted, moved to the dead-letter stream (`stalled`).
    pub dead_lettered: u64,
    /// Pending ids whose entry had already been trimmed; acknowledged and forgotten.
    pub gone: u64,
    /// Queues where the batch limit stopped the run with stalled entries left.
    pub queues_capped: u32,
}

/// The stalled-recovery task over a set of queues, for one consumer group.
#[derive(Debug, Clone)]
pub struct Stalled {
    config: Config,
    group: String,
    queues: Vec<Queue>,
    batch: Arc<task::AdaptiveBatch>,
}

impl Stalled {
    /// The task for consumer group `group` of `queues`.
    pub fn new(config: Config, group: impl Into<String>, queues: Vec<Queue>) -> Self {
        Stalled {
            batch: Arc::new(task::AdaptiveBatch::new(config.batch_size)),
            config,
            group: group.into(),
            queues,
        }
    }

    /// Recovers every entry pending longer than its queue's lease, a batch at a time while
    /// batches come back full, up to the per-run limit (batches shrink while Redis times out).
    /// Idle times are measured by Redis, so `now` only stamps dead letters: the task's loop
    /// passes [`Clock::Redis`]; tests pass a time in Unix ms.
    pub async fn run_once(&self, now: impl Into<Clock>) -> Result<Outcome> {
        let now = now.into();
        let mut out = Outcome::default();
        for q in &self.queues {
            let lease = self.config.lease_for(q.name());
            // Consumers renew their leases within the lease published here (every third of it),
            // so the lease has one home: this task's configuration.
            q.publish_lease(lease).await?;
            let (mut reclaimed, mut dead, mut gone) = (0u64, 0u64, 0u64);
            let mut batches = 0u32;
            loop {
                let size = self.batch.get();
                let r = q.reclaim_stalled(&self.group, lease, size, now).await;
                self.batch.observe(&r);
                let r = r?;
                reclaimed += r.requeued;
                dead += r.dead_lettered;
                gone += r.gone;
                batches += 1;
                // The limit applies per priority stream and the counts are summed over the
                // three, so a sum below one batch means every stream came back short.
                if ((r.requeued + r.dead_lettered + r.gone) as usize) < size {
                    break;
                }
                if batches >= self.config.max_batches_per_run {
                    out.queues_capped += 1;
                    break;
                }
            }
            if reclaimed + dead + gone > 0 {
                let queue = q.name().to_owned();
                metrics::counter!("fleet_scheduler_reclaimed_total", "queue" => queue.clone())
                    .increment(reclaimed);
                metrics::counter!("fleet_scheduler_dead_lettered_total", "queue" => queue,
                    "reason" => "stalled")
                .increment(dead);
                tracing::info!(
                    queue = q.name(),
                    reclaimed,
                    dead_lettered = dead,
                    gone,
                    lease_ms = lease.as_millis() as u64,
                    "recovered stalled entries"
                );
            }
            out.reclaimed += reclaimed;
            out.dead_lettered += dead;
            out.gone += gone;
        }
        Ok(out)
    }

    /// Runs until `stop` is cancelled, every [`Config::interval`] (jittered, staggered start).
    pub async fn run(self, stop: Shutdown) {
        task::run_loop(self, stop).await;
    }
}

impl task::Task for Stalled {
    type Outcome = Outcome;
    const NAME: &'static str = "stalled";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    /// Dead letters are stamped by Redis's clock, not this process's (`_now_ms`).
    async fn tick(&self, _now_ms: u64) -> Result<Outcome> {
        self.run_once(Clock::Redis).await
    }
}
