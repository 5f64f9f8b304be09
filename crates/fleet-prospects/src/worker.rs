//! The batch handler of `inbound`: decode, write to Postgres, enqueue the automatic replies, and
//! only then let the queue acknowledge, so a crash at any point redelivers the batch and the
//! idempotent write and keyed replies make the redelivery change nothing. It runs as the handler
//! of an apalis batch-mode worker (see `run` in the crate root), which settles what it returns;
//! [`BatchWorker`] reads and settles one batch the same way without a runtime, for tests.
//!
//! Failures:
//! - undecodable payload: that entry goes to the dead-letter stream (`decode`);
//! - transient or unexplained store error: nothing is acknowledged; the same batch is retried
//!   in-process with capped, jittered backoff while its entries stay pending (if the process dies,
//!   the scheduler reclaims them); a shutdown during that wait gives the unfinished entries back
//!   to the delayed set, due at once and without counting an attempt;
//! - data error: the batch is split in halves until the bad entry is alone, and only that entry is
//!   dead-lettered (`invalid` when the store names it before any SQL, `data` otherwise).

use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{EnqueueOptions, InboundEvent, OUTBOUND_QUEUE, OutboundMessage};
use fleet_queue::{
    Broker, Consumer, ConsumerOptions, Delivery, Queue, Settler,
    apalis_backend::{BatchOutcome as Settlement, JobError},
    now_ms,
};
use fleet_runtime::{Shutdown, TenantsHandle};
use fleet_store::{BatchOutcome, Error as StoreError, ErrorClass, Store};

use crate::{Config, replies};

/// What one batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries delivered to this batch.
    pub delivered: usize,
    /// Entries written (replies enqueued) and left for the settlement to acknowledge.
    pub acked: usize,
    /// Entries left for the settlement to dead-letter.
    pub dead_lettered: usize,
    /// Messages stored for the first time.
    pub messages_inserted: u64,
    /// Automatic replies newly enqueued (duplicates of earlier enqueues not counted).
    pub replies_enqueued: usize,
    /// Shutdown interrupted a retry: the unfinished entries are given back (delayed set, due at
    /// once, no attempt counted) for redelivery.
    pub interrupted: bool,
}

/// What handling a batch came to: the report, and the entries that must not be acknowledged,
/// each with how to settle it (by index into the batch). Every other entry is acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Handled {
    /// The counts.
    pub report: BatchReport,
    /// Entries to dead-letter (`JobError::Fatal`) or give back (`JobError::Defer`).
    pub failed: Vec<(usize, JobError)>,
}

impl Handled {
    /// The settlement for the apalis backend: the failed entries, the rest acknowledged.
    pub fn settlement(&self, batch: &[Delivery]) -> Settlement {
        let mut settlement = Settlement::new();
        for (i, error) in &self.failed {
            settlement.fail(&batch[*i], error.clone());
        }
        settlement
    }
}

/// A slice of a batch: indices into it and their decoded events, position for position.
struct Chunk {
    entries: Vec<usize>,
    events: Vec<InboundEvent>,
}

impl Chunk {
    fn split(mut self) -> (Chunk, Chunk) {
        let mid = self.entries.len() / 2;
        let entries = self.entries.split_off(mid);
        let events = self.events.split_off(mid);
        (self, Chunk { entries, events })
    }

    fn remove(&mut self, index: usize) -> usize {
        self.events.remove(index);
        self.entries.remove(index)
    }
}

/// Shutdown arrived while waiting to retry.
struct Stopped;

/// Everything the handler needs: cheap to clone, shared by every worker of the process.
#[derive(Clone)]
pub struct BatchHandler {
    outbound: Queue,
    store: Store,
    tenants: TenantsHandle,
    config: Config,
    shutdown: Shutdown,
}

impl std::fmt::Debug for BatchHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandler").finish_non_exhaustive()
    }
}

impl BatchHandler {
    /// A handler writing to `store` and enqueueing replies on the broker's `outbound`.
    pub fn new(
        broker: &Broker,
        store: Store,
        tenants: TenantsHandle,
        config: Config,
        shutdown: Shutdown,
    ) -> BatchHandler {
        BatchHandler {
            outbound: broker.queue(OUTBOUND_QUEUE),
            store,
            tenants,
            config,
            shutdown,
        }
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Handles a batch: decode, write (isolating bad entries), reply. Settles nothing itself: the
    /// caller acknowledges every entry not in [`Handled::failed`] and settles those as marked.
    pub async fn handle(&self, batch: &[Delivery]) -> Handled {
        let started = Instant::now();
        let mut handled = Handled {
            report: BatchReport {
                delivered: batch.len(),
                ..Default::default()
            },
            failed: Vec::new(),
        };
        metrics::histogram!("fleet_prospects_batch_size").record(batch.len() as f64);

        let mut chunk = Chunk {
            entries: Vec::with_capacity(batch.len()),
            events: Vec::with_capacity(batch.len()),
        };
        for (i, d) in batch.iter().enumerate() {
            match d.decode::<InboundEvent>() {
                Ok(event) => {
                    chunk.entries.push(i);
                    chunk.events.push(event);
                }
                Err(e) => dead_letter(&mut handled, d, i, "decode", &e.to_string()),
            }
        }

        // Depth-first over halves; a stack rather than recursion (async recursion needs boxing).
        // Bounded: each split halves a chunk, so at most 2 * batch_size chunks ever exist.
        let mut stack = vec![chunk];
        while let Some(mut chunk) = stack.pop() {
            if chunk.entries.is_empty() {
                continue;
            }
            let written = match self.write(&chunk.events).await {
                Ok(written) => written,
                Err(Stopped) => {
                    give_back(&mut handled, chunk, stack);
                    return handled;
                }
            };
            match written {
                Ok(outcome) => {
                    if self
                        .finish(batch, &chunk, &outcome, &mut handled.report)
                        .await
                        .is_err()
                    {
                        // Committed but the replies are not all enqueued: the redelivery
                        // changes nothing in Postgres and enqueues them under the same keys.
                        give_back(&mut handled, chunk, stack);
                        return handled;
                    }
                }
                Err(e) => {
                    // A data error: find the bad entry.
                    if let StoreError::InvalidEvent { index, reason } = &e
                        && *index < chunk.entries.len()
                    {
                        let bad = chunk.remove(*index);
                        dead_letter(&mut handled, &batch[bad], bad, "invalid", reason);
                        stack.push(chunk);
                    } else if chunk.entries.len() == 1 {
                        let bad = chunk.remove(0);
                        dead_letter(&mut handled, &batch[bad], bad, "data", &e.to_string());
                    } else {
                        let (first, second) = chunk.split();
                        stack.push(second);
                        stack.push(first);
                    }
                }
            }
        }
        metrics::histogram!("fleet_prospects_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        handled
    }

    /// Writes a chunk, retrying transient and unexplained errors until success, a data error
    /// (returned for the caller to isolate), or shutdown.
    ///
    /// In process rather than through the delayed set (`JobError::Retry`): a retry there counts
    /// an attempt, so a Postgres outage longer than the jobs' attempts would dead-letter healthy
    /// messages; held here, they stay pending and are never dead-lettered for an outage.
    async fn write(
        &self,
        events: &[InboundEvent],
    ) -> Result<Result<BatchOutcome, StoreError>, Stopped> {
        let tenants = self.tenants.current();
        let welcome = |t: &str| tenants.get(t).is_some_and(|t| t.replies.welcome.is_some());
        let mut failures = 0u32;
        loop {
            match self.store.write_inbound_batch_with(events, welcome).await {
                Ok(outcome) => return Ok(Ok(outcome)),
                Err(e) => {
                    let class = e.class();
                    metrics::counter!("fleet_prospects_failures_total", "reason" => class.as_str())
                        .increment(1);
                    if class == ErrorClass::Data {
                        tracing::warn!(error = %e, entries = events.len(), "batch rejected by a data error; isolating the entry");
                        return Ok(Err(e));
                    }
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, class = class.as_str(), failures, entries = events.len(), "batch write failed; retrying, entries stay pending");
                    self.pause(failures).await?;
                }
            }
        }
    }

    /// After a commit: enqueue the replies; the chunk is then left for acknowledgement.
    async fn finish(
        &self,
        batch: &[Delivery],
        chunk: &Chunk,
        outcome: &BatchOutcome,
        report: &mut BatchReport,
    ) -> Result<(), Stopped> {
        let now = Utc::now();
        let lag_now = now_ms();
        for &i in &chunk.entries {
            let lag = lag_now.saturating_sub(batch[i].enqueued_at_ms);
            metrics::histogram!("fleet_prospects_commit_lag_seconds").record(lag as f64 / 1000.0);
        }
        metrics::counter!("fleet_prospects_messages_inserted_total")
            .increment(outcome.messages_inserted);
        metrics::counter!("fleet_prospects_messages_duplicate_total")
            .increment((outcome.messages as u64).saturating_sub(outcome.messages_inserted));
        metrics::counter!("fleet_prospects_prospects_created_total")
            .increment(outcome.prospects_created.len() as u64);
        metrics::counter!("fleet_prospects_statuses_applied_total")
            .increment(outcome.statuses_applied);
        report.messages_inserted += outcome.messages_inserted;

        let planned = {
            let tenants = self.tenants.current();
            let events = replies::without_replays(
                &chunk.events,
                &outcome.stored_earlier,
                now,
                self.config.max_reply_age,
            );
            if let std::borrow::Cow::Owned(answerable) = &events {
                metrics::counter!("fleet_prospects_replays_unanswered_total")
                    .increment((chunk.events.len() - answerable.len()) as u64);
            }
            replies::plan(
                &events,
                &outcome.welcome,
                &tenants,
                now,
                self.config.max_reply_age,
                self.config.reply_priority,
            )
        };
        if !planned.is_empty() {
            let jobs: Vec<(OutboundMessage, EnqueueOptions)> = planned
                .iter()
                .map(|r| (r.message.clone(), r.options.clone()))
                .collect();
            let mut failures = 0u32;
            let enqueued = loop {
                match self.outbound.enqueue_batch(&jobs).await {
                    Ok(e) => break e,
                    Err(e) => {
                        metrics::counter!("fleet_prospects_failures_total", "reason" => "enqueue")
                            .increment(1);
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %e, failures, "enqueueing automatic replies failed; retrying");
                        self.pause(failures).await?;
                    }
                }
            };
            for (reply, e) in planned.iter().zip(&enqueued) {
                let outcome = if e.duplicate { "duplicate" } else { "enqueued" };
                metrics::counter!("fleet_prospects_auto_replies_total", "outcome" => outcome, "reason" => reply.rule)
                    .increment(1);
                if !e.duplicate {
                    report.replies_enqueued += 1;
                }
            }
        }
        report.acked += chunk.entries.len();
        Ok(())
    }

    /// Waits the backoff delay of the `failures`-th consecutive failure, or until shutdown.
    async fn pause(&self, failures: u32) -> Result<(), Stopped> {
        let delay = self.config.retry_backoff.delay(failures, &mut rand::rng());
        // Never spin: at least a millisecond even when full jitter draws zero.
        let delay = delay.max(Duration::from_millis(1));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.shutdown.cancelled() => Err(Stopped),
        }
    }
}

/// Marks entry `i` for the dead-letter stream.
fn dead_letter(handled: &mut Handled, d: &Delivery, i: usize, reason: &'static str, error: &str) {
    tracing::warn!(job_id = %d.job_id, reason, error, "inbound entry dead-lettered");
    metrics::counter!("fleet_prospects_dead_lettered_total", "reason" => reason).increment(1);
    handled.report.dead_lettered += 1;
    handled.failed.push((
        i,
        JobError::Fatal {
            reason: reason.to_owned(),
            error: error.to_owned(),
        },
    ));
}

/// Shutdown cut a retry short: marks every unfinished entry to go back to the delayed set, due
/// at once and without an attempt counted (it failed through no fault of its own).
fn give_back(handled: &mut Handled, chunk: Chunk, rest: Vec<Chunk>) {
    handled.report.interrupted = true;
    for c in std::iter::once(chunk).chain(rest) {
        for i in c.entries {
            handled.failed.push((i, JobError::Defer(Duration::ZERO)));
        }
    }
}

/// One consumer of `inbound` and a handler, reading and settling batch by batch without a
/// runtime: the service runs on apalis (`run`); this is for tests and tools that want one batch
/// at a time. Settles exactly as the apalis backend does with a [`Settlement`].
pub struct BatchWorker {
    consumer: Consumer,
    settler: Settler,
    handler: BatchHandler,
}

impl std::fmt::Debug for BatchWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWorker")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// The consumer options of `config` for consumer `name`.
pub fn consumer_options(config: &Config, name: String) -> ConsumerOptions {
    ConsumerOptions {
        group: config.group.clone(),
        consumer: name,
        batch_size: config.batch_size,
        linger: config.linger,
        block: config.block,
        ..ConsumerOptions::new(&config.consumer_role)
    }
}

impl BatchWorker {
    /// Registers consumer `name` on `inbound`.
    pub async fn new(
        broker: &Broker,
        store: Store,
        tenants: TenantsHandle,
        config: Config,
        name: String,
        shutdown: Shutdown,
    ) -> Result<BatchWorker, fleet_queue::Error> {
        let consumer = broker
            .queue(fleet_core::INBOUND_QUEUE)
            .consumer(consumer_options(&config, name))
            .await?;
        Ok(BatchWorker {
            settler: consumer.settler(),
            consumer,
            handler: BatchHandler::new(broker, store, tenants, config, shutdown),
        })
    }

    /// Reads one batch (waiting up to the block time), handles it and settles it.
    ///
    /// An error is Redis failing a read or a settlement; what was not settled stays pending for
    /// the scheduler to reclaim.
    pub async fn run_once(&mut self) -> Result<BatchReport, fleet_queue::Error> {
        let batch = self.consumer.next_batch().await?;
        if batch.is_empty() {
            return Ok(BatchReport::default());
        }
        let handled = self.handler.handle(&batch).await;
        fleet_queue::apalis_backend::settle_batch(
            &self.settler,
            &batch,
            handled.settlement(&batch),
        )
        .await?;
        Ok(handled.report)
    }
}
