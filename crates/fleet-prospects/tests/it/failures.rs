//! Failures: one bad entry is isolated and dead-lettered alone; a transient outage holds the batch.

use std::time::Duration;

use fleet_core::{EnqueueOptions, InboundBody};
use fleet_runtime::Shutdown;
use fleet_store::{PoolOptions, Store};

use crate::{Harness, msg};

#[tokio::test]
async fn a_poison_entry_is_isolated_and_only_it_is_dead_lettered() {
    let h = Harness::new().await;
    let t = 1_700_000_000;
    let mut events: Vec<_> = (0..40)
        .map(|i| {
            msg(
                "plain",
                &format!("c{}", i % 5),
                &format!("m{i}"),
                t + i,
                "ok",
            )
        })
        .collect();
    // Postgres rejects a NUL byte in text: the whole statement fails with a data error.
    if let InboundBody::Message(m) = &mut events[17].body {
        m.text = Some("bad\0byte".into());
    }
    // Rejected by the store before any SQL.
    if let InboundBody::Message(m) = &mut events[30].body {
        m.contact = String::new();
    }
    h.enqueue(&events).await;
    // Not an InboundEvent at all.
    h.inbound()
        .enqueue(&"not an event", &EnqueueOptions::default())
        .await
        .unwrap();

    let mut worker = h.worker(Harness::config(100), Shutdown::new()).await;
    let report = worker.run_once().await.unwrap();
    assert_eq!(report.delivered, 41);
    assert_eq!(report.dead_lettered, 3);
    assert_eq!(report.acked, 38);
    h.drain(&mut worker).await;

    assert_eq!(h.totals().await.0, 38);
    assert_eq!(h.pending_and_dead().await, (0, 3));
    let mut reasons: Vec<String> = h
        .inbound()
        .dead_list(10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["data", "decode", "invalid"]);
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT provider_message_id FROM messages WHERE provider_message_id IN ('m17', 'm30')",
    )
    .fetch_all(h.store().pool())
    .await
    .unwrap();
    assert!(stored.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn a_transient_outage_acknowledges_nothing_and_dead_letters_nothing() {
    let h = Harness::new().await;
    h.enqueue(&[
        msg("plain", "c1", "m1", 1_700_000_000, "ok"),
        msg("plain", "c2", "m2", 1_700_000_001, "ok"),
    ])
    .await;
    // Postgres "down": nothing listens on port 1.
    let down = Store::connect(
        "postgres://postgres@127.0.0.1:1/fleet",
        &PoolOptions {
            acquire_timeout: Duration::from_millis(200),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let shutdown = Shutdown::new();
    let name = fleet_queue::unique_consumer_name("down");
    let mut worker = fleet_prospects::BatchWorker::new(
        &h.broker,
        down,
        h.tenants.clone(),
        Harness::config(10),
        name,
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Stop during the retry wait: the batch must be given back, not acknowledged or dead, and
    // without an attempt counted.
    shutdown.cancel();
    let report = worker.run_once().await.unwrap();
    assert!(report.interrupted);
    assert_eq!((report.acked, report.dead_lettered), (0, 0));
    assert_eq!(h.pending_and_dead().await, (0, 0));
    assert_eq!(h.inbound().stats().await.unwrap().delayed, 2);

    // Once Postgres is back (a healthy worker after the scheduler promoted them), everything is
    // written.
    let promoted = h
        .inbound()
        .promote_due(fleet_queue::now_ms(), 100)
        .await
        .unwrap();
    assert_eq!(promoted, 2);
    let back = h
        .inbound()
        .peek(fleet_core::Priority::Normal, 10)
        .await
        .unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|j| j.attempts == 0), "no attempt counted");
    let mut healthy = h.worker(Harness::config(10), Shutdown::new()).await;
    h.drain(&mut healthy).await;
    assert_eq!(h.totals().await, (2, 2, 2));
    assert_eq!(h.pending_and_dead().await, (0, 0));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_is_not_an_attempt() {
    let h = Harness::new().await;
    h.enqueue(&[
        msg("plain", "c1", "m1", 1_700_000_000, "ok"),
        msg("plain", "c2", "m2", 1_700_000_001, "ok"),
    ])
    .await;
    // A short lease, as the scheduler would publish it: the worker's heartbeat renews every third.
    let lease = Duration::from_millis(900);
    h.inbound().publish_lease(lease).await.unwrap();
    h.db.hide_table("messages").await;
    let shutdown = Shutdown::new();
    let mut worker = h.worker(Harness::config(10), shutdown.clone()).await;
    let read_at = std::time::Instant::now();
    let holding = tokio::spawn(async move { worker.run_once().await.map(|r| (r, worker)) });
    // Wait (bounded) until the entries were read and held through three leases of the outage.
    let mut held = false;
    for _ in 0..500 {
        held = h.pending_and_dead().await.0 == 2 && read_at.elapsed() > lease * 3;
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the worker holds the batch through the outage");
    // The scheduler's stalled recovery finds nothing to reclaim: the holder is alive.
    let r = h
        .inbound()
        .reclaim_stalled(
            fleet_queue::GROUP_DEFAULT,
            lease,
            100,
            fleet_queue::now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.requeued + r.dead_lettered, 0, "{r:?}");
    // Postgres comes back: the same worker writes and acknowledges, no attempt counted.
    h.db.restore_table("messages").await;
    let (report, _worker) = holding.await.unwrap().unwrap();
    assert_eq!((report.acked, report.dead_lettered), (2, 0));
    assert_eq!(h.totals().await, (2, 2, 2));
    assert_eq!(h.pending_and_dead().await, (0, 0));
    h.cleanup().await;
}
