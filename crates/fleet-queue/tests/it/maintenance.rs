//! Scheduler primitives: stalled recovery, retention, concurrent promotion, dead-letter replay
//! and purge, idle consumers.

use std::time::Duration;

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{GROUP_DEFAULT, Retention};

use crate::support::TestQueue;

#[tokio::test]
async fn entries_of_a_consumer_that_never_acknowledged_are_reclaimed_for_another() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 5,
        ..Default::default()
    };
    t.queue
        .enqueue_batch(&[(1u8, opts.clone()), (2u8, opts)])
        .await
        .unwrap();
    let mut crashed = t.consumer(10).await;
    let held = crashed.next_batch().await.unwrap();
    assert_eq!(held.len(), 2);
    // A lease of zero: every pending entry counts as stalled, so no waiting is needed.
    let r = t
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 100, t.queue.now_ms())
        .await
        .unwrap();
    assert_eq!((r.requeued, r.dead_lettered), (2, 0));
    let mut live = t.consumer(10).await;
    let got = live.next_batch().await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().all(|d| d.attempts == 1),
        "the stall counts as an attempt"
    );
    assert_eq!(
        got.iter().map(|d| &d.job_id).collect::<Vec<_>>(),
        held.iter().map(|d| &d.job_id).collect::<Vec<_>>()
    );
    // The crashed consumer's late acknowledgement changes nothing.
    assert_eq!(
        crashed.ack(&held.iter().collect::<Vec<_>>()).await.unwrap(),
        0
    );
    assert_eq!(live.ack(&got.iter().collect::<Vec<_>>()).await.unwrap(), 2);
}

#[tokio::test]
async fn an_entry_that_stalls_again_and_again_ends_in_the_dead_letter_stream() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 3,
        ..Default::default()
    };
    t.queue.enqueue(&"crashy", &opts).await.unwrap();
    let mut c = t.consumer(10).await;
    for round in 0..3 {
        assert_eq!(c.next_batch().await.unwrap().len(), 1, "round {round}");
        t.queue
            .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 100, t.queue.now_ms())
            .await
            .unwrap();
    }
    assert!(c.next_batch().await.unwrap().is_empty());
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("stalled", 3));
}

#[tokio::test]
async fn retention_never_removes_pending_or_undelivered_entries() {
    let t = TestQueue::new().await;
    let batch: Vec<(u32, EnqueueOptions)> =
        (0..30).map(|i| (i, EnqueueOptions::default())).collect();
    t.queue.enqueue_batch(&batch).await.unwrap();
    let mut c = t.consumer(10).await;
    let first = c.next_batch().await.unwrap(); // 0..10: will stay pending
    let second = c.next_batch().await.unwrap(); // 10..20: acknowledged
    c.ack(&second.iter().collect::<Vec<_>>()).await.unwrap();
    // Keep nothing acknowledged, whatever its age: only entries 10..20 may go, and the pending
    // 0..10 in front of them block a trim by id, so nothing goes yet.
    let keep_nothing = Retention {
        max_age: Duration::ZERO,
        max_count: 0,
    };
    let now = t.queue.now_ms() + 1_000;
    assert_eq!(t.queue.trim(keep_nothing, 1_000, now).await.unwrap(), 0);
    c.ack(&first.iter().collect::<Vec<_>>()).await.unwrap();
    assert_eq!(t.queue.trim(keep_nothing, 1_000, now).await.unwrap(), 20);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!(
        (stats.priorities[1].length, t.queue.backlog().await.unwrap()),
        (10, 10),
        "undelivered entries stay"
    );
    let rest = c.next_batch().await.unwrap();
    assert_eq!(rest.len(), 10);
}

#[tokio::test]
async fn retention_keeps_the_configured_count_and_recent_entries() {
    let t = TestQueue::new().await;
    let batch: Vec<(u32, EnqueueOptions)> =
        (0..20).map(|i| (i, EnqueueOptions::default())).collect();
    t.queue.enqueue_batch(&batch).await.unwrap();
    let mut c = t.consumer(20).await;
    let b = c.next_batch().await.unwrap();
    c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
    let now = t.queue.now_ms();
    let recent = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 5,
    };
    assert_eq!(
        t.queue.trim(recent, 1_000, now).await.unwrap(),
        15,
        "count bound applies"
    );
    let young = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 1_000,
    };
    assert_eq!(
        t.queue.trim(young, 1_000, now).await.unwrap(),
        0,
        "young entries under the count stay"
    );
    // Batches bound each call's work.
    let old = Retention {
        max_age: Duration::ZERO,
        max_count: 0,
    };
    assert_eq!(t.queue.trim(old, 2, now + 1).await.unwrap(), 2);
}

#[tokio::test]
async fn two_promoters_at_once_move_each_due_entry_exactly_once() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        delay: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let batch: Vec<(u32, EnqueueOptions)> = (0..500).map(|i| (i, opts.clone())).collect();
    t.queue.enqueue_batch(&batch).await.unwrap();
    let later = t.queue.now_ms() + 5_000;
    let (a, b) = (t.queue.clone(), t.queue.clone());
    let ha = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let m = a.promote_due(later, 7).await.unwrap();
            if m == 0 {
                return n;
            }
            n += m;
        }
    });
    let hb = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let m = b.promote_due(later, 11).await.unwrap();
            if m == 0 {
                return n;
            }
            n += m;
        }
    });
    let total = ha.await.unwrap() + hb.await.unwrap();
    assert_eq!(total, 500);
    assert_eq!(t.queue.backlog().await.unwrap(), 500);
    assert_eq!(t.queue.stats().await.unwrap().delayed, 0);
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_and_purged() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 1,
        priority: Priority::High,
        ..Default::default()
    };
    let batch: Vec<(u32, EnqueueOptions)> = (0..5).map(|i| (i, opts.clone())).collect();
    t.queue.enqueue_batch(&batch).await.unwrap();
    let mut c = t.consumer(10).await;
    for d in c.next_batch().await.unwrap() {
        c.dead_letter(
            &d,
            if d.decode::<u32>().unwrap() < 2 {
                "auth"
            } else {
                "permanent"
            },
            "no",
        )
        .await
        .unwrap();
    }
    let all = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let page2 = t.queue.dead_list(2, Some(&all[1].id)).await.unwrap();
    assert_eq!(
        page2.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&all[2].id, &all[3].id]
    );
    assert_eq!(
        t.queue.dead_get(&all[0].id).await.unwrap().unwrap().reason,
        all[0].reason
    );
    let auth: Vec<String> = all
        .iter()
        .filter(|e| e.reason == "auth")
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(t.queue.dead_replay(&auth).await.unwrap(), 2);
    let replayed = c.next_batch().await.unwrap();
    assert_eq!(replayed.len(), 2);
    assert!(
        replayed
            .iter()
            .all(|d| d.attempts == 0 && d.priority == Priority::High)
    );
    assert_eq!(
        t.queue.dead_purge(Some(0)).await.unwrap(),
        0,
        "nothing died before the epoch"
    );
    assert_eq!(t.queue.dead_purge(None).await.unwrap(), 3);
    assert_eq!(t.queue.stats().await.unwrap().dead, 0);
}

#[tokio::test]
async fn idle_consumers_holding_nothing_are_removed_and_busy_ones_kept() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue(&1u8, &EnqueueOptions::default())
        .await
        .unwrap();
    let mut busy = t.consumer(10).await;
    let mut idle = t.consumer(10).await;
    assert_eq!(busy.next_batch().await.unwrap().len(), 1);
    assert!(idle.next_batch().await.unwrap().is_empty());
    let removed = t.queue.remove_idle_consumers(Duration::ZERO).await.unwrap();
    assert_eq!(removed, vec![idle.options().consumer.clone()]);
    assert_eq!(t.queue.stats().await.unwrap().pending(), 1);
}
