//! Idle-consumer cleanup: every replica that ever read a queue leaves a consumer in its group;
//! those idle past a threshold and holding nothing pending are deleted, so `XINFO`, `fleetctl`
//! and the consumer gauge show the fleet as it is. A consumer holding entries is left alone:
//! deleting it would drop its pending entries, which stalled recovery must hand to another. The
//! check and the delete are one script in `fleet-queue`, so a read cannot slip in between.

use std::time::Duration;

use fleet_queue::{Queue, Result};
use fleet_runtime::Shutdown;
use serde::Deserialize;

use crate::{config::ConfigError, duration, task};

/// How often consumers are checked.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Idle time after which a consumer holding nothing is removed. Long compared to any blocking
/// read, so a live but quiet consumer (which touches its group on every read) is never removed.
pub const IDLE_DEFAULT: Duration = Duration::from_secs(3600);

/// Settings of the idle-consumer task (`[scheduler.consumers]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time between runs (default [`INTERVAL_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub interval: Duration,
    /// Idle time past which an empty consumer goes (default [`IDLE_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub idle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: INTERVAL_DEFAULT,
            idle: IDLE_DEFAULT,
        }
    }
}

impl Config {
    /// Refuses settings that would stop the task. (An idle threshold of zero is allowed for
    /// tests; it removes every consumer holding nothing.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::positive("consumers.interval", self.interval)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Consumers removed.
    pub removed: u64,
}

/// The idle-consumer task over a set of queues.
#[derive(Debug, Clone)]
pub struct Consumers {
    config: Config,
    queues: Vec<Queue>,
}

impl Consumers {
    /// The task for `queues`.
    pub fn new(config: Config, queues: Vec<Queue>) -> Self {
        Consumers { config, queues }
    }

    /// Removes the consumers idle past the threshold that hold nothing. Idle times are measured
    /// by Redis, so `now_ms` is unused; it is taken for the same shape as every task.
    pub async fn run_once(&self, _now_ms: u64) -> Result<Outcome> {
        let mut out = Outcome::default();
        for q in &self.queues {
            let removed = q.remove_idle_consumers(self.config.idle).await?;
            if !removed.is_empty() {
                metrics::counter!("fleet_scheduler_consumers_removed_total",
                    "queue" => q.name().to_owned())
                .increment(removed.len() as u64);
                tracing::info!(
                    queue = q.name(),
                    removed = removed.len(),
                    consumers = ?removed,
                    idle_ms = self.config.idle.as_millis() as u64,
                    "removed idle consumers"
                );
            }
            out.removed += removed.len() as u64;
        }
        Ok(out)
    }

    /// Runs until `stop` is cancelled, every [`Config::interval`] (jittered, staggered start).
    pub async fn run(self, stop: Shutdown) {
        task::run_loop(self, stop).await;
    }
}

impl task::Task for Consumers {
    type Outcome = Outcome;
    const NAME: &'static str = "consumers";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn tick(&self, now_ms: u64) -> Result<Outcome> {
        self.run_once(now_ms).await
    }
}
