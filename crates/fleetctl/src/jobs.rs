//! `fleetctl jobs peek`, and the payload decoding shared with the dead-letter commands: `inbound`
//! entries decode as [`InboundEvent`], `outbound` entries as [`OutboundMessage`]; anything else is
//! shown by its size only.
//!
//! Payloads carry no credentials (tokens live in the tenants file, never on a queue); phone numbers
//! in them are the operator's own customers' data and are shown.

use anyhow::{Context, Result};
use fleet_core::{
    INBOUND_QUEUE, InboundBody, InboundEvent, OUTBOUND_QUEUE, OutboundBody, OutboundMessage,
    Priority, wire,
};
use fleet_queue::PeekedJob;
use serde::Serialize;

use crate::{
    Ctx,
    output::{Align, Table, age, bytes, count, truncate},
};

/// A payload as far as fleetctl can read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Decoded {
    /// An `inbound` entry.
    Inbound {
        /// The event.
        event: InboundEvent,
    },
    /// An `outbound` entry.
    Outbound {
        /// The reply.
        message: OutboundMessage,
    },
    /// Not decodable as its queue's payload type.
    Opaque {
        /// Why not, when decoding was attempted.
        error: Option<String>,
    },
}

/// Decodes a payload of `queue`.
pub fn decode_payload(queue: &str, payload: &[u8]) -> Decoded {
    let opaque = |e: wire::DecodeError| Decoded::Opaque {
        error: Some(e.to_string()),
    };
    match queue {
        INBOUND_QUEUE => wire::decode::<InboundEvent>(payload)
            .map(|event| Decoded::Inbound { event })
            .unwrap_or_else(opaque),
        OUTBOUND_QUEUE => wire::decode::<OutboundMessage>(payload)
            .map(|message| Decoded::Outbound { message })
            .unwrap_or_else(opaque),
        _ => Decoded::Opaque { error: None },
    }
}

/// A one-line summary of a payload for tables, at most about `max` characters.
pub fn summary(d: &Decoded, payload_len: usize, max: usize) -> String {
    let line = match d {
        Decoded::Inbound { event } => match &event.body {
            InboundBody::Message(m) => format!(
                "{}/{} {} from {}: {}",
                event.tenant,
                event.provider,
                m.kind,
                m.contact,
                m.text.as_deref().unwrap_or("")
            ),
            InboundBody::Status(s) => format!(
                "{}/{} status {} of {}",
                event.tenant,
                event.provider,
                s.status.as_str(),
                s.provider_message_id
            ),
        },
        Decoded::Outbound { message } => {
            let body = match &message.body {
                OutboundBody::Text { text } => format!("text: {text}"),
                OutboundBody::Template { name, language, .. } => {
                    format!("template {name} ({language})")
                }
            };
            format!(
                "{}/{} to {}: {body}",
                message.tenant, message.provider, message.to
            )
        }
        Decoded::Opaque { error: Some(_) } => {
            format!("undecodable payload, {}", bytes(payload_len))
        }
        Decoded::Opaque { error: None } => format!("payload {}", bytes(payload_len)),
    };
    truncate(&line, max)
}

/// One peeked job in `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PeekRow {
    /// Stream entry id.
    pub stream_id: String,
    /// Priority.
    pub priority: Priority,
    /// Job id.
    pub job_id: Option<String>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When first enqueued, Unix ms.
    pub enqueued_at_ms: u64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// The decoded payload.
    pub payload: Decoded,
}

impl PeekRow {
    /// Decodes a peeked job of `queue`.
    pub fn new(queue: &str, j: PeekedJob) -> PeekRow {
        PeekRow {
            payload: decode_payload(queue, &j.payload),
            payload_bytes: j.payload.len(),
            stream_id: j.stream_id,
            priority: j.priority,
            job_id: j.job_id,
            attempts: j.attempts,
            enqueued_at_ms: j.enqueued_at_ms,
        }
    }
}

/// The `jobs peek` table; ages are relative to `now_ms`.
pub fn render_peek(rows: &[PeekRow], now_ms: u64, color: bool) -> String {
    if rows.is_empty() {
        return "no entries waiting\n".to_owned();
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("PRIORITY", Align::Left),
        ("JOB", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("AGE", Align::Right),
        ("PAYLOAD", Align::Left),
    ]);
    for r in rows {
        t.row(vec![
            r.stream_id.as_str().into(),
            r.priority.as_str().into(),
            r.job_id.as_deref().unwrap_or("-").into(),
            count(u64::from(r.attempts)).into(),
            age(now_ms.saturating_sub(r.enqueued_at_ms)).into(),
            summary(&r.payload, r.payload_bytes, 80).into(),
        ]);
    }
    t.render(color)
}

/// `--json` of `jobs peek`.
#[derive(Debug, Serialize)]
struct PeekDoc<'a> {
    queue: &'a str,
    jobs: &'a [PeekRow],
}

/// `fleetctl jobs peek`.
pub async fn peek(ctx: &Ctx, queue: &str, priority: Option<Priority>, limit: usize) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let levels: Vec<Priority> = priority.map_or_else(|| Priority::ALL.to_vec(), |p| vec![p]);
    let mut rows = Vec::new();
    for p in levels {
        let left = limit - rows.len();
        if left == 0 {
            break;
        }
        let jobs = q
            .peek(p, left)
            .await
            .with_context(|| format!("cannot peek at {queue} ({p})"))?;
        rows.extend(jobs.into_iter().map(|j| PeekRow::new(queue, j)));
    }
    if ctx.json {
        ctx.print_json(&PeekDoc { queue, jobs: &rows })
    } else {
        ctx.print(&render_peek(&rows, q.now_ms(), ctx.color))
    }
}

#[cfg(test)]
mod tests {
    use fleet_core::{InboundMessage, Provider};

    use super::*;

    #[test]
    fn inbound_and_outbound_payloads_decode_and_summarize() {
        let event = InboundEvent {
            tenant: "acme".into(),
            provider: Provider::Meta,
            received_at_ms: 1,
            body: InboundBody::Message(InboundMessage {
                contact: "15551234567".into(),
                provider_message_id: "wamid.X".into(),
                kind: "text".into(),
                text: Some("hello\nthere".into()),
                timestamp: 1,
                ..Default::default()
            }),
        };
        let bytes = wire::encode(&event).unwrap();
        let d = decode_payload(INBOUND_QUEUE, &bytes);
        assert_eq!(d, Decoded::Inbound { event });
        assert_eq!(
            summary(&d, bytes.len(), 80),
            "acme/meta text from 15551234567: hello there"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["type"], "inbound");
        assert_eq!(json["event"]["tenant"], "acme");

        let reply = OutboundMessage {
            tenant: "acme".into(),
            provider: Provider::Twilio,
            to: "15550001111".into(),
            body: OutboundBody::Text { text: "hi".into() },
            origin: "api".into(),
            created_at_ms: 1,
            sent: None,
        };
        let bytes = wire::encode(&reply).unwrap();
        let d = decode_payload(OUTBOUND_QUEUE, &bytes);
        assert_eq!(
            summary(&d, bytes.len(), 80),
            "acme/twilio to 15550001111: text: hi"
        );
    }

    #[test]
    fn undecodable_payloads_show_their_size() {
        let d = decode_payload(INBOUND_QUEUE, &[0xc1, 0x00]);
        assert!(matches!(d, Decoded::Opaque { error: Some(_) }));
        assert_eq!(summary(&d, 2, 80), "undecodable payload, 2 B");
        assert_eq!(
            summary(&decode_payload("other", &[1]), 1, 80),
            "payload 1 B"
        );
    }
}
