//! The service: every replica campaigns for the leadership lock and serves the health gauges;
//! the leader alone runs the maintenance tasks, under a child cancellation token that is
//! cancelled the moment a renewal fails, so a replica that lost the lock stops at once.

use std::time::Duration;

use fleet_queue::{Broker, Queue};
use fleet_runtime::Shutdown;
use tokio::{sync::watch, task::JoinSet, time::Instant};

use crate::{
    ConfigError, LeaderLock, SchedulerConfig, consumers::Consumers, delayed::Delayed,
    health::Health, retention::Retention, stalled::Stalled, task,
};

/// How long the tasks of a term that ended may take to wind down before they are aborted. They
/// stop at their next await on cancellation, so this is only a bound against surprises.
const TERM_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What this replica is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Campaigning: another replica leads, or none could be reached.
    Follower,
    /// Leading, in the term named by this fencing token.
    Leader {
        /// The term's fencing token (strictly increasing from term to term).
        fencing_token: u64,
    },
}

impl Role {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// One scheduler replica.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    queues: Vec<Queue>,
    lock: LeaderLock,
    role: watch::Sender<Role>,
}

/// Why a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermEnd {
    Shutdown,
    Lost,
    RenewFailed,
    TaskEnded,
}

impl Scheduler {
    /// A replica maintaining `config.queues` through `broker`, campaigning with `lock` (whose
    /// TTL should be `config.leader.ttl`; the lock's own TTL is the one used, renewed every
    /// third of it). Refuses an invalid configuration.
    pub fn new(
        config: SchedulerConfig,
        broker: &Broker,
        lock: LeaderLock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let queues = config.queues.iter().map(|q| broker.queue(q)).collect();
        let (role, _) = watch::channel(Role::Follower);
        Ok(Scheduler {
            config,
            queues,
            lock,
            role,
        })
    }

    /// Follows this replica's role as it changes (for tests, and readiness if needed).
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Runs until `shutdown` is cancelled: campaigns, leads when elected, and serves the health
    /// gauges throughout. On shutdown the tasks stop, the lock is released if held (so another
    /// replica takes over at its next campaign rather than after the TTL), and this returns.
    pub async fn run(self, shutdown: Shutdown) {
        crate::metrics::describe();
        metrics::gauge!("fleet_scheduler_leader").set(0.0);
        let health = Health::new(
            self.config.health.clone(),
            self.config.group.clone(),
            self.queues.clone(),
        );
        let health_task = tokio::spawn(health.run(shutdown.child()));
        let every = self.lock.ttl() / 3;
        let mut failures: u64 = 0;
        tracing::info!(
            token = self.lock.token(),
            ttl_ms = self.lock.ttl().as_millis() as u64,
            "scheduler campaigning for leadership"
        );
        while !shutdown.is_cancelled() {
            // Renewals are timed from when the acquisition was sent: the lock's TTL runs from
            // some point after it.
            let sent = Instant::now();
            match tokio::time::timeout(every, self.lock.try_acquire()).await {
                Ok(Ok(Some(fencing_token))) => {
                    failures = 0;
                    if self.lead(fencing_token, sent, &shutdown).await == TermEnd::Shutdown {
                        break;
                    }
                }
                Ok(Ok(None)) => failures = 0,
                Ok(Err(e)) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot campaign for leadership");
                    }
                }
                Err(_) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(failures, "campaign for leadership timed out");
                    }
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(task::jittered(every)) => {}
            }
        }
        // Leaving: a lock still held (shutdown during a campaign that just won) is released.
        let _ = tokio::time::timeout(every, self.lock.release()).await;
        let _ = health_task.await;
        self.lock.close().await;
    }

    /// One term: spawns the tasks under a child token and renews the lock every third of its TTL
    /// until shutdown, a lost or failed renewal, or a task that ended on its own.
    async fn lead(&self, fencing_token: u64, acquired_at: Instant, shutdown: &Shutdown) -> TermEnd {
        let every = self.lock.ttl() / 3;
        let term = shutdown.child();
        let mut tasks = JoinSet::new();
        let c = &self.config;
        tasks.spawn(Delayed::new(c.delayed.clone(), self.queues.clone()).run(term.clone()));
        tasks.spawn(
            Stalled::new(c.stalled.clone(), c.group.clone(), self.queues.clone()).run(term.clone()),
        );
        tasks.spawn(Retention::new(c.retention.clone(), self.queues.clone()).run(term.clone()));
        tasks.spawn(Consumers::new(c.consumers.clone(), self.queues.clone()).run(term.clone()));
        self.role.send_replace(Role::Leader { fencing_token });
        metrics::gauge!("fleet_scheduler_leader").set(1.0);
        metrics::gauge!("fleet_scheduler_leader_fencing_token").set(fencing_token as f64);
        metrics::counter!("fleet_scheduler_leadership_changes_total", "outcome" => "acquired")
            .increment(1);
        tracing::info!(fencing_token, "leading: maintenance tasks started");

        let mut next_renewal = acquired_at + every;
        let end = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break TermEnd::Shutdown,
                Some(joined) = tasks.join_next() => {
                    tracing::error!(ok = joined.is_ok(), "a maintenance task ended on its own; giving up the lead");
                    break TermEnd::TaskEnded;
                }
                () = tokio::time::sleep_until(next_renewal) => {}
            }
            let sent = Instant::now();
            match tokio::time::timeout(every, self.lock.renew()).await {
                Ok(Ok(true)) => next_renewal = sent + every,
                Ok(Ok(false)) => break TermEnd::Lost,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the leadership lock");
                    break TermEnd::RenewFailed;
                }
                Err(_) => {
                    tracing::warn!("renewal of the leadership lock timed out");
                    break TermEnd::RenewFailed;
                }
            }
        };
        // Stop first, then tell: from here on this replica must not act as the leader.
        term.cancel();
        self.role.send_replace(Role::Follower);
        metrics::gauge!("fleet_scheduler_leader").set(0.0);
        let outcome = match end {
            TermEnd::Shutdown => "released",
            TermEnd::Lost => "lost",
            TermEnd::RenewFailed | TermEnd::TaskEnded => "stepped_down",
        };
        metrics::counter!("fleet_scheduler_leadership_changes_total", "outcome" => outcome)
            .increment(1);
        let drained = tokio::time::timeout(TERM_DRAIN_LIMIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
        match end {
            TermEnd::Shutdown => tracing::info!(fencing_token, "stopped leading: shutting down"),
            TermEnd::Lost => tracing::warn!(
                fencing_token,
                "lost the leadership lock (expired or taken): tasks stopped"
            ),
            TermEnd::RenewFailed | TermEnd::TaskEnded => {
                // Not known to be lost: give it up, so another replica need not wait for the TTL
                // (a failed release is harmless, the lock then expires by itself).
                let _ = tokio::time::timeout(every, self.lock.release()).await;
                tracing::warn!(
                    fencing_token,
                    "stepped down: tasks stopped, campaigning again"
                );
            }
        }
        end
    }
}
