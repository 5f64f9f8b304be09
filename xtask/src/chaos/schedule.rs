//! The fault schedule: which fault happens when, drawn from the seed, so a run can be repeated
//! exactly (`--seed`). Pure: no IO, unit-tested.
//!
//! The short schedule has every kind of fault at least once (one SIGKILL of each binary), one at
//! a time in a shuffled order with short gaps; the long one draws a kind at random for each slot
//! until the load ends, with the durations (a 30 s Postgres outage).

use std::{fmt, time::Duration};

/// The Fleet binaries the suite runs (two processes each).
pub(crate) const ROLES: [&str; 4] = [
    "fleet-ingest",
    "fleet-prospects",
    "fleet-outbound",
    "fleet-scheduler",
];
/// The binaries whose processes hold leases (workers): the ones frozen past their lease.
pub(crate) const WORKER_ROLES: [&str; 2] = ["fleet-prospects", "fleet-outbound"];

/// A small seeded generator (SplitMix64): enough to shuffle a schedule, and the same on every
/// machine, so a seed always means the same schedule.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform duration in `[lo, hi]`, to the millisecond.
    pub(crate) fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// SIGKILL one process of the binary, start it again after `hold`.
    Kill { role: &'static str },
    /// SIGSTOP one worker for `hold` (past its lease), then SIGCONT.
    Freeze { role: &'static str },
    /// SIGTERM one process, wait for it to exit, start it again.
    GracefulRestart { role: &'static str },
    /// SIGKILL Redis, start it again after `hold` (it reloads its AOF).
    RedisKill,
    /// Stop Postgres for `hold`, then start it again.
    PostgresOutage,
    /// The provider holds every request longer than outbound's HTTP timeout for `hold`.
    SlowProvider,
    /// Script permanent provider refusals (dead letters), then replay both dead-letter queues.
    DeadLetterReplay,
}

impl FaultKind {
    /// The name in the fault log.
    pub(crate) fn log_name(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "sigkill",
            FaultKind::Freeze { .. } => "sigstop",
            FaultKind::GracefulRestart { .. } => "sigterm",
            FaultKind::RedisKill => "redis_kill",
            FaultKind::PostgresOutage => "postgres_outage",
            FaultKind::SlowProvider => "slow_provider",
            FaultKind::DeadLetterReplay => "dlq_replay",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// When it begins, from the start of the load.
    pub(crate) at: Duration,
    /// What it does.
    pub(crate) kind: FaultKind,
    /// How long it lasts (a killed process stays down, a frozen one frozen, an outage out).
    pub(crate) hold: Duration,
    /// Which process of the binary it hits (index among its replicas).
    pub(crate) replica: usize,
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = |role: &str| format!("{role}-{}", self.replica + 1);
        let what = match &self.kind {
            FaultKind::Kill { role } => format!("SIGKILL {}, restart after", target(role)),
            FaultKind::Freeze { role } => format!("SIGSTOP {} (past its lease) for", target(role)),
            FaultKind::GracefulRestart { role } => {
                format!(
                    "SIGTERM {}, wait for its exit, start it (budget",
                    target(role)
                )
            }
            FaultKind::RedisKill => "SIGKILL redis-server (AOF always), restart after".into(),
            FaultKind::PostgresOutage => "Postgres stopped (immediate) for".into(),
            FaultKind::SlowProvider => "provider slower than the HTTP timeout for".into(),
            FaultKind::DeadLetterReplay => {
                "scripted permanent refusals, then dlq replay outbound + inbound (budget".into()
            }
        };
        let close = if what.ends_with("(budget") { ")" } else { "" };
        write!(
            f,
            "+{:>6.1}s  {what} {:.1}s{close}",
            self.at.as_secs_f64(),
            self.hold.as_secs_f64()
        )
    }
}

/// The knobs the schedule depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The stalled-entry lease the suite configures.
    pub(crate) lease: Duration,
    /// How long Postgres stays away.
    pub(crate) postgres_outage: Duration,
    /// How long the provider stays slow.
    pub(crate) slow_provider: Duration,
    /// Replicas of each binary.
    pub(crate) replicas: usize,
}

/// How long the schedule reserves for a fault that lasts `hold` (the fault itself plus recovery).
fn budget(kind: &FaultKind, hold: Duration) -> Duration {
    match kind {
        // The graceful stop drains sends and batches: reserve some time for the exit.
        FaultKind::GracefulRestart { .. } => hold.max(Duration::from_secs(8)),
        FaultKind::DeadLetterReplay => Duration::from_secs(8),
        _ => hold,
    }
}

fn hold_of(kind: &FaultKind, t: &Timing, rng: &mut Rng) -> Duration {
    match kind {
        FaultKind::Kill { .. } => rng.between(Duration::from_millis(500), Duration::from_secs(2)),
        FaultKind::Freeze { .. } => t.lease * 2,
        FaultKind::GracefulRestart { .. } => Duration::from_secs(8),
        FaultKind::RedisKill => rng.between(Duration::from_millis(500), Duration::from_secs(2)),
        FaultKind::PostgresOutage => t.postgres_outage,
        FaultKind::SlowProvider => t.slow_provider,
        FaultKind::DeadLetterReplay => Duration::from_secs(8),
    }
}

fn kinds_once_each(rng: &mut Rng) -> Vec<FaultKind> {
    let mut kinds: Vec<FaultKind> = ROLES.iter().map(|role| FaultKind::Kill { role }).collect();
    kinds.push(FaultKind::Freeze {
        role: WORKER_ROLES[rng.below(WORKER_ROLES.len() as u64) as usize],
    });
    kinds.push(FaultKind::GracefulRestart {
        role: ROLES[rng.below(ROLES.len() as u64) as usize],
    });
    kinds.extend([
        FaultKind::RedisKill,
        FaultKind::PostgresOutage,
        FaultKind::SlowProvider,
        FaultKind::DeadLetterReplay,
    ]);
    kinds
}

/// The short schedule: every kind at least once (each binary SIGKILLed once), one at a time in a
/// shuffled order, starting at `first` with gaps of one to three seconds. Returns the schedule and
/// when its last fault is over.
pub(crate) fn short(seed: u64, t: &Timing, first: Duration) -> (Vec<Planned>, Duration) {
    let mut rng = Rng::new(seed);
    let mut kinds = kinds_once_each(&mut rng);
    rng.shuffle(&mut kinds);
    let mut at = first;
    let mut out = Vec::new();
    for kind in kinds {
        let hold = hold_of(&kind, t, &mut rng);
        let replica = rng.below(t.replicas as u64) as usize;
        let spent = budget(&kind, hold);
        out.push(Planned {
            at,
            kind,
            hold,
            replica,
        });
        at += spent + rng.between(Duration::from_secs(1), Duration::from_secs(3));
    }
    (out, at)
}

/// The long schedule: from `first` until `until`, a fault every five to fifteen seconds after the
/// previous one is over; every kind once first (shuffled), then kinds drawn at random.
pub(crate) fn long(seed: u64, t: &Timing, first: Duration, until: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut kinds = kinds_once_each(&mut rng);
    rng.shuffle(&mut kinds);
    let mut queue = kinds.into_iter();
    let mut at = first;
    let mut out = Vec::new();
    loop {
        let kind = queue.next().unwrap_or_else(|| {
            let mut all = kinds_once_each(&mut rng);
            // Process faults are the common case in production: weigh them up.
            all.extend(ROLES.iter().map(|role| FaultKind::Kill { role }));
            let i = rng.below(all.len() as u64) as usize;
            all.swap_remove(i)
        });
        let hold = hold_of(&kind, t, &mut rng);
        let spent = budget(&kind, hold);
        if at + spent > until {
            return out;
        }
        let replica = rng.below(t.replicas as u64) as usize;
        out.push(Planned {
            at,
            kind,
            hold,
            replica,
        });
        at += spent + rng.between(Duration::from_secs(5), Duration::from_secs(15));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            lease: Duration::from_secs(5),
            postgres_outage: Duration::from_secs(10),
            slow_provider: Duration::from_secs(8),
            replicas: 2,
        }
    }

    #[test]
    fn the_short_schedule_has_every_kind_one_at_a_time() {
        for seed in 0..50 {
            let (plan, end) = short(seed, &timing(), Duration::from_secs(5));
            for role in ROLES {
                assert!(
                    plan.iter().any(|p| p.kind == FaultKind::Kill { role }),
                    "seed {seed}: no SIGKILL of {role}"
                );
            }
            for name in [
                "sigstop",
                "sigterm",
                "redis_kill",
                "postgres_outage",
                "slow_provider",
                "dlq_replay",
            ] {
                assert!(
                    plan.iter().any(|p| p.kind.log_name() == name),
                    "seed {seed}: no {name}"
                );
            }
            for pair in plan.windows(2) {
                assert!(
                    pair[0].at + budget(&pair[0].kind, pair[0].hold) < pair[1].at,
                    "seed {seed}: faults overlap: {} / {}",
                    pair[0],
                    pair[1]
                );
            }
            let freeze = plan
                .iter()
                .find(|p| matches!(p.kind, FaultKind::Freeze { .. }))
                .unwrap();
            assert_eq!(freeze.hold, Duration::from_secs(10), "twice the lease");
            assert!(
                end < Duration::from_secs(100),
                "seed {seed}: ends at {end:?}"
            );
        }
    }

    #[test]
    fn a_seed_always_means_the_same_schedule() {
        let a = short(42, &timing(), Duration::from_secs(5));
        let b = short(42, &timing(), Duration::from_secs(5));
        assert_eq!(a, b);
        let c = short(43, &timing(), Duration::from_secs(5));
        assert_ne!(a.0, c.0);
        assert_eq!(
            long(
                7,
                &timing(),
                Duration::from_secs(5),
                Duration::from_secs(500)
            ),
            long(
                7,
                &timing(),
                Duration::from_secs(5),
                Duration::from_secs(500)
            )
        );
    }

    #[test]
    fn the_long_schedule_fills_the_run_and_ends_before_it() {
        let until = Duration::from_secs(520);
        let plan = long(3, &timing(), Duration::from_secs(10), until);
        assert!(plan.len() >= 20, "{} faults", plan.len());
        let last = plan.last().unwrap();
        assert!(last.at + budget(&last.kind, last.hold) <= until);
        assert!(plan.iter().any(|p| p.kind == FaultKind::PostgresOutage));
    }
}
