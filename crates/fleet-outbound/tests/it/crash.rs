//! The double-send window, measured: a worker process "crashes" (its runtime is dropped at once,
//! sends in flight and unwritten records lost) in the middle of a backlog; stalled recovery hands
//! its entries out again and a new worker finishes. Every reply is delivered, and the duplicates
//! the provider saw are bounded by what the crashed worker had in flight or unrecorded.

use std::time::Duration;

use fleet_core::Provider;
use fleet_mock_provider::{Latency, MockConfig};
use fleet_outbound::OutboundConfig;
use fleet_queue::{Broker, GROUP_DEFAULT, now_ms};
use fleet_runtime::Shutdown;

use crate::support::{TestEnv, eventually, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_backlog_loses_nothing_and_duplicates_only_the_open_window() {
    let mut env = TestEnv::new(MockConfig {
        latency: Latency::Fixed { ms: 20 },
        ..MockConfig::default()
    })
    .await;
    let count = 1_500u64;
    for i in 0..count {
        env.enqueue("acme", Provider::Meta, &format!("1555{i:07}"), "hi")
            .await;
    }
    let config = OutboundConfig {
        concurrency: 64,
        batch_size: 50,
        record_batch: 100,
        record_linger_ms: 20,
        // The crashed worker's fenced sends are in doubt for this long, then sent again: the
        // kill window this test measures (a short wait, so the test need not sit out the default).
        in_doubt_wait_ms: 1_000,
        ..env.config()
    };

    // The crashing process: its own runtime, Redis connections and Postgres pool.
    let crash_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    {
        let (prefix, db_url, tenants, config) = (
            env.prefix.clone(),
            env.db.url(),
            env.tenants.clone(),
            config.clone(),
        );
        crash_rt.spawn(async move {
            let broker = Broker::connect(&redis_url(), &prefix).await.unwrap();
            let store =
                fleet_store::Store::connect(&db_url, &fleet_store::PoolOptions::default()).unwrap();
            let http = fleet_providers::build_client(&config.http).unwrap();
            let _ =
                fleet_outbound::run(config, broker, store, tenants, http, Shutdown::new()).await;
        });
    }
    eventually("the crashing worker is well into the backlog", || async {
        env.mock.provider.stats().deliveries >= 300
    })
    .await;
    crash_rt.shutdown_background();
    let at_crash = env.mock.provider.stats().deliveries;

    // Stalled recovery (the scheduler's job) once the crashed consumer's lease is over.
    let reclaimed = env
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 10_000, now_ms())
        .await
        .unwrap();
    env.start(config);
    // A read the crashed process had already sent to Redis may still land on its consumer after
    // that first recovery; keep recovering (with a lease, as the scheduler does, so the live
    // worker's own entries are left alone) until everything is delivered.
    eventually("every reply delivered once at least", || async {
        let _ = env
            .queue
            .reclaim_stalled(GROUP_DEFAULT, Duration::from_secs(3), 10_000, now_ms())
            .await;
        // Jobs deferred while in doubt wait in the delayed set (the scheduler's promotion).
        let _ = env.queue.promote_due(now_ms(), 10_000).await;
        let s = env.mock.provider.stats();
        s.deliveries - s.duplicates >= count
    })
    .await;
    eventually("the queue is drained", || async {
        let _ = env.queue.promote_due(now_ms(), 10_000).await;
        let s = env.queue.stats().await.unwrap();
        s.priorities
            .iter()
            .all(|p| p.pending == 0 && p.waiting == 0)
            && s.delayed == 0
    })
    .await;
    let s = env.mock.provider.stats();
    eprintln!(
        "crash after {at_crash} deliveries: {} entries reclaimed, {} duplicates of {count} replies",
        reclaimed.requeued, s.duplicates
    );
    assert_eq!(s.deliveries - s.duplicates, count, "every reply delivered");
    assert_eq!(env.queue.stats().await.unwrap().dead, 0);
    // Only sends answered but not yet recorded (at most the in-flight sends plus one record batch
    // and the channel) can be repeated.
    assert!(s.duplicates <= 64 + 2 * 100, "{} duplicates", s.duplicates);
    env.stop().await;
}
