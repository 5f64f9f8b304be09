//! Leases of the entries a consumer holds: a heartbeat keeps them alive, and a holder checks its
//! lease before an effect that must not happen twice.
//!
//! Why: the scheduler reclaims an entry whose idle time (since it was read, or last claimed)
//! passed the queue's lease. Without renewal a live worker that holds an entry longer (a slow
//! provider, a long Postgres outage waited out in the handler, a read buffer of a thousand
//! deliveries) would see it reclaimed and handed to another worker while it still works on it.
//! The heartbeat is `XCLAIM <stream> <group> <self> 0 <ids…> JUSTID`: it resets the idle time of
//! the entries this consumer still owns, does not count a delivery, and answers only the ids that
//! are still pending for the group, so an entry that is no longer answered was reclaimed (or
//! settled) and its lease is lost.
//!
//! A process frozen past its lease (SIGSTOP, a long GC-like pause, a VM migration) wakes up with
//! every heartbeat missed; the monotonic clock has moved on meanwhile. [`Leases::confirm`] is what
//! a holder asks right before an effect: within half a lease of the last confirmation it answers
//! from memory, otherwise it claims the entry again in Redis, and a lost entry must not be acted
//! on. (Half a lease leaves the effect itself, bounded by its own timeout, the other half.)
//!
//! The lease is the scheduler's: it writes each queue's lease where consumers read it
//! ([`crate::Queue::publish_lease`]), so the two never disagree; [`LEASE_DEFAULT`] applies until
//! a scheduler has run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use fleet_core::Priority;
use fred::{cmd, prelude::*, types::Value};

use crate::{Queue, Result};

/// The lease of a queue before a scheduler published one (the scheduler's own default).
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Most ids one heartbeat `XCLAIM` carries; more are sent in further commands.
pub const HEARTBEAT_CHUNK: usize = 500;
/// Shortest heartbeat period, whatever the lease (tests run with leases of a second or less).
const HEARTBEAT_MIN: Duration = Duration::from_millis(50);

/// Where a held entry's lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Owned; last confirmed (read, or claimed again) at this instant.
    Held(Instant),
    /// Redis no longer has it pending for this consumer: reclaimed by the scheduler, or settled.
    Lost,
}

/// The entries one consumer holds. Shared by the consumer (which adds what it reads), its
/// settlers (which remove what they settle) and the heartbeat task.
#[derive(Debug)]
pub(crate) struct Leases {
    queue: Queue,
    group: Arc<str>,
    consumer: Arc<str>,
    held: Mutex<HashMap<(Priority, Arc<str>), State>>,
    /// The queue's lease as last read from Redis.
    lease: Mutex<Duration>,
}

impl Leases {
    /// Leases of consumer `consumer` in `group`, with a heartbeat task that lives as long as
    /// anything holds the returned `Arc`.
    pub(crate) async fn start(queue: Queue, group: &str, consumer: &str) -> Result<Arc<Leases>> {
        let lease = queue.published_lease().await?.unwrap_or(LEASE_DEFAULT);
        let leases = Arc::new(Leases {
            queue,
            group: group.into(),
            consumer: consumer.into(),
            held: Mutex::new(HashMap::new()),
            lease: Mutex::new(lease),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(heartbeat(Arc::downgrade(&leases)));
        }
        Ok(leases)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(Priority, Arc<str>), State>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This consumer's name.
    pub(crate) fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Records what a fence learned of an entry's lease.
    pub(crate) fn fenced(&self, priority: Priority, id: &str, fence: &crate::Fence) {
        let state = match fence {
            crate::Fence::Lost => State::Lost,
            _ => State::Held(Instant::now()),
        };
        if let Some(s) = self.held().get_mut(&(priority, Arc::from(id))) {
            *s = state;
        }
    }

    /// The lease in force.
    pub(crate) fn lease(&self) -> Duration {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records entries just read: their lease started when the read was sent.
    pub(crate) fn hold<'a>(
        &self,
        read_at: Instant,
        ids: impl Iterator<Item = (Priority, &'a str)>,
    ) {
        let mut held = self.held();
        for (p, id) in ids {
            held.insert((p, id.into()), State::Held(read_at));
        }
        metrics::gauge!("fleet_queue_leases_held", "queue" => self.queue.name.to_string())
            .set(held.len() as f64);
    }

    /// Forgets settled entries (whatever the settlement's outcome: an entry whose settlement
    /// failed is left to the scheduler's reclaim, which needs its lease to run out).
    pub(crate) fn release<'a>(&self, ids: impl Iterator<Item = (Priority, &'a str)>) {
        let mut held = self.held();
        for (p, id) in ids {
            held.remove(&(p, Arc::from(id)));
        }
    }

    /// Whether this consumer may still act on the entry: true within half a lease of its last
    /// confirmation, otherwise only if claiming it again in Redis succeeds. False once lost.
    pub(crate) async fn confirm(&self, priority: Priority, id: &str) -> Result<bool> {
        let key = (priority, Arc::<str>::from(id));
        let fresh_for = self.lease() / 2;
        match self.held().get(&key) {
            Some(State::Lost) => return Ok(false),
            Some(State::Held(at)) if at.elapsed() < fresh_for => return Ok(true),
            _ => {}
        }
        let asked_at = Instant::now();
        let owned = self.claim(priority, std::slice::from_ref(&key.1)).await?;
        let state = if owned.is_empty() {
            metrics::counter!("fleet_queue_leases_lost_total", "queue" => self.queue.name.to_string())
                .increment(1);
            State::Lost
        } else {
            State::Held(asked_at)
        };
        if let Some(s) = self.held().get_mut(&key) {
            *s = state;
        }
        Ok(state != State::Lost)
    }

    /// `XCLAIM … 0 <ids> JUSTID` on one stream: resets the idle time of the ids still pending
    /// for the group and gives them to this consumer (they are already its own: nothing else
    /// claims entries by id), and answers those ids.
    async fn claim(&self, priority: Priority, ids: &[Arc<str>]) -> Result<Vec<String>> {
        let mut args: Vec<Value> = Vec::with_capacity(ids.len() + 5);
        args.push(self.queue.keys.stream(priority).into());
        args.push(Value::from(&*self.group));
        args.push(Value::from(&*self.consumer));
        args.push(0i64.into());
        args.extend(ids.iter().map(|id| Value::from(&**id)));
        args.push("JUSTID".into());
        let reply: Value = self
            .queue
            .broker
            .client()
            .custom(
                cmd!("XCLAIM", hash: fred::types::ClusterHash::Offset(0)),
                args,
            )
            .await?;
        Ok(match reply {
            Value::Array(ids) => ids.into_iter().filter_map(|v| v.into_string()).collect(),
            _ => Vec::new(),
        })
    }

    /// One heartbeat: re-reads the lease, claims every held entry again, marks the ones Redis no
    /// longer has for this consumer as lost.
    pub(crate) async fn beat(&self) -> Result<()> {
        if let Some(lease) = self.queue.published_lease().await? {
            *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
        }
        let started = Instant::now();
        for p in Priority::ALL {
            let ids: Vec<Arc<str>> = self
                .held()
                .iter()
                .filter(|((q, _), s)| *q == p && matches!(s, State::Held(_)))
                .map(|((_, id), _)| id.clone())
                .collect();
            for chunk in ids.chunks(HEARTBEAT_CHUNK) {
                let owned = self.claim(p, chunk).await?;
                let owned: std::collections::HashSet<&str> =
                    owned.iter().map(String::as_str).collect();
                let mut held = self.held();
                let mut lost = 0u64;
                for id in chunk {
                    if let Some(state) = held.get_mut(&(p, id.clone())) {
                        *state = if owned.contains(&**id) {
                            State::Held(started)
                        } else {
                            lost += 1;
                            State::Lost
                        };
                    }
                }
                if lost > 0 {
                    metrics::counter!("fleet_queue_leases_lost_total", "queue" => self.queue.name.to_string())
                        .increment(lost);
                }
            }
        }
        Ok(())
    }
}

/// Renews the leases every third of the lease until nothing holds the leases any more.
async fn heartbeat(leases: Weak<Leases>) {
    loop {
        let period = match leases.upgrade() {
            Some(l) => (l.lease() / 3).max(HEARTBEAT_MIN),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(l) = leases.upgrade() else { return };
        if let Err(e) = l.beat().await {
            // Redis away: the next beat tries again; entries whose lease runs out meanwhile are
            // reclaimed, and `confirm` tells their holders.
            tracing::warn!(queue = %l.queue.name, error = %e, "lease heartbeat failed");
        }
    }
}

impl Queue {
    /// Writes the lease the scheduler enforces on this queue, so consumers renew within it. The
    /// scheduler calls it on every stalled-recovery run; the key is one small string per queue.
    pub async fn publish_lease(&self, lease: Duration) -> Result<()> {
        let ms = lease.as_millis().clamp(1, i64::MAX as u128) as i64;
        let _: Value = self
            .broker
            .client()
            .set(self.keys.lease(), ms, None, None, false)
            .await?;
        Ok(())
    }

    /// The lease a scheduler published, if any.
    pub async fn published_lease(&self) -> Result<Option<Duration>> {
        let ms: Option<i64> = self.broker.client().get(self.keys.lease()).await?;
        Ok(ms
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64)))
    }
}
