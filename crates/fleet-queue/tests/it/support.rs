//! A test queue under a unique prefix, whose keys are deleted when it is dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

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

/// A `redis-server` of this test's own, with AOF `always`, in a temporary directory, which the
/// test can kill and start again.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts one, or `None` when no `redis-server` is installed (the test then says so and
    /// passes: it needs its own server to kill).
    pub(crate) async fn start(extra: &[&str]) -> Option<PrivateRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("redis-server is not installed: skipping the restart test");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fleet-waiting-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn().await;
        Some(r)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready once it answers PING with PONG (not LOADING).
        for _ in 0..500 {
            let ok = std::process::Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "PING"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                .unwrap_or(false);
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("private redis-server did not start");
    }

    /// SIGKILL, then a fresh process on the same port and files.
    pub(crate) async fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
