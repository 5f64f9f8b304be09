//! Automatic replies are enqueued once, whatever the redeliveries.

use fleet_core::OutboundBody;
use fleet_runtime::Shutdown;

use crate::{Harness, msg, now_s};

#[tokio::test]
async fn automatic_replies_are_enqueued_once() {
    let h = Harness::new().await;
    let t = now_s();
    let events = vec![
        msg("acme", "111", "wamid.a1", t, "hi there"),
        msg("acme", "111", "wamid.a2", t + 1, "what is the price?"),
        msg("acme", "222", "wamid.b1", t, "Price please"),
        msg("plain", "333", "wamid.c1", t, "price"), // no rules for this tenant
    ];
    h.enqueue(&events).await;
    let mut worker = h.worker(Harness::config(2), Shutdown::new()).await;
    h.drain(&mut worker).await;

    let mut got: Vec<(String, String, String)> = h
        .outbound_messages()
        .await
        .into_iter()
        .map(|m| {
            let OutboundBody::Text { text } = m.body else {
                panic!("text expected")
            };
            (m.to, m.origin, text)
        })
        .collect();
    got.sort();
    let want = [
        ("111", "auto:keyword", "Our prices: ..."),
        ("111", "auto:welcome", "Welcome to Acme!"),
        ("222", "auto:keyword", "Our prices: ..."),
        ("222", "auto:welcome", "Welcome to Acme!"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);

    // Redelivered entries and a returning contact's new message add no reply.
    h.enqueue(&events).await;
    h.enqueue(&[msg("acme", "111", "wamid.a3", t + 5, "thanks")])
        .await;
    h.drain(&mut worker).await;
    assert_eq!(h.outbound_messages().await.len(), 4);
    assert_eq!(h.totals().await, (5, 5, 3));
    h.cleanup().await;
}

#[tokio::test]
async fn a_message_replayed_after_the_reply_window_is_not_answered_again() {
    let h = Harness::new().await;
    let t = now_s();
    // First received two hours ago (its own timestamp recent, as Twilio's, which is the time
    // ingest received it); the reply window is one hour.
    let mut first = msg("acme", "444", "wamid.r1", t, "what is the price?");
    first.received_at_ms = (t - 2 * 3600) * 1000;
    let config = fleet_prospects::Config {
        max_reply_age: std::time::Duration::from_secs(3600),
        ..Harness::config(10)
    };
    h.enqueue(std::slice::from_ref(&first)).await;
    let mut worker = h.worker(config, Shutdown::new()).await;
    h.drain(&mut worker).await;
    let answered = h.outbound_messages().await.len();
    assert!(answered >= 1, "the first delivery is answered");

    // The reply's idempotency key has expired (here: the outbound queue is emptied, keys and
    // all), and the same message arrives again, received now: a captured request replayed.
    h.outbound().destroy().await.unwrap();
    let replay = msg("acme", "444", "wamid.r1", t, "what is the price?");
    h.enqueue(&[replay]).await;
    h.drain(&mut worker).await;
    assert_eq!(
        h.outbound_messages().await.len(),
        0,
        "stored once, answered once: no reply planned for the replay"
    );
    assert_eq!(h.totals().await.0, 1, "one message row");
    h.cleanup().await;
}
