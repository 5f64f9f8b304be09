//! fleet-scheduler: keeps every queue healthy (delayed promotion, stalled recovery, retention,
//! idle consumers, health gauges), one leader at a time among any number of replicas.
#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumers;
pub mod delayed;
pub mod duration;
pub mod health;
pub mod metrics;
pub mod retention;
pub mod scheduler;
pub mod stalled;
mod task;

pub use fleet_queue::leader;

pub use config::{ConfigError, LeaderConfig, SchedulerConfig};
pub use leader::LeaderLock;
pub use scheduler::{Role, Scheduler};

use fleet_queue::Broker;
use fleet_runtime::Shutdown;

/// Runs one scheduler replica until `shutdown` is cancelled: validates `config` (refusing it with
/// a one-line error), then campaigns with `lock`, leads when elected, and serves the health
/// gauges throughout. Tests spawn it in-process; `main` calls it after connecting.
pub async fn run(
    config: SchedulerConfig,
    broker: Broker,
    lock: LeaderLock,
    shutdown: Shutdown,
) -> std::result::Result<(), ConfigError> {
    Scheduler::new(config, &broker, lock)?.run(shutdown).await;
    Ok(())
}
