//! A prepared Fleet under a unique prefix, and a runner for the real `fleetctl` binary.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use fleet_core::{
    EnqueueOptions, INBOUND_QUEUE, InboundBody, InboundEvent, InboundMessage, OUTBOUND_QUEUE,
    OutboundBody, OutboundMessage, Priority, Provider,
};
use fleet_queue::{Broker, Consumer, ConsumerOptions, Delivery, PriorityMode, Queue};

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub(crate) fn event(n: usize) -> InboundEvent {
    InboundEvent {
        tenant: "acme".into(),
        provider: Provider::Meta,
        received_at_ms: 1,
        body: InboundBody::Message(InboundMessage {
            contact: format!("1555000{n:04}"),
            provider_message_id: format!("wamid.{n}"),
            kind: "text".into(),
            text: Some(format!("hello {n}")),
            timestamp: 1_700_000_000,
            ..Default::default()
        }),
    }
}

pub(crate) fn reply(n: usize) -> OutboundMessage {
    OutboundMessage {
        tenant: "acme".into(),
        provider: Provider::Twilio,
        to: format!("1555111{n:04}"),
        body: OutboundBody::Text {
            text: format!("reply {n}"),
        },
        origin: "api".into(),
        created_at_ms: 1,
        sent: None,
    }
}

/// Empty queues under a fresh prefix; dropping it deletes every key of both queues.
pub(crate) struct TestFleet {
    pub(crate) prefix: String,
    pub(crate) broker: Broker,
    pub(crate) inbound: Queue,
    pub(crate) outbound: Queue,
}

impl TestFleet {
    pub(crate) async fn new() -> TestFleet {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::connect(&redis_url(), &prefix)
            .await
            .expect("redis must be running");
        TestFleet {
            inbound: broker.queue(INBOUND_QUEUE),
            outbound: broker.queue(OUTBOUND_QUEUE),
            prefix,
            broker,
        }
    }

    /// A consumer of `queue`: strict priorities, no linger, short block.
    pub(crate) async fn consumer(&self, queue: &Queue, batch: usize) -> Consumer {
        let mut o = ConsumerOptions::new("fleetctl-test");
        o.batch_size = batch;
        o.linger = Duration::ZERO;
        o.block = Duration::from_millis(50);
        o.mode = PriorityMode::Strict;
        queue.consumer(o).await.unwrap()
    }

    /// Fills `inbound` with a known shape and returns the consumer holding the pending entries:
    /// waiting high 1, normal 3, low 1; pending 2; delayed 1; dead 3 (`decode` ×2, `rejected` ×1);
    /// and `outbound` with 1 dead entry (`http_4xx`) and nothing else.
    pub(crate) async fn prepare(&self) -> Consumer {
        let high = EnqueueOptions::with_priority(Priority::High);
        let mut c = self.consumer(&self.inbound, 10).await;
        // Three jobs that die.
        let doomed: Vec<_> = (0..3).map(|i| (event(i), high.clone())).collect();
        self.inbound.enqueue_batch(&doomed).await.unwrap();
        let got = c.next_batch().await.unwrap();
        assert_eq!(got.len(), 3);
        for (d, reason) in got.iter().zip(["decode", "rejected", "decode"]) {
            assert!(c.dead_letter(d, reason, "boom").await.unwrap());
        }
        // Two jobs that stay pending.
        let held: Vec<_> = (3..5).map(|i| (event(i), high.clone())).collect();
        self.inbound.enqueue_batch(&held).await.unwrap();
        assert_eq!(c.next_batch().await.unwrap().len(), 2);
        // Waiting: high 1, normal 3, low 1.
        let mut waiting = vec![(event(5), high.clone())];
        waiting.extend((6..9).map(|i| (event(i), EnqueueOptions::default())));
        waiting.push((event(9), EnqueueOptions::with_priority(Priority::Low)));
        self.inbound.enqueue_batch(&waiting).await.unwrap();
        // Delayed: 1.
        let delayed = EnqueueOptions {
            delay: Some(Duration::from_secs(3600)),
            ..EnqueueOptions::default()
        };
        self.inbound.enqueue(&event(10), &delayed).await.unwrap();
        // Outbound: one dead reply.
        let mut oc = self.consumer(&self.outbound, 10).await;
        self.outbound
            .enqueue(&reply(0), &EnqueueOptions::default())
            .await
            .unwrap();
        let got = oc.next_batch().await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            oc.dead_letter(&got[0], "http_4xx", "400 bad number")
                .await
                .unwrap()
        );
        c
    }

    /// Runs fleetctl with this fleet's prefix and Redis, stdin closed (not a terminal).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        fleetctl(
            args,
            &["--prefix", &self.prefix, "--redis-url", &redis_url()],
        )
    }

    /// Runs fleetctl and parses its stdout as JSON, asserting success.
    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "fleetctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleetctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Runs the real binary with `args` then `extra`, with a clean environment for the settings.
pub(crate) fn fleetctl(args: &[&str], extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .args(extra)
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_KEY_PREFIX")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("fleetctl runs")
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids of the deliveries, for comparisons.
#[allow(dead_code)]
pub(crate) fn job_ids(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.job_id.to_string()).collect()
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Cleanup needs its own runtime: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(b) = Broker::connect(&redis_url(), &prefix).await {
                    for q in fleet_core::QUEUES {
                        let _ = b.queue(q).destroy().await;
                    }
                }
            });
        })
        .join();
    }
}
