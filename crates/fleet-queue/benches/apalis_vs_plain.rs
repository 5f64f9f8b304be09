//! No-op worker throughput: a plain tokio loop against apalis 1.0 over our Streams backend, in the
//! same run, for ADR 0001 (the worker runtime).
//!
//! Run: `cargo bench -p fleet-queue --features apalis --bench apalis_vs_plain` (needs Redis at
//! `REDIS_URL`, default local). `BENCH_MESSAGES` sets the queue's pre-filled size (default
//! 200,000), `BENCH_ROUNDS` the rounds (default 3; cases interleave, so a noisy neighbour hurts
//! every case alike); the median round of each case is reported. `BENCH_CASES` picks cases by
//! number (0 to 5, in the order below), the plain loop always included.
//!
//! Every case drains its own queue, pre-filled (untimed) with about 200-byte payloads, with one
//! consumer, and is timed from the first read to the last acknowledgement; each case checks that
//! nothing is left pending or waiting.
//! - plain loop: `next_batch` (500) then `ack` of the whole batch, one task;
//! - plain loop, overlapped: the same, with each ack running while the next batch is read;
//! - plain single: the same read, then each job acknowledged on its own by up to 100 concurrent
//!   no-op handlers (the baseline for single mode);
//! - apalis single: one task per delivery, concurrency 100, reads of 500, one ack per job;
//! - apalis batch: one task per batch of 500, concurrency 1 (the plain loop's shape) and 2
//!   (the next read overlaps the current batch's ack).
//!
//! The apalis workers carry the layers a Fleet worker would: catch-panic, a timeout, tracing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use fleet_core::EnqueueOptions;
use fleet_queue::{
    Broker, ConsumerOptions, Delivery, PriorityMode, Queue,
    apalis_backend::{JobError, StreamsBackend},
};
use futures::StreamExt;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// CPU time (user + system) this process used so far, from `/proc/self/stat` (ticks of 10 ms);
/// zero where there is no procfs. Wall time on a shared machine is noisy; the worker's own CPU
/// per message is what a runtime adds.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11) // utime is field 14 of the line, the 12th after the command name
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options() -> ConsumerOptions {
    let mut o = ConsumerOptions::new("bench");
    o.batch_size = 500;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(100);
    o.mode = PriorityMode::Strict;
    o
}

/// Fills a fresh queue with `n` jobs (4 batches of 1,000 in flight); not timed.
async fn filled(broker: &Broker, name: &str, n: usize) -> Queue {
    let q = broker.queue(name);
    q.destroy().await.unwrap();
    let per_task = n.div_ceil(4);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let (from, to) = (t * per_task, ((t + 1) * per_task).min(n));
            for start in (from..to).step_by(1_000) {
                let batch: Vec<(String, EnqueueOptions)> = (start..(start + 1_000).min(to))
                    .map(|i| {
                        (
                            format!("{i:010}-{}", "x".repeat(188)),
                            EnqueueOptions::default(),
                        )
                    })
                    .collect();
                q.enqueue_batch(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(q.backlog().await.unwrap(), n as u64);
    q
}

/// Checks the queue was drained and acknowledged, then deletes it.
async fn drained(q: Queue) {
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending(), stats.delayed, stats.dead),
        (0, 0, 0),
        "{}",
        q.name()
    );
    assert_eq!(q.backlog().await.unwrap(), 0);
    q.destroy().await.unwrap();
}

async fn plain_loop(q: &Queue, n: usize) -> Duration {
    let mut c = q.consumer(options()).await.unwrap();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = c.next_batch().await.unwrap();
        c.ack(&batch.iter().collect::<Vec<_>>()).await.unwrap();
        done += batch.len();
    }
    start.elapsed()
}

/// The plain loop with each batch's ack overlapping the next read (one ack in flight), as apalis
/// does in batch mode (its concurrency permit is released before the ack): a second consumer
/// handle of the same name acknowledges while the first reads.
async fn plain_overlapped(q: &Queue, n: usize) -> Duration {
    let o = options();
    let mut c = q.consumer(o.clone()).await.unwrap();
    let settler = Arc::new(q.consumer(o).await.unwrap());
    let start = Instant::now();
    let mut done = 0;
    let mut acking: Option<tokio::task::JoinHandle<()>> = None;
    while done < n {
        let batch = c.next_batch().await.unwrap();
        if let Some(previous) = acking.take() {
            previous.await.unwrap();
        }
        done += batch.len();
        let settler = settler.clone();
        acking = Some(tokio::spawn(async move {
            settler
                .ack(&batch.iter().collect::<Vec<_>>())
                .await
                .unwrap();
        }));
    }
    if let Some(last) = acking {
        last.await.unwrap();
    }
    start.elapsed()
}

/// The single-mode baseline without apalis: each read batch is handled by up to 100 concurrent
/// no-op handlers, each acknowledging its own job, before the next read.
async fn plain_single(q: &Queue, n: usize) -> Duration {
    let mut c = q.consumer(options()).await.unwrap();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = c.next_batch().await.unwrap();
        let c = &c;
        futures::stream::iter(&batch)
            .for_each_concurrent(100, |d| async move {
                c.ack(&[d]).await.unwrap();
            })
            .await;
        done += batch.len();
    }
    start.elapsed()
}

#[derive(Clone)]
struct Target {
    done: Arc<AtomicUsize>,
    n: usize,
}

async fn noop_one(_d: Delivery, t: Data<Target>, w: WorkerContext) -> Result<(), JobError> {
    if t.done.fetch_add(1, Ordering::Relaxed) + 1 == t.n {
        w.stop().unwrap();
    }
    Ok(())
}

async fn noop_batch(b: Vec<Delivery>, t: Data<Target>, w: WorkerContext) -> Result<(), JobError> {
    if t.done.fetch_add(b.len(), Ordering::Relaxed) + b.len() == t.n {
        w.stop().unwrap();
    }
    Ok(())
}

async fn apalis_single(q: &Queue, n: usize) -> Duration {
    let target = Target {
        done: Arc::default(),
        n,
    };
    let start = Instant::now();
    WorkerBuilder::new("bench-single")
        .backend(StreamsBackend::single(q.clone(), options()))
        .data(target)
        .enable_tracing()
        .concurrency(100)
        .catch_panic()
        .timeout(Duration::from_secs(30))
        .build(noop_one)
        .run()
        .await
        .unwrap();
    start.elapsed()
}

async fn apalis_batch(q: &Queue, n: usize, concurrency: usize) -> Duration {
    let target = Target {
        done: Arc::default(),
        n,
    };
    let start = Instant::now();
    WorkerBuilder::new("bench-batch")
        .backend(StreamsBackend::batch(q.clone(), options()))
        .data(target)
        .enable_tracing()
        .concurrency(concurrency)
        .catch_panic()
        .timeout(Duration::from_secs(30))
        .build(noop_batch)
        .run()
        .await
        .unwrap();
    start.elapsed()
}

const CASES: [&str; 6] = [
    "plain loop: next_batch(500) + ack",
    "plain loop, ack overlapping next read",
    "plain single: per-job ack, 100 concurrent",
    "apalis single, concurrency 100",
    "apalis batch of 500, concurrency 1",
    "apalis batch of 500, concurrency 2",
];

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it: then
    // one round of 1,000 messages checks that every case still works, without timing anything.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke {
        1_000
    } else {
        env_usize("BENCH_MESSAGES", 200_000)
    };
    let rounds = if smoke {
        1
    } else {
        env_usize("BENCH_ROUNDS", 3).max(1)
    };
    // `BENCH_CASES=0,4,5` runs only those cases (numbered as in `CASES`); the plain loop (0) is
    // always run, as the reference.
    let only: Option<Vec<usize>> = std::env::var("BENCH_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect());
    let wanted = |i: usize| i == 0 || only.as_ref().is_none_or(|o| o.contains(&i));
    let prefix = format!("bench-apalis-{}", std::process::id());
    let broker = Broker::connect(&redis_url(), &prefix)
        .await
        .expect("redis must be running");
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); CASES.len()];
    let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); CASES.len()];
    for round in 1..=rounds {
        for (i, case) in CASES.iter().enumerate().filter(|(i, _)| wanted(*i)) {
            let q = filled(&broker, &format!("case{i}"), n).await;
            let cpu_before = cpu_time();
            let took = match i {
                0 => plain_loop(&q, n).await,
                1 => plain_overlapped(&q, n).await,
                2 => plain_single(&q, n).await,
                3 => apalis_single(&q, n).await,
                4 => apalis_batch(&q, n, 1).await,
                _ => apalis_batch(&q, n, 2).await,
            };
            let cpu = cpu_time().saturating_sub(cpu_before);
            drained(q).await;
            println!(
                "round {round} {case:<42} {n:>8} in {:>7.3} s = {:>9.0} msgs/s, worker CPU {:>5.2} us/msg",
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / n as f64
            );
            times[i].push(took);
            cpus[i].push(cpu);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let plain = n as f64 / median(&mut times[0]).as_secs_f64();
    println!(
        "\n| case (median of {rounds}) | msgs/s | vs plain loop | worker CPU us/msg |\n|---|---:|---:|---:|"
    );
    for ((case, t), c) in CASES.iter().zip(times.iter_mut()).zip(cpus.iter_mut()) {
        if t.is_empty() {
            continue;
        }
        let rate = n as f64 / median(t).as_secs_f64();
        let cpu = median(c).as_secs_f64() * 1e6 / n as f64;
        println!(
            "| {case} | {rate:.0} | {:+.1}% | {cpu:.2} |",
            (rate / plain - 1.0) * 100.0
        );
    }
}
