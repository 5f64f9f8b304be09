//! The worker's settings: batch size and linger, concurrency, retry backoff, reply rules' limits,
//! with documented defaults and validation at start.

use std::time::Duration;

use fleet_core::{Backoff, Priority};
use fleet_store::PoolOptions;
use serde::Deserialize;

/// Default most entries per batch.
pub const BATCH_SIZE_DEFAULT: usize = 500;
/// Default wait for more entries once a batch has its first.
pub const LINGER_DEFAULT: Duration = Duration::from_millis(10);
/// Default wait for work when the queue is empty (also bounds how long shutdown waits for a read).
pub const BLOCK_DEFAULT: Duration = Duration::from_secs(2);
/// Default workers (consumers) per process. Four, not two: each worker waits for its batch's
/// transaction, so with two the database round trips capped the end-to-end stress case at
/// 8,000 msg/s; with four, batches overlap and it held 16,000 (docs/PERFORMANCE.md, 2026-12-02).
pub const CONSUMERS_DEFAULT: usize = 4;
/// Default backoff between retries of a batch whose write failed transiently (full jitter, capped
/// well below any sensible stalled-entry lease so a healthy worker keeps its entries).
pub const RETRY_BACKOFF_DEFAULT: Backoff = Backoff {
    initial_ms: 100,
    max_ms: 30_000,
};
/// Default age beyond which a message gets no automatic reply (WhatsApp's 24-hour window).
pub const MAX_REPLY_AGE_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Largest accepted batch size.
pub const BATCH_SIZE_MAX: usize = 10_000;
/// Largest accepted number of workers (consumers) per process.
pub const CONSUMERS_MAX: usize = 64;

/// The worker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Most entries per batch.
    pub batch_size: usize,
    /// Wait for more entries once a batch has its first.
    pub linger: Duration,
    /// Wait for work when the queue is empty.
    pub block: Duration,
    /// Workers (consumers) per process, each with its own consumer name.
    pub consumers: usize,
    /// Consumer group on `inbound` (the scheduler reclaims stalled entries of this group).
    pub group: String,
    /// Prefix of consumer names.
    pub consumer_role: String,
    /// Backoff between retries of a batch after a transient failure.
    pub retry_backoff: Backoff,
    /// Messages older than this get no automatic reply.
    pub max_reply_age: Duration,
    /// Priority of automatic replies on `outbound`.
    pub reply_priority: Priority,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_size: BATCH_SIZE_DEFAULT,
            linger: LINGER_DEFAULT,
            block: BLOCK_DEFAULT,
            consumers: CONSUMERS_DEFAULT,
            group: fleet_queue::GROUP_DEFAULT.to_owned(),
            consumer_role: "prospects".to_owned(),
            retry_backoff: RETRY_BACKOFF_DEFAULT,
            max_reply_age: MAX_REPLY_AGE_DEFAULT,
            reply_priority: Priority::Normal,
        }
    }
}

impl Config {
    /// Checks every bound; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=BATCH_SIZE_MAX).contains(&self.batch_size) {
            return Err(format!(
                "prospects.batch_size must be between 1 and {BATCH_SIZE_MAX}"
            ));
        }
        if !(1..=CONSUMERS_MAX).contains(&self.consumers) {
            return Err(format!(
                "prospects.consumers must be between 1 and {CONSUMERS_MAX}"
            ));
        }
        if self.linger > Duration::from_secs(10) {
            return Err("prospects.linger_ms must be at most 10000".into());
        }
        if self.block.is_zero() || self.block > Duration::from_secs(60) {
            return Err("prospects.block_ms must be between 1 and 60000".into());
        }
        if self.retry_backoff.initial_ms == 0
            || self.retry_backoff.max_ms < self.retry_backoff.initial_ms
        {
            return Err("prospects retry backoff: initial must be positive and at most max".into());
        }
        Ok(())
    }
}

/// The `[prospects]` section of the config file; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Most entries per batch (default 500).
    pub batch_size: Option<usize>,
    /// Linger in milliseconds (default 10).
    pub linger_ms: Option<u64>,
    /// Block in milliseconds (default 2000).
    pub block_ms: Option<u64>,
    /// Workers (consumers) per process (default 4).
    pub consumers: Option<usize>,
    /// Pooled Postgres connections (default 8).
    pub db_max_connections: Option<u32>,
    /// Wait for a pooled connection, in milliseconds (default 5000).
    pub db_acquire_timeout_ms: Option<u64>,
    /// Server-side statement timeout, in milliseconds (default 30000).
    pub db_statement_timeout_ms: Option<u64>,
    /// Messages older than this many seconds get no automatic reply (default 86400).
    pub max_reply_age_secs: Option<u64>,
}

impl Section {
    /// The worker config: `self` over the defaults.
    pub fn config(&self) -> Config {
        let d = Config::default();
        Config {
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            linger: self
                .linger_ms
                .map(Duration::from_millis)
                .unwrap_or(d.linger),
            block: self.block_ms.map(Duration::from_millis).unwrap_or(d.block),
            consumers: self.consumers.unwrap_or(d.consumers),
            max_reply_age: self
                .max_reply_age_secs
                .map(Duration::from_secs)
                .unwrap_or(d.max_reply_age),
            ..d
        }
    }

    /// The pool options: `self` over the defaults.
    pub fn pool(&self) -> PoolOptions {
        let d = PoolOptions::default();
        PoolOptions {
            max_connections: self.db_max_connections.unwrap_or(d.max_connections),
            acquire_timeout: self
                .db_acquire_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.acquire_timeout),
            statement_timeout: self
                .db_statement_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.statement_timeout),
            application_name: "fleet-prospects".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            batch_size: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("batch_size"));
        let c = Config {
            consumers: 1000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("consumers"));
    }

    #[test]
    fn section_overrides_defaults() {
        let s: Section =
            toml::from_str("batch_size = 200\nlinger_ms = 5\ndb_max_connections = 4").unwrap();
        let c = s.config();
        assert_eq!(
            (c.batch_size, c.linger, c.consumers),
            (200, Duration::from_millis(5), CONSUMERS_DEFAULT)
        );
        assert_eq!(s.pool().max_connections, 4);
        assert!(
            toml::from_str::<Section>("batch_sise = 1").is_err(),
            "typos are rejected"
        );
    }
}
