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
