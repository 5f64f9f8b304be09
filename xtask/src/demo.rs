//! `cargo xtask demo`: the whole pipeline on this machine in one command.
//!
//! It builds the release binaries, writes a tenants file with fresh secrets into a temporary
//! directory, migrates a `fleet_demo` database, starts the provider simulator, ingest, the
//! prospects and outbound workers and the scheduler on free loopback ports under a unique key
//! prefix, waits for every `/readyz`, runs `fleet-loadgen` (the smoke case by default, or any case
//! with `--case`), and prints a summary with each binary's peak memory.
//!
//! Every child runs in its own process group and is owned by a guard that stops the group on
//! drop (SIGTERM, then SIGKILL after a grace period), so the end of the run, an error or Ctrl-C
//! leaves nothing running; `pgrep` confirms it, and the prefix's Redis keys are deleted.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::services::{DATABASE_URL_DEFAULT, REDIS_URL_DEFAULT};

/// How long every service gets to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped child gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(25);
/// Binaries the demo builds and runs.
const BINARIES: &[&str] = &[
    "fleet-ingest",
    "fleet-prospects",
    "fleet-outbound",
    "fleet-scheduler",
    "fleetctl",
    "fleet-mock-provider",
    "fleet-loadgen",
];
/// Most SCAN rounds when deleting the demo's keys (each covers up to 1000 keys).
const MAX_SCAN_ROUNDS: usize = 10_000;

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Messages per second (overrides the case's rate).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load (overrides the case's duration).
    #[arg(long)]
    duration: Option<u64>,
    /// The load case to run [default: loadtest/cases/smoke/case.toml].
    #[arg(long)]
    case: Option<PathBuf>,
    /// Keep the services running after the load until Ctrl-C (to look around with fleetctl).
    #[arg(long)]
    keep_running: bool,
    /// Use debug builds instead of release ones (faster to build, slower to run).
    #[arg(long)]
    debug: bool,
    /// Use the binaries already built instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// Consumer loops of the prospects worker [default: fleet-prospects' own].
    #[arg(long)]
    prospects_consumers: Option<usize>,
}

/// A started child: its name, process (group leader of its own group) and log file.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Owns every child; stops them all on drop, whatever happened.
#[derive(Default)]
struct Children {
    list: Vec<Running>,
}

impl Children {
    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: PathBuf) -> Result<u32> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        // Its own process group, so the terminal's Ctrl-C reaches only us and we stop it in order.
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.list.push(Running { name, child, log });
        Ok(pid)
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        self.list.iter().map(|r| (r.name, r.child.id())).collect()
    }

    /// The first child that exited, with the tail of its log.
    fn exited(&mut self) -> Option<String> {
        for r in &mut self.list {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Some(format!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    r.name,
                    r.log.display(),
                    tail(&r.log, 15)
                ));
            }
        }
        None
    }

    /// SIGTERM to every group (newest first, so ingest stops before the workers drain), then
    /// SIGKILL to what is left after the grace period.
    fn stop_all(&mut self) {
        for r in self.list.iter().rev() {
            signal_group(r.child.id(), "TERM");
        }
        let deadline = Instant::now() + STOP_GRACE;
        for r in self.list.iter_mut().rev() {
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("demo: {} did not stop in time; killing it", r.name);
                        signal_group(r.child.id(), "KILL");
                        let _ = r.child.wait();
                        break;
                    }
                    Ok(None) => sleep(Duration::from_millis(50)),
                }
            }
            // Whatever the leader left in its group goes too.
            signal_group(r.child.id(), "KILL");
        }
    }

    /// Processes of the children's groups still alive.
    fn leftovers(&self) -> Option<String> {
        let groups: Vec<u32> = self.list.iter().map(|r| r.child.id()).collect();
        let alive = alive_in_groups(&groups);
        (!alive.is_empty()).then(|| alive.join("\n"))
    }
}

/// Processes of these process groups still alive (`pgrep -l -g`), zombies aside: an orphan that
/// exited waits for init to reap it, which some container inits never do.
pub(crate) fn alive_in_groups(groups: &[u32]) -> Vec<String> {
    if groups.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let Ok(out) = Command::new("pgrep")
        .args(["-l", "-g", &list.join(",")])
        .output()
    else {
        return vec!["pgrep could not run".into()];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let pid = line.split_whitespace().next().unwrap_or("");
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .is_some_and(|zombie| !zombie)
        })
        .map(str::to_owned)
        .collect()
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub(crate) fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn free_port() -> Result<SocketAddr> {
    // The port is free when we look; the short race with other programs is acceptable for a demo.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `GET path` on `addr`: the status code, or none when nothing answers.
pub(crate) fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The same URL with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Minimal RESP client to delete the demo's keys without any Redis tool installed.
pub(crate) struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub(crate) fn connect(url: &str) -> Result<Resp> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (auth, hostport) = rest
            .rsplit_once('@')
            .map_or((None, rest), |(a, h)| (Some(a), h));
        let hostport = hostport.split('/').next().unwrap_or("127.0.0.1:6379");
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:6379")
        };
        let s =
            TcpStream::connect(&hostport).with_context(|| format!("connecting to {hostport}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = Resp {
            stream: BufReader::new(s),
        };
        if let Some(auth) = auth {
            let args: Vec<&str> = match auth.split_once(':') {
                Some(("", pass)) => vec!["AUTH", pass],
                Some((user, pass)) => vec!["AUTH", user, pass],
                None => vec!["AUTH", auth],
            };
            r.call(&args)?;
        }
        Ok(r)
    }

    pub(crate) fn call(&mut self, args: &[&str]) -> Result<Vec<String>> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream.get_mut().write_all(out.as_bytes())?;
        let mut flat = Vec::new();
        self.read_value(&mut flat, 0)?;
        Ok(flat)
    }

    /// Reads one reply, flattening arrays into `out` (enough for SCAN and UNLINK).
    fn read_value(&mut self, out: &mut Vec<String>, depth: usize) -> Result<()> {
        if depth > 4 {
            bail!("unexpected nesting in a Redis reply");
        }
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" | ":" => out.push(rest.to_owned()),
            "-" => bail!("redis: {rest}"),
            "$" => {
                let len: i64 = rest.parse()?;
                if len >= 0 {
                    let mut buf = vec![0u8; len as usize + 2];
                    self.stream.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    out.push(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            "*" => {
                let n: i64 = rest.parse()?;
                for _ in 0..n.max(0) {
                    self.read_value(out, depth + 1)?;
                }
            }
            _ => bail!("unexpected Redis reply {line:?}"),
        }
        Ok(())
    }

    /// Deletes every key under `prefix:`; returns how many.
    fn delete_prefix(&mut self, prefix: &str) -> Result<u64> {
        let pattern = format!("{prefix}:*");
        let mut cursor = "0".to_owned();
        let mut deleted = 0;
        for _ in 0..MAX_SCAN_ROUNDS {
            let reply = self.call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])?;
            let Some((next, keys)) = reply.split_first() else {
                bail!("empty SCAN reply");
            };
            if !keys.is_empty() {
                let mut args = vec!["UNLINK"];
                args.extend(keys.iter().map(String::as_str));
                deleted += self
                    .call(&args)?
                    .first()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
            if next == "0" {
                return Ok(deleted);
            }
            cursor = next.clone();
        }
        bail!("more than {MAX_SCAN_ROUNDS} SCAN rounds; some keys of {prefix} may be left")
    }
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs the demo.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let DemoArgs {
        rate,
        duration,
        case: case_arg,
        keep_running,
        debug,
        prospects_consumers,
        no_build,
    } = args;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone())
            .context("cannot install the Ctrl-C handler")?;
    }
    let root = workspace_root();
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| REDIS_URL_DEFAULT.into());
    let database_url = with_database(
        &std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.into()),
        "fleet_demo",
    );

    // Build.
    let profile = if debug { "debug" } else { "release" };
    if !no_build {
        eprintln!("demo: building the {profile} binaries (the first build takes a few minutes)");
        let mut build = crate::cargo();
        build.current_dir(&root).arg("build");
        if !debug {
            build.arg("--release");
        }
        for b in BINARIES {
            build.args(["-p", b]);
        }
        crate::run(build)?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join(profile);
    let bin = |name: &str| target_dir.join(name);

    // Files and names of this run.
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let dir = std::env::temp_dir().join(format!("fleet-demo-{nonce}"));
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("demo-{nonce}");
    let case = case_arg
        .clone()
        .unwrap_or_else(|| root.join("loadtest/cases/smoke/case.toml"));
    let tenants = dir.join("tenants.toml");
    let case_text = std::fs::read_to_string(&case)
        .with_context(|| format!("cannot read {}", case.display()))?;
    let tenant_count = case_text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tenants")
                .and_then(|r| r.trim().strip_prefix('='))
        })
        .and_then(|v| v.split('#').next()?.trim().parse::<usize>().ok())
        .unwrap_or(2);
    let mut gen_tenants = Command::new(bin("fleet-loadgen"));
    gen_tenants.args(["tenants", "--out"]).arg(&tenants);
    if case_arg.is_none() {
        gen_tenants.arg("--demo");
    } else {
        gen_tenants.args(["--count", &tenant_count.to_string()]);
    }
    crate::run(gen_tenants)?;

    let mut migrate = Command::new(bin("fleetctl"));
    migrate.args(["--database-url", &database_url, "db", "migrate"]);
    crate::run(migrate)?;

    // Start everything.
    let mock_addr = free_port()?;
    let ingest_addr = free_port()?;
    let mut children = Children::default();
    let mut mock = Command::new(bin("fleet-mock-provider"));
    mock.args([
        "--addr",
        &mock_addr.to_string(),
        "--latency",
        "uniform:5-30",
    ]);
    children.spawn("fleet-mock-provider", mock, dir.join("mock.log"))?;
    let mut admins = Vec::new();
    for name in [
        "fleet-ingest",
        "fleet-prospects",
        "fleet-outbound",
        "fleet-scheduler",
    ] {
        let admin = free_port()?;
        let mut cmd = Command::new(bin(name));
        cmd.env_remove("FLEET_CONFIG")
            .env("REDIS_URL", &redis_url)
            .env("DATABASE_URL", &database_url)
            .env("FLEET_KEY_PREFIX", &prefix)
            .env("FLEET_TENANTS", &tenants)
            .env("FLEET_ADMIN_ADDR", admin.to_string())
            .env("FLEET_INGEST_ADDR", ingest_addr.to_string())
            // The load generator signs Twilio requests for the address it posts to.
            .env("FLEET_PUBLIC_URL", format!("http://{ingest_addr}"))
            .env("FLEET_META_API_BASE", format!("http://{mock_addr}/v23.0"))
            .env("FLEET_TWILIO_API_BASE", format!("http://{mock_addr}"))
            .env("FLEET_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        if let (Some(n), "fleet-prospects") = (prospects_consumers, name) {
            cmd.args(["--consumers", &n.to_string()]);
        }
        children.spawn(name, cmd, dir.join(format!("{name}.log")))?;
        admins.push((name, admin));
    }
    eprintln!(
        "demo: started {} processes (prefix {prefix}, database fleet_demo, logs in {})",
        children.list.len(),
        dir.display()
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<(&str, SocketAddr, &str)> =
        admins.iter().map(|(n, a)| (*n, *a, "/readyz")).collect();
    waiting.push(("fleet-mock-provider", mock_addr, "/healthz"));
    while !waiting.is_empty() {
        if interrupted.load(Ordering::Relaxed) {
            return finish(children, &dir, &redis_url, &prefix, Some("interrupted"));
        }
        if let Some(why) = children.exited() {
            return finish(children, &dir, &redis_url, &prefix, Some(&why));
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = waiting.iter().map(|w| w.0).collect();
            let why = format!(
                "not ready within {}s: {}",
                READY_TIMEOUT.as_secs(),
                names.join(", ")
            );
            return finish(children, &dir, &redis_url, &prefix, Some(&why));
        }
        waiting.retain(|(_, addr, path)| http_status(*addr, path) != Some(200));
        sleep(Duration::from_millis(100));
    }
    eprintln!("demo: every service is ready; ingest on http://{ingest_addr}");

    // The load.
    let mut load = Command::new(bin("fleet-loadgen"));
    load.current_dir(&root)
        .arg("run")
        .arg("--case")
        .arg(&case)
        .arg("--tenants")
        .arg(&tenants)
        .args(["--target", &format!("http://{ingest_addr}")])
        .args(["--database-url", &database_url])
        .args(["--redis-url", &redis_url])
        .args(["--prefix", &prefix])
        .args(["--mock-url", &format!("http://{mock_addr}")]);
    if let Some(r) = rate {
        load.args(["--rate", &r.to_string()]);
    }
    if let Some(d) = duration {
        load.args(["--duration", &d.to_string()]);
    }
    for (name, pid) in children.pids() {
        load.args(["--watch", &format!("{name}={pid}")]);
    }
    // A local Redis and the local Postgres processes (its per-connection backends do the
    // work) too, for their share of the CPU.
    if let Ok(out) = Command::new("pgrep")
        .args(["-o", "-x", "redis-server"])
        .output()
        && let Some(pid) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
    {
        load.args(["--watch", &format!("redis-server={pid}")]);
    }
    if let Ok(out) = Command::new("pgrep").args(["-x", "postgres"]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .take(64)
        {
            load.args(["--watch", &format!("postgres={pid}")]);
        }
    }
    // The generator stays in our process group: its progress bar is on our terminal, and a
    // Ctrl-C reaches it directly.
    let mut loadgen = load.spawn().context("starting fleet-loadgen")?;
    let load_status = loop {
        if let Some(status) = loadgen.try_wait()? {
            break Some(status);
        }
        if interrupted.load(Ordering::Relaxed) {
            let _ = Command::new("kill")
                .args(["-INT", &loadgen.id().to_string()])
                .status();
            let _ = loadgen.wait();
            break None;
        }
        if let Some(why) = children.exited() {
            let _ = loadgen.kill();
            let _ = loadgen.wait();
            return finish(children, &dir, &redis_url, &prefix, Some(&why));
        }
        sleep(Duration::from_millis(100));
    };

    eprintln!("\ndemo: peak resident memory (VmHWM) of every binary:");
    for (name, pid) in children.pids() {
        match peak_rss_mib(pid) {
            Some(mib) => eprintln!("  {name:<20} {mib:>6.1} MiB"),
            None => eprintln!("  {name:<20} (not readable: /proc/{pid}/status has no VmHWM)"),
        }
    }
    if keep_running && load_status.is_some() {
        eprintln!(
            "\ndemo: still running; look around with\n  {} --prefix {prefix} --redis-url {redis_url} --database-url {database_url} queues\n\
             ingest http://{ingest_addr}, simulator http://{mock_addr}/stats, tenants {}\nPress Ctrl-C to stop.",
            bin("fleetctl").display(),
            tenants.display()
        );
        while !interrupted.load(Ordering::Relaxed) {
            if let Some(why) = children.exited() {
                return finish(children, &dir, &redis_url, &prefix, Some(&why));
            }
            sleep(Duration::from_millis(200));
        }
    }
    let why = match load_status {
        None => Some("interrupted".to_owned()),
        Some(s) if !s.success() => Some(format!("the load run did not pass ({s}); see its report")),
        Some(_) => None,
    };
    finish(children, &dir, &redis_url, &prefix, why.as_deref())
}

/// Stops every child, checks nothing is left, deletes the prefix's keys; fails with `why`.
fn finish(
    mut children: Children,
    dir: &Path,
    redis_url: &str,
    prefix: &str,
    why: Option<&str>,
) -> Result<()> {
    eprintln!("demo: stopping every process");
    children.stop_all();
    match children.leftovers() {
        Some(left) => eprintln!("demo: still running after the stop:\n{left}"),
        None => eprintln!("demo: pgrep finds nothing left running"),
    }
    match Resp::connect(redis_url).and_then(|mut r| r.delete_prefix(prefix)) {
        Ok(n) => eprintln!("demo: deleted {n} Redis keys under {prefix}:"),
        Err(e) => eprintln!("demo: could not delete the Redis keys under {prefix}: {e:#}"),
    }
    // The tenants file holds (demo) secrets: it goes in any case; the logs stay after a failure.
    let _ = std::fs::remove_file(dir.join("tenants.toml"));
    match why {
        Some(why) => bail!("{why} (logs in {})", dir.display()),
        None => {
            let _ = std::fs::remove_dir_all(dir);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/fleet", "fleet_demo"),
            "postgres://postgres@127.0.0.1:5432/fleet_demo"
        );
        assert_eq!(
            with_database("postgres://u:p@h/x?sslmode=disable", "d"),
            "postgres://u:p@h/d?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "d"),
            "postgres://h:5432/d"
        );
    }

    #[test]
    fn children_are_stopped_on_drop_with_their_groups() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut children = Children::default();
        let mut cmd = Command::new("sh");
        // A grandchild in the same group must go too.
        cmd.args(["-c", "sleep 300 & sleep 300"]);
        let pid = children
            .spawn("sleeper", cmd, dir.join("sleeper.log"))
            .unwrap();
        sleep(Duration::from_millis(100));
        drop(children);
        let alive = alive_in_groups(&[pid]);
        assert!(alive.is_empty(), "left running: {alive:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
