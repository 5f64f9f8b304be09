//! Integration tests of `fleet-prospects` against real Redis and Postgres: each test has its own
//! Redis key prefix and its own database, and cleans both up.

mod auto_replies;
mod failures;
mod redelivery;
mod runtime;

use std::time::Duration;

use fleet_core::{EnqueueOptions, InboundBody, InboundEvent, InboundMessage, Priority, Provider};
use fleet_prospects::{BatchWorker, Config};
use fleet_queue::{Broker, Queue};
use fleet_runtime::{Shutdown, Tenants, TenantsHandle};
use fleet_store::{Store, testing::TestDb};

/// Tenants for the tests: `acme` has a welcome and a keyword rule, `plain` has no rules.
pub(crate) const TENANTS: &str = r#"
[[tenant]]
id = "acme"
api_token = "t-acme"
[tenant.replies]
welcome = "Welcome to Acme!"
keywords = [{ match = "price", reply = "Our prices: ..." }]

[[tenant]]
id = "plain"
api_token = "t-plain"
"#;

/// A test's Redis prefix, database and tenants.
pub(crate) struct Harness {
    pub(crate) db: TestDb,
    pub(crate) broker: Broker,
    pub(crate) tenants: TenantsHandle,
}

impl Harness {
    pub(crate) async fn new() -> Harness {
        let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis, &prefix).await.expect("redis");
        let tenants = TenantsHandle::new(Tenants::parse(TENANTS).expect("tenants"));
        Harness {
            db: TestDb::new().await,
            broker,
            tenants,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        self.db.store()
    }

    pub(crate) fn inbound(&self) -> Queue {
        self.broker.queue(fleet_core::INBOUND_QUEUE)
    }

    pub(crate) fn outbound(&self) -> Queue {
        self.broker.queue(fleet_core::OUTBOUND_QUEUE)
    }

    /// A config for tests: short block so idle reads return quickly, fast retries.
    pub(crate) fn config(batch_size: usize) -> Config {
        Config {
            batch_size,
            block: Duration::from_millis(100),
            consumers: 1,
            retry_backoff: fleet_core::Backoff {
                initial_ms: 5,
                max_ms: 50,
            },
            ..Config::default()
        }
    }

    pub(crate) async fn worker(&self, config: Config, shutdown: Shutdown) -> BatchWorker {
        let name = fleet_queue::unique_consumer_name("test");
        BatchWorker::new(
            &self.broker,
            self.store().clone(),
            self.tenants.clone(),
            config,
            name,
            shutdown,
        )
        .await
        .expect("consumer")
    }

    pub(crate) async fn enqueue(&self, events: &[InboundEvent]) {
        let jobs: Vec<_> = events
            .iter()
            .map(|e| (e.clone(), EnqueueOptions::default()))
            .collect();
        for chunk in jobs.chunks(500) {
            self.inbound().enqueue_batch(chunk).await.expect("enqueue");
        }
    }

    /// Runs batches until the inbound queue has nothing waiting and a read comes back empty.
    pub(crate) async fn drain(&self, worker: &mut BatchWorker) {
        for _ in 0..10_000 {
            let report = worker.run_once().await.expect("run_once");
            assert!(!report.interrupted, "{report:?}");
            if report.delivered == 0 && self.inbound().backlog().await.unwrap() == 0 {
                return;
            }
        }
        panic!("the queue did not drain");
    }

    /// `(messages, sum of prospects' message_count, prospects)`.
    pub(crate) async fn totals(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages WHERE direction = 'in'),
                    (SELECT coalesce(sum(message_count), 0)::bigint FROM prospects),
                    (SELECT count(*) FROM prospects)",
        )
        .fetch_one(self.store().pool())
        .await
        .unwrap()
    }

    /// Pending (delivered, unacknowledged) and dead entries of `inbound`.
    pub(crate) async fn pending_and_dead(&self) -> (u64, u64) {
        let stats = self.inbound().stats().await.unwrap();
        (stats.pending(), stats.dead)
    }

    /// Every outbound entry waiting, decoded.
    pub(crate) async fn outbound_messages(&self) -> Vec<fleet_core::OutboundMessage> {
        let mut out = Vec::new();
        for p in Priority::ALL {
            for job in self.outbound().peek(p, 1000).await.unwrap() {
                out.push(fleet_core::wire::decode(&job.payload).unwrap());
            }
        }
        out
    }

    pub(crate) async fn cleanup(self) {
        self.inbound().destroy().await.unwrap();
        self.outbound().destroy().await.unwrap();
        self.db.cleanup().await;
    }
}

/// An inbound text message, timestamped `ts` (Unix seconds).
pub(crate) fn msg(tenant: &str, contact: &str, id: &str, ts: i64, text: &str) -> InboundEvent {
    InboundEvent {
        tenant: tenant.into(),
        provider: Provider::Meta,
        received_at_ms: ts * 1000,
        body: InboundBody::Message(InboundMessage {
            contact: contact.into(),
            provider_message_id: id.into(),
            kind: "text".into(),
            text: Some(text.into()),
            timestamp: ts,
            ..Default::default()
        }),
    }
}

/// Now, in Unix seconds (auto replies only answer recent messages).
pub(crate) fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}
