//! The payloads of Fleet's two queues: [`InboundEvent`] on `inbound`, [`OutboundMessage`] on `outbound`.
//!
//! Both providers' webhooks are normalized by `fleet-ingest` into [`InboundEvent`], so the prospect
//! worker never needs to know whether a message came from Meta or Twilio.
//! Fields are added with `#[serde(default)]` so that entries already queued keep decoding.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Which WhatsApp provider an event came from, or a reply goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Meta's WhatsApp Cloud API.
    Meta,
    /// Twilio's Programmable Messaging for WhatsApp.
    Twilio,
}

impl Provider {
    /// The provider's name as used in URLs, metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Meta => "meta",
            Provider::Twilio => "twilio",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "meta" => Ok(Provider::Meta),
            "twilio" => Ok(Provider::Twilio),
            other => Err(format!(
                "unknown provider {other:?}: expected meta or twilio"
            )),
        }
    }
}

/// One entry of the `inbound` queue: a message from a contact, or a status of a message we sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The tenant (business) the webhook was addressed to.
    pub tenant: String,
    /// The provider that delivered the webhook.
    pub provider: Provider,
    /// When ingest accepted the webhook, in Unix milliseconds (for end-to-end latency).
    #[serde(default)]
    pub received_at_ms: i64,
    /// The message or status itself.
    pub body: InboundBody,
}

/// What an [`InboundEvent`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundBody {
    /// A message a contact sent to the business.
    Message(InboundMessage),
    /// A delivery status of a message the business sent.
    Status(StatusEvent),
}

impl InboundEvent {
    /// The provider message id the event is about (wamid or MessageSid).
    pub fn provider_message_id(&self) -> &str {
        match &self.body {
            InboundBody::Message(m) => &m.provider_message_id,
            InboundBody::Status(s) => &s.provider_message_id,
        }
    }
}

/// A message a contact sent, normalized across providers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The contact: phone digits without `+` (Meta `wa_id`/`from`, Twilio `From` without the
    /// `whatsapp:+` prefix), or a business-scoped user id when the phone is hidden.
    pub contact: String,
    /// The provider's message id (`wamid.…` or `SM…`); the key messages are deduplicated on.
    pub provider_message_id: String,
    /// The business number the message was sent to (Meta `phone_number_id`, Twilio `To`).
    #[serde(default)]
    pub business_number: String,
    /// The provider's message type (`text`, `image`, `interactive`, `button`, …), kept as given,
    /// so an unknown type is stored rather than dropped.
    pub kind: String,
    /// The text of the message: its body, a caption, or the title of a tapped button.
    #[serde(default)]
    pub text: Option<String>,
    /// Media attached to the message.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// When the provider says the message was sent, in Unix seconds.
    pub timestamp: i64,
    /// The contact's display name, when the provider gives it.
    #[serde(default)]
    pub profile_name: Option<String>,
}

/// A reference to media held by the provider.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MediaRef {
    /// Meta's media id, or Twilio's media URL.
    pub id: String,
    /// MIME type, when given.
    #[serde(default)]
    pub mime_type: Option<String>,
}

/// The delivery status of a message we sent, ordered so that a status never moves backwards:
/// `sent < delivered < read`, and `failed` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Accepted by the provider, not yet sent (Twilio `queued`, `accepted`, `sending`).
    Queued,
    /// Sent to WhatsApp.
    Sent,
    /// Delivered to the contact's device.
    Delivered,
    /// Read by the contact (Meta also reports `played` for voice messages, mapped here).
    Read,
    /// Failed or undelivered; terminal.
    Failed,
}

impl DeliveryStatus {
    /// The status name as stored in Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The rank used for the monotonic merge: a status replaces another only with a higher rank.
    pub fn rank(self) -> i16 {
        self as i16
    }

    /// Maps a provider's status word (Meta `statuses[].status`, Twilio `MessageStatus`).
    pub fn from_provider(word: &str) -> Option<Self> {
        Some(match word {
            "queued" | "accepted" | "scheduled" | "sending" => DeliveryStatus::Queued,
            "sent" => DeliveryStatus::Sent,
            "delivered" => DeliveryStatus::Delivered,
            "read" | "played" => DeliveryStatus::Read,
            "failed" | "undelivered" | "canceled" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// A delivery status event for a message we sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// The provider's id of the message the status is about.
    pub provider_message_id: String,
    /// The recipient, when the provider gives it.
    #[serde(default)]
    pub recipient: Option<String>,
    /// The new status.
    pub status: DeliveryStatus,
    /// When the status happened, in Unix seconds.
    pub timestamp: i64,
    /// The provider's error code and title on `failed`.
    #[serde(default)]
    pub error: Option<String>,
}

/// One entry of the `outbound` queue: a reply to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// The tenant sending the reply.
    pub tenant: String,
    /// The provider to send through.
    pub provider: Provider,
    /// The recipient's international number, digits only (no `+`).
    pub to: String,
    /// What to send.
    pub body: OutboundBody,
    /// Where the reply came from: `api`, or `auto:<rule>` for automatic replies.
    #[serde(default)]
    pub origin: String,
    /// When the reply was enqueued, in Unix milliseconds.
    #[serde(default)]
    pub created_at_ms: i64,
    /// Set by the outbound worker, never by a producer: the provider accepted this message, but
    /// its record could not be written before the worker stopped. The next delivery records it
    /// instead of sending it again. (Absent from the wire when unset.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<SentNote>,
}

/// What the provider answered to a send whose record is still to be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentNote {
    /// The provider's message id, when it gave one.
    #[serde(default)]
    pub provider_message_id: Option<String>,
}

/// The content of an outbound reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundBody {
    /// A free-form text message (only inside the 24-hour customer-service window).
    Text {
        /// The text.
        text: String,
    },
    /// A pre-approved template message.
    Template {
        /// Template name.
        name: String,
        /// Language code, for example `en_US`.
        language: String,
        /// Body parameters, in order.
        #[serde(default)]
        parameters: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn inbound_event_round_trips_through_msgpack() {
        let event = InboundEvent {
            tenant: "acme".into(),
            provider: Provider::Meta,
            received_at_ms: 1,
            body: InboundBody::Message(InboundMessage {
                contact: "15551234567".into(),
                provider_message_id: "wamid.X".into(),
                kind: "text".into(),
                text: Some("héllo".into()),
                timestamp: 1_700_000_000,
                ..Default::default()
            }),
        };
        let bytes = wire::encode(&event).unwrap();
        assert_eq!(wire::decode::<InboundEvent>(&bytes).unwrap(), event);
    }

    #[test]
    fn statuses_only_move_forward() {
        use DeliveryStatus::*;
        assert!(Sent.rank() < Delivered.rank() && Delivered.rank() < Read.rank());
        assert!(Read.rank() < Failed.rank());
        assert_eq!(DeliveryStatus::from_provider("played"), Some(Read));
        assert_eq!(DeliveryStatus::from_provider("undelivered"), Some(Failed));
        assert_eq!(DeliveryStatus::from_provider("weird"), None);
    }
}
