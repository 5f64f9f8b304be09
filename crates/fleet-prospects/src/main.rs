//! The `fleet-prospects` binary: parse flags, load config and tenants, start telemetry and the
//! admin server, connect, optionally migrate, then run the worker until SIGTERM or SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_prospects::Section;
use fleet_runtime::{AdminState, CommonArgs, CommonConfig, Shutdown, config::admin_ports};

/// How long a stop may take: the batch in hand is finished and acknowledged, or left for redelivery.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Consumes the `inbound` queue in batches and writes prospects and the message log to Postgres.
#[derive(Debug, Parser)]
#[command(name = "fleet-prospects", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Apply the Postgres migrations (creating the database if needed) before starting.
    #[arg(long)]
    migrate: bool,
    /// Most entries per batch [default: 500, or `prospects.batch_size`].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Wait for more entries once a batch has its first, in ms [default: 10].
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Workers (consumers) in this process [default: 4].
    #[arg(long)]
    consumers: Option<usize>,
    /// Pooled Postgres connections [default: 8].
    #[arg(long)]
    db_max_connections: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match start(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-prospects: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let common = CommonConfig::load(&cli.common)?;
    let mut section: Section = common.section("prospects")?;
    section.batch_size = cli.batch_size.or(section.batch_size);
    section.linger_ms = cli.linger_ms.or(section.linger_ms);
    section.consumers = cli.consumers.or(section.consumers);
    section.db_max_connections = cli.db_max_connections.or(section.db_max_connections);
    let config = section.config();
    config.validate().map_err(anyhow::Error::msg)?;
    let tenants = common.load_tenants()?;
    let store = fleet_store::Store::connect(&common.database_url, &section.pool())?;

    fleet_runtime::init_tracing(common.log_format);
    let metrics = fleet_runtime::install_metrics();
    fleet_queue::describe_metrics();
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();

    let admin_addr = common.admin_addr_for("prospects", admin_ports::PROSPECTS);
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

    // Reply rules change without a restart: SIGHUP reloads the tenants file.
    if let Err(e) = tenants.reload_on_sighup(shutdown.clone()) {
        tracing::warn!(error = %e, "cannot listen for SIGHUP; tenants reload disabled");
    }
    let work = tokio::spawn(fleet_prospects::run(
        config,
        broker,
        store.clone(),
        tenants,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!("stopping: finishing the batches in hand");
    let result = fleet_runtime::drain_with_timeout(work, DRAIN_LIMIT).await;
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
