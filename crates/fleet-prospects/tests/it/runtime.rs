//! The service path: `run` drives apalis batch workers over the Streams backend, which settles
//! what the handler returns (poison entries dead-lettered one by one, the rest acknowledged), and
//! a shutdown during a transient retry gives the held entries back instead of losing them.

use std::time::Duration;

use fleet_core::{EnqueueOptions, InboundBody, Priority};
use fleet_runtime::Shutdown;
use fleet_store::{PoolOptions, Store};

use crate::{Harness, msg};

/// Polls `done` until it holds, for at most a minute. It orders nothing: it waits for an effect.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn run_dead_letters_only_the_poison_entries_and_acks_the_rest() {
    let h = Harness::new().await;
    let t = 1_700_000_000;
    let mut events: Vec<_> = (0..30)
        .map(|i| {
            msg(
                "plain",
                &format!("c{}", i % 4),
                &format!("m{i}"),
                t + i,
                "ok",
            )
        })
        .collect();
    if let InboundBody::Message(m) = &mut events[11].body {
        m.text = Some("bad\0byte".into());
    }
    h.enqueue(&events).await;
    h.inbound()
        .enqueue(&"not an event", &EnqueueOptions::default())
        .await
        .unwrap();

    let shutdown = Shutdown::new();
    let run = tokio::spawn(fleet_prospects::run(
        Harness::config(100),
        h.broker.clone(),
        h.store().clone(),
        h.tenants.clone(),
        shutdown.clone(),
    ));
    eventually("29 written, 2 dead, nothing pending", || async {
        h.totals().await.0 == 29
            && h.pending_and_dead().await == (0, 2)
            && h.inbound().backlog().await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let mut reasons: Vec<String> = h
        .inbound()
        .dead_list(10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["data", "decode"]);
    let stats = h.inbound().stats().await.unwrap();
    assert_eq!((stats.pending(), stats.delayed, stats.dead), (0, 0, 2));
    h.cleanup().await;
}

#[tokio::test]
async fn run_holds_a_batch_through_an_outage_and_gives_it_back_on_shutdown() {
    let h = Harness::new().await;
    h.enqueue(&[
        msg("plain", "c1", "m1", 1_700_000_000, "ok"),
        msg("plain", "c2", "m2", 1_700_000_001, "ok"),
        msg("plain", "c3", "m3", 1_700_000_002, "ok"),
    ])
    .await;
    // Postgres "down": nothing listens on port 1.
    let down = Store::connect(
        "postgres://postgres@127.0.0.1:1/fleet",
        &PoolOptions {
            acquire_timeout: Duration::from_millis(100),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(fleet_prospects::run(
        Harness::config(10),
        h.broker.clone(),
        down,
        h.tenants.clone(),
        shutdown.clone(),
    ));
    // The handler holds the batch, retrying in process: read, neither acknowledged nor settled.
    eventually("the batch is held", || async {
        h.pending_and_dead().await == (3, 0)
    })
    .await;
    let stats = h.inbound().stats().await.unwrap();
    assert_eq!(
        stats.delayed, 0,
        "a transient failure is not a counted retry"
    );

    shutdown.cancel();
    run.await.unwrap().unwrap();
    let stats = h.inbound().stats().await.unwrap();
    assert_eq!(
        (stats.pending(), stats.delayed, stats.dead),
        (0, 3, 0),
        "given back to the delayed set, nothing acknowledged or dead"
    );
    assert_eq!(
        h.inbound()
            .promote_due(fleet_queue::now_ms(), 100)
            .await
            .unwrap(),
        3
    );
    let back = h.inbound().peek(Priority::Normal, 10).await.unwrap();
    assert_eq!(back.len(), 3);
    assert!(back.iter().all(|j| j.attempts == 0), "no attempt counted");
    assert_eq!(h.totals().await.0, 0);
    h.cleanup().await;
}

#[tokio::test]
async fn a_worker_that_keeps_failing_is_restarted_a_bounded_number_of_times_then_run_fails() {
    let h = Harness::new().await;
    let shutdown = Shutdown::new();
    let run = tokio::spawn(fleet_prospects::run(
        Harness::config(10),
        h.broker.clone(),
        h.store().clone(),
        h.tenants.clone(),
        shutdown.clone(),
    ));
    h.enqueue(&[msg("plain", "c1", "m1", 1_700_000_000, "ok")])
        .await;
    eventually("the first message written", || async {
        h.totals().await.0 == 1
    })
    .await;
    // Every stream key of `inbound` becomes a string: reads fail with WRONGTYPE (not an
    // unavailable Redis, which the backend would wait out), and so does creating the group again,
    // so each restarted worker fails too, until the restarts run out.
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let raw = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis).unwrap())
        .build()
        .unwrap();
    fred::prelude::ClientLike::init(&raw).await.unwrap();
    for stream in h.inbound().keys().streams() {
        let _: () = fred::prelude::KeysInterface::del(&raw, stream.as_str())
            .await
            .unwrap();
        let _: () = fred::prelude::KeysInterface::set(
            &raw,
            stream.as_str(),
            "not a stream",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run gives up")
        .unwrap();
    let error = ended.expect_err("run fails once the restarts run out");
    assert!(error.to_string().contains("restarts"), "{error}");
    assert!(shutdown.is_cancelled(), "the process is told to stop");
    for stream in h.inbound().keys().streams() {
        let _: () = fred::prelude::KeysInterface::del(&raw, stream.as_str())
            .await
            .unwrap();
    }
    h.cleanup().await;
}

/// A TCP proxy to the test Redis that can be cut (every connection dropped, the port closed) and
/// restored on the same port: Redis going away under a running process.
struct RedisProxy {
    addr: std::net::SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl RedisProxy {
    async fn start(addr: std::net::SocketAddr) -> RedisProxy {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut redis) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut redis).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        RedisProxy { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Issue 13, item 11: a read or settle that fails because Redis is away used to end the worker,
/// and after `RESTARTS_MAX` restarts the process stopped. Now every worker waits the outage out.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_never_ends_a_worker_and_work_resumes_after_it() {
    let h = Harness::new().await;
    // A short lease, published as the scheduler does, so that the stalled recovery run below (the
    // scheduler's job) takes back within seconds what a cut connection orphaned.
    let lease = Duration::from_secs(2);
    h.inbound().publish_lease(lease).await.unwrap();
    let proxy = RedisProxy::start("127.0.0.1:0".parse().unwrap()).await;
    let through_proxy =
        fleet_queue::Broker::connect(&format!("redis://{}", proxy.addr), h.broker.prefix())
            .await
            .unwrap();
    let shutdown = Shutdown::new();
    let mut run = tokio::spawn(fleet_prospects::run(
        Harness::config(10),
        through_proxy,
        h.store().clone(),
        h.tenants.clone(),
        shutdown.clone(),
    ));
    h.enqueue(&[msg("plain", "c1", "m1", 1_700_000_000, "ok")])
        .await;
    eventually("the first message written", || async {
        h.totals().await.0 == 1
    })
    .await;

    // Redis is gone for the workers (the test's own connection still reaches it). The outage is
    // long enough for far more than `RESTARTS_MAX` failed reads; `run` must not end meanwhile.
    proxy.cut();
    h.enqueue(&[msg("plain", "c2", "m2", 1_700_000_001, "ok")])
        .await;
    let during = tokio::time::timeout(Duration::from_secs(3), &mut run).await;
    assert!(
        during.is_err(),
        "run ended during a Redis outage: {during:?}"
    );
    assert!(
        !shutdown.is_cancelled(),
        "nothing asked the process to stop"
    );

    // Back on the same port: the workers reconnect and take the message sent meanwhile. If Redis
    // had not yet noticed the cut when the message arrived, it served it to a worker's blocked
    // read on the dead connection: the entry is pending under a consumer that never saw it, and
    // only stalled recovery hands it out again (docs/job-lifecycle.md). The scheduler does that;
    // here the test does, with the published lease, which live workers keep renewing.
    let _back = RedisProxy::start(proxy.addr).await;
    eventually("the message sent during the outage written", || async {
        let _ = h
            .inbound()
            .reclaim_stalled(
                fleet_queue::GROUP_DEFAULT,
                lease,
                100,
                fleet_queue::Clock::Redis,
            )
            .await;
        h.totals().await.0 == 2
    })
    .await;
    assert!(!run.is_finished(), "run is still running");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    h.cleanup().await;
}
