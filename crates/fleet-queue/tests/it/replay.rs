//! Replaying dead letters: an entry is replayed at most once, whatever id names it.

use fleet_core::wire;
use fred::{cmd, prelude::*, types::Value};

use crate::support::{TestQueue, raw_client};

/// Writes a dead entry by hand under an explicit id, so two entries can share a millisecond.
async fn dead_entry(raw: &Client, dead: &str, id: &str, job: &str) {
    let payload = wire::encode(&job).unwrap();
    let header = format!("1|{job}|1|1|1000:60000|1700000000000");
    let args: Vec<Value> = vec![
        dead.into(),
        id.into(),
        "reason".into(),
        "test".into(),
        "error".into(),
        "none".into(),
        "orig".into(),
        "1-0".into(),
        "prio".into(),
        "normal".into(),
        "died".into(),
        "1700000000000".into(),
        "h".into(),
        header.into(),
        "p".into(),
        Value::Bytes(payload.into()),
    ];
    let _: Value = raw.custom(cmd!("XADD"), args).await.unwrap();
}

#[tokio::test]
async fn a_dead_entry_is_replayed_at_most_once_whatever_id_names_it() {
    let t = TestQueue::new().await;
    let raw = raw_client().await;
    let dead = t.queue.keys().dead();
    // Two jobs that died in the same millisecond: `<ms>-0` and `<ms>-1`.
    dead_entry(&raw, &dead, "1700000000000-0", "job-a").await;
    dead_entry(&raw, &dead, "1700000000000-1", "job-b").await;
    assert_eq!(
        t.queue
            .dead_replay(&["1700000000000-0".to_owned()])
            .await
            .unwrap(),
        1
    );
    // Only `<ms>-1` is left in that millisecond: a partial id must not replay it while leaving
    // it dead (from where it could be replayed again).
    for _ in 0..2 {
        let r = t.queue.dead_replay(&["1700000000000".to_owned()]).await;
        assert!(
            matches!(r, Err(fleet_queue::Error::Invalid(_))),
            "a partial id is refused: {r:?}"
        );
    }
    assert!(t.queue.dead_get("1700000000000").await.is_err());
    assert_eq!(t.queue.dead_len().await.unwrap(), 1, "job-b is still dead");
    let full = vec!["1700000000000-1".to_owned()];
    assert_eq!(t.queue.dead_replay(&full).await.unwrap(), 1);
    assert_eq!(t.queue.dead_replay(&full).await.unwrap(), 0, "nothing left");
    assert_eq!(t.queue.dead_len().await.unwrap(), 0);
    let mut c = t.consumer(10).await;
    let jobs: Vec<String> = c
        .next_batch()
        .await
        .unwrap()
        .iter()
        .map(|d| d.job_id.to_string())
        .collect();
    assert_eq!(jobs, ["job-a", "job-b"], "each replayed exactly once");
    let _: () = raw.quit().await.unwrap();
}
