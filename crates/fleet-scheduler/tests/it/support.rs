//! A test environment under a unique key prefix: a broker, queue handles, leadership locks, and a
//! Drop guard deleting every key the test created.

use std::time::Duration;

use fleet_queue::{Broker, Consumer, ConsumerOptions, PriorityMode, Queue};
use fleet_scheduler::LeaderLock;
use fred::prelude::*;

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub(crate) struct TestEnv {
    pub(crate) broker: Broker,
    queues: Vec<String>,
    extra_keys: std::sync::Mutex<Vec<String>>,
}

impl TestEnv {
    /// An environment whose queues are Fleet's own (`inbound`, `outbound`) under a fresh prefix.
    pub(crate) async fn new() -> TestEnv {
        Self::with_queues(&fleet_core::QUEUES).await
    }

    pub(crate) async fn with_queues(names: &[&str]) -> TestEnv {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis_url(), &prefix)
            .await
            .expect("redis must be running");
        TestEnv {
            broker,
            queues: names.iter().map(|n| (*n).to_owned()).collect(),
            extra_keys: Default::default(),
        }
    }

    pub(crate) fn queue(&self, name: &str) -> Queue {
        assert!(
            self.queues.iter().any(|q| q == name),
            "unknown test queue {name}"
        );
        self.broker.queue(name)
    }

    pub(crate) fn queues(&self) -> Vec<Queue> {
        self.queues.iter().map(|q| self.broker.queue(q)).collect()
    }

    /// A leadership lock for this prefix; its keys are deleted with the environment.
    pub(crate) async fn lock(&self, ttl: Duration) -> LeaderLock {
        let lock = LeaderLock::connect(&redis_url(), self.broker.prefix(), ttl)
            .await
            .unwrap();
        let mut keys = self.extra_keys.lock().unwrap();
        for k in lock.keys() {
            if !keys.iter().any(|e| e == k) {
                keys.push(k.to_owned());
            }
        }
        lock
    }

    /// A consumer of the workers' group with no linger and a short block.
    pub(crate) async fn consumer(&self, queue: &str, batch: usize) -> Consumer {
        let mut o = ConsumerOptions::new("test");
        o.batch_size = batch;
        o.linger = Duration::ZERO;
        o.block = Duration::from_millis(20);
        o.mode = PriorityMode::Strict;
        self.queue(queue).consumer(o).await.unwrap()
    }
}

/// A plain client, for the few things a test does behind the libraries' back.
pub(crate) async fn raw_client() -> Client {
    let client = Client::new(Config::from_url(&redis_url()).unwrap(), None, None, None);
    client.init().await.unwrap();
    client
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Every key the tests create is known (no test uses idempotency keys), so they are
        // deleted by name: no SCAN, whose cost grows with whatever else the shared Redis holds.
        let mut keys = std::mem::take(&mut *self.extra_keys.lock().unwrap());
        for q in &self.queues {
            let q = self.broker.queue(q);
            let k = q.keys();
            keys.extend(k.streams().iter().cloned());
            keys.extend([k.delayed(), k.dead(), k.paused()]);
            keys.extend(fleet_core::Priority::ALL.map(|p| k.count_state(p)));
        }
        // Cleanup needs its own runtime: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = raw_client().await;
                let _: Result<i64, _> = c.del(keys).await;
                let _ = c.quit().await;
            });
        })
        .join();
    }
}

/// Polls `check` every 10 ms until it holds, failing after `limit` (a generous bound: the
/// condition is expected long before).
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
