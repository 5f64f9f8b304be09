//! The send loop: read `outbound` in batches, send each reply with bounded concurrency, settle it.
//!
//! Shape: one reader (the [`fleet_queue::Consumer`]) hands deliveries to at most `concurrency` send tasks in a
//! [`JoinSet`]; each task decodes, finds the tenant, checks the "already sent" record, waits for
//! the shared rate limits (or defers the job), sends, classifies, and settles failures itself
//! (retry, dead letter). Successes go through a bounded channel to the recorder, which writes
//! results to Postgres in batches and acknowledges the jobs only after their record is committed:
//! a redelivered job whose send succeeded finds its record and is acknowledged without a second
//! send. Shutdown order: stop reading, let sends in flight finish (bounded by the drain timeout),
//! flush the recorder, acknowledge, return.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fleet_core::{OUTBOUND_QUEUE, OutboundBody, OutboundMessage, Provider};
use fleet_queue::{Broker, ConsumerOptions, Delivery, RetryAfter, RetryOutcome, Settler};
use fleet_runtime::{Shutdown, TenantsHandle, tenants::Tenant};
use fleet_store::{OutboundRecord, OutboundState, Store};
use governor::{DefaultDirectRateLimiter, Quota};
use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tracing::{debug, error, info, warn};

use crate::{
    classify::SendOutcome,
    config::OutboundConfig,
    meta::MetaClient,
    ratelimit::{Admission, Limit, LimiterOptions, Rate, RateLimiter, Request},
    twilio::TwilioClient,
};

/// How long a job waits when its "already sent" record cannot be read (Postgres away): it must
/// not be sent blind, and it must not burn an attempt.
const LEDGER_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(5);
/// How long a job waits when the rate limiter cannot be asked (Redis away).
const LIMITER_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);
/// Pause of the reader after a failed read, so a Redis outage is not a busy loop.
const READ_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// Most local waits for a reserved slot before deferring instead (a reserved slot lets the job go
/// on the first check after it; this bounds the loop if clocks disagree).
const MAX_LOCAL_ROUNDS: usize = 3;

/// Everything a send task needs, shared.
struct Ctx {
    config: OutboundConfig,
    meta: MetaClient,
    twilio: TwilioClient,
    limiter: RateLimiter,
    local: LocalLimiters,
    store: Store,
    tenants: TenantsHandle,
    /// The reader's settle handle (ack, retry, defer, dead letter), shared by the send tasks while
    /// the reader keeps `&mut` for `next_batch`.
    settler: Settler,
}

/// A success waiting for its record before its acknowledgement.
struct Recorded {
    delivery: Option<Delivery>,
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
    let options = ConsumerOptions {
        batch_size: config.batch_size,
        ..ConsumerOptions::new("outbound")
    };
    let mut reader = queue.consumer(options).await?;
    let settler = reader.settler();
    let limiter = RateLimiter::new(
        &broker,
        LimiterOptions {
            horizon: Duration::from_millis(config.reservation_horizon_ms),
            grace: Duration::from_millis(config.reservation_grace_ms),
        },
    );
    let ctx = Arc::new(Ctx {
        meta: MetaClient::new(http.clone(), &config.meta_api_base),
        twilio: TwilioClient::new(http, &config.twilio_api_base),
        limiter,
        local: LocalLimiters::default(),
        store,
        tenants,
        settler,
        config,
    });
    info!(
        concurrency = ctx.config.concurrency,
        batch = ctx.config.batch_size,
        "outbound worker started"
    );

    let (record_tx, record_rx) = mpsc::channel::<Recorded>(ctx.config.record_batch * 2);
    let recorder = tokio::spawn(record_loop(ctx.clone(), record_rx));
    let permits = Arc::new(Semaphore::new(ctx.config.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();

    'read: while !shutdown.is_cancelled() {
        while let Some(joined) = tasks.try_join_next() {
            if let Err(e) = joined
                && e.is_panic()
            {
                error!("a send task panicked; its job stays pending and will be recovered");
            }
        }
        let batch = tokio::select! {
            b = reader.next_batch() => b,
            () = shutdown.cancelled() => break 'read,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "reading the outbound queue failed");
                tokio::select! {
                    () = tokio::time::sleep(READ_ERROR_PAUSE) => continue 'read,
                    () = shutdown.cancelled() => break 'read,
                }
            }
        };
        for delivery in batch {
            // Waiting for a permit is the backpressure: at most `concurrency` sends in flight, and
            // the rest of this batch (bounded by `batch_size`) waits in memory.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break 'read;
            };
            tasks.spawn(process(ctx.clone(), delivery, permit, record_tx.clone()));
        }
    }

    info!(
        in_flight = tasks.len(),
        "outbound worker stopping: draining sends in flight"
    );
    let drain = Duration::from_millis(ctx.config.drain_timeout_ms);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "sends still in flight after the drain timeout; their jobs stay pending and will be recovered"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    drop(record_tx);
    if let Err(e) = recorder.await {
        error!(error = %e, "the recorder task failed");
    }
    info!("outbound worker stopped");
    Ok(())
}

/// The sender scope, rate and provider of a message, from its tenant.
fn sender_of(tenant: &Tenant, provider: Provider, burst: u32) -> Option<(String, Rate)> {
    match provider {
        Provider::Meta => tenant.meta.as_ref().map(|m| {
            (
                format!("meta:{}", m.phone_number_id),
                Rate {
                    per_second: f64::from(m.messages_per_second.max(1)),
                    burst,
                },
            )
        }),
        Provider::Twilio => tenant.twilio.as_ref().map(|t| {
            (
                format!("twilio:{}", t.from),
                Rate {
                    per_second: f64::from(t.messages_per_second.max(1)),
                    burst,
                },
            )
        }),
    }
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

/// One delivery, start to settlement. Errors of settlement calls are logged: the entry then stays
/// pending and stalled recovery hands it out again, where the "already sent" record protects it.
async fn process(
    ctx: Arc<Ctx>,
    d: Delivery,
    permit: OwnedSemaphorePermit,
    record_tx: mpsc::Sender<Recorded>,
) {
    let _permit = permit;
    let _in_flight = InFlight::enter();
    let c = &ctx.settler;
    let message: OutboundMessage = match d.decode() {
        Ok(m) => m,
        Err(e) => {
            // A decode error may quote the field it choked on (a number): masked like provider text.
            settle_dead(c, &d, "decode", &crate::classify::mask(&e.to_string())).await;
            return;
        }
    };
    let tenants = ctx.tenants.current();
    let Some(tenant) = tenants.get(&message.tenant) else {
        settle_dead(
            c,
            &d,
            "unknown_tenant",
            &format!("no tenant {:?} in the tenants file", message.tenant),
        )
        .await;
        return;
    };
    let provider = message.provider;
    let Some((scope, sender_rate)) = sender_of(tenant, provider, ctx.config.sender_burst) else {
        let error = format!("tenant {:?} has no {provider} settings", tenant.id);
        settle_dead(c, &d, "no_provider", &error).await;
        record(
            &record_tx,
            None,
            record_for(
                &d,
                &message,
                OutboundState::Failed,
                d.attempts + 1,
                Some(error),
                None,
            ),
        )
        .await;
        return;
    };

    if ctx.config.check_sent.applies(d.attempts) {
        match ctx.store.outbound_sent(d.job_id.as_str()).await {
            Ok(Some(_)) => {
                // Sent before and recorded (a redelivery after a crash between record and ack).
                metrics::counter!("fleet_outbound_already_sent_total", "provider" => provider.as_str()).increment(1);
                if let Err(e) = c.ack(&[&d]).await {
                    warn!(job = %d.job_id, error = %e, "acknowledging an already-sent job failed");
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(job = %d.job_id, error = %e, "cannot read the sent record; deferring the job");
                settle_defer(c, &d, LEDGER_UNAVAILABLE_PAUSE, "ledger").await;
                return;
            }
        }
    }

    if !admit(&ctx, &d, &message, &scope, sender_rate).await {
        return;
    }

    let started = Instant::now();
    let outcome = match provider {
        Provider::Meta => match &tenant.meta {
            Some(m) => ctx.meta.send(m, &message, d.job_id.as_str()).await,
            None => unreachable!("sender_of checked the settings"),
        },
        Provider::Twilio => match &tenant.twilio {
            Some(t) => ctx.twilio.send(t, &message, d.job_id.as_str()).await,
            None => unreachable!("sender_of checked the settings"),
        },
    };
    metrics::histogram!("fleet_outbound_send_duration_seconds", "provider" => provider.as_str())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("fleet_outbound_sends_total", "provider" => provider.as_str(), "outcome" => outcome.label())
        .increment(1);

    let attempts = d.attempts + 1;
    match outcome {
        SendOutcome::Sent {
            provider_message_id,
        } => {
            let rec = record_for(
                &d,
                &message,
                OutboundState::Sent,
                attempts,
                None,
                Some(provider_message_id),
            );
            record(&record_tx, Some(d), rec).await;
        }
        SendOutcome::Retry { after, reason } | SendOutcome::RateLimited { after, reason } => {
            let how = after.map_or(RetryAfter::Backoff, RetryAfter::Exactly);
            debug!(job = %d.job_id, tenant = %message.tenant, %provider, %reason, "send failed; retrying");
            let state = match c.retry(&d, how, &reason).await {
                Ok(RetryOutcome::DeadLettered) => OutboundState::Failed,
                Ok(_) => OutboundState::Queued,
                Err(e) => {
                    warn!(job = %d.job_id, error = %e, "scheduling a retry failed; the job stays pending");
                    return;
                }
            };
            record(
                &record_tx,
                None,
                record_for(&d, &message, state, attempts, Some(reason), None),
            )
            .await;
        }
        SendOutcome::Permanent { reason } => {
            info!(job = %d.job_id, tenant = %message.tenant, %provider, %reason, "permanent send failure; dead-lettered");
            settle_dead(c, &d, "permanent", &reason).await;
            record(
                &record_tx,
                None,
                record_for(
                    &d,
                    &message,
                    OutboundState::Failed,
                    attempts,
                    Some(reason),
                    None,
                ),
            )
            .await;
        }
        SendOutcome::AuthFailed { reason } => {
            error!(tenant = %message.tenant, %provider, %reason, "the provider refused the tenant's credentials");
            metrics::counter!("fleet_outbound_auth_failures_total", "tenant" => message.tenant.clone()).increment(1);
            settle_dead(c, &d, "auth", &reason).await;
            record(
                &record_tx,
                None,
                record_for(
                    &d,
                    &message,
                    OutboundState::Failed,
                    attempts,
                    Some(reason),
                    None,
                ),
            )
            .await;
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

/// Waits for the rate limits. True: send now. False: the job was deferred (or left pending).
async fn admit(ctx: &Ctx, d: &Delivery, m: &OutboundMessage, scope: &str, sender: Rate) -> bool {
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
            Ok(Admission::Go) => return true,
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
                settle_defer(&ctx.settler, d, delay, label).await;
                return false;
            }
            Err(e) => {
                warn!(job = %d.job_id, error = %e, "the rate limiter is unavailable; deferring the job");
                settle_defer(&ctx.settler, d, LIMITER_UNAVAILABLE_PAUSE, "limiter").await;
                return false;
            }
        }
    }
    // Still not admitted after waiting for a reserved slot: let the delayed set hold it.
    settle_defer(
        &ctx.settler,
        d,
        local_max.max(Duration::from_millis(1)),
        "sender",
    )
    .await;
    false
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

async fn settle_dead(c: &Settler, d: &Delivery, reason: &str, error: &str) {
    metrics::counter!("fleet_outbound_dead_lettered_total", "reason" => reason.to_owned())
        .increment(1);
    if let Err(e) = c.dead_letter(d, reason, error).await {
        warn!(job = %d.job_id, error = %e, "dead-lettering failed; the job stays pending");
    }
}

async fn settle_defer(c: &Settler, d: &Delivery, delay: Duration, reason: &'static str) {
    metrics::counter!("fleet_outbound_deferred_total", "reason" => reason).increment(1);
    if let Err(e) = c.defer(d, delay).await {
        warn!(job = %d.job_id, error = %e, "deferring failed; the job stays pending");
    }
}

/// Hands a result to the recorder; `ack` is the delivery to acknowledge once it is written.
async fn record(tx: &mpsc::Sender<Recorded>, ack: Option<Delivery>, record: OutboundRecord) {
    if tx
        .send(Recorded {
            delivery: ack,
            record,
        })
        .await
        .is_err()
    {
        error!("the recorder stopped; a result was not recorded");
    }
}

/// Writes results in batches and acknowledges successes once their batch is committed.
async fn record_loop(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Recorded>) {
    let max = ctx.config.record_batch;
    let linger = Duration::from_millis(ctx.config.record_linger_ms);
    let mut buf: Vec<Recorded> = Vec::with_capacity(max);
    loop {
        let Some(first) = rx.recv().await else { break };
        buf.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while buf.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => buf.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&ctx, &mut buf).await;
    }
    flush(&ctx, &mut buf).await;
}

async fn flush(ctx: &Ctx, buf: &mut Vec<Recorded>) {
    if buf.is_empty() {
        return;
    }
    let rows: Vec<OutboundRecord> = buf.iter().map(|r| r.record.clone()).collect();
    let started = Instant::now();
    // The write is retried with a growing pause, bounded: while it fails nothing is acknowledged,
    // the channel fills, and the reader stops (backpressure instead of unbounded memory).
    let mut pause = Duration::from_millis(100);
    let mut written = false;
    for attempt in 1..=8 {
        match ctx.store.record_outbound_results(&rows).await {
            Ok(()) => {
                written = true;
                break;
            }
            Err(e) => {
                warn!(attempt, rows = rows.len(), error = %e, "recording send results failed");
                metrics::counter!("fleet_outbound_record_failures_total").increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    metrics::histogram!("fleet_outbound_record_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if !written {
        // Unacknowledged, the sent jobs will be redelivered by stalled recovery and sent again:
        // the one double-send window this design leaves open when Postgres stays away.
        error!(
            rows = rows.len(),
            "giving up recording send results; their jobs stay pending"
        );
        buf.clear();
        return;
    }
    let acks: Vec<&Delivery> = buf.iter().filter_map(|r| r.delivery.as_ref()).collect();
    if !acks.is_empty()
        && let Err(e) = ctx.settler.ack(&acks).await
    {
        // Recorded but not acknowledged: a redelivery finds the record and is not sent again.
        warn!(n = acks.len(), error = %e, "acknowledging sent jobs failed");
    }
    buf.clear();
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
