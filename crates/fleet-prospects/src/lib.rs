#![doc = include_str!("../README.md")]

pub mod config;
pub mod metrics;
pub mod replies;
pub mod worker;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use apalis::prelude::{Data, Event, Monitor, WorkerBuilder, WorkerBuilderExt};
use fleet_queue::{
    Broker, Delivery,
    apalis_backend::{BatchOutcome, JobError, StreamsBackend},
    unique_consumer_name,
};
use fleet_runtime::{Shutdown, TenantsHandle};
use fleet_store::Store;

pub use crate::{
    config::{Config, Section},
    worker::{BatchHandler, BatchReport, BatchWorker, Handled, consumer_options},
};

/// How long the monitor waits, once shutdown began, for the batches in hand to be finished and
/// settled. Below the binary's own drain limit (30 s), so the monitor gives up first and says so.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// How many times, in all, a worker that ended with an error (its consumer could not be created,
/// or a read failed with something else than an unavailable Redis) is restarted before `run`
/// fails, so a persistent fault ends the process rather than spinning.
pub const RESTARTS_MAX: usize = 20;

/// Runs `config.consumers` apalis batch workers on `inbound` under one `Monitor` until
/// `shutdown`, then returns once each has finished (written, replied and acknowledged) the batch
/// it held.
///
/// Each worker has its own consumer name (a fresh one on every restart), so any number of
/// processes can run side by side.
pub async fn run(
    config: Config,
    broker: Broker,
    store: Store,
    tenants: TenantsHandle,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    // The backend creates its consumers on the first poll and a failure there ends the worker,
    // which the monitor restarts at once: wait here, with backoff, until Redis answers.
    if !wait_for_redis(&broker, &config, &shutdown).await {
        return Ok(());
    }
    let handler = BatchHandler::new(&broker, store, tenants, config.clone(), shutdown.clone());
    let inbound = broker.queue(fleet_core::INBOUND_QUEUE);
    let (stopping, gave_up) = (shutdown.clone(), Arc::new(AtomicBool::new(false)));
    let failed = gave_up.clone();
    let mut monitor = Monitor::new()
        .should_restart(move |worker, error| {
            let restart = !stopping.is_cancelled() && worker.restarts() < RESTARTS_MAX;
            ::metrics::counter!("fleet_prospects_failures_total", "reason" => "redis").increment(1);
            tracing::warn!(worker = worker.name(), %error, restart, "a prospects worker ended");
            if !restart && !stopping.is_cancelled() {
                // Out of restarts: stop the whole process (its other workers finish their
                // batches) rather than run half-staffed, or with no worker, unnoticed. The
                // monitor's result does not say (with a shutdown timeout it drops the workers'
                // errors), hence the flag.
                failed.store(true, Ordering::SeqCst);
                stopping.cancel();
            }
            restart
        })
        .on_event(|worker, event| {
            // The backend's settlement failed (Redis away: the entries stay pending and the
            // scheduler reclaims them) or the handler panicked (retried through the delayed set).
            if let Event::Error(error) = event {
                ::metrics::counter!("fleet_prospects_failures_total", "reason" => "settle")
                    .increment(1);
                tracing::warn!(worker = worker.name(), %error, "a batch could not be settled as handled");
            }
        })
        .shutdown_timeout(SHUTDOWN_TIMEOUT);
    for i in 0..config.consumers {
        let (inbound, handler, config) = (inbound.clone(), handler.clone(), config.clone());
        monitor = monitor.register(move |_restarts| {
            let name = format!("{}-{i}", unique_consumer_name(&config.consumer_role));
            WorkerBuilder::new(format!("prospects-{i}"))
                .backend(StreamsBackend::batch(
                    inbound.clone(),
                    consumer_options(&config, name),
                ))
                .data(handler.clone())
                // One batch at a time per consumer, as its reads are sized for one transaction.
                .concurrency(1)
                .catch_panic()
                .enable_tracing()
                .build(handle_batch)
        });
    }
    tracing::info!(
        consumers = config.consumers,
        batch_size = config.batch_size,
        "fleet-prospects consuming inbound"
    );
    let signal = async move {
        shutdown.cancelled().await;
        Ok(())
    };
    monitor
        .run_with_signal(signal)
        .await
        .map_err(|e| anyhow::anyhow!("prospects workers failed: {e}"))?;
    if gave_up.load(Ordering::SeqCst) {
        anyhow::bail!("a prospects worker failed {RESTARTS_MAX} restarts; stopped the process");
    }
    Ok(())
}

/// The apalis handler: one read batch per task. Never an `Err`: a transient failure is retried in
/// the handler, poison entries are failed one by one in the outcome, and the backend acknowledges
/// the rest once this returns.
async fn handle_batch(
    batch: Vec<Delivery>,
    handler: Data<BatchHandler>,
) -> Result<BatchOutcome, JobError> {
    let handled = handler.handle(&batch).await;
    handler.store().record_pool_metrics();
    if handled.report.dead_lettered > 0 || handled.report.interrupted {
        tracing::info!(report = ?handled.report, "batch handled");
    }
    Ok(handled.settlement(&batch))
}

/// Pings Redis until it answers, with backoff; false when shutdown came first.
async fn wait_for_redis(broker: &Broker, config: &Config, shutdown: &Shutdown) -> bool {
    let mut failures = 0u32;
    loop {
        match broker.ping().await {
            Ok(_) => return true,
            Err(e) => {
                ::metrics::counter!("fleet_prospects_failures_total", "reason" => "redis")
                    .increment(1);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "Redis unavailable; waiting to start the workers");
                let delay = config.retry_backoff.delay(failures, &mut rand::rng());
                tokio::select! {
                    () = tokio::time::sleep(delay.max(Duration::from_millis(1))) => {}
                    () = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
