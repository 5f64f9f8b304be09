//! One consumer loop: read a batch from `inbound`, write it to Postgres, enqueue the automatic
//! replies, then acknowledge, in that order, so a crash at any point redelivers the batch and the
//! idempotent write and keyed replies make the redelivery change nothing.
//!
//! Failures:
//! - undecodable payload: that entry goes to the dead-letter stream (`decode`);
//! - transient or unexplained store error: nothing is acknowledged; the same batch is retried
//!   in-process with capped, jittered backoff while its entries stay pending (if the process dies,
//!   the scheduler reclaims them);
//! - data error: the batch is split in halves until the bad entry is alone, and only that entry is
//!   dead-lettered (`invalid` when the store names it before any SQL, `data` otherwise).

use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{EnqueueOptions, InboundEvent, OUTBOUND_QUEUE, OutboundMessage};
use fleet_queue::{Broker, Consumer, ConsumerOptions, Delivery, Queue, now_ms};
use fleet_runtime::{Shutdown, TenantsHandle};
use fleet_store::{BatchOutcome, Error as StoreError, ErrorClass, Store};

use crate::{Config, replies};

/// What one batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries delivered to this batch.
    pub delivered: usize,
    /// Entries written and acknowledged.
    pub acked: usize,
    /// Entries sent to the dead-letter stream.
    pub dead_lettered: usize,
    /// Messages stored for the first time.
    pub messages_inserted: u64,
    /// Automatic replies newly enqueued (duplicates of earlier enqueues not counted).
    pub replies_enqueued: usize,
    /// Shutdown interrupted a retry: some entries were left pending for redelivery.
    pub interrupted: bool,
}

/// A slice of a batch: deliveries and their decoded events, index for index.
struct Chunk {
    deliveries: Vec<Delivery>,
    events: Vec<InboundEvent>,
}

impl Chunk {
    fn split(mut self) -> (Chunk, Chunk) {
        let mid = self.deliveries.len() / 2;
        let deliveries = self.deliveries.split_off(mid);
        let events = self.events.split_off(mid);
        (self, Chunk { deliveries, events })
    }

    fn remove(&mut self, index: usize) -> (Delivery, InboundEvent) {
        (self.deliveries.remove(index), self.events.remove(index))
    }
}

/// Shutdown arrived while waiting to retry.
struct Stopped;

/// A consumer of `inbound` with everything it needs to handle a batch.
pub struct BatchWorker {
    consumer: Consumer,
    outbound: Queue,
    store: Store,
    tenants: TenantsHandle,
    config: Config,
    shutdown: Shutdown,
}

impl std::fmt::Debug for BatchWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWorker")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
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
        let options = ConsumerOptions {
            group: config.group.clone(),
            consumer: name,
            batch_size: config.batch_size,
            linger: config.linger,
            block: config.block,
            ..ConsumerOptions::new(&config.consumer_role)
        };
        let consumer = broker
            .queue(fleet_core::INBOUND_QUEUE)
            .consumer(options)
            .await?;
        let outbound = broker.queue(OUTBOUND_QUEUE);
        Ok(BatchWorker {
            consumer,
            outbound,
            store,
            tenants,
            config,
            shutdown,
        })
    }

    /// Reads one batch (waiting up to the block time) and handles it.
    pub async fn run_once(&mut self) -> Result<BatchReport, fleet_queue::Error> {
        let batch = self.consumer.next_batch().await?;
        if batch.is_empty() {
            return Ok(BatchReport::default());
        }
        Ok(self.handle(batch).await)
    }

    /// Handles a batch: decode, write (isolating bad entries), reply, acknowledge.
    pub async fn handle(&self, batch: Vec<Delivery>) -> BatchReport {
        let started = Instant::now();
        let mut report = BatchReport {
            delivered: batch.len(),
            ..Default::default()
        };
        metrics::histogram!("fleet_prospects_batch_size").record(batch.len() as f64);

        let mut chunk = Chunk {
            deliveries: Vec::with_capacity(batch.len()),
            events: Vec::with_capacity(batch.len()),
        };
        for d in batch {
            match d.decode::<InboundEvent>() {
                Ok(event) => {
                    chunk.deliveries.push(d);
                    chunk.events.push(event);
                }
                Err(e) => {
                    if self
                        .dead_letter(&d, "decode", &e.to_string())
                        .await
                        .is_err()
                    {
                        report.interrupted = true;
                        return report;
                    }
                    report.dead_lettered += 1;
                }
            }
        }

        // Depth-first over halves; a stack rather than recursion (async recursion needs boxing).
        // Bounded: each split halves a chunk, so at most 2 * batch_size chunks ever exist.
        let mut stack = vec![chunk];
        while let Some(mut chunk) = stack.pop() {
            if chunk.deliveries.is_empty() {
                continue;
            }
            match self.write(&chunk.events).await {
                Ok(Ok(outcome)) => {
                    if self.finish(&chunk, &outcome, &mut report).await.is_err() {
                        report.interrupted = true;
                        return report;
                    }
                }
                Ok(Err(e)) => {
                    // A data error: find the bad entry.
                    if let StoreError::InvalidEvent { index, reason } = &e
                        && *index < chunk.deliveries.len()
                    {
                        let (bad, _) = chunk.remove(*index);
                        if self.dead_letter(&bad, "invalid", reason).await.is_err() {
                            report.interrupted = true;
                            return report;
                        }
                        report.dead_lettered += 1;
                        stack.push(chunk);
                    } else if chunk.deliveries.len() == 1 {
                        let (bad, _) = chunk.remove(0);
                        if self
                            .dead_letter(&bad, "data", &e.to_string())
                            .await
                            .is_err()
                        {
                            report.interrupted = true;
                            return report;
                        }
                        report.dead_lettered += 1;
                    } else {
                        let (first, second) = chunk.split();
                        stack.push(second);
                        stack.push(first);
                    }
                }
                Err(Stopped) => {
                    report.interrupted = true;
                    return report;
                }
            }
        }
        metrics::histogram!("fleet_prospects_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        report
    }

    /// Writes a chunk, retrying transient and unexplained errors until success, a data error
    /// (returned for the caller to isolate), or shutdown.
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

    /// After a commit: enqueue the replies, then acknowledge the chunk.
    async fn finish(
        &self,
        chunk: &Chunk,
        outcome: &BatchOutcome,
        report: &mut BatchReport,
    ) -> Result<(), Stopped> {
        let now = Utc::now();
        let lag_now = now_ms();
        for d in &chunk.deliveries {
            let lag = lag_now.saturating_sub(d.enqueued_at_ms);
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
            replies::plan(
                &chunk.events,
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

        let refs: Vec<&Delivery> = chunk.deliveries.iter().collect();
        let mut failures = 0u32;
        loop {
            match self.consumer.ack(&refs).await {
                Ok(_) => break,
                Err(e) => {
                    metrics::counter!("fleet_prospects_failures_total", "reason" => "ack")
                        .increment(1);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, failures, "acknowledging a written batch failed; retrying");
                    self.pause(failures).await?;
                }
            }
        }
        report.acked += refs.len();
        Ok(())
    }

    /// Dead-letters one entry, retrying while Redis is unavailable.
    async fn dead_letter(
        &self,
        d: &Delivery,
        reason: &'static str,
        error: &str,
    ) -> Result<(), Stopped> {
        tracing::warn!(job_id = %d.job_id, reason, error, "inbound entry dead-lettered");
        let mut failures = 0u32;
        loop {
            match self.consumer.dead_letter(d, reason, error).await {
                Ok(_) => {
                    metrics::counter!("fleet_prospects_dead_lettered_total", "reason" => reason)
                        .increment(1);
                    return Ok(());
                }
                Err(e) => {
                    metrics::counter!("fleet_prospects_failures_total", "reason" => "dead_letter")
                        .increment(1);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, failures, "dead-lettering failed; retrying");
                    self.pause(failures).await?;
                }
            }
        }
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
