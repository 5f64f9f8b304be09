//! The layout of a job in a stream entry, in the delayed set and in the dead-letter stream.
//!
//! A stream entry has two fields: `h`, the header `1|<job id>|<attempts>|<max attempts>|<backoff
//! initial ms>:<backoff max ms>|<enqueued ms>` (layout version first; attempts are failed attempts
//! so far), and `p`, the payload (MessagePack). Two fields rather than one per value keep each
//! `XADD` and each read small, which is most of the queue's cost in Redis; keeping the header as
//! text lets the Lua scripts count an attempt without decoding the payload.
//! A delayed-set member packs the priority, the header and the payload into one string:
//! `<level code>|<header length>|<header><payload>` (the code is `Priority::code`, `h`, `n` or `l`;
//! the payload last, so it may hold any byte).
//! A dead entry adds `reason`, `error`, `orig` (the entry's id in its stream), `prio` and `died`
//! (Unix ms).

use bytes::Bytes;
use fleet_core::{Backoff, JobId, Priority};
use fred::types::{Resp3Frame, Value};

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
    /// The payload, MessagePack: a view into the reply it was read from, never copied.
    pub payload: Bytes,
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
            Value::Bytes(self.payload.clone()),
        ]
    }

    /// The delayed-set member of this job at `priority`.
    pub(crate) fn delayed_member(&self, priority: Priority) -> Value {
        let header = self.header();
        let mut m = format!("{}|{}|{header}", priority.code(), header.len()).into_bytes();
        m.extend_from_slice(&self.payload);
        Value::Bytes(m.into())
    }

    /// Reads a job from a stream entry's field/value pairs; `Err` names what is wrong (poison).
    pub(crate) fn from_fields(fields: &[(Bytes, Bytes)]) -> Result<StoredJob, String> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v)
        };
        if let Some(raw) = get("raw") {
            return Err(format!("unparseable delayed entry of {} bytes", raw.len()));
        }
        let header = get("h").ok_or("missing field \"h\"")?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
        // Split without collecting: this runs once per delivered entry, on the hot path.
        let mut parts = header.split('|');
        let mut next = || parts.next();
        let (
            Some(version),
            Some(job_id),
            Some(attempts),
            Some(max),
            Some(backoff),
            Some(enqueued),
            None,
        ) = (next(), next(), next(), next(), next(), next(), next())
        else {
            return Err(format!(
                "header has {} parts, expected 6",
                header.split('|').count()
            ));
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
            payload: get("p").ok_or("missing field \"p\"")?.clone(),
        })
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

/// A stream entry: its id and its field/value pairs (views into the reply, not copies).
pub(crate) type RawEntry = (String, Vec<(Bytes, Bytes)>);

/// The shared bytes of a bulk-string reply (a reference count, not a copy).
fn shared_bytes_of(v: &Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(s.inner().clone()),
        _ => None,
    }
}

/// Parses one `[id, [field, value, ...]]` stream entry reply.
pub(crate) fn parse_entry(v: &Value) -> Option<RawEntry> {
    let Value::Array(parts) = v else { return None };
    let id = text_of(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| Some((shared_bytes_of(kv.first()?)?, shared_bytes_of(kv.get(1)?)?)))
            .collect(),
        Value::Map(map) => map
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.inner().clone(), shared_bytes_of(v)?)))
            .collect(),
        // A pending id whose entry was deleted reads as a nil field list.
        Value::Null => Vec::new(),
        _ => return None,
    };
    Some((id, fields))
}

/// The bytes of a string frame (a reference count, not a copy).
pub(crate) fn frame_bytes(frame: Resp3Frame) -> Option<Bytes> {
    match frame {
        Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

/// Parses one stream entry straight from the reply frame, as [`parse_entry`] does from a
/// [`Value`]. The consumer's hot path reads raw frames: converting each of a batch's thousands of
/// strings into a `Value` (with a UTF-8 check of every payload) cost more than the rest of the
/// parse.
pub(crate) fn parse_entry_frame(frame: Resp3Frame) -> Option<RawEntry> {
    let Resp3Frame::Array { data: parts, .. } = frame else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = frame_bytes(parts.next()?)?;
    let id = String::from_utf8(id.to_vec()).ok()?;
    let fields = match parts.next()? {
        Resp3Frame::Array { data: flat, .. } => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push((frame_bytes(k)?, frame_bytes(v)?));
            }
            fields
        }
        Resp3Frame::Map { data: map, .. } => map
            .into_iter()
            .filter_map(|(k, v)| Some((frame_bytes(k)?, frame_bytes(v)?)))
            .collect(),
        // A pending id whose entry was deleted reads as a nil field list.
        Resp3Frame::Null => Vec::new(),
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
            payload: Bytes::from_static(b"a|b\x00c"),
        }
    }

    #[test]
    fn fields_round_trip() {
        let j = job();
        let fields: Vec<(Bytes, Bytes)> = j
            .fields()
            .chunks(2)
            .map(|kv| {
                (
                    shared_bytes_of(&kv[0]).unwrap(),
                    shared_bytes_of(&kv[1]).unwrap(),
                )
            })
            .collect();
        assert_eq!(StoredJob::from_fields(&fields).unwrap(), j);
    }

    #[test]
    fn missing_or_bad_fields_are_poison() {
        let field =
            |k: &'static [u8], v: &'static [u8]| (Bytes::from_static(k), Bytes::from_static(v));
        let err = StoredJob::from_fields(&[field(b"x", b"1")]).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let err = StoredJob::from_fields(&[field(b"h", b"9|j|0|1|1:1|0")]).unwrap_err();
        assert!(err.contains("version"), "{err}");
        let err = StoredJob::from_fields(&[field(b"h", b"1|j|zero|1|1:1|0")]).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let err = StoredJob::from_fields(&[field(b"h", b"1|j|0|1|1:1|0|extra")]).unwrap_err();
        assert!(err.contains("7 parts"), "{err}");
        let err = StoredJob::from_fields(&[field(b"h", b"1|j|0")]).unwrap_err();
        assert!(err.contains("3 parts"), "{err}");
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
