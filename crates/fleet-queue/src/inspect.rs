//! The inspector: what `fleetctl`, metrics and autoscalers see of a queue, read with bounded
//! commands only (`XINFO`, `XLEN`, `ZCARD`, `XPENDING` with `COUNT`, ranges with `COUNT`).

use std::collections::BTreeMap;

use fleet_core::Priority;
use fred::{cmd, prelude::*, types::Value};
use serde::Serialize;

use crate::{
    Queue, Result,
    entry::{StoredJob, parse_entries, text_of},
    queue::now_ms,
};

/// One consumer group on one priority stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Entries not yet delivered to this group as Redis reports it (`lag`): missing, or stale,
    /// after a restart, a failover or a deletion on Redis 7.0; [`PriorityStats::waiting`] is the
    /// exact figure.
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Id of the last entry delivered.
    pub last_delivered_id: String,
    /// Entries delivered to this group since the stream began (`entries-read`): successive
    /// samples give the group's exact read rate, unaffected by trimming.
    pub entries_read: Option<u64>,
    /// Consumers in the group.
    pub consumers: u64,
}

/// One priority stream of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityStats {
    /// The level.
    pub priority: Priority,
    /// Entries in the stream, acknowledged ones not yet trimmed included.
    pub length: u64,
    /// Entries waiting to be delivered (after the last-delivered id of the group furthest ahead;
    /// every entry while the stream has no group), from [`Queue::waiting`]: exact, or a lower
    /// bound while `waiting_exact` is false.
    pub waiting: u64,
    /// Whether `waiting` is exact (false only while a recount is under way).
    pub waiting_exact: bool,
    /// Entries delivered and not yet acknowledged, over all groups.
    pub pending: u64,
    /// Idle time of the oldest pending entry, in ms.
    pub oldest_pending_ms: Option<u64>,
    /// The stream's consumer groups.
    pub groups: Vec<GroupStats>,
}

/// A whole queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Per-priority detail, highest first.
    pub priorities: Vec<PriorityStats>,
    /// Entries waiting in the delayed set.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
    /// Whether the queue is paused.
    pub paused: bool,
    /// Distinct consumers over the streams.
    pub consumers: u64,
}

impl QueueStats {
    /// Waiting entries per priority, as the contract's `lengths`.
    pub fn lengths(&self) -> BTreeMap<&'static str, u64> {
        self.priorities
            .iter()
            .map(|p| (p.priority.as_str(), p.waiting))
            .collect()
    }

    /// Whether every priority's waiting count is exact.
    pub fn lengths_exact(&self) -> bool {
        self.priorities.iter().all(|p| p.waiting_exact)
    }

    /// Pending entries over all priorities.
    pub fn pending(&self) -> u64 {
        self.priorities.iter().map(|p| p.pending).sum()
    }

    /// Idle time of the oldest pending entry over all priorities.
    pub fn oldest_pending_ms(&self) -> Option<u64> {
        self.priorities
            .iter()
            .filter_map(|p| p.oldest_pending_ms)
            .max()
    }
}

/// A consumer of a group, as `XINFO CONSUMERS` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerInfo {
    /// Stream priority.
    pub priority: Priority,
    /// Consumer name.
    pub name: String,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Milliseconds since its last attempted interaction.
    pub idle_ms: u64,
}

/// An entry waiting in a stream, decoded as far as the queue knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeekedJob {
    /// Stream id.
    pub stream_id: String,
    /// Priority.
    pub priority: Priority,
    /// Job id, when the entry is a valid job.
    pub job_id: Option<String>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the job was first enqueued, Unix ms.
    pub enqueued_at_ms: u64,
    /// The payload (MessagePack); the caller decodes it.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Turns `[k1, v1, k2, v2, ...]` (RESP2) or a map (RESP3) into a map of text values.
pub(crate) fn flat_map(v: &Value) -> BTreeMap<String, Value> {
    match v {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|c| Some((text_of(c.first()?)?, c.get(1)?.clone())))
            .collect(),
        Value::Map(m) => m
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => text_of(other)?.parse().ok(),
    }
}

impl Queue {
    /// Per-priority stream statistics: one pipeline of bounded commands, and the waiting counts.
    pub async fn priority_stats(&self) -> Result<Vec<PriorityStats>> {
        let waiting = self.waiting().await?;
        let client = self.broker.client();
        let pipeline = client.pipeline();
        for stream in self.keys.streams() {
            pipeline
                .custom::<(), _>(cmd!("XLEN"), vec![stream.as_str()])
                .await?;
            pipeline
                .custom::<(), _>(
                    cmd!("XINFO", hash: fred::types::ClusterHash::Offset(1)),
                    vec!["GROUPS", stream.as_str()],
                )
                .await?;
        }
        let replies = pipeline.try_all::<Value>().await;
        let mut out = Vec::with_capacity(3);
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            let length = match &replies[i * 2] {
                Ok(v) => as_u64(Some(v)).unwrap_or(0),
                Err(e) => return Err(e.clone().into()),
            };
            // A stream that does not exist yet answers XINFO with "no such key".
            let groups: Vec<GroupStats> = match &replies[i * 2 + 1] {
                Ok(Value::Array(groups)) => groups
                    .iter()
                    .map(|g| {
                        let m = flat_map(g);
                        GroupStats {
                            name: m.get("name").and_then(text_of).unwrap_or_default(),
                            lag: as_u64(m.get("lag")),
                            pending: as_u64(m.get("pending")).unwrap_or(0),
                            last_delivered_id: m
                                .get("last-delivered-id")
                                .and_then(text_of)
                                .unwrap_or_else(|| "0-0".into()),
                            consumers: as_u64(m.get("consumers")).unwrap_or(0),
                            entries_read: as_u64(m.get("entries-read")),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let pending = groups.iter().map(|g| g.pending).sum();
            let oldest_pending_ms = if pending > 0 {
                self.oldest_pending(p, &groups).await?
            } else {
                None
            };
            out.push(PriorityStats {
                priority: p,
                length,
                waiting: waiting[i].entries,
                waiting_exact: waiting[i].exact,
                pending,
                oldest_pending_ms,
                groups,
            });
        }
        Ok(out)
    }

    async fn oldest_pending(&self, p: Priority, groups: &[GroupStats]) -> Result<Option<u64>> {
        let mut oldest = None;
        for g in groups.iter().filter(|g| g.pending > 0) {
            let reply: Value = self
                .broker
                .client()
                .custom(
                    cmd!("XPENDING"),
                    vec![self.keys.stream(p), g.name.as_str(), "-", "+", "1"],
                )
                .await?;
            if let Value::Array(rows) = reply
                && let Some(Value::Array(row)) = rows.first()
            {
                let idle = as_u64(row.get(2));
                oldest = oldest.max(idle);
            }
        }
        Ok(oldest)
    }

    /// The whole queue at a glance.
    pub async fn stats(&self) -> Result<QueueStats> {
        let priorities = self.priority_stats().await?;
        let client = self.broker.client();
        let delayed: u64 = client.zcard(self.keys.delayed()).await?;
        let dead: u64 = client.xlen(self.keys.dead()).await?;
        let paused = self.is_paused().await?;
        let consumers = self.consumers().await?;
        let distinct: std::collections::BTreeSet<_> = consumers.iter().map(|c| &c.name).collect();
        Ok(QueueStats {
            name: self.name.to_string(),
            priorities,
            delayed,
            dead,
            paused,
            consumers: distinct.len() as u64,
        })
    }

    /// Entries in the dead-letter stream (one `XLEN`).
    pub async fn dead_len(&self) -> Result<u64> {
        Ok(self.broker.client().xlen(self.keys.dead()).await?)
    }

    /// The consumers of every group on every stream, with pending counts and idle times.
    pub async fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        let mut out = Vec::new();
        for p in Priority::ALL {
            let groups: Value = match self
                .broker
                .client()
                .custom(
                    cmd!("XINFO", hash: fred::types::ClusterHash::Offset(1)),
                    vec!["GROUPS", self.keys.stream(p)],
                )
                .await
            {
                Ok(v) => v,
                Err(_) => continue,
            };
            let Value::Array(groups) = groups else {
                continue;
            };
            for g in groups {
                let name = flat_map(&g)
                    .get("name")
                    .and_then(text_of)
                    .unwrap_or_default();
                let reply: Value = self
                    .broker
                    .client()
                    .custom(
                        cmd!("XINFO", hash: fred::types::ClusterHash::Offset(1)),
                        vec!["CONSUMERS", self.keys.stream(p), name.as_str()],
                    )
                    .await?;
                if let Value::Array(cs) = reply {
                    for c in cs {
                        let m = flat_map(&c);
                        out.push(ConsumerInfo {
                            priority: p,
                            name: m.get("name").and_then(text_of).unwrap_or_default(),
                            pending: as_u64(m.get("pending")).unwrap_or(0),
                            idle_ms: as_u64(m.get("idle")).unwrap_or(0),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The next entries of one priority stream (waiting and in flight), decoded; at most `limit`.
    pub async fn peek(&self, priority: Priority, limit: usize) -> Result<Vec<PeekedJob>> {
        // Start after the group's last delivered entry, so what is shown is what runs next.
        let stats = self.priority_stats().await?;
        let start = stats[priority.index()]
            .groups
            .iter()
            .map(|g| g.last_delivered_id.clone())
            .min_by(|a, b| crate::entry::cmp_ids(a, b))
            .map(|id| format!("({id}"))
            .unwrap_or_else(|| "-".into());
        let reply = self
            .broker
            .range(self.keys.stream(priority), &start, "+", limit)
            .await?;
        Ok(parse_entries(&reply)
            .into_iter()
            .map(|(id, fields)| {
                let job = StoredJob::from_fields(&fields).ok();
                PeekedJob {
                    stream_id: id,
                    priority,
                    job_id: job.as_ref().map(|j| j.job_id.to_string()),
                    attempts: job.as_ref().map_or(0, |j| j.attempts),
                    enqueued_at_ms: job.as_ref().map_or(0, |j| j.enqueued_at_ms),
                    payload: job.map(|j| j.payload.to_vec()).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Current time as this library sees it (for callers computing ages consistently).
    pub fn now_ms(&self) -> u64 {
        now_ms()
    }
}
