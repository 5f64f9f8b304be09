//! Every Redis key Fleet uses for a queue, and nothing else builds one.
//!
//! All keys of a queue carry the queue name as a hash tag (`fleet:{inbound}:normal`), so they live
//! in one Redis Cluster slot and a Lua script may touch all of them; the prefix comes first so
//! two prefixes never share a key.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{<queue>}:high` / `:normal` / `:low` | stream | jobs waiting and in flight, per priority |
//! | `<prefix>:{<queue>}:delayed` | sorted set | jobs waiting for a retry or a delay, scored by due time (ms) |
//! | `<prefix>:{<queue>}:dead` | stream | dead letters, with reason, attempts, last error, original id |
//! | `<prefix>:{<queue>}:paused` | string | present while the queue is paused |
//! | `<prefix>:{<queue>}:lease` | string | the lease in ms the scheduler enforces, for the consumers' heartbeats |
//! | `<prefix>:{<queue>}:fence:<job id>` | string | `<consumer>/<entry id>\|<ms>`: an at-most-once effect of the job is under way and its outcome not recorded yet (see `fence.lua`) |
//! | `<prefix>:{<queue>}:idem:<key>` | string | the job id first enqueued under an idempotency key, with a TTL |
//! | `<prefix>:{<queue>}:sync` | string | a marker written only so a following `WAIT` covers earlier appends (see `durability.rs`), with a TTL |
//! | `<prefix>:{<queue>}:<priority>:count` | hash | progress of a recount of the stream's waiting entries, or the proof that the group's read counter is right (see `waiting.rs`) |

use fleet_core::Priority;

/// The keys of one queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    base: String,
    streams: [String; 3],
}

impl QueueKeys {
    /// The keys of queue `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:{{{queue}}}");
        let streams = Priority::ALL.map(|p| format!("{base}:{}", p.as_str()));
        QueueKeys { base, streams }
    }

    /// The stream of one priority level.
    pub fn stream(&self, priority: Priority) -> &str {
        &self.streams[priority.index()]
    }

    /// The three streams, highest priority first.
    pub fn streams(&self) -> &[String; 3] {
        &self.streams
    }

    /// The count state of one priority stream's waiting entries (see `waiting.rs`).
    pub fn count_state(&self, priority: Priority) -> String {
        format!("{}:count", self.streams[priority.index()])
    }

    /// The replication marker (see `durability.rs`).
    pub fn sync_marker(&self) -> String {
        format!("{}:sync", self.base)
    }

    /// The delayed set.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.base)
    }

    /// The dead-letter stream.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }

    /// The paused flag.
    pub fn paused(&self) -> String {
        format!("{}:paused", self.base)
    }

    /// The lease the scheduler enforces on the queue (ms), which consumers renew within.
    pub fn lease(&self) -> String {
        format!("{}:lease", self.base)
    }

    /// The fence of a job's at-most-once effect.
    pub fn fence(&self, job_id: &str) -> String {
        format!("{}:fence:{job_id}", self.base)
    }

    /// The key remembering an idempotency key.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.base)
    }

    /// The pattern matching every key of the queue (for tests' cleanup only; never scanned in production).
    pub fn pattern(&self) -> String {
        format!("{}:*", self.base)
    }
}

/// A key of a rate limiter shared by every replica: `<prefix>:{rl:<scope>}:<id>`.
pub fn rate_limit_key(prefix: &str, scope: &str, id: &str) -> String {
    format!("{prefix}:{{rl:{scope}}}:{id}")
}

/// The key of the scheduler's leadership lock: `<prefix>:{scheduler}:leader`.
pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}:{{scheduler}}:leader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = QueueKeys::new("fleet", "inbound");
        assert_eq!(k.stream(Priority::Normal), "fleet:{inbound}:normal");
        assert_eq!(k.delayed(), "fleet:{inbound}:delayed");
        assert_eq!(k.dead(), "fleet:{inbound}:dead");
        assert_eq!(
            k.idempotency("meta:msg:wamid.1"),
            "fleet:{inbound}:idem:meta:msg:wamid.1"
        );
        for key in k.streams().iter().cloned().chain([
            k.delayed(),
            k.dead(),
            k.paused(),
            k.lease(),
            k.count_state(Priority::Low),
            k.sync_marker(),
        ]) {
            assert!(
                key.contains("{inbound}"),
                "{key} must carry the queue's hash tag"
            );
        }
    }

    #[test]
    fn prefixes_never_share_keys() {
        let a = QueueKeys::new("a", "q");
        let b = QueueKeys::new("a:b", "q");
        assert_ne!(a.stream(Priority::High), b.stream(Priority::High));
    }
}
