//! The fleet under test: two processes of each binary, each in a slot that keeps its name, ports
//! and log file across restarts, and knows whether its process is supposed to be running. Every
//! exit the suite did not cause is recorded: a Fleet process never exits by itself, whatever
//! happens to Redis, Postgres or the provider.

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use crate::demo::tail;

/// How long a process SIGTERMed gets to exit before it is killed and the stop counts as failed.
pub(crate) const GRACEFUL_STOP_LIMIT: Duration = Duration::from_secs(40);

/// Wall-clock Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the suite expects of a slot's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Running, and must stay so.
    Running,
    /// SIGKILLed: down until `restart_at`.
    Killed { restart_at: Instant },
    /// SIGSTOPped until `resume_at`.
    Frozen { resume_at: Instant },
    /// SIGTERMed at `since`: it must exit 0 within [`GRACEFUL_STOP_LIMIT`]; then, if `restart`,
    /// it is started again at once.
    Stopping { since: Instant, restart: bool },
    /// Stopped for good (the end of the run).
    Stopped,
}

/// One process slot.
pub(crate) struct Slot {
    /// `fleet-outbound-1`.
    pub(crate) name: String,
    /// `fleet-outbound`.
    pub(crate) role: &'static str,
    pub(crate) admin: SocketAddr,
    command: Box<dyn Fn() -> Command>,
    log: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) expect: Expect,
    /// Processes started in this slot.
    pub(crate) starts: u32,
}

/// Something the supervisor noticed.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A process exited without being told to: the failure the suite reports.
    ExitedByItself {
        slot: String,
        at_ms: u64,
        status: String,
        log_tail: String,
    },
    /// A SIGTERMed process exited; `clean` when with status 0 within the limit.
    Stopped {
        slot: String,
        after: Duration,
        status: String,
        clean: bool,
    },
    /// A SIGTERMed process did not exit within the limit and was killed.
    StopTimedOut { slot: String },
    /// A process was started again (after a kill, a graceful stop or an exit by itself).
    Restarted { slot: String, at_ms: u64 },
    /// A frozen process was resumed.
    Resumed { slot: String, at_ms: u64 },
}

impl Slot {
    pub(crate) fn new(
        name: String,
        role: &'static str,
        admin: SocketAddr,
        log: PathBuf,
        command: Box<dyn Fn() -> Command>,
    ) -> Slot {
        Slot {
            name,
            role,
            admin,
            command,
            log,
            child: None,
            expect: Expect::Stopped,
            starts: 0,
        }
    }

    /// Starts its process (appending to its log).
    pub(crate) fn start(&mut self) -> Result<()> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = (self.command)();
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        self.expect = Expect::Running;
        self.starts += 1;
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a name for `kill`, e.g. `KILL`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// One supervision step: notices exits, restarts and resumes what is due.
    pub(crate) fn tick(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let now = Instant::now();
        match self.expect {
            Expect::Running => {
                if let Some(status) = self.exit_status() {
                    self.child = None;
                    events.push(Event::ExitedByItself {
                        slot: self.name.clone(),
                        at_ms: now_ms(),
                        status: status.to_string(),
                        log_tail: tail(&self.log, 8),
                    });
                    // Keep the run going: the exit is recorded, the fleet carries on.
                    self.start()?;
                    events.push(Event::Restarted {
                        slot: self.name.clone(),
                        at_ms: now_ms(),
                    });
                }
            }
            Expect::Killed { restart_at } => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.wait();
                }
                if now >= restart_at {
                    self.start()?;
                    events.push(Event::Restarted {
                        slot: self.name.clone(),
                        at_ms: now_ms(),
                    });
                }
            }
            Expect::Frozen { resume_at } => {
                if now >= resume_at {
                    self.signal("CONT");
                    self.expect = Expect::Running;
                    events.push(Event::Resumed {
                        slot: self.name.clone(),
                        at_ms: now_ms(),
                    });
                } else if let Some(status) = self.exit_status() {
                    // A stopped process cannot exit; if it did, something else killed it.
                    self.child = None;
                    events.push(Event::ExitedByItself {
                        slot: self.name.clone(),
                        at_ms: now_ms(),
                        status: status.to_string(),
                        log_tail: tail(&self.log, 8),
                    });
                    self.start()?;
                }
            }
            Expect::Stopping { since, restart } => {
                if let Some(status) = self.exit_status() {
                    self.child = None;
                    let after = since.elapsed();
                    events.push(Event::Stopped {
                        slot: self.name.clone(),
                        after,
                        status: status.to_string(),
                        clean: status.success() && after <= GRACEFUL_STOP_LIMIT,
                    });
                    if restart {
                        self.start()?;
                        events.push(Event::Restarted {
                            slot: self.name.clone(),
                            at_ms: now_ms(),
                        });
                    } else {
                        self.expect = Expect::Stopped;
                    }
                } else if since.elapsed() > GRACEFUL_STOP_LIMIT {
                    self.signal("KILL");
                    if let Some(mut c) = self.child.take() {
                        let _ = c.wait();
                    }
                    events.push(Event::StopTimedOut {
                        slot: self.name.clone(),
                    });
                    if restart {
                        self.start()?;
                    } else {
                        self.expect = Expect::Stopped;
                    }
                }
            }
            Expect::Stopped => {}
        }
        Ok(())
    }

    /// SIGKILL now; start again after `hold`.
    pub(crate) fn kill_for(&mut self, hold: Duration) {
        self.signal("KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.expect = Expect::Killed {
            restart_at: Instant::now() + hold,
        };
    }

    /// SIGSTOP now; SIGCONT after `hold`.
    pub(crate) fn freeze_for(&mut self, hold: Duration) {
        self.signal("STOP");
        self.expect = Expect::Frozen {
            resume_at: Instant::now() + hold,
        };
    }

    /// SIGTERM now; start again once it exited when `restart`.
    pub(crate) fn terminate(&mut self, restart: bool) {
        if matches!(self.expect, Expect::Frozen { .. }) {
            self.signal("CONT");
        }
        self.signal("TERM");
        self.expect = Expect::Stopping {
            since: Instant::now(),
            restart,
        };
    }

    /// Whether the slot's process is running as expected (a fault may pick it).
    pub(crate) fn available(&self) -> bool {
        self.expect == Expect::Running && self.child.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
