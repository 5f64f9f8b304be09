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

// The leadership lock belongs to fleet-queue (the only crate that builds keys and Lua). Until
// fleet-queue declares `pub mod leader;`, its file is compiled here, against the names it
// expects at its crate root.
use fleet_queue::{Error, Result, keys, unique_consumer_name};
#[path = "../../fleet-queue/src/leader.rs"]
pub mod leader;

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
