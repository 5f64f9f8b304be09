//! The `fleet-scheduler` binary as operators run it: a bad configuration stops it at once with one
//! line; a good one serves the admin endpoints, leads, and exits 0 on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestEnv, redis_url};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-scheduler");

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "fleet-scheduler-test-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_lease_not_longer_than_the_job_timeout_stops_the_binary_with_one_line() {
    let path = config_file("[scheduler]\nmax_job_timeout = \"45s\"\n");
    let out = Command::new(BIN)
        .env("FLEET_CONFIG", &path)
        .env("REDIS_URL", redis_url())
        .env_remove("FLEET_ADMIN_ADDR")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("fleet-scheduler: [scheduler] the stalled lease of queue inbound (30s)")
            && stderr.contains("max_job_timeout (45s)"),
        "{stderr}"
    );
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

#[tokio::test]
async fn the_binary_leads_serves_its_admin_endpoints_and_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    // A free port: bound, then released for the binary (another process could take it in
    // between; the readiness wait below would then fail loudly, not silently).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = config_file("[scheduler.leader]\nttl = \"1s\"\n");
    let mut child = Command::new(BIN)
        .env("FLEET_CONFIG", &path)
        .env("REDIS_URL", redis_url())
        .env("FLEET_KEY_PREFIX", env.broker.prefix())
        .env("FLEET_ADMIN_ADDR", addr.to_string())
        .env("FLEET_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its lock keys are this prefix's: register them for cleanup.
    let lock = env.lock(Duration::from_secs(1)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let ready = get(addr, "/readyz").await;
        let metrics = get(addr, "/metrics").await.unwrap_or_default();
        if ready.is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            && metrics.contains("fleet_scheduler_leader 1")
            && metrics.contains("fleet_queue_length{")
        {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready and leading in time:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains("# HELP fleet_queue_oldest_pending_seconds"));
    assert!(
        get(addr, "/healthz")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        lock.holder().await.unwrap().is_some(),
        "the binary holds the lock"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within 15 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = std::fs::remove_file(&path);
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        lock.holder().await.unwrap(),
        None,
        "released on the way out"
    );
}
