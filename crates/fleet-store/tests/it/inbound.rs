//! Inbound batches: coalescing, idempotent replay, counts only for new rows, monotonic statuses,
//! welcome claims, and error classification of bad data.

use fleet_core::DeliveryStatus;
use fleet_store::{ErrorClass, OutboundState, WelcomeClaim, testing::TestDb};

use crate::{message_status, msg, outbound::record, prospect, snapshot, status};

const T: i64 = 1_700_000_000;

#[tokio::test]
async fn a_batch_is_coalesced_per_prospect() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut named_old = msg("acme", "111", "w1", T);
    let mut named_new = msg("acme", "111", "w2", T + 10);
    if let fleet_core::InboundBody::Message(m) = &mut named_old.body {
        m.profile_name = Some("Ann (old)".into());
    }
    if let fleet_core::InboundBody::Message(m) = &mut named_new.body {
        m.profile_name = Some("Ann".into());
    }
    let events = vec![
        named_new.clone(),
        named_old,
        named_new, // a duplicate inside the batch
        msg("acme", "222", "w3", T),
        msg("other", "111", "w1", T), // same ids, another tenant: another prospect and message
    ];
    let out = store.write_inbound_batch(&events).await.unwrap();
    assert_eq!(out.messages, 4);
    assert_eq!(out.messages_inserted, 4);
    assert_eq!(out.prospects_upserted, 3);
    assert_eq!(out.prospects_created.len(), 3);

    let p = prospect(store, "acme", "111").await.unwrap();
    assert_eq!(p, (2, 2, Some("Ann".into()), Some("text of w2".into())));
    assert_eq!(prospect(store, "acme", "222").await.unwrap().0, 1);
    assert_eq!(prospect(store, "other", "111").await.unwrap().0, 1);
    assert_eq!(snapshot(store, "messages").await.len(), 4);
    db.cleanup().await;
}

#[tokio::test]
async fn replaying_a_batch_changes_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .record_outbound_results(&[record("j", OutboundState::Sent, 1, Some("wamid.o"))])
        .await
        .unwrap();
    let events = vec![
        msg("acme", "111", "w1", T),
        msg("acme", "111", "w2", T + 1),
        msg("acme", "222", "w3", T + 2),
        status("acme", "wamid.o", DeliveryStatus::Delivered, T + 3),
    ];
    let first = store
        .write_inbound_batch_with(&events, |t| t == "acme")
        .await
        .unwrap();
    assert_eq!(first.messages_inserted, 3);
    assert_eq!(first.welcome.len(), 2);
    let tables = [
        "prospects",
        "messages",
        "message_status",
        "auto_replies_sent",
    ];
    let mut before = Vec::new();
    for t in tables {
        before.push(snapshot(store, t).await);
    }

    let again = store
        .write_inbound_batch_with(&events, |t| t == "acme")
        .await
        .unwrap();
    assert_eq!(again.messages_inserted, 0);
    assert_eq!(again.prospects_upserted, 0);
    assert!(again.prospects_created.is_empty());
    assert_eq!(again.statuses_applied, 0);
    // The same welcome claims come back, so an enqueue lost to a crash is redone (and deduplicated
    // by the queue's idempotency key).
    assert_eq!(again.welcome, first.welcome);
    for (t, rows) in tables.iter().zip(before) {
        assert_eq!(
            snapshot(store, t).await,
            rows,
            "table {t} changed on replay"
        );
    }
    db.cleanup().await;
}

#[tokio::test]
async fn counts_move_only_for_newly_stored_messages() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .write_inbound_batch(&[msg("acme", "111", "w1", T), msg("acme", "111", "w2", T + 1)])
        .await
        .unwrap();
    // An overlapping batch: w2 again (a redelivery) plus the new w3, older than w2.
    let out = store
        .write_inbound_batch(&[
            msg("acme", "111", "w2", T + 1),
            msg("acme", "111", "w0", T - 100),
        ])
        .await
        .unwrap();
    assert_eq!(out.messages, 2);
    assert_eq!(out.messages_inserted, 1);
    assert!(out.prospects_created.is_empty());
    let (count, unread, _, preview) = prospect(store, "acme", "111").await.unwrap();
    assert_eq!((count, unread), (3, 3));
    // An older message never replaces the preview of a newer one.
    assert_eq!(preview.as_deref(), Some("text of w2"));
    db.cleanup().await;
}

#[tokio::test]
async fn statuses_never_move_backwards_whatever_their_order() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .record_outbound_results(&[
            record("a", OutboundState::Sent, 1, Some("wamid.a")),
            record("b", OutboundState::Sent, 1, Some("wamid.b")),
        ])
        .await
        .unwrap();
    // Read first, then the older delivered and sent, in separate batches and in one batch.
    for s in [
        DeliveryStatus::Read,
        DeliveryStatus::Delivered,
        DeliveryStatus::Sent,
    ] {
        store
            .write_inbound_batch(&[status("acme", "wamid.a", s, T)])
            .await
            .unwrap();
    }
    assert_eq!(
        message_status(store, "acme", "wamid.a").await,
        Some((Some("read".into()), 3))
    );

    let out = store
        .write_inbound_batch(&[
            status("acme", "wamid.b", DeliveryStatus::Failed, T),
            status("acme", "wamid.b", DeliveryStatus::Delivered, T + 1),
        ])
        .await
        .unwrap();
    assert_eq!(out.statuses, 1);
    // Failed is terminal: a later read changes nothing.
    store
        .write_inbound_batch(&[status("acme", "wamid.b", DeliveryStatus::Read, T + 2)])
        .await
        .unwrap();
    assert_eq!(
        message_status(store, "acme", "wamid.b").await,
        Some((Some("failed".into()), 4))
    );
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM messages WHERE provider_message_id = 'wamid.b'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(error.as_deref(), Some("131026: undeliverable"));
    db.cleanup().await;
}

#[tokio::test]
async fn the_welcome_is_claimed_once_per_prospect_ever() {
    let db = TestDb::new().await;
    let store = db.store();
    let welcome = |t: &str| t == "acme";
    let out = store
        .write_inbound_batch_with(
            &[msg("acme", "111", "w2", T + 1), msg("acme", "111", "w1", T)],
            welcome,
        )
        .await
        .unwrap();
    let claim = WelcomeClaim {
        tenant: "acme".into(),
        contact: "111".into(),
        trigger_provider_message_id: "w1".into(),
    };
    assert_eq!(out.welcome, vec![claim.clone()]);

    // A redelivery of only the triggering message, in another batch, returns the same claim.
    let out = store
        .write_inbound_batch_with(&[msg("acme", "111", "w1", T)], welcome)
        .await
        .unwrap();
    assert_eq!(out.welcome, vec![claim]);
    // A redelivery of the other message, and a new message, return none.
    let out = store
        .write_inbound_batch_with(
            &[
                msg("acme", "111", "w2", T + 1),
                msg("acme", "111", "w3", T + 9),
            ],
            welcome,
        )
        .await
        .unwrap();
    assert!(out.welcome.is_empty());
    // A tenant without the rule gets no claims.
    let out = store
        .write_inbound_batch_with(&[msg("other", "111", "w9", T)], welcome)
        .await
        .unwrap();
    assert!(out.welcome.is_empty());
    assert_eq!(snapshot(store, "auto_replies_sent").await.len(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn bad_data_is_a_data_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut poison = msg("acme", "111", "w2", T);
    if let fleet_core::InboundBody::Message(m) = &mut poison.body {
        // Postgres text cannot hold NUL: the statement fails with invalid_byte_sequence (22021).
        m.text = Some("bad\0byte".into());
    }
    let err = store
        .write_inbound_batch(&[msg("acme", "111", "w1", T), poison])
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data, "{err}");
    assert!(
        snapshot(store, "messages").await.is_empty(),
        "the failed batch wrote nothing"
    );

    let err = store
        .write_inbound_batch(&[msg("acme", "", "w1", T)])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        fleet_store::Error::InvalidEvent { index: 0, .. }
    ));
    assert!(err.is_data());
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_transient_error() {
    let store = fleet_store::Store::connect(
        "postgres://postgres@127.0.0.1:1/fleet",
        &fleet_store::PoolOptions {
            acquire_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    let err = store
        .write_inbound_batch(&[msg("acme", "1", "w", T)])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
