//! `cargo xtask chaos`: the chaos suite (issue 13, docs/chaos.md).
//!
//! It builds the binaries, starts its own Redis (AOF `always`) and Postgres cluster in a temporary
//! directory, the provider simulator, and two processes of each Fleet binary with a short lease;
//! runs `fleet-loadgen chaos-load` (signed webhooks and send-API requests, each retried until
//! accepted) while it carries out a seeded fault schedule (SIGKILL, SIGSTOP past the lease,
//! graceful restarts, Redis SIGKILL, a Postgres outage, a provider slower than the HTTP timeout,
//! a dead-letter replay), supervising every process; then runs `fleet-loadgen chaos-check` (the
//! invariants) and prints one verdict. It exits non-zero when any invariant broke, and keeps the
//! logs, the ledger and the fault log in its directory then.

mod fleet;
mod schedule;
mod services;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fleet::{Event, Expect, Slot, now_ms};
use schedule::{FaultKind, Planned, ROLES, Timing};
use serde_json::{Value, json};
use services::{Postgres, Redis};

use crate::demo::{free_port, http_status, workspace_root};

/// The stalled-entry lease the suite configures (short, so a frozen worker loses it quickly).
const LEASE: Duration = Duration::from_secs(5);
/// Time a sender that is alive needs, on top of a Postgres outage and a freeze, to write the record
/// of a send it made (its recorder's backoff, capped at a few seconds, plus the commit).
const RECORD_SLACK: Duration = Duration::from_secs(10);

/// Outbound's wait before resending a job whose earlier holder may have sent it
/// (`in_doubt_wait_ms`). The holder may be unable to record its send for a whole Postgres outage
/// and then be frozen (twice the lease) before it records: seed 313534 sent three replies at the
/// start of a 10 s outage, froze their sender 2 s after it, and with a 20 s wait sent them again
/// 20 s after the first send, the sender still frozen. So the wait covers the outage, the freeze
/// and the slack; it stays short enough for the drain (60 s, 180 s long) to see a killed sender's
/// job sent again. (Production's default is 300 s.)
fn in_doubt_wait(timing: &Timing) -> Duration {
    timing.postgres_outage + 2 * timing.lease + RECORD_SLACK
}
/// Outbound's HTTP timeout in the suite; the slow provider holds requests longer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the slow provider holds each request.
const SLOW_PROVIDER_LATENCY: Duration = Duration::from_secs(3);
/// Replicas of each Fleet binary.
const REPLICAS: usize = 2;
/// Most replicas of each binary `--replicas` may ask for.
const REPLICAS_MAX: usize = 8;
/// Permanent refusals scripted before the dead-letter replay.
const SCRIPTED_DEAD_LETTERS: u64 = 5;
/// Longest wait for the scripted refusals to be used before the replay goes ahead anyway.
const SCRIPTED_WAIT: Duration = Duration::from_secs(10);
/// How long every service gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Supervision tick.
const TICK: Duration = Duration::from_millis(50);
/// The first fault, after the load's start.
const FIRST_FAULT: Duration = Duration::from_secs(5);
/// Load after the last fault of the short schedule (the fleet works unhindered again).
const CALM_TAIL: Duration = Duration::from_secs(5);
/// Messages the long run sends at least.
const LONG_MESSAGES: u64 = 1_000_000;
/// Key prefix of the fleet under test.
const PREFIX: &str = "chaos";
/// The URL ingest believes it is (Twilio signs the full URL; both ingests share it).
const PUBLIC_URL: &str = "http://ingest.chaos.test";

/// Options of `cargo xtask chaos`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct ChaosArgs {
    /// The long run: at least a million messages, faults until the end, a 30 s Postgres outage.
    #[arg(long)]
    long: bool,
    /// Seed of the traffic and of the fault schedule [default: drawn, and printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Inbound messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Seconds of load [default: the short schedule plus 5 s; long: enough for a million messages].
    #[arg(long)]
    duration: Option<u64>,
    /// Longest wait for the fleet to drain after the load, seconds [default: 60; long: 180].
    #[arg(long)]
    drain_secs: Option<u64>,
    /// Use debug builds (on a 2-core machine they do not sustain 2,000 msg/s: see docs/chaos.md).
    #[arg(long)]
    debug: bool,
    /// Use the binaries already built.
    #[arg(long)]
    no_build: bool,
    /// Keep the run's directory (logs, ledger, fault log) even when every invariant held.
    #[arg(long)]
    keep: bool,
    /// Processes of each Fleet binary (1 to 8) [default: 2].
    #[arg(long, default_value_t = REPLICAS, value_parser = parse_replicas)]
    replicas: usize,
    /// No faults: the same load and invariants, for measuring replicas side by side (with `--replicas`).
    #[arg(long)]
    no_faults: bool,
}

impl ChaosArgs {
    /// The short run with every default, as `cargo xtask test` runs it.
    pub(crate) fn short_default() -> ChaosArgs {
        ChaosArgs {
            long: false,
            seed: None,
            rate: 2000,
            duration: None,
            drain_secs: None,
            debug: false,
            no_build: false,
            keep: false,
            replicas: REPLICAS,
            no_faults: false,
        }
    }
}

/// `--replicas`: 1 to [`REPLICAS_MAX`].
fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=REPLICAS_MAX).contains(&n) => Ok(n),
        _ => Err(format!("expected 1 to {REPLICAS_MAX}")),
    }
}

/// Whether `FLEET_SKIP_CHAOS` asks `cargo xtask test` to skip the suite.
pub(crate) fn skipped_by_env() -> bool {
    std::env::var("FLEET_SKIP_CHAOS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One HTTP/1.1 request on loopback; the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    // Small JSON answers come whole or chunked; a chunked one has its size lines around it.
    let body = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The suite's configuration file for the fleet: the short lease, outbound's HTTP timeout, and
/// retention that trims during the run.
fn fleet_config(in_doubt_wait: Duration) -> String {
    format!(
        "# Written by cargo xtask chaos: a short lease, so a frozen worker loses it within the run.\n\
         [outbound]\nrecipient_interval_ms = 1000\n\
         # A send in doubt (its holder killed between the provider's answer and its record) is\n\
         # retried after this; longer than a Postgres outage and a freeze (twice the lease) back\n\
         # to back, so a sender that resumes is never overtaken by a second send of its job.\n\
         in_doubt_wait_ms = {}\n\n\
         [outbound.http]\nrequest_timeout_ms = {}\n\n\
         [scheduler]\nmax_job_timeout = \"{}s\"\n\n\
         [scheduler.stalled]\ninterval = \"1s\"\nlease = \"{}s\"\n\n\
         # Retention trims acknowledged history during the run: queue counts must stay exact.\n\
         [scheduler.retention]\ninterval = \"5s\"\nacked_max_age = \"30s\"\nacked_max_count = 20000\n",
        in_doubt_wait.as_millis(),
        HTTP_TIMEOUT.as_millis(),
        LEASE.as_secs() - 1,
        LEASE.as_secs()
    )
}

/// A fault as it happened, for the fault log.
struct Record {
    kind: &'static str,
    target: String,
    role: &'static str,
    at_ms: u64,
    until_ms: Option<u64>,
    note: String,
}

/// A fault under way that is not a process slot's own state.
enum Active {
    Redis {
        record: usize,
        restart_at: Instant,
    },
    Postgres {
        record: usize,
        until: Instant,
    },
    Provider {
        record: usize,
        until: Instant,
        restore: String,
    },
    Replay {
        record: usize,
        since: Instant,
        want: u64,
        seen_at: Option<Instant>,
    },
}

/// Everything the run started, and what it saw.
struct Run {
    dir: PathBuf,
    bin: PathBuf,
    redis: Redis,
    postgres: Postgres,
    database_url: String,
    mock: SocketAddr,
    mock_child: Option<Child>,
    slots: Vec<Slot>,
    records: Vec<Record>,
    active: Vec<Active>,
    events: Vec<Event>,
    load_start: Instant,
    t0_ms: u64,
    service_failures: Vec<String>,
}

impl Run {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn since_start(&self) -> f64 {
        self.load_start.elapsed().as_secs_f64()
    }

    fn say(&self, what: &str) {
        eprintln!("chaos: +{:>6.1}s {what}", self.since_start());
    }

    fn fleetctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.bin("fleetctl"))
            .args(["--redis-url", &self.redis.url()])
            .args(["--database-url", &self.database_url])
            .args(["--prefix", PREFIX])
            .args(args)
            .output()
            .context("running fleetctl")?;
        // The first line says what was done (a table of reasons may follow).
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if !out.status.success() {
            bail!("fleetctl {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    fn mock_stat(&self, pointer: &str) -> Result<u64> {
        let (_, body) = http(self.mock, "GET", "/stats", None)?;
        let v: Value = serde_json::from_str(&body).context("the simulator's /stats")?;
        v.pointer(pointer)
            .and_then(Value::as_u64)
            .with_context(|| format!("/stats has no {pointer}"))
    }

    fn record(
        &mut self,
        kind: &'static str,
        target: &str,
        role: &'static str,
        note: String,
    ) -> usize {
        self.records.push(Record {
            kind,
            target: target.to_owned(),
            role,
            at_ms: now_ms(),
            until_ms: None,
            note,
        });
        self.records.len() - 1
    }

    /// The slot of `role` the fault hits: the planned replica, or the other one when the planned
    /// one is down, frozen or stopping (never two faults on one process).
    fn pick(&self, role: &str, replica: usize) -> Option<usize> {
        let of_role: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].role == role)
            .collect();
        (0..of_role.len())
            .map(|k| of_role[(replica + k) % of_role.len()])
            .find(|&i| self.slots[i].available())
    }

    fn begin(&mut self, p: &Planned) -> Result<()> {
        let name = p.kind.log_name();
        match &p.kind {
            FaultKind::Kill { role }
            | FaultKind::Freeze { role }
            | FaultKind::GracefulRestart { role } => {
                let Some(i) = self.pick(role, p.replica) else {
                    self.say(&format!(
                        "skipped {name} of {role}: no process of it is running"
                    ));
                    return Ok(());
                };
                let target = self.slots[i].name.clone();
                let pid = self.slots[i].pid().unwrap_or(0);
                self.record(
                    name,
                    &target,
                    role,
                    format!("pid {pid}, hold {:.1}s", p.hold.as_secs_f64()),
                );
                match &p.kind {
                    FaultKind::Kill { .. } => {
                        self.slots[i].kill_for(p.hold);
                        self.say(&format!(
                            "SIGKILL {target} (pid {pid}); restart in {:.1}s",
                            p.hold.as_secs_f64()
                        ));
                    }
                    FaultKind::Freeze { .. } => {
                        self.slots[i].freeze_for(p.hold);
                        self.say(&format!(
                            "SIGSTOP {target} (pid {pid}) for {:.1}s, past its {}s lease",
                            p.hold.as_secs_f64(),
                            LEASE.as_secs()
                        ));
                    }
                    _ => {
                        self.slots[i].terminate(true);
                        self.say(&format!(
                            "SIGTERM {target} (pid {pid}); it starts again once it exited"
                        ));
                    }
                }
            }
            FaultKind::RedisKill => {
                let pid = self.redis.pid().unwrap_or(0);
                let record = self.record(name, "redis-server", "", format!("pid {pid}"));
                self.redis.kill();
                self.say(&format!(
                    "SIGKILL redis-server (pid {pid}); restart in {:.1}s",
                    p.hold.as_secs_f64()
                ));
                self.active.push(Active::Redis {
                    record,
                    restart_at: Instant::now() + p.hold,
                });
            }
            FaultKind::PostgresOutage => {
                let record = self.record(
                    name,
                    "postgres",
                    "",
                    format!("{:.0}s", p.hold.as_secs_f64()),
                );
                self.postgres.stop_server()?;
                self.say(&format!(
                    "Postgres stopped (immediate) for {:.0}s",
                    p.hold.as_secs_f64()
                ));
                self.active.push(Active::Postgres {
                    record,
                    until: Instant::now() + p.hold,
                });
            }
            FaultKind::SlowProvider => {
                let (_, restore) = http(self.mock, "GET", "/config", None)?;
                let mut slow: Value =
                    serde_json::from_str(&restore).context("the simulator's /config")?;
                slow["latency"] =
                    json!({"kind": "fixed", "ms": SLOW_PROVIDER_LATENCY.as_millis() as u64});
                slow["hold_before_accept"] = json!(true);
                let (status, body) = http(self.mock, "PUT", "/config", Some(&slow.to_string()))?;
                if status >= 300 {
                    bail!("the simulator refused the slow configuration: {status} {body}");
                }
                let record = self.record(
                    name,
                    "fleet-mock-provider",
                    "",
                    format!(
                        "every request held {} ms (HTTP timeout {} ms)",
                        SLOW_PROVIDER_LATENCY.as_millis(),
                        HTTP_TIMEOUT.as_millis()
                    ),
                );
                self.say(&format!(
                    "provider holds every request {} ms (outbound gives up at {} ms) for {:.0}s",
                    SLOW_PROVIDER_LATENCY.as_millis(),
                    HTTP_TIMEOUT.as_millis(),
                    p.hold.as_secs_f64()
                ));
                self.active.push(Active::Provider {
                    record,
                    until: Instant::now() + p.hold,
                    restore,
                });
            }
            FaultKind::DeadLetterReplay => {
                let before = self.mock_stat("/rejected/permanent")?;
                let faults: Vec<Value> = (0..SCRIPTED_DEAD_LETTERS)
                    .map(|_| json!({"kind": "permanent"}))
                    .collect();
                let (status, _) = http(
                    self.mock,
                    "POST",
                    "/faults",
                    Some(&Value::from(faults).to_string()),
                )?;
                if status >= 300 {
                    bail!("the simulator refused the scripted faults: {status}");
                }
                let record = self.record(
                    name,
                    "dead letters",
                    "",
                    format!("{SCRIPTED_DEAD_LETTERS} scripted permanent refusals"),
                );
                self.say(&format!(
                    "scripted {SCRIPTED_DEAD_LETTERS} permanent refusals; replaying both dead-letter queues once they are used"
                ));
                self.active.push(Active::Replay {
                    record,
                    since: Instant::now(),
                    want: before + SCRIPTED_DEAD_LETTERS,
                    seen_at: None,
                });
            }
        }
        Ok(())
    }

    /// Moves the active faults on; `end_now` ends every one of them at once.
    fn progress_active(&mut self, end_now: bool) -> Result<()> {
        let now = Instant::now();
        let active = std::mem::take(&mut self.active);
        for a in active {
            match a {
                Active::Redis { record, restart_at } if end_now || now >= restart_at => {
                    self.redis.spawn()?;
                    self.redis.wait_ready(READY_TIMEOUT)?;
                    self.records[record].until_ms = Some(now_ms());
                    self.say("redis-server restarted and answering (AOF reloaded)");
                }
                Active::Postgres { record, until } if end_now || now >= until => {
                    self.postgres.start_server(false)?;
                    self.records[record].until_ms = Some(now_ms());
                    self.say("Postgres started again");
                }
                Active::Provider {
                    record,
                    until,
                    restore,
                } if end_now || now >= until => {
                    let (status, body) = http(self.mock, "PUT", "/config", Some(&restore))?;
                    if status >= 300 {
                        bail!("the simulator refused its own configuration back: {status} {body}");
                    }
                    self.records[record].until_ms = Some(now_ms());
                    self.say("provider back to its normal latency");
                }
                Active::Replay {
                    record,
                    since,
                    want,
                    seen_at,
                } => {
                    let used = self.mock_stat("/rejected/permanent").unwrap_or(0) >= want;
                    let seen_at = seen_at.or(used.then_some(now));
                    // A second after the last refusal, its dead letter is written.
                    let ready = seen_at.is_some_and(|t| now >= t + Duration::from_secs(1));
                    if end_now || ready || now >= since + SCRIPTED_WAIT {
                        let out =
                            self.fleetctl(&["dlq", "replay", "outbound", "--all", "--yes"])?;
                        let inb = self.fleetctl(&["dlq", "replay", "inbound", "--all", "--yes"])?;
                        self.records[record].until_ms = Some(now_ms());
                        self.records[record].note.push_str(&format!(
                            "; refusals used: {used}; outbound: {out}; inbound: {inb}"
                        ));
                        self.say(&format!("dlq replay outbound: {out} | inbound: {inb}"));
                    } else {
                        self.active.push(Active::Replay {
                            record,
                            since,
                            want,
                            seen_at,
                        });
                    }
                }
                other => self.active.push(other),
            }
        }
        Ok(())
    }

    /// One supervision step of every process.
    fn supervise(&mut self) -> Result<()> {
        let mut events = Vec::new();
        for slot in &mut self.slots {
            slot.tick(&mut events)?;
        }
        if let Some(why) = self.redis.exited() {
            self.service_failures
                .push(format!("+{:.1}s {why}", self.since_start()));
            self.redis.spawn()?;
        }
        if let Some(c) = &mut self.mock_child
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "the provider simulator exited ({status}); see {}",
                self.dir.join("fleet-mock-provider.log").display()
            );
        }
        for e in events {
            match &e {
                Event::ExitedByItself { slot, status, .. } => self.say(&format!(
                    "{slot} EXITED BY ITSELF ({status}); started again"
                )),
                Event::Stopped {
                    slot,
                    after,
                    status,
                    clean,
                } => self.say(&format!(
                    "{slot} stopped after {:.1}s ({status}){}",
                    after.as_secs_f64(),
                    if *clean { "" } else { ": NOT a clean stop" }
                )),
                Event::StopTimedOut { slot } => self.say(&format!(
                    "{slot} did not stop within {}s of SIGTERM; killed",
                    fleet::GRACEFUL_STOP_LIMIT.as_secs()
                )),
                Event::Restarted { slot, at_ms } | Event::Resumed { slot, at_ms } => {
                    if let Some(r) = self
                        .records
                        .iter_mut()
                        .rev()
                        .find(|r| r.target == *slot && r.until_ms.is_none())
                    {
                        r.until_ms = Some(*at_ms);
                    }
                    let what = if matches!(e, Event::Resumed { .. }) {
                        "SIGCONT"
                    } else {
                        "started again"
                    };
                    self.say(&format!("{slot} {what}"));
                }
            }
            self.events.push(e);
        }
        Ok(())
    }

    fn write_fault_log(&self, seed: u64) -> Result<PathBuf> {
        let faults: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                json!({
                    "kind": r.kind,
                    "target": r.target,
                    "role": r.role,
                    "at_ms": r.at_ms,
                    "until_ms": r.until_ms,
                    "note": r.note,
                })
            })
            .collect();
        let path = self.dir.join("faults.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(
                &json!({"seed": seed, "t0_ms": self.t0_ms, "faults": faults}),
            )?,
        )?;
        Ok(path)
    }

    /// Waits for `child` while supervising the fleet and carrying out due faults.
    fn drive(
        &mut self,
        child: &mut Child,
        plan: &mut std::collections::VecDeque<Planned>,
        interrupted: &AtomicBool,
    ) -> Result<std::process::ExitStatus> {
        loop {
            if interrupted.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted");
            }
            self.supervise()?;
            while plan
                .front()
                .is_some_and(|p| self.load_start + p.at <= Instant::now())
            {
                let p = plan.pop_front().expect("checked");
                self.begin(&p)?;
            }
            self.progress_active(false)?;
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            sleep(TICK);
        }
    }
}

fn start_slot_command(bin: PathBuf, env: Vec<(String, String)>) -> Box<dyn Fn() -> Command> {
    Box::new(move || {
        let mut cmd = Command::new(&bin);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd
    })
}

fn wait_ready(targets: &[(String, SocketAddr, &str)], run: &mut Run) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<&(String, SocketAddr, &str)> = targets.iter().collect();
    while !waiting.is_empty() {
        run.supervise()?;
        if let Some(Event::ExitedByItself { slot, log_tail, .. }) = run
            .events
            .iter()
            .find(|e| matches!(e, Event::ExitedByItself { .. }))
        {
            bail!("{slot} exited while starting:\n{log_tail}");
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = waiting.iter().map(|w| w.0.as_str()).collect();
            bail!(
                "not ready within {}s: {}",
                READY_TIMEOUT.as_secs(),
                names.join(", ")
            );
        }
        waiting.retain(|(_, addr, path)| http_status(*addr, path) != Some(200));
        sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs the suite; an error when an invariant broke (after the report).
pub(crate) fn run(args: ChaosArgs) -> Result<()> {
    let wall = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone())
            .context("cannot install the Ctrl-C handler")?;
    }
    let seed = args.seed.unwrap_or_else(|| now_ms() % 1_000_000);
    let rate = args.rate.max(1);
    let mode = if args.long { "long" } else { "short" };
    eprintln!("chaos: {mode} run, seed {seed} (repeat it with --seed {seed}), {rate} msg/s");

    let root = workspace_root();
    let profile = if args.debug { "debug" } else { "release" };
    if !args.no_build {
        eprintln!("chaos: building the {profile} binaries");
        let mut build = crate::cargo();
        build.current_dir(&root).arg("build").arg("--quiet");
        if !args.debug {
            build.arg("--release");
        }
        for b in [
            "fleet-ingest",
            "fleet-prospects",
            "fleet-outbound",
            "fleet-scheduler",
            "fleetctl",
            "fleet-mock-provider",
            "fleet-loadgen",
        ] {
            build.args(["-p", b]);
        }
        crate::run(build)?;
    }
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join(profile);

    // The schedule.
    let timing = Timing {
        lease: LEASE,
        postgres_outage: Duration::from_secs(if args.long { 30 } else { 10 }),
        slow_provider: Duration::from_secs(if args.long { 15 } else { 8 }),
        replicas: args.replicas,
    };
    let (plan, duration) = if args.long {
        let duration = Duration::from_secs(
            args.duration
                .unwrap_or((LONG_MESSAGES as f64 / f64::from(rate) * 1.05).ceil() as u64 + 10),
        );
        let plan = schedule::long(
            seed,
            &timing,
            FIRST_FAULT,
            duration.saturating_sub(CALM_TAIL * 4),
        );
        (plan, duration)
    } else {
        let (plan, end) = schedule::short(seed, &timing, FIRST_FAULT);
        let duration = args.duration.map_or(end + CALM_TAIL, Duration::from_secs);
        (plan, duration)
    };
    let plan = if args.no_faults { Vec::new() } else { plan };
    let drain_secs = args.drain_secs.unwrap_or(if args.long { 180 } else { 60 });
    eprintln!(
        "chaos: {:.0} s of load at {rate} msg/s; lease {} s, outbound HTTP timeout {} s; fault schedule:",
        duration.as_secs_f64(),
        LEASE.as_secs(),
        HTTP_TIMEOUT.as_secs()
    );
    for p in &plan {
        eprintln!("chaos:   {p}");
    }

    // The services.
    let dir = std::env::temp_dir().join(format!("fleet-chaos-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let redis = Redis::start(&dir.join("redis"))?;
    let postgres = Postgres::start(&dir.join("postgres"))?;
    let database_url = postgres.url("fleet");
    eprintln!(
        "chaos: redis {} (AOF always), postgres {} , files in {}",
        redis.url(),
        postgres.url("fleet"),
        dir.display()
    );
    let tenants = dir.join("tenants.toml");
    crate::run({
        let mut c = Command::new(bin.join("fleet-loadgen"));
        c.args(["tenants", "--count", "4", "--out"]).arg(&tenants);
        c
    })?;
    let config = dir.join("fleet.toml");
    std::fs::write(&config, fleet_config(in_doubt_wait(&timing)))?;
    crate::run({
        let mut c = Command::new(bin.join("fleetctl"));
        c.args(["--database-url", &database_url, "db", "migrate"]);
        c
    })?;

    let mock = free_port()?;
    let mock_log = std::fs::File::create(dir.join("fleet-mock-provider.log"))?;
    let mock_child = {
        use std::os::unix::process::CommandExt;
        Command::new(bin.join("fleet-mock-provider"))
            .args(["--addr", &mock.to_string(), "--latency", "uniform:5-30"])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(mock_log.try_clone()?)
            .stderr(mock_log)
            .spawn()
            .context("starting fleet-mock-provider")?
    };
    let mut run = Run {
        dir: dir.clone(),
        bin: bin.clone(),
        redis,
        postgres,
        database_url: database_url.clone(),
        mock,
        mock_child: Some(mock_child),
        slots: Vec::new(),
        records: Vec::new(),
        active: Vec::new(),
        events: Vec::new(),
        load_start: Instant::now(),
        t0_ms: now_ms(),
        service_failures: Vec::new(),
    };
    let mut ingests = Vec::new();
    for role in ROLES {
        for i in 1..=args.replicas {
            let name = format!("{role}-{i}");
            let admin = free_port()?;
            let ingest = (role == "fleet-ingest").then(free_port).transpose()?;
            let mut env = vec![
                ("REDIS_URL".to_owned(), run.redis.url()),
                ("DATABASE_URL".into(), database_url.clone()),
                ("FLEET_KEY_PREFIX".into(), PREFIX.into()),
                ("FLEET_TENANTS".into(), tenants.display().to_string()),
                ("FLEET_CONFIG".into(), config.display().to_string()),
                ("FLEET_ADMIN_ADDR".into(), admin.to_string()),
                ("FLEET_PUBLIC_URL".into(), PUBLIC_URL.into()),
                ("FLEET_META_API_BASE".into(), format!("http://{mock}/v23.0")),
                ("FLEET_TWILIO_API_BASE".into(), format!("http://{mock}")),
                ("FLEET_LOG_FORMAT".into(), "json".into()),
                (
                    "RUST_LOG".into(),
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                ),
            ];
            if let Some(addr) = ingest {
                env.push(("FLEET_INGEST_ADDR".into(), addr.to_string()));
                ingests.push(addr);
            }
            let command = start_slot_command(bin.join(role), env);
            let mut slot = Slot::new(
                name.clone(),
                role,
                admin,
                dir.join(format!("{name}.log")),
                command,
            );
            slot.start()?;
            run.slots.push(slot);
        }
    }
    let mut targets: Vec<(String, SocketAddr, &str)> = run
        .slots
        .iter()
        .map(|s| (s.name.clone(), s.admin, "/readyz"))
        .collect();
    targets.push(("fleet-mock-provider".into(), mock, "/healthz"));
    wait_ready(&targets, &mut run)?;
    let started_up = Instant::now();
    eprintln!(
        "chaos: {} Fleet processes ready after {:.1}s of start-up",
        run.slots.len(),
        wall.elapsed().as_secs_f64()
    );

    // The load, and the faults.
    let ledger = dir.join("ledger.json");
    let mut load = Command::new(bin.join("fleet-loadgen"));
    load.arg("chaos-load")
        .arg("--tenants")
        .arg(&tenants)
        .args(["--public-url", PUBLIC_URL])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &duration.as_secs_f64().to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--give-up-secs", "60"])
        .arg("--ledger")
        .arg(&ledger);
    for addr in &ingests {
        load.args(["--target", &format!("http://{addr}")]);
    }
    run.load_start = Instant::now();
    run.t0_ms = now_ms();
    let mut loadgen = load.spawn().context("starting fleet-loadgen chaos-load")?;
    let mut queue: std::collections::VecDeque<Planned> = plan.clone().into();
    let load_status = run.drive(&mut loadgen, &mut queue, &interrupted)?;
    let load_secs = run.since_start();
    for p in queue {
        run.say(&format!("not carried out (the load ended first): {p}"));
    }
    run.progress_active(true)?;
    for s in &mut run.slots {
        match s.expect {
            Expect::Frozen { .. } => {
                s.signal("CONT");
                s.expect = Expect::Running;
            }
            Expect::Killed { .. } => {
                s.expect = Expect::Killed {
                    restart_at: Instant::now(),
                }
            }
            _ => {}
        }
    }
    run.supervise()?;
    let fault_log = run.write_fault_log(seed)?;
    if !ledger.exists() {
        bail!("fleet-loadgen chaos-load wrote no ledger ({load_status})");
    }

    // The check, while the fleet drains.
    let report_path = dir.join("report.json");
    let check_start = Instant::now();
    let mut check = Command::new(bin.join("fleet-loadgen"));
    check
        .arg("chaos-check")
        .arg("--ledger")
        .arg(&ledger)
        .arg("--fault-log")
        .arg(&fault_log)
        .args(["--database-url", &database_url])
        .args(["--redis-url", &run.redis.url()])
        .args(["--prefix", PREFIX])
        .args(["--mock-url", &format!("http://{mock}")])
        .arg("--fleetctl")
        .arg(bin.join("fleetctl"))
        .args(["--drain-secs", &drain_secs.to_string()])
        .arg("--report")
        .arg(&report_path);
    let mut checker = check
        .spawn()
        .context("starting fleet-loadgen chaos-check")?;
    let mut nothing = std::collections::VecDeque::new();
    let check_status = run.drive(&mut checker, &mut nothing, &interrupted)?;
    let check_secs = check_start.elapsed().as_secs_f64();
    print_balance(&run.slots);

    // Stop the fleet gracefully: every process must exit 0 in time.
    for s in &mut run.slots {
        s.terminate(false);
    }
    let stop_start = Instant::now();
    while run.slots.iter().any(|s| s.expect != Expect::Stopped)
        && stop_start.elapsed() < fleet::GRACEFUL_STOP_LIMIT + Duration::from_secs(5)
    {
        run.supervise()?;
        sleep(TICK);
    }

    // The verdict.
    let report: Option<Value> = std::fs::read(&report_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let passed = summarize(
        &run,
        &Outcome {
            seed,
            rate,
            mode,
            report: report.as_ref(),
            load_ok: load_status.success(),
            check_ok: check_status.success(),
            start_secs: started_up.duration_since(wall).as_secs_f64(),
            load_secs,
            check_secs,
            wall_secs: wall.elapsed().as_secs_f64(),
        },
    );
    let keep = args.keep || !passed;
    let Run {
        redis,
        postgres,
        mock_child,
        slots,
        ..
    } = run;
    drop(slots);
    if let Some(mut c) = mock_child {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(redis);
    drop(postgres);
    if keep {
        eprintln!(
            "chaos: logs, ledger, fault log and report kept in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !passed {
        bail!("chaos: invariants broken (seed {seed}); see the report above");
    }
    Ok(())
}

/// The work counters of one process, read from its `/metrics`: the series of `name`, summed over
/// their labels; `None` when the page cannot be read.
fn counter_sum(admin: SocketAddr, name: &str) -> Option<f64> {
    let (status, page) = http(admin, "GET", "/metrics", None).ok()?;
    (status == 200).then(|| {
        page.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

/// How evenly the replicas of each worker shared the work: the entries each process acknowledged
/// (`fleet_queue_acked_total`) and the sends each outbound made, with each one's share. Read after
/// the drain, before the stop; a process restarted by a fault counts only since its restart.
fn print_balance(slots: &[Slot]) {
    for (role, counter) in [
        ("fleet-prospects", "fleet_queue_acked_total"),
        ("fleet-outbound", "fleet_queue_acked_total"),
        ("fleet-outbound", "fleet_outbound_sends_total"),
        ("fleet-ingest", "fleet_ingest_requests_total"),
    ] {
        let counts: Vec<(String, Option<f64>)> = slots
            .iter()
            .filter(|s| s.role == role)
            .map(|s| (s.name.clone(), counter_sum(s.admin, counter)))
            .collect();
        let total: f64 = counts.iter().filter_map(|(_, c)| *c).sum();
        let shares: Vec<String> = counts
            .iter()
            .map(|(name, c)| match c {
                Some(c) if total > 0.0 => format!("{name} {c:.0} ({:.0} %)", c / total * 100.0),
                Some(c) => format!("{name} {c:.0}"),
                None => format!("{name} unreadable"),
            })
            .collect();
        eprintln!("chaos: balance {counter}: {}", shares.join(", "));
    }
}

/// What the run's verdict is made of, besides the run itself.
struct Outcome<'a> {
    seed: u64,
    rate: u32,
    mode: &'a str,
    /// The checker's JSON report.
    report: Option<&'a Value>,
    /// Whether the load and the checker exited 0.
    load_ok: bool,
    check_ok: bool,
    /// Seconds of build and start-up, load, drain and check, and in all.
    start_secs: f64,
    load_secs: f64,
    check_secs: f64,
    wall_secs: f64,
}

/// Prints the run's verdict: the checker's invariants, the processes' own, the figures. True when
/// every invariant held.
fn summarize(run: &Run, o: &Outcome<'_>) -> bool {
    let Outcome {
        seed,
        rate,
        mode,
        report,
        load_ok,
        check_ok,
        start_secs,
        load_secs,
        check_secs,
        wall_secs,
    } = *o;
    println!("\n== chaos: {mode} run, seed {seed}, {rate} msg/s asked ==");
    println!("faults carried out ({}):", run.records.len());
    for r in &run.records {
        let rel = |ms: u64| (ms as f64 - run.t0_ms as f64) / 1000.0;
        println!(
            "  +{:>6.1}s {:<16} {:<20} {}{}",
            rel(r.at_ms),
            r.kind,
            r.target,
            r.until_ms.map_or("(not ended)".to_owned(), |u| format!(
                "until +{:.1}s",
                rel(u)
            )),
            if r.note.is_empty() {
                String::new()
            } else {
                format!("  [{}]", r.note)
            }
        );
    }
    let exits: Vec<&Event> = run
        .events
        .iter()
        .filter(|e| matches!(e, Event::ExitedByItself { .. }))
        .collect();
    let unclean: Vec<&Event> = run
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Stopped { clean: false, .. } | Event::StopTimedOut { .. }
            )
        })
        .collect();
    let stops = run
        .events
        .iter()
        .filter(|e| matches!(e, Event::Stopped { .. } | Event::StopTimedOut { .. }))
        .count();
    let starts: u32 = run.slots.iter().map(|s| s.starts).sum();
    let mut ok = true;
    let mut line = |held: bool, name: &str, summary: String, details: Vec<String>| {
        ok &= held;
        println!(
            "[{}] {name}\n       {summary}",
            if held { " ok " } else { "FAIL" }
        );
        for d in details {
            println!("       - {d}");
        }
    };
    line(
        exits.is_empty() && run.service_failures.is_empty(),
        "no process exited by itself",
        format!(
            "{} Fleet processes, {starts} starts; {} exits the suite did not cause",
            run.slots.len(),
            exits.len() + run.service_failures.len()
        ),
        exits
            .iter()
            .map(|e| match e {
                Event::ExitedByItself {
                    slot,
                    at_ms,
                    status,
                    log_tail,
                } => format!(
                    "{slot} at +{:.1}s ({status}); its last log lines:\n{}",
                    (*at_ms as f64 - run.t0_ms as f64) / 1000.0,
                    log_tail
                        .lines()
                        .map(|l| format!("           {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                _ => String::new(),
            })
            .chain(run.service_failures.iter().cloned())
            .collect(),
    );
    line(
        unclean.is_empty(),
        "every SIGTERM ends in exit 0 within the limit",
        format!(
            "{stops} graceful stops, {} not clean (limit {} s)",
            unclean.len(),
            fleet::GRACEFUL_STOP_LIMIT.as_secs()
        ),
        unclean
            .iter()
            .map(|e| match e {
                Event::Stopped {
                    slot,
                    after,
                    status,
                    ..
                } => format!("{slot}: {status} after {:.1}s", after.as_secs_f64()),
                Event::StopTimedOut { slot } => {
                    format!("{slot}: still running at the limit; killed")
                }
                _ => String::new(),
            })
            .collect(),
    );
    let (invariants, broken) =
        report
            .and_then(|r| r["invariants"].as_array())
            .map_or((0, 0), |list| {
                (
                    list.len(),
                    list.iter().filter(|i| i["ok"] != Value::Bool(true)).count(),
                )
            });
    line(
        report.is_some() && broken == 0 && check_ok,
        "the checker's invariants (above)",
        match report {
            Some(_) => format!("{} of {invariants} held", invariants - broken),
            None => "the checker wrote no report".into(),
        },
        Vec::new(),
    );
    line(
        load_ok,
        "the load settled every request",
        if load_ok {
            "every request accepted".into()
        } else {
            "some requests were abandoned or rejected (see the first invariant)".into()
        },
        Vec::new(),
    );
    if let Some(r) = report {
        println!(
            "figures: {:.0} msg/s achieved ({} messages, {} status events, {} send-API requests accepted); drained in {:.1} s; provider-to-record window p50 {} ms, p99 {} ms, max {} ms",
            r["achieved_rate"].as_f64().unwrap_or(0.0),
            r["accepted"][0],
            r["accepted"][1],
            r["accepted"][2],
            r["drain_secs"].as_f64().unwrap_or(0.0),
            r["window"]["p50_ms"],
            r["window"]["p99_ms"],
            r["window"]["max_ms"]
        );
    }
    println!(
        "wall time {wall_secs:.0} s: build and start-up {start_secs:.0} s, load {load_secs:.0} s, drain and check {check_secs:.0} s"
    );
    println!("chaos: {} (seed {seed})", if ok { "PASS" } else { "FAIL" });
    ok
}
