//! Automatic replies of a committed batch, from the tenant's rules: what to enqueue on `outbound`,
//! each with an idempotency key, so a redelivered batch enqueues nothing twice.
//!
//! Pure (no IO), so the rules are unit-tested without Redis or Postgres.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use fleet_core::{
    EnqueueOptions, InboundBody, InboundEvent, OutboundBody, OutboundMessage, Priority,
};
use fleet_runtime::Tenants;
use fleet_store::WelcomeClaim;

/// One reply to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoReply {
    /// The rule that produced it: `welcome`, `keyword` or `out_of_hours`.
    pub rule: &'static str,
    /// The reply.
    pub message: OutboundMessage,
    /// Enqueue options, with the idempotency key set.
    pub options: EnqueueOptions,
}

/// The events of a batch that may still be answered: every event but the messages an earlier
/// batch stored more than `max_age` ago. Those are a provider's redelivery or a captured request
/// replayed after the reply window, when the idempotency keys of their replies may have expired;
/// neither provider signs a timestamp that would tell (Twilio's form carries none, so its
/// messages' own time is when ingest received them). A queue redelivery of a batch within the
/// window is still answered, and its replies' keys make it enqueue nothing twice.
pub fn without_replays<'a>(
    events: &'a [InboundEvent],
    stored_earlier: &[fleet_store::StoredEarlier],
    now: DateTime<Utc>,
    max_age: Duration,
) -> std::borrow::Cow<'a, [InboundEvent]> {
    let oldest = now - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let stale: HashSet<(&str, &str)> = stored_earlier
        .iter()
        .filter(|s| s.first_received_at < oldest)
        .map(|s| (s.tenant.as_str(), s.provider_message_id.as_str()))
        .collect();
    if stale.is_empty() {
        return std::borrow::Cow::Borrowed(events);
    }
    let answerable = events
        .iter()
        .filter(|e| match &e.body {
            InboundBody::Message(m) => {
                !stale.contains(&(e.tenant.as_str(), m.provider_message_id.as_str()))
            }
            InboundBody::Status(_) => true,
        })
        .cloned()
        .collect();
    std::borrow::Cow::Owned(answerable)
}

/// Plans the replies of a committed batch.
///
/// - `welcome`: one per claim returned by the store (once per prospect ever), key
///   `auto:welcome:<trigger provider message id>`;
/// - `keyword`: one per message whose text matches a keyword rule, key `auto:keyword:<provider message id>`;
/// - `out_of_hours`: when a message arrives while the business is closed (in the tenant's time
///   zone), key `auto:out_of_hours:<tenant>:<contact>:<local date>`, so a contact who writes five
///   times in one night gets one answer, not five (a deliberate departure from the per-message key).
///
/// Messages older than `max_age` get no reply: WhatsApp allows free-form replies only within 24
/// hours of the contact's message, and the queue remembers idempotency keys for about as long, so
/// a replay of old entries (a dead-letter replay, say) cannot answer twice.
pub fn plan(
    events: &[InboundEvent],
    welcome: &[WelcomeClaim],
    tenants: &Tenants,
    now: DateTime<Utc>,
    max_age: Duration,
    priority: Priority,
) -> Vec<AutoReply> {
    let mut out = Vec::new();
    let mut keys = HashSet::new();
    let oldest = now - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let created_at_ms = now.timestamp_millis();
    let mut push =
        |rule: &'static str, key: String, event: &InboundEvent, contact: &str, text: &str| {
            if !keys.insert(key.clone()) {
                return;
            }
            out.push(AutoReply {
                rule,
                message: OutboundMessage {
                    tenant: event.tenant.clone(),
                    provider: event.provider,
                    to: contact.to_owned(),
                    body: OutboundBody::Text {
                        text: text.to_owned(),
                    },
                    origin: format!("auto:{rule}"),
                    created_at_ms,
                    sent: None,
                },
                // Retries are fleet-outbound's own policy (`[outbound.retry]`), not chosen here.
                options: EnqueueOptions::with_priority(priority).idempotent(key),
            });
        };

    for event in events {
        let InboundBody::Message(m) = &event.body else {
            continue;
        };
        let Some(tenant) = tenants.get(&event.tenant) else {
            continue;
        };
        let Some(sent_at) = DateTime::from_timestamp(m.timestamp, 0) else {
            continue;
        };
        if sent_at < oldest {
            continue;
        }
        let replies = &tenant.replies;
        if let Some(text) = &replies.welcome {
            let claimed = welcome.iter().any(|c| {
                c.tenant == event.tenant
                    && c.contact == m.contact
                    && c.trigger_provider_message_id == m.provider_message_id
            });
            if claimed {
                push(
                    "welcome",
                    format!("auto:welcome:{}", m.provider_message_id),
                    event,
                    &m.contact,
                    text,
                );
            }
        }
        if let Some(reply) = m.text.as_deref().and_then(|t| replies.keyword_reply(t)) {
            push(
                "keyword",
                format!("auto:keyword:{}", m.provider_message_id),
                event,
                &m.contact,
                reply,
            );
        }
        if let Some(ooh) = &replies.out_of_hours
            && !ooh.is_open(sent_at)
        {
            let local_date = sent_at.with_timezone(&ooh.timezone).date_naive();
            let key = format!(
                "auto:out_of_hours:{}:{}:{local_date}",
                event.tenant, m.contact
            );
            push("out_of_hours", key, event, &m.contact, &ooh.reply);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use fleet_core::{InboundMessage, Provider};

    use super::*;

    const TENANTS: &str = r#"
        [[tenant]]
        id = "acme"
        api_token = "t-acme"
        [tenant.replies]
        welcome = "Welcome!"
        keywords = [{ match = "price", reply = "Prices: ..." }]
        [tenant.replies.out_of_hours]
        timezone = "Europe/Madrid"
        open = "09:00"
        close = "18:00"
        days = ["mon", "tue", "wed", "thu", "fri"]
        reply = "We are closed"

        [[tenant]]
        id = "quiet"
        api_token = "t-quiet"
    "#;

    fn msg(tenant: &str, id: &str, ts: i64, text: &str) -> InboundEvent {
        InboundEvent {
            tenant: tenant.into(),
            provider: Provider::Meta,
            received_at_ms: 0,
            body: InboundBody::Message(InboundMessage {
                contact: "34600000001".into(),
                provider_message_id: id.into(),
                kind: "text".into(),
                text: Some(text.into()),
                timestamp: ts,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn messages_first_received_before_the_window_are_left_out() {
        let now = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        let events = vec![
            msg("acme", "old", 0, "price"),
            msg("acme", "new", 0, "price"),
        ];
        let earlier = |id: &str, hours_ago: i64| fleet_store::StoredEarlier {
            tenant: "acme".into(),
            provider_message_id: id.into(),
            first_received_at: now - chrono::Duration::hours(hours_ago),
        };
        let day = Duration::from_secs(86_400);
        let kept = without_replays(&events, &[earlier("old", 25), earlier("new", 2)], now, day);
        let ids: Vec<_> = kept.iter().map(|e| e.provider_message_id()).collect();
        assert_eq!(
            ids,
            ["new"],
            "a redelivery within the window is still answered"
        );
        assert!(matches!(
            without_replays(&events, &[], now, day),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    fn keys(replies: &[AutoReply]) -> Vec<String> {
        replies
            .iter()
            .map(|r| r.options.idempotency_key.clone().unwrap())
            .collect()
    }

    #[test]
    fn rules_fire_with_stable_keys() {
        let tenants = Tenants::parse(TENANTS).unwrap();
        // Monday 2026-11-23 10:00 UTC = 11:00 in Madrid: open.
        let open = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .timestamp();
        // Monday 2026-11-23 22:00 UTC = 23:00 in Madrid: closed.
        let closed = open + 12 * 3600;
        let now = DateTime::from_timestamp(closed + 60, 0).unwrap();
        let events = vec![
            msg("acme", "w1", open, "hello"),
            msg("acme", "w2", open + 1, "what is the PRICE?"),
            msg("acme", "w3", closed, "anyone?"),
            msg("acme", "w4", closed + 5, "hello??"),
            msg("quiet", "q1", closed, "price"),
        ];
        let claims = [WelcomeClaim {
            tenant: "acme".into(),
            contact: "34600000001".into(),
            trigger_provider_message_id: "w1".into(),
        }];
        let day = Duration::from_secs(86_400);
        let replies = plan(&events, &claims, &tenants, now, day, Priority::Normal);
        assert_eq!(
            keys(&replies),
            [
                "auto:welcome:w1",
                "auto:keyword:w2",
                "auto:out_of_hours:acme:34600000001:2026-11-23",
            ]
        );
        assert_eq!(
            replies[0].message.body,
            OutboundBody::Text {
                text: "Welcome!".into()
            }
        );
        assert_eq!(replies[0].message.origin, "auto:welcome");
        assert_eq!(replies[0].message.to, "34600000001");

        // The same batch planned again gives the same keys (the queue deduplicates them).
        assert_eq!(
            keys(&plan(
                &events,
                &claims,
                &tenants,
                now,
                day,
                Priority::Normal
            )),
            keys(&replies)
        );
        // Too old: nothing.
        let later = now + chrono::Duration::days(2);
        assert!(plan(&events, &claims, &tenants, later, day, Priority::Normal).is_empty());
    }
}
