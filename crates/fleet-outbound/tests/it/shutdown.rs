//! A graceful shutdown of the apalis worker in the middle of a backlog: the sends in flight
//! finish, are recorded and acknowledged, what was read but never started goes back to the queue,
//! and a new worker finishes the backlog with every reply delivered exactly once.

use fleet_core::Provider;
use fleet_mock_provider::{Latency, MockConfig};
use fleet_outbound::OutboundConfig;
use fleet_queue::now_ms;

use crate::support::{TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_mid_backlog_leaves_nothing_pending_and_sends_nothing_twice() {
    let mut env = TestEnv::new(MockConfig {
        latency: Latency::Fixed { ms: 20 },
        ..MockConfig::default()
    })
    .await;
    let count = 2_000u64;
    let mut jobs = Vec::with_capacity(count as usize);
    for i in 0..count {
        jobs.push(
            env.enqueue("acme", Provider::Meta, &format!("1556{i:07}"), "hi")
                .await,
        );
    }
    let config = OutboundConfig {
        concurrency: 32,
        batch_size: 50,
        record_linger_ms: 20,
        ..env.config()
    };
    env.start(config.clone());
    eventually("the worker is into the backlog", || async {
        env.mock.provider.stats().deliveries >= 100
    })
    .await;
    env.stop_workers().await;

    // Nothing is left pending: every handler in flight settled its entry, and the deliveries read
    // but never started were given back (to the delayed set, due now).
    let stats = env.queue.stats().await.unwrap();
    assert!(stats.priorities.iter().all(|p| p.pending == 0), "{stats:?}");
    assert_eq!(stats.dead, 0);
    let at_stop = env.mock.provider.stats();
    assert_eq!(at_stop.duplicates, 0);
    assert!(
        at_stop.deliveries < count,
        "stopped mid-backlog ({} delivered)",
        at_stop.deliveries
    );
    // Every reply the provider accepted was recorded before the worker returned.
    let mut recorded = 0u64;
    for job in &jobs {
        if env
            .db
            .store()
            .outbound_sent(job.as_str())
            .await
            .unwrap()
            .is_some()
        {
            recorded += 1;
        }
    }
    assert_eq!(recorded, at_stop.deliveries);

    // A new worker finishes; the scheduler's promotion of the given-back entries is done here.
    env.start(config);
    eventually("every reply delivered", || async {
        let _ = env.queue.promote_due(now_ms() + 60_000, 10_000).await;
        env.mock.provider.stats().deliveries >= count
    })
    .await;
    eventually("the queue is drained", || async {
        let s = env.queue.stats().await.unwrap();
        s.priorities
            .iter()
            .all(|p| p.pending == 0 && p.waiting == 0)
            && s.delayed == 0
    })
    .await;
    let s = env.mock.provider.stats();
    assert_eq!((s.deliveries, s.duplicates), (count, 0));
    assert_eq!(env.queue.stats().await.unwrap().dead, 0);
    env.stop().await;
}
