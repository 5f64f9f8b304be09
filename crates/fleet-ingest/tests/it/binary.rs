//! The real `fleet-ingest` binary on port 0: serves a signed webhook, exposes metrics and
//! readiness, answers 503 while Redis is unreachable, and exits 0 on SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::helpers::*;

/// A running binary; killed on drop if the test did not stop it.
pub(crate) struct Ingest {
    pub(crate) child: Child,
    pub(crate) ingest: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) tenants: PathBuf,
    config: Option<PathBuf>,
}

impl Ingest {
    pub(crate) fn start(redis_url: &str, prefix: &str) -> Ingest {
        Self::start_with(redis_url, prefix, None)
    }

    /// Starts the binary with `config` as its config file (`FLEET_CONFIG`), if any.
    pub(crate) fn start_with(redis_url: &str, prefix: &str, config: Option<&str>) -> Ingest {
        let tenants = std::env::temp_dir().join(format!("fleet-ingest-bin-{prefix}.toml"));
        std::fs::write(&tenants, TENANTS).unwrap();
        let config = config.map(|text| {
            let path = std::env::temp_dir().join(format!("fleet-ingest-bin-{prefix}.config.toml"));
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleet-ingest"));
        command.env_remove("FLEET_CONFIG");
        if let Some(path) = &config {
            command.env("FLEET_CONFIG", path);
        }
        let mut child = command
            .args([
                "--ingest-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .env("REDIS_URL", redis_url)
            .env("FLEET_KEY_PREFIX", prefix)
            .env("FLEET_TENANTS", &tenants)
            .env("FLEET_PUBLIC_URL", PUBLIC_URL)
            .env("FLEET_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The binary logs both bound addresses; read them from its log lines.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                let _ = tx.send(line);
            }
        });
        let (mut ingest, mut admin) = (None, None);
        while ingest.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("fleet-ingest logs its addresses");
            let addr = || {
                let v: serde_json::Value = serde_json::from_str(&line).ok()?;
                v["addr"].as_str()?.parse::<SocketAddr>().ok()
            };
            if line.contains("ingest listening on") {
                ingest = addr();
            } else if line.contains("admin server listening on") {
                admin = addr();
            }
        }
        Ingest {
            child,
            ingest: ingest.unwrap(),
            admin: admin.unwrap(),
            tenants,
            config,
        }
    }

    /// The most memory the process has held so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/<pid>/status")
            * 1024
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("fleet-ingest did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.tenants);
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_a_signed_webhook_and_stops_on_sigterm() {
    let prefix = test_prefix();
    let ingest = Ingest::start(REDIS_URL, &prefix);
    let body = meta_text_body(&["wamid.BIN1", "wamid.BIN2"]);
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &body);
    let (status, reply) = http(
        ingest.ingest,
        "POST",
        "/webhooks/meta/acme",
        &[
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    assert_eq!(status, 200, "{reply}");
    let (status, _) = http(
        ingest.ingest,
        "POST",
        "/webhooks/meta/acme",
        &[("X-Hub-Signature-256", "sha256=00")],
        &body,
    );
    assert_eq!(status, 401);

    let broker = fleet_queue::Broker::connect(REDIS_URL, &prefix)
        .await
        .unwrap();
    assert_eq!(
        broker
            .queue(fleet_core::INBOUND_QUEUE)
            .backlog()
            .await
            .unwrap(),
        2
    );

    assert_eq!(http(ingest.admin, "GET", "/readyz", &[], b"").0, 200);
    let (status, page) = http(ingest.admin, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(
        page.contains("fleet_ingest_requests_total{provider=\"meta\",outcome=\"accepted\"} 1"),
        "{page}"
    );
    assert!(
        page.contains(
            "fleet_ingest_rejected_total{provider=\"meta\",reason=\"signature_malformed\"} 1"
        ),
        "{page}"
    );
    assert!(
        page.contains("fleet_ingest_request_duration_seconds_bucket"),
        "{page}"
    );
    assert!(
        !page.contains("16505551234") && !page.contains(META_SECRET),
        "no PII or secret in metrics"
    );
    assert!(
        !page
            .lines()
            .any(|l| l.starts_with("# HELP fleet_ingest_") && l.contains("Undocumented")),
        "every ingest metric has its HELP line: {page}"
    );
    // The contract requires `promtool check metrics` to pass; checked where promtool is installed.
    if let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // SIGHUP reloads the tenants file: a tenant added to it is served without a restart.
    let added = TENANTS.to_owned()
        + "\n[[tenant]]\nid = \"late\"\napi_token = \"late-token\"\n[tenant.meta]\napp_secret = \"test_app_secret\"\n\
           verify_token = \"v\"\nphone_number_id = \"300\"\naccess_token = \"a\"\n";
    std::fs::write(&ingest.tenants, added).unwrap();
    let late = meta_text_body_to("300", &["wamid.LATE1"]);
    let late_sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &late);
    let post_late = || {
        http(
            ingest.ingest,
            "POST",
            "/webhooks/meta/late",
            &[("X-Hub-Signature-256", &late_sig)],
            &late,
        )
        .0
    };
    assert_eq!(post_late(), 404, "not a tenant before the reload");
    let pid = ingest.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The reload runs on the binary's own task; wait for it, bounded.
    let mut status = 0;
    for _ in 0..200 {
        status = post_late();
        if status != 404 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(status, 200, "served after SIGHUP");

    let status = ingest.terminate();
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
    cleanup(prefix);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_answers_503_while_redis_is_unreachable() {
    let prefix = test_prefix();
    let ingest = Ingest::start("redis://127.0.0.1:1", &prefix);
    let body = meta_text_body(&["wamid.DOWN1"]);
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &body);
    let (status, reply) = http(
        ingest.ingest,
        "POST",
        "/webhooks/meta/acme",
        &[("X-Hub-Signature-256", &sig)],
        &body,
    );
    assert_eq!(status, 503, "{reply}");
    assert_eq!(http(ingest.admin, "GET", "/readyz", &[], b"").0, 503);
    assert_eq!(http(ingest.admin, "GET", "/healthz", &[], b"").0, 200);
    let broker = fleet_queue::Broker::connect(REDIS_URL, &prefix)
        .await
        .unwrap();
    assert_eq!(
        broker
            .queue(fleet_core::INBOUND_QUEUE)
            .backlog()
            .await
            .unwrap(),
        0
    );
    assert_eq!(ingest.terminate().code(), Some(0));
    cleanup(prefix);
}
