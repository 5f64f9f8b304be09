//! The ingest service's shared state: configuration, the current tenants with their admission
//! limiters, the queue handles, and the cached queue backlogs and Redis health.
//!
//! Per-request work stays cheap: the tenants snapshot is one `Arc` clone under a read lock, the
//! limiter check is lock-free, and the high-water and Redis-health checks read atomics that a
//! background task refreshes every [`IngestConfig::backlog_interval`], so a flood of webhooks does
//! not turn into a flood of `XINFO` calls, and an unreachable Redis is answered 503 at once instead
//! of after a command timeout per request.
//!
//! The backlog is [`Queue::backlog`], the same waiting count `fleetctl queues` and the scheduler's
//! gauges show: entries appended and not yet delivered, never acknowledged history, exact after a
//! Redis restart or failover too (then, for the few refreshes a recount takes, a lower bound).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use fleet_core::{INBOUND_QUEUE, OUTBOUND_QUEUE};
use fleet_queue::{Broker, Queue};
use fleet_runtime::{Shutdown, Tenant, Tenants, TenantsError, TenantsHandle};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use tokio::sync::Semaphore;

use crate::{
    batcher::Batcher,
    config::{Durability, IngestConfig},
    metrics,
};

/// One tenant's admission limiter and the rate it was built with (kept across reloads when the
/// rate is unchanged, so a reload does not hand every tenant a fresh burst).
struct Limiter {
    rate: u32,
    limiter: DefaultDirectRateLimiter,
}

/// The tenants and their limiters, swapped together on reload.
pub(crate) struct Snapshot {
    pub(crate) tenants: Arc<Tenants>,
    limiters: HashMap<String, Arc<Limiter>>,
}

impl Snapshot {
    fn build(tenants: Arc<Tenants>, previous: Option<&Snapshot>) -> Snapshot {
        let limiters = tenants
            .iter()
            .map(|t| {
                let reused = previous
                    .and_then(|p| p.limiters.get(&t.id))
                    .filter(|l| l.rate == t.rate_limit_per_second)
                    .cloned();
                let limiter = reused.unwrap_or_else(|| {
                    // Tenants validates the rate as at least 1.
                    let rate = NonZeroU32::new(t.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
                    Arc::new(Limiter {
                        rate: rate.get(),
                        limiter: RateLimiter::direct(Quota::per_second(rate)),
                    })
                });
                (t.id.clone(), limiter)
            })
            .collect();
        Snapshot { tenants, limiters }
    }

    /// Admits one request of `tenant`, or says how long until it would be admitted.
    pub(crate) fn admit(&self, tenant: &Tenant) -> Result<(), Duration> {
        let Some(l) = self.limiters.get(&tenant.id) else {
            return Ok(());
        };
        l.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(l.limiter.clock().now()))
    }
}

/// Says once, at start, how durable an answered webhook is: the Redis server's AOF settings
/// (`CONFIG GET`; the local durability is the server's `appendfsync always`, which ingest cannot
/// set) and the replicas each group commit waits for. Logged, and exported as gauges.
async fn report_durability(broker: Broker, durability: Durability) {
    let wait_replicas = match durability {
        Durability::Default => 0,
        Durability::Replicas { replicas, .. } => replicas,
    };
    ::metrics::gauge!(metrics::WAIT_REPLICAS).set(f64::from(wait_replicas));
    match broker.persistence().await {
        Ok(p) => {
            ::metrics::gauge!(metrics::REDIS_APPENDONLY).set(u8::from(p.appendonly) as f64);
            ::metrics::gauge!(metrics::REDIS_APPENDFSYNC_ALWAYS)
                .set(u8::from(p.fsyncs_every_write()) as f64);
            if p.fsyncs_every_write() {
                tracing::info!(appendfsync = %p.appendfsync, wait_replicas, "redis fsyncs every write before answering: an answered webhook survives a crash of the redis host");
            } else {
                tracing::warn!(appendonly = p.appendonly, appendfsync = %p.appendfsync, wait_replicas, "redis does not fsync every write (appendfsync always): a crash of the redis host can lose webhooks already answered 200, unless replicas hold them");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, wait_replicas, "cannot read redis's AOF settings (CONFIG GET): the durability of answered webhooks is unknown")
        }
    }
    if wait_replicas > 0 {
        match broker.connected_replicas().await {
            Ok(n) if n < u64::from(wait_replicas) => tracing::warn!(
                connected_replicas = n,
                wait_replicas,
                "fewer replicas connected than wait_replicas: webhooks are answered 503 until enough connect"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read redis's replicas"),
        }
    }
}

/// The two queues ingest writes to.
#[derive(Clone)]
pub(crate) struct Queues {
    pub(crate) broker: Broker,
    pub(crate) inbound: Queue,
    pub(crate) outbound: Queue,
    /// Group commit onto `inbound` (see [`crate::batcher`]).
    pub(crate) inbound_batcher: Batcher,
}

struct Inner {
    config: IngestConfig,
    tenants: TenantsHandle,
    snapshot: RwLock<Arc<Snapshot>>,
    queues: OnceLock<Queues>,
    inbound_backlog: AtomicU64,
    outbound_backlog: AtomicU64,
    redis_down: AtomicBool,
    body_budget: Arc<Semaphore>,
}

/// The state every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why the service cannot take work right now (answered 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No Redis connection yet, or the last check found Redis unreachable.
    Redis,
    /// The target queue is over its high-water mark.
    HighWater,
    /// Fewer replicas than `wait_replicas` acknowledged the events in time (`durability =
    /// "replicas"`); the events are appended, and the provider's retry is a duplicate.
    Replicas,
}

impl AppState {
    /// State over `tenants`, without a broker yet: until [`AppState::set_broker`] is called every
    /// request that needs a queue is answered 503.
    pub fn new(config: IngestConfig, tenants: TenantsHandle) -> Self {
        let snapshot = Arc::new(Snapshot::build(tenants.current(), None));
        let body_budget = Arc::new(Semaphore::new(
            config.body_bytes_in_flight.max(config.body_limit),
        ));
        AppState {
            inner: Arc::new(Inner {
                config,
                tenants,
                snapshot: RwLock::new(snapshot),
                queues: OnceLock::new(),
                inbound_backlog: AtomicU64::new(0),
                outbound_backlog: AtomicU64::new(0),
                redis_down: AtomicBool::new(false),
                body_budget,
            }),
        }
    }

    /// State with a connected broker.
    pub fn with_broker(config: IngestConfig, tenants: TenantsHandle, broker: Broker) -> Self {
        let state = Self::new(config, tenants);
        state.set_broker(broker);
        state
    }

    /// Hands the broker over once it is connected and starts the enqueue writers; later calls
    /// are ignored. Needs a tokio runtime.
    pub fn set_broker(&self, broker: Broker) {
        if self.inner.queues.get().is_some() {
            return;
        }
        let inbound = broker.queue(INBOUND_QUEUE);
        let durability = self.inner.config.durability;
        tokio::spawn(report_durability(broker.clone(), durability));
        let queues = Queues {
            inbound_batcher: Batcher::start(&inbound, durability),
            inbound,
            outbound: broker.queue(OUTBOUND_QUEUE),
            broker,
        };
        let _ = self.inner.queues.set(queues);
    }

    /// The configuration.
    pub fn config(&self) -> &IngestConfig {
        &self.inner.config
    }

    /// Whether a broker has been set.
    pub fn has_broker(&self) -> bool {
        self.inner.queues.get().is_some()
    }

    pub(crate) fn queues(&self) -> Option<&Queues> {
        self.inner.queues.get()
    }

    /// The current tenants with their limiters. When the tenants handle was reloaded (by SIGHUP or
    /// [`AppState::reload_tenants`]) the limiters are rebuilt once, keeping those whose rate did not
    /// change.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let current = self.inner.tenants.current();
        // A poisoned lock only means a rebuild panicked midway; the stored Arc is still whole.
        let cached = self
            .inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if Arc::ptr_eq(&cached.tenants, &current) {
            return cached;
        }
        let mut guard = self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&guard.tenants, &current) {
            *guard = Arc::new(Snapshot::build(current, Some(&guard)));
        }
        guard.clone()
    }

    /// The reloadable tenants handle (for SIGHUP reloads).
    pub fn tenants(&self) -> &TenantsHandle {
        &self.inner.tenants
    }

    /// Re-reads the tenants file; the next request picks up the new tenants and limiters. On error
    /// the current set stays in place.
    pub fn reload_tenants(&self) -> Result<usize, TenantsError> {
        let fresh = self.inner.tenants.reload()?;
        Ok(fresh.len())
    }

    /// Charges `bytes` more of the in-flight body budget to `charge`; `false` when the budget is
    /// spent (the charge keeps what it held).
    pub(crate) fn charge_body(&self, charge: &mut crate::http::BodyCharge, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.inner.body_budget.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                charge.add(permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether a request for `queue` may be enqueued now, from the cached health and backlog.
    pub(crate) fn availability(&self, queue: &str) -> Result<&Queues, Unavailable> {
        let queues = self.queues().ok_or(Unavailable::Redis)?;
        if self.inner.redis_down.load(Ordering::Relaxed) {
            return Err(Unavailable::Redis);
        }
        let backlog = if queue == OUTBOUND_QUEUE {
            &self.inner.outbound_backlog
        } else {
            &self.inner.inbound_backlog
        };
        if backlog.load(Ordering::Relaxed) > self.inner.config.queue_high_water {
            return Err(Unavailable::HighWater);
        }
        Ok(queues)
    }

    /// Marks Redis unreachable after a failed enqueue, until the next successful backlog check.
    pub(crate) fn mark_redis_down(&self) {
        if !self.inner.redis_down.swap(true, Ordering::Relaxed) {
            tracing::warn!("redis unreachable: answering 503 until it answers again");
            ::metrics::gauge!(metrics::REDIS_UNAVAILABLE).set(1.0);
        }
    }

    /// Reads both queues' backlogs once ([`Queue::backlog`]) and updates the cached values and the
    /// Redis health flag. The background task calls it every interval; tests call it directly.
    pub async fn refresh_backlog(&self) {
        let Some(queues) = self.queues() else { return };
        let (inbound, outbound) = tokio::join!(queues.inbound.backlog(), queues.outbound.backlog());
        let mut healthy = true;
        for (result, cell, name) in [
            (inbound, &self.inner.inbound_backlog, INBOUND_QUEUE),
            (outbound, &self.inner.outbound_backlog, OUTBOUND_QUEUE),
        ] {
            match result {
                Ok(n) => {
                    let previous = cell.swap(n, Ordering::Relaxed);
                    let high = self.inner.config.queue_high_water;
                    if (n > high) != (previous > high) {
                        tracing::warn!(
                            queue = name,
                            backlog = n,
                            high_water = high,
                            "queue {name} {} its high-water mark",
                            if n > high { "is over" } else { "is back under" }
                        );
                    }
                    ::metrics::gauge!(metrics::QUEUE_BACKLOG_ENTRIES, "queue" => name)
                        .set(n as f64);
                }
                Err(e) if e.is_unavailable() => healthy = false,
                // Any other error says Redis answered: keep the last known backlog.
                Err(e) => {
                    tracing::warn!(queue = name, error = %e, "cannot read the backlog of queue {name}")
                }
            }
        }
        if healthy {
            if self.inner.redis_down.swap(false, Ordering::Relaxed) {
                tracing::info!("redis answers again: accepting webhooks");
                ::metrics::gauge!(metrics::REDIS_UNAVAILABLE).set(0.0);
            }
        } else {
            self.mark_redis_down();
        }
    }

    /// Refreshes the backlog every interval until `shutdown`.
    pub async fn run_backlog_monitor(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.inner.config.backlog_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh_backlog().await,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Readiness: a broker is set and Redis answers a ping.
    pub async fn ready(&self) -> Result<(), String> {
        let queues = self
            .queues()
            .ok_or_else(|| "redis not connected yet".to_owned())?;
        queues.broker.ping().await.map_err(|e| e.to_string())
    }
}
