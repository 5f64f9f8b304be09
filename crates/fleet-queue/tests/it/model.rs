//! A property test of the queue core against a model of where each job is.
//!
//! Random sequences of operations run against the real Redis, one fresh prefix per case:
//! enqueues (single and batched, with and without idempotency keys, some delayed), a batch that
//! fails midway, reads, acknowledgements, retries, deferrals, dead-letters, stalled recovery,
//! promotion, dead-letter replay by full and by partial ids, retention, idle-consumer removal, and
//! reads racing that removal. The model says where each job is: waiting on its priority stream,
//! pending for one consumer, delayed, dead, or nowhere (done, or never appended). After every step
//! Redis must hold each job in exactly the place the model says, with the attempts it counted,
//! and nothing else: a job lost, duplicated or left behind by a failed call fails the case.

use std::{collections::HashMap, time::Duration};

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{
    Broker, Consumer, ConsumerOptions, Delivery, Enqueued, GROUP_DEFAULT, PriorityMode, Queue,
    Retention, RetryAfter, RetryOutcome, now_ms,
};
use fred::{cmd, prelude::*, types::Value};
use proptest::{prelude::*, test_runner::TestCaseError};

use crate::support::{raw_client, redis_url};

/// Cases per run, and the most operations in one case: small enough for a few seconds in all.
const CASES: u32 = 64;
const MAX_OPS: usize = 30;
/// Idempotency keys are drawn from a small pool, so that keys repeat.
const KEY_POOL: u8 = 4;
/// The idempotency key every case makes unusable (a hash where a string is expected), so that a
/// batch holding it fails midway, after the jobs before it.
const BROKEN_KEY: &str = "broken";
/// Each consumer reads batches of its own size.
const BATCH_SIZES: [usize; 3] = [1, 3, 5];
/// Delay of delayed enqueues, retries and deferrals; promotion looks a day ahead, so every delayed
/// job is due then.
const DELAY: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone)]
struct JobSpec {
    priority: Priority,
    key: Option<u8>,
    delayed: bool,
    max_attempts: u32,
}

impl JobSpec {
    fn options(&self) -> EnqueueOptions {
        EnqueueOptions {
            priority: self.priority,
            max_attempts: self.max_attempts,
            delay: self.delayed.then_some(DELAY),
            idempotency_key: self.key.map(|k| format!("k{k}")),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(JobSpec),
    EnqueueBatch(Vec<JobSpec>),
    /// A batch with a job under [`BROKEN_KEY`] at position `at`: the call must fail and leave
    /// nothing of the batch behind.
    EnqueueBatchFailing {
        jobs: Vec<JobSpec>,
        at: usize,
    },
    Read {
        consumer: usize,
    },
    /// A read and an idle-consumer removal (idle 0) at the same time.
    ReadWhileRemoving {
        consumer: usize,
    },
    /// Acknowledges the consumer's held deliveries picked by the mask's bits (first eight).
    Ack {
        consumer: usize,
        mask: u8,
    },
    Retry {
        consumer: usize,
        pick: usize,
    },
    Defer {
        consumer: usize,
        pick: usize,
    },
    DeadLetter {
        consumer: usize,
        pick: usize,
    },
    /// Stalled recovery with a lease of zero: every pending entry is stalled.
    Reclaim,
    /// Promotion with a clock a day ahead: every delayed job is due.
    Promote,
    /// Replays dead jobs in one call, each by its full id or by its id's millisecond part only.
    Replay {
        picks: Vec<(usize, bool)>,
    },
    /// Retention keeping no acknowledged history.
    Trim,
    RemoveIdle,
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::High),
        Just(Priority::Normal),
        Just(Priority::Low)
    ]
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        priority(),
        prop::option::weighted(0.4, 0..KEY_POOL),
        prop::bool::weighted(0.25),
        prop_oneof![3 => Just(1u32), 2 => Just(2u32), 1 => Just(3u32)],
    )
        .prop_map(|(priority, key, delayed, max_attempts)| JobSpec {
            priority,
            key,
            delayed,
            max_attempts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let consumer = || 0..BATCH_SIZES.len();
    prop_oneof![
        3 => job_spec().prop_map(Op::Enqueue),
        3 => prop::collection::vec(job_spec(), 1..6).prop_map(Op::EnqueueBatch),
        1 => (prop::collection::vec(job_spec(), 1..5), 0..5usize)
            .prop_map(|(jobs, at)| Op::EnqueueBatchFailing { jobs, at }),
        5 => consumer().prop_map(|consumer| Op::Read { consumer }),
        2 => consumer().prop_map(|consumer| Op::ReadWhileRemoving { consumer }),
        3 => (consumer(), any::<u8>()).prop_map(|(consumer, mask)| Op::Ack { consumer, mask }),
        2 => (consumer(), any::<usize>()).prop_map(|(consumer, pick)| Op::Retry { consumer, pick }),
        1 => (consumer(), any::<usize>()).prop_map(|(consumer, pick)| Op::Defer { consumer, pick }),
        2 => (consumer(), any::<usize>())
            .prop_map(|(consumer, pick)| Op::DeadLetter { consumer, pick }),
        2 => Just(Op::Reclaim),
        2 => Just(Op::Promote),
        3 => prop::collection::vec((any::<usize>(), any::<bool>()), 1..4)
            .prop_map(|picks| Op::Replay { picks }),
        1 => Just(Op::Trim),
        1 => Just(Op::RemoveIdle),
    ]
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Waiting(Priority),
    Pending {
        consumer: usize,
        priority: Priority,
        stream_id: String,
    },
    Delayed,
    Dead,
    /// Acknowledged: in no place any more (its acknowledged entry is history, not a place).
    Done,
}

#[derive(Debug, Clone)]
struct ModelJob {
    priority: Priority,
    max_attempts: u32,
    attempts: u32,
    place: Place,
}

#[derive(Default)]
struct Model {
    jobs: HashMap<String, ModelJob>,
    /// Job ids in the order they were created, so picks do not depend on random ids.
    order: Vec<String>,
    /// Idempotency key -> the id of the job first enqueued under it.
    keys: HashMap<u8, String>,
    /// What each consumer holds: deliveries it read and has not settled (some may be stale).
    held: [Vec<Delivery>; 3],
}

impl Model {
    fn is_current(&self, consumer: usize, d: &Delivery) -> bool {
        self.jobs.get(d.job_id.as_str()).is_some_and(|j| {
            j.place
                == Place::Pending {
                    consumer,
                    priority: d.priority,
                    stream_id: d.stream_id.clone(),
                }
        })
    }

    fn count(&self, f: impl Fn(&Place) -> bool) -> usize {
        self.jobs.values().filter(|j| f(&j.place)).count()
    }

    fn job(&mut self, id: &str) -> &mut ModelJob {
        self.jobs.get_mut(id).expect("a job of the model")
    }
}

/// A failed check: the message says what Redis held against what the model expected.
type Check = Result<(), String>;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

struct Harness {
    queue: Queue,
    consumers: Vec<Consumer>,
    names: Vec<String>,
    raw: Client,
}

impl Harness {
    async fn new() -> Harness {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis_url(), &prefix)
            .await
            .expect("redis must be running");
        let queue = broker.queue("jobs");
        let mut consumers = Vec::new();
        for size in BATCH_SIZES {
            let mut o = ConsumerOptions::new("model");
            o.batch_size = size;
            o.linger = Duration::ZERO;
            o.block = Duration::from_millis(1);
            o.mode = PriorityMode::Strict;
            consumers.push(queue.consumer(o).await.unwrap());
        }
        let names = consumers
            .iter()
            .map(|c| c.options().consumer.clone())
            .collect();
        let raw = raw_client().await;
        let _: i64 = raw
            .hset(queue.keys().idempotency(BROKEN_KEY), ("not", "a string"))
            .await
            .unwrap();
        Harness {
            queue,
            consumers,
            names,
            raw,
        }
    }

    async fn finish(self) {
        let _ = self.queue.destroy().await;
        let _: Result<(), _> = self.raw.quit().await;
    }
}

/// Applies the outcome of an enqueue of `specs` to the model, checking it against the model.
fn enqueued(model: &mut Model, specs: &[JobSpec], out: &[Enqueued]) -> Check {
    check!(
        out.len() == specs.len(),
        "{} outcomes for {} jobs",
        out.len(),
        specs.len()
    );
    for (spec, e) in specs.iter().zip(out) {
        if let Some(first) = spec.key.and_then(|k| model.keys.get(&k)) {
            check!(
                e.duplicate && e.job_id.as_str() == first,
                "key {:?} was taken by {first}, got {e:?}",
                spec.key
            );
            continue;
        }
        let id = e.job_id.as_str().to_owned();
        check!(!e.duplicate, "a first enqueue reported as duplicate: {e:?}");
        check!(!model.jobs.contains_key(&id), "job id {id} given twice");
        if let Some(k) = spec.key {
            model.keys.insert(k, id.clone());
        }
        model.jobs.insert(
            id.clone(),
            ModelJob {
                priority: spec.priority,
                max_attempts: spec.max_attempts,
                attempts: 0,
                place: if spec.delayed {
                    Place::Delayed
                } else {
                    Place::Waiting(spec.priority)
                },
            },
        );
        model.order.push(id);
    }
    Ok(())
}

/// Applies a read's deliveries to the model, checking each was waiting and the batch obeyed
/// its size and strict priorities.
fn delivered(model: &mut Model, consumer: usize, batch: Vec<Delivery>, waiting: usize) -> Check {
    check!(
        batch.len() <= BATCH_SIZES[consumer],
        "a batch of {} for a batch size of {}",
        batch.len(),
        BATCH_SIZES[consumer]
    );
    check!(
        waiting == 0 || !batch.is_empty(),
        "nothing read while {waiting} jobs were waiting"
    );
    for d in &batch {
        let job = model
            .jobs
            .get_mut(d.job_id.as_str())
            .ok_or_else(|| format!("delivered an unknown job {}", d.job_id))?;
        check!(
            job.place == Place::Waiting(d.priority),
            "delivered job {} from {} while the model has it {:?}",
            d.job_id,
            d.priority,
            job.place
        );
        check!(
            d.attempts == job.attempts,
            "job {} delivered with {} attempts, model {}",
            d.job_id,
            d.attempts,
            job.attempts
        );
        job.place = Place::Pending {
            consumer,
            priority: d.priority,
            stream_id: d.stream_id.clone(),
        };
    }
    // Strict priorities: a batch holding a level leaves nothing of a higher level waiting.
    if let Some(lowest) = batch.iter().map(|d| d.priority).max() {
        let passed_over = model.count(|p| matches!(p, Place::Waiting(q) if *q < lowest));
        check!(
            passed_over == 0,
            "{passed_over} higher-priority jobs left waiting"
        );
    }
    model.held[consumer].extend(batch);
    Ok(())
}

/// Counts an attempt: the job dies when it has none left, otherwise `next` is where it goes.
fn attempt(job: &mut ModelJob, next: Place) {
    job.attempts += 1;
    job.place = if job.attempts >= job.max_attempts {
        Place::Dead
    } else {
        next
    };
}

async fn step(h: &mut Harness, model: &mut Model, op: &Op) -> Check {
    let q = h.queue.clone();
    match op {
        Op::Enqueue(spec) => {
            let e = q
                .enqueue(&0u8, &spec.options())
                .await
                .map_err(|e| format!("enqueue failed: {e}"))?;
            enqueued(model, std::slice::from_ref(spec), &[e])?;
        }
        Op::EnqueueBatch(specs) => {
            let jobs: Vec<(u8, EnqueueOptions)> = specs.iter().map(|s| (0, s.options())).collect();
            let out = q
                .enqueue_batch(&jobs)
                .await
                .map_err(|e| format!("enqueue_batch failed: {e}"))?;
            enqueued(model, specs, &out)?;
        }
        Op::EnqueueBatchFailing { jobs, at } => {
            let mut batch: Vec<(u8, EnqueueOptions)> =
                jobs.iter().map(|s| (0, s.options())).collect();
            batch.insert(
                (*at).min(batch.len()),
                (0, EnqueueOptions::default().idempotent(BROKEN_KEY)),
            );
            let r = q.enqueue_batch(&batch).await;
            check!(r.is_err(), "a batch with a broken key succeeded: {r:?}");
        }
        Op::Read { consumer } => {
            let waiting = model.count(|p| matches!(p, Place::Waiting(_)));
            let batch = h.consumers[*consumer]
                .next_batch()
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            delivered(model, *consumer, batch, waiting)?;
        }
        Op::ReadWhileRemoving { consumer } => {
            let waiting = model.count(|p| matches!(p, Place::Waiting(_)));
            let (batch, removed) = tokio::join!(
                h.consumers[*consumer].next_batch(),
                q.remove_idle_consumers(Duration::ZERO)
            );
            let batch = batch.map_err(|e| format!("read failed: {e}"))?;
            let removed = removed.map_err(|e| format!("removal failed: {e}"))?;
            // The reader may go (it held nothing when the removal ran); any other consumer only
            // if it holds nothing.
            for name in removed {
                let c = h.names.iter().position(|n| *n == name);
                check!(c.is_some(), "removed an unknown consumer {name}");
                let c = c.unwrap();
                if c != *consumer {
                    let holds = model
                        .count(|p| matches!(p, Place::Pending { consumer, .. } if *consumer == c));
                    check!(holds == 0, "removed consumer {c} holding {holds} entries");
                }
            }
            delivered(model, *consumer, batch, waiting)?;
        }
        Op::Ack { consumer, mask } => {
            let held = &mut model.held[*consumer];
            let picked: Vec<usize> = (0..held.len().min(8))
                .filter(|i| mask & (1 << i) != 0)
                .collect();
            if picked.is_empty() {
                return Ok(());
            }
            let ds: Vec<Delivery> = picked.iter().rev().map(|&i| held.remove(i)).collect();
            let current: Vec<&Delivery> = ds
                .iter()
                .filter(|d| model.is_current(*consumer, d))
                .collect();
            let acked = h.consumers[*consumer]
                .ack(&ds.iter().collect::<Vec<_>>())
                .await
                .map_err(|e| format!("ack failed: {e}"))?;
            check!(
                acked as usize == current.len(),
                "acknowledged {acked} of {} deliveries, {} of them current",
                ds.len(),
                current.len()
            );
            let ids: Vec<String> = current.iter().map(|d| d.job_id.to_string()).collect();
            for id in ids {
                model.job(&id).place = Place::Done;
            }
        }
        Op::Retry { consumer, pick }
        | Op::Defer { consumer, pick }
        | Op::DeadLetter { consumer, pick } => {
            let held = &mut model.held[*consumer];
            if held.is_empty() {
                return Ok(());
            }
            let d = held.remove(pick % held.len());
            let current = model.is_current(*consumer, &d);
            let c = &h.consumers[*consumer];
            let id = d.job_id.to_string();
            match op {
                Op::Retry { .. } => {
                    let out = c
                        .retry(&d, RetryAfter::Exactly(DELAY), "model")
                        .await
                        .map_err(|e| format!("retry failed: {e}"))?;
                    if !current {
                        check!(
                            out == RetryOutcome::Stale,
                            "retry of a stale delivery: {out:?}"
                        );
                        return Ok(());
                    }
                    let job = model.job(&id);
                    attempt(job, Place::Delayed);
                    let expected = if job.place == Place::Dead {
                        RetryOutcome::DeadLettered
                    } else {
                        RetryOutcome::Scheduled { delay: DELAY }
                    };
                    check!(out == expected, "retry gave {out:?}, expected {expected:?}");
                }
                Op::Defer { .. } => {
                    let deferred = c
                        .defer(&d, DELAY)
                        .await
                        .map_err(|e| format!("defer failed: {e}"))?;
                    check!(
                        deferred == current,
                        "defer gave {deferred}, current {current}"
                    );
                    if current {
                        model.job(&id).place = Place::Delayed;
                    }
                }
                _ => {
                    let dead = c
                        .dead_letter(&d, "model", "model")
                        .await
                        .map_err(|e| format!("dead-letter failed: {e}"))?;
                    check!(
                        dead == current,
                        "dead-letter gave {dead}, current {current}"
                    );
                    if current {
                        let job = model.job(&id);
                        job.attempts += 1;
                        job.place = Place::Dead;
                    }
                }
            }
        }
        Op::Reclaim => {
            let r = q
                .reclaim_stalled(GROUP_DEFAULT, Duration::ZERO, 1_000, now_ms())
                .await
                .map_err(|e| format!("reclaim failed: {e}"))?;
            let (mut requeued, mut dead) = (0, 0);
            for job in model.jobs.values_mut() {
                if matches!(job.place, Place::Pending { .. }) {
                    attempt(job, Place::Waiting(job.priority));
                    if job.place == Place::Dead {
                        dead += 1;
                    } else {
                        requeued += 1;
                    }
                }
            }
            check!(
                (r.requeued, r.dead_lettered, r.gone) == (requeued, dead, 0),
                "reclaim gave {r:?}, expected {requeued} requeued and {dead} dead"
            );
        }
        Op::Promote => {
            let n = q
                .promote_due(now_ms() + DAY_MS, 1_000)
                .await
                .map_err(|e| format!("promote failed: {e}"))?;
            let mut expected = 0;
            for job in model.jobs.values_mut() {
                if job.place == Place::Delayed {
                    job.place = Place::Waiting(job.priority);
                    expected += 1;
                }
            }
            check!(n == expected, "promoted {n}, expected {expected}");
        }
        Op::Replay { picks } => {
            let dead: Vec<String> = model
                .order
                .iter()
                .filter(|id| model.jobs[*id].place == Place::Dead)
                .cloned()
                .collect();
            if dead.is_empty() {
                return Ok(());
            }
            let entries = q
                .dead_page(1_000, None)
                .await
                .map_err(|e| format!("dead_page failed: {e}"))?;
            let mut ids = Vec::new();
            let mut by_full_id = Vec::new();
            for (pick, partial) in picks {
                let job = &dead[pick % dead.len()];
                let entry = entries
                    .iter()
                    .find(|e| e.job_id.as_deref() == Some(job.as_str()))
                    .ok_or_else(|| format!("dead job {job} not in the dead-letter stream"))?;
                if *partial {
                    ids.push(entry.id.split('-').next().unwrap().to_owned());
                } else {
                    ids.push(entry.id.clone());
                    by_full_id.push(job.clone());
                }
            }
            let r = q.dead_replay(&ids).await;
            // A partial id may be refused (the call then replays nothing) or replay the entry it
            // names; a call of full ids replays each named entry. Which dead jobs left the
            // dead-letter stream says what happened; the checks after this step then require
            // each to be waiting, once, and the others still dead.
            let still_dead: Vec<String> = q
                .dead_page(1_000, None)
                .await
                .map_err(|e| format!("dead_page failed: {e}"))?
                .into_iter()
                .filter_map(|e| e.job_id)
                .collect();
            let left: Vec<&String> = dead.iter().filter(|j| !still_dead.contains(j)).collect();
            match &r {
                Ok(n) => {
                    check!(
                        *n as usize == left.len(),
                        "replay of {ids:?} gave {n}, {} left the dead-letter stream",
                        left.len()
                    );
                    for job in &by_full_id {
                        check!(left.contains(&job), "replay of {ids:?} left job {job} dead");
                    }
                }
                Err(e) => check!(
                    by_full_id.len() < ids.len() && left.is_empty(),
                    "replay of {ids:?} failed ({e}) with {} jobs replayed",
                    left.len()
                ),
            }
            for id in left.into_iter().cloned().collect::<Vec<_>>() {
                let job = model.job(&id);
                job.attempts = 0;
                job.place = Place::Waiting(job.priority);
            }
        }
        Op::Trim => {
            let keep_nothing = Retention {
                max_age: Duration::ZERO,
                max_count: 0,
            };
            q.trim(keep_nothing, 1_000, now_ms() + DAY_MS)
                .await
                .map_err(|e| format!("trim failed: {e}"))?;
        }
        Op::RemoveIdle => {
            let removed = q
                .remove_idle_consumers(Duration::ZERO)
                .await
                .map_err(|e| format!("removal failed: {e}"))?;
            for name in removed {
                let c = h.names.iter().position(|n| *n == name);
                check!(c.is_some(), "removed an unknown consumer {name}");
                let c = c.unwrap();
                let holds =
                    model.count(|p| matches!(p, Place::Pending { consumer, .. } if *consumer == c));
                check!(holds == 0, "removed consumer {c} holding {holds} entries");
            }
        }
    }
    Ok(())
}

/// Where Redis has a job, as read back from the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Waiting(Priority),
    Pending {
        consumer: String,
        priority: Priority,
        stream_id: String,
    },
    Delayed,
    Dead,
}

/// The job id and attempts of a header `1|<job id>|<attempts>|...`.
fn parse_header(h: &[u8]) -> Option<(String, u32)> {
    let h = std::str::from_utf8(h).ok()?;
    let mut parts = h.split('|');
    let _version = parts.next()?;
    let id = parts.next()?.to_owned();
    let attempts = parts.next()?.parse().ok()?;
    Some((id, attempts))
}

/// A stream entry's id, with its header's job id and attempts when it has a header.
type EntryJob = (String, Option<(String, u32)>);

/// `[id, [field, value, ...]]` entries of an `XRANGE` reply, with the header's job and attempts.
fn entries_of(v: &Value) -> Result<Vec<EntryJob>, String> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Array(pair) = item else {
            return Err(format!("entry {item:?}"));
        };
        let id = pair[0].as_string().ok_or("entry id")?;
        let mut header = None;
        if let Value::Array(fields) = &pair[1] {
            for kv in fields.chunks(2) {
                if kv[0].as_bytes() == Some(b"h") {
                    header = kv[1].as_bytes().and_then(parse_header);
                }
            }
        }
        out.push((id, header));
    }
    Ok(out)
}

fn id_parts(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Every job Redis holds, with where and with how many attempts.
async fn redis_view(h: &Harness) -> Result<Vec<(String, Found, u32)>, String> {
    let raw = &h.raw;
    let keys = h.queue.keys();
    let err = |e: fred::error::Error| e.to_string();
    let mut out = Vec::new();
    for p in Priority::ALL {
        let stream = keys.stream(p);
        let entries: Value = raw
            .custom(cmd!("XRANGE"), vec![stream, "-", "+"])
            .await
            .map_err(err)?;
        let groups: Value = raw
            .custom(cmd!("XINFO"), vec!["GROUPS", stream])
            .await
            .map_err(err)?;
        let mut last = "0-0".to_owned();
        if let Value::Array(groups) = groups {
            for g in groups {
                let Value::Array(kv) = g else { continue };
                let m: HashMap<String, Value> = kv
                    .chunks(2)
                    .filter_map(|c| Some((c[0].as_string()?, c[1].clone())))
                    .collect();
                if m.get("name").and_then(Value::as_string).as_deref() == Some(GROUP_DEFAULT) {
                    last = m["last-delivered-id"].as_string().unwrap_or(last);
                }
            }
        }
        let pel: Value = raw
            .custom(
                cmd!("XPENDING"),
                vec![stream, GROUP_DEFAULT, "-", "+", "10000"],
            )
            .await
            .map_err(err)?;
        let mut pending: HashMap<String, String> = HashMap::new();
        if let Value::Array(rows) = pel {
            for row in rows {
                let Value::Array(row) = row else { continue };
                pending.insert(
                    row[0].as_string().ok_or("pending id")?,
                    row[1].as_string().ok_or("pending consumer")?,
                );
            }
        }
        for (id, header) in entries_of(&entries)? {
            let (job, attempts) = header.ok_or_else(|| format!("entry {id} without a header"))?;
            let found = match pending.remove(&id) {
                Some(consumer) => Found::Pending {
                    consumer,
                    priority: p,
                    stream_id: id,
                },
                None if id_parts(&id) > id_parts(&last) => Found::Waiting(p),
                None => continue,
            };
            out.push((job, found, attempts));
        }
        check!(
            pending.is_empty(),
            "{p}: pending ids without an entry: {pending:?}"
        );
    }
    let delayed: Value = raw
        .custom(
            cmd!("ZRANGE"),
            vec![keys.delayed(), "0".into(), "-1".into()],
        )
        .await
        .map_err(err)?;
    if let Value::Array(members) = delayed {
        for m in members {
            // `<h|n|l>|<header length>|<header><payload>`
            let m = m.as_bytes().ok_or("delayed member")?;
            let rest = &m[2..];
            let bar = rest
                .iter()
                .position(|b| *b == b'|')
                .ok_or("member length")?;
            let len: usize = std::str::from_utf8(&rest[..bar])
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or("member length")?;
            let header = &rest[bar + 1..bar + 1 + len];
            let (job, attempts) = parse_header(header).ok_or("member header")?;
            out.push((job, Found::Delayed, attempts));
        }
    }
    let dead: Value = raw
        .custom(cmd!("XRANGE"), vec![keys.dead(), "-".into(), "+".into()])
        .await
        .map_err(err)?;
    for (id, header) in entries_of(&dead)? {
        let (job, attempts) = header.ok_or_else(|| format!("dead entry {id} without a header"))?;
        out.push((job, Found::Dead, attempts));
    }
    Ok(out)
}

/// Redis holds every job exactly where the model says, with the model's attempts, and nothing
/// else; the idempotency keys taken are exactly the model's; the inspector's counts agree.
async fn check_redis(h: &Harness, model: &Model) -> Check {
    let mut found: HashMap<String, Vec<(Found, u32)>> = HashMap::new();
    for (job, place, attempts) in redis_view(h).await? {
        found.entry(job).or_default().push((place, attempts));
    }
    for (id, job) in &model.jobs {
        let at = found.remove(id).unwrap_or_default();
        let expected = match &job.place {
            Place::Done => None,
            Place::Waiting(p) => Some(Found::Waiting(*p)),
            Place::Pending {
                consumer,
                priority,
                stream_id,
            } => Some(Found::Pending {
                consumer: h.names[*consumer].clone(),
                priority: *priority,
                stream_id: stream_id.clone(),
            }),
            Place::Delayed => Some(Found::Delayed),
            Place::Dead => Some(Found::Dead),
        };
        match expected {
            None => check!(at.is_empty(), "job {id} is done but Redis has it at {at:?}"),
            Some(e) => check!(
                at == [(e.clone(), job.attempts)],
                "job {id}: model {e:?} with {} attempts, Redis {at:?}",
                job.attempts
            ),
        }
    }
    check!(
        found.is_empty(),
        "jobs Redis holds that the model does not: {found:?}"
    );
    for k in 0..KEY_POOL {
        let taken: Option<String> = h
            .raw
            .get(h.queue.keys().idempotency(&format!("k{k}")))
            .await
            .map_err(|e| e.to_string())?;
        check!(
            taken.as_ref() == model.keys.get(&k),
            "idempotency key k{k}: Redis {taken:?}, model {:?}",
            model.keys.get(&k)
        );
    }
    let stats = h.queue.stats().await.map_err(|e| e.to_string())?;
    let delayed = model.count(|p| *p == Place::Delayed) as u64;
    let dead = model.count(|p| *p == Place::Dead) as u64;
    let pending = model.count(|p| matches!(p, Place::Pending { .. })) as u64;
    check!(
        (stats.delayed, stats.dead, stats.pending()) == (delayed, dead, pending),
        "inspector counts delayed {}, dead {}, pending {}; model {delayed}, {dead}, {pending}",
        stats.delayed,
        stats.dead,
        stats.pending()
    );
    Ok(())
}

async fn run_case(ops: Vec<Op>) -> Check {
    let mut h = Harness::new().await;
    let mut model = Model::default();
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        result = match step(&mut h, &mut model, op).await {
            Ok(()) => check_redis(&h, &model).await,
            e => e,
        }
        .map_err(|e| format!("step {i} ({op:?}): {e}"));
        if result.is_err() {
            break;
        }
    }
    h.finish().await;
    result
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Each case runs against Redis: keep shrinking bounded, and store no regression files.
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn scripts_keep_every_job_in_exactly_one_place(ops in prop::collection::vec(op(), 1..=MAX_OPS)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_case(ops)).map_err(TestCaseError::fail)?;
    }
}
