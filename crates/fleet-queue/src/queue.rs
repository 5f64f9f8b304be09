//! A handle on one queue: enqueueing, pausing, and the entry point to consumers.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fleet_core::{EnqueueOptions, JobId, Priority, wire};
use fred::{cmd, prelude::*, types::Value};
use serde::Serialize;

use crate::{
    Broker, Consumer, ConsumerOptions, Error, Result,
    entry::{StoredJob, text_of},
    keys::QueueKeys,
};

/// The outcome of one enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id; for a duplicate, the id of the job first enqueued under the idempotency key.
    pub job_id: JobId,
    /// True when the idempotency key had been seen and nothing was appended.
    pub duplicate: bool,
    /// True for a duplicate whose first enqueue carried another idempotency fingerprint: the key
    /// was reused for a different request (nothing was appended either way).
    pub conflict: bool,
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    pub(crate) broker: Broker,
    pub(crate) name: Arc<str>,
    pub(crate) keys: Arc<QueueKeys>,
    /// The clock of due times computed for this handle (see [`Queue::with_clock`]).
    pub(crate) clock: Clock,
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whose clock a due time or a "now" is read from.
///
/// Every process's clock drifts a little from the others', so due times computed by each process
/// disagree, and a job scheduled by one process may be promoted early or late by another. The
/// default is the Redis server's clock, read inside the script that needs it (`TIME`; since
/// Redis 5 scripts replicate by their effects, so a replica or the AOF stores the result, never
/// a second reading). Tests and callers replaying a schedule inject a time instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clock {
    /// The Redis server's clock: one clock for every process.
    #[default]
    Redis,
    /// This time, in Unix ms.
    At(u64),
}

impl From<u64> for Clock {
    /// An injected time, in Unix ms.
    fn from(ms: u64) -> Clock {
        Clock::At(ms)
    }
}

impl Clock {
    /// The script argument: the time in ms, or empty for the server's clock (the convention of
    /// every script that reads a clock).
    pub(crate) fn arg(self) -> Value {
        match self {
            Clock::Redis => "".into(),
            Clock::At(ms) => (ms as i64).into(),
        }
    }
}

/// Most jobs one batch script call appends; larger batches are split, so that one call never
/// holds Redis for long (500 appends take well under a millisecond).
pub const BATCH_LIMIT: usize = 1_000;

/// A job ready to be written: its stored form and where it goes.
struct Prepared {
    job: StoredJob,
    priority: Priority,
    /// How long the job waits in the delayed set; `None` appends it to its stream now.
    delay_ms: Option<u64>,
    idempotency: Option<(String, Duration)>,
    /// What the request behind the idempotency key said (single enqueues only).
    fingerprint: Option<String>,
}

impl Queue {
    pub(crate) fn new(broker: Broker, name: &str) -> Queue {
        let keys = QueueKeys::new(&broker.prefix, name);
        Queue {
            broker,
            name: name.into(),
            keys: Arc::new(keys),
            clock: Clock::Redis,
        }
    }

    /// The same queue, with the due times of its delayed enqueues computed from `clock` (the
    /// default is [`Clock::Redis`]; tests inject a time).
    pub fn with_clock(&self, clock: Clock) -> Queue {
        Queue {
            clock,
            ..self.clone()
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's keys.
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    fn prepare<T: Serialize>(payload: &T, opts: &EnqueueOptions, now: u64) -> Result<Prepared> {
        if opts.max_attempts == 0 {
            return Err(Error::Invalid("max_attempts must be at least 1".into()));
        }
        let job = StoredJob {
            job_id: JobId::new(),
            attempts: 0,
            max_attempts: opts.max_attempts,
            backoff: opts.backoff,
            enqueued_at_ms: now,
            payload: wire::encode(payload)?.into(),
        };
        let delay_ms = opts
            .delay
            .filter(|d| !d.is_zero())
            .map(|d| (d.as_millis() as u64).max(1));
        let idempotency = opts
            .idempotency_key
            .clone()
            .map(|k| (k, opts.idempotency_ttl));
        if opts
            .idempotency_fingerprint
            .as_deref()
            .is_some_and(|f| f.is_empty() || f.contains(' '))
        {
            return Err(Error::Invalid(
                "an idempotency fingerprint is non-empty and has no space".into(),
            ));
        }
        Ok(Prepared {
            job,
            priority: opts.priority,
            delay_ms,
            idempotency,
            fingerprint: opts.idempotency_fingerprint.clone(),
        })
    }

    fn record_metrics(&self, p: &Prepared, e: &Enqueued) {
        if e.duplicate {
            metrics::counter!("fleet_queue_duplicates_total", "queue" => self.name.to_string())
                .increment(1);
        } else {
            metrics::counter!("fleet_queue_enqueued_total", "queue" => self.name.to_string(),
                "priority" => p.priority.as_str())
            .increment(1);
        }
    }

    /// Enqueues one job. Concurrent calls share the connection and are pipelined by the client.
    /// A job with neither an idempotency key nor a delay is one `XADD`; any other is one call of
    /// `lua/enqueue_one.lua`, all or nothing like a batch.
    pub async fn enqueue<T: Serialize>(
        &self,
        payload: &T,
        opts: &EnqueueOptions,
    ) -> Result<Enqueued> {
        let p = Self::prepare(payload, opts, now_ms())?;
        let e = if p.idempotency.is_none() && p.delay_ms.is_none() {
            let mut args: Vec<Value> = vec![self.keys.stream(p.priority).into(), "*".into()];
            args.extend(p.job.fields());
            let _: Value = self.broker.client().custom(cmd!("XADD"), args).await?;
            Enqueued {
                job_id: p.job.job_id.clone(),
                duplicate: false,
                conflict: false,
            }
        } else {
            self.append_one(&p).await?
        };
        self.record_metrics(&p, &e);
        Ok(e)
    }

    /// One call of `lua/enqueue_one.lua`, for a job with an idempotency key or a delay.
    async fn append_one(&self, p: &Prepared) -> Result<Enqueued> {
        let mut keys = vec![match p.delay_ms {
            Some(_) => self.keys.delayed(),
            None => self.keys.stream(p.priority).to_owned(),
        }];
        let mut ttl_ms = 0;
        if let Some((key, ttl)) = &p.idempotency {
            keys.push(self.keys.idempotency(key));
            ttl_ms = ttl.as_millis().max(1) as i64;
        }
        // The key's value: the job id, then the fingerprint after a space when there is one (a
        // job id never holds a space); the script stores and answers it as it is.
        let record = match &p.fingerprint {
            Some(fingerprint) => format!("{} {fingerprint}", p.job.job_id.as_str()),
            None => p.job.job_id.as_str().to_owned(),
        };
        let mut args: Vec<Value> = vec![
            record.into(),
            ttl_ms.into(),
            (p.delay_ms.unwrap_or(0) as i64).into(),
            self.clock.arg(),
            match p.delay_ms {
                Some(_) => p.job.delayed_member(p.priority),
                None => "".into(),
            },
        ];
        if p.delay_ms.is_none() {
            args.extend(p.job.fields());
        }
        let reply = self
            .broker
            .eval(&self.broker.scripts.enqueue_one, keys, args)
            .await?;
        match reply {
            Value::Array(parts) if parts.len() == 2 => {
                let appended = parts[0].as_i64() == Some(1);
                let record = text_of(&parts[1]).ok_or_else(|| Error::protocol("enqueue reply"))?;
                let (id, stored_fingerprint) = match record.split_once(' ') {
                    Some((id, fingerprint)) => (id.to_owned(), Some(fingerprint)),
                    None => (record.clone(), None),
                };
                // Only two fingerprints can disagree: a key claimed without one (an older enqueue)
                // or asked about without one never conflicts.
                let conflict = !appended
                    && p.fingerprint.is_some()
                    && stored_fingerprint.is_some()
                    && stored_fingerprint != p.fingerprint.as_deref();
                Ok(Enqueued {
                    job_id: JobId(id),
                    duplicate: !appended,
                    conflict,
                })
            }
            other => Err(Error::protocol(format!("enqueue reply {other:?}"))),
        }
    }

    /// Enqueues a batch of jobs in one round trip and one script call, all or nothing: when the
    /// call fails, no job of the batch was appended and no idempotency key claimed, so the
    /// caller may retry the whole batch (with idempotency keys when an error leaves it unsure
    /// whether the call ran, as a timeout does). Each job's idempotency key is checked atomically
    /// with its append (a key repeated inside the batch appends once). Every job is encoded
    /// before anything is written; a batch above [`BATCH_LIMIT`] is sent in several calls, each
    /// all or nothing, so a failure there leaves the calls before it appended.
    pub async fn enqueue_batch<T: Serialize>(
        &self,
        jobs: &[(T, EnqueueOptions)],
    ) -> Result<Vec<Enqueued>> {
        let now = now_ms();
        let prepared = jobs
            .iter()
            .map(|(t, o)| Self::prepare(t, o, now))
            .collect::<Result<Vec<_>>>()?;
        if prepared.iter().any(|p| p.fingerprint.is_some()) {
            return Err(Error::Invalid(
                "idempotency fingerprints are for single enqueues".into(),
            ));
        }
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in prepared.chunks(BATCH_LIMIT) {
            let done = self.append_batch(chunk).await?;
            for (p, e) in chunk.iter().zip(&done) {
                self.record_metrics(p, e);
            }
            out.extend(done);
        }
        Ok(out)
    }

    /// One call of the batch script (`lua/enqueue_batch.lua`) for at most [`BATCH_LIMIT`] jobs.
    async fn append_batch(&self, prepared: &[Prepared]) -> Result<Vec<Enqueued>> {
        let mut keys: Vec<String> = self.keys.streams().to_vec();
        keys.push(self.keys.delayed());
        let mut args: Vec<Value> = Vec::with_capacity(3 + prepared.len() * 7);
        args.push(Priority::CODES.into());
        args.push((prepared.len() as i64).into());
        args.push(self.clock.arg());
        for p in prepared {
            let key_at = match &p.idempotency {
                Some((key, _)) => {
                    keys.push(self.keys.idempotency(key));
                    keys.len() as i64
                }
                None => 0,
            };
            let ttl = p
                .idempotency
                .as_ref()
                .map_or(0, |(_, ttl)| ttl.as_millis().max(1) as i64);
            args.extend([
                (p.priority.index() as i64 + 1).into(),
                (p.delay_ms.unwrap_or(0) as i64).into(),
                key_at.into(),
                ttl.into(),
                p.job.job_id.as_str().into(),
                p.job.header().into(),
                Value::Bytes(p.job.payload.clone()),
            ]);
        }
        let reply = self
            .broker
            .eval(&self.broker.scripts.enqueue_batch, keys, args)
            .await?;
        let mut first_ids: std::collections::HashMap<usize, String> = Default::default();
        match reply {
            Value::Array(flat) => {
                for pair in flat.chunks(2) {
                    let (Some(pos), Some(id)) = (pair[0].as_i64(), pair.get(1).and_then(text_of))
                    else {
                        return Err(Error::protocol("enqueue_batch duplicate entry"));
                    };
                    first_ids.insert(pos as usize - 1, id);
                }
            }
            Value::Null => {}
            other => return Err(Error::protocol(format!("enqueue_batch reply {other:?}"))),
        }
        Ok(prepared
            .iter()
            .enumerate()
            .map(|(i, p)| match first_ids.remove(&i) {
                // A key claimed by a single enqueue holds "<job id> <fingerprint>".
                Some(first) => Enqueued {
                    job_id: JobId(first.split(' ').next().unwrap_or_default().to_owned()),
                    duplicate: true,
                    conflict: false,
                },
                None => Enqueued {
                    job_id: p.job.job_id.clone(),
                    duplicate: false,
                    conflict: false,
                },
            })
            .collect())
    }

    /// Entries waiting to be delivered, all priorities together ([`Queue::waiting`]: exact, or a
    /// lower bound for the few reads a recount takes after a restart, a failover or a deletion):
    /// what ingest compares with its high-water mark.
    pub async fn backlog(&self) -> Result<u64> {
        Ok(self.waiting().await?.iter().map(|w| w.entries).sum())
    }

    /// Stops every consumer of the queue from taking new work; producers keep enqueueing.
    pub async fn pause(&self) -> Result<()> {
        let _: Value = self
            .broker
            .client()
            .set(self.keys.paused(), "1", None, None, false)
            .await?;
        Ok(())
    }

    /// Lets consumers take work again.
    pub async fn resume(&self) -> Result<()> {
        let _: Value = self.broker.client().del(self.keys.paused()).await?;
        Ok(())
    }

    /// Whether the queue is paused.
    pub async fn is_paused(&self) -> Result<bool> {
        self.is_paused_on(self.broker.client()).await
    }

    /// [`Queue::is_paused`] over a given connection (a consumer asks on its own).
    pub(crate) async fn is_paused_on(&self, client: &Client) -> Result<bool> {
        let n: i64 = client.exists(self.keys.paused()).await?;
        Ok(n > 0)
    }

    /// Creates the consumer group on each stream if it does not exist yet.
    pub async fn ensure_group(&self, group: &str) -> Result<()> {
        for stream in self.keys.streams() {
            let r: std::result::Result<Value, _> = self
                .broker
                .client()
                .xgroup_create(stream.as_str(), group, "0", true)
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.details().contains("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A consumer of this queue, with its own connection for blocking reads.
    pub async fn consumer(&self, options: ConsumerOptions) -> Result<Consumer> {
        Consumer::new(self.clone(), options).await
    }

    /// Deletes every key of this queue. For tests and `fleetctl` demos only: it uses `SCAN` over
    /// the queue's own pattern, bounded by `COUNT`, never `KEYS`.
    pub async fn destroy(&self) -> Result<u64> {
        let mut deleted = 0u64;
        let mut cursor = "0".to_owned();
        // Bounded: at most 10,000 SCAN steps (the pattern matches only this queue's keys).
        for _ in 0..10_000 {
            let reply: Value = self
                .broker
                .client()
                .custom(
                    cmd!("SCAN"),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        self.keys.pattern(),
                        "COUNT".into(),
                        "1000".into(),
                    ],
                )
                .await?;
            let Value::Array(parts) = reply else { break };
            cursor = parts
                .first()
                .and_then(text_of)
                .unwrap_or_else(|| "0".into());
            if let Some(Value::Array(keys)) = parts.get(1) {
                for k in keys {
                    if let Some(k) = text_of(k) {
                        let n: i64 = self.broker.client().del(k).await?;
                        deleted += n as u64;
                    }
                }
            }
            if cursor == "0" {
                break;
            }
        }
        Ok(deleted)
    }
}
