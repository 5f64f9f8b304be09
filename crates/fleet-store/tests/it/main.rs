//! Integration tests of `fleet-store` against a real Postgres: each test gets its own database.

mod inbound;
mod outbound;
mod schema;

use fleet_core::{
    DeliveryStatus, InboundBody, InboundEvent, InboundMessage, Provider, StatusEvent,
};
use fleet_store::Store;

/// An inbound text message.
pub(crate) fn msg(tenant: &str, contact: &str, id: &str, ts: i64) -> InboundEvent {
    InboundEvent {
        tenant: tenant.into(),
        provider: Provider::Meta,
        received_at_ms: 1_700_000_000_000,
        body: InboundBody::Message(InboundMessage {
            contact: contact.into(),
            provider_message_id: id.into(),
            kind: "text".into(),
            text: Some(format!("text of {id}")),
            timestamp: ts,
            ..Default::default()
        }),
    }
}

/// A status event of a message we sent.
pub(crate) fn status(tenant: &str, id: &str, status: DeliveryStatus, ts: i64) -> InboundEvent {
    InboundEvent {
        tenant: tenant.into(),
        provider: Provider::Meta,
        received_at_ms: 1_700_000_000_000,
        body: InboundBody::Status(StatusEvent {
            provider_message_id: id.into(),
            recipient: None,
            status,
            timestamp: ts,
            error: (status == DeliveryStatus::Failed).then(|| "131026: undeliverable".to_owned()),
        }),
    }
}

/// Every row of a table as JSON text, in a stable order: to compare a table before and after.
pub(crate) async fn snapshot(store: &Store, table: &str) -> Vec<String> {
    let sql = match table {
        "prospects" => "SELECT to_jsonb(t)::text FROM prospects t ORDER BY tenant, contact",
        "messages" => "SELECT to_jsonb(t)::text FROM messages t ORDER BY id",
        "message_status" => {
            "SELECT to_jsonb(t)::text FROM message_status t ORDER BY tenant, provider_message_id"
        }
        "auto_replies_sent" => {
            "SELECT to_jsonb(t)::text FROM auto_replies_sent t ORDER BY tenant, contact, rule"
        }
        "outbound_messages" => "SELECT to_jsonb(t)::text FROM outbound_messages t ORDER BY job_id",
        other => panic!("no snapshot for {other}"),
    };
    sqlx::query_scalar(sql)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// `(message_count, unread_count, display_name, last_message_preview)` of a prospect.
pub(crate) async fn prospect(
    store: &Store,
    tenant: &str,
    contact: &str,
) -> Option<(i64, i64, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT message_count, unread_count, display_name, last_message_preview FROM prospects
         WHERE tenant = $1 AND contact = $2",
    )
    .bind(tenant)
    .bind(contact)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

/// `(status, status_rank)` of a message row.
pub(crate) async fn message_status(
    store: &Store,
    tenant: &str,
    id: &str,
) -> Option<(Option<String>, i16)> {
    sqlx::query_as(
        "SELECT status, status_rank FROM messages WHERE tenant = $1 AND provider_message_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}
