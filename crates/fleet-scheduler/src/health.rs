//! Queue-health gauges: for every queue and priority, what waits, what is in flight, how old the
//! oldest in-flight entry is, what is delayed and dead, how far the workers' group lags, how many
//! consumers there are and whether the queue is paused: the signals an autoscaler (KEDA) or a
//! Prometheus alert needs. Read with bounded commands only (`XINFO`, `XLEN`, `ZCARD`,
//! `XPENDING ... COUNT 1`, and the bounded pages of a recount).
//!
//! What waits is [`fleet_queue::Queue::waiting`], the figure `fleetctl queues` and ingest's
//! high-water mark read too: exact after a Redis restart, a failover or a deletion, where Redis
//! 7.0's own lag is stale or missing. While a recount is under way (a few refreshes at most) the
//! figure is a lower bound and `fleet_queue_length_exact` is 0.
//!
//! This task runs on every replica, leader or not: it only reads, and a replica that stopped
//! leading would otherwise keep serving its last (stale) values.

use std::time::Duration;

use fleet_core::Priority;
use fleet_queue::{Queue, Result};
use fleet_runtime::Shutdown;
use serde::Deserialize;

use crate::{config::ConfigError, duration, task};

/// How often the gauges are refreshed.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(5);

/// Settings of the health task (`[scheduler.health]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time between refreshes (default [`INTERVAL_DEFAULT`]).
    #[serde(with = "duration::required")]
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: INTERVAL_DEFAULT,
        }
    }
}

impl Config {
    /// Refuses an interval of zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::positive("health.interval", self.interval)
    }
}

/// One priority stream of a queue, as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityHealth {
    /// The level.
    pub priority: Priority,
    /// Entries waiting to be delivered (`fleet_queue_length`).
    pub waiting: u64,
    /// Whether `waiting` is exact (`fleet_queue_length_exact`); false only while a recount is
    /// under way, when `waiting` is a lower bound.
    pub exact: bool,
    /// Entries delivered and not yet acknowledged (`fleet_queue_pending`).
    pub pending: u64,
    /// Entries not yet delivered to the workers' group (`fleet_queue_lag`): the same exact figure
    /// as `waiting` (Fleet's streams have that one group), or the stream's length while the
    /// group does not exist yet. Redis's own lag is not used: it is stale after a restart.
    pub lag: u64,
}

/// One queue, as the gauges show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHealth {
    /// Queue name.
    pub queue: String,
    /// Per priority, highest first.
    pub priorities: Vec<PriorityHealth>,
    /// Entries in the delayed set (`fleet_queue_delayed`).
    pub delayed: u64,
    /// Dead letters (`fleet_queue_dead`).
    pub dead: u64,
    /// Idle time of the oldest pending entry in ms, 0 when nothing is pending
    /// (`fleet_queue_oldest_pending_seconds`).
    pub oldest_pending_ms: u64,
    /// Distinct consumers (`fleet_queue_consumers`).
    pub consumers: u64,
    /// Whether the queue is paused (`fleet_queue_paused`, 0 or 1).
    pub paused: bool,
}

/// The health task over a set of queues.
#[derive(Debug, Clone)]
pub struct Health {
    config: Config,
    group: String,
    queues: Vec<Queue>,
}

impl Health {
    /// The task for `queues`, reporting the lag of consumer group `group`.
    pub fn new(config: Config, group: impl Into<String>, queues: Vec<Queue>) -> Self {
        Health {
            config,
            group: group.into(),
            queues,
        }
    }

    /// Reads every queue's state, sets the gauges and returns what it set.
    pub async fn run_once(&self, _now_ms: u64) -> Result<Vec<QueueHealth>> {
        let mut out = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            let stats = q.stats().await?;
            let priorities = stats
                .priorities
                .iter()
                .map(|p| PriorityHealth {
                    priority: p.priority,
                    waiting: p.waiting,
                    exact: p.waiting_exact,
                    pending: p.pending,
                    lag: if p.groups.iter().any(|g| g.name == self.group) {
                        p.waiting
                    } else {
                        p.length
                    },
                })
                .collect();
            let h = QueueHealth {
                queue: q.name().to_owned(),
                priorities,
                delayed: stats.delayed,
                dead: stats.dead,
                oldest_pending_ms: stats.oldest_pending_ms().unwrap_or(0),
                consumers: stats.consumers,
                paused: stats.paused,
            };
            record(&h);
            out.push(h);
        }
        Ok(out)
    }

    /// Runs until `stop` is cancelled, every [`Config::interval`] (jittered, staggered start).
    pub async fn run(self, stop: Shutdown) {
        task::run_loop(self, stop).await;
    }
}

fn record(h: &QueueHealth) {
    let queue = h.queue.clone();
    for p in &h.priorities {
        let labels = [
            ("queue", queue.clone()),
            ("priority", p.priority.as_str().to_owned()),
        ];
        metrics::gauge!("fleet_queue_length", &labels).set(p.waiting as f64);
        metrics::gauge!("fleet_queue_length_exact", &labels).set(u8::from(p.exact) as f64);
        metrics::gauge!("fleet_queue_pending", &labels).set(p.pending as f64);
        metrics::gauge!("fleet_queue_lag", &labels).set(p.lag as f64);
    }
    metrics::gauge!("fleet_queue_delayed", "queue" => queue.clone()).set(h.delayed as f64);
    metrics::gauge!("fleet_queue_dead", "queue" => queue.clone()).set(h.dead as f64);
    metrics::gauge!("fleet_queue_oldest_pending_seconds", "queue" => queue.clone())
        .set(h.oldest_pending_ms as f64 / 1_000.0);
    metrics::gauge!("fleet_queue_consumers", "queue" => queue.clone()).set(h.consumers as f64);
    metrics::gauge!("fleet_queue_paused", "queue" => queue).set(u8::from(h.paused) as f64);
}

impl task::Task for Health {
    type Outcome = Vec<QueueHealth>;
    const NAME: &'static str = "health";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn tick(&self, now_ms: u64) -> Result<Vec<QueueHealth>> {
        self.run_once(now_ms).await
    }
}
