#![doc = include_str!("../README.md")]

pub mod config;
pub mod replies;
pub mod worker;

use std::time::Duration;

use fleet_queue::{Broker, unique_consumer_name};
use fleet_runtime::{Shutdown, TenantsHandle};
use fleet_store::Store;
use tokio::task::JoinSet;

pub use crate::{
    config::{Config, Section},
    worker::{BatchReport, BatchWorker},
};

/// Runs `config.consumers` consumer loops on `inbound` until `shutdown`, then returns once each
/// has finished (written, replied and acknowledged) the batch it held.
///
/// Each loop has its own consumer name, so any number of processes can run side by side.
pub async fn run(
    config: Config,
    broker: Broker,
    store: Store,
    tenants: TenantsHandle,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let mut loops = JoinSet::new();
    for i in 0..config.consumers {
        let name = format!("{}-{i}", unique_consumer_name(&config.consumer_role));
        loops.spawn(consume(
            broker.clone(),
            store.clone(),
            tenants.clone(),
            config.clone(),
            name,
            shutdown.clone(),
        ));
    }
    tracing::info!(
        consumers = config.consumers,
        batch_size = config.batch_size,
        "fleet-prospects consuming inbound"
    );
    while let Some(joined) = loops.join_next().await {
        if let Err(e) = joined {
            // A panic in one loop: stop the others cleanly rather than run half-staffed unnoticed.
            shutdown.cancel();
            return Err(anyhow::anyhow!("a consumer loop panicked: {e}"));
        }
    }
    Ok(())
}

/// One consumer loop: register (retrying while Redis is down), then handle batches until shutdown.
async fn consume(
    broker: Broker,
    store: Store,
    tenants: TenantsHandle,
    config: Config,
    name: String,
    shutdown: Shutdown,
) {
    let backoff = config.retry_backoff;
    let mut failures = 0u32;
    let mut worker = loop {
        if shutdown.is_cancelled() {
            return;
        }
        match BatchWorker::new(
            &broker,
            store.clone(),
            tenants.clone(),
            config.clone(),
            name.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(w) => break w,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, consumer = %name, "cannot register the consumer; retrying");
                let delay = backoff.delay(failures, &mut rand::rng());
                if !wait(&shutdown, delay).await {
                    return;
                }
            }
        }
    };
    failures = 0;
    // Checked between batches only: a batch being handled is finished (or left pending when its
    // retries are cut short), and an idle read returns within the block time.
    while !shutdown.is_cancelled() {
        match worker.run_once().await {
            Ok(report) => {
                failures = 0;
                store.record_pool_metrics();
                if report.dead_lettered > 0 || report.interrupted {
                    tracing::info!(?report, "batch handled");
                }
            }
            Err(e) => {
                metrics::counter!("fleet_prospects_failures_total", "reason" => "redis")
                    .increment(1);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, consumer = %name, failures, "reading inbound failed; retrying");
                let delay = backoff.delay(failures, &mut rand::rng());
                if !wait(&shutdown, delay).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `delay` (at least 1 ms), or less when shutdown comes first; false on shutdown.
async fn wait(shutdown: &Shutdown, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay.max(Duration::from_millis(1))) => true,
        () = shutdown.cancelled() => false,
    }
}
