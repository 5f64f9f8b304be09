//! The dead-letter stream: listing, showing, replaying and purging dead jobs.

use fleet_core::Priority;
use fred::{cmd, prelude::*, types::Value};
use serde::Serialize;

use crate::{
    Error, Queue, Result,
    entry::{StoredJob, id_millis, parse_entries},
};

/// One dead job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadEntry {
    /// The dead entry's id (in the dead-letter stream).
    pub id: String,
    /// Why it died: `max_attempts`, `stalled`, `poison`, `decode`, or a worker's own reason.
    pub reason: String,
    /// The last error.
    pub error: String,
    /// The entry's id in its stream when it died.
    pub original_id: String,
    /// The priority it had.
    pub priority: Option<Priority>,
    /// Attempts made.
    pub attempts: u32,
    /// When it died, Unix ms.
    pub died_at_ms: u64,
    /// The job id, when the entry was a valid job.
    pub job_id: Option<String>,
    /// The payload (MessagePack), empty for poison entries.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

impl DeadEntry {
    fn from_raw(id: String, fields: &[(bytes::Bytes, bytes::Bytes)]) -> DeadEntry {
        let text = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let job = StoredJob::from_fields(fields).ok();
        DeadEntry {
            died_at_ms: text("died")
                .parse()
                .unwrap_or_else(|_| id_millis(&id).unwrap_or(0)),
            id,
            reason: text("reason"),
            error: text("error"),
            original_id: text("orig"),
            priority: text("prio").parse().ok(),
            attempts: job.as_ref().map_or(0, |j| j.attempts),
            job_id: job.as_ref().map(|j| j.job_id.to_string()),
            payload: job.map(|j| j.payload.to_vec()).unwrap_or_default(),
        }
    }
}

/// Most dead entries one replay script call moves, so a large replay never blocks Redis long.
pub const REPLAY_CHUNK: usize = 200;

/// Refuses an id that does not name exactly one dead entry: a dead entry is addressed by its full
/// stream id `<ms>-<seq>`, as `dead_list` shows it. An incomplete id (`<ms>`) could name several
/// entries of one millisecond, and Redis reads it differently in a range (the whole millisecond)
/// and in a deletion (`<ms>-0`), so it is an error rather than a guess.
fn full_id(id: &str) -> Result<&str> {
    let exact = id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    });
    if exact {
        Ok(id)
    } else {
        Err(Error::Invalid(format!(
            "dead entry id {id:?} is not a full stream id <ms>-<seq> (as `fleetctl dlq list` shows it)"
        )))
    }
}

impl Queue {
    /// Dead entries, newest first, at most `limit`, starting before `before` (an id, exclusive)
    /// for pagination.
    pub async fn dead_list(&self, limit: usize, before: Option<&str>) -> Result<Vec<DeadEntry>> {
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let reply: Value = self
            .broker
            .client()
            .custom(
                cmd!("XREVRANGE"),
                vec![
                    self.keys.dead(),
                    end,
                    "-".into(),
                    "COUNT".into(),
                    limit.to_string(),
                ],
            )
            .await?;
        Ok(parse_entries(&reply)
            .into_iter()
            .map(|(id, f)| DeadEntry::from_raw(id, &f))
            .collect())
    }

    /// One dead entry, by its full id (`<ms>-<seq>`; an incomplete id is [`Error::Invalid`]).
    pub async fn dead_get(&self, id: &str) -> Result<Option<DeadEntry>> {
        let id = full_id(id)?;
        let reply = self.broker.range(&self.keys.dead(), id, id, 1).await?;
        Ok(parse_entries(&reply)
            .into_iter()
            .next()
            .map(|(id, f)| DeadEntry::from_raw(id, &f)))
    }

    /// Dead entries from the oldest, at most `limit`, after `after` (exclusive): for walking the
    /// whole dead-letter stream in bounded pages (replay by reason, replay all).
    pub async fn dead_page(&self, limit: usize, after: Option<&str>) -> Result<Vec<DeadEntry>> {
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let reply = self
            .broker
            .range(&self.keys.dead(), &start, "+", limit)
            .await?;
        Ok(parse_entries(&reply)
            .into_iter()
            .map(|(id, f)| DeadEntry::from_raw(id, &f))
            .collect())
    }

    /// Moves the given dead entries back onto their streams with attempts reset, each deleted
    /// from the dead-letter stream in the same script, so it is replayed at most once; returns
    /// how many were found and moved. Ids are full stream ids (`<ms>-<seq>`): an incomplete one
    /// makes the call fail with [`Error::Invalid`] before anything moves. Works in chunks of
    /// [`REPLAY_CHUNK`].
    pub async fn dead_replay(&self, ids: &[String]) -> Result<u64> {
        for id in ids {
            full_id(id)?;
        }
        let mut keys: Vec<String> = self.keys.streams().to_vec();
        keys.push(self.keys.dead());
        let mut moved = 0;
        for chunk in ids.chunks(REPLAY_CHUNK) {
            let mut args: Vec<Value> = vec![
                Priority::NAMES.into(),
                crate::maintenance::default_level_position(),
            ];
            args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            let reply = self
                .broker
                .eval(&self.broker.scripts.replay, keys.clone(), args)
                .await?;
            moved += reply.as_i64().unwrap_or(0) as u64;
        }
        if moved > 0 {
            metrics::counter!("fleet_queue_replayed_total", "queue" => self.name.to_string())
                .increment(moved);
        }
        Ok(moved)
    }

    /// Deletes dead entries that died before `before_ms` (all of them when `None`); returns how
    /// many were deleted.
    pub async fn dead_purge(&self, before_ms: Option<u64>) -> Result<u64> {
        let n: i64 = match before_ms {
            Some(ms) => {
                self.broker
                    .client()
                    .custom(
                        cmd!("XTRIM"),
                        vec![self.keys.dead(), "MINID".into(), format!("{ms}-0")],
                    )
                    .await?
            }
            None => {
                self.broker
                    .client()
                    .custom(
                        cmd!("XTRIM"),
                        vec![self.keys.dead(), "MAXLEN".into(), "0".into()],
                    )
                    .await?
            }
        };
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_ids_name_a_dead_entry() {
        assert_eq!(full_id("1700000000000-3").unwrap(), "1700000000000-3");
        for bad in [
            "1700000000000",
            "1700000000000-",
            "-3",
            "1-x",
            "+",
            "-",
            "",
            "1-2-3",
        ] {
            assert!(matches!(full_id(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
    }
}
