//! Per-event queue options: the priority rules and the idempotency keys of inbound events.
//!
//! Priorities: a contact who taps a button is waiting on the screen for the answer, so
//! interactive and button replies go first; ordinary messages next; delivery statuses only
//! update bookkeeping and go last. A tenant may override any kind (`[tenant.priority]`).
//!
//! Idempotency keys name what a provider redelivers (the same wamid, the same MessageSid, the same
//! status of the same message), scoped by tenant so two tenants never collide.

use fleet_core::{InboundBody, InboundEvent, Priority};

/// The kind name of every status event in the priority rules.
pub const STATUS_KIND: &str = "status";

/// The kind a priority rule matches: the message type (`text`, `interactive`, `button`, ...,
/// unknown types by their own name), or [`STATUS_KIND`].
pub fn rule_kind(event: &InboundEvent) -> &str {
    match &event.body {
        InboundBody::Message(m) => &m.kind,
        InboundBody::Status(_) => STATUS_KIND,
    }
}

/// The built-in priority of a kind.
pub fn default_priority(kind: &str) -> Priority {
    match kind {
        "interactive" | "button" => Priority::High,
        STATUS_KIND => Priority::Low,
        _ => Priority::Normal,
    }
}

/// The priority of an event: the tenant's override for its kind, else the built-in rule.
pub fn priority_for(
    event: &InboundEvent,
    overrides: impl Fn(&str) -> Option<Priority>,
) -> Priority {
    let kind = rule_kind(event);
    overrides(kind).unwrap_or_else(|| default_priority(kind))
}

/// The idempotency key of an inbound event:
/// `<tenant>:<provider>:msg:<id>` or `<tenant>:<provider>:status:<id>:<status>`.
pub fn idempotency_key(event: &InboundEvent) -> String {
    match &event.body {
        InboundBody::Message(m) => format!(
            "{}:{}:msg:{}",
            event.tenant, event.provider, m.provider_message_id
        ),
        InboundBody::Status(s) => {
            format!(
                "{}:{}:status:{}:{}",
                event.tenant,
                event.provider,
                s.provider_message_id,
                s.status.as_str()
            )
        }
    }
}

/// The idempotency key of a send-API request carrying `Idempotency-Key: <key>`.
pub fn api_idempotency_key(tenant: &str, key: &str) -> String {
    format!("{tenant}:api:{key}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use fleet_core::{DeliveryStatus, InboundMessage, Provider, StatusEvent};

    use super::*;

    fn message(kind: &str, provider: Provider) -> InboundEvent {
        InboundEvent {
            tenant: "acme".into(),
            provider,
            received_at_ms: 0,
            body: InboundBody::Message(InboundMessage {
                contact: "1".into(),
                provider_message_id: "wamid.X".into(),
                kind: kind.into(),
                ..Default::default()
            }),
        }
    }

    fn status(word: DeliveryStatus) -> InboundEvent {
        InboundEvent {
            tenant: "acme".into(),
            provider: Provider::Meta,
            received_at_ms: 0,
            body: InboundBody::Status(StatusEvent {
                provider_message_id: "wamid.S".into(),
                recipient: None,
                status: word,
                timestamp: 0,
                error: None,
            }),
        }
    }

    #[test]
    fn default_rules() {
        let none = |_: &str| None;
        assert_eq!(
            priority_for(&message("interactive", Provider::Meta), none),
            Priority::High
        );
        assert_eq!(
            priority_for(&message("button", Provider::Twilio), none),
            Priority::High
        );
        assert_eq!(
            priority_for(&message("text", Provider::Meta), none),
            Priority::Normal
        );
        assert_eq!(
            priority_for(&message("hologram", Provider::Meta), none),
            Priority::Normal
        );
        assert_eq!(
            priority_for(&status(DeliveryStatus::Read), none),
            Priority::Low
        );
    }

    #[test]
    fn tenant_overrides_win() {
        let overrides: HashMap<String, Priority> = [
            ("text".to_owned(), Priority::High),
            ("button".to_owned(), Priority::Low),
        ]
        .into();
        let lookup = |kind: &str| overrides.get(kind).copied();
        assert_eq!(
            priority_for(&message("text", Provider::Meta), lookup),
            Priority::High
        );
        assert_eq!(
            priority_for(&message("button", Provider::Meta), lookup),
            Priority::Low
        );
        assert_eq!(
            priority_for(&message("image", Provider::Meta), lookup),
            Priority::Normal
        );
    }

    #[test]
    fn keys_name_provider_id_and_status() {
        assert_eq!(
            idempotency_key(&message("text", Provider::Meta)),
            "acme:meta:msg:wamid.X"
        );
        assert_eq!(
            idempotency_key(&message("text", Provider::Twilio)),
            "acme:twilio:msg:wamid.X"
        );
        assert_eq!(
            idempotency_key(&status(DeliveryStatus::Delivered)),
            "acme:meta:status:wamid.S:delivered"
        );
        assert_ne!(
            idempotency_key(&status(DeliveryStatus::Read)),
            idempotency_key(&status(DeliveryStatus::Delivered))
        );
        assert_eq!(api_idempotency_key("acme", "k1"), "acme:api:k1");
    }
}
