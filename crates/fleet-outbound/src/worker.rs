//! The send worker: an apalis worker (ADR 0001) on `outbound` through
//! [`fleet_queue::apalis_backend::StreamsBackend`] in single mode, one delivery per task.
//!
//! Shape: the backend reads in batches of `batch_size` and hands out one delivery at a time;
//! apalis's `.concurrency(n)` bounds the handlers in flight (`concurrency` sends plus the sent
//! results waiting for their record), and a semaphore of `concurrency` bounds the sends among
//! them. Each handler decodes, finds the
//! tenant, checks the "already sent" record (always, one query for many jobs: `ledger.rs`), waits
//! for the shared rate limits, passes the fence, sends, classifies, and returns what the backend's
//! middleware settles: `Ok` acknowledges, [`JobError::Retry`] goes to the delayed set counting an
//! attempt, [`JobError::Fatal`] dead-letters, [`JobError::Defer`] waits without counting one (rate
//! limits, Postgres or the limiter away, another holder's send in doubt).
//!
//! No second send, fault by fault:
//! - Results go through a bounded channel to the recorder, which writes them to Postgres in
//!   batches and never drops one: while Postgres is away it retries, the channel fills, handlers
//!   wait to hand over their results holding their send slots, and no new send starts. A
//!   successful send's handler returns `Ok` (the acknowledgement) only once its record committed,
//!   so a redelivery finds the record and is acknowledged without a send.
//! - A stop while a record is still unwritten (Postgres away): after a short grace the handler
//!   writes "sent, record pending" into the job itself ([`SentNote`], atomically with the
//!   acknowledgement); the next delivery records it and never sends.
//! - A worker frozen or cut off past its lease: right before the send, the fence
//!   ([`fleet_queue::Fence`]) confirms the entry is still this consumer's (a reclaimed holder
//!   stops there) and marks the job; a later holder that finds another's mark with no outcome
//!   recorded waits for that record (up to `in_doubt_wait_ms`) instead of sending.
//! - The remaining window: a process killed (SIGKILL, power loss) between the provider's answer and
//!   its record; its job is sent again once `in_doubt_wait_ms` has passed.
//!
//! Shutdown (the [`Shutdown`] token drives `Monitor::run_with_signal`): stop reading, let handlers
//! in flight finish (bounded by the drain timeout), give back deliveries read but never started,
//! then flush the recorder.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::{
    layers::tracing::{DefaultOnFailure, TraceLayer},
    prelude::{Data, Event, Monitor, WorkerBuilder, WorkerBuilderExt},
};
use fleet_core::{OUTBOUND_QUEUE, OutboundBody, OutboundMessage, SentNote, wire};
use fleet_providers::{Account, SendOutcome, Senders, classify::mask};
use fleet_queue::{
    Broker, ConsumerOptions, Delivery, Fence, Queue, RetryAfter, Settler,
    apalis_backend::{JobError, StreamsBackend},
};
use fleet_runtime::{Shutdown, Tenants, TenantsHandle};
use fleet_store::{OutboundRecord, OutboundState, Store};
use governor::{DefaultDirectRateLimiter, Quota};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::{
    config::OutboundConfig,
    ledger::SentLedger,
    ratelimit::{Admission, Limit, LimiterOptions, Rate, RateLimiter, Request},
};

/// How long a job waits when its "already sent" record cannot be read (Postgres away): it must
/// not be sent blind, and it must not burn an attempt.
const LEDGER_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(5);
/// How long a job waits when the rate limiter or the fence cannot be asked (Redis away).
const LIMITER_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);
/// Longest wait before a job whose earlier holder's send is in doubt looks again (the record
/// usually arrives well before the in-doubt wait ends).
const IN_DOUBT_RECHECK: Duration = Duration::from_secs(5);
/// How long, once shutdown began, a sent job's handler still waits for its record before it
/// writes "sent, record pending" into the job instead.
const RECORD_STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the recorder, once every handler returned, keeps retrying what is left before it
/// gives up (those results' jobs were given back with their outcome, or are still pending).
const RECORD_STOP_DRAIN: Duration = Duration::from_secs(5);
/// Longest pause between two tries of a failed record write.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most local waits for a reserved slot before deferring instead (a reserved slot lets the job go
/// on the first check after it; this bounds the loop if clocks disagree).
const MAX_LOCAL_ROUNDS: usize = 3;
/// How many times, in all, the worker is restarted after it ended with an error (its consumer
/// could not be created, or a read failed with something else than an unavailable Redis) before
/// `run` fails, so a persistent fault ends the process rather than spinning.
pub const RESTARTS_MAX: usize = 20;

/// Everything a handler needs, shared.
struct Ctx {
    config: OutboundConfig,
    senders: Senders,
    limiter: RateLimiter,
    local: LocalLimiters,
    tenants: TenantsHandle,
    /// The "already sent" lookups.
    ledger: SentLedger,
    /// To the recorder.
    record_tx: mpsc::Sender<Recorded>,
    /// Sends in flight: `concurrency`. A handler holds a permit from its start until its result
    /// is in the recorder's channel, not while it waits for the batch to commit, so waiting for
    /// Postgres does not take a send slot (apalis's own limit counts those waiting handlers too).
    sends: Arc<Semaphore>,
    /// The process's shutdown: a handler still waiting for a send slot then gives its job back.
    shutdown: Shutdown,
}

/// A result for the recorder; `committed` hears whether its batch was written.
struct Recorded {
    committed: Option<oneshot::Sender<bool>>,
    record: OutboundRecord,
}

/// One sender's local limiter and the rate it was built for (rebuilt when a reload changes it).
type LocalEntry = (f64, u32, Arc<DefaultDirectRateLimiter>);

/// Per-sender `governor` limiters: each process spaces its own admissions before asking Redis.
#[derive(Default)]
struct LocalLimiters {
    by_scope: Mutex<HashMap<String, LocalEntry>>,
}

impl LocalLimiters {
    fn get(&self, scope: &str, rate: Rate) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.by_scope.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((per_second, burst, lim)) = map.get(scope)
            && *per_second == rate.per_second
            && *burst == rate.burst
        {
            return lim.clone();
        }
        let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .map(|q| q.allow_burst(burst))
            .unwrap_or_else(|| Quota::per_second(burst));
        let lim = Arc::new(DefaultDirectRateLimiter::direct(quota));
        // Bounded by the number of senders in the tenants file (itself bounded).
        map.insert(scope.to_owned(), (rate.per_second, rate.burst, lim.clone()));
        lim
    }
}

/// Runs the outbound worker until `shutdown` is cancelled. `http` is the process's one client.
pub async fn run(
    config: OutboundConfig,
    broker: Broker,
    store: Store,
    tenants: TenantsHandle,
    http: reqwest::Client,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let queue = broker.queue(OUTBOUND_QUEUE);
    let limiter = RateLimiter::new(
        &broker,
        LimiterOptions {
            horizon: Duration::from_millis(config.reservation_horizon_ms),
            grace: Duration::from_millis(config.reservation_grace_ms),
        },
    );
    let (record_tx, record_rx) = mpsc::channel::<Recorded>(config.record_batch * 2);
    // The recorder outlives the workers: handlers wait on it until the monitor returns.
    let recorder_stop = Shutdown::new();
    let recorder = tokio::spawn(record_loop(
        store.clone(),
        queue.clone(),
        config.record_batch,
        Duration::from_millis(config.record_linger_ms),
        record_rx,
        recorder_stop.clone(),
    ));
    let (concurrency, batch_size, retry) = (config.concurrency, config.batch_size, config.retry);
    // Handlers: every send in flight plus every sent result waiting for its batch (the recorder's
    // channel holds at most `2 * record_batch`), the same bound the results had before apalis.
    let handlers = concurrency + 2 * config.record_batch;
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let ctx = Arc::new(Ctx {
        senders: Senders::new(
            http,
            Duration::from_millis(config.http.request_timeout_ms),
            &config.meta_api_base,
            &config.twilio_api_base,
        ),
        limiter,
        local: LocalLimiters::default(),
        tenants,
        ledger: SentLedger::start(&store),
        record_tx,
        sends: Arc::new(Semaphore::new(concurrency)),
        shutdown: shutdown.clone(),
        config,
    });

    let (stopping, gave_up) = (shutdown.clone(), Arc::new(AtomicBool::new(false)));
    let failed = gave_up.clone();
    let monitor = Monitor::new()
        .should_restart(move |worker, error| {
            let restart = !stopping.is_cancelled() && worker.restarts() < RESTARTS_MAX;
            warn!(%error, restart, "the outbound worker ended");
            if !restart && !stopping.is_cancelled() {
                // Out of restarts: end the process rather than run with no worker unnoticed (the
                // monitor's result does not say, hence the flag).
                failed.store(true, Ordering::SeqCst);
                stopping.cancel();
            }
            restart
        })
        .on_event(|_, event| {
            // A handler's `JobError` is an outcome, logged and counted by the handler. Anything
            // else is a caught panic (retried with backoff) or a settlement that failed (Redis
            // away: the entry stays pending and stalled recovery hands it out again).
            if let Event::Error(e) = event
                && e.downcast_ref::<JobError>().is_none()
            {
                warn!(error = %e, "an outbound task failed or could not be settled");
            }
        })
        // Beyond it the monitor drops the handlers still running: their entries stay pending and
        // stalled recovery hands them out again (the "already sent" record guards a redelivery).
        .shutdown_timeout(drain)
        .register(move |_restarts| {
            // A fresh consumer name on every restart.
            let options = ConsumerOptions {
                batch_size,
                // Outbound owns its retry policy, whatever the producers wrote into the jobs.
                retry: Some(retry),
                ..ConsumerOptions::new("outbound")
            };
            WorkerBuilder::new("outbound")
                .backend(
                    // Handlers plus settlements in flight: every handler, and one read's worth of
                    // settlements behind them.
                    StreamsBackend::single(queue.clone(), options)
                        .in_flight_limit(handlers + batch_size),
                )
                .data(ctx.clone())
                .concurrency(handlers)
                .catch_panic()
                // Retries and deferrals are ordinary outcomes here: traced at debug, not error.
                .layer(
                    TraceLayer::new()
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .build(handle)
        });
    info!(concurrency, batch = batch_size, "outbound worker started");
    let signal = async move {
        shutdown.cancelled().await;
        Ok(())
    };
    let result = monitor.run_with_signal(signal).await;
    // Every handler has returned (or was dropped at the drain timeout): flush what is left.
    recorder_stop.cancel();
    if let Err(e) = recorder.await {
        error!(error = %e, "the recorder task failed");
    }
    result.map_err(|e| anyhow::anyhow!("outbound worker failed: {e}"))?;
    if gave_up.load(Ordering::SeqCst) {
        anyhow::bail!("the outbound worker failed {RESTARTS_MAX} restarts; stopped the process");
    }
    info!("outbound worker stopped");
    Ok(())
}

/// The sender scope and rate of an account.
fn sender_scope(account: Account<'_>, burst: u32) -> (String, Rate) {
    (
        account.sender_key(),
        Rate {
            per_second: f64::from(account.messages_per_second().max(1)),
            burst,
        },
    )
}

fn record_for(
    d: &Delivery,
    m: &OutboundMessage,
    state: OutboundState,
    attempts: u32,
    error: Option<String>,
    id: Option<String>,
) -> OutboundRecord {
    let (kind, body) = match &m.body {
        OutboundBody::Text { text } => ("text", text.clone()),
        OutboundBody::Template { name, .. } => ("template", name.clone()),
    };
    OutboundRecord {
        job_id: d.job_id.to_string(),
        tenant: m.tenant.clone(),
        provider: m.provider,
        recipient: m.to.trim_start_matches('+').to_owned(),
        kind: kind.to_owned(),
        body: Some(body),
        origin: m.origin.clone(),
        state,
        attempts,
        last_error: error,
        provider_message_id: id.filter(|s| !s.is_empty()),
    }
}

/// A dead letter with `reason`, counted.
fn dead(reason: &str, error: String) -> JobError {
    metrics::counter!("fleet_outbound_dead_lettered_total", "reason" => reason.to_owned())
        .increment(1);
    JobError::Fatal {
        reason: reason.to_owned(),
        error,
    }
}

/// A deferral (no attempt counted), counted by `reason`.
fn defer(delay: Duration, reason: &'static str) -> JobError {
    metrics::counter!("fleet_outbound_deferred_total", "reason" => reason).increment(1);
    JobError::Defer(delay)
}

/// The apalis handler: one delivery, start to outcome, in four steps: a send slot and the
/// delivery's sender ([`resolve`]), whether it was sent before ([`sent_before`]), admission by
/// the rate limits and the fence ([`admit`], [`pass_fence`]), then the send and its record
/// ([`send_and_record`]). The backend's middleware settles the outcome; a settlement that fails
/// leaves the entry pending, and stalled recovery hands it out again, where the "already sent"
/// record protects it.
async fn handle(d: Delivery, ctx: Data<Arc<Ctx>>, settler: Data<Settler>) -> Result<(), JobError> {
    // Fair (FIFO) and never closed. Dropped with the gauge's guard once the send is over. A job
    // still waiting for a slot when shutdown begins has not started: it goes back to the queue
    // (due now, no attempt counted) instead of making the drain wait for its send.
    let permit = tokio::select! {
        biased;
        () = ctx.shutdown.cancelled() => return Err(JobError::Defer(Duration::ZERO)),
        permit = ctx.sends.clone().acquire_owned() => permit,
    };
    let send_slot = (permit, InFlight::enter());
    let message: OutboundMessage = d.decode().map_err(|e| {
        // A decode error may quote the field it choked on (a number): masked like provider text.
        dead("decode", mask(&e.to_string()))
    })?;
    let tenants = ctx.tenants.current();
    let account = resolve(&ctx, &d, &message, &tenants).await?;
    match sent_before(&ctx, &d, &message).await? {
        Earlier::NotSent => {}
        Earlier::Recorded => return Ok(()),
        // Sent by an earlier delivery that stopped before its record was written: record, never
        // send.
        Earlier::RecordPending(id) => return record_sent(&ctx, &d, &message, id, send_slot).await,
    }
    let (scope, sender_rate) = sender_scope(account, ctx.config.sender_burst);
    admit(&ctx, &d, &message, &scope, sender_rate).await?;
    pass_fence(&ctx, &settler, &d).await?;
    send_and_record(&ctx, &d, &message, account, send_slot).await
}

/// The tenant's account the delivery goes out from; a dead letter when the tenant or its
/// provider settings are gone.
async fn resolve<'t>(
    ctx: &Ctx,
    d: &Delivery,
    message: &OutboundMessage,
    tenants: &'t Tenants,
) -> Result<Account<'t>, JobError> {
    let Some(tenant) = tenants.get(&message.tenant) else {
        return Err(dead(
            "unknown_tenant",
            format!("no tenant {:?} in the tenants file", message.tenant),
        ));
    };
    let provider = message.provider;
    let Some(account) = tenant.accounts().get(provider) else {
        let error = format!("tenant {:?} has no {provider} settings", tenant.id);
        let rec = record_for(
            d,
            message,
            OutboundState::Failed,
            d.attempts + 1,
            Some(error.clone()),
            None,
        );
        record(&ctx.record_tx, None, rec).await;
        return Err(dead("no_provider", error));
    };
    Ok(account)
}

/// What an earlier delivery of the same job did.
enum Earlier {
    /// Nothing known: this delivery sends.
    NotSent,
    /// Sent and recorded (a crash between record and ack, a replay): nothing left to do.
    Recorded,
    /// Sent, but its process stopped before the record was written, and gave the job back with a
    /// note: record it (with the provider's id when known), never send it again.
    RecordPending(Option<String>),
}

/// Whether the message went out already, asked for every delivery whatever its attempt count (a
/// replay resets it). A sent record that cannot be read defers the job: sending blind could send
/// twice.
async fn sent_before(
    ctx: &Ctx,
    d: &Delivery,
    message: &OutboundMessage,
) -> Result<Earlier, JobError> {
    let earlier = match ctx.ledger.sent(d.job_id.as_str()).await {
        Ok(Some(_)) => Earlier::Recorded,
        Ok(None) => match &message.sent {
            Some(note) => Earlier::RecordPending(note.provider_message_id.clone()),
            None => Earlier::NotSent,
        },
        Err(e) => {
            warn!(job = %d.job_id, error = %e, "cannot read the sent record; deferring the job");
            return Err(defer(LEDGER_UNAVAILABLE_PAUSE, "ledger"));
        }
    };
    if !matches!(earlier, Earlier::NotSent) {
        metrics::counter!("fleet_outbound_already_sent_total", "provider" => message.provider.as_str())
            .increment(1);
    }
    Ok(earlier)
}

/// Right before the send: the entry must still be ours, and no earlier holder's send in doubt.
async fn pass_fence(ctx: &Ctx, settler: &Settler, d: &Delivery) -> Result<(), JobError> {
    let in_doubt_wait = Duration::from_millis(ctx.config.in_doubt_wait_ms);
    match settler.fence(d, in_doubt_wait).await {
        Ok(Fence::Go) => Ok(()),
        Ok(Fence::Lost) => {
            warn!(job = %d.job_id, "lease lost before the send (the process was frozen or cut off); not sending");
            metrics::counter!("fleet_outbound_lease_lost_total").increment(1);
            Err(JobError::LeaseLost)
        }
        Ok(Fence::InDoubt { age }) => {
            debug!(job = %d.job_id, age_ms = age.as_millis() as u64, "an earlier send of this job is in doubt; waiting for its record");
            let wait = in_doubt_wait.saturating_sub(age).min(IN_DOUBT_RECHECK);
            Err(defer(wait.max(Duration::from_millis(1)), "in_doubt"))
        }
        Err(e) => {
            warn!(job = %d.job_id, error = %e, "cannot pass the send fence; deferring the job");
            Err(defer(LIMITER_UNAVAILABLE_PAUSE, "fence"))
        }
    }
}

/// The send, and what its outcome means for the record and the job: sent (recorded, then
/// acknowledged), retry, or dead letter.
async fn send_and_record(
    ctx: &Ctx,
    d: &Delivery,
    message: &OutboundMessage,
    account: Account<'_>,
    send_slot: impl Sized,
) -> Result<(), JobError> {
    let provider = message.provider;
    let started = Instant::now();
    let outcome = ctx.senders.send(account, message, d.job_id.as_str()).await;
    metrics::histogram!("fleet_outbound_send_duration_seconds", "provider" => provider.as_str())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("fleet_outbound_sends_total", "provider" => provider.as_str(), "outcome" => outcome.label())
        .increment(1);

    let attempts = d.attempts + 1;
    let failed = |state: OutboundState, reason: &str| {
        record_for(d, message, state, attempts, Some(reason.to_owned()), None)
    };
    match outcome {
        SendOutcome::Sent {
            provider_message_id,
        } => record_sent(ctx, d, message, Some(provider_message_id), send_slot).await,
        SendOutcome::Retry { after, reason } | SendOutcome::RateLimited { after, reason } => {
            let how = after.map_or(RetryAfter::Backoff, RetryAfter::Exactly);
            debug!(job = %d.job_id, tenant = %message.tenant, %provider, %reason, "send failed; retrying");
            // The backend's retry dead-letters (`max_attempts`) when no attempt is left.
            let state = if attempts >= d.max_attempts {
                OutboundState::Failed
            } else {
                OutboundState::Queued
            };
            record(&ctx.record_tx, None, failed(state, &reason)).await;
            Err(JobError::Retry {
                after: how,
                error: reason,
            })
        }
        SendOutcome::Permanent { reason } => {
            info!(job = %d.job_id, tenant = %message.tenant, %provider, %reason, "permanent send failure; dead-lettered");
            record(&ctx.record_tx, None, failed(OutboundState::Failed, &reason)).await;
            Err(dead("permanent", reason))
        }
        SendOutcome::AuthFailed { reason } => {
            error!(tenant = %message.tenant, %provider, %reason, "the provider refused the tenant's credentials");
            metrics::counter!("fleet_outbound_auth_failures_total", "tenant" => message.tenant.clone()).increment(1);
            record(&ctx.record_tx, None, failed(OutboundState::Failed, &reason)).await;
            Err(dead("auth", reason))
        }
    }
}

/// Records a successful send and returns once it is committed (`Ok`: the acknowledgement follows
/// the record). The recorder retries until Postgres answers; only a stop cuts the wait short, and
/// then the job goes back with "sent, record pending" written into it, so its next delivery
/// records it instead of sending it again.
async fn record_sent(
    ctx: &Ctx,
    d: &Delivery,
    message: &OutboundMessage,
    provider_message_id: Option<String>,
    send_slot: impl Sized,
) -> Result<(), JobError> {
    let rec = record_for(
        d,
        message,
        OutboundState::Sent,
        d.attempts + 1,
        None,
        provider_message_id.clone(),
    );
    let (committed, written) = oneshot::channel();
    record(&ctx.record_tx, Some(committed), rec).await;
    // In the channel: the send slot is free for the next job while this one waits.
    drop(send_slot);
    let stopping = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(RECORD_STOP_GRACE).await;
    };
    let written = tokio::select! {
        written = written => written.unwrap_or(false),
        () = stopping => false,
    };
    if written {
        return Ok(());
    }
    warn!(job = %d.job_id, "sent, but the record is not written yet; the job keeps the outcome for its next delivery");
    metrics::counter!("fleet_outbound_sent_notes_total").increment(1);
    let noted = OutboundMessage {
        sent: Some(SentNote {
            provider_message_id,
        }),
        ..message.clone()
    };
    match wire::encode(&noted) {
        Ok(payload) => Err(JobError::DeferWith {
            delay: LEDGER_UNAVAILABLE_PAUSE,
            payload: payload.into(),
        }),
        // Cannot happen for a message that decoded; if it did, the entry stays pending and the
        // fence's mark keeps a redelivery from sending for the in-doubt wait.
        Err(e) => {
            error!(job = %d.job_id, error = %e, "cannot encode the sent note");
            Err(JobError::LeaseLost)
        }
    }
}

/// Counts a send task in `fleet_outbound_in_flight` for as long as it lives (abort included).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("fleet_outbound_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("fleet_outbound_in_flight").decrement(1.0);
    }
}

/// Waits for the rate limits. `Ok`: send now. `Err`: the deferral to return.
async fn admit(
    ctx: &Ctx,
    d: &Delivery,
    m: &OutboundMessage,
    scope: &str,
    sender: Rate,
) -> Result<(), JobError> {
    let local_max = Duration::from_millis(ctx.config.local_wait_max_ms);
    // Local smoothing: space this process's own admissions before asking Redis. A timeout here is
    // fine: Redis decides.
    let local = ctx.local.get(scope, sender);
    let _ = tokio::time::timeout(local_max, local.until_ready()).await;

    let recipient = (ctx.config.recipient_interval_ms > 0).then(|| {
        let rate = Rate {
            per_second: 1000.0 / ctx.config.recipient_interval_ms as f64,
            burst: ctx.config.recipient_burst,
        };
        (m.to.trim_start_matches('+'), rate)
    });
    let request = Request {
        scope,
        sender,
        recipient,
        ticket: d.job_id.as_str(),
        now_us: None,
    };
    for _ in 0..MAX_LOCAL_ROUNDS {
        match ctx.limiter.admit(&request).await {
            Ok(Admission::Go) => return Ok(()),
            Ok(Admission::Wait {
                wait,
                reserved,
                limit,
            }) => {
                if reserved && wait <= local_max {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let label = match limit {
                    Limit::Sender => "sender",
                    Limit::Recipient => "recipient",
                };
                let delay = defer_delay(
                    wait,
                    reserved,
                    Duration::from_millis(ctx.config.reservation_horizon_ms),
                );
                return Err(defer(delay, label));
            }
            Err(e) => {
                warn!(job = %d.job_id, error = %e, "the rate limiter is unavailable; deferring the job");
                return Err(defer(LIMITER_UNAVAILABLE_PAUSE, "limiter"));
            }
        }
    }
    // Still not admitted after waiting for a reserved slot: let the delayed set hold it.
    Err(defer(local_max.max(Duration::from_millis(1)), "sender"))
}

/// The delay of a deferred job: exactly until its reserved slot (rounded up to the millisecond),
/// or, without a reservation (the slot is beyond the horizon), until the horizon should have room
/// again, with jitter so the waiting jobs do not come back together.
pub fn defer_delay(wait: Duration, reserved: bool, horizon: Duration) -> Duration {
    if reserved {
        let ms = wait.as_micros().div_ceil(1000) as u64;
        return Duration::from_millis(ms.max(1));
    }
    let base = wait.saturating_sub(horizon / 2).max(horizon / 2);
    base.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// Hands a result to the recorder; `committed` hears whether its batch was written.
async fn record(
    tx: &mpsc::Sender<Recorded>,
    committed: Option<oneshot::Sender<bool>>,
    record: OutboundRecord,
) {
    // A closed channel drops `committed`, which its handler reads as "not written".
    if tx.send(Recorded { committed, record }).await.is_err() {
        error!("the recorder stopped; a result was not recorded");
    }
}

/// Writes results in batches of up to `max`, each at most `linger` after its first result, and
/// tells each waiting handler once its batch is committed. Runs until `stop`, then writes what is
/// left (for at most [`RECORD_STOP_DRAIN`] if Postgres is away).
async fn record_loop(
    store: Store,
    queue: Queue,
    max: usize,
    linger: Duration,
    mut rx: mpsc::Receiver<Recorded>,
    stop: Shutdown,
) {
    let mut buf: Vec<Recorded> = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        buf.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while buf.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => buf.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&store, &queue, &mut buf, &stop).await;
    }
    // Stopped: every handler is gone, so what is in the channel is all there will be.
    while let Ok(r) = rx.try_recv() {
        buf.push(r);
        if buf.len() >= max {
            flush(&store, &queue, &mut buf, &stop).await;
        }
    }
    flush(&store, &queue, &mut buf, &stop).await;
}

/// Writes one batch, retrying with capped backoff until it commits: a result is never dropped
/// while the worker runs (the full channel holds the handlers, so no new send starts meanwhile).
/// Once `stop` is cancelled, it gives up after [`RECORD_STOP_DRAIN`]. After a commit, the jobs'
/// send fences are cleared: their outcome is known.
async fn flush(store: &Store, queue: &Queue, buf: &mut Vec<Recorded>, stop: &Shutdown) {
    if buf.is_empty() {
        return;
    }
    let rows: Vec<OutboundRecord> = buf.iter().map(|r| r.record.clone()).collect();
    let started = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let mut pause = Duration::from_millis(100);
    let mut attempt = 0u32;
    let written = loop {
        attempt = attempt.saturating_add(1);
        match store.record_outbound_results(&rows).await {
            Ok(()) => break true,
            Err(e) => {
                warn!(attempt, rows = rows.len(), error = %e, "recording send results failed; retrying");
                metrics::counter!("fleet_outbound_record_failures_total").increment(1);
            }
        }
        if stop.is_cancelled() {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= RECORD_STOP_DRAIN {
                break false;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // A stop cuts the pause short, so the drain window starts at once.
            () = stop.cancelled(), if stopped_at.is_none() => {}
        }
        pause = (pause * 2).min(RECORD_BACKOFF_MAX);
    };
    metrics::histogram!("fleet_outbound_record_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if written {
        let jobs: Vec<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
        if let Err(e) = queue.clear_fences(&jobs).await {
            // They expire on their own; meanwhile a retried job may wait for the in-doubt check.
            warn!(error = %e, "clearing send fences failed");
        }
    } else {
        error!(
            rows = rows.len(),
            "stopping with send results unwritten (Postgres away); sent jobs carry their outcome"
        );
    }
    for r in buf.drain(..) {
        if let Some(committed) = r.committed {
            // A handler that gave up waiting (a stop) no longer listens: nothing to tell.
            let _ = committed.send(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defer_delays() {
        let h = Duration::from_secs(30);
        assert_eq!(
            defer_delay(Duration::from_micros(1), true, h),
            Duration::from_millis(1)
        );
        assert_eq!(
            defer_delay(Duration::from_micros(12_001), true, h),
            Duration::from_millis(13)
        );
        for _ in 0..100 {
            let d = defer_delay(Duration::from_secs(100), false, h);
            assert!(
                d >= Duration::from_secs(76) && d <= Duration::from_secs(94),
                "{d:?}"
            );
            let d = defer_delay(Duration::from_secs(31), false, h);
            assert!(
                d >= Duration::from_millis(14_400) && d <= Duration::from_millis(17_600),
                "{d:?}"
            );
        }
    }
}
