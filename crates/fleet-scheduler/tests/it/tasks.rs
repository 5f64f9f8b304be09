//! Each task's `run_once` on a prepared state, with an injected clock: what it did, and what the
//! queues look like afterwards.

use std::{collections::BTreeSet, time::Duration};

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{GROUP_DEFAULT, now_ms};
use fleet_scheduler::{
    consumers::{self, Consumers},
    delayed::{self, Delayed},
    health::{self, Health},
    retention::{self, Retention},
    stalled::{self, Stalled},
};

use crate::support::TestEnv;

fn delayed_opts(delay: Duration) -> EnqueueOptions {
    EnqueueOptions {
        delay: Some(delay),
        ..Default::default()
    }
}

/// Stalled recovery that treats every pending entry as stalled (a lease of zero): idle times are
/// Redis's clock, which a test cannot move, so this is how a test says "the lease has passed".
fn stalled_now(env: &TestEnv, batch_size: usize, max_batches: u32) -> Stalled {
    Stalled::new(
        stalled::Config {
            lease: Duration::ZERO,
            batch_size,
            max_batches_per_run: max_batches,
            ..Default::default()
        },
        GROUP_DEFAULT,
        env.queues(),
    )
}

#[tokio::test]
async fn delayed_run_once_promotes_what_is_due_in_bounded_batches() {
    let env = TestEnv::new().await;
    let inbound = env.queue("inbound");
    let outbound = env.queue("outbound");
    let batch: Vec<(u32, EnqueueOptions)> = (0..1_200)
        .map(|i| (i, delayed_opts(Duration::from_secs(60))))
        .collect();
    inbound.enqueue_batch(&batch).await.unwrap();
    let three: Vec<(u32, EnqueueOptions)> = (0..3)
        .map(|i| (i, delayed_opts(Duration::from_secs(60))))
        .collect();
    outbound.enqueue_batch(&three).await.unwrap();

    let task = Delayed::new(
        delayed::Config {
            batch_size: 500,
            max_batches_per_run: 2,
            ..Default::default()
        },
        env.queues(),
    );
    let now = now_ms();
    let o = task.run_once(now).await.unwrap();
    assert_eq!(o, delayed::Outcome::default(), "nothing is due yet");

    let later = now + 61_000;
    let o = task.run_once(later).await.unwrap();
    assert_eq!(
        (o.promoted, o.queues_capped),
        (1_003, 1),
        "two batches of inbound, all of outbound"
    );
    let o = task.run_once(later).await.unwrap();
    assert_eq!((o.promoted, o.queues_capped), (200, 0));
    assert_eq!(task.run_once(later).await.unwrap().promoted, 0);

    assert_eq!(inbound.backlog().await.unwrap(), 1_200);
    assert_eq!(outbound.backlog().await.unwrap(), 3);
    assert_eq!(inbound.stats().await.unwrap().delayed, 0);
}

#[tokio::test]
async fn two_replicas_promote_each_due_entry_exactly_once() {
    let env = TestEnv::new().await;
    let inbound = env.queue("inbound");
    let n = 2_000u32;
    let batch: Vec<(u32, EnqueueOptions)> = (0..n)
        .map(|i| (i, delayed_opts(Duration::from_secs(30))))
        .collect();
    inbound.enqueue_batch(&batch).await.unwrap();
    let later = now_ms() + 31_000;
    // Small, different batch sizes so the two interleave over many calls.
    let replica = |batch_size: usize| {
        let task = Delayed::new(
            delayed::Config {
                batch_size,
                max_batches_per_run: 3,
                ..Default::default()
            },
            env.queues(),
        );
        tokio::spawn(async move {
            let mut total = 0;
            loop {
                let o = task.run_once(later).await.unwrap();
                total += o.promoted;
                if o.promoted == 0 {
                    return total;
                }
            }
        })
    };
    let (a, b) = (replica(7), replica(11));
    let total = a.await.unwrap() + b.await.unwrap();
    assert_eq!(total, u64::from(n));

    let mut c = env.consumer("inbound", 500).await;
    let mut seen = BTreeSet::new();
    loop {
        let got = c.next_batch().await.unwrap();
        if got.is_empty() {
            break;
        }
        for d in &got {
            assert!(seen.insert(d.decode::<u32>().unwrap()), "promoted twice");
        }
        c.ack(&got.iter().collect::<Vec<_>>()).await.unwrap();
    }
    assert_eq!(seen.len(), n as usize);
}

#[tokio::test]
async fn a_consumer_that_dies_holding_entries_is_recovered_by_another() {
    let env = TestEnv::new().await;
    let opts = EnqueueOptions {
        max_attempts: 5,
        ..Default::default()
    };
    let batch: Vec<(u32, EnqueueOptions)> = (0..5).map(|i| (i, opts.clone())).collect();
    env.queue("inbound").enqueue_batch(&batch).await.unwrap();
    let held = {
        let mut doomed = env.consumer("inbound", 10).await;
        let held = doomed.next_batch().await.unwrap();
        assert_eq!(held.len(), 5);
        held
        // The consumer is dropped here without acknowledging: it died.
    };

    let task = stalled_now(&env, 100, 10);
    let o = task.run_once(now_ms()).await.unwrap();
    assert_eq!((o.reclaimed, o.dead_lettered, o.gone), (5, 0, 0));

    let mut live = env.consumer("inbound", 10).await;
    let got = live.next_batch().await.unwrap();
    assert_eq!(
        got.iter().map(|d| &d.job_id).collect::<Vec<_>>(),
        held.iter().map(|d| &d.job_id).collect::<Vec<_>>(),
        "the same jobs, handed to the live consumer"
    );
    assert!(
        got.iter().all(|d| d.attempts == 1),
        "the stall counts as an attempt"
    );
    assert_eq!(live.ack(&got.iter().collect::<Vec<_>>()).await.unwrap(), 5);
    assert_eq!(
        task.run_once(now_ms()).await.unwrap(),
        stalled::Outcome::default(),
        "nothing left to recover"
    );
}

#[tokio::test]
async fn an_entry_that_stalls_again_and_again_ends_in_the_dead_letter_stream() {
    let env = TestEnv::new().await;
    let opts = EnqueueOptions {
        max_attempts: 3,
        priority: Priority::High,
        ..Default::default()
    };
    env.queue("outbound")
        .enqueue(&"crashy", &opts)
        .await
        .unwrap();
    let task = stalled_now(&env, 100, 10);
    let mut outcomes = Vec::new();
    for round in 0..3 {
        let mut c = env.consumer("outbound", 10).await;
        let got = c.next_batch().await.unwrap();
        assert_eq!(got.len(), 1, "round {round}");
        assert_eq!(got[0].attempts, round);
        let o = task.run_once(now_ms()).await.unwrap();
        outcomes.push((o.reclaimed, o.dead_lettered));
    }
    assert_eq!(outcomes, [(1, 0), (1, 0), (0, 1)]);
    let dead = env.queue("outbound").dead_list(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("stalled", 3));
    assert_eq!(env.queue("outbound").backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn stalled_run_once_respects_the_lease_and_its_batch_bounds() {
    let env = TestEnv::new().await;
    let batch: Vec<(u32, EnqueueOptions)> =
        (0..7).map(|i| (i, EnqueueOptions::default())).collect();
    env.queue("inbound").enqueue_batch(&batch).await.unwrap();
    let mut c = env.consumer("inbound", 10).await;
    assert_eq!(c.next_batch().await.unwrap().len(), 7);

    let leased = Stalled::new(stalled::Config::default(), GROUP_DEFAULT, env.queues());
    assert_eq!(
        leased.run_once(now_ms()).await.unwrap(),
        stalled::Outcome::default(),
        "held for less than the 30 s lease: not stalled"
    );

    let task = stalled_now(&env, 2, 2);
    let o = task.run_once(now_ms()).await.unwrap();
    assert_eq!(
        (o.reclaimed, o.queues_capped),
        (4, 1),
        "two full batches, then the run stops"
    );
    let o = task.run_once(now_ms()).await.unwrap();
    assert_eq!((o.reclaimed, o.queues_capped), (3, 0));
}

#[tokio::test]
async fn retention_with_pending_entries_present_removes_none_of_them() {
    let env = TestEnv::new().await;
    let inbound = env.queue("inbound");
    let batch: Vec<(u32, EnqueueOptions)> =
        (0..30).map(|i| (i, EnqueueOptions::default())).collect();
    inbound.enqueue_batch(&batch).await.unwrap();
    let mut c = env.consumer("inbound", 10).await;
    let first = c.next_batch().await.unwrap(); // stays pending
    let second = c.next_batch().await.unwrap(); // acknowledged
    c.ack(&second.iter().collect::<Vec<_>>()).await.unwrap();

    // Keep no acknowledged entry at all, whatever its age.
    let task = Retention::new(
        retention::Config {
            acked_max_age: Some(Duration::ZERO),
            acked_max_count: Some(0),
            dead_max_age: None,
            dead_max_count: None,
            ..Default::default()
        },
        env.queues(),
    );
    let later = now_ms() + 1_000;
    let o = task.run_once(later).await.unwrap();
    assert_eq!(
        o.trimmed, 0,
        "the pending entries in front keep everything behind them"
    );
    let stats = inbound.stats().await.unwrap();
    assert_eq!((stats.pending(), stats.priorities[1].length), (10, 30));
    assert_eq!(
        c.ack(&first.iter().collect::<Vec<_>>()).await.unwrap(),
        10,
        "every pending entry is still there to acknowledge"
    );

    let o = task.run_once(later).await.unwrap();
    assert_eq!(o.trimmed, 20);
    assert_eq!(
        inbound.backlog().await.unwrap(),
        10,
        "undelivered entries stay"
    );
    assert_eq!(c.next_batch().await.unwrap().len(), 10);
}

#[tokio::test]
async fn retention_trims_by_count_and_by_age_with_the_injected_clock() {
    let env = TestEnv::new().await;
    let outbound = env.queue("outbound");
    let batch: Vec<(u32, EnqueueOptions)> =
        (0..20).map(|i| (i, EnqueueOptions::default())).collect();
    outbound.enqueue_batch(&batch).await.unwrap();
    let mut c = env.consumer("outbound", 20).await;
    let got = c.next_batch().await.unwrap();
    c.ack(&got[..15].iter().collect::<Vec<_>>()).await.unwrap();
    for d in &got[15..] {
        c.dead_letter(d, "permanent", "no").await.unwrap();
    }
    let now = now_ms();

    let defaults = Retention::new(retention::Config::default(), env.queues());
    assert_eq!(
        defaults.run_once(now).await.unwrap(),
        retention::Outcome::default(),
        "young entries under the default bounds stay"
    );

    let by_count = Retention::new(
        retention::Config {
            acked_max_count: Some(5),
            dead_max_count: Some(2),
            ..Default::default()
        },
        env.queues(),
    );
    let o = by_count.run_once(now).await.unwrap();
    // Dead-lettered entries are acknowledged in their stream too: 20 acknowledged, 5 kept.
    assert_eq!((o.trimmed, o.dead_trimmed), (15, 3));

    // Fifteen days later, the default ages (1 h, 14 d) remove the rest.
    let o = defaults.run_once(now + 15 * 86_400_000).await.unwrap();
    assert_eq!((o.trimmed, o.dead_trimmed), (5, 2));
    let stats = outbound.stats().await.unwrap();
    assert_eq!((stats.priorities[1].length, stats.dead), (0, 0));
}

#[tokio::test]
async fn idle_consumers_holding_nothing_are_removed_and_busy_ones_kept() {
    let env = TestEnv::new().await;
    env.queue("inbound")
        .enqueue(&1u8, &EnqueueOptions::default())
        .await
        .unwrap();
    let mut busy = env.consumer("inbound", 10).await;
    let mut idle = env.consumer("inbound", 10).await;
    assert_eq!(busy.next_batch().await.unwrap().len(), 1);
    assert!(idle.next_batch().await.unwrap().is_empty());

    let young = Consumers::new(consumers::Config::default(), env.queues());
    assert_eq!(
        young.run_once(now_ms()).await.unwrap().removed,
        0,
        "idle for less than 1 h"
    );
    let task = Consumers::new(
        consumers::Config {
            idle: Duration::ZERO,
            ..Default::default()
        },
        env.queues(),
    );
    assert_eq!(task.run_once(now_ms()).await.unwrap().removed, 1);
    assert_eq!(
        task.run_once(now_ms()).await.unwrap().removed,
        0,
        "the busy one stays"
    );
    let consumers = env.queue("inbound").consumers().await.unwrap();
    assert!(consumers.iter().all(|c| c.name == busy.options().consumer));
}

#[tokio::test]
async fn health_reports_every_queue_and_priority_and_sets_the_gauges() {
    // Queue names of this test only, so no other test's gauges share its label values.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (a, b) = (format!("ha{}", &tag[..8]), format!("hb{}", &tag[..8]));
    let env = TestEnv::with_queues(&[&a, &b]).await;
    let qa = env.queue(&a);
    let mut jobs = Vec::new();
    for (p, n) in [
        (Priority::High, 3),
        (Priority::Normal, 2),
        (Priority::Low, 1),
    ] {
        for i in 0..n {
            jobs.push((
                i,
                EnqueueOptions {
                    priority: p,
                    ..Default::default()
                },
            ));
        }
    }
    jobs.push((9, delayed_opts(Duration::from_secs(3600))));
    jobs.push((9, delayed_opts(Duration::from_secs(3600))));
    qa.enqueue_batch(&jobs).await.unwrap();
    let mut c = env.consumer(&a, 3).await;
    let got = c.next_batch().await.unwrap();
    assert!(got.iter().all(|d| d.priority == Priority::High));
    c.dead_letter(&got[0], "permanent", "no").await.unwrap();
    env.queue(&b).pause().await.unwrap();

    let handle = fleet_runtime::install_metrics();
    let task = Health::new(health::Config::default(), GROUP_DEFAULT, env.queues());
    let report = task.run_once(now_ms()).await.unwrap();
    let page = handle.render();

    let ha = &report[0];
    let rows: Vec<(Priority, u64, u64, u64)> = ha
        .priorities
        .iter()
        .map(|p| (p.priority, p.waiting, p.pending, p.lag))
        .collect();
    assert_eq!(
        rows,
        [
            (Priority::High, 0, 2, 0),
            (Priority::Normal, 2, 0, 2),
            (Priority::Low, 1, 0, 1)
        ]
    );
    assert_eq!(
        (ha.delayed, ha.dead, ha.consumers, ha.paused),
        (2, 1, 1, false)
    );
    assert!(ha.oldest_pending_ms < 60_000);
    let hb = &report[1];
    assert!(
        hb.priorities
            .iter()
            .all(|p| (p.waiting, p.pending, p.lag) == (0, 0, 0))
    );
    assert_eq!(
        (hb.delayed, hb.dead, hb.consumers, hb.paused),
        (0, 0, 0, true)
    );

    for line in [
        format!("fleet_queue_length{{queue=\"{a}\",priority=\"normal\"}} 2"),
        format!("fleet_queue_pending{{queue=\"{a}\",priority=\"high\"}} 2"),
        format!("fleet_queue_lag{{queue=\"{a}\",priority=\"low\"}} 1"),
        format!("fleet_queue_delayed{{queue=\"{a}\"}} 2"),
        format!("fleet_queue_dead{{queue=\"{a}\"}} 1"),
        format!("fleet_queue_consumers{{queue=\"{a}\"}} 1"),
        format!("fleet_queue_paused{{queue=\"{b}\"}} 1"),
        format!("fleet_queue_oldest_pending_seconds{{queue=\"{b}\"}} 0"),
    ] {
        assert!(page.contains(&line), "missing `{line}` in:\n{page}");
    }
}

/// After what a Redis restart leaves (the group's read counter lost, acknowledged history in the
/// stream) and a deleted undelivered entry, the gauges show what waits, not the stream length.
#[tokio::test]
async fn health_gauges_count_only_waiting_entries_when_redis_has_no_lag() {
    use fred::{cmd, prelude::*, types::Value};

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("hr{}", &tag[..8]);
    let env = TestEnv::with_queues(&[&name]).await;
    let q = env.queue(&name);
    let jobs: Vec<(u32, EnqueueOptions)> = (0..50).map(|i| (i, Default::default())).collect();
    q.enqueue_batch(&jobs).await.unwrap();
    let mut c = env.consumer(&name, 40).await;
    let read = c.next_batch().await.unwrap();
    assert_eq!(read.len(), 40);
    c.ack(&read.iter().collect::<Vec<_>>()).await.unwrap();
    let raw = crate::support::raw_client().await;
    let stream = q.keys().stream(Priority::Normal).to_owned();
    let last = read.last().unwrap().stream_id.clone();
    let _: Value = raw
        .custom(
            cmd!("XGROUP"),
            vec!["SETID", stream.as_str(), GROUP_DEFAULT, last.as_str()],
        )
        .await
        .unwrap();
    let _: i64 = raw.xdel(&stream, read[7].stream_id.as_str()).await.unwrap();

    let handle = fleet_runtime::install_metrics();
    let task = Health::new(health::Config::default(), GROUP_DEFAULT, vec![q.clone()]);
    let report = task.run_once(now_ms()).await.unwrap();
    let normal = report[0].priorities[Priority::Normal.index()];
    assert_eq!((normal.waiting, normal.lag, normal.exact), (10, 10, true));
    let page = handle.render();
    for line in [
        format!("fleet_queue_length{{queue=\"{name}\",priority=\"normal\"}} 10"),
        format!("fleet_queue_lag{{queue=\"{name}\",priority=\"normal\"}} 10"),
        format!("fleet_queue_length_exact{{queue=\"{name}\",priority=\"normal\"}} 1"),
    ] {
        assert!(page.contains(&line), "missing `{line}` in:\n{page}");
    }
    raw.quit().await.unwrap();
}
