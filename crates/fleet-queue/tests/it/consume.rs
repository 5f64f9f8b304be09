//! Consuming: priorities, batches, ack, retry, dead letters, poison, pause, and many workers.

use std::{collections::HashSet, time::Duration};

use fleet_core::{Backoff, EnqueueOptions, Priority, RetryPolicy};
use fleet_queue::{ConsumerOptions, PriorityMode, RetryAfter, RetryOutcome};
use fred::prelude::*;

use crate::support::{TestQueue, redis_url};

async fn fill(t: &TestQueue, priority: Priority, n: usize) {
    let batch: Vec<(usize, EnqueueOptions)> = (0..n)
        .map(|i| (i, EnqueueOptions::with_priority(priority)))
        .collect();
    t.queue.enqueue_batch(&batch).await.unwrap();
}

fn count(batch: &[fleet_queue::Delivery], p: Priority) -> usize {
    batch.iter().filter(|d| d.priority == p).count()
}

#[tokio::test]
async fn strict_mode_serves_high_before_anything_else() {
    let t = TestQueue::new().await;
    fill(&t, Priority::Low, 20).await;
    fill(&t, Priority::High, 20).await;
    fill(&t, Priority::Normal, 20).await;
    let mut c = t.consumer(10).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let b = c.next_batch().await.unwrap();
        assert_eq!(b.len(), 10);
        order.push([
            count(&b, Priority::High),
            count(&b, Priority::Normal),
            count(&b, Priority::Low),
        ]);
        c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
    }
    assert_eq!(
        order,
        [
            [10, 0, 0],
            [10, 0, 0],
            [0, 10, 0],
            [0, 10, 0],
            [0, 0, 10],
            [0, 0, 10]
        ]
    );
}

#[tokio::test]
async fn weighted_mode_gives_low_its_share_under_saturation_of_high() {
    let t = TestQueue::new().await;
    fill(&t, Priority::High, 200).await;
    fill(&t, Priority::Low, 50).await;
    let mut c = t
        .consumer_with(
            10,
            PriorityMode::Weighted {
                high: 6,
                normal: 3,
                low: 1,
            },
        )
        .await;
    let (mut high, mut low) = (0, 0);
    for _ in 0..10 {
        let b = c.next_batch().await.unwrap();
        assert_eq!(b.len(), 10);
        // Every batch is ordered highest first, and low gets its slot in every batch.
        assert!(b.windows(2).all(|w| w[0].priority <= w[1].priority));
        assert!(count(&b, Priority::Low) >= 1);
        high += count(&b, Priority::High);
        low += count(&b, Priority::Low);
        c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
    }
    assert_eq!(
        (high, low),
        (90, 10),
        "normal's unused share goes to high; low keeps its tenth"
    );
}

#[tokio::test]
async fn batches_are_capped_and_a_partial_batch_is_returned_without_waiting_for_more() {
    let t = TestQueue::new().await;
    fill(&t, Priority::Normal, 25).await;
    let mut c = t.consumer(10).await;
    let sizes: Vec<usize> = [(); 4].iter().map(|_| 0).collect();
    let mut got = Vec::new();
    for _ in sizes {
        got.push(c.next_batch().await.unwrap().len());
    }
    assert_eq!(got, [10, 10, 5, 0]);
}

#[tokio::test]
async fn linger_collects_entries_that_arrive_after_the_first() {
    let t = TestQueue::new().await;
    let mut o = fleet_queue::ConsumerOptions::new("linger");
    o.batch_size = 100;
    o.linger = Duration::from_secs(30);
    o.block = Duration::from_secs(30);
    let mut c = t.queue.consumer(o).await.unwrap();
    // The producer writes one entry, then 99 more: the batch returns as soon as it is full,
    // long before the linger time, so this test does not depend on timing.
    let q = t.queue.clone();
    let producer = tokio::spawn(async move {
        q.enqueue(&0u32, &EnqueueOptions::default()).await.unwrap();
        let rest: Vec<(u32, EnqueueOptions)> =
            (1..100).map(|i| (i, EnqueueOptions::default())).collect();
        q.enqueue_batch(&rest).await.unwrap();
    });
    let mut seen = 0;
    while seen < 100 {
        seen += c.next_batch().await.unwrap().len();
    }
    producer.await.unwrap();
    assert_eq!(seen, 100);
}

#[tokio::test]
async fn acked_entries_are_not_delivered_again_and_leave_nothing_pending() {
    let t = TestQueue::new().await;
    fill(&t, Priority::Normal, 5).await;
    let mut c = t.consumer(10).await;
    let b = c.next_batch().await.unwrap();
    assert_eq!(t.queue.stats().await.unwrap().pending(), 5);
    assert_eq!(c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap(), 5);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.pending(), t.queue.backlog().await.unwrap()), (0, 0));
    assert!(c.next_batch().await.unwrap().is_empty());
}

#[tokio::test]
async fn retry_counts_attempts_and_waits_in_the_delayed_set() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 3,
        backoff: Backoff {
            initial_ms: 1_000,
            max_ms: 1_000,
        },
        ..Default::default()
    };
    t.queue.enqueue(&"flaky", &opts).await.unwrap();
    let mut c = t.consumer(10).await;
    for attempt in 0..2u32 {
        let b = c.next_batch().await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].attempts, attempt);
        match c.retry(&b[0], RetryAfter::Backoff, "boom").await.unwrap() {
            RetryOutcome::Scheduled { delay } => assert!(delay <= Duration::from_secs(1)),
            other => panic!("expected a scheduled retry, got {other:?}"),
        }
        let stats = t.queue.stats().await.unwrap();
        assert_eq!(
            (stats.delayed, stats.pending()),
            (1, 0),
            "a waiting retry holds no worker"
        );
        assert!(
            c.next_batch().await.unwrap().is_empty(),
            "not before it is due"
        );
        assert_eq!(
            t.queue
                .promote_due(t.queue.now_ms() + 2_000, 10)
                .await
                .unwrap(),
            1
        );
    }
    let b = c.next_batch().await.unwrap();
    assert_eq!(b[0].attempts, 2);
    assert_eq!(
        c.retry(&b[0], RetryAfter::Backoff, "boom again")
            .await
            .unwrap(),
        RetryOutcome::DeadLettered
    );
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].reason.as_str(),
            dead[0].error.as_str(),
            dead[0].attempts
        ),
        ("max_attempts", "boom again", 3)
    );
    assert_eq!(dead[0].original_id, b[0].stream_id);
    assert_eq!(dead[0].job_id.as_deref(), Some(b[0].job_id.as_str()));
}

/// The consuming worker's own retry policy replaces the one the producer wrote into the job: a
/// producer's 8 attempts with 5 min of backoff become the worker's 2 attempts with 50 ms.
#[tokio::test]
async fn a_consumer_retry_policy_replaces_the_producers() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue(&"flaky", &EnqueueOptions::default())
        .await
        .unwrap();
    let worker_policy = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            initial_ms: 50,
            max_ms: 50,
        },
    };
    let mut c = t
        .queue
        .consumer(ConsumerOptions {
            retry: Some(worker_policy),
            block: Duration::from_millis(50),
            ..ConsumerOptions::new("owner")
        })
        .await
        .unwrap();
    let first = c.next_batch().await.unwrap().remove(0);
    assert_eq!(
        (first.max_attempts, first.backoff),
        (2, worker_policy.backoff)
    );
    match c.retry(&first, RetryAfter::Backoff, "boom").await.unwrap() {
        RetryOutcome::Scheduled { delay } => assert!(delay <= Duration::from_millis(50)),
        other => panic!("expected a scheduled retry, got {other:?}"),
    }
    t.queue
        .promote_due(t.queue.now_ms() + 1_000, 10)
        .await
        .unwrap();
    drop(c);
    // The retry wrote the worker's policy into the job (what stalled recovery counts against):
    // a consumer without a policy of its own reads it from there.
    let mut plain = t.consumer(10).await;
    let second = plain.next_batch().await.unwrap().remove(0);
    assert_eq!((second.attempts, second.max_attempts), (1, 2));
    assert_eq!(
        plain
            .retry(&second, RetryAfter::Backoff, "boom again")
            .await
            .unwrap(),
        RetryOutcome::DeadLettered,
        "the worker's 2 attempts, not the producer's {}",
        EnqueueOptions::default().max_attempts
    );
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(dead[0].attempts, 2);
}

#[tokio::test]
async fn explicit_retry_delay_and_defer_do_not_or_do_count_attempts() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue(&"x", &EnqueueOptions::default())
        .await
        .unwrap();
    let mut c = t.consumer(10).await;
    let b = c.next_batch().await.unwrap();
    assert!(c.defer(&b[0], Duration::from_secs(5)).await.unwrap());
    t.queue
        .promote_due(t.queue.now_ms() + 6_000, 10)
        .await
        .unwrap();
    let b = c.next_batch().await.unwrap();
    assert_eq!(b[0].attempts, 0, "a deferral is not an attempt");
    let out = c
        .retry(&b[0], RetryAfter::Exactly(Duration::from_secs(42)), "429")
        .await
        .unwrap();
    assert_eq!(
        out,
        RetryOutcome::Scheduled {
            delay: Duration::from_secs(42)
        }
    );
    assert_eq!(
        t.queue
            .promote_due(t.queue.now_ms() + 41_000, 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        t.queue
            .promote_due(t.queue.now_ms() + 43_000, 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(c.next_batch().await.unwrap()[0].attempts, 1);
}

#[tokio::test]
async fn poison_entries_go_to_the_dead_letter_stream_and_never_reach_the_worker() {
    let t = TestQueue::new().await;
    let raw = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    let stream = t.queue.keys().stream(Priority::Normal).to_owned();
    let _: String = raw
        .xadd(&stream, false, None, "*", vec![("garbage", "1")])
        .await
        .unwrap();
    t.queue
        .enqueue(&"good", &EnqueueOptions::default())
        .await
        .unwrap();
    let mut c = t.consumer(10).await;
    let b = c.next_batch().await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].decode::<String>().unwrap(), "good");
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "poison");
    assert!(dead[0].error.contains("missing field"), "{}", dead[0].error);
    assert_eq!(
        t.queue.stats().await.unwrap().pending(),
        1,
        "only the good entry is pending"
    );
    // A payload that is a valid envelope but the wrong type is the worker's to dead-letter.
    assert!(b[0].decode::<u64>().is_err());
    assert!(c.dead_letter(&b[0], "decode", "wrong type").await.unwrap());
    assert_eq!(t.queue.stats().await.unwrap().dead, 2);
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn paused_queue_delivers_nothing_until_resumed() {
    let t = TestQueue::new().await;
    fill(&t, Priority::Normal, 3).await;
    t.queue.pause().await.unwrap();
    assert!(t.queue.is_paused().await.unwrap());
    let mut c = t.consumer(10).await;
    assert!(c.next_batch().await.unwrap().is_empty());
    assert!(t.queue.stats().await.unwrap().paused);
    fill(&t, Priority::High, 2).await;
    assert_eq!(
        t.queue.backlog().await.unwrap(),
        5,
        "producers keep enqueueing while paused"
    );
    t.queue.resume().await.unwrap();
    assert_eq!(c.next_batch().await.unwrap().len(), 5);
}

#[tokio::test]
async fn many_producers_and_consumers_handle_every_message_exactly_once() {
    let t = TestQueue::new().await;
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 500;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let q = t.queue.clone();
        producers.push(tokio::spawn(async move {
            for chunk in (0..PER_PRODUCER).collect::<Vec<_>>().chunks(50) {
                let batch: Vec<(u64, EnqueueOptions)> = chunk
                    .iter()
                    .map(|i| {
                        (
                            (p * PER_PRODUCER + i) as u64,
                            EnqueueOptions::with_priority(Priority::ALL[i % 3]),
                        )
                    })
                    .collect();
                q.enqueue_batch(&batch).await.unwrap();
            }
        }));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u64>>(64);
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let mut c = t.consumer(64).await;
        let tx = tx.clone();
        consumers.push(tokio::spawn(async move {
            loop {
                let b = c.next_batch().await.unwrap();
                if b.is_empty() {
                    continue;
                }
                let ids: Vec<u64> = b.iter().map(|d| d.decode().unwrap()).collect();
                c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
                if tx.send(ids).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    for p in producers {
        p.await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while seen.len() < PRODUCERS * PER_PRODUCER {
        let ids = rx.recv().await.unwrap();
        total += ids.len();
        seen.extend(ids);
    }
    for c in consumers {
        c.abort();
    }
    assert_eq!(
        total,
        PRODUCERS * PER_PRODUCER,
        "no message delivered twice"
    );
    assert_eq!(seen.len(), PRODUCERS * PER_PRODUCER, "no message lost");
    assert_eq!(t.queue.stats().await.unwrap().pending(), 0);
}
