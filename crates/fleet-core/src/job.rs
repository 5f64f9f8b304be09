//! What a producer says about a job: its id and its enqueue options.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Backoff, Priority};

/// A job's id: a UUIDv7 (time-ordered), stable across retries, replays and stalled recovery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A fresh id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Default number of attempts a job gets before it is dead-lettered.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 8;
/// Default lifetime of an idempotency key: a day, longer than any provider's redelivery window.
pub const IDEMPOTENCY_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Per-job options of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Which of the queue's three streams the job goes to.
    pub priority: Priority,
    /// Attempts the job gets (first run included) before it goes to the dead-letter stream; at least 1.
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// Run no earlier than this long from now; `None` runs it as soon as a worker is free.
    pub delay: Option<Duration>,
    /// A key under which a second enqueue appends nothing and returns the first job's id.
    pub idempotency_key: Option<String>,
    /// How long the idempotency key is remembered.
    pub idempotency_ttl: Duration,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        EnqueueOptions {
            priority: Priority::Normal,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff: Backoff::DEFAULT,
            delay: None,
            idempotency_key: None,
            idempotency_ttl: IDEMPOTENCY_TTL_DEFAULT,
        }
    }
}

impl EnqueueOptions {
    /// Options with the given priority and every other field at its default.
    pub fn with_priority(priority: Priority) -> Self {
        EnqueueOptions {
            priority,
            ..Default::default()
        }
    }

    /// Sets the idempotency key.
    pub fn idempotent(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unique_and_time_ordered() {
        let a = JobId::new();
        let b = JobId::new();
        assert_ne!(a, b);
        assert!(a < b, "UUIDv7 ids sort by creation time");
    }
}
