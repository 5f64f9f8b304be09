//! The apalis backend (`--features apalis`): every job handled once in both modes, failures and
//! caught panics and timeouts become retries through our delayed set, and a graceful shutdown
//! acknowledges what finished and gives back what never started.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use apalis::prelude::*;
use fleet_core::{Backoff, EnqueueOptions};
use fleet_queue::{
    ConsumerOptions, Delivery, PriorityMode, RetryAfter,
    apalis_backend::{BatchOutcome, JobError, StreamsBackend},
};

use crate::support::TestQueue;

fn options(batch: usize) -> ConsumerOptions {
    let mut o = ConsumerOptions::new("apalis-test");
    o.batch_size = batch;
    o.linger = Duration::ZERO;
    o.block = Duration::from_millis(50);
    o.mode = PriorityMode::Strict;
    o
}

async fn fill(t: &TestQueue, n: u32, opts: EnqueueOptions) {
    let jobs: Vec<(u32, EnqueueOptions)> = (0..n).map(|i| (i, opts.clone())).collect();
    for chunk in jobs.chunks(1_000) {
        t.queue.enqueue_batch(chunk).await.unwrap();
    }
}

/// Options whose retries wait one second, so a retried job is visibly in the delayed set.
fn slow_retries() -> EnqueueOptions {
    EnqueueOptions {
        max_attempts: 5,
        backoff: Backoff {
            initial_ms: 1_000,
            max_ms: 1_000,
        },
        ..Default::default()
    }
}

/// What the handlers saw, shared with the test.
#[derive(Clone, Default)]
struct Seen {
    jobs: Arc<Mutex<Vec<u32>>>,
    count: Arc<AtomicUsize>,
}

impl Seen {
    /// Records a job; returns how many were recorded so far.
    fn record(&self, job: u32) -> usize {
        self.jobs.lock().unwrap().push(job);
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }
}

const JOBS: u32 = 2_000;

#[tokio::test]
async fn single_mode_handles_every_job_exactly_once_and_acks_it() {
    let t = TestQueue::new().await;
    fill(&t, JOBS, EnqueueOptions::default()).await;
    let seen = Seen::default();
    async fn handle(d: Delivery, seen: Data<Seen>, w: WorkerContext) -> Result<(), JobError> {
        if seen.record(d.decode().unwrap()) == JOBS as usize {
            w.stop().unwrap();
        }
        Ok(())
    }
    WorkerBuilder::new("single")
        .backend(StreamsBackend::single(t.queue.clone(), options(100)))
        .data(seen.clone())
        .concurrency(50)
        .catch_panic()
        .build(handle)
        .run()
        .await
        .unwrap();
    let jobs = seen.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), JOBS as usize);
    assert_eq!(jobs.iter().collect::<HashSet<_>>().len(), JOBS as usize);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.pending(), stats.delayed, stats.dead), (0, 0, 0));
    assert_eq!(t.queue.backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn batch_mode_handles_every_job_exactly_once_in_batches() {
    let t = TestQueue::new().await;
    fill(&t, JOBS, EnqueueOptions::default()).await;
    let seen = Seen::default();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sizes = batches.clone();
    let handle = move |batch: Vec<Delivery>, seen: Data<Seen>, w: WorkerContext| {
        sizes.lock().unwrap().push(batch.len());
        async move {
            let mut total = 0;
            for d in &batch {
                total = seen.record(d.decode().unwrap());
            }
            if total == JOBS as usize {
                w.stop().unwrap();
            }
            Ok::<_, JobError>(())
        }
    };
    WorkerBuilder::new("batch")
        .backend(StreamsBackend::batch(t.queue.clone(), options(500)))
        .data(seen.clone())
        .concurrency(2)
        .build(handle)
        .run()
        .await
        .unwrap();
    let jobs = seen.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), JOBS as usize);
    assert_eq!(jobs.iter().collect::<HashSet<_>>().len(), JOBS as usize);
    let sizes = batches.lock().unwrap().clone();
    assert!(sizes.iter().all(|&s| (1..=500).contains(&s)), "{sizes:?}");
    assert!(sizes.len() >= (JOBS / 500) as usize);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.pending(), stats.delayed, stats.dead), (0, 0, 0));
}

/// Runs a one-job worker whose handler fails in the way `fail` chooses, and returns the queue.
async fn run_one_failing<F, Fut>(t: &TestQueue, fail: F)
where
    F: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), JobError>> + Send + 'static,
{
    t.queue.enqueue(&7u32, &slow_retries()).await.unwrap();
    // The worker stops itself from its event listener once the job's error was reported, which
    // apalis does after our middleware settled it.
    WorkerBuilder::new("failing")
        .backend(StreamsBackend::single(t.queue.clone(), options(10)))
        .on_event(|w, ev| {
            if matches!(ev, Event::Error(_)) {
                w.stop().unwrap();
            }
        })
        .concurrency(1)
        .catch_panic()
        .timeout(Duration::from_millis(200))
        .build(move |d: Delivery| fail.clone()(d))
        .run()
        .await
        .unwrap();
}

/// Promotes the retried job and reads it back with a plain consumer.
async fn next_attempt(t: &TestQueue) -> Delivery {
    assert_eq!(
        t.queue
            .promote_due(t.queue.now_ms() + 5_000, 10)
            .await
            .unwrap(),
        1
    );
    let mut c = t.consumer(10).await;
    let mut b = c.next_batch().await.unwrap();
    assert_eq!(b.len(), 1);
    b.remove(0)
}

#[tokio::test]
async fn a_failing_handler_retries_through_the_delayed_set_with_the_attempt_counted() {
    let t = TestQueue::new().await;
    run_one_failing(&t, |_| async {
        Err(JobError::Retry {
            after: RetryAfter::Backoff,
            error: "boom".into(),
        })
    })
    .await;
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.delayed, stats.pending(), stats.dead), (1, 0, 0));
    let again = next_attempt(&t).await;
    assert_eq!((again.attempts, again.decode::<u32>().unwrap()), (1, 7));
}

#[tokio::test]
async fn a_panicking_handler_does_not_kill_the_worker_and_is_retried() {
    let t = TestQueue::new().await;
    fill(&t, 10, slow_retries()).await;
    let seen = Seen::default();
    async fn handle(d: Delivery, seen: Data<Seen>) -> Result<(), JobError> {
        let job: u32 = d.decode().unwrap();
        if job == 3 {
            panic!("handler bug on job 3");
        }
        seen.record(job);
        Ok(())
    }
    // Stop once all ten were reported (nine successes, one caught panic), whatever the order.
    let reported = Arc::new(AtomicUsize::new(0));
    let counter = reported.clone();
    WorkerBuilder::new("panicking")
        .backend(StreamsBackend::single(t.queue.clone(), options(10)))
        .data(seen.clone())
        .on_event(move |w, ev| {
            if matches!(ev, Event::Success(_) | Event::Error(_))
                && counter.fetch_add(1, Ordering::SeqCst) + 1 == 10
            {
                w.stop().unwrap();
            }
        })
        .concurrency(1)
        .catch_panic()
        .build(handle)
        .run()
        .await
        .unwrap();
    let mut jobs = seen.jobs.lock().unwrap().clone();
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        [0, 1, 2, 4, 5, 6, 7, 8, 9],
        "the worker went on after the panic"
    );
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.delayed, stats.pending(), stats.dead), (1, 0, 0));
    let again = next_attempt(&t).await;
    assert_eq!((again.attempts, again.decode::<u32>().unwrap()), (1, 3));
}

#[tokio::test]
async fn a_handler_that_times_out_is_retried() {
    let t = TestQueue::new().await;
    run_one_failing(&t, |_| async {
        std::future::pending::<()>().await;
        Ok(())
    })
    .await;
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.delayed, stats.pending(), stats.dead), (1, 0, 0));
    assert_eq!(next_attempt(&t).await.attempts, 1);
}

#[tokio::test]
async fn a_fatal_error_dead_letters_at_once() {
    let t = TestQueue::new().await;
    run_one_failing(&t, |_| async {
        Err(JobError::Fatal {
            reason: "rejected".into(),
            error: "invalid number".into(),
        })
    })
    .await;
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.delayed, stats.pending(), stats.dead), (0, 0, 1));
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].error.as_str()),
        ("rejected", "invalid number")
    );
}

#[tokio::test]
async fn shutdown_acks_what_finished_and_gives_back_what_never_started() {
    let t = TestQueue::new().await;
    fill(&t, 10, EnqueueOptions::default()).await;
    let seen = Seen::default();
    // Three handlers run at once (the concurrency limit); they all wait until the third has
    // started, which asks the worker to stop: so exactly three started, and the other seven
    // deliveries of the batch were read but never started.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let handle = move |d: Delivery, seen: Data<Seen>, w: WorkerContext| {
        let barrier = barrier.clone();
        async move {
            seen.record(d.decode().unwrap());
            if barrier.wait().await.is_leader() {
                w.stop().unwrap();
            }
            Ok::<_, JobError>(())
        }
    };
    WorkerBuilder::new("shutdown")
        .backend(StreamsBackend::single(t.queue.clone(), options(10)))
        .data(seen.clone())
        .concurrency(3)
        .build(handle)
        .run()
        .await
        .unwrap();
    assert_eq!(seen.count.load(Ordering::SeqCst), 3);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!(
        (stats.pending(), stats.delayed, stats.dead),
        (0, 7, 0),
        "finished jobs acked, unstarted ones back in the delayed set"
    );
    // The seven given back are due now, with no attempt counted.
    assert_eq!(t.queue.promote_due(t.queue.now_ms(), 100).await.unwrap(), 7);
    let mut c = t.consumer(100).await;
    let rest = c.next_batch().await.unwrap();
    assert_eq!(rest.len(), 7);
    assert!(rest.iter().all(|d| d.attempts == 0));
    let mut all: Vec<u32> = rest.iter().map(|d| d.decode().unwrap()).collect();
    all.extend(seen.jobs.lock().unwrap().iter());
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_in_flight_limit_bounds_tasks_below_the_concurrency_limit() {
    let t = TestQueue::new().await;
    fill(&t, 50, EnqueueOptions::default()).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let (r, m) = (running.clone(), most.clone());
    let handle = move |d: Delivery, seen: Data<Seen>, w: WorkerContext| {
        let (running, most) = (r.clone(), m.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Yield a few times, so that other tasks would run now if they were allowed to.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            running.fetch_sub(1, Ordering::SeqCst);
            if seen.record(d.decode().unwrap()) == 50 {
                w.stop().unwrap();
            }
            Ok::<_, JobError>(())
        }
    };
    WorkerBuilder::new("bounded")
        .backend(StreamsBackend::single(t.queue.clone(), options(50)).in_flight_limit(2))
        .data(seen.clone())
        .concurrency(10)
        .build(handle)
        .run()
        .await
        .unwrap();
    assert_eq!(seen.count.load(Ordering::SeqCst), 50);
    assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
    assert_eq!(t.queue.stats().await.unwrap().pending(), 0);
}

#[tokio::test]
async fn a_monitor_runs_several_workers_and_shuts_them_down_on_its_signal() {
    let t = TestQueue::new().await;
    fill(&t, JOBS, EnqueueOptions::default()).await;
    let seen = Seen::default();
    let all_done = Arc::new(tokio::sync::Notify::new());
    async fn handle(d: Delivery, seen: Data<Seen>, done: Data<Arc<tokio::sync::Notify>>) {
        if seen.record(d.decode().unwrap()) == JOBS as usize {
            done.notify_one();
        }
    }
    let (queue, s, done) = (t.queue.clone(), seen.clone(), all_done.clone());
    // The factory runs again on a restart; each run gets a fresh consumer name.
    let factory = move |_run: usize| {
        WorkerBuilder::new("monitored")
            .backend(StreamsBackend::single(queue.clone(), options(100)))
            .data(s.clone())
            .data(done.clone())
            .concurrency(20)
            .catch_panic()
            .build(handle)
    };
    Monitor::new()
        .register(factory.clone())
        .register(factory)
        .shutdown_timeout(Duration::from_secs(30))
        .run_with_signal(async move {
            all_done.notified().await;
            Ok(())
        })
        .await
        .unwrap();
    let jobs = seen.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), JOBS as usize);
    assert_eq!(jobs.iter().collect::<HashSet<_>>().len(), JOBS as usize);
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.pending(), stats.delayed, stats.dead), (0, 0, 0));
}

#[tokio::test]
async fn a_batch_outcome_settles_its_failures_one_by_one_and_acks_the_rest() {
    let t = TestQueue::new().await;
    fill(&t, 10, slow_retries()).await;
    async fn handle(batch: Vec<Delivery>, w: WorkerContext) -> Result<BatchOutcome, JobError> {
        let mut outcome = BatchOutcome::new();
        for d in &batch {
            match d.decode::<u32>().unwrap() {
                3 => outcome.fail(
                    d,
                    JobError::Fatal {
                        reason: "rejected".into(),
                        error: "bad row".into(),
                    },
                ),
                5 => outcome.fail(
                    d,
                    JobError::Retry {
                        after: RetryAfter::Backoff,
                        error: "deadlock".into(),
                    },
                ),
                _ => {}
            }
        }
        w.stop().unwrap();
        Ok(outcome)
    }
    WorkerBuilder::new("outcome")
        .backend(StreamsBackend::batch(t.queue.clone(), options(10)))
        .concurrency(1)
        .build(handle)
        .run()
        .await
        .unwrap();
    let stats = t.queue.stats().await.unwrap();
    assert_eq!((stats.pending(), stats.delayed, stats.dead), (0, 1, 1));
    let dead = t.queue.dead_list(10, None).await.unwrap();
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].error.as_str()),
        ("rejected", "bad row")
    );
    let again = next_attempt(&t).await;
    assert_eq!((again.decode::<u32>().unwrap(), again.attempts), (5, 1));
}
