//! A test queue under a unique prefix, whose keys are deleted when it is dropped.

use std::time::Duration;

use fleet_queue::{Broker, Consumer, ConsumerOptions, PriorityMode, Queue};

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A plain connection to the test Redis, for looking at (or breaking) keys behind the library.
pub(crate) async fn raw_client() -> fred::prelude::Client {
    use fred::prelude::*;
    let raw = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    raw
}

/// A queue under a fresh prefix; dropping it deletes every key of the queue.
pub(crate) struct TestQueue {
    pub(crate) broker: Broker,
    pub(crate) queue: Queue,
}

impl TestQueue {
    pub(crate) async fn new() -> TestQueue {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis_url(), &prefix)
            .await
            .expect("redis must be running");
        let queue = broker.queue("jobs");
        TestQueue { broker, queue }
    }

    /// A client of its own on the test's Redis, for looking at keys directly.
    pub(crate) async fn broker_client(&self) -> fred::prelude::Client {
        use fred::prelude::*;
        let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }

    /// A consumer with small batches, no linger, a short block, strict priorities.
    pub(crate) async fn consumer(&self, batch: usize) -> Consumer {
        self.consumer_with(batch, PriorityMode::Strict).await
    }

    pub(crate) async fn consumer_with(&self, batch: usize, mode: PriorityMode) -> Consumer {
        let mut o = ConsumerOptions::new("test");
        o.batch_size = batch;
        o.linger = Duration::ZERO;
        o.block = Duration::from_millis(50);
        o.mode = mode;
        self.queue.consumer(o).await.unwrap()
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let prefix = self.broker.prefix().to_owned();
        // Cleanup needs its own runtime: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(b) = Broker::connect(&redis_url(), &prefix).await {
                    let _ = b.queue("jobs").destroy().await;
                }
            });
        })
        .join();
    }
}
