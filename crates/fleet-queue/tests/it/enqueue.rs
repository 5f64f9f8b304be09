//! Enqueueing: single, batch, idempotency, delays, and an unreachable Redis.

use std::time::Duration;

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{Broker, Error};

use crate::support::TestQueue;

#[tokio::test]
async fn single_and_batch_enqueue_land_on_their_priority_streams() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue(&"a", &EnqueueOptions::with_priority(Priority::High))
        .await
        .unwrap();
    let batch: Vec<(String, EnqueueOptions)> = (0..10)
        .map(|i| {
            (
                format!("m{i}"),
                EnqueueOptions::with_priority(if i % 2 == 0 {
                    Priority::Low
                } else {
                    Priority::Normal
                }),
            )
        })
        .collect();
    let out = t.queue.enqueue_batch(&batch).await.unwrap();
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|e| !e.duplicate));
    let stats = t.queue.stats().await.unwrap();
    let lengths = stats.lengths();
    assert_eq!(
        (lengths["high"], lengths["normal"], lengths["low"]),
        (1, 5, 5)
    );
    assert_eq!(t.queue.backlog().await.unwrap(), 11);
}

#[tokio::test]
async fn idempotency_key_appends_once_and_returns_the_first_id() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions::default().idempotent("wamid.1");
    let first = t.queue.enqueue(&"x", &opts).await.unwrap();
    let second = t.queue.enqueue(&"x", &opts).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.job_id, second.job_id);
    // In a batch too, including a duplicate inside the same batch.
    let batch = vec![
        ("x".to_owned(), opts.clone()),
        (
            "y".to_owned(),
            EnqueueOptions::default().idempotent("wamid.2"),
        ),
        (
            "y".to_owned(),
            EnqueueOptions::default().idempotent("wamid.2"),
        ),
    ];
    let out = t.queue.enqueue_batch(&batch).await.unwrap();
    assert_eq!(
        out.iter().map(|e| e.duplicate).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(out[1].job_id, out[2].job_id);
    assert_eq!(t.queue.backlog().await.unwrap(), 2);
}

#[tokio::test]
async fn a_failed_append_releases_its_idempotency_key() {
    use fred::prelude::*;
    let t = TestQueue::new().await;
    let raw = Builder::from_config(Config::from_url(&crate::support::redis_url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    // A key of the wrong type where the stream should be makes XADD fail inside the script.
    let stream = t.queue.keys().stream(Priority::Normal).to_owned();
    let _: () = raw
        .set(&stream, "not a stream", None, None, false)
        .await
        .unwrap();
    let idem = t.queue.keys().idempotency("wamid.fail");
    let opts = EnqueueOptions::default().idempotent("wamid.fail");
    assert!(t.queue.enqueue(&"x", &opts).await.is_err());
    assert!(
        t.queue
            .enqueue_batch(&[("x".to_owned(), opts.clone())])
            .await
            .is_err()
    );
    let claimed: i64 = raw.exists(&idem).await.unwrap();
    assert_eq!(
        claimed, 0,
        "the key of a job that was not appended is free again"
    );
    // Once the stream is usable the same job goes in, as a first enqueue.
    let _: i64 = raw.del(&stream).await.unwrap();
    let again = t.queue.enqueue(&"x", &opts).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(t.queue.backlog().await.unwrap(), 1);
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test]
async fn delayed_jobs_wait_in_the_delayed_set_until_promoted() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        delay: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    t.queue.enqueue(&"later", &opts).await.unwrap();
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.delayed, t.queue.backlog().await.unwrap()), (1, 0));
    let now = t.queue.now_ms();
    assert_eq!(
        t.queue.promote_due(now, 100).await.unwrap(),
        0,
        "not due yet"
    );
    assert_eq!(t.queue.promote_due(now + 61_000, 100).await.unwrap(), 1);
    assert_eq!(t.queue.backlog().await.unwrap(), 1);
    let mut c = t.consumer(10).await;
    let got = c.next_batch().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].decode::<String>().unwrap(), "later");
}

#[tokio::test]
async fn unreachable_redis_fails_fast_with_a_typed_error() {
    let err = Broker::connect_with_timeout("redis://127.0.0.1:1", "x", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(matches!(err, Error::Unavailable(_)));
}

#[tokio::test]
async fn zero_max_attempts_is_rejected() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 0,
        ..Default::default()
    };
    assert!(matches!(
        t.queue.enqueue(&1u8, &opts).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn a_key_reused_with_another_fingerprint_is_a_conflict_not_a_duplicate() {
    let t = TestQueue::new().await;
    let with = |fp: &str| EnqueueOptions::default().idempotent_with_fingerprint("api:k1", fp);
    let first = t.queue.enqueue(&"x", &with("aaaa")).await.unwrap();
    let same = t.queue.enqueue(&"x", &with("aaaa")).await.unwrap();
    let other = t.queue.enqueue(&"y", &with("bbbb")).await.unwrap();
    assert!(!first.duplicate && !first.conflict);
    assert!(same.duplicate && !same.conflict, "the same request again");
    assert!(
        other.duplicate && other.conflict,
        "another request, same key"
    );
    assert_eq!(
        (same.job_id.clone(), other.job_id.clone()),
        (first.job_id.clone(), first.job_id.clone()),
        "the first job's id, without the fingerprint"
    );
    // Without a fingerprint the key still deduplicates, and never conflicts.
    let plain = t
        .queue
        .enqueue(&"z", &EnqueueOptions::default().idempotent("api:k1"))
        .await
        .unwrap();
    assert!(plain.duplicate && !plain.conflict);
    // A batch sees the key as a duplicate of the first job.
    let batch = t
        .queue
        .enqueue_batch(&[(
            "z".to_owned(),
            EnqueueOptions::default().idempotent("api:k1"),
        )])
        .await
        .unwrap();
    assert_eq!(batch[0].job_id, first.job_id);
    assert_eq!(t.queue.backlog().await.unwrap(), 1);
    // Fingerprints are for single enqueues, and never hold a space.
    assert!(
        t.queue
            .enqueue_batch(&[("z".to_owned(), with("cccc"))])
            .await
            .is_err()
    );
    assert!(t.queue.enqueue(&"z", &with("a b")).await.is_err());
}
