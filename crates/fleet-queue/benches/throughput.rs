//! Queue-core throughput, beside the machine's limit measured in the same run.
//!
//! Run: `cargo bench -p fleet-queue --bench throughput` (needs Redis at `REDIS_URL`, default
//! local, and `redis-benchmark` on the PATH for the baseline). `BENCH_MESSAGES` sets the number
//! of messages per case (default 200,000). Prints one line per case and a Markdown table.
//!
//! Cases:
//! - `redis-benchmark XADD -P 64 -c 50`: the machine's limit for appends (baseline);
//! - batch enqueue: `enqueue_batch` of 500 jobs (about 200-byte payloads), 4 batches in flight;
//! - single enqueue: 64 tasks each awaiting one `enqueue` at a time;
//! - consume + ack: `BENCH_CONSUMERS` consumers (default 2), batches of 500, each batch
//!   acknowledged before the next read.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use fleet_core::{EnqueueOptions, Priority};
use fleet_queue::{Broker, ConsumerOptions, PriorityMode};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn payload(i: usize) -> String {
    // About 200 bytes, like a small normalized message.
    format!("{i:010}-{}", "x".repeat(188))
}

/// Runs redis-benchmark's pipelined XADD and returns requests per second, if it is installed.
fn redis_benchmark_xadd(n: usize, key: &str) -> Option<f64> {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-n",
            &n.to_string(),
            "-c",
            "50",
            "-P",
            "64",
            "-q",
            "--csv",
        ])
        .args(["XADD", key, "*", "p", &payload(0)])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",...
    text.lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next()
}

fn report(rows: &mut Vec<(String, usize, Duration)>, name: &str, n: usize, took: Duration) {
    println!(
        "{name:<40} {n:>9} msgs in {:>8.3} s = {:>10.0} msgs/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    rows.push((name.to_owned(), n, took));
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let prefix = format!("bench-{}", std::process::id());
    let broker = Broker::connect(&redis_url(), &prefix)
        .await
        .expect("redis must be running");
    let mut rows = Vec::new();

    let baseline_key = format!("{prefix}:{{baseline}}:xadd");
    match redis_benchmark_xadd(n * 5, &baseline_key) {
        Some(rps) => {
            println!(
                "{:<40} {:>9} msgs            = {rps:>10.0} msgs/s",
                "redis-benchmark XADD -P 64 -c 50",
                n * 5
            );
            rows.push((
                "redis-benchmark XADD -P 64 -c 50 (limit)".into(),
                n * 5,
                Duration::from_secs_f64(n as f64 * 5.0 / rps),
            ));
        }
        None => println!("redis-benchmark not found: baseline skipped"),
    }
    let _: Result<(), _> =
        fred::interfaces::KeysInterface::del::<(), _>(&fred_client().await, baseline_key).await;

    // Batch enqueue.
    let q = broker.queue("batch");
    let start = Instant::now();
    let in_flight = 4;
    let per_task = n / in_flight;
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for chunk_start in (0..per_task).step_by(500) {
                let batch: Vec<(String, EnqueueOptions)> = (chunk_start
                    ..(chunk_start + 500).min(per_task))
                    .map(|i| {
                        (
                            payload(t * per_task + i),
                            EnqueueOptions::with_priority(Priority::Normal),
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
    report(
        &mut rows,
        "batch enqueue (500 per batch, 4 in flight)",
        per_task * in_flight,
        start.elapsed(),
    );

    // Consume + ack of what the batch case enqueued.
    let total = per_task * in_flight;
    let consumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let consumers: usize = std::env::var("BENCH_CONSUMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for _ in 0..consumers {
        let mut o = ConsumerOptions::new("bench");
        o.batch_size = 500;
        o.linger = Duration::ZERO;
        o.block = Duration::from_millis(100);
        o.mode = PriorityMode::Strict;
        let mut c = q.consumer(o).await.unwrap();
        let consumed = consumed.clone();
        tasks.push(tokio::spawn(async move {
            while consumed.load(std::sync::atomic::Ordering::Relaxed) < total {
                let b = c.next_batch().await.unwrap();
                if b.is_empty() {
                    continue;
                }
                c.ack(&b.iter().collect::<Vec<_>>()).await.unwrap();
                consumed.fetch_add(b.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        &mut rows,
        &format!("consume + ack (batches of 500, {consumers} consumers)"),
        total,
        start.elapsed(),
    );
    q.destroy().await.unwrap();

    // Single enqueue at concurrency 64.
    let q = broker.queue("single");
    let start = Instant::now();
    let per_task = n / 64;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let opts = EnqueueOptions::default();
            for i in 0..per_task {
                q.enqueue(&payload(t * per_task + i), &opts).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        &mut rows,
        "single enqueue (64 concurrent tasks)",
        per_task * 64,
        start.elapsed(),
    );
    q.destroy().await.unwrap();

    // Idempotent single enqueue (the ingest path): SET NX + XADD in one script.
    let q = broker.queue("idem");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let opts = EnqueueOptions::default().idempotent(format!("k{t}-{i}"));
                q.enqueue(&payload(t * per_task + i), &opts).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        &mut rows,
        "idempotent single enqueue (64 tasks)",
        per_task * 64,
        start.elapsed(),
    );
    q.destroy().await.unwrap();

    println!("\n| case | messages | seconds | msgs/s |\n|---|---:|---:|---:|");
    for (name, n, took) in rows {
        println!(
            "| {name} | {n} | {:.3} | {:.0} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
}

async fn fred_client() -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let c = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&redis_url()).unwrap(),
    )
    .build()
    .unwrap();
    c.init().await.unwrap();
    c
}
