//! A batch enqueue that fails midway leaves nothing of the batch behind, and can be retried.

use std::time::Duration;

use fleet_core::{EnqueueOptions, Priority};
use fred::{prelude::*, types::Value};

use crate::support::{TestQueue, raw_client};

#[tokio::test]
async fn a_batch_that_fails_midway_leaves_nothing_and_can_be_retried() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let keys = t.queue.keys().clone();
    // The low stream is a string: the batch's last job cannot be appended, after a high job, a
    // delayed job and a claim of two idempotency keys that all come before it.
    let low = keys.stream(Priority::Low).to_owned();
    let _: () = raw
        .set(&low, "not a stream", None, None, false)
        .await
        .unwrap();
    let batch = vec![
        (
            "first".to_owned(),
            EnqueueOptions::with_priority(Priority::High).idempotent("k1"),
        ),
        (
            "later".to_owned(),
            EnqueueOptions {
                delay: Some(Duration::from_secs(60)),
                ..EnqueueOptions::default().idempotent("k2")
            },
        ),
        (
            "last".to_owned(),
            EnqueueOptions::with_priority(Priority::Low),
        ),
    ];
    let err = t.queue.enqueue_batch(&batch).await.unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let high: u64 = raw.xlen(keys.stream(Priority::High)).await.unwrap();
    let delayed: u64 = raw.zcard(keys.delayed()).await.unwrap();
    let claimed: u64 = raw
        .exists(vec![keys.idempotency("k1"), keys.idempotency("k2")])
        .await
        .unwrap();
    assert_eq!(
        (high, delayed, claimed),
        (0, 0, 0),
        "nothing of the failed batch remains: entries, delayed members, idempotency keys"
    );
    // Once the stream is usable, the same batch goes in whole, as a first enqueue.
    let _: i64 = raw.del(&low).await.unwrap();
    let out = t.queue.enqueue_batch(&batch).await.unwrap();
    assert!(out.iter().all(|e| !e.duplicate), "{out:?}");
    let stats = t.queue.stats().await.unwrap();
    let lengths = stats.lengths();
    assert_eq!((lengths["high"], lengths["low"], stats.delayed), (1, 1, 1));
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test]
async fn a_batch_with_an_unusable_idempotency_key_leaves_nothing() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let keys = t.queue.keys().clone();
    let broken = keys.idempotency("broken");
    let _: i64 = raw.hset(&broken, ("a", "hash")).await.unwrap();
    let batch = vec![
        ("a".to_owned(), EnqueueOptions::default().idempotent("k1")),
        ("b".to_owned(), EnqueueOptions::default()),
        (
            "c".to_owned(),
            EnqueueOptions::default().idempotent("broken"),
        ),
    ];
    assert!(t.queue.enqueue_batch(&batch).await.is_err());
    let normal: u64 = raw.xlen(keys.stream(Priority::Normal)).await.unwrap();
    let claimed: u64 = raw.exists(keys.idempotency("k1")).await.unwrap();
    assert_eq!(
        (normal, claimed),
        (0, 0),
        "nothing of the failed batch remains"
    );
    let _: () = raw.quit().await.unwrap();
}

/// The script's last line of defence, which the library's own calls never reach: a job whose
/// arguments do not parse, after jobs that were appended, delayed and claimed keys, undoes them.
#[tokio::test]
async fn a_batch_script_failing_after_its_first_writes_undoes_them() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let keys = t.queue.keys().clone();
    let mut script_keys: Vec<String> = keys.streams().to_vec();
    script_keys.push(keys.delayed());
    script_keys.push(keys.idempotency("k1"));
    script_keys.push(keys.idempotency("k2"));
    let job = |idx: &str, delay: &str, key_at: &str, id: &str| -> Vec<String> {
        let header = format!("1|{id}|0|1|1000:60000|1700000000000");
        [idx, delay, key_at, "60000", id, &header, "payload"]
            .map(str::to_owned)
            .to_vec()
    };
    let mut args = vec![Priority::CODES.to_owned(), "3".to_owned(), "".to_owned()];
    args.extend(job("1", "0", "5", "a"));
    args.extend(job("2", "5000", "6", "b"));
    args.extend(job("9", "0", "0", "c"));
    let r: Result<Value, _> = raw
        .eval(
            include_str!("../../lua/enqueue_batch.lua"),
            script_keys,
            args,
        )
        .await;
    let err = r.unwrap_err();
    assert!(err.to_string().contains("undone"), "{err}");
    let high: u64 = raw.xlen(keys.stream(Priority::High)).await.unwrap();
    let delayed: u64 = raw.zcard(keys.delayed()).await.unwrap();
    let claimed: u64 = raw
        .exists(vec![keys.idempotency("k1"), keys.idempotency("k2")])
        .await
        .unwrap();
    assert_eq!((high, delayed, claimed), (0, 0, 0));
    let _: () = raw.quit().await.unwrap();
}
