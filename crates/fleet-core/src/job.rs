//! What a producer says about a job: its id and its enqueue options.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Backoff, Priority};

/// A job's id: a UUIDv7 (time-ordered), stable across retries, replays and stalled recovery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A fresh id: the current Unix millisecond and 74 random bits.
    ///
    /// The random bits come from the thread-local generator rather than the operating system
    /// (`Uuid::now_v7` makes one `getrandom` system call per id, a measurable cost at tens of
    /// thousands of jobs per second). Ids of one millisecond are unique but not ordered among
    /// themselves; nothing relies on that order.
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::from_parts(ms, rand::rng().random())
    }

    fn from_parts(unix_ms: u64, random: [u8; 10]) -> Self {
        JobId(
            uuid::Builder::from_unix_timestamp_millis(unix_ms, &random)
                .into_uuid()
                .to_string(),
        )
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

/// How a worker retries the jobs it fails: attempts in all (first run included) and the backoff
/// between them. A job carries the producer's choice in its header; a worker that owns the
/// policy for its queue (fleet-outbound, which knows what a provider's failures mean) sets its
/// own on its consumer, and it replaces the job's from the first delivery on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all before the job goes to the dead-letter stream; at least 1.
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff: Backoff::DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy; the message names the field under `section`.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if !(1..=1_000).contains(&self.max_attempts) {
            return Err(format!(
                "{section}.max_attempts must be 1..=1000, got {}",
                self.max_attempts
            ));
        }
        if self.backoff.initial_ms == 0 || self.backoff.max_ms < self.backoff.initial_ms {
            return Err(format!(
                "{section}.backoff: initial_ms must be positive and at most max_ms"
            ));
        }
        Ok(())
    }
}

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
    /// What the request behind the idempotency key said (a digest of it, without spaces),
    /// remembered with the key: a later enqueue under the key with another fingerprint is
    /// reported as a conflict (`Enqueued::conflict` in fleet-queue), not as a duplicate.
    /// Single enqueues only.
    pub idempotency_fingerprint: Option<String>,
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
            idempotency_fingerprint: None,
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

    /// Sets the idempotency key and the fingerprint of the request behind it (see
    /// [`EnqueueOptions::idempotency_fingerprint`]).
    pub fn idempotent_with_fingerprint(
        mut self,
        key: impl Into<String>,
        fingerprint: impl Into<String>,
    ) -> Self {
        self.idempotency_key = Some(key.into());
        self.idempotency_fingerprint = Some(fingerprint.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unique_and_sort_by_millisecond() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| JobId::new()).collect();
        assert_eq!(ids.len(), 10_000);
        let earlier = JobId::from_parts(1_700_000_000_000, [0xff; 10]);
        let later = JobId::from_parts(1_700_000_000_001, [0; 10]);
        assert!(earlier < later, "UUIDv7 ids sort by their millisecond");
        assert_eq!(
            uuid::Uuid::parse_str(later.as_str())
                .unwrap()
                .get_version_num(),
            7
        );
    }
}
