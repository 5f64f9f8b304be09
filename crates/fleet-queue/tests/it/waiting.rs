//! Waiting counts stay exact in every state Redis can be in: after deletions and trims on the
//! shared Redis, and after a real restart and a real failover of a private `redis-server` this
//! test starts (the shared one refuses `DEBUG RELOAD`, and a restart must not touch other tests).

use std::time::Duration;

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{Broker, ConsumerOptions, GROUP_DEFAULT, Queue, Retention, WaitingBudget};
use fred::{cmd, prelude::*, types::Value};

use crate::support::{PrivateRedis, TestQueue, redis_url};

async fn raw_client(url: &str) -> Client {
    let raw = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    raw
}

async fn fill(q: &Queue, n: usize) {
    let batch: Vec<(usize, EnqueueOptions)> = (0..n)
        .map(|i| (i, EnqueueOptions::with_priority(Priority::Normal)))
        .collect();
    q.enqueue_batch(&batch).await.unwrap();
}

fn text(v: &Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::String(s) => s.to_string(),
        Value::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

/// `XINFO GROUPS` of a stream as (name, last-delivered-id, lag) rows.
async fn groups(raw: &Client, stream: &str) -> Vec<(String, String, Option<i64>)> {
    let reply: Value = raw
        .custom(cmd!("XINFO"), vec!["GROUPS", stream])
        .await
        .unwrap_or(Value::Null);
    let Value::Array(groups) = reply else {
        return Vec::new();
    };
    groups
        .iter()
        .map(|g| {
            let Value::Array(kv) = g else { panic!("{g:?}") };
            let field = |name: &str| {
                kv.chunks(2)
                    .find(|c| text(&c[0]) == name)
                    .map(|c| c[1].clone())
                    .unwrap_or(Value::Null)
            };
            (
                text(&field("name")),
                text(&field("last-delivered-id")),
                field("lag").as_i64(),
            )
        })
        .collect()
}

/// The truth, by brute force (test-sized streams only): entries after the last-delivered id of
/// the group furthest ahead, or every entry when there is no group.
async fn truth(raw: &Client, stream: &str) -> u64 {
    let furthest = groups(raw, stream)
        .await
        .into_iter()
        .map(|(_, id, _)| id)
        .max_by_key(|id| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
        });
    let mut start = furthest.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let mut n = 0;
    loop {
        let page: Value = raw
            .custom(cmd!("XRANGE"), vec![stream, &start, "+", "COUNT", "500"])
            .await
            .unwrap();
        let Value::Array(entries) = page else { break };
        let Some(Value::Array(last)) = entries.last() else {
            break;
        };
        n += entries.len() as u64;
        start = format!("({}", text(&last[0]));
    }
    n
}

async fn normal_waiting(q: &Queue) -> (u64, bool) {
    let w = q.waiting().await.unwrap()[Priority::Normal.index()];
    (w.entries, w.exact)
}

async fn consume(q: &Queue, n: usize) -> Vec<fleet_queue::Delivery> {
    let mut o = ConsumerOptions::new("test");
    o.batch_size = n;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(20);
    let mut c = q.consumer(o).await.unwrap();
    let b = c.next_batch().await.unwrap();
    assert_eq!(b.len(), n, "read {n}");
    c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
    b
}

#[tokio::test]
async fn deleting_an_undelivered_entry_keeps_the_count_exact_and_redis_lag_repaired() {
    let t = TestQueue::new().await;
    let raw = raw_client(&redis_url()).await;
    let stream = t.queue.keys().stream(Priority::Normal).to_owned();
    fill(&t.queue, 10).await;
    consume(&t.queue, 4).await;
    let waiting_ids: Vec<String> = match raw
        .custom::<Value, _>(cmd!("XRANGE"), vec![stream.as_str(), "-", "+"])
        .await
        .unwrap()
    {
        Value::Array(e) => e
            .iter()
            .skip(4)
            .map(|e| match e {
                Value::Array(p) => text(&p[0]),
                _ => unreachable!(),
            })
            .collect(),
        _ => unreachable!(),
    };
    let _: i64 = raw.xdel(&stream, &waiting_ids[2]).await.unwrap();
    // Redis cannot tell a lag past a deletion: what the inspector used to replace by the length.
    assert_eq!(groups(&raw, &stream).await[0].2, None);
    assert_eq!(normal_waiting(&t.queue).await, (5, true));
    assert_eq!(
        groups(&raw, &stream).await[0].2,
        Some(5),
        "the group's read counter is repaired"
    );
    // Redis keeps it right from here, read by read, with no recount.
    consume(&t.queue, 2).await;
    assert_eq!(groups(&raw, &stream).await[0].2, Some(3));
    assert_eq!(normal_waiting(&t.queue).await, (3, true));
    fill(&t.queue, 2).await;
    assert_eq!(normal_waiting(&t.queue).await, (5, true));
    assert_eq!(t.queue.backlog().await.unwrap(), 5);
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn trimming_history_or_undelivered_entries_keeps_the_count_exact() {
    let t = TestQueue::new().await;
    let raw = raw_client(&redis_url()).await;
    let stream = t.queue.keys().stream(Priority::Normal).to_owned();
    fill(&t.queue, 30).await;
    consume(&t.queue, 20).await;
    let keep_nothing = Retention {
        max_age: Duration::ZERO,
        max_count: 0,
    };
    let now = t.queue.now_ms() + 1_000;
    assert_eq!(t.queue.trim(keep_nothing, 1_000, now).await.unwrap(), 20);
    assert_eq!(normal_waiting(&t.queue).await, (10, true));
    // An operator's length cap cuts into undelivered entries: the cut ones wait no more.
    let _: i64 = raw
        .custom(cmd!("XTRIM"), vec![stream.as_str(), "MAXLEN", "4"])
        .await
        .unwrap();
    assert_eq!(normal_waiting(&t.queue).await, (4, true));
    assert_eq!(truth(&raw, &stream).await, 4);
    raw.quit().await.unwrap();
}

/// A small deterministic generator, so a failing sequence can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Producers, consumers, retention, deletions anywhere and lost read counters (what a restart
/// without an AOF rewrite leaves), interleaved at random with reads that walk one small page at a
/// time: every exact answer equals the truth and every inexact one is below it.
#[tokio::test]
async fn recounts_in_small_steps_stay_exact_under_any_interleaving() {
    // WAITING_SEEDS=1,2,3 runs other sequences (61 more passed when this was written).
    let seeds: Vec<u64> = std::env::var("WAITING_SEEDS").map_or(vec![1, 7, 42], |v| {
        v.split(',').map(|x| x.trim().parse().unwrap()).collect()
    });
    for seed in seeds {
        let t = TestQueue::new().await;
        let raw = raw_client(&redis_url()).await;
        let stream = t.queue.keys().stream(Priority::Normal).to_owned();
        let mut rng = Lcg(seed);
        let mut o = ConsumerOptions::new("test");
        o.linger = Duration::ZERO;
        o.block = Duration::from_millis(5);
        o.batch_size = 7;
        let mut c = t.queue.consumer(o).await.unwrap();
        fill(&t.queue, 120).await;
        let step = WaitingBudget {
            pages: 1,
            page_entries: 5,
        };
        let (mut exact_answers, mut inexact_answers) = (0, 0);
        for _ in 0..250 {
            let op = rng.below(10);
            match op {
                0 | 1 => fill(&t.queue, 1 + rng.below(6) as usize).await,
                2 | 3 => {
                    let b = c.next_batch().await.unwrap();
                    c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
                }
                4 => {
                    // Delete a random entry, delivered or not.
                    let all: Value = raw
                        .custom(
                            cmd!("XRANGE"),
                            vec![stream.as_str(), "-", "+", "COUNT", "400"],
                        )
                        .await
                        .unwrap();
                    if let Value::Array(all) = all
                        && !all.is_empty()
                    {
                        let Value::Array(e) = &all[rng.below(all.len() as u64) as usize] else {
                            unreachable!()
                        };
                        let _: i64 = raw.xdel(&stream, text(&e[0])).await.unwrap();
                    }
                }
                5 => {
                    // Forget the group's read counter, as a replayed AOF does.
                    if let Some((name, id, _)) = groups(&raw, &stream).await.into_iter().next() {
                        let _: Value = raw
                            .custom(
                                cmd!("XGROUP"),
                                vec!["SETID", stream.as_str(), name.as_str(), id.as_str()],
                            )
                            .await
                            .unwrap();
                    }
                }
                6 => {
                    let keep = Retention {
                        max_age: Duration::ZERO,
                        max_count: rng.below(20),
                    };
                    t.queue
                        .trim(keep, 1_000, t.queue.now_ms() + 1_000)
                        .await
                        .unwrap();
                }
                _ => {
                    let w = t.queue.waiting_within(step).await.unwrap()[Priority::Normal.index()];
                    let truth = truth(&raw, &stream).await;
                    if w.exact {
                        exact_answers += 1;
                        assert_eq!(w.entries, truth, "seed {seed}: exact answer");
                    } else {
                        inexact_answers += 1;
                        assert!(w.entries <= truth, "seed {seed}: {} > {truth}", w.entries);
                    }
                }
            }
        }
        // Left alone, the count completes and is exact.
        let mut last = None;
        for _ in 0..1_000 {
            let w = t.queue.waiting_within(step).await.unwrap()[Priority::Normal.index()];
            if w.exact {
                last = Some(w.entries);
                break;
            }
        }
        assert_eq!(last, Some(truth(&raw, &stream).await), "seed {seed}");
        assert!(
            exact_answers > 0 && inexact_answers > 0,
            "seed {seed}: both kinds of answers seen ({exact_answers}, {inexact_answers})"
        );
        raw.quit().await.unwrap();
    }
}

#[tokio::test]
async fn a_large_recount_finishes_across_reads_while_workers_and_producers_go_on() {
    let t = TestQueue::new().await;
    let raw = raw_client(&redis_url()).await;
    let stream = t.queue.keys().stream(Priority::Normal).to_owned();
    fill(&t.queue, 3_000).await;
    consume(&t.queue, 500).await;
    let id = groups(&raw, &stream).await[0].1.clone();
    let _: Value = raw
        .custom(
            cmd!("XGROUP"),
            vec!["SETID", stream.as_str(), GROUP_DEFAULT, id.as_str()],
        )
        .await
        .unwrap();
    // With the read counter lost and acknowledged history in the stream, Redis has no lag.
    assert_eq!(groups(&raw, &stream).await[0].2, None);
    let step = WaitingBudget {
        pages: 2,
        page_entries: 100,
    };
    let mut reads = 0;
    let w = loop {
        reads += 1;
        let w = t.queue.waiting_within(step).await.unwrap()[Priority::Normal.index()];
        if w.exact {
            break w;
        }
        assert!(w.entries <= truth(&raw, &stream).await);
        consume(&t.queue, 20).await;
        fill(&t.queue, 10).await;
    };
    assert!(reads > 3, "the count took several reads ({reads})");
    assert_eq!(w.entries, truth(&raw, &stream).await);
    raw.quit().await.unwrap();
}

async fn rewrite_aof(raw: &Client) {
    let _: Value = raw
        .custom(cmd!("BGREWRITEAOF"), Vec::<String>::new())
        .await
        .unwrap();
    for _ in 0..500 {
        let info: String = raw
            .info(Some(fred::types::InfoKind::Persistence))
            .await
            .unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("AOF rewrite did not finish");
}

#[tokio::test]
async fn after_a_redis_restart_waiting_is_exact_where_redis_lag_is_stale_or_missing() {
    let Some(mut redis) = PrivateRedis::start(&[]).await else {
        return;
    };
    let prefix = "fleet-test";
    let broker = Broker::connect(&redis.url(), prefix).await.unwrap();
    let q = broker.queue("jobs");
    let stream = q.keys().stream(Priority::Normal).to_owned();
    fill(&q, 30).await;
    consume(&q, 10).await;
    // The rewritten AOF holds the group with its read counter at 10; the 15 reads after it are
    // logged as XCLAIM ... LASTID, which replays without the counter.
    rewrite_aof(&raw_client(&redis.url()).await).await;
    consume(&q, 15).await;
    redis.crash_and_restart().await;

    let raw = raw_client(&redis.url()).await;
    assert_eq!(
        groups(&raw, &stream).await[0].2,
        Some(20),
        "Redis 7.0 reports a stale lag after the restart (5 wait)"
    );
    let broker = Broker::connect(&redis.url(), prefix).await.unwrap();
    let q = broker.queue("jobs");
    assert_eq!(normal_waiting(&q).await, (5, true));
    assert_eq!(groups(&raw, &stream).await[0].2, Some(5), "repaired");

    // A dead letter replayed waits again.
    let mut o = ConsumerOptions::new("test");
    o.linger = Duration::ZERO;
    o.batch_size = 2;
    let mut c = q.consumer(o).await.unwrap();
    let b = c.next_batch().await.unwrap();
    assert!(
        c.dead_letter(&b[0], "test", "replayed below")
            .await
            .unwrap()
    );
    c.ack(&[&b[1]]).await.unwrap();
    assert_eq!(normal_waiting(&q).await, (3, true));
    let dead: Vec<String> = q
        .dead_list(10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(q.dead_replay(&dead).await.unwrap(), 1);
    assert_eq!(normal_waiting(&q).await, (4, true));

    // And a second restart, this time with no rewrite in between.
    consume(&q, 1).await;
    redis.crash_and_restart().await;
    let broker = Broker::connect(&redis.url(), prefix).await.unwrap();
    assert_eq!(normal_waiting(&broker.queue("jobs")).await, (3, true));
    assert_eq!(truth(&raw_client(&redis.url()).await, &stream).await, 3);
}

#[tokio::test]
async fn after_a_restart_a_drained_queue_shows_nothing_waiting() {
    let Some(mut redis) = PrivateRedis::start(&[]).await else {
        return;
    };
    let broker = Broker::connect(&redis.url(), "fleet-test").await.unwrap();
    let q = broker.queue("jobs");
    fill(&q, 40).await;
    consume(&q, 40).await;
    fill(&q, 1).await;
    consume(&q, 1).await;
    redis.crash_and_restart().await;
    let broker = Broker::connect(&redis.url(), "fleet-test").await.unwrap();
    let q = broker.queue("jobs");
    let raw = raw_client(&redis.url()).await;
    let stream = q.keys().stream(Priority::Normal).to_owned();
    // The group is at the last entry, so even Redis knows; add one more and it no longer does.
    fill(&q, 1).await;
    assert_eq!(
        groups(&raw, &stream).await[0].2,
        None,
        "no lag after the restart"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.priorities[1].length, stats.priorities[1].waiting),
        (42, 1),
        "acknowledged history is not waiting"
    );
    assert!(stats.lengths_exact());
}

#[tokio::test]
async fn after_a_failover_the_promoted_replica_counts_exactly() {
    let Some(primary) = PrivateRedis::start(&[]).await else {
        return;
    };
    let replicaof = primary.port.to_string();
    let Some(replica) = PrivateRedis::start(&["--replicaof", "127.0.0.1", &replicaof]).await else {
        return;
    };
    // Writes must reach the replica as a replication stream, not inside its first full sync.
    let rraw = raw_client(&replica.url()).await;
    for _ in 0..500 {
        let info: String = rraw
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let broker = Broker::connect(&primary.url(), "fleet-test").await.unwrap();
    let q = broker.queue("jobs");
    let stream = q.keys().stream(Priority::Normal).to_owned();
    fill(&q, 20).await;
    consume(&q, 12).await;
    assert_eq!(normal_waiting(&q).await, (8, true));
    fill(&q, 1).await;
    consume(&q, 1).await;
    let praw = raw_client(&primary.url()).await;
    let acked: i64 = praw.custom(cmd!("WAIT"), vec!["1", "5000"]).await.unwrap();
    assert_eq!(acked, 1, "the replica has everything");
    let _: Value = rraw
        .custom(cmd!("REPLICAOF"), vec!["NO", "ONE"])
        .await
        .unwrap();
    assert_ne!(
        groups(&rraw, &stream).await[0].2,
        Some(8),
        "the replica's own lag is wrong"
    );
    let promoted = Broker::connect(&replica.url(), "fleet-test").await.unwrap();
    assert_eq!(normal_waiting(&promoted.queue("jobs")).await, (8, true));
    assert_eq!(truth(&rraw, &stream).await, 8);
}
