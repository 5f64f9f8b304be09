//! The primitives the scheduler drives: promote due delayed entries, reclaim stalled ones, trim
//! acknowledged history, and remove idle consumers. Each works in bounded batches.

use std::time::Duration;

use fleet_core::Priority;
use fred::{cmd, prelude::*, types::Value};

use crate::{
    Clock, Queue, Result,
    consumer::DEAD_LETTER_CAP_DEFAULT,
    entry::{cmp_ids, next_id, parse_entries, text_of},
};

/// What one [`Queue::reclaim_stalled`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Entries appended again for a live consumer, their attempt counted.
    pub requeued: u64,
    /// Entries whose attempts were exhausted, now in the dead-letter stream (reason `stalled`).
    pub dead_lettered: u64,
    /// Pending ids whose entry no longer existed; acknowledged and forgotten.
    pub gone: u64,
}

/// How much acknowledged history a stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Acknowledged entries older than this are removed.
    pub max_age: Duration,
    /// At most this many acknowledged entries are kept.
    pub max_count: u64,
}

impl Queue {
    /// Moves up to `limit` delayed entries due at `now` onto their streams, atomically (one
    /// script call); returns how many moved. Two schedulers running it at once move each entry
    /// once: the move is one script, and scripts run one at a time. `now` is [`Clock::Redis`]
    /// in production (the clock delayed enqueues use), or an injected time in Unix ms.
    pub async fn promote_due(&self, now: impl Into<Clock>, limit: usize) -> Result<u64> {
        let mut keys: Vec<String> = self.keys.streams().to_vec();
        keys.push(self.keys.delayed());
        let args: Vec<Value> = vec![
            Priority::CODES.into(),
            default_level_position(),
            now.into().arg(),
            (limit.max(1) as i64).into(),
        ];
        let reply = self
            .broker
            .eval(&self.broker.scripts.promote, keys, args)
            .await?;
        Ok(reply.as_i64().unwrap_or(0) as u64)
    }

    /// Entries in the delayed set that are due at `now_ms` (bounded: `ZCOUNT`).
    pub async fn due_count(&self, now_ms: u64) -> Result<u64> {
        let n: i64 = self
            .broker
            .client()
            .zcount(self.keys.delayed(), f64::NEG_INFINITY, now_ms as f64)
            .await?;
        Ok(n as u64)
    }

    /// Recovers entries pending longer than `lease` in group `group`, up to `limit` per priority:
    /// each goes back to its stream with its attempt counted, or to the dead-letter stream with
    /// the reason `stalled` when its attempts are exhausted. Idle times are measured by Redis;
    /// `now` ([`Clock::Redis`] in production, or an injected time in Unix ms) stamps the dead
    /// letters.
    pub async fn reclaim_stalled(
        &self,
        group: &str,
        lease: Duration,
        limit: usize,
        now: impl Into<Clock>,
    ) -> Result<Reclaimed> {
        let now = now.into();
        let mut total = Reclaimed::default();
        for p in Priority::ALL {
            let keys = vec![self.keys.stream(p).to_owned(), self.keys.dead()];
            let args: Vec<Value> = vec![
                group.into(),
                (lease.as_millis() as i64).into(),
                (limit.max(1) as i64).into(),
                now.arg(),
                (DEAD_LETTER_CAP_DEFAULT as i64).into(),
                p.as_str().into(),
            ];
            let reply = match self
                .broker
                .eval(&self.broker.scripts.reclaim, keys, args)
                .await
            {
                Err(e) if e.is_no_group() => continue,
                other => other?,
            };
            if let Value::Array(n) = reply {
                total.requeued += n.first().and_then(Value::as_i64).unwrap_or(0) as u64;
                total.dead_lettered += n.get(1).and_then(Value::as_i64).unwrap_or(0) as u64;
                total.gone += n.get(2).and_then(Value::as_i64).unwrap_or(0) as u64;
            }
        }
        if total.requeued + total.dead_lettered > 0 {
            metrics::counter!("fleet_queue_reclaimed_total", "queue" => self.name.to_string())
                .increment(total.requeued);
            metrics::counter!("fleet_queue_dead_lettered_total", "queue" => self.name.to_string(),
                "reason" => "stalled")
            .increment(total.dead_lettered);
        }
        Ok(total)
    }

    /// Removes acknowledged entries beyond `retention`, at most `limit` per priority per call,
    /// never an entry that is pending in any group or not yet delivered to every group. A stream
    /// without a consumer group keeps everything (nothing has been acknowledged). Returns how
    /// many entries were removed.
    pub async fn trim(&self, retention: Retention, limit: usize, now_ms: u64) -> Result<u64> {
        let stats = self.priority_stats().await?;
        let mut removed = 0;
        for ps in stats {
            if ps.groups.is_empty() || ps.length == 0 {
                continue;
            }
            let stream = self.keys.stream(ps.priority).to_owned();
            // The first entry that must stay: the oldest pending entry of any group, or the
            // first not yet delivered to some group.
            let mut safe: Option<String> = None;
            for g in &ps.groups {
                let candidate = if g.pending > 0 {
                    self.first_pending_id(&stream, &g.name).await?
                } else {
                    next_id(&g.last_delivered_id)
                };
                if let Some(c) = candidate {
                    safe = Some(match safe {
                        Some(s) if cmp_ids(&s, &c).is_le() => s,
                        _ => c,
                    });
                }
            }
            let Some(safe) = safe else { continue };
            // Acknowledged entries are the ones before `safe`; how many of them to drop.
            let acked = ps.length.saturating_sub(ps.waiting + ps.pending);
            let by_count = acked.saturating_sub(retention.max_count);
            let age_cutoff = format!(
                "{}-0",
                now_ms.saturating_sub(retention.max_age.as_millis() as u64)
            );
            // Look at the oldest `limit` entries to bound this call's work.
            let reply = self.broker.range(&stream, "-", "+", limit).await?;
            let oldest = parse_entries(&reply);
            let mut cut = 0usize;
            for (i, (id, _)) in oldest.iter().enumerate() {
                let acked_entry = cmp_ids(id, &safe).is_lt();
                let too_old = cmp_ids(id, &age_cutoff).is_lt();
                let too_many = (i as u64) < by_count;
                if acked_entry && (too_old || too_many) {
                    cut = i + 1;
                } else {
                    break;
                }
            }
            if cut == 0 {
                continue;
            }
            let min_id = next_id(&oldest[cut - 1].0).unwrap_or(safe);
            let n: i64 = self
                .broker
                .client()
                .custom(cmd!("XTRIM"), vec![stream, "MINID".into(), min_id])
                .await?;
            removed += n as u64;
        }
        if removed > 0 {
            metrics::counter!("fleet_queue_trimmed_total", "queue" => self.name.to_string())
                .increment(removed);
        }
        Ok(removed)
    }

    async fn first_pending_id(&self, stream: &str, group: &str) -> Result<Option<String>> {
        let reply: Value = self
            .broker
            .client()
            .custom(cmd!("XPENDING"), vec![stream, group])
            .await?;
        // Summary form: [count, smallest id, greatest id, consumers].
        Ok(match reply {
            Value::Array(parts) => parts.get(1).and_then(text_of),
            _ => None,
        })
    }

    /// Removes dead letters older than `max_age` or beyond the newest `max_count`, at most `limit`
    /// per call; returns how many were removed.
    pub async fn trim_dead(&self, retention: Retention, limit: usize, now_ms: u64) -> Result<u64> {
        let dead = self.keys.dead();
        let len: u64 = self.broker.client().xlen(&dead).await?;
        let by_count = len.saturating_sub(retention.max_count);
        let age_cutoff = format!(
            "{}-0",
            now_ms.saturating_sub(retention.max_age.as_millis() as u64)
        );
        let reply = self.broker.range(&dead, "-", "+", limit).await?;
        let oldest = parse_entries(&reply);
        let cut = oldest
            .iter()
            .enumerate()
            .take_while(|(i, (id, _))| (*i as u64) < by_count || cmp_ids(id, &age_cutoff).is_lt())
            .count();
        if cut == 0 {
            return Ok(0);
        }
        let min_id = next_id(&oldest[cut - 1].0).unwrap_or_default();
        let n: i64 = self
            .broker
            .client()
            .custom(cmd!("XTRIM"), vec![dead, "MINID".into(), min_id])
            .await?;
        Ok(n as u64)
    }

    /// Deletes consumers idle longer than `idle` that hold nothing pending, atomically over the
    /// queue's streams (one script): a consumer holding entries is left for stalled recovery,
    /// since deleting it would drop them, and no read can land between the check and the
    /// delete. A consumer is one name across the three streams; it goes only when it holds
    /// nothing on any and has been idle on all. Returns the names removed.
    pub async fn remove_idle_consumers(&self, idle: Duration) -> Result<Vec<String>> {
        let keys: Vec<String> = self.keys.streams().to_vec();
        let args: Vec<Value> = vec![(idle.as_millis() as i64).into()];
        let reply = self
            .broker
            .eval(&self.broker.scripts.remove_idle_consumers, keys, args)
            .await?;
        let Value::Array(parts) = reply else {
            return Err(crate::Error::protocol(format!(
                "remove_idle_consumers reply {reply:?}"
            )));
        };
        let dropped = parts.first().and_then(Value::as_i64).unwrap_or(0);
        if dropped != 0 {
            // The script checks that a consumer holds nothing before deleting it, in the same
            // atomic step, so this is a bug in the script, not a race: say so loudly.
            tracing::error!(
                queue = %self.name,
                dropped,
                "deleting idle consumers dropped pending entries; they will not be delivered again"
            );
            metrics::counter!("fleet_queue_consumer_entries_dropped_total",
                "queue" => self.name.to_string())
            .increment(dropped as u64);
        }
        let mut removed: Vec<String> = parts.iter().skip(1).filter_map(text_of).collect();
        removed.sort();
        Ok(removed)
    }
}

/// The position (from 1) of the default priority level among the levels, as the scripts number
/// their streams: where a delayed member or a dead letter that names no level goes.
pub(crate) fn default_level_position() -> Value {
    (Priority::default().index() as i64 + 1).into()
}
