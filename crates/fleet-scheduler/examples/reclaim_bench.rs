//! Benchmark of the scheduler's heavy paths on the real Redis: 100,000 stalled entries reclaimed
//! (target: under 10 s, no single Redis call over 10 ms), then 100,000 due delayed entries
//! promoted and 200,000 acknowledged entries trimmed, with Redis's SLOWLOG (threshold 10 ms) and
//! LATENCY monitor watching every call. Not a test: numbers depend on the machine.
//!
//! Run: `cargo run --release -p fleet-scheduler --example reclaim_bench [-- <entries>]`
//! (`REDIS_URL` as usual). It temporarily sets `slowlog-log-slower-than`, `slowlog-max-len` and
//! `latency-monitor-threshold` and restores them afterwards, and deletes its keys.
//! `BENCH_SLOW_US=1000` lowers the SLOWLOG threshold to show how close calls come to 10 ms.

use std::time::{Duration, Instant};

use fleet_core::EnqueueOptions;
use fleet_queue::{Broker, ConsumerOptions, GROUP_DEFAULT, PriorityMode, now_ms};
use fleet_scheduler::{
    delayed::{self, Delayed},
    retention::{self, Retention},
    stalled::{self, Stalled},
};
use fred::{cmd, prelude::*, types::Value};

/// The SLOWLOG threshold the issue sets: no scheduler call may take longer. `BENCH_SLOW_US`
/// lowers it to see how close the calls come.
fn slow_us() -> i64 {
    std::env::var("BENCH_SLOW_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("bench-{}", std::process::id());
    let broker = Broker::connect(&url, &prefix).await?;
    let raw = Client::new(Config::from_url(&url)?, None, None, None);
    raw.init().await?;

    let saved = [
        config_get(&raw, "slowlog-log-slower-than").await?,
        config_get(&raw, "slowlog-max-len").await?,
        config_get(&raw, "latency-monitor-threshold").await?,
    ];
    let result = bench(&broker, &raw, &prefix, n).await;
    // Restore the server's settings and remove the keys whatever happened.
    for (name, value) in [
        "slowlog-log-slower-than",
        "slowlog-max-len",
        "latency-monitor-threshold",
    ]
    .into_iter()
    .zip(saved)
    {
        config_set(&raw, name, &value).await?;
    }
    broker.queue("inbound").destroy().await?;
    result
}

async fn bench(broker: &Broker, raw: &Client, prefix: &str, n: usize) -> Result<(), BoxError> {
    let q = broker.queue("inbound");
    q.destroy().await?;

    // Setup: n entries enqueued, all read by a consumer that never acknowledges (it died).
    let t = Instant::now();
    let payload = vec![7u8; 200];
    let jobs: Vec<(Vec<u8>, EnqueueOptions)> = (0..n)
        .map(|_| (payload.clone(), EnqueueOptions::default()))
        .collect();
    q.enqueue_batch(&jobs).await?;
    let mut o = ConsumerOptions::new("bench-doomed");
    o.batch_size = 1_000;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(10);
    o.mode = PriorityMode::Strict;
    let mut doomed = q.consumer(o).await?;
    let mut held = 0;
    while held < n {
        let got = doomed.next_batch().await?;
        if got.is_empty() {
            break;
        }
        held += got.len();
    }
    drop(doomed);
    println!(
        "setup: {n} entries enqueued and held by a dead consumer in {:?}",
        t.elapsed()
    );
    assert_eq!(held, n);

    // 1. Stalled recovery, default batch sizes, every pending entry past its lease.
    start_watch(raw).await?;
    let task = Stalled::new(
        stalled::Config {
            lease: Duration::ZERO,
            ..Default::default()
        },
        GROUP_DEFAULT,
        vec![q.clone()],
    );
    let t = Instant::now();
    let (mut reclaimed, mut runs) = (0, 0);
    loop {
        let o = task.run_once(now_ms()).await?;
        runs += 1;
        reclaimed += o.reclaimed + o.dead_lettered;
        if o.reclaimed + o.dead_lettered + o.gone == 0 {
            break;
        }
    }
    let took = t.elapsed();
    println!(
        "reclaim: {reclaimed} stalled entries in {took:?} ({runs} runs, {:.0} entries/s, batch {})",
        reclaimed as f64 / took.as_secs_f64(),
        stalled::BATCH_SIZE_DEFAULT
    );
    report(raw, prefix, "reclaim").await?;

    // The reclaimed entries are read and acknowledged by a live consumer (not timed).
    let mut o = ConsumerOptions::new("bench-live");
    o.batch_size = 1_000;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(10);
    let mut live = q.consumer(o).await?;
    loop {
        let got = live.next_batch().await?;
        if got.is_empty() {
            break;
        }
        live.ack(&got.iter().collect::<Vec<_>>()).await?;
    }

    // 2. Delayed promotion of n due entries.
    let delayed_jobs: Vec<(Vec<u8>, EnqueueOptions)> = (0..n)
        .map(|_| {
            (
                payload.clone(),
                EnqueueOptions {
                    delay: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
            )
        })
        .collect();
    q.enqueue_batch(&delayed_jobs).await?;
    start_watch(raw).await?;
    let task = Delayed::new(delayed::Config::default(), vec![q.clone()]);
    let later = now_ms() + 2_000;
    let t = Instant::now();
    let mut promoted = 0;
    loop {
        let o = task.run_once(later).await?;
        promoted += o.promoted;
        if o.promoted == 0 {
            break;
        }
    }
    let took = t.elapsed();
    println!(
        "promote: {promoted} due entries in {took:?} ({:.0} entries/s, batch {})",
        promoted as f64 / took.as_secs_f64(),
        delayed::BATCH_SIZE_DEFAULT
    );
    report(raw, prefix, "promote").await?;

    // 3. Retention: read and acknowledge the promoted entries, then keep no history at all.
    loop {
        let got = live.next_batch().await?;
        if got.is_empty() {
            break;
        }
        live.ack(&got.iter().collect::<Vec<_>>()).await?;
    }
    start_watch(raw).await?;
    let task = Retention::new(
        retention::Config {
            acked_max_age: Some(Duration::ZERO),
            acked_max_count: Some(0),
            ..Default::default()
        },
        vec![q.clone()],
    );
    let t = Instant::now();
    let mut trimmed = 0;
    loop {
        let o = task.run_once(now_ms() + 1_000).await?;
        trimmed += o.trimmed;
        if o.trimmed == 0 {
            break;
        }
    }
    let took = t.elapsed();
    println!(
        "retention: {trimmed} acknowledged entries trimmed in {took:?} ({:.0} entries/s, batch {})",
        trimmed as f64 / took.as_secs_f64(),
        retention::BATCH_SIZE_DEFAULT
    );
    report(raw, prefix, "retention").await?;
    Ok(())
}

async fn config_get(raw: &Client, name: &str) -> Result<String, BoxError> {
    let v: Value = raw.custom(cmd!("CONFIG"), vec!["GET", name]).await?;
    let parts: Vec<String> = match v {
        Value::Array(a) => a.into_iter().filter_map(|x| x.as_string()).collect(),
        Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [k.as_str().map(|s| s.to_string()), v.as_string()])
            .flatten()
            .collect(),
        _ => Vec::new(),
    };
    parts
        .get(1)
        .cloned()
        .ok_or_else(|| format!("CONFIG GET {name}: {parts:?}").into())
}

async fn config_set(raw: &Client, name: &str, value: &str) -> Result<(), BoxError> {
    let _: Value = raw.custom(cmd!("CONFIG"), vec!["SET", name, value]).await?;
    Ok(())
}

/// Resets SLOWLOG and the latency monitor with a 10 ms threshold.
async fn start_watch(raw: &Client) -> Result<(), BoxError> {
    config_set(raw, "slowlog-log-slower-than", &slow_us().to_string()).await?;
    config_set(raw, "slowlog-max-len", "1024").await?;
    config_set(raw, "latency-monitor-threshold", "10").await?;
    let _: Value = raw.custom(cmd!("SLOWLOG"), vec!["RESET"]).await?;
    let _: Value = raw.custom(cmd!("LATENCY"), vec!["RESET"]).await?;
    Ok(())
}

/// Prints the SLOWLOG entries touching this run's keys (the server is shared: other processes'
/// slow calls are counted apart) and LATENCY LATEST.
async fn report(raw: &Client, prefix: &str, phase: &str) -> Result<(), BoxError> {
    let v: Value = raw.custom(cmd!("SLOWLOG"), vec!["GET", "1024"]).await?;
    let (mut ours, mut others, mut worst_us, mut worst_cmd) = (0, 0, 0i64, String::new());
    let mut durations = Vec::new();
    if let Value::Array(entries) = v {
        for e in entries {
            let Value::Array(fields) = e else { continue };
            let micros = fields.get(2).and_then(Value::as_i64).unwrap_or(0);
            let args: Vec<String> = match fields.get(3) {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_string).collect(),
                _ => Vec::new(),
            };
            if args.iter().any(|a| a.contains(prefix)) {
                ours += 1;
                durations.push(micros);
                if micros > worst_us {
                    worst_us = micros;
                    worst_cmd = args.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
                }
            } else {
                others += 1;
            }
        }
    }
    println!(
        "  {phase}: SLOWLOG calls over {} ms on this run's keys: {ours}{}; other clients': {others}",
        slow_us() as f64 / 1_000.0,
        if ours > 0 {
            format!(" (worst {:.1} ms: {worst_cmd})", worst_us as f64 / 1_000.0)
        } else {
            String::new()
        }
    );
    if !durations.is_empty() {
        durations.sort_unstable();
        let at = |q: f64| durations[((durations.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
        println!(
            "  {phase}: those calls' server time: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    let latest: Value = raw.custom(cmd!("LATENCY"), vec!["LATEST"]).await?;
    println!("  {phase}: LATENCY LATEST (server-wide, threshold 10 ms): {latest:?}");
    Ok(())
}
