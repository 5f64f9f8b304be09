//! An apalis 1.0 backend over [`Consumer`], so a worker can run on apalis's `WorkerBuilder` and
//! `Monitor` (concurrency limits, timeouts, caught panics, tracing, graceful shutdown) while
//! retries and dead letters stay ours: the delayed set and the dead-letter stream, never apalis's
//! in-process retry. Evaluated in `docs/adr/0001-worker-runtime.md`.
//!
//! Two modes: [`StreamsBackend::single`] hands one [`Delivery`] per apalis task,
//! [`StreamsBackend::batch`] one `Vec<Delivery>` per task (the whole batch read). The backend's
//! middleware ([`SettleLayer`]) wraps every user layer, so it sees the handler's result after
//! `catch_panic` and `timeout` turned a panic or an expiry into an error, and settles:
//! `Ok` acknowledges (a batch handler may return a [`BatchOutcome`] to fail some deliveries of
//! its batch and acknowledge the rest); a [`JobError`] does what it says (retry through the delayed set, dead
//! letter, defer); any other error (a caught panic, a timeout, a handler's own error) is a retry
//! with the job's backoff.
//!
//! Every task carries the reading consumer's [`Settler`] as task data (`Data<Settler>` in a
//! handler), so a handler about to perform an effect that must not happen twice can first ask
//! [`Settler::confirm_lease`] whether its delivery is still its own. The consumer's heartbeat
//! keeps the leases of every delivery read and not yet settled alive (buffered ones included).
//!
//! Redis away (a restart, a failover, a lost connection) never ends the worker: creating the
//! consumer, reading and settling each wait and retry with capped backoff.
//!
//! Set `.concurrency(n)` on the worker to bound its handlers. The backend bounds the tasks in
//! flight, settlements included, by [`StreamsBackend::in_flight_limit`], because apalis's
//! concurrency permit is released before the settlement runs.

use std::{
    any::Any,
    collections::VecDeque,
    marker::PhantomData,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    error::BoxDynError,
    layers::{Layer, Service},
    task::{
        Task,
        builder::TaskBuilder,
        task_id::{RandomId, TaskId},
    },
    worker::context::WorkerContext,
};
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use fleet_core::Priority;

use crate::{Consumer, ConsumerOptions, Delivery, Error, Queue, Result, RetryAfter, Settler};

/// Longest pause between two tries of an operation that failed because Redis was away.
pub const UNAVAILABLE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a settlement is retried while Redis is away before it is left to the scheduler's
/// reclaim (the entries stay pending; their leases are released so they run out).
pub const SETTLE_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// Retries `op` while it fails with an unavailable Redis, with capped exponential backoff, until
/// it succeeds, fails otherwise, `give_up` says so, or `window` (when given) has passed.
async fn while_unavailable<T, F, Fut>(
    what: &str,
    window: Option<Duration>,
    give_up: impl Fn() -> bool,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e)
                if e.is_unavailable()
                    && !give_up()
                    && window.is_none_or(|w| started.elapsed() + wait <= w) =>
            {
                tracing::warn!(error = %e, "{what} failed, Redis unavailable; retrying");
                metrics::counter!("fleet_queue_unavailable_retries_total", "reason" => what.to_owned())
                    .increment(1);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(UNAVAILABLE_BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

/// How a handler asks for a failed job to be settled. Any other error is a retry with backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Try again later: the attempt counts (dead letter `max_attempts` when none is left).
    #[error("retry: {error}")]
    Retry {
        /// When to try again.
        after: RetryAfter,
        /// The last error, kept with the job.
        error: String,
    },
    /// Never try again: straight to the dead-letter stream.
    #[error("fatal ({reason}): {error}")]
    Fatal {
        /// Dead-letter reason, a short bounded word such as `decode` or `rejected`.
        reason: String,
        /// The last error.
        error: String,
    },
    /// Not a failure, the job may just not run yet (a rate limit): back to the delayed set
    /// without counting an attempt.
    #[error("deferred for {0:?}")]
    Defer(Duration),
    /// Like `Defer`, with the job's payload replaced: what the next delivery must know travels in
    /// the job, written atomically with the acknowledgement.
    #[error("deferred for {delay:?} with a new payload")]
    DeferWith {
        /// When to run again.
        delay: Duration,
        /// The new payload (MessagePack).
        payload: bytes::Bytes,
    },
    /// The handler found its lease lost (the scheduler reclaimed the entry while this process
    /// was frozen or cut off): another worker has the job, so nothing is settled here.
    #[error("lease lost; the job belongs to another worker now")]
    LeaseLost,
}

/// What one apalis task carries: a single delivery or a whole batch. Sealed to those two.
pub trait Mode: Send + Unpin + 'static + private::Sealed {
    /// The task's arguments.
    type Args: Send + Sync + 'static;
    /// Takes the next task's arguments out of the read buffer.
    fn take(buffer: &mut VecDeque<Delivery>) -> Option<Self::Args>;
    /// The deliveries a task settles, kept by the middleware while the handler owns the task.
    fn deliveries(args: &Self::Args) -> Vec<Delivery>;
    /// The apalis task id: the (first) stream entry id, unique while in flight.
    fn task_id(args: &Self::Args) -> String;
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::Single {}
    impl Sealed for super::Batch {}
}

/// One [`Delivery`] per task.
#[derive(Debug)]
pub struct Single;

/// One `Vec<Delivery>` (a whole read) per task.
#[derive(Debug)]
pub struct Batch;

impl Mode for Single {
    type Args = Delivery;
    fn take(buffer: &mut VecDeque<Delivery>) -> Option<Delivery> {
        buffer.pop_front()
    }
    fn deliveries(args: &Delivery) -> Vec<Delivery> {
        vec![args.clone()]
    }
    fn task_id(args: &Delivery) -> String {
        args.stream_id.clone()
    }
}

impl Mode for Batch {
    type Args = Vec<Delivery>;
    fn take(buffer: &mut VecDeque<Delivery>) -> Option<Vec<Delivery>> {
        (!buffer.is_empty()).then(|| buffer.drain(..).collect())
    }
    fn deliveries(args: &Vec<Delivery>) -> Vec<Delivery> {
        args.clone()
    }
    fn task_id(args: &Vec<Delivery>) -> String {
        args.first()
            .map(|d| d.stream_id.clone())
            .unwrap_or_default()
    }
}

type ReadResult = (Box<Consumer>, Result<Vec<Delivery>>);

/// Where the reading side is.
enum Reader {
    /// Nothing created yet (consumers are made on first poll, so a `Monitor` factory can build the
    /// backend synchronously on every restart).
    Start,
    /// Creating the consumer.
    Connecting(BoxFuture<'static, Result<Consumer>>),
    /// Between reads. Boxed: a `Consumer` is large next to the other states.
    Idle(Box<Consumer>),
    /// A read in flight; it owns the consumer and gives it back.
    Reading(BoxFuture<'static, ReadResult>),
    /// Closing: giving back what was read but never started.
    Closing(BoxFuture<'static, Result<()>>),
    /// Closed.
    Done,
}

/// An apalis backend over one queue's consumer group. See the module docs.
pub struct StreamsBackend<M: Mode> {
    queue: Queue,
    options: ConsumerOptions,
    reader: Reader,
    buffer: VecDeque<Delivery>,
    /// Settles (ack, retry, dead letter, defer) from the middleware while the reader is blocked
    /// in a read: the reading consumer's [`Settler`], shared once that consumer exists (the
    /// middleware is built before the first poll creates it). No connection of its own.
    settler: Arc<OnceLock<Settler>>,
    closing: Arc<AtomicBool>,
    in_flight: usize,
    _mode: PhantomData<M>,
}

/// Default bound of the tasks a worker holds at once, handlers and settlements together.
pub const IN_FLIGHT_DEFAULT: usize = 1_024;

impl<M: Mode> std::fmt::Debug for StreamsBackend<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamsBackend")
            .field("queue", &self.queue.name())
            .field("consumer", &self.options.consumer)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl StreamsBackend<Single> {
    /// A backend handing one delivery per task. Reads still happen in batches of
    /// `options.batch_size`; at most that many deliveries wait in the buffer.
    pub fn single(queue: Queue, options: ConsumerOptions) -> Self {
        Self::new(queue, options)
    }
}

impl StreamsBackend<Batch> {
    /// A backend handing each read batch as one task.
    pub fn batch(queue: Queue, options: ConsumerOptions) -> Self {
        Self::new(queue, options)
    }
}

impl<M: Mode> StreamsBackend<M> {
    fn new(queue: Queue, options: ConsumerOptions) -> Self {
        StreamsBackend {
            queue,
            options,
            reader: Reader::Start,
            buffer: VecDeque::new(),
            settler: Arc::new(OnceLock::new()),
            closing: Arc::new(AtomicBool::new(false)),
            in_flight: IN_FLIGHT_DEFAULT,
            _mode: PhantomData,
        }
    }

    /// Bounds the tasks in flight, settlements included (default [`IN_FLIGHT_DEFAULT`]).
    ///
    /// apalis's `.concurrency(n)` bounds handlers only: its permit is released when the handler
    /// returns, before this backend's middleware settles the task, so without this bound a slow
    /// Redis would let settlements pile up while new tasks start.
    pub fn in_flight_limit(mut self, limit: usize) -> Self {
        self.in_flight = limit.max(1);
        self
    }

    fn read(&self, mut consumer: Box<Consumer>) -> BoxFuture<'static, ReadResult> {
        let closing = self.closing.clone();
        async move {
            // A lost Redis must not end the worker: wait and retry with capped backoff, however
            // long it takes (a `&mut` borrow per try, so no helper closure).
            let mut wait = Duration::from_millis(100);
            loop {
                match consumer.next_batch().await {
                    Err(e) if e.is_unavailable() && !closing.load(Ordering::Relaxed) => {
                        tracing::warn!(error = %e, "queue read failed, Redis unavailable; retrying");
                        metrics::counter!("fleet_queue_unavailable_retries_total", "reason" => "read")
                            .increment(1);
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(UNAVAILABLE_BACKOFF_MAX);
                    }
                    other => return (consumer, other),
                }
            }
        }
        .boxed()
    }
}

impl<M: Mode> Backend for StreamsBackend<M> {
    type Task = Task<M::Args>;
    type Error = Error;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<M::Args>>>> {
        loop {
            if let Some(args) = M::take(&mut self.buffer) {
                let id = TaskId::from_string(M::task_id(&args));
                let mut task = TaskBuilder::new(args).task_id(id);
                if let Some(settler) = self.settler.get() {
                    task = task.data(settler.clone());
                }
                return Poll::Ready(Some(Ok(task.build())));
            }
            match std::mem::replace(&mut self.reader, Reader::Done) {
                Reader::Start => {
                    let (queue, options) = (self.queue.clone(), self.options.clone());
                    let (settler, closing) = (self.settler.clone(), self.closing.clone());
                    self.reader = Reader::Connecting(
                        async move {
                            // Redis away at start or after a restart of the worker: wait for it
                            // here rather than end the worker (and, restarts exhausted, the
                            // process).
                            let consumer = while_unavailable(
                                "consumer creation",
                                None,
                                || closing.load(Ordering::Relaxed),
                                || queue.consumer(options.clone()),
                            )
                            .await?;
                            // Set at most once; a consumer re-made after a failed connect has the
                            // same queue and group, so the first settler stays valid.
                            let _ = settler.set(consumer.settler());
                            Ok(consumer)
                        }
                        .boxed(),
                    );
                }
                Reader::Connecting(mut connecting) => match connecting.poll_unpin(cx) {
                    Poll::Pending => {
                        self.reader = Reader::Connecting(connecting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(consumer)) => self.reader = Reader::Idle(Box::new(consumer)),
                    Poll::Ready(Err(e)) => {
                        self.reader = Reader::Start;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Reader::Idle(consumer) => self.reader = Reader::Reading(self.read(consumer)),
                Reader::Reading(mut reading) => match reading.poll_unpin(cx) {
                    Poll::Pending => {
                        self.reader = Reader::Reading(reading);
                        return Poll::Pending;
                    }
                    Poll::Ready((consumer, batch)) => {
                        self.reader = Reader::Idle(consumer);
                        // An empty batch (block time out, paused queue) just loops into the next
                        // read, which waits in Redis: no busy polling.
                        self.buffer.extend(match batch {
                            Ok(batch) => batch,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        });
                    }
                },
                closed @ (Reader::Closing(_) | Reader::Done) => {
                    self.reader = closed;
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// Called by apalis once shutdown began and every started task finished (and so was settled
    /// by the middleware). Finishes a read in flight, then gives every delivery read but never
    /// started back to the delayed set, due now and without counting an attempt, so another
    /// worker picks it up as soon as the scheduler promotes it instead of after a stall lease.
    fn poll_close(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<()>> {
        self.closing.store(true, Ordering::Relaxed);
        loop {
            match std::mem::replace(&mut self.reader, Reader::Done) {
                // Nothing was read: dropping a half-made connection loses nothing.
                Reader::Start | Reader::Connecting(_) | Reader::Done => return Poll::Ready(Ok(())),
                Reader::Reading(mut reading) => match reading.poll_unpin(cx) {
                    Poll::Pending => {
                        self.reader = Reader::Reading(reading);
                        return Poll::Pending;
                    }
                    Poll::Ready((consumer, batch)) => {
                        self.buffer.extend(batch.unwrap_or_default());
                        self.reader = Reader::Idle(consumer);
                    }
                },
                Reader::Idle(mut consumer) => {
                    let unstarted: Vec<Delivery> = self.buffer.drain(..).collect();
                    self.reader = Reader::Closing(
                        async move {
                            let back = unstarted.iter().map(|d| consumer.defer(d, Duration::ZERO));
                            for r in futures::future::join_all(back).await {
                                r?;
                            }
                            consumer.give_back_carried().await
                        }
                        .boxed(),
                    );
                }
                Reader::Closing(mut closing) => match closing.poll_unpin(cx) {
                    Poll::Pending => {
                        self.reader = Reader::Closing(closing);
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => return Poll::Ready(r),
                },
            }
        }
    }
}

impl<M: Mode> BackendConfig for StreamsBackend<M> {
    type Args = M::Args;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ConsumerOptions;
    type Layer = SettleLayer<M>;

    fn config(&self) -> &ConsumerOptions {
        &self.options
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> SettleLayer<M> {
        SettleLayer {
            settler: self.settler.clone(),
            permits: Arc::new(Semaphore::new(self.in_flight)),
            _mode: PhantomData,
        }
    }
}

/// The backend's middleware: settles each task from its result. apalis places it outside every
/// user layer, so it sees caught panics and timeouts as errors.
pub struct SettleLayer<M> {
    settler: Arc<OnceLock<Settler>>,
    permits: Arc<Semaphore>,
    _mode: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for SettleLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleLayer").finish_non_exhaustive()
    }
}

impl<M> Clone for SettleLayer<M> {
    fn clone(&self) -> Self {
        SettleLayer {
            settler: self.settler.clone(),
            permits: self.permits.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S, M> Layer<S> for SettleLayer<M> {
    type Service = SettleService<S, M>;

    fn layer(&self, inner: S) -> SettleService<S, M> {
        SettleService {
            inner,
            settler: self.settler.clone(),
            permits: self.permits.clone(),
            acquiring: None,
            permit: None,
            _mode: PhantomData,
        }
    }
}

/// The service [`SettleLayer`] makes.
pub struct SettleService<S, M> {
    inner: S,
    settler: Arc<OnceLock<Settler>>,
    permits: Arc<Semaphore>,
    acquiring: Option<BoxFuture<'static, OwnedSemaphorePermit>>,
    /// Taken by `poll_ready`, held by the task until it is settled.
    permit: Option<OwnedSemaphorePermit>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> std::fmt::Debug for SettleService<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleService").finish_non_exhaustive()
    }
}

impl<S, M> Service<Task<M::Args>> for SettleService<S, M>
where
    M: Mode,
    S: Service<Task<M::Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        if self.permit.is_none() {
            let permits = self.permits.clone();
            let acquiring = self.acquiring.get_or_insert_with(|| {
                // The semaphore is never closed, so acquiring cannot fail.
                async move { permits.acquire_owned().await.expect("never closed") }.boxed()
            });
            self.permit = Some(ready!(acquiring.poll_unpin(cx)));
            self.acquiring = None;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<M::Args>) -> Self::Future {
        let permit = self.permit.take();
        let deliveries = M::deliveries(&task.args);
        let settler = self.settler.clone();
        let handled = self.inner.call(task);
        async move {
            let result = handled.await.map_err(Into::into);
            // Set before the backend yields its first task, so always there.
            let settler = settler.get().ok_or("settler missing")?;
            // Redis away: the settlement is retried for a bounded window; past it the entries
            // stay pending, their leases run out, and the scheduler's reclaim hands them out
            // again, so nothing is lost (and the effect, idempotent, is found done).
            while_unavailable(
                "settle",
                Some(SETTLE_RETRY_WINDOW),
                || false,
                || settle(settler, &deliveries, &result),
            )
            .await?;
            drop(permit);
            result
        }
        .boxed()
    }
}

/// What a batch handler returns when some deliveries of its batch failed and the others did not:
/// the failed ones are settled by their [`JobError`], the rest acknowledged. (Returning `Err`
/// settles the whole batch alike.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// By priority and stream id: ids are unique within one stream only, and a batch reads three.
    failed: Vec<((Priority, String), JobError)>,
}

impl BatchOutcome {
    /// An outcome where everything succeeded so far.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks one delivery of the batch as failed.
    pub fn fail(&mut self, delivery: &Delivery, error: JobError) {
        self.failed
            .push(((delivery.priority, delivery.stream_id.clone()), error));
    }

    /// The deliveries marked as failed so far.
    pub fn failed(&self) -> usize {
        self.failed.len()
    }

    fn error_of(&self, d: &Delivery) -> Option<&JobError> {
        self.failed
            .iter()
            .find(|((priority, id), _)| *priority == d.priority && *id == d.stream_id)
            .map(|(_, e)| e)
    }
}

/// Settles a batch as this backend does after a batch handler returned `outcome`: the deliveries
/// it marks as failed by their [`JobError`], every other one acknowledged. For code that reads
/// and handles batches without apalis (tests, tools), so that there is one settle path.
pub async fn settle_batch(
    settler: &Settler,
    deliveries: &[Delivery],
    outcome: BatchOutcome,
) -> Result<()> {
    settle(settler, deliveries, &Ok::<_, BoxDynError>(outcome)).await
}

/// Settles `deliveries` by the handler's result: acknowledges on success, except the deliveries a
/// [`BatchOutcome`] marks as failed; on an error, retries, dead-letters or defers every one.
async fn settle<R: Sync + 'static>(
    c: &Settler,
    deliveries: &[Delivery],
    result: &Result<R, BoxDynError>,
) -> Result<()> {
    let error = match result {
        Ok(response) => {
            let outcome = (response as &dyn Any).downcast_ref::<BatchOutcome>();
            let (failed, done): (Vec<&Delivery>, Vec<&Delivery>) = deliveries
                .iter()
                .partition(|d| outcome.is_some_and(|o| o.error_of(d).is_some()));
            c.ack(&done).await?;
            for d in failed {
                if let Some(e) = outcome.and_then(|o| o.error_of(d)) {
                    apply(c, d, e).await?;
                }
            }
            return Ok(());
        }
        Err(error) => error,
    };
    let action = error
        .downcast_ref::<JobError>()
        .cloned()
        .unwrap_or_else(|| JobError::Retry {
            after: RetryAfter::Backoff,
            error: error.to_string(),
        });
    for d in deliveries {
        apply(c, d, &action).await?;
    }
    Ok(())
}

async fn apply(c: &Settler, d: &Delivery, action: &JobError) -> Result<()> {
    match action {
        JobError::Retry { after, error } => {
            c.retry(d, *after, error).await?;
        }
        JobError::Fatal { reason, error } => {
            c.dead_letter(d, reason, error).await?;
        }
        JobError::Defer(delay) => {
            c.defer(d, *delay).await?;
        }
        JobError::DeferWith { delay, payload } => {
            c.defer_with_payload(d, *delay, payload.clone()).await?;
        }
        JobError::LeaseLost => c.abandon(&[d]),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleet_core::{Backoff, JobId};

    use super::*;

    fn delivery(priority: Priority, stream_id: &str) -> Delivery {
        Delivery {
            stream_id: stream_id.into(),
            priority,
            job_id: JobId::new(),
            attempts: 0,
            max_attempts: 3,
            backoff: Backoff::default(),
            enqueued_at_ms: 0,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_batch_outcome_tells_entries_of_equal_ids_in_two_streams_apart() {
        // Stream ids are unique per stream only: `high` and `normal` can both hold `1-0`.
        let (high, normal) = (
            delivery(Priority::High, "1-0"),
            delivery(Priority::Normal, "1-0"),
        );
        let mut outcome = BatchOutcome::new();
        outcome.fail(&high, JobError::Defer(Duration::ZERO));
        assert!(outcome.error_of(&high).is_some());
        assert!(
            outcome.error_of(&normal).is_none(),
            "the normal entry succeeded and must be acknowledged, not deferred"
        );
    }
}
