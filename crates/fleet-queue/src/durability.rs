//! How durable an acknowledged write is: what the Redis server persists on its own (its AOF
//! settings), and waiting for replicas to hold a queue's latest writes (`WAIT`).
//!
//! Redis answers a write once it is in memory. With `appendfsync everysec` a host crash loses up to
//! a second of writes already answered; with `appendfsync always` the server fsyncs before it
//! answers. `WAIT n timeout` returns once `n` replicas acknowledged every write this connection
//! made, or at the timeout with how many did. (Redis 7.2's `WAITAOF`, which waits for the fsync
//! of the local and replica AOFs, is not used: the Redis 7.0 Fleet runs on has none.)

use std::time::Duration;

use fred::{
    cmd,
    prelude::*,
    types::{ClusterHash, Value},
    util::redis_keyslot,
};

use crate::{Broker, Queue, Result, entry::text_of, inspect::flat_map};

/// What the Redis server persists by itself, as `CONFIG GET` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly`: whether the server keeps an AOF at all.
    pub appendonly: bool,
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub appendfsync: String,
}

impl Persistence {
    /// Whether a write the server answered survives a crash of its host: the AOF is on and
    /// fsynced before every answer.
    pub fn fsyncs_every_write(&self) -> bool {
        self.appendonly && self.appendfsync == "always"
    }
}

impl Broker {
    /// The server's AOF settings (`CONFIG GET appendonly` and `appendfsync`); an error where
    /// `CONFIG` is disabled or renamed, as on some managed services.
    pub async fn persistence(&self) -> Result<Persistence> {
        let get = |name: &'static str| async move {
            let reply: Value = self
                .client
                .custom(cmd!("CONFIG"), vec!["GET", name])
                .await?;
            Ok::<_, crate::Error>(flat_map(&reply).get(name).and_then(text_of))
        };
        let appendonly = get("appendonly").await?;
        let appendfsync = get("appendfsync").await?;
        match (appendonly, appendfsync) {
            (Some(on), Some(fsync)) => Ok(Persistence {
                appendonly: on == "yes",
                appendfsync: fsync,
            }),
            _ => Err(crate::Error::protocol(
                "CONFIG GET answered no AOF settings",
            )),
        }
    }

    /// Replicas connected to the server this broker writes to (`INFO replication`).
    pub async fn connected_replicas(&self) -> Result<u64> {
        let info: String = self
            .client
            .info(Some(fred::types::InfoKind::Replication))
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }
}

/// How long the replication marker lives: it only has to outlast the `WAIT` that follows it.
const SYNC_MARKER_TTL_MS: u64 = 60_000;

impl Queue {
    /// Writes a small marker on the queue's node: afterwards [`Queue::wait_for_replicas`] on this
    /// process's connection covers every write the node had made by now, whichever connection made
    /// it (`WAIT` counts from the connection's own last write).
    pub async fn mark_replication_point(&self) -> Result<()> {
        let _: Value = self
            .broker
            .client
            .custom(
                cmd!("SET"),
                vec![
                    self.keys.sync_marker(),
                    crate::queue::now_ms().to_string(),
                    "PX".into(),
                    SYNC_MARKER_TTL_MS.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Waits until `replicas` replicas acknowledged every write this process made so far on the
    /// connection that holds this queue (`WAIT`, on the queue's cluster node), or until `timeout`;
    /// returns how many acknowledged.
    ///
    /// The process's commands share one connection per node and Redis serves a connection's
    /// commands in order, so commands sent after this one wait behind it (at most `timeout`).
    pub async fn wait_for_replicas(&self, replicas: u32, timeout: Duration) -> Result<u64> {
        let slot = redis_keyslot(self.keys.streams()[0].as_bytes());
        let timeout_ms = timeout.as_millis().max(1) as i64;
        let acked: i64 = self
            .broker
            .client
            .with_options(&Broker::blocking_options(timeout))
            .custom(
                cmd!("WAIT", hash: ClusterHash::Custom(slot)),
                vec![i64::from(replicas), timeout_ms],
            )
            .await?;
        Ok(u64::try_from(acked).unwrap_or(0))
    }
}
