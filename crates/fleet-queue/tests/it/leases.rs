//! Leases: the heartbeat keeps held entries from being reclaimed, a holder learns when its lease
//! was lost, batches never exceed their size, and retries are due on Redis's clock.

use std::time::Duration;

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{GROUP_DEFAULT, PriorityMode, RetryAfter, RetryOutcome};
use fred::prelude::*;

use crate::support::TestQueue;

/// Idle time (ms) of the entry `id` in the group's pending list of stream `priority`.
async fn idle_ms(t: &TestQueue, priority: Priority, id: &str) -> u64 {
    let client = t.broker_client().await;
    let reply: Value = client
        .custom(
            fred::cmd!("XPENDING"),
            vec![
                t.queue.keys().stream(priority).to_owned(),
                GROUP_DEFAULT.to_owned(),
                id.to_owned(),
                id.to_owned(),
                "1".to_owned(),
            ],
        )
        .await
        .unwrap();
    let _ = client.quit().await;
    match reply {
        Value::Array(rows) => match rows.first() {
            Some(Value::Array(row)) => row[2].as_u64().unwrap(),
            _ => panic!("{id} is not pending"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

#[tokio::test]
async fn a_renewed_lease_resets_the_idle_time_the_scheduler_reclaims_by() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue(&1u8, &EnqueueOptions::default())
        .await
        .unwrap();
    let mut c = t.consumer(10).await;
    let held = c.next_batch().await.unwrap();
    let id = held[0].stream_id.clone();
    // Wait (bounded) until the entry has been idle a while: a condition, not an ordering.
    let mut before = 0;
    for _ in 0..100 {
        before = idle_ms(&t, Priority::Normal, &id).await;
        if before >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(before >= 500, "idle {before} ms");
    c.renew_leases().await.unwrap();
    let after = idle_ms(&t, Priority::Normal, &id).await;
    assert!(
        after < before,
        "renewal must reset the idle time: {after} >= {before}"
    );
    // A reclaim with a lease shorter than the time since the read, but longer than the time
    // since the renewal, leaves the entry with its live holder.
    let r = t
        .queue
        .reclaim_stalled(
            GROUP_DEFAULT,
            Duration::from_millis(before),
            100,
            t.queue.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(r.requeued, 0, "a renewed entry is not stalled");
    assert!(c.settler().confirm_lease(&held[0]).await.unwrap());
    assert_eq!(c.ack(&[&held[0]]).await.unwrap(), 1);
}

#[tokio::test]
async fn a_holder_whose_entry_was_reclaimed_learns_it_lost_the_lease() {
    let t = TestQueue::new().await;
    t.queue
        .enqueue_batch(&[
            (1u8, EnqueueOptions::default()),
            (2u8, EnqueueOptions::default()),
        ])
        .await
        .unwrap();
    let mut frozen = t.consumer(10).await;
    let held = frozen.next_batch().await.unwrap();
    assert_eq!(held.len(), 2);
    // The process "froze" past its lease: the scheduler reclaimed both.
    t.queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 100, t.queue.now_ms())
        .await
        .unwrap();
    // Its heartbeat on waking marks them lost; the holder must not act on them.
    frozen.renew_leases().await.unwrap();
    for d in &held {
        assert!(!frozen.settler().confirm_lease(d).await.unwrap());
    }
    // Their new deliveries belong to a live consumer, which may act.
    let mut live = t.consumer(10).await;
    let again = live.next_batch().await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(live.settler().confirm_lease(&again[0]).await.unwrap());
}

#[tokio::test]
async fn a_frozen_holder_checks_redis_once_its_last_renewal_is_old() {
    let t = TestQueue::new().await;
    // A lease so short that no confirmation is ever fresh: `confirm_lease` always asks Redis,
    // as a process that woke from a freeze longer than half its lease does.
    t.queue
        .publish_lease(Duration::from_millis(1))
        .await
        .unwrap();
    t.queue
        .enqueue_batch(&[
            (1u8, EnqueueOptions::default()),
            (2u8, EnqueueOptions::default()),
        ])
        .await
        .unwrap();
    let mut c = t.consumer(10).await;
    let held = c.next_batch().await.unwrap();
    assert_eq!(c.settler().lease(), Duration::from_millis(1));
    // Only the first is reclaimed (by id, as the scheduler would after its lease).
    let first = &held[0];
    let reclaimed = t
        .queue
        .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 1, t.queue.now_ms())
        .await
        .unwrap();
    assert_eq!(reclaimed.requeued, 1);
    assert!(!c.settler().confirm_lease(first).await.unwrap());
    assert!(c.settler().confirm_lease(&held[1]).await.unwrap());
}

#[tokio::test]
async fn a_batch_never_holds_more_than_its_size() {
    let t = TestQueue::new().await;
    for p in Priority::ALL {
        let jobs: Vec<(usize, EnqueueOptions)> = (0..10)
            .map(|i| (i, EnqueueOptions::with_priority(p)))
            .collect();
        t.queue.enqueue_batch(&jobs).await.unwrap();
    }
    // Equal weights round each level's share of 10 up to 4: 12 entries read for a batch of 10.
    let mut c = t
        .consumer_with(
            10,
            PriorityMode::Weighted {
                high: 1,
                normal: 1,
                low: 1,
            },
        )
        .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let b = c.next_batch().await.unwrap();
        assert!(
            b.len() <= 10,
            "a batch of {} for a batch size of 10",
            b.len()
        );
        for d in &b {
            assert!(seen.insert(d.job_id.clone()), "delivered twice");
        }
        c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
        if seen.len() == 30 {
            break;
        }
    }
    assert_eq!(seen.len(), 30, "every entry delivered once");
}

#[tokio::test]
async fn a_retry_is_due_on_the_redis_clock() {
    let t = TestQueue::new().await;
    let opts = EnqueueOptions {
        max_attempts: 5,
        ..Default::default()
    };
    t.queue.enqueue(&1u8, &opts).await.unwrap();
    let mut c = t.consumer(10).await;
    let d = c.next_batch().await.unwrap().remove(0);
    let client = t.broker_client().await;
    let time: Vec<String> = client
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    let redis_now_ms =
        time[0].parse::<u64>().unwrap() * 1000 + time[1].parse::<u64>().unwrap() / 1000;
    let outcome = c
        .retry(&d, RetryAfter::Exactly(Duration::from_secs(60)), "later")
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RetryOutcome::Scheduled {
            delay: Duration::from_secs(60)
        }
    );
    let scored: Vec<(String, f64)> = client
        .zrange(t.queue.keys().delayed(), 0, -1, None, false, None, true)
        .await
        .unwrap();
    assert_eq!(scored.len(), 1);
    let due = scored[0].1 as u64;
    assert!(
        due >= redis_now_ms + 60_000 && due < redis_now_ms + 70_000,
        "due {due}, Redis now {redis_now_ms}"
    );
    let _ = client.quit().await;
}

/// A TCP proxy to the test Redis whose connections can all be cut at once.
struct CutProxy {
    addr: std::net::SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    async fn start() -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let conns = tasks.clone();
        let redis = crate::support::redis_url();
        let upstream = redis.trim_start_matches("redis://").to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut redis) = tokio::net::TcpStream::connect(upstream.as_str()).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut redis).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        CutProxy { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Found by the chaos suite: a consumer that had read entries and was lingering for more when
/// Redis went away returned the error and dropped the entries it held. Its heartbeat kept renewing
/// them, so they stayed pending forever: never handled, never reclaimed. Entries in hand are now
/// handed out whatever the linger read meets.
#[tokio::test(flavor = "multi_thread")]
async fn entries_read_before_redis_goes_away_are_handed_out_not_held_forever() {
    let t = TestQueue::new().await;
    let proxy = CutProxy::start().await;
    let through_proxy =
        fleet_queue::Broker::connect(&format!("redis://{}", proxy.addr), t.broker.prefix())
            .await
            .unwrap();
    let mut o = fleet_queue::ConsumerOptions::new("test");
    o.batch_size = 10;
    o.linger = Duration::from_secs(30);
    o.block = Duration::from_secs(1);
    let mut c = through_proxy.queue("jobs").consumer(o).await.unwrap();
    t.queue
        .enqueue(&1u8, &EnqueueOptions::default())
        .await
        .unwrap();
    let batch = tokio::spawn(async move { (c.next_batch().await, c) });
    // Once the entry is pending, the consumer has read it and lingers for more.
    let client = t.broker_client().await;
    let mut read = false;
    for _ in 0..3000 {
        let summary: Value = client
            .custom(
                fred::cmd!("XPENDING"),
                vec![
                    t.queue.keys().stream(Priority::Normal).to_owned(),
                    GROUP_DEFAULT.to_owned(),
                ],
            )
            .await
            .unwrap();
        if let Value::Array(fields) = &summary
            && fields.first().and_then(Value::as_u64) == Some(1)
        {
            read = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(read, "the consumer never read the entry");
    proxy.cut();
    // Generous: with the port gone, the client's commands fail only at their timeouts (a few
    // seconds each), slower still on a loaded machine.
    let (read, _c) = tokio::time::timeout(Duration::from_secs(120), batch)
        .await
        .expect("next_batch returns once the connection is gone")
        .unwrap();
    let read = read.expect("the entry read before the cut is handed out, not dropped");
    assert_eq!(read.len(), 1);
    let _ = client.quit().await;
}
