//! A whole outbound setup per test: a simulator, a queue under a random prefix, a fresh database,
//! tenants pointing at the simulator, and a running worker; `stop` tears everything down.

use std::time::Duration;

use fleet_core::{EnqueueOptions, JobId, OUTBOUND_QUEUE, OutboundBody, OutboundMessage, Provider};
use fleet_mock_provider::{MockConfig, RunningMock};
use fleet_outbound::OutboundConfig;
use fleet_queue::{Broker, Queue};
use fleet_runtime::{Shutdown, Tenants, TenantsHandle};
use fleet_store::testing::TestDb;
use fred::prelude::*;

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub(crate) const META_TOKEN: &str = "meta-token-right";
pub(crate) const TWILIO_TOKEN: &str = "twilio-token-right";

/// The tenants file of the tests: `acme` on both providers, `badauth` with a wrong Meta token.
pub(crate) fn tenants_toml(meta_rate: u32) -> String {
    format!(
        r#"
[[tenant]]
id = "acme"
api_token = "api-acme"
[tenant.meta]
app_secret = "s"
verify_token = "v"
phone_number_id = "1001"
access_token = "{META_TOKEN}"
messages_per_second = {meta_rate}
[tenant.twilio]
account_sid = "AC00000000000000000000000000000001"
auth_token = "{TWILIO_TOKEN}"
from = "whatsapp:+14155238886"
messages_per_second = {meta_rate}

[[tenant]]
id = "badauth"
api_token = "api-bad"
[tenant.meta]
app_secret = "s"
verify_token = "v"
phone_number_id = "1002"
access_token = "meta-token-wrong"
"#
    )
}

pub(crate) struct TestEnv {
    pub(crate) prefix: String,
    pub(crate) broker: Broker,
    pub(crate) queue: Queue,
    pub(crate) db: TestDb,
    pub(crate) mock: RunningMock,
    pub(crate) tenants: TenantsHandle,
    workers: Vec<(Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl TestEnv {
    /// Everything but the worker.
    pub(crate) async fn new(mock: MockConfig) -> TestEnv {
        TestEnv::with_rate(mock, 1000).await
    }

    /// Everything but the worker, with `acme`'s numbers limited to `rate` messages per second.
    pub(crate) async fn with_rate(mock: MockConfig, rate: u32) -> TestEnv {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis_url(), &prefix)
            .await
            .expect("redis must be running");
        let queue = broker.queue(OUTBOUND_QUEUE);
        let db = TestDb::new().await;
        let mock = fleet_mock_provider::spawn(MockConfig {
            meta_access_token: Some(META_TOKEN.into()),
            twilio_auth_token: Some(TWILIO_TOKEN.into()),
            ..mock
        })
        .await
        .unwrap();
        let tenants = TenantsHandle::new(Tenants::parse(&tenants_toml(rate)).unwrap());
        TestEnv {
            prefix,
            broker,
            queue,
            db,
            mock,
            tenants,
            workers: Vec::new(),
        }
    }

    /// Worker settings for tests: small batches, no pair rate, short timeouts, quick records.
    pub(crate) fn config(&self) -> OutboundConfig {
        OutboundConfig {
            concurrency: 16,
            batch_size: 10,
            recipient_interval_ms: 0,
            record_linger_ms: 2,
            drain_timeout_ms: 5_000,
            meta_api_base: self.mock.meta_base(),
            twilio_api_base: self.mock.twilio_base(),
            http: fleet_providers::HttpConfig {
                request_timeout_ms: 2_000,
                ..Default::default()
            },
            ..OutboundConfig::default()
        }
    }

    /// Starts a worker with `config` (call again for more replicas: each has its own consumer
    /// name and HTTP client, like separate processes).
    pub(crate) fn start(&mut self, config: OutboundConfig) {
        let shutdown = Shutdown::new();
        let http = fleet_providers::build_client(&config.http).unwrap();
        let worker = tokio::spawn(fleet_outbound::run(
            config,
            self.broker.clone(),
            self.db.store().clone(),
            self.tenants.clone(),
            http,
            shutdown.clone(),
        ));
        self.workers.push((shutdown, worker));
    }

    pub(crate) async fn enqueue(
        &self,
        tenant: &str,
        provider: Provider,
        to: &str,
        text: &str,
    ) -> JobId {
        let m = OutboundMessage {
            tenant: tenant.into(),
            provider,
            to: to.into(),
            body: OutboundBody::Text { text: text.into() },
            origin: "api".into(),
            created_at_ms: 0,
            sent: None,
        };
        self.queue
            .enqueue(&m, &EnqueueOptions::default())
            .await
            .unwrap()
            .job_id
    }

    /// Shuts every worker down gracefully, asserting each stopped cleanly and in time.
    pub(crate) async fn stop_workers(&mut self) {
        for (s, _) in &self.workers {
            s.cancel();
        }
        for (_, w) in self.workers.drain(..) {
            let res = tokio::time::timeout(Duration::from_secs(15), w)
                .await
                .expect("worker stops in time");
            res.expect("worker task").expect("worker result");
        }
    }

    /// Stops the worker (asserting it stopped cleanly) and deletes every key and the database.
    pub(crate) async fn stop(mut self) {
        self.stop_workers().await;
        delete_keys(&self.prefix).await;
        self.db.cleanup().await;
    }
}

/// Deletes every key under `prefix` (tests only: a scan of the keyspace is fine here).
pub(crate) async fn delete_keys(prefix: &str) {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let keys: Vec<String> = client
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}:*")])
        .await
        .unwrap();
    for k in keys {
        let _: i64 = client.del(k).await.unwrap();
    }
    let _ = client.quit().await;
}

/// Polls `check` every 10 ms until it holds, failing after 30 s. Waiting on a condition, not on
/// time: the test goes on the moment the condition is met.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
