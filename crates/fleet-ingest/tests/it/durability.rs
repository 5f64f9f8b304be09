//! `durability = "replicas"`: a webhook is answered 200 only once enough replicas hold its events
//! (`WAIT`); otherwise 503, with the events still appended exactly once, so the provider's retry is
//! a duplicate. The shared Redis has no replica; the 200 path runs on a private primary and replica
//! this test starts (`redis-server`).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::http::StatusCode;
use fleet_core::{INBOUND_QUEUE, Priority};
use fleet_ingest::{AppState, app, config::Durability};
use fleet_queue::Broker;
use fleet_runtime::{Tenants, TenantsHandle};
use fred::prelude::*;

use crate::helpers::*;

fn replicas(n: u32, timeout_ms: u64) -> Durability {
    Durability::Replicas {
        replicas: n,
        timeout: Duration::from_millis(timeout_ms),
    }
}

#[tokio::test]
async fn without_replicas_the_webhook_gets_503_and_its_events_are_appended_once() {
    let t = TestApp::with_config(|c| c.durability = replicas(1, 50)).await;
    let broker = Broker::connect(REDIS_URL, "probe").await.unwrap();
    assert_eq!(
        broker.connected_replicas().await.unwrap(),
        0,
        "this test needs a Redis without replicas"
    );
    let body = meta_text_body(&["wamid.D1", "wamid.D2"]);
    let first = t.send(signed_meta_post("acme", &body)).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.retry_after(), Some(5));
    assert!(first.body.contains("replicas"), "{}", first.body);
    assert_eq!(
        t.inbound_backlog().await,
        2,
        "the events were appended before the wait"
    );
    // The provider retries: a duplicate, still refused while no replica holds it, appended once.
    let retry = t.send(signed_meta_post("acme", &body)).await;
    assert_eq!(retry.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(t.inbound_backlog().await, 2);
    // Redis itself is fine: nothing marked it down, and other queues' requests go through.
    t.state.refresh_backlog().await;
    let send = t
        .send(send_api(
            Some("acme-token"),
            None,
            &serde_json::json!({"to": "+14155550100", "text": "hi"}),
        ))
        .await;
    assert_eq!(send.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn with_the_default_durability_no_replica_is_awaited() {
    let t = TestApp::new().await;
    let body = meta_text_body(&["wamid.N1"]);
    assert_eq!(
        t.send(signed_meta_post("acme", &body)).await.status,
        StatusCode::OK
    );
    assert_eq!(t.inbound_backlog().await, 1);
}

/// A `redis-server` of this test's own in a temporary directory.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl PrivateRedis {
    async fn start(extra: &[&str]) -> Option<PrivateRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("redis-server is not installed: skipping the replica test");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fleet-durability-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--dir", dir.to_str().unwrap(), "--logfile", "redis.log"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = PrivateRedis { port, dir, child };
        // Ready once it accepts connections; a server that exited says why in its log. Polled, with
        // a bound, because nothing tells a test when another process starts listening.
        for _ in 0..500 {
            if let Some(status) = r.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(r.dir.join("redis.log")).unwrap_or_default();
                panic!("private redis-server exited ({status}): {log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", r.port)).is_ok() {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("private redis-server did not listen within 10 s");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn client(&self) -> Client {
        let c = Builder::from_config(Config::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        // `init` fails at once (no reconnect policy) rather than leaving commands queued forever.
        c.init().await.expect("connect to the private redis-server");
        c
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_a_replica_the_webhook_is_answered_once_the_replica_holds_it() {
    let Some(primary) = PrivateRedis::start(&[]).await else {
        return;
    };
    let primary_port = primary.port.to_string();
    let Some(mut replica) = PrivateRedis::start(&["--replicaof", "127.0.0.1", &primary_port]).await
    else {
        return;
    };
    let replica_client = replica.client().await;
    for _ in 0..500 {
        let info: String = replica_client
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = test_prefix();
    let mut cfg = config(&prefix);
    cfg.redis_url = primary.url();
    cfg.durability = replicas(1, 5_000);
    let broker = Broker::connect(&primary.url(), &prefix).await.unwrap();
    let stream = broker
        .queue(INBOUND_QUEUE)
        .keys()
        .stream(Priority::Normal)
        .to_owned();
    let state = AppState::with_broker(
        cfg,
        TenantsHandle::new(Tenants::parse(TENANTS).unwrap()),
        broker,
    );
    let router = app(state);
    let reply = tower::ServiceExt::oneshot(
        router.clone(),
        signed_meta_post("acme", &meta_text_body(&["wamid.P1", "wamid.P2"])),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    // What the 200 promises: the replica has both events already.
    let on_replica: u64 = replica_client.xlen(&stream).await.unwrap();
    assert_eq!(on_replica, 2);

    // Without its replica, the primary cannot get the next webhook acknowledged in time.
    let _ = replica.child.kill();
    let _ = replica.child.wait();
    let mut cfg = config(&prefix);
    cfg.durability = replicas(1, 50);
    let broker = Broker::connect(&primary.url(), &prefix).await.unwrap();
    let router = app(AppState::with_broker(
        cfg,
        TenantsHandle::new(Tenants::parse(TENANTS).unwrap()),
        broker.clone(),
    ));
    let reply = tower::ServiceExt::oneshot(
        router,
        signed_meta_post("acme", &meta_text_body(&["wamid.P3"])),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(broker.queue(INBOUND_QUEUE).backlog().await.unwrap(), 3);
}

/// Runs the real binary against `redis_url` with `env`: until it exits (`wait_for` = `None`),
/// giving its exit code, or until it logs `wait_for`, then kills it (`None`). Bounded: 20 s per
/// line. Returns its log too.
fn run_binary(
    redis_url: &str,
    env: &[(&str, &str)],
    wait_for: Option<&str>,
) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let tenants =
        std::env::temp_dir().join(format!("fleet-ingest-evict-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&tenants, TENANTS).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-ingest"))
        .args([
            "--ingest-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_ALLOW_EVICTION")
        .env("REDIS_URL", redis_url)
        .env(
            "FLEET_KEY_PREFIX",
            format!("evict-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("FLEET_TENANTS", &tenants)
        .env("FLEET_PUBLIC_URL", PUBLIC_URL)
        .env("FLEET_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let mut seen = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                seen |= wait_for.is_some_and(|w| line.contains(w));
                log.push_str(&line);
                log.push('\n');
                if seen {
                    break;
                }
            }
            // The process closed its stderr: it exited.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("fleet-ingest neither exited nor logged {wait_for:?} in 20 s: {log}");
            }
        }
    }
    if seen {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&tenants);
    (if seen { None } else { status.code() }, log)
}

#[tokio::test]
async fn a_redis_that_may_evict_queued_work_is_refused_at_start_unless_allowed() {
    let Some(redis) = PrivateRedis::start(&["--maxmemory-policy", "allkeys-lru"]).await else {
        return;
    };
    // Refused: exits 1 with the reason, before listening.
    let (code, log) = run_binary(&redis.url(), &[], None);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("allkeys-lru") && log.contains("noeviction"),
        "{log}"
    );
    assert!(!log.contains("ingest listening on"), "{log}");

    // Allowed: starts, with a loud warning.
    let (code, log) = run_binary(
        &redis.url(),
        &[("FLEET_ALLOW_EVICTION", "1")],
        Some("ingest listening on"),
    );
    assert_eq!(code, None, "it runs: {log}");
    assert!(log.contains("redis may EVICT queued work"), "{log}");
    assert!(log.contains("redis server checked"), "{log}");
}
