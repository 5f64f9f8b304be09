//! The `fleet-outbound` binary: parse flags, load config and tenants, start telemetry and the
//! admin server, connect, then run the send worker until SIGTERM or SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_outbound::OutboundConfig;
use fleet_runtime::{AdminState, CommonArgs, CommonConfig, Shutdown, config::admin_ports};

/// Extra time past the worker's own drain timeout before the process stops waiting.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// Sends outbound replies from the `outbound` queue through Meta and Twilio, with shared rate
/// limits, backoff and dead letters. Settings beyond these flags: the `[outbound]` section of the
/// config file (see the crate README).
#[derive(Debug, Parser)]
#[command(name = "fleet-outbound", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Apply the Postgres migrations (creating the database if needed) before starting.
    #[arg(long)]
    migrate: bool,
    /// Sends in flight at once [default: 256, or `outbound.concurrency`].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Minimum ms between two messages of one sender to one recipient; 0 disables [default: 6000].
    #[arg(long)]
    recipient_interval_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match start(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-outbound: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let common = CommonConfig::load(&cli.common)?;
    let mut config: OutboundConfig = common.section("outbound")?;
    config.meta_api_base = common.meta_api_base.clone();
    config.twilio_api_base = common.twilio_api_base.clone();
    if let Some(n) = cli.concurrency {
        config.concurrency = n;
    }
    if let Some(ms) = cli.recipient_interval_ms {
        config.recipient_interval_ms = ms;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let tenants = common.load_tenants()?;
    let pool = fleet_store::PoolOptions {
        application_name: "fleet-outbound".into(),
        ..Default::default()
    };
    let store = fleet_store::Store::connect(&common.database_url, &pool)?;
    let http = fleet_providers::build_client(&config.http)?;

    fleet_runtime::init_tracing(common.log_format);
    let metrics = fleet_runtime::install_metrics();
    fleet_queue::describe_metrics();
    fleet_outbound::describe_metrics();
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();

    let admin_addr = common.admin_addr_for("outbound", admin_ports::OUTBOUND);
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the admin address {admin_addr}: {e}"))?;
    let broker = tokio::select! {
        b = fleet_queue::Broker::connect_patiently(&common.redis_url, &common.key_prefix) => b?,
        () = shutdown.cancelled() => return Ok(()),
    };
    if cli.migrate {
        store.migrate().await?;
        tracing::info!("migrations applied");
    }

    let (check_broker, check_store) = (broker.clone(), store.clone());
    let admin = AdminState::new(metrics)
        .with_check("redis", move || {
            let b = check_broker.clone();
            async move { b.ping().await.map_err(|e| e.to_string()) }
        })
        .with_check("postgres", move || {
            let s = check_store.clone();
            async move { s.ping().await.map_err(|e| e.to_string()) }
        })
        .with_shutdown(shutdown.clone());
    let drained = Shutdown::new();
    let admin_task = tokio::spawn(fleet_runtime::serve_admin(
        listener,
        admin,
        drained.cancelled(),
    ));

    let limit = Duration::from_millis(config.drain_timeout_ms) + EXIT_MARGIN;
    let mut work = tokio::spawn(fleet_outbound::run(
        config,
        broker,
        store.clone(),
        tenants,
        http,
        shutdown.clone(),
    ));
    let early = tokio::select! {
        r = &mut work => Some(r),
        () = shutdown.cancelled() => None,
    };
    let result = match early {
        Some(r) => Ok(r),
        None => {
            tracing::info!("stopping: finishing the sends in flight");
            fleet_runtime::drain_with_timeout(work, limit).await
        }
    };
    store.close().await;
    drained.cancel();
    let _ = admin_task.await;
    match result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(join)) => Err(anyhow::anyhow!("worker task failed: {join}")),
        // Timed out: unacknowledged entries are redelivered; exit anyway.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
