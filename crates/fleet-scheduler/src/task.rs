//! The loop every maintenance task shares: a staggered start, a jittered interval, a run that is
//! dropped the moment the task is cancelled, per-run metrics, and failure logs that do not flood.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use fleet_runtime::Shutdown;
use rand::Rng;
use tokio::time::Instant;

/// Share of the interval by which each wait is randomly lengthened or shortened (±10 %), so
/// replicas and tasks started together drift apart instead of hitting Redis in step.
pub(crate) const JITTER_FRACTION: f64 = 0.1;

/// One maintenance task, as the shared loop drives it.
pub(crate) trait Task: Send + Sync + 'static {
    /// What one run did.
    type Outcome: Send;
    /// Short name, used in logs and metric names (`fleet_scheduler_<name>_runs_total`).
    const NAME: &'static str;
    /// Time between the end of one run and the start of the next (before jitter).
    fn interval(&self) -> Duration;
    /// One run at the given clock.
    fn tick(&self, now_ms: u64) -> impl Future<Output = fleet_queue::Result<Self::Outcome>> + Send;
}

/// `base` lengthened or shortened by up to [`JITTER_FRACTION`].
pub(crate) fn jittered(base: Duration) -> Duration {
    let f = rand::rng().random_range(1.0 - JITTER_FRACTION..=1.0 + JITTER_FRACTION);
    base.mul_f64(f)
}

/// A random point in `[0, base)`: the first run's delay, so tasks and replicas do not start in step.
pub(crate) fn stagger(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.0..1.0))
}

/// A batch size that halves when a call fails for want of Redis (a timeout: the batch may be too
/// heavy for a busy server) and doubles back, up to its configured size, after each success.
#[derive(Debug)]
pub(crate) struct AdaptiveBatch {
    max: usize,
    current: AtomicUsize,
}

impl AdaptiveBatch {
    /// Smallest size it shrinks to.
    pub(crate) const MIN: usize = 10;

    pub(crate) fn new(max: usize) -> Self {
        AdaptiveBatch {
            max,
            current: AtomicUsize::new(max),
        }
    }

    /// The size to use for the next call.
    pub(crate) fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Adjusts the size after a call's result.
    pub(crate) fn observe<T>(&self, result: &fleet_queue::Result<T>) {
        let now = self.get();
        let next = match result {
            Ok(_) => now.saturating_mul(2).min(self.max),
            Err(e) if e.is_unavailable() => (now / 2).max(Self::MIN.min(self.max)),
            Err(_) => now,
        };
        if next != now {
            self.current.store(next, Ordering::Relaxed);
            if next < now {
                tracing::info!(
                    batch_size = next,
                    "redis timed out: smaller batches for now"
                );
            }
        }
    }
}

/// Runs `task` until `stop` is cancelled. Cancelling drops a run in flight at once: every Redis
/// call the tasks make is one atomic command or script, so dropping between two leaves nothing
/// half-done.
pub(crate) async fn run_loop<T: Task>(task: T, stop: Shutdown) {
    let runs_metric = format!("fleet_scheduler_{}_runs_total", T::NAME);
    let duration_metric = format!("fleet_scheduler_{}_run_duration_seconds", T::NAME);
    let mut failures: u64 = 0;
    let mut wait = stagger(task.interval());
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = task.tick(fleet_queue::now_ms()) => r,
        };
        metrics::histogram!(duration_metric.clone()).record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                metrics::counter!(runs_metric.clone(), "outcome" => "ok").increment(1);
                if failures > 0 {
                    tracing::info!(task = T::NAME, failures, "maintenance task recovered");
                    failures = 0;
                }
            }
            Err(e) => {
                metrics::counter!(runs_metric.clone(), "outcome" => "error").increment(1);
                failures += 1;
                // The first failure, then the 2nd, 4th, 8th...: an outage of Redis is reported
                // without a line per tick.
                if failures.is_power_of_two() {
                    tracing::warn!(task = T::NAME, failures, error = %e, "maintenance run failed");
                }
            }
        }
        wait = jittered(task.interval());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// Fails its first two runs, succeeds on the third, and hangs forever in the fourth.
    struct Scripted {
        runs: Arc<AtomicU32>,
    }

    impl Task for Scripted {
        type Outcome = ();
        const NAME: &'static str = "scripted";

        fn interval(&self) -> Duration {
            Duration::from_secs(1)
        }

        async fn tick(&self, _now_ms: u64) -> fleet_queue::Result<()> {
            match self.runs.fetch_add(1, Ordering::SeqCst) + 1 {
                1 | 2 => Err(fleet_queue::Error::Invalid("scripted failure".into())),
                3 => Ok(()),
                _ => std::future::pending().await,
            }
        }
    }

    #[test]
    fn batches_halve_on_timeouts_and_grow_back_on_success() {
        let b = AdaptiveBatch::new(500);
        let timeout: fleet_queue::Result<()> = Err(fleet_queue::Error::Unavailable(
            fred::error::Error::new(fred::error::ErrorKind::Timeout, "t"),
        ));
        let other: fleet_queue::Result<()> = Err(fleet_queue::Error::Invalid("x".into()));
        b.observe(&timeout);
        assert_eq!(b.get(), 250);
        b.observe(&other);
        assert_eq!(b.get(), 250, "only a timeout shrinks the batch");
        for _ in 0..10 {
            b.observe(&timeout);
        }
        assert_eq!(b.get(), AdaptiveBatch::MIN);
        b.observe(&Ok(()));
        assert_eq!(b.get(), 20);
        for _ in 0..10 {
            b.observe(&Ok(()));
        }
        assert_eq!(b.get(), 500, "never above the configured size");
        let tiny = AdaptiveBatch::new(3);
        tiny.observe(&timeout);
        assert_eq!(tiny.get(), 3, "a configured size below the minimum stays");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_survives_failures_and_stops_at_once_even_mid_run() {
        let runs = Arc::new(AtomicU32::new(0));
        let stop = Shutdown::new();
        let handle = tokio::spawn(run_loop(Scripted { runs: runs.clone() }, stop.clone()));
        // Paused time jumps ahead whenever every task waits: ten intervals pass at once.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "failures do not stop the loop"
        );
        assert!(!handle.is_finished(), "the fourth run hangs");
        stop.cancel();
        tokio::time::timeout(Duration::from_millis(1), handle)
            .await
            .expect("cancelling drops the run in flight")
            .unwrap();
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let base = Duration::from_secs(10);
        for _ in 0..1_000 {
            let j = jittered(base);
            assert!(
                j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                "{j:?}"
            );
            assert!(stagger(base) < base);
        }
    }
}
