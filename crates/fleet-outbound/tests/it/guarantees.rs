//! No second send, fault by fault: a stop during a Postgres outage, and a job whose earlier
//! holder (frozen past its lease) may still be mid-send.

use std::time::Duration;

use fleet_core::Provider;
use fleet_mock_provider::{Latency, MockConfig};
use fleet_queue::{ConsumerOptions, Fence, GROUP_DEFAULT, now_ms};

use crate::support::{TestEnv, eventually};

async fn drained(env: &TestEnv) -> bool {
    let s = env.queue.stats().await.unwrap();
    s.priorities
        .iter()
        .all(|p| p.pending == 0 && p.waiting == 0)
        && s.delayed == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_postgres_outage_never_sends_twice() {
    let mut env = TestEnv::new(MockConfig {
        latency: Latency::Fixed { ms: 300 },
        ..MockConfig::default()
    })
    .await;
    let job = env
        .enqueue("acme", Provider::Meta, "15550000100", "once")
        .await;
    env.start(env.config());
    eventually("the send reached the provider", || async {
        env.mock.provider.stats().requests >= 1
    })
    .await;
    // Postgres "goes away" for the record while the provider is answering, and the worker is
    // stopped: the record cannot be written before the process ends.
    env.db.hide_table("outbound_messages").await;
    env.stop_workers().await;
    assert_eq!(env.mock.provider.stats().deliveries, 1);
    // Nothing pending: the job went back to the queue carrying its outcome.
    let s = env.queue.stats().await.unwrap();
    assert!(s.priorities.iter().all(|p| p.pending == 0), "{s:?}");
    assert_eq!(s.delayed, 1, "{s:?}");

    env.db.restore_table("outbound_messages").await;
    env.start(env.config());
    eventually("the outcome is recorded", || async {
        let _ = env.queue.promote_due(now_ms() + 60_000, 10).await;
        env.db
            .store()
            .outbound_sent(job.as_str())
            .await
            .unwrap()
            .is_some()
    })
    .await;
    eventually("the queue is drained", || drained(&env)).await;
    let stats = env.mock.provider.stats();
    assert_eq!(
        (stats.requests, stats.duplicates),
        (1, 0),
        "the redelivery recorded the earlier send instead of sending again"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_earlier_holder_may_be_mid_send_waits_for_its_record() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    let job = env
        .enqueue("acme", Provider::Meta, "15550000101", "once")
        .await;
    // An earlier holder passed the fence (it is about to send) and then froze past its lease.
    let mut frozen = env
        .queue
        .consumer(ConsumerOptions::new("frozen"))
        .await
        .unwrap();
    let held = frozen.next_batch().await.unwrap();
    assert_eq!(held.len(), 1);
    let wait = Duration::from_secs(300);
    assert_eq!(
        frozen.settler().fence(&held[0], wait).await.unwrap(),
        Fence::Go
    );
    let r = env
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 10, now_ms())
        .await
        .unwrap();
    assert_eq!(r.requeued, 1);

    // The live worker gets the job and must not send while the earlier attempt is in doubt.
    env.start(env.config());
    eventually("the live worker deferred the job", || async {
        env.queue.stats().await.unwrap().delayed == 1
    })
    .await;
    assert_eq!(env.mock.provider.stats().requests, 0);
    // The frozen holder wakes: its fence says the entry is no longer its own.
    assert_eq!(
        frozen.settler().fence(&held[0], wait).await.unwrap(),
        Fence::Lost
    );

    // The earlier attempt's outcome is recorded (here: it never sent), which clears the mark.
    env.queue.clear_fences(&[job.as_str()]).await.unwrap();
    eventually("the job is sent once", || async {
        let _ = env.queue.promote_due(now_ms() + 60_000, 10).await;
        env.mock.provider.stats().deliveries == 1
    })
    .await;
    eventually("the queue is drained", || drained(&env)).await;
    assert_eq!(env.mock.provider.stats().requests, 1);
    drop(frozen);
    env.stop().await;
}
