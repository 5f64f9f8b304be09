//! Consuming a queue: batched reads across the three priority streams, acknowledgement, retry
//! through the delayed set, and dead-lettering.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fleet_core::{Backoff, JobId, Priority, RetryPolicy, wire};
use fred::{
    cmd,
    prelude::*,
    types::{Resp3Frame, Value},
};
use rand::Rng;
use serde::de::DeserializeOwned;

use crate::{
    Error, Queue, Result,
    entry::{StoredJob, frame_bytes, parse_entry_frame},
    lease::Leases,
    queue::now_ms,
};

/// Default consumer group of every queue.
pub const GROUP_DEFAULT: &str = "workers";
/// Default cap of a queue's dead-letter stream (approximate `MAXLEN`): a safety bound far above
/// the retention the scheduler enforces, so memory stays bounded even without a scheduler.
pub const DEAD_LETTER_CAP_DEFAULT: u64 = 1_000_000;

/// How a consumer shares its batches among the priority levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityMode {
    /// Highest priority first; a lower level gets only what is left.
    Strict,
    /// Each level gets at least its share of a batch while it has entries (so `low` is never
    /// starved by a saturated `high`); what a level leaves unused goes to the others, highest first.
    Weighted {
        /// Weight of `high`.
        high: u32,
        /// Weight of `normal`.
        normal: u32,
        /// Weight of `low`.
        low: u32,
    },
}

impl Default for PriorityMode {
    /// Weighted 6/3/1, as Asynq's documented example.
    fn default() -> Self {
        PriorityMode::Weighted {
            high: 6,
            normal: 3,
            low: 1,
        }
    }
}

impl PriorityMode {
    /// The first-pass quota of each level for a batch of `batch` entries.
    pub fn quotas(self, batch: usize) -> [usize; 3] {
        match self {
            PriorityMode::Strict => [batch; 3],
            PriorityMode::Weighted { high, normal, low } => {
                let total = (high + normal + low).max(1) as usize;
                // Round up, so a level with a non-zero weight gets at least one entry per batch.
                [high, normal, low].map(|w| (batch * w as usize).div_ceil(total))
            }
        }
    }
}

/// Options of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Consumer group; every replica of one worker kind uses the same group.
    pub group: String,
    /// This consumer's name, unique across every replica (see [`unique_consumer_name`]).
    pub consumer: String,
    /// Most entries one [`Consumer::next_batch`] returns.
    pub batch_size: usize,
    /// Once a batch has its first entry, how long to wait for more before returning it.
    pub linger: Duration,
    /// How long one [`Consumer::next_batch`] waits when there is nothing to do.
    pub block: Duration,
    /// How batches are shared among priority levels.
    pub mode: PriorityMode,
    /// Cap of the dead-letter stream.
    pub dead_letter_cap: u64,
    /// The worker's own retry policy for this queue. `Some` replaces the attempts and backoff
    /// each job carries from its producer (on every delivery, so a retry writes it into the job
    /// too); `None` keeps the job's. The worker that knows what its failures mean owns it:
    /// fleet-outbound sets it from `[outbound] max_attempts` and `retry_backoff`. (Stalled
    /// recovery, which runs in the scheduler, counts against what the job carries, which is the
    /// worker's own from the job's first retry on.)
    pub retry: Option<RetryPolicy>,
}

impl ConsumerOptions {
    /// Options with a fresh unique consumer name for `role` and the defaults: group
    /// [`GROUP_DEFAULT`], batches of 100, linger 10 ms, block 2 s, weighted 6/3/1.
    pub fn new(role: &str) -> Self {
        ConsumerOptions {
            group: GROUP_DEFAULT.into(),
            consumer: unique_consumer_name(role),
            batch_size: 100,
            linger: Duration::from_millis(10),
            block: Duration::from_secs(2),
            mode: PriorityMode::default(),
            dead_letter_cap: DEAD_LETTER_CAP_DEFAULT,
            retry: None,
        }
    }
}

/// A consumer name unique across processes and machines: `<role>-<host>-<pid>-<random>`.
pub fn unique_consumer_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let tag: u32 = rand::rng().random();
    format!("{role}-{host}-{}-{tag:08x}", std::process::id())
}

/// One job handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The entry's id in its stream.
    pub stream_id: String,
    /// The stream (priority level) it was read from.
    pub priority: Priority,
    /// The job's id, stable across retries.
    pub job_id: JobId,
    /// Failed attempts before this one.
    pub attempts: u32,
    /// Attempts the job gets in all.
    pub max_attempts: u32,
    /// The job's backoff policy.
    pub backoff: Backoff,
    /// When the job was first enqueued, in Unix ms.
    pub enqueued_at_ms: u64,
    /// The payload, MessagePack (shares the reply's buffer; cloning it is cheap).
    pub payload: Bytes,
}

impl Delivery {
    /// Decodes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, wire::DecodeError> {
        wire::decode(&self.payload)
    }

    fn stored(&self) -> StoredJob {
        StoredJob {
            job_id: self.job_id.clone(),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            enqueued_at_ms: self.enqueued_at_ms,
            payload: self.payload.clone(),
        }
    }
}

/// When a failed job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// After the job's backoff policy's delay (full jitter).
    Backoff,
    /// After exactly this delay, for example a provider's `Retry-After`.
    Exactly(Duration),
}

/// What [`Consumer::retry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The job waits in the delayed set for this long.
    Scheduled {
        /// Delay until the next attempt.
        delay: Duration,
    },
    /// The job had no attempt left and went to the dead-letter stream (reason `max_attempts`).
    DeadLettered,
    /// The entry was no longer this consumer's (reclaimed after a stall, or already settled);
    /// nothing was written.
    Stale,
}

/// A consumer of one queue. Not `Clone`: each concurrent reader gets its own (with its own name).
/// Settling (ack, retry, defer, dead-letter) goes through a [`Settler`], which is `Clone`, so
/// tasks can settle their deliveries while the consumer reads the next batch.
pub struct Consumer {
    queue: Queue,
    options: ConsumerOptions,
    blocking: Client,
    stream_names: Vec<Value>,
    settler: Settler,
    /// Entries read beyond `batch_size` (a blocking read's `COUNT` applies per stream), handed
    /// out first by the next batch. Already pending for this consumer and under its leases.
    carried: VecDeque<RawDelivery>,
}

/// Settles deliveries of one consumer group: cheap to clone, shares the process's connection.
/// It also keeps the leases of its consumer's entries (see [`Settler::confirm_lease`]).
#[derive(Clone, Debug)]
pub struct Settler {
    pub(crate) queue: Queue,
    pub(crate) group: std::sync::Arc<str>,
    dead_letter_cap: u64,
    pub(crate) leases: Arc<Leases>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The blocking connection is this consumer's own: close it, or Redis keeps it open.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.blocking.clone();
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue.name())
            .field("consumer", &self.options.consumer)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) async fn new(queue: Queue, options: ConsumerOptions) -> Result<Consumer> {
        if options.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        queue.ensure_group(&options.group).await?;
        // Register on every stream now, so operators see the consumer before it reads anything
        // (Redis creates a consumer only when it is served an entry).
        for stream in queue.keys.streams() {
            let _: Value = queue
                .broker
                .client()
                .custom(
                    cmd!("XGROUP", hash: fred::types::ClusterHash::Offset(1)),
                    vec![
                        "CREATECONSUMER",
                        stream.as_str(),
                        options.group.as_str(),
                        options.consumer.as_str(),
                    ],
                )
                .await?;
        }
        let blocking = queue.broker.dedicated_connection().await?;
        let stream_names = queue
            .keys
            .streams()
            .iter()
            .map(|s| s.as_str().into())
            .collect();
        let leases = Leases::start(queue.clone(), &options.group, &options.consumer).await?;
        let settler = Settler {
            queue: queue.clone(),
            group: options.group.as_str().into(),
            dead_letter_cap: options.dead_letter_cap,
            leases,
        };
        Ok(Consumer {
            queue,
            options,
            blocking,
            stream_names,
            settler,
            carried: VecDeque::new(),
        })
    }

    /// The queue consumed.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// This consumer's options.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// A clonable handle that settles this consumer's deliveries.
    pub fn settler(&self) -> Settler {
        self.settler.clone()
    }

    /// Acknowledges deliveries: one round trip for the whole slice. See [`Settler::ack`].
    pub async fn ack(&self, deliveries: &[&Delivery]) -> Result<u64> {
        self.settler.ack(deliveries).await
    }

    /// Records a failed attempt. See [`Settler::retry`].
    pub async fn retry(
        &self,
        d: &Delivery,
        after: RetryAfter,
        error: &str,
    ) -> Result<RetryOutcome> {
        self.settler.retry(d, after, error).await
    }

    /// Delays a job without counting an attempt. See [`Settler::defer`].
    pub async fn defer(&self, d: &Delivery, delay: Duration) -> Result<bool> {
        self.settler.defer(d, delay).await
    }

    /// Dead-letters a job. See [`Settler::dead_letter`].
    pub async fn dead_letter(&self, d: &Delivery, reason: &str, error: &str) -> Result<bool> {
        self.settler.dead_letter(d, reason, error).await
    }

    /// Waits for the next batch: up to `batch_size` entries, or what arrived within `linger` of
    /// the first one; empty after `block` with nothing to do, or while the queue is paused.
    /// Entries that are not valid jobs are dead-lettered here (reason `poison`), never returned.
    ///
    /// Every entry returned is under this consumer's lease, renewed by a heartbeat until it is
    /// settled; a batch never holds more than `batch_size` entries.
    pub async fn next_batch(&mut self) -> Result<Vec<Delivery>> {
        let size = self.options.batch_size;
        if !self.carried.is_empty() {
            let take = self.carried.len().min(size);
            let batch: Vec<RawDelivery> = self.carried.drain(..take).collect();
            return self.settle_poison(batch).await;
        }
        let read_at = Instant::now();
        let mut batch = match self.read_now(size).await {
            Err(e) if e.is_no_group() => {
                // Redis lost the group (a restart without persistence): create it and go on.
                self.queue.ensure_group(&self.options.group).await?;
                self.read_now(size).await?
            }
            other => other?,
        };
        let Some(mut batch_entries) = batch.take() else {
            // Paused: wait out the block time so paused consumers do not spin.
            tokio::time::sleep(self.options.block.min(Duration::from_millis(500))).await;
            return Ok(Vec::new());
        };
        if batch_entries.is_empty() {
            batch_entries = self.read_blocking(size, self.options.block).await?;
            if batch_entries.is_empty() {
                return Ok(Vec::new());
            }
            self.hold(read_at, &batch_entries);
        } else {
            self.hold(read_at, &batch_entries);
        }
        // Linger: wait for more only when the batch is not full and linger allows it.
        let deadline = Instant::now() + self.options.linger;
        while batch_entries.len() < size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                break;
            }
            let read_at = Instant::now();
            // The entries in hand are held (their leases renewed until settled): an error here
            // must not drop them, or they would stay pending under a live holder and never be
            // reclaimed. Hand out what was read; the next read meets the error again.
            let more = match self.read_blocking(size - batch_entries.len(), left).await {
                Ok(more) => more,
                Err(e) => {
                    tracing::debug!(queue = %self.queue.name, error = %e, "linger read failed; handing out the batch read so far");
                    break;
                }
            };
            if more.is_empty() {
                break;
            }
            self.hold(read_at, &more);
            batch_entries.extend(more);
        }
        // Highest priority first, so a worker that handles a batch in order serves `high` first.
        batch_entries.sort_by_key(|(p, _)| *p);
        if batch_entries.len() > size {
            // A blocking read over three streams can answer up to `COUNT` per stream: the
            // excess waits here for the next batch rather than making this one larger than asked.
            self.carried.extend(batch_entries.drain(size..));
        }
        let deliveries = self.settle_poison(batch_entries).await?;
        metrics::histogram!("fleet_queue_batch_entries", "queue" => self.queue.name.to_string())
            .record(deliveries.len() as f64);
        Ok(deliveries)
    }

    /// One non-blocking read across the streams, by priority mode. `None` when paused.
    ///
    /// Plain `XREADGROUP`s, not a script: turning 500 entries into Lua tables and back costs
    /// Redis about three times the read itself, while the extra round trip of a second read
    /// costs tens of microseconds on a local network.
    ///
    /// Reads go over this consumer's own connection, not the process's shared one: a batch reply
    /// is large, and on a shared connection every consumer's replies are decoded one after the
    /// other by that connection's task, while on their own connections consumers decode in
    /// parallel and overlap with Redis's work for the others.
    async fn read_now(&self, size: usize) -> Result<Option<Vec<RawDelivery>>> {
        if self.queue.is_paused_on(&self.blocking).await? {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut failed: Option<crate::Error> = None;
        // Streams that answered less than asked are empty for now: not asked again this call.
        let mut drained = [false; 3];
        if let PriorityMode::Weighted { .. } = self.options.mode {
            // First pass: each level its share. The three reads are issued together, so they
            // travel as one pipeline (fred writes a command without waiting for earlier replies).
            let quotas = self.options.mode.quotas(size);
            let read = |p: Priority| {
                self.blocking
                    .custom_raw(xreadgroup_cmd(), self.read_args(p, quotas[p.index()]))
            };
            // Boxed: three command futures side by side would make every caller's future large.
            // Not `try_join`: entries one read delivered are pending under this consumer whatever
            // happened to the others, and must reach the caller (which holds them) rather than
            // wait out a lease.
            let replies = Box::pin(futures::future::join3(
                read(Priority::High),
                read(Priority::Normal),
                read(Priority::Low),
            ))
            .await;
            let replies = [replies.0, replies.1, replies.2];
            for (p, reply) in Priority::ALL.into_iter().zip(replies) {
                match reply {
                    Ok(reply) => {
                        let got = parse_read_frame(reply, self.queue.keys.streams())?;
                        drained[p.index()] = got.len() < quotas[p.index()];
                        out.extend(got);
                    }
                    Err(e) => {
                        failed.get_or_insert(e.into());
                    }
                }
            }
        }
        // Fill what is left, highest priority first (strict mode: the whole batch).
        for p in Priority::ALL {
            if failed.is_some() || out.len() >= size || drained[p.index()] {
                continue;
            }
            match self
                .blocking
                .custom_raw(xreadgroup_cmd(), self.read_args(p, size - out.len()))
                .await
            {
                Ok(reply) => out.extend(parse_read_frame(reply, self.queue.keys.streams())?),
                Err(e) => failed = Some(e.into()),
            }
        }
        match failed {
            // Nothing delivered: the error is the answer.
            Some(e) if out.is_empty() => Err(e),
            // Some reads delivered: hand those out; the next read meets the error again.
            _ => Ok(Some(out)),
        }
    }

    fn read_args(&self, p: Priority, count: usize) -> Vec<Value> {
        vec![
            "GROUP".into(),
            self.options.group.as_str().into(),
            self.options.consumer.as_str().into(),
            "COUNT".into(),
            (count.max(1) as i64).into(),
            "STREAMS".into(),
            self.queue.keys.stream(p).into(),
            ">".into(),
        ]
    }

    /// Renews the leases of every entry this consumer holds now (its heartbeat does this every
    /// third of the lease; tools and tests may call it directly).
    pub async fn renew_leases(&self) -> Result<()> {
        self.settler.leases.beat().await
    }

    /// Registers entries just read under this consumer's leases.
    fn hold(&self, read_at: Instant, entries: &[RawDelivery]) {
        self.settler.leases.hold(
            read_at,
            entries.iter().map(|(p, (id, _))| (*p, id.as_str())),
        );
    }

    /// Gives back, to the delayed set due now and without counting an attempt, the entries this
    /// consumer read beyond a batch and never handed out (for a graceful stop).
    pub async fn give_back_carried(&mut self) -> Result<()> {
        let carried: Vec<RawDelivery> = self.carried.drain(..).collect();
        for d in self.settle_poison(carried).await? {
            self.settler.defer(&d, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// One blocking read on every stream at once, for when the queue was empty. It may answer
    /// up to `count` entries per stream; [`Consumer::next_batch`] carries the excess over.
    async fn read_blocking(&self, count: usize, block: Duration) -> Result<Vec<RawDelivery>> {
        let block_ms = block.as_millis().max(1) as i64;
        let mut args: Vec<Value> = vec![
            "GROUP".into(),
            self.options.group.as_str().into(),
            self.options.consumer.as_str().into(),
            "COUNT".into(),
            (count as i64).into(),
            "BLOCK".into(),
            block_ms.into(),
            "STREAMS".into(),
        ];
        args.extend(self.stream_names.iter().cloned());
        args.extend(std::iter::repeat_n(Value::from(">"), 3));
        let reply = self
            .blocking
            .with_options(&crate::Broker::blocking_options(block))
            .custom_raw(cmd!("XREADGROUP", blocking: true), args)
            .await?;
        parse_read_frame(reply, self.queue.keys.streams())
    }

    /// Turns raw entries into deliveries, dead-lettering the ones that are not valid jobs. Never
    /// fails: the entries are held, and an error would drop the valid ones with the batch.
    async fn settle_poison(&self, raw: Vec<RawDelivery>) -> Result<Vec<Delivery>> {
        let mut out = Vec::with_capacity(raw.len());
        for (priority, (stream_id, fields)) in raw {
            match StoredJob::from_fields(&fields) {
                Ok(job) => out.push(Delivery {
                    stream_id,
                    priority,
                    job_id: job.job_id,
                    attempts: job.attempts,
                    max_attempts: self
                        .options
                        .retry
                        .map_or(job.max_attempts, |r| r.max_attempts),
                    backoff: self.options.retry.map_or(job.backoff, |r| r.backoff),
                    enqueued_at_ms: job.enqueued_at_ms,
                    payload: job.payload,
                }),
                Err(why) => {
                    tracing::warn!(queue = %self.queue.name, stream_id, reason = %why, "poison entry dead-lettered");
                    let mut fields_out: Vec<Value> = Vec::new();
                    for (k, v) in &fields {
                        fields_out.push(Value::Bytes(k.clone()));
                        fields_out.push(Value::Bytes(v.clone()));
                    }
                    // Failing here must not drop the valid entries of the batch (they are held).
                    // The poison entry is let go instead: pending under no live holder, the
                    // scheduler's stalled recovery dead-letters it after the lease.
                    if let Err(e) = self
                        .settler
                        .dead_letter_raw(priority, &stream_id, "poison", &why, fields_out)
                        .await
                    {
                        tracing::warn!(queue = %self.queue.name, stream_id, error = %e, "cannot dead-letter a poison entry now; stalled recovery will");
                        self.settler
                            .leases
                            .release(std::iter::once((priority, stream_id.as_str())));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Settler {
    /// Whether this consumer still holds `d`'s lease, so its effect may be performed: answered
    /// from memory within half a lease of the last renewal, otherwise by claiming the entry again
    /// in Redis. False when the scheduler reclaimed it (this process was frozen or cut off past
    /// the lease): another worker has it now, and this holder must not act on it. See `lease.rs`.
    pub async fn confirm_lease(&self, d: &Delivery) -> Result<bool> {
        self.leases.confirm(d.priority, &d.stream_id).await
    }

    /// The lease in force for this queue (what the scheduler published, or the default).
    pub fn lease(&self) -> Duration {
        self.leases.lease()
    }

    fn release(&self, deliveries: &[&Delivery]) {
        self.leases.release(
            deliveries
                .iter()
                .map(|d| (d.priority, d.stream_id.as_str())),
        );
    }

    /// Acknowledges deliveries: one round trip for the whole slice.
    pub async fn ack(&self, deliveries: &[&Delivery]) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let acked = self.ack_held(deliveries).await;
        self.release(deliveries);
        acked
    }

    async fn ack_held(&self, deliveries: &[&Delivery]) -> Result<u64> {
        // One XACK per priority level present, all in one round trip.
        let mut commands = Vec::new();
        for p in Priority::ALL {
            let mut args: Vec<Value> =
                vec![self.queue.keys.stream(p).into(), Value::from(&*self.group)];
            args.extend(
                deliveries
                    .iter()
                    .filter(|d| d.priority == p)
                    .map(|d| d.stream_id.as_str().into()),
            );
            if args.len() > 2 {
                commands.push(args);
            }
        }
        let acked: i64 = if commands.len() == 1 {
            let args = commands.pop().expect("one command");
            self.queue
                .broker
                .client()
                .custom(cmd!("XACK"), args)
                .await?
        } else {
            let pipeline = self.queue.broker.client().pipeline();
            for args in commands {
                pipeline.custom::<(), _>(cmd!("XACK"), args).await?;
            }
            let replies: Vec<Value> = pipeline.all().await?;
            replies.iter().filter_map(Value::as_i64).sum()
        };
        metrics::counter!("fleet_queue_acked_total", "queue" => self.queue.name.to_string())
            .increment(acked as u64);
        Ok(acked as u64)
    }

    /// Records a failed attempt: the job waits in the delayed set (holding no worker) until its
    /// next attempt, or goes to the dead-letter stream when it has no attempt left.
    pub async fn retry(
        &self,
        d: &Delivery,
        after: RetryAfter,
        error: &str,
    ) -> Result<RetryOutcome> {
        let failed = d.attempts + 1;
        if failed >= d.max_attempts {
            return Ok(if self.dead_letter(d, "max_attempts", error).await? {
                RetryOutcome::DeadLettered
            } else {
                RetryOutcome::Stale
            });
        }
        let delay = match after {
            RetryAfter::Backoff => d.backoff.delay(failed, &mut rand::rng()),
            RetryAfter::Exactly(delay) => delay,
        };
        let mut job = d.stored();
        job.attempts = failed;
        let scheduled = self.schedule(d, &job, delay).await?;
        if scheduled {
            metrics::counter!("fleet_queue_retried_total", "queue" => self.queue.name.to_string())
                .increment(1);
            Ok(RetryOutcome::Scheduled { delay })
        } else {
            Ok(RetryOutcome::Stale)
        }
    }

    /// Puts a job back into the delayed set for `delay` without counting an attempt: the job did
    /// not fail, it may just not run yet (a rate limit said so). Returns false when stale.
    pub async fn defer(&self, d: &Delivery, delay: Duration) -> Result<bool> {
        let job = d.stored();
        let deferred = self.schedule(d, &job, delay).await?;
        if deferred {
            metrics::counter!("fleet_queue_deferred_total", "queue" => self.queue.name.to_string())
                .increment(1);
        }
        Ok(deferred)
    }

    /// Acknowledges the entry and puts `job` in the delayed set, due `delay` from now on Redis's
    /// clock (one clock for every replica, the rate limiter and promotion). False when stale.
    /// Like [`Settler::defer`], with the job's payload replaced by `payload`: a handler that
    /// learned something the next delivery must know (the outbound worker: "sent, record
    /// pending") writes it into the job itself, atomically with the acknowledgement.
    pub async fn defer_with_payload(
        &self,
        d: &Delivery,
        delay: Duration,
        payload: Bytes,
    ) -> Result<bool> {
        let mut job = d.stored();
        job.payload = payload;
        let deferred = self.schedule(d, &job, delay).await?;
        if deferred {
            metrics::counter!("fleet_queue_deferred_total", "queue" => self.queue.name.to_string())
                .increment(1);
        }
        Ok(deferred)
    }

    /// Forgets deliveries without settling them: their holder lost their lease (the scheduler
    /// reclaimed them), so they are another worker's now.
    pub fn abandon(&self, deliveries: &[&Delivery]) {
        self.release(deliveries);
    }

    async fn schedule(&self, d: &Delivery, job: &StoredJob, delay: Duration) -> Result<bool> {
        let keys = vec![
            self.queue.keys.stream(d.priority).to_owned(),
            self.queue.keys.delayed(),
        ];
        let args: Vec<Value> = vec![
            Value::from(&*self.group),
            d.stream_id.as_str().into(),
            (delay.as_millis().min(i64::MAX as u128) as i64).into(),
            job.delayed_member(d.priority),
            "".into(),
        ];
        let reply = self
            .queue
            .broker
            .eval(&self.queue.broker.scripts.retry, keys, args)
            .await;
        self.release(&[d]);
        Ok(reply?.as_i64().is_some_and(|due| due > 0))
    }

    /// Sends a job to the dead-letter stream with its reason and last error. Returns false when
    /// the entry was no longer this consumer's (nothing written).
    pub async fn dead_letter(&self, d: &Delivery, reason: &str, error: &str) -> Result<bool> {
        let mut job = d.stored();
        job.attempts = d.attempts + 1;
        self.dead_letter_raw(d.priority, &d.stream_id, reason, error, job.fields())
            .await
    }

    async fn dead_letter_raw(
        &self,
        priority: Priority,
        stream_id: &str,
        reason: &str,
        error: &str,
        job_fields: Vec<Value>,
    ) -> Result<bool> {
        let keys = vec![
            self.queue.keys.stream(priority).to_owned(),
            self.queue.keys.dead(),
        ];
        // Errors are cut to a bounded length: a dead letter must not carry a megabyte of HTML.
        let error: String = error.chars().take(2_000).collect();
        let mut args: Vec<Value> = vec![
            Value::from(&*self.group),
            stream_id.into(),
            (self.dead_letter_cap as i64).into(),
            "reason".into(),
            reason.into(),
            "error".into(),
            error.into(),
            "orig".into(),
            stream_id.into(),
            "prio".into(),
            priority.as_str().into(),
            "died".into(),
            (now_ms() as i64).into(),
        ];
        args.extend(job_fields);
        let reply = self
            .queue
            .broker
            .eval(&self.queue.broker.scripts.dead_letter, keys, args)
            .await;
        self.leases.release(std::iter::once((priority, stream_id)));
        let done = reply?.as_i64() == Some(1);
        if done {
            metrics::counter!("fleet_queue_dead_lettered_total",
                "queue" => self.queue.name.to_string(), "reason" => reason.to_owned())
            .increment(1);
        }
        Ok(done)
    }
}

type RawDelivery = (Priority, crate::entry::RawEntry);

/// A non-blocking `XREADGROUP` on one stream, routed by its key (argument 6) on a cluster.
fn xreadgroup_cmd() -> fred::types::CustomCommand {
    cmd!("XREADGROUP", hash: fred::types::ClusterHash::Offset(6))
}

/// Parses an `XREADGROUP` reply frame over the three streams (RESP2 arrays or RESP3 maps),
/// highest priority first. An error frame becomes the error it carries (`NOGROUP` included).
fn parse_read_frame(reply: Resp3Frame, streams: &[String; 3]) -> Result<Vec<RawDelivery>> {
    let priority_of = |name: Resp3Frame| {
        let name = frame_bytes(name)?;
        streams
            .iter()
            .position(|s| s.as_bytes() == name.as_ref())
            .map(|i| Priority::ALL[i])
    };
    let mut out = Vec::new();
    let mut push = |name: Resp3Frame, entries: Resp3Frame| {
        let (Some(p), Resp3Frame::Array { data: entries, .. }) = (priority_of(name), entries)
        else {
            return;
        };
        out.reserve(entries.len());
        out.extend(
            entries
                .into_iter()
                .filter_map(|e| parse_entry_frame(e).map(|r| (p, r))),
        );
    };
    match reply {
        Resp3Frame::Array {
            data: per_stream, ..
        } => {
            for s in per_stream {
                if let Resp3Frame::Array { data: pair, .. } = s {
                    let mut pair = pair.into_iter();
                    if let (Some(name), Some(entries)) = (pair.next(), pair.next()) {
                        push(name, entries);
                    }
                }
            }
        }
        Resp3Frame::Map { data: map, .. } => {
            for (name, entries) in map {
                push(name, entries);
            }
        }
        Resp3Frame::SimpleError { data, .. } => {
            return Err(
                fred::error::Error::new(fred::error::ErrorKind::Unknown, data.to_string()).into(),
            );
        }
        Resp3Frame::BlobError { data, .. } => {
            let text = String::from_utf8_lossy(&data).into_owned();
            return Err(fred::error::Error::new(fred::error::ErrorKind::Unknown, text).into());
        }
        _ => {}
    }
    // Highest priority first, so a worker that handles a batch in order serves `high` first.
    out.sort_by_key(|(p, _)| *p);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_quotas_give_everything_to_each_level_in_turn() {
        assert_eq!(PriorityMode::Strict.quotas(500), [500, 500, 500]);
    }

    #[test]
    fn weighted_quotas_never_starve_a_level() {
        let q = PriorityMode::Weighted {
            high: 6,
            normal: 3,
            low: 1,
        }
        .quotas(500);
        assert_eq!(q, [300, 150, 50]);
        let q = PriorityMode::Weighted {
            high: 100,
            normal: 10,
            low: 1,
        }
        .quotas(10);
        assert!(
            q[2] >= 1,
            "a non-zero weight gets at least one entry per batch: {q:?}"
        );
    }

    #[test]
    fn consumer_names_are_unique() {
        assert_ne!(unique_consumer_name("w"), unique_consumer_name("w"));
        assert!(unique_consumer_name("prospects").starts_with("prospects-"));
    }
}
