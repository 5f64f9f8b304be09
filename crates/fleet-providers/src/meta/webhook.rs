//! Meta WhatsApp Cloud API webhooks: the `X-Hub-Signature-256` check, a lenient model of the
//! event body, and its normalization into [`InboundEvent`]s.
//!
//! The signature covers the raw body bytes exactly as Meta sent them (Meta escapes non-ASCII as
//! `\uXXXX` and `/` as `\/`), so [`verify_signature`] runs on the bytes before any parsing; a
//! parse-and-reserialize round trip would break it. The model ignores unknown fields, keeps unknown
//! message types by name, and tolerates a missing `from` (business-scoped user ids), because Meta
//! adds fields and types without notice and a body we reject is redelivered for days.

use fleet_core::{
    DeliveryStatus, InboundBody, InboundEvent, InboundMessage, MediaRef, Provider, StatusEvent,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Why a body's signature was not accepted. The variants say nothing about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing signature header")]
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits.
    #[error("malformed signature header")]
    Malformed,
    /// The HMAC does not match.
    #[error("signature mismatch")]
    Mismatch,
}

impl SignatureError {
    /// A short, bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(`app_secret`, `raw_body`),
/// comparing in constant time.
pub fn verify_signature(
    app_secret: &[u8],
    raw_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    // The prefix is lowercase in every capture; accept any case of it, the hex decides.
    let hex_sig = match header.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256=") => &header[7..],
        _ => return Err(SignatureError::Malformed),
    };
    let mut tag = [0u8; 32];
    hex::decode_to_slice(hex_sig, &mut tag).map_err(|_| SignatureError::Malformed)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC takes keys of any length");
    mac.update(raw_body);
    mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

/// Computes the header value Meta would send for `raw_body` (for tests and load generators).
pub fn sign(app_secret: &[u8], raw_body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC takes keys of any length");
    mac.update(raw_body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook envelope. Each change's `value` stays raw until its `field` is known, because
/// fields other than `messages` have other shapes (and `field` may come after `value`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Payload<'a> {
    /// `whatsapp_business_account` for WhatsApp.
    pub object: Option<String>,
    /// One entry per business account.
    #[serde(borrow)]
    pub entry: Vec<Entry<'a>>,
}

/// One `entry[]` item.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Entry<'a> {
    /// The changes of this entry.
    #[serde(borrow)]
    pub changes: Vec<Change<'a>>,
}

/// One `changes[]` item.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Change<'a> {
    /// `messages`, `account_update`, `message_template_status_update`, ...
    pub field: String,
    /// The change's content, parsed as [`ChangeValue`] only when `field` is `messages`.
    #[serde(borrow)]
    pub value: Option<&'a RawValue>,
}

/// The `value` of a `messages` change.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChangeValue {
    /// Which business number the change is about.
    pub metadata: Metadata,
    /// The senders of `messages`, with their profile names.
    pub contacts: Vec<Contact>,
    /// Messages from contacts.
    pub messages: Vec<Message>,
    /// Receipts for messages the business sent.
    pub statuses: Vec<Status>,
}

/// `value.metadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The business number's id (the routing key and the sender id for replies).
    pub phone_number_id: Option<String>,
    /// The business number as displayed.
    pub display_phone_number: Option<String>,
}

/// `value.contacts[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Contact {
    /// The user's phone digits.
    pub wa_id: Option<String>,
    /// The user's business-scoped id.
    pub user_id: Option<String>,
    /// The user's profile.
    pub profile: Profile,
}

/// `contacts[].profile`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// Display name.
    pub name: Option<String>,
}

/// `value.messages[]`: the common fields plus the payloads of the types we extract text or media
/// from. Other types keep their name in `kind` and are not otherwise interpreted.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The user's phone digits; absent when the user hides the number behind a username.
    pub from: Option<String>,
    /// The user's business-scoped id (present when `from` may be absent).
    pub from_user_id: Option<String>,
    /// The message id (`wamid.…`; the Dashboard's test button sends other shapes).
    pub id: Option<String>,
    /// Unix seconds, as a string (numbers are accepted too).
    pub timestamp: Option<Lenient>,
    /// The message type, kept as given.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `text` payload.
    pub text: Option<Text>,
    /// `image` payload.
    pub image: Option<Media>,
    /// `video` payload.
    pub video: Option<Media>,
    /// `audio` payload.
    pub audio: Option<Media>,
    /// `document` payload.
    pub document: Option<Media>,
    /// `sticker` payload.
    pub sticker: Option<Media>,
    /// `interactive` payload (button, list and flow replies).
    pub interactive: Option<Interactive>,
    /// `button` payload (template quick-reply).
    pub button: Option<Button>,
    /// `reaction` payload.
    pub reaction: Option<Reaction>,
    /// `location` payload.
    pub location: Option<Location>,
    /// `order` payload.
    pub order: Option<Order>,
    /// `system` payload.
    pub system: Option<System>,
}

/// A string or a number, as Meta sends ids, codes and timestamps in either form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Lenient {
    /// A JSON string.
    Str(String),
    /// A JSON integer.
    Int(i64),
    /// Any other number.
    Float(f64),
}

impl Lenient {
    /// The value as an integer, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Lenient::Str(s) => s.trim().parse().ok(),
            Lenient::Int(i) => Some(*i),
            Lenient::Float(_) => None,
        }
    }

    /// The value as text.
    pub fn to_text(&self) -> String {
        match self {
            Lenient::Str(s) => s.clone(),
            Lenient::Int(i) => i.to_string(),
            Lenient::Float(f) => f.to_string(),
        }
    }
}

/// `text` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Text {
    /// The text.
    pub body: Option<String>,
}

/// Media payload (`image`, `video`, `audio`, `document`, `sticker`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Media {
    /// Meta's media id.
    pub id: Option<String>,
    /// MIME type.
    pub mime_type: Option<String>,
    /// Caption, for images, videos and documents.
    pub caption: Option<String>,
}

/// `interactive` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Interactive {
    /// `button_reply`, `list_reply`, `nfm_reply`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// A reply button tap.
    pub button_reply: Option<Reply>,
    /// A list row choice.
    pub list_reply: Option<Reply>,
    /// A flow response.
    pub nfm_reply: Option<FlowReply>,
}

/// `button_reply` / `list_reply`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// The id the business gave the button or row.
    pub id: Option<String>,
    /// Its title, as the user saw it.
    pub title: Option<String>,
}

/// `nfm_reply`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FlowReply {
    /// The flow's response, a JSON string.
    pub response_json: Option<String>,
    /// Body text.
    pub body: Option<String>,
}

/// `button` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Button {
    /// Button text.
    pub text: Option<String>,
    /// The payload the business attached.
    pub payload: Option<String>,
}

/// `reaction` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reaction {
    /// The emoji; absent when a reaction is removed.
    pub emoji: Option<String>,
}

/// `location` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Location {
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Place name.
    pub name: Option<String>,
    /// Address.
    pub address: Option<String>,
}

/// `order` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Order {
    /// Text sent with the order.
    pub text: Option<String>,
}

/// `system` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct System {
    /// Description of the change.
    pub body: Option<String>,
}

/// `value.statuses[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The wamid of the message the business sent.
    pub id: Option<String>,
    /// `sent`, `delivered`, `read`, `failed`, `played`.
    pub status: Option<String>,
    /// Unix seconds, as a string.
    pub timestamp: Option<Lenient>,
    /// The recipient's phone digits (absent when sent to a business-scoped id).
    pub recipient_id: Option<String>,
    /// The recipient's business-scoped id.
    pub recipient_user_id: Option<String>,
    /// Errors on `failed`.
    pub errors: Vec<ErrorObject>,
}

/// An `errors[]` item.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorObject {
    /// Error code (a number).
    pub code: Option<Lenient>,
    /// Short title.
    pub title: Option<String>,
}

/// Why one message, status or change of a body that passed the signature check cannot be
/// accepted. Each is counted and skipped: the rest of the body is enqueued (Meta redelivers a
/// refused body for days, and a malformed item would never become well-formed).
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// Not JSON, or not the webhook's shape.
    #[error("malformed JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// A message without an `id` cannot be deduplicated or stored.
    #[error("message without id")]
    MessageWithoutId,
    /// A message with neither `from` nor `from_user_id`.
    #[error("message without sender")]
    MessageWithoutSender,
    /// A status without an `id`.
    #[error("status without id")]
    StatusWithoutId,
}

impl NormalizeError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            NormalizeError::Json(_) => "malformed_change",
            NormalizeError::MessageWithoutId | NormalizeError::MessageWithoutSender => {
                "malformed_message"
            }
            NormalizeError::StatusWithoutId => "malformed_status",
        }
    }
}

/// What one webhook body normalizes to.
#[derive(Debug, Default)]
pub struct Normalized {
    /// One event per message and per status, in body order.
    pub events: Vec<InboundEvent>,
    /// Changes of fields other than `messages` (`account_update`, template status, ...): answered
    /// 200 and counted, not enqueued.
    pub other_fields: u64,
    /// Statuses with a status word we do not know (counted, not enqueued).
    pub unknown_statuses: u64,
    /// `messages` changes for another business number than the tenant's (skipped, with every
    /// message and status in them).
    pub misrouted_changes: u64,
    /// Messages, statuses and change values that cannot be read (skipped), and the first one's
    /// reason.
    pub malformed: u64,
    /// Why the first malformed item was skipped.
    pub first_malformed: Option<&'static str>,
}

impl Normalized {
    fn skip(&mut self, error: &NormalizeError) {
        self.malformed += 1;
        self.first_malformed.get_or_insert(error.reason());
    }
}

/// Parses a webhook body (after its signature was verified).
pub fn parse(raw_body: &[u8]) -> Result<Payload<'_>, serde_json::Error> {
    serde_json::from_slice(raw_body)
}

/// Normalizes a parsed body into one [`InboundEvent`] per message and per status.
///
/// With `business` set (the tenant's `phone_number_id`), a `messages` change whose
/// `metadata.phone_number_id` is another (or missing) is skipped and counted in
/// `misrouted_changes`: the app secret is per Meta app, and two tenants on one app would
/// otherwise each accept the other's messages. A message, status or change value that cannot be
/// read is skipped and counted in `malformed`; the others are kept.
/// `received_at_ms` stamps every event, and stands in for a missing or unreadable timestamp.
pub fn normalize(
    tenant: &str,
    business: Option<&str>,
    payload: &Payload<'_>,
    received_at_ms: i64,
) -> Normalized {
    let mut out = Normalized::default();
    let fallback_ts = received_at_ms / 1000;
    for entry in &payload.entry {
        for change in &entry.changes {
            if change.field != "messages" {
                out.other_fields += 1;
                continue;
            }
            let Some(raw) = change.value else { continue };
            let value: ChangeValue = match serde_json::from_str(raw.get()) {
                Ok(value) => value,
                Err(e) => {
                    out.skip(&NormalizeError::Json(e));
                    continue;
                }
            };
            let business_number = value.metadata.phone_number_id.clone().unwrap_or_default();
            if business.is_some_and(|ours| ours != business_number) {
                out.misrouted_changes += 1;
                continue;
            }
            for message in &value.messages {
                match normalize_message(message, &value.contacts, &business_number, fallback_ts) {
                    Ok(event) => out.events.push(InboundEvent {
                        tenant: tenant.to_owned(),
                        provider: Provider::Meta,
                        received_at_ms,
                        body: InboundBody::Message(event),
                    }),
                    Err(e) => out.skip(&e),
                }
            }
            for status in &value.statuses {
                let Some(id) = status.id.clone().filter(|s| !s.is_empty()) else {
                    out.skip(&NormalizeError::StatusWithoutId);
                    continue;
                };
                let Some(word) = status
                    .status
                    .as_deref()
                    .and_then(DeliveryStatus::from_provider)
                else {
                    out.unknown_statuses += 1;
                    continue;
                };
                let error = status.errors.first().map(|e| match (&e.code, &e.title) {
                    (Some(code), Some(title)) => format!("{} {}", code.to_text(), title),
                    (Some(code), None) => code.to_text(),
                    (None, Some(title)) => title.clone(),
                    (None, None) => "unknown error".to_owned(),
                });
                out.events.push(InboundEvent {
                    tenant: tenant.to_owned(),
                    provider: Provider::Meta,
                    received_at_ms,
                    body: InboundBody::Status(StatusEvent {
                        provider_message_id: id,
                        recipient: status
                            .recipient_id
                            .clone()
                            .or_else(|| status.recipient_user_id.clone()),
                        status: word,
                        timestamp: status
                            .timestamp
                            .as_ref()
                            .and_then(Lenient::as_i64)
                            .unwrap_or(fallback_ts),
                        error,
                    }),
                });
            }
        }
    }
    out
}

fn normalize_message(
    m: &Message,
    contacts: &[Contact],
    business_number: &str,
    fallback_ts: i64,
) -> Result<InboundMessage, NormalizeError> {
    let id =
        m.id.clone()
            .filter(|s| !s.is_empty())
            .ok_or(NormalizeError::MessageWithoutId)?;
    let contact = m
        .from
        .clone()
        .or_else(|| m.from_user_id.clone())
        .filter(|s| !s.is_empty())
        .ok_or(NormalizeError::MessageWithoutSender)?;
    // The profile belongs to the contact whose wa_id or user_id is the sender; with a single
    // contact (the usual case) that one is taken even if Meta left its ids out.
    let profile_name = contacts
        .iter()
        .find(|c| {
            (m.from.is_some() && c.wa_id == m.from)
                || (m.from_user_id.is_some() && c.user_id == m.from_user_id)
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        })
        .and_then(|c| c.profile.name.clone());
    let kind = m
        .kind
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());

    let mut media = Vec::new();
    let mut caption = None;
    for item in [&m.image, &m.video, &m.audio, &m.document, &m.sticker]
        .into_iter()
        .flatten()
    {
        if let Some(id) = &item.id {
            media.push(MediaRef {
                id: id.clone(),
                mime_type: item.mime_type.clone(),
            });
        }
        caption = caption.or_else(|| item.caption.clone());
    }
    let text = match kind.as_str() {
        "text" => m.text.as_ref().and_then(|t| t.body.clone()),
        "interactive" => m.interactive.as_ref().and_then(|i| {
            i.button_reply
                .as_ref()
                .or(i.list_reply.as_ref())
                .and_then(|r| r.title.clone())
                .or_else(|| {
                    i.nfm_reply
                        .as_ref()
                        .and_then(|f| f.response_json.clone().or_else(|| f.body.clone()))
                })
        }),
        "button" => m
            .button
            .as_ref()
            .and_then(|b| b.text.clone().or_else(|| b.payload.clone())),
        "reaction" => m.reaction.as_ref().and_then(|r| r.emoji.clone()),
        "location" => m.location.as_ref().map(|l| match (&l.name, &l.address) {
            (Some(n), Some(a)) => format!("{n}, {a}"),
            (Some(n), None) => n.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => format!(
                "{},{}",
                l.latitude.unwrap_or_default(),
                l.longitude.unwrap_or_default()
            ),
        }),
        "order" => m.order.as_ref().and_then(|o| o.text.clone()),
        "system" => m.system.as_ref().and_then(|s| s.body.clone()),
        _ => caption.or_else(|| m.text.as_ref().and_then(|t| t.body.clone())),
    };
    Ok(InboundMessage {
        contact,
        provider_message_id: id,
        business_number: business_number.to_owned(),
        kind,
        text,
        media,
        timestamp: m
            .timestamp
            .as_ref()
            .and_then(Lenient::as_i64)
            .unwrap_or(fallback_ts),
        profile_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect_message(event: &InboundEvent) -> &InboundMessage {
        match &event.body {
            InboundBody::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn expect_status(event: &InboundEvent) -> &StatusEvent {
        match &event.body {
            InboundBody::Status(s) => s,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    // providers.md §4.2: whatsapp-api-js's published vector, computed over the \u-escaped form.
    const ESCAPED_UNICODE_BODY: &str = "Let's pretend this body is equal to the message object and can handle unicode characters like \\u307f\\u3069\\u308a\\u3044\\u308d and J'ai mang\\u00e9 des p\\u00e2tes";

    #[test]
    fn whatsapp_api_js_vector_verifies_over_escaped_bytes_only() {
        let header = "sha256=0363007aabdf1ab579f35936651a460fb5fa1aaf40df98b1264446b72cc96688";
        assert_eq!(
            verify_signature(
                b"YOUR_APP_SECRET",
                ESCAPED_UNICODE_BODY.as_bytes(),
                Some(header)
            ),
            Ok(())
        );
        let decoded = "Let's pretend this body is equal to the message object and can handle unicode characters like みどりいろ and J'ai mangé des pâtes";
        assert_eq!(
            verify_signature(b"YOUR_APP_SECRET", decoded.as_bytes(), Some(header)),
            Err(SignatureError::Mismatch)
        );
        assert!(sign(b"YOUR_APP_SECRET", decoded.as_bytes()).starts_with("sha256=5ab50fef"));
    }

    #[test]
    fn github_vector_verifies() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_signature(
                b"It's a Secret to Everybody",
                b"Hello, World!",
                Some(header)
            ),
            Ok(())
        );
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            header
        );
    }

    #[test]
    fn own_vectors_verify() {
        let empty = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = "sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756";
        assert_eq!(
            verify_signature(b"test_app_secret", empty, Some(header)),
            Ok(())
        );
        assert_eq!(
            verify_signature(b"other_secret", empty, Some(header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn escaped_body_verifies_raw_and_fails_reserialized() {
        let raw = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"text":"Caf\u00e9 \/ ok"}}]}]}"#;
        let header = "sha256=1c483b205787ee042eed28e901b70d80f21c562a79ea9b874ca2e0509c19543c";
        assert_eq!(
            verify_signature(b"test_app_secret", raw, Some(header)),
            Ok(())
        );

        // What a framework that parses and re-serializes would hand over: the escapes are gone.
        let reserialized =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(raw).unwrap()).unwrap();
        assert!(String::from_utf8_lossy(&reserialized).contains("Café / ok"));
        assert_eq!(
            verify_signature(b"test_app_secret", &reserialized, Some(header)),
            Err(SignatureError::Mismatch)
        );
        // The same bytes with only the escapes decoded: the published negative vector.
        let unescaped = String::from_utf8(raw.to_vec())
            .unwrap()
            .replace(r"\u00e9", "é")
            .replace(r"\/", "/");
        let signed = sign(b"test_app_secret", unescaped.as_bytes());
        assert!(
            signed.starts_with("sha256=f98235b5") && signed.ends_with("c454944a"),
            "{signed}"
        );
        assert_eq!(
            verify_signature(b"test_app_secret", unescaped.as_bytes(), Some(header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn bad_headers_are_told_apart() {
        let body = b"{}";
        let good = sign(b"k", body);
        assert_eq!(
            verify_signature(b"k", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"k", body, Some("")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"k", body, Some(&good[7..])),
            Err(SignatureError::Malformed),
            "no prefix"
        );
        assert_eq!(
            verify_signature(b"k", body, Some("sha1=abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"k", body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"k", body, Some(&good[..good.len() - 2])),
            Err(SignatureError::Malformed)
        );
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            verify_signature(b"k", body, Some(&flipped)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(
                b"k",
                body,
                Some(&good.to_uppercase().replace("SHA256=", "sha256="))
            ),
            Ok(())
        );
    }

    // Meta's text-message example (webhooks overview), with a second message and two statuses.
    const TEXT_AND_STATUSES: &str = r#"{
      "object": "whatsapp_business_account",
      "entry": [{
        "id": "102290129340398",
        "changes": [{
          "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"},
                         {"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551181"}],
            "messages": [
              {"from": "16505551234", "id": "wamid.A", "timestamp": "1749416383", "type": "text",
               "text": {"body": "Does it come in another color?"}},
              {"from": "16315551181", "id": "wamid.B", "timestamp": 1749416390, "type": "image",
               "image": {"caption": "this one", "mime_type": "image/jpeg", "sha256": "x", "id": "1003383421387256"},
               "brand_new_field": {"nested": [1, 2, 3]}}
            ],
            "statuses": [
              {"id": "wamid.S", "status": "delivered", "timestamp": "1749416400", "recipient_id": "16505551234",
               "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"}},
              {"id": "wamid.S", "status": "failed", "timestamp": "1749416401", "recipient_id": "16505551234",
               "errors": [{"code": 131047, "title": "Re-engagement message"}]}
            ]
          },
          "field": "messages"
        }]
      }]
    }"#;

    #[test]
    fn normalizes_messages_and_statuses() {
        let payload = parse(TEXT_AND_STATUSES.as_bytes()).unwrap();
        let out = normalize("acme", None, &payload, 1_749_416_500_123);
        assert_eq!(out.events.len(), 4);
        assert_eq!(out.other_fields, 0);
        assert!(
            out.events
                .iter()
                .all(|e| e.tenant == "acme" && e.provider == Provider::Meta)
        );
        assert!(
            out.events
                .iter()
                .all(|e| e.received_at_ms == 1_749_416_500_123)
        );

        let a = expect_message(&out.events[0]);
        assert_eq!(a.contact, "16505551234");
        assert_eq!(a.provider_message_id, "wamid.A");
        assert_eq!(a.business_number, "106540352242922");
        assert_eq!(a.kind, "text");
        assert_eq!(a.text.as_deref(), Some("Does it come in another color?"));
        assert_eq!(a.timestamp, 1_749_416_383);
        assert_eq!(a.profile_name.as_deref(), Some("Sheena Nelson"));

        let b = expect_message(&out.events[1]);
        assert_eq!(b.kind, "image");
        assert_eq!(b.text.as_deref(), Some("this one"));
        assert_eq!(
            b.media,
            vec![MediaRef {
                id: "1003383421387256".into(),
                mime_type: Some("image/jpeg".into())
            }]
        );
        assert_eq!(
            b.timestamp, 1_749_416_390,
            "numeric timestamps are accepted too"
        );
        assert_eq!(
            b.profile_name.as_deref(),
            Some("Kerry Fisher"),
            "profile matched by wa_id, not position"
        );

        let s = expect_status(&out.events[2]);
        assert_eq!(
            (s.provider_message_id.as_str(), s.status),
            ("wamid.S", DeliveryStatus::Delivered)
        );
        assert_eq!(s.recipient.as_deref(), Some("16505551234"));
        assert_eq!(s.error, None);
        let f = expect_status(&out.events[3]);
        assert_eq!(f.status, DeliveryStatus::Failed);
        assert_eq!(f.error.as_deref(), Some("131047 Re-engagement message"));
    }

    #[test]
    fn every_entry_and_change_is_handled() {
        let body = r#"{"object":"whatsapp_business_account","entry":[
          {"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"P1"},"messages":[
              {"from":"1","id":"m1","timestamp":"1","type":"text","text":{"body":"a"}},
              {"from":"2","id":"m2","timestamp":"2","type":"text","text":{"body":"b"}}]}},
            {"field":"account_update","value":{"phone_number":"1555","event":"VERIFIED_ACCOUNT"}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"P1"},"statuses":[
              {"id":"m0","status":"read","timestamp":"3","recipient_id":"1"}]}}]},
          {"id":2,"changes":[
            {"value":{"metadata":{"phone_number_id":"P2"},"messages":[
              {"from":"3","id":"m3","timestamp":"4","type":"text","text":{"body":"c"}}]},"field":"messages"},
            {"field":"message_template_status_update","value":{"event":"APPROVED","messages":"not an array"}}]}]}"#;
        let out = normalize("t", None, &parse(body.as_bytes()).unwrap(), 0);
        let ids: Vec<_> = out
            .events
            .iter()
            .map(|e| e.provider_message_id().to_owned())
            .collect();
        assert_eq!(ids, ["m1", "m2", "m0", "m3"]);
        assert_eq!(out.other_fields, 2);
        assert_eq!(expect_message(&out.events[3]).business_number, "P2");
    }

    #[test]
    fn missing_from_uses_the_business_scoped_id() {
        let body = r#"{"entry":[{"changes":[{"field":"messages","value":{
          "contacts":[{"profile":{"name":"Ana","username":"ana"},"user_id":"US.123"}],
          "messages":[{"from_user_id":"US.123","id":"wamid.U","timestamp":"5","type":"text","text":{"body":"hi"}}]}}]}]}"#;
        let out = normalize("t", None, &parse(body.as_bytes()).unwrap(), 9_000);
        let m = expect_message(&out.events[0]);
        assert_eq!(m.contact, "US.123");
        assert_eq!(m.profile_name.as_deref(), Some("Ana"));
    }

    #[test]
    fn unknown_types_are_kept_by_name() {
        let body = r#"{"entry":[{"changes":[{"field":"messages","value":{"messages":[
          {"from":"1","id":"ABGGFlA5Fpa","type":"hologram","hologram":{"depth":3}},
          {"from":"1","id":"x2","type":"interactive","interactive":{"type":"list_reply","list_reply":{"id":"r1","title":"Red"}}},
          {"from":"1","id":"x3","type":"button","button":{"text":"Yes","payload":"YES"}},
          {"from":"1","id":"x4","type":"request_welcome"}]}}]}]}"#;
        let out = normalize("t", None, &parse(body.as_bytes()).unwrap(), 7_000);
        let kinds: Vec<_> = out
            .events
            .iter()
            .map(|e| expect_message(e).kind.clone())
            .collect();
        assert_eq!(
            kinds,
            ["hologram", "interactive", "button", "request_welcome"]
        );
        let first = expect_message(&out.events[0]);
        assert_eq!(
            (first.text.as_deref(), first.timestamp),
            (None, 7),
            "missing timestamp falls back"
        );
        assert_eq!(expect_message(&out.events[1]).text.as_deref(), Some("Red"));
        assert_eq!(expect_message(&out.events[2]).text.as_deref(), Some("Yes"));
    }

    #[test]
    fn unknown_status_words_are_counted_not_enqueued() {
        let body = r#"{"entry":[{"changes":[{"field":"messages","value":{"statuses":[
          {"id":"w1","status":"teleported","timestamp":"1"},{"id":"w1","status":"played","timestamp":"2"}]}}]}]}"#;
        let out = normalize("t", None, &parse(body.as_bytes()).unwrap(), 0);
        assert_eq!(out.unknown_statuses, 1);
        assert_eq!(out.events.len(), 1);
        assert_eq!(expect_status(&out.events[0]).status, DeliveryStatus::Read);
    }

    #[test]
    fn one_malformed_item_skips_itself_not_the_body() {
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"entry":{}}"#).is_err());
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"entry":[{"changes":[{"field":"messages","value":{"messages":[{"from":"1","type":"text"},{"id":"ok","from":"2"}]}}]}]}"#,
                "malformed_message",
            ),
            (
                br#"{"entry":[{"changes":[{"field":"messages","value":{"messages":[{"id":"1","type":"text"},{"id":"ok","from":"2"}]}}]}]}"#,
                "malformed_message",
            ),
            (
                br#"{"entry":[{"changes":[{"field":"messages","value":{"messages":"nope"}},{"field":"messages","value":{"messages":[{"id":"ok","from":"2"}]}}]}]}"#,
                "malformed_change",
            ),
            (
                br#"{"entry":[{"changes":[{"field":"messages","value":{"statuses":[{"status":"read"}],"messages":[{"id":"ok","from":"2"}]}}]}]}"#,
                "malformed_status",
            ),
        ];
        for (body, reason) in cases {
            let out = normalize("t", None, &parse(body).unwrap(), 0);
            assert_eq!(
                (out.malformed, out.first_malformed, out.events.len()),
                (1, Some(reason), 1),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_change_for_another_business_number_is_skipped_and_counted() {
        let body = br#"{"entry":[{"changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"P1"},"messages":[{"id":"m1","from":"1"}]}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"P2"},"messages":[{"id":"m2","from":"1"}],"statuses":[{"id":"s2","status":"read"}]}},
            {"field":"messages","value":{"messages":[{"id":"m3","from":"1"}]}}
        ]}]}"#;
        let payload = parse(body).unwrap();
        let out = normalize("t", Some("P1"), &payload, 0);
        assert_eq!(out.misrouted_changes, 2, "another number, and none at all");
        let ids: Vec<_> = out
            .events
            .iter()
            .map(|e| e.provider_message_id().to_owned())
            .collect();
        assert_eq!(ids, ["m1"]);
        let unchecked = normalize("t", None, &payload, 0);
        assert_eq!(
            (unchecked.misrouted_changes, unchecked.events.len()),
            (0, 4)
        );
    }
}
