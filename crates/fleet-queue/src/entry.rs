//! The layout of a job in a stream entry, in the delayed set and in the dead-letter stream.
//!
//! A stream entry has two fields: `h`, the header `1|<job id>|<attempts>|<max attempts>|<backoff
//! initial ms>:<backoff max ms>|<enqueued ms>` (layout version first; attempts are failed attempts
//! so far), and `p`, the payload (MessagePack). Two fields rather than one per value keep each
//! `XADD` and each read small, which is most of the queue's cost in Redis; keeping the header as
//! text lets the Lua scripts count an attempt without decoding the payload.
//! A delayed-set member packs the priority, the header and the payload into one string:
//! `<h|n|l>|<header length>|<header><payload>` (the payload last, so it may hold any byte).
//! A dead entry adds `reason`, `error`, `orig` (the entry's id in its stream), `prio` and `died`
//! (Unix ms).

use fleet_core::{Backoff, JobId, Priority};
use fred::types::Value;

/// A job as stored in a stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    /// The job's id.
    pub job_id: JobId,
    /// Failed attempts so far (stalls included).
    pub attempts: u32,
    /// Attempts the job gets before it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// When the job was first enqueued, in Unix ms.
    pub enqueued_at_ms: u64,
    /// The payload, MessagePack.
    pub payload: Vec<u8>,
}

impl StoredJob {
    /// The `h` field.
    pub(crate) fn header(&self) -> String {
        format!(
            "1|{}|{}|{}|{}:{}|{}",
            self.job_id,
            self.attempts,
            self.max_attempts,
            self.backoff.initial_ms,
            self.backoff.max_ms,
            self.enqueued_at_ms
        )
    }

    /// The stream entry's fields, in order.
    pub(crate) fn fields(&self) -> Vec<Value> {
        vec![
            "h".into(),
            self.header().into(),
            "p".into(),
            Value::Bytes(self.payload.clone().into()),
        ]
    }

    /// The delayed-set member of this job at `priority`.
    pub(crate) fn delayed_member(&self, priority: Priority) -> Value {
        let header = self.header();
        let mut m = format!("{}|{}|{header}", &priority.as_str()[..1], header.len()).into_bytes();
        m.extend_from_slice(&self.payload);
        Value::Bytes(m.into())
    }

    /// Reads a job from a stream entry's field/value pairs; `Err` names what is wrong (poison).
    pub(crate) fn from_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<StoredJob, String> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v.as_slice())
        };
        if let Some(raw) = get("raw") {
            return Err(format!("unparseable delayed entry of {} bytes", raw.len()));
        }
        let header = get("h").ok_or("missing field \"h\"")?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
        let parts: Vec<&str> = header.split('|').collect();
        let [version, job_id, attempts, max, backoff, enqueued] = parts[..] else {
            return Err(format!("header has {} parts, expected 6", parts.len()));
        };
        if version != "1" {
            return Err(format!("unknown entry layout version {version:?}"));
        }
        let number = |what: &str, v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{what} {v:?} is not a number"))
        };
        let (initial, max_ms) = backoff
            .split_once(':')
            .ok_or("backoff is not initial:max")?;
        Ok(StoredJob {
            job_id: JobId(job_id.to_owned()),
            attempts: u32::try_from(number("attempts", attempts)?)
                .map_err(|_| "attempts out of range")?,
            max_attempts: u32::try_from(number("max attempts", max)?)
                .map_err(|_| "max attempts out of range")?,
            backoff: Backoff {
                initial_ms: number("backoff", initial)?,
                max_ms: number("backoff", max_ms)?,
            },
            enqueued_at_ms: number("enqueued time", enqueued)?,
            payload: get("p").ok_or("missing field \"p\"")?.to_vec(),
        })
    }
}

/// The bytes of a bulk-string reply.
pub(crate) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The text of a bulk-string or integer reply.
pub(crate) fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::String(s) => Some(s.to_string()),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A stream entry: its id and its field/value pairs.
pub(crate) type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Parses one `[id, [field, value, ...]]` stream entry reply.
pub(crate) fn parse_entry(v: &Value) -> Option<RawEntry> {
    let Value::Array(parts) = v else { return None };
    let id = text_of(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| {
                Some((
                    bytes_of(kv.first()?)?.to_vec(),
                    bytes_of(kv.get(1)?)?.to_vec(),
                ))
            })
            .collect(),
        Value::Map(map) => map
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_bytes().to_vec(), bytes_of(v)?.to_vec())))
            .collect(),
        // A pending id whose entry was deleted reads as a nil field list.
        Value::Null => Vec::new(),
        _ => return None,
    };
    Some((id, fields))
}

/// Parses an `XRANGE`-style list of entries.
pub(crate) fn parse_entries(v: &Value) -> Vec<RawEntry> {
    match v {
        Value::Array(items) => items.iter().filter_map(parse_entry).collect(),
        _ => Vec::new(),
    }
}

/// The millisecond timestamp part of a stream id.
pub(crate) fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-')
        .map_or(Some(id), |(ms, _)| Some(ms))?
        .parse()
        .ok()
}

/// The smallest stream id greater than `id` (`5-3` gives `5-4`).
pub(crate) fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms + 1),
    })
}

/// Compares two stream ids numerically.
pub(crate) fn cmp_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a).cmp(&parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> StoredJob {
        StoredJob {
            job_id: JobId("j1".into()),
            attempts: 2,
            max_attempts: 5,
            backoff: Backoff {
                initial_ms: 10,
                max_ms: 100,
            },
            enqueued_at_ms: 123,
            payload: b"a|b\x00c".to_vec(),
        }
    }

    #[test]
    fn fields_round_trip() {
        let j = job();
        let fields: Vec<(Vec<u8>, Vec<u8>)> = j
            .fields()
            .chunks(2)
            .map(|kv| {
                (
                    bytes_of(&kv[0]).unwrap().to_vec(),
                    bytes_of(&kv[1]).unwrap().to_vec(),
                )
            })
            .collect();
        assert_eq!(StoredJob::from_fields(&fields).unwrap(), j);
    }

    #[test]
    fn missing_or_bad_fields_are_poison() {
        let err = StoredJob::from_fields(&[(b"x".to_vec(), b"1".to_vec())]).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let err =
            StoredJob::from_fields(&[(b"h".to_vec(), b"9|j|0|1|1:1|0".to_vec())]).unwrap_err();
        assert!(err.contains("version"), "{err}");
        let err =
            StoredJob::from_fields(&[(b"h".to_vec(), b"1|j|zero|1|1:1|0".to_vec())]).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
    }

    #[test]
    fn delayed_member_keeps_binary_payload_last() {
        let Value::Bytes(m) = job().delayed_member(Priority::High) else {
            panic!()
        };
        assert!(m.starts_with(b"h|19|1|j1|2|5|10:100|123a|b"));
        assert!(m.ends_with(b"a|b\x00c"));
    }

    #[test]
    fn stream_id_arithmetic() {
        assert_eq!(next_id("5-3").as_deref(), Some("5-4"));
        assert_eq!(id_millis("1700000000000-1"), Some(1_700_000_000_000));
        assert_eq!(cmp_ids("10-0", "9-5"), std::cmp::Ordering::Greater);
        assert_eq!(cmp_ids("9-10", "9-9"), std::cmp::Ordering::Greater);
    }
}
