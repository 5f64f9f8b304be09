//! Due times from one clock: delayed enqueues, promotion and stalled recovery read the Redis
//! server's clock unless a test injects a time.

use std::time::Duration;

use fleet_core::EnqueueOptions;
use fleet_queue::{Clock, GROUP_DEFAULT};
use fred::{cmd, prelude::*};

use crate::support::{TestQueue, raw_client};

/// The Redis server's clock, in Unix ms.
async fn redis_time_ms(raw: &Client) -> u64 {
    let (s, us): (String, String) = raw
        .custom(cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    s.parse::<u64>().unwrap() * 1_000 + us.parse::<u64>().unwrap() / 1_000
}

fn delayed(delay: Duration) -> EnqueueOptions {
    EnqueueOptions {
        delay: Some(delay),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_delayed_job_is_due_at_the_injected_time_plus_its_delay() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let q = t.queue.with_clock(Clock::At(1_000_000));
    q.enqueue(&"one", &delayed(Duration::from_secs(5)))
        .await
        .unwrap();
    q.enqueue_batch(&[
        ("two", delayed(Duration::from_secs(7))),
        ("three", delayed(Duration::from_millis(1))),
    ])
    .await
    .unwrap();
    let scores: Vec<(fred::types::Value, f64)> = raw
        .zrange(t.queue.keys().delayed(), 0, -1, None, false, None, true)
        .await
        .unwrap();
    let scores: Vec<u64> = scores.into_iter().map(|(_, s)| s as u64).collect();
    assert_eq!(scores, [1_000_001, 1_005_000, 1_007_000]);
    assert_eq!(t.queue.promote_due(1_004_999, 10).await.unwrap(), 1);
    assert_eq!(t.queue.promote_due(1_005_000, 10).await.unwrap(), 1);
    assert_eq!(
        t.queue.promote_due(Clock::At(1_007_000), 10).await.unwrap(),
        1
    );
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test]
async fn by_default_a_delayed_job_is_due_at_the_redis_time_plus_its_delay() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let delay = Duration::from_secs(60);
    let before = redis_time_ms(&raw).await;
    t.queue.enqueue(&"one", &delayed(delay)).await.unwrap();
    t.queue
        .enqueue_batch(&[("two", delayed(delay))])
        .await
        .unwrap();
    let after = redis_time_ms(&raw).await;
    let scores: Vec<(fred::types::Value, f64)> = raw
        .zrange(t.queue.keys().delayed(), 0, -1, None, false, None, true)
        .await
        .unwrap();
    for (_, score) in scores {
        let due = score as u64;
        assert!(
            (before + 60_000..=after + 60_000).contains(&due),
            "due {due} outside [{before}, {after}] + 60 s"
        );
    }
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test]
async fn promotion_by_the_redis_clock_moves_what_is_due_now_and_nothing_later() {
    let t = TestQueue::new().await;
    // Due long ago by an injected clock; due in an hour by the server's.
    t.queue
        .with_clock(Clock::At(1_000))
        .enqueue(&"due", &delayed(Duration::from_millis(1)))
        .await
        .unwrap();
    t.queue
        .enqueue(&"later", &delayed(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(t.queue.promote_due(Clock::Redis, 10).await.unwrap(), 1);
    assert_eq!(t.queue.stats().await.unwrap().delayed, 1);
    let mut c = t.consumer(10).await;
    let got = c.next_batch().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].decode::<String>().unwrap(), "due");
}

#[tokio::test]
async fn a_stalled_entry_dead_lettered_by_the_redis_clock_is_stamped_with_it() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let opts = EnqueueOptions {
        max_attempts: 1,
        ..Default::default()
    };
    t.queue.enqueue(&"stuck", &opts).await.unwrap();
    let mut c = t.consumer(10).await;
    assert_eq!(c.next_batch().await.unwrap().len(), 1);
    let before = redis_time_ms(&raw).await;
    let r = t
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 10, Clock::Redis)
        .await
        .unwrap();
    let after = redis_time_ms(&raw).await;
    assert_eq!(r.dead_lettered, 1);
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert!(
        (before..=after).contains(&dead[0].died_at_ms),
        "died at {} outside [{before}, {after}]",
        dead[0].died_at_ms
    );
    // An injected clock stamps its own time.
    t.queue.dead_replay(&[dead[0].id.clone()]).await.unwrap();
    assert_eq!(c.next_batch().await.unwrap().len(), 1);
    t.queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 10, 42)
        .await
        .unwrap();
    let dead = t.queue.dead_list(1, None).await.unwrap();
    assert_eq!(dead[0].died_at_ms, 42);
    let _: () = raw.quit().await.unwrap();
}
