//! Throughput and latency benchmark of `fleet-prospects` against the local Redis and Postgres.
//!
//! Three phases, each on its own fresh database (seeded with the same returning contacts):
//! 1. baseline: the same store statements, in the same batch sizes, called in a plain sequential
//!    loop on pre-decoded events (no Redis, no worker): the "plain SQL script" rate;
//! 2. worker: `BENCH_MESSAGES` events (default 200,000; half from returning contacts) pre-filled on
//!    `inbound`, then `fleet_prospects::run` drains them; rate = messages / time until every entry
//!    is acknowledged (so committed);
//! 3. latency: a producer enqueues at `BENCH_RATE` messages/s (default 5,000) for
//!    `BENCH_LATENCY_SECS` (default 10) while the worker runs; enqueue-to-commit percentiles come
//!    from the worker's own `fleet_prospects_commit_lag_seconds` samples.
//!
//! Run: `cargo run --release -p fleet-prospects --example bench`
//! (`BENCH_BATCH`, `BENCH_CONSUMERS`, `BENCH_DB_CONNECTIONS`, `BENCH_TENANT=acme` for the welcome rule).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fleet_core::{EnqueueOptions, InboundBody, InboundEvent, InboundMessage, Provider};
use fleet_prospects::Config;
use fleet_queue::Broker;
use fleet_runtime::{Shutdown, Tenants, TenantsHandle};
use fleet_store::{PoolOptions, testing::TestDb};
use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Contacts that already exist before the run; half of the messages come from them.
const RETURNING: usize = 10_000;

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
api_token = "t-acme"
[tenant.replies]
welcome = "Welcome!"

[[tenant]]
id = "plain"
api_token = "t-plain"
"#;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Message `i`: even ones from a new contact, odd ones from one of the returning contacts.
fn event(tenant: &str, run: &str, i: usize, now_s: i64) -> InboundEvent {
    let contact = if i.is_multiple_of(2) {
        format!("34{:09}", 100_000_000 + i)
    } else {
        format!("34{:09}", i % RETURNING)
    };
    InboundEvent {
        tenant: tenant.into(),
        provider: Provider::Meta,
        received_at_ms: now_s * 1000,
        body: InboundBody::Message(InboundMessage {
            contact,
            provider_message_id: format!("wamid.{run}.{i}"),
            business_number: "1234567890".into(),
            kind: "text".into(),
            text: Some(format!("Hello, I would like to know more about item {i}")),
            timestamp: now_s,
            profile_name: i.is_multiple_of(3).then(|| format!("Customer {i}")),
            ..Default::default()
        }),
    }
}

async fn seeded_db(tenant: &str, pool: &PoolOptions) -> anyhow::Result<TestDb> {
    let db = TestDb::with_pool(pool.clone()).await;
    let now = chrono::Utc::now().timestamp() - 3600;
    let seed: Vec<_> = (0..RETURNING)
        .map(|i| event(tenant, "seed", 2 * i + 1, now))
        .collect();
    for chunk in seed.chunks(1000) {
        db.store().write_inbound_batch(chunk).await?;
    }
    Ok(db)
}

/// Waits until `inbound` has nothing waiting and nothing pending.
async fn drained(broker: &Broker) -> anyhow::Result<()> {
    let q = broker.queue(fleet_core::INBOUND_QUEUE);
    loop {
        let stats = q.stats().await?;
        let waiting: u64 = stats.lengths().values().sum();
        if waiting == 0 && stats.pending() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = env("BENCH_MESSAGES", 200_000);
    let batch: usize = env("BENCH_BATCH", 500);
    let consumers: usize = env("BENCH_CONSUMERS", 2);
    let rate: u64 = env("BENCH_RATE", 5_000);
    let latency_secs: u64 = env("BENCH_LATENCY_SECS", 10);
    let tenant: String = env("BENCH_TENANT", "plain".to_owned());
    let pool = PoolOptions {
        max_connections: env("BENCH_DB_CONNECTIONS", 8),
        ..PoolOptions::default()
    };
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let lag = LagRecorder::install();
    let tenants = TenantsHandle::new(Tenants::parse(TENANTS)?);
    let now = chrono::Utc::now().timestamp();
    println!(
        "messages={messages} batch={batch} consumers={consumers} tenant={tenant} returning_contacts={RETURNING}"
    );

    // 1. Baseline: the same statements in a plain loop.
    let events: Vec<_> = (0..messages)
        .map(|i| event(&tenant, "run", i, now))
        .collect();
    let db = seeded_db(&tenant, &pool).await?;
    let welcome = |t: &str| t == "acme";
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        db.store().write_inbound_batch_with(chunk, welcome).await?;
    }
    let baseline = messages as f64 / started.elapsed().as_secs_f64();
    println!("baseline (plain sequential loop of the store statements): {baseline:.0} msgs/s");
    db.cleanup().await;

    // 1b. The same loop split over as many concurrent connections as the worker has consumers.
    let db = seeded_db(&tenant, &pool).await?;
    let started = Instant::now();
    let share = events.len().div_ceil(consumers);
    let mut loops = tokio::task::JoinSet::new();
    for part in events.chunks(share) {
        let (store, part) = (db.store().clone(), part.to_vec());
        loops.spawn(async move {
            for chunk in part.chunks(batch) {
                store
                    .write_inbound_batch_with(chunk, |t| t == "acme")
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = loops.join_next().await {
        r??;
    }
    let baseline_parallel = messages as f64 / started.elapsed().as_secs_f64();
    println!(
        "baseline ({consumers} concurrent loops of the store statements): {baseline_parallel:.0} msgs/s"
    );
    db.cleanup().await;

    // 2. The worker draining a pre-filled queue.
    let db = seeded_db(&tenant, &pool).await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let broker = Broker::connect(&redis, &prefix).await?;
    let inbound = broker.queue(fleet_core::INBOUND_QUEUE);
    let fill = Instant::now();
    let jobs: Vec<_> = events
        .iter()
        .map(|e| (e.clone(), EnqueueOptions::default()))
        .collect();
    for chunk in jobs.chunks(1000) {
        inbound.enqueue_batch(chunk).await?;
    }
    println!(
        "pre-filled {messages} entries in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    let config = Config {
        batch_size: batch,
        consumers,
        ..Config::default()
    };
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let worker = tokio::spawn(fleet_prospects::run(
        config.clone(),
        broker.clone(),
        db.store().clone(),
        tenants.clone(),
        shutdown.clone(),
    ));
    drained(&broker).await?;
    let worker_rate = messages as f64 / started.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(db.store().pool())
        .await?;
    anyhow::ensure!(
        stored as usize == messages + RETURNING,
        "stored {stored} rows"
    );
    println!("worker (pre-filled queue -> Postgres): {worker_rate:.0} msgs/s");
    println!(
        "ratio worker / sequential baseline: {:.2}; worker / concurrent baseline: {:.2}",
        worker_rate / baseline,
        worker_rate / baseline_parallel
    );

    // 3. Latency at a steady rate, same worker.
    lag.reset();
    let per_tick = (rate / 100).max(1) as usize; // 100 ticks a second
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let total = (rate * latency_secs) as usize;
    let mut sent = 0usize;
    while sent < total {
        tick.tick().await;
        let ts = chrono::Utc::now();
        let jobs: Vec<_> = (sent..(sent + per_tick).min(total))
            .map(|i| {
                let mut e = event(&tenant, "steady", i, ts.timestamp());
                e.received_at_ms = ts.timestamp_millis();
                (e, EnqueueOptions::default())
            })
            .collect();
        sent += jobs.len();
        inbound.enqueue_batch(&jobs).await?;
    }
    drained(&broker).await?;
    let h = lag.snapshot();
    println!(
        "latency at {rate} msgs/s for {latency_secs} s ({} samples): enqueue-to-commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.len(),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );

    shutdown.cancel();
    worker.await??;
    inbound.destroy().await?;
    broker.queue(fleet_core::OUTBOUND_QUEUE).destroy().await?;
    db.cleanup().await;
    Ok(())
}

/// A recorder that keeps `fleet_prospects_commit_lag_seconds` in an HDR histogram (microseconds)
/// and hands every other metric to a real Prometheus recorder, so the worker pays the same
/// metrics overhead as in production.
#[derive(Clone)]
struct LagRecorder(
    Arc<Mutex<Histogram<u64>>>,
    Arc<metrics_exporter_prometheus::PrometheusRecorder>,
);

impl LagRecorder {
    fn install() -> LagRecorder {
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let lag = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let r = LagRecorder(Arc::new(Mutex::new(lag)), Arc::new(prometheus));
        metrics::set_global_recorder(r.clone()).expect("no other recorder");
        r
    }

    fn reset(&self) {
        self.0.lock().expect("lock").reset();
    }

    fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().expect("lock").clone()
    }
}

impl metrics::HistogramFn for LagRecorder {
    fn record(&self, seconds: f64) {
        let micros = (seconds * 1e6).clamp(1.0, 60e6) as u64;
        let _ = self.0.lock().expect("lock").record(micros);
    }
}

impl Recorder for LagRecorder {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.1.describe_counter(k, u, d);
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.1.describe_gauge(k, u, d);
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.1.describe_histogram(k, u, d);
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        self.1.register_counter(key, m)
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        self.1.register_gauge(key, m)
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> metrics::Histogram {
        if key.name() == "fleet_prospects_commit_lag_seconds" {
            metrics::Histogram::from_arc(Arc::new(self.clone()))
        } else {
            self.1.register_histogram(key, m)
        }
    }
}
