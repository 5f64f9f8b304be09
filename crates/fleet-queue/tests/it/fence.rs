//! The fence before an at-most-once effect: a reclaimed holder is stopped, and a later delivery of
//! a job waits while an earlier delivery's effect is in doubt, even when both are the same
//! consumer's.

use std::time::Duration;

use fleet_core::EnqueueOptions;
use fleet_queue::{Fence, GROUP_DEFAULT};

use crate::support::TestQueue;

/// Long enough that no mark in these tests ages out.
const IN_DOUBT_WAIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_reclaimed_copy_read_by_the_same_consumer_waits_for_its_first_attempt() {
    let t = TestQueue::new().await;
    let job = t
        .queue
        .enqueue(&1u8, &EnqueueOptions::default())
        .await
        .unwrap()
        .job_id;
    let mut c = t.consumer(10).await;
    let first = c.next_batch().await.unwrap().remove(0);
    assert_eq!(
        c.settler().fence(&first, IN_DOUBT_WAIT).await.unwrap(),
        Fence::Go,
        "the first delivery passes and marks the job"
    );
    // The consumer froze mid-effect past its lease: the scheduler hands out a copy of the entry.
    let r = t
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 10, t.queue.now_ms())
        .await
        .unwrap();
    assert_eq!(r.requeued, 1);
    // Awake again, the same consumer reads the copy while its first attempt is still in flight.
    let copy = c.next_batch().await.unwrap().remove(0);
    assert_eq!(copy.job_id, first.job_id);
    assert_ne!(copy.stream_id, first.stream_id);
    assert!(
        matches!(
            c.settler().fence(&copy, IN_DOUBT_WAIT).await.unwrap(),
            Fence::InDoubt { .. }
        ),
        "the copy must wait for the first attempt's record, not pass its own consumer's mark"
    );
    // The first delivery's fence now says it lost the entry: it must not act again either.
    assert_eq!(
        c.settler().fence(&first, IN_DOUBT_WAIT).await.unwrap(),
        Fence::Lost
    );
    // Its outcome recorded, the mark is cleared and the copy may go ahead; passing its own mark
    // again (a recheck of the same delivery) is allowed.
    t.queue.clear_fences(&[job.as_str()]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.settler().fence(&copy, IN_DOUBT_WAIT).await.unwrap(),
            Fence::Go
        );
    }
    assert_eq!(c.ack(&[&copy]).await.unwrap(), 1);
}
