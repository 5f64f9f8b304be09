//! The suite's own Redis and Postgres, started in its temporary directory on free ports so the
//! suite may kill, stop and restart them without touching anyone else's.
//!
//! - Redis: `redis-server` as a child, AOF on with `appendfsync always` (an answered write
//!   survives a SIGKILL), no RDB snapshots; a restart reloads the AOF.
//! - Postgres: a throwaway cluster made by `initdb` (as the `postgres` user when we are root:
//!   `initdb` refuses root) and run by `pg_ctl`, `fsync` off (the suite kills processes, never the
//!   machine, so the OS page cache keeps what was committed), stopped with `-m immediate` for an
//!   outage (like a crash: clients see their connections drop).

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::demo::{Resp, free_port};

/// How long a started service gets to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The suite's Redis.
pub(crate) struct Redis {
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` in `dir` on a free port and waits for it to answer.
    pub(crate) fn start(dir: &Path) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        let mut redis = Redis {
            addr: free_port()?,
            dir: dir.to_owned(),
            child: None,
        };
        redis.spawn()?;
        redis.wait_ready(START_TIMEOUT)?;
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server process (no wait): after a kill, it reloads the AOF before answering.
    pub(crate) fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.out"))?;
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server process exited (by itself, since the suite reaps what it kills).
    pub(crate) fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("redis-server exited by itself ({status})"))
            }
            _ => None,
        }
    }

    /// Waits until it answers PING (a server still loading its AOF answers `-LOADING`).
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pong = Resp::connect(&self.url()).and_then(|mut r| r.call(&["PING"]));
            if matches!(pong.as_deref(), Ok([p]) if p == "PONG") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("redis-server did not answer PING within {timeout:?}");
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The suite's Postgres cluster.
pub(crate) struct Postgres {
    pub(crate) port: u16,
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    pub(crate) up: bool,
}

/// The directory of `initdb` and `pg_ctl`: `$FLEET_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else whatever `PATH` has.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEET_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map_or_else(PathBuf::new, |(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// Makes a cluster in `dir` (owned by `postgres` when we are root) and starts it.
    pub(crate) fn start(dir: &Path) -> Result<Postgres> {
        std::fs::create_dir_all(dir)?;
        let as_postgres = is_root();
        let pg = Postgres {
            port: free_port()?.port(),
            bin: pg_bin(),
            data: dir.join("data"),
            dir: dir.to_owned(),
            as_postgres,
            up: false,
        };
        if as_postgres {
            crate::run({
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(dir);
                c
            })?;
        }
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null());
        crate::run(initdb).context(
            "initdb failed (set FLEET_PG_BIN to the directory of PostgreSQL's initdb and pg_ctl)",
        )?;
        let mut pg = pg;
        pg.start_server(true)?;
        Ok(pg)
    }

    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = if self.bin.as_os_str().is_empty() {
            PathBuf::from(program)
        } else {
            self.bin.join(program)
        };
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // Its own group: a Ctrl-C at the terminal must not stop the server behind the suite's back.
        cmd.process_group(0).stdin(Stdio::null());
        cmd
    }

    /// `pg_ctl start`; `wait` waits until it accepts connections.
    pub(crate) fn start_server(&mut self, wait: bool) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &options])
            .arg(if wait { "-w" } else { "-W" })
            .arg("start")
            .stdout(Stdio::null());
        crate::run(ctl).context("pg_ctl start failed")?;
        self.up = true;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every connection drops at once, as in a crash.
    pub(crate) fn stop_server(&mut self) -> Result<()> {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::run(ctl).context("pg_ctl stop failed")?;
        self.up = false;
        Ok(())
    }

    /// Whether the postmaster answers `pg_ctl status` (it runs detached, not as our child).
    pub(crate) fn running(&self) -> bool {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ctl.status().is_ok_and(|s| s.success())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.up || self.running() {
            let _ = self.stop_server();
        }
    }
}
