//! At-least-once delivery: a worker stopped between commit and acknowledgement, and several
//! workers on one queue, never count a message twice nor lose one.

use std::time::Duration;

use fleet_prospects::Config;
use fleet_queue::{ConsumerOptions, GROUP_DEFAULT, now_ms};
use fleet_runtime::Shutdown;

use crate::{Harness, msg, now_s};

#[tokio::test]
async fn a_redelivery_after_commit_without_ack_counts_nothing_twice() {
    let h = Harness::new().await;
    let t = now_s();
    // 10 new contacts of a tenant with a welcome rule, 5 messages each.
    let events: Vec<_> = (0..50)
        .map(|i| {
            msg(
                "acme",
                &format!("3460000{:04}", i % 10),
                &format!("wamid.{i}"),
                t + i,
                "hi",
            )
        })
        .collect();
    h.enqueue(&events).await;

    // A worker that commits and then dies before acknowledging (and before enqueueing replies).
    {
        let mut crashy = h
            .inbound()
            .consumer(ConsumerOptions {
                batch_size: 100,
                block: Duration::from_millis(100),
                ..ConsumerOptions::new("crashy")
            })
            .await
            .unwrap();
        let batch = crashy.next_batch().await.unwrap();
        assert_eq!(batch.len(), 50);
        let decoded: Vec<fleet_core::InboundEvent> =
            batch.iter().map(|d| d.decode().unwrap()).collect();
        let out = h
            .store()
            .write_inbound_batch_with(&decoded, |t| t == "acme")
            .await
            .unwrap();
        assert_eq!((out.messages_inserted, out.welcome.len()), (50, 10));
    }
    assert_eq!(h.pending_and_dead().await, (50, 0));
    assert!(
        h.outbound_messages().await.is_empty(),
        "the crash happened before any reply was enqueued"
    );

    // Stalled recovery hands the entries to a live worker.
    let reclaimed = h
        .inbound()
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 1000, now_ms())
        .await
        .unwrap();
    assert_eq!(reclaimed.requeued, 50);
    let mut worker = h.worker(Harness::config(20), Shutdown::new()).await;
    h.drain(&mut worker).await;

    assert_eq!(h.totals().await, (50, 50, 10), "each message counted once");
    assert_eq!(h.pending_and_dead().await, (0, 0));
    // The welcome replies lost to the crash are enqueued by the redelivery, once each.
    let replies = h.outbound_messages().await;
    assert_eq!(replies.len(), 10);
    assert!(replies.iter().all(|r| r.origin == "auto:welcome"));

    // The provider re-sends everything: nothing changes, nothing is enqueued again.
    h.enqueue(&events).await;
    h.drain(&mut worker).await;
    assert_eq!(h.totals().await, (50, 50, 10));
    assert_eq!(h.outbound_messages().await.len(), 10);
    h.cleanup().await;
}

#[tokio::test]
async fn three_workers_on_one_queue_lose_nothing_and_duplicate_nothing() {
    let h = Harness::new().await;
    let t = 1_700_000_000;
    let contacts = 200;
    let per_contact = 6;
    let mut events: Vec<_> = (0..contacts * per_contact)
        .map(|i| {
            msg(
                "plain",
                &format!("c{}", i % contacts),
                &format!("m{i}"),
                t + i,
                "hello",
            )
        })
        .collect();
    // Duplicates spread through the queue, as a provider redelivery would add them.
    let dups: Vec<_> = events.iter().step_by(7).cloned().collect();
    events.extend(dups);
    h.enqueue(&events).await;
    let expected = contacts * per_contact;

    let shutdown = Shutdown::new();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let config = Config {
            batch_size: 50,
            ..Harness::config(50)
        };
        runs.push(tokio::spawn(fleet_prospects::run(
            config,
            h.broker.clone(),
            h.store().clone(),
            h.tenants.clone(),
            shutdown.clone(),
        )));
    }
    // Wait for the effect, bounded; this orders nothing, it only waits for completion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (messages, _, _) = h.totals().await;
        let (pending, _) = h.pending_and_dead().await;
        if messages == expected && pending == 0 && h.inbound().backlog().await.unwrap() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {messages} of {expected} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }

    assert_eq!(h.totals().await, (expected, expected, contacts));
    let per: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT message_count FROM prospects")
        .fetch_all(h.store().pool())
        .await
        .unwrap();
    assert_eq!(per, vec![per_contact]);
    assert_eq!(h.pending_and_dead().await, (0, 0));
    // All three took part (each registered consumer read at least once is not guaranteed by
    // Redis, so only the consumer count is checked).
    assert!(h.inbound().stats().await.unwrap().consumers >= 3);
    h.cleanup().await;
}
