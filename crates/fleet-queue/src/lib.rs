#![doc = include_str!("../README.md")]

#[cfg(feature = "apalis")]
pub mod apalis_backend;
mod broker;
mod consumer;
mod dlq;
mod durability;
mod entry;
mod error;
mod fence;
mod inspect;
pub mod keys;
pub mod leader;
mod lease;
mod maintenance;
mod metrics_doc;
mod queue;
pub mod ratelimit;
mod server_check;
mod waiting;

pub use broker::{Broker, COMMAND_BUFFER_LIMIT, COMMAND_TIMEOUT_DEFAULT};
pub use consumer::{
    Consumer, ConsumerOptions, DEAD_LETTER_CAP_DEFAULT, Delivery, GROUP_DEFAULT, PriorityMode,
    RetryAfter, RetryOutcome, Settler, unique_consumer_name,
};
pub use dlq::{DeadEntry, REPLAY_CHUNK};
pub use durability::Persistence;
pub use entry::StoredJob;
pub use error::{Error, Result};
pub use fence::Fence;
pub use inspect::{ConsumerInfo, GroupStats, PeekedJob, PriorityStats, QueueStats};
pub use lease::{HEARTBEAT_CHUNK, LEASE_DEFAULT};
pub use maintenance::{Reclaimed, Retention};
pub use metrics_doc::describe_metrics;
pub use queue::{BATCH_LIMIT, Clock, Enqueued, Queue, now_ms};
pub use server_check::{MIN_REDIS_VERSION, ServerFacts, ServerProblem};
pub use waiting::{WAITING_PAGE_ENTRIES, WAITING_PAGES_PER_READ, Waiting, WaitingBudget};
