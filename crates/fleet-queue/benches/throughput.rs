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
//! - consume + ack: `BENCH_CONSUMERS` consumers (default 4), batches of 500, each batch
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

/// CPU seconds used so far by this process (all threads) and by the Redis server, so each case
/// can report CPU per message beside its rate: on a shared 2-core machine the rate moves with the
/// neighbours, the CPU cost per message much less.
#[derive(Clone, Copy)]
struct CpuMark {
    own: f64,
    redis: f64,
}

impl CpuMark {
    async fn now(redis: &fred::clients::Client) -> CpuMark {
        use fred::interfaces::ClientLike;
        // utime and stime of /proc/self/stat, in clock ticks (100 per second on Linux).
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
                Some(
                    (after.get(11)?.parse::<f64>().ok()? + after.get(12)?.parse::<f64>().ok()?)
                        / 100.0,
                )
            })
            .unwrap_or(f64::NAN);
        let info: String = redis
            .custom(fred::cmd!("INFO"), vec!["cpu"])
            .await
            .unwrap_or_default();
        let redis_cpu = info
            .lines()
            .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
            .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
            .sum();
        CpuMark {
            own,
            redis: redis_cpu,
        }
    }
}

struct Row {
    name: String,
    n: usize,
    took: Duration,
    /// CPU microseconds per message: (this process, Redis).
    cpu_us: Option<(f64, f64)>,
}

async fn report(
    rows: &mut Vec<Row>,
    redis: &fred::clients::Client,
    name: &str,
    n: usize,
    took: Duration,
    before: CpuMark,
) {
    let after = CpuMark::now(redis).await;
    let per = |a: f64, b: f64| (a - b) * 1e6 / n as f64;
    let cpu_us = (per(after.own, before.own), per(after.redis, before.redis));
    println!(
        "{name:<46} {n:>9} msgs in {:>7.3} s = {:>9.0} msgs/s  (CPU/msg: bench {:.2} us, redis {:.2} us)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        cpu_us.0,
        cpu_us.1,
    );
    rows.push(Row {
        name: name.to_owned(),
        n,
        took,
        cpu_us: Some(cpu_us),
    });
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it: then
    // a smoke run of 1,000 messages checks that every case still works, without timing anything.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = if smoke {
        1_000
    } else {
        std::env::var("BENCH_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000)
    };
    let prefix = format!("bench-{}", std::process::id());
    let broker = Broker::connect(&redis_url(), &prefix)
        .await
        .expect("redis must be running");
    let mut rows = Vec::new();
    // `BENCH_CASES=consume,single` runs only those cases (for profiling one of them); consume
    // needs what batch enqueue wrote, so it runs that too. Default: every case.
    let cases = std::env::var("BENCH_CASES").unwrap_or_default();
    let wanted = |case: &str| cases.is_empty() || cases.split(',').any(|c| c.trim() == case);

    let baseline_key = format!("{prefix}:{{baseline}}:xadd");
    let baseline = if wanted("baseline") {
        redis_benchmark_xadd(n * 5, &baseline_key)
    } else {
        None
    };
    match baseline {
        Some(rps) => {
            println!(
                "{:<40} {:>9} msgs            = {rps:>10.0} msgs/s",
                "redis-benchmark XADD -P 64 -c 50",
                n * 5
            );
            rows.push(Row {
                name: "redis-benchmark XADD -P 64 -c 50 (limit)".into(),
                n: n * 5,
                took: Duration::from_secs_f64(n as f64 * 5.0 / rps),
                cpu_us: None,
            });
        }
        None => println!("redis-benchmark not found: baseline skipped"),
    }
    // A client of its own for the measurements, so they never queue behind the cases' commands.
    let meter = fred_client().await;
    let _: Result<(), _> =
        fred::interfaces::KeysInterface::del::<(), _>(&meter, baseline_key).await;

    // Batch enqueue.
    let q = broker.queue("batch");
    let in_flight = 4;
    let per_task = n / in_flight;
    if wanted("batch") || wanted("consume") {
        let mark = CpuMark::now(&meter).await;
        let start = Instant::now();
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
            &meter,
            "batch enqueue (500 per batch, 4 in flight)",
            per_task * in_flight,
            start.elapsed(),
            mark,
        )
        .await;
    }

    // Consume + ack of what the batch case enqueued.
    if wanted("consume") {
        let total = per_task * in_flight;
        let consumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mark = CpuMark::now(&meter).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        let consumers: usize = std::env::var("BENCH_CONSUMERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
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
            &meter,
            &format!("consume + ack (batches of 500, {consumers} consumers)"),
            total,
            start.elapsed(),
            mark,
        )
        .await;
    }
    q.destroy().await.unwrap();

    // Single enqueue at concurrency 64.
    let q = broker.queue("single");
    let per_task = n / 64;
    if wanted("single") {
        let mark = CpuMark::now(&meter).await;
        let start = Instant::now();
        enqueue_one_at_a_time(&q, per_task, false).await;
        report(
            &mut rows,
            &meter,
            "single enqueue (64 concurrent tasks)",
            per_task * 64,
            start.elapsed(),
            mark,
        )
        .await;
    }
    q.destroy().await.unwrap();

    // Idempotent single enqueue (the ingest path): SET NX + XADD in one script.
    let q = broker.queue("idem");
    if wanted("idempotent") {
        let mark = CpuMark::now(&meter).await;
        let start = Instant::now();
        enqueue_one_at_a_time(&q, per_task, true).await;
        report(
            &mut rows,
            &meter,
            "idempotent single enqueue (64 tasks)",
            per_task * 64,
            start.elapsed(),
            mark,
        )
        .await;
    }
    q.destroy().await.unwrap();

    println!(
        "\n| case | messages | seconds | msgs/s | bench CPU us/msg | Redis CPU us/msg |\n|---|---:|---:|---:|---:|---:|"
    );
    for Row {
        name,
        n,
        took,
        cpu_us,
    } in rows
    {
        let (own, redis) = cpu_us.map_or(("".into(), "".into()), |(o, r)| {
            (format!("{o:.2}"), format!("{r:.2}"))
        });
        println!(
            "| {name} | {n} | {:.3} | {:.0} | {own} | {redis} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
}

/// 64 tasks, each awaiting one `enqueue` at a time, `per_task` each; with an idempotency key per
/// job when `idempotent` (the ingest path: the key's check and the append in one script).
async fn enqueue_one_at_a_time(q: &fleet_queue::Queue, per_task: usize, idempotent: bool) {
    let mut tasks = Vec::new();
    for t in 0..64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let plain = EnqueueOptions::default();
            for i in 0..per_task {
                let keyed;
                let opts = if idempotent {
                    keyed = EnqueueOptions::default().idempotent(format!("k{t}-{i}"));
                    &keyed
                } else {
                    &plain
                };
                q.enqueue(&payload(t * per_task + i), opts).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
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
