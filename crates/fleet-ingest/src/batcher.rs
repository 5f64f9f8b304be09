//! Group commit of inbound events: the events of concurrent requests share one `enqueue_batch`
//! call (one Lua script run, one Redis round trip).
//!
//! Why: at tens of thousands of webhooks a second, one Redis call per request costs more in
//! syscalls and per-command work (on both sides of the loopback) than the enqueue itself. Each
//! request still hands over all its events at once, so they always travel in the same call, and
//! it is answered only after that call returned. There is no timer: a batch is whatever queued up
//! while the previous calls were in flight, so an idle service adds no latency.
//!
//! Bounded: the request channel holds at most [`CHANNEL_CAPACITY`] requests (a full channel makes
//! requests wait, which is backpressure), a batch stops growing at [`MAX_BATCH_EVENTS`] events, and
//! at most [`WRITERS`] calls are in flight.
//!
//! Durability: with `durability = "replicas"` a batch is answered only once `WAIT` says enough
//! replicas hold it; when they do not within the timeout, every request of the batch is answered
//! 503. Its events stay appended: the provider retries, and the idempotency keys make the retry a
//! duplicate that appends nothing (and is answered 200 once the replicas caught up).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use fleet_core::{EnqueueOptions, InboundEvent};
use fleet_queue::{Enqueued, Queue};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{config::Durability, metrics, state::Unavailable};

/// Requests waiting for a writer.
pub(crate) const CHANNEL_CAPACITY: usize = 4096;
/// A batch takes more requests only while it holds fewer events than this (and `fleet-queue`
/// splits anything above its own `BATCH_LIMIT`).
pub(crate) const MAX_BATCH_EVENTS: usize = 512;
/// Concurrent `enqueue_batch` calls.
pub(crate) const WRITERS: usize = 4;

/// Why a batch failed; every request of the batch gets it.
#[derive(Debug, Clone)]
pub(crate) struct BatchError {
    /// Why the service cannot take the batch now (answer 503), or `None` for any other failure.
    pub(crate) unavailable: Option<Unavailable>,
    /// The error, for the log (no payload or secret in it).
    pub(crate) message: String,
}

type Reply = Result<Vec<Enqueued>, BatchError>;

struct Pending {
    jobs: Vec<(InboundEvent, EnqueueOptions)>,
    reply: oneshot::Sender<Reply>,
}

/// Hands requests' events to the writer tasks; cheap to clone. The writers stop once every clone
/// is dropped and the channel is drained.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the writers on `queue`; needs a tokio runtime.
    pub(crate) fn start(queue: &Queue, durability: Durability) -> Batcher {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(write_loop(queue.clone(), durability, rx.clone()));
        }
        Batcher { tx }
    }

    /// Enqueues `jobs` in one call (possibly with other requests' jobs) and returns their outcomes
    /// in order.
    pub(crate) async fn enqueue(&self, jobs: Vec<(InboundEvent, EnqueueOptions)>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let closed = || BatchError {
            unavailable: Some(Unavailable::Redis),
            message: "enqueue writers stopped".to_owned(),
        };
        self.tx
            .send(Pending { jobs, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn write_loop(queue: Queue, durability: Durability, rx: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        // Take one request (waiting for it), then whatever else is already queued.
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut events = first.jobs.len();
            let mut batch = vec![first];
            while events < MAX_BATCH_EVENTS {
                match rx.try_recv() {
                    Ok(p) => {
                        events += p.jobs.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let mut replies = Vec::with_capacity(batch.len());
        let mut jobs = Vec::new();
        for p in batch {
            replies.push((p.reply, p.jobs.len()));
            jobs.extend(p.jobs);
        }
        ::metrics::histogram!(crate::metrics::ENQUEUE_BATCH_SIZE).record(jobs.len() as f64);
        match queue.enqueue_batch(&jobs).await {
            Ok(outcomes) if outcomes.len() == jobs.len() => {
                let appended = outcomes.iter().any(|o| !o.duplicate);
                if let Err(error) = replicated(&queue, durability, appended).await {
                    for (reply, _) in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                    continue;
                }
                let mut outcomes = outcomes.into_iter();
                for (reply, n) in replies {
                    let _ = reply.send(Ok(outcomes.by_ref().take(n).collect()));
                }
            }
            Ok(outcomes) => {
                let error = BatchError {
                    unavailable: None,
                    message: format!(
                        "enqueue_batch answered {} outcomes for {} jobs",
                        outcomes.len(),
                        jobs.len()
                    ),
                };
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(e) => {
                let error = BatchError {
                    unavailable: e.is_unavailable().then_some(Unavailable::Redis),
                    message: e.to_string(),
                };
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// With `durability = "replicas"`, waits until enough replicas hold the batch just written.
///
/// `WAIT` covers this connection's writes. A batch of duplicates only wrote nothing, while the
/// entries it found may have been appended by another ingest process (the first delivery, answered
/// 503); so such a batch first makes one small write, which puts every earlier append behind
/// what `WAIT` waits for.
async fn replicated(
    queue: &Queue,
    durability: Durability,
    appended: bool,
) -> Result<(), BatchError> {
    let Durability::Replicas { replicas, timeout } = durability else {
        return Ok(());
    };
    let started = Instant::now();
    let waited = async {
        if !appended {
            queue.mark_replication_point().await?;
        }
        queue.wait_for_replicas(replicas, timeout).await
    }
    .await;
    ::metrics::histogram!(metrics::REPLICA_WAIT_DURATION_SECONDS)
        .record(started.elapsed().as_secs_f64());
    let (outcome, result) = match waited {
        Ok(acked) if acked >= u64::from(replicas) => ("acked", Ok(())),
        Ok(acked) => (
            "timeout",
            Err(BatchError {
                unavailable: Some(Unavailable::Replicas),
                message: format!(
                    "{acked} of {replicas} replicas acknowledged within {} ms",
                    timeout.as_millis()
                ),
            }),
        ),
        Err(e) => (
            "error",
            Err(BatchError {
                unavailable: Some(if e.is_unavailable() {
                    Unavailable::Redis
                } else {
                    Unavailable::Replicas
                }),
                message: e.to_string(),
            }),
        ),
    };
    ::metrics::counter!(metrics::REPLICA_WAITS_TOTAL, "outcome" => outcome).increment(1);
    // Logged once per episode, not per batch: a replica outage answers every batch 503.
    static BEHIND: AtomicBool = AtomicBool::new(false);
    match &result {
        Err(e) if !BEHIND.swap(true, Ordering::Relaxed) => tracing::warn!(
            error = %e.message,
            "replicas do not acknowledge webhooks in time: answering 503 (events stay appended; retries are duplicates)"
        ),
        Ok(()) if BEHIND.swap(false, Ordering::Relaxed) => {
            tracing::info!("replicas acknowledge again: answering 200")
        }
        _ => {}
    }
    result
}
