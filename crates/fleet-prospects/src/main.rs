//! The `fleet-prospects` binary: parse flags, load config and tenants, start telemetry and the
//! admin server, connect, optionally migrate, then run the worker until SIGTERM or SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_prospects::Section;
use fleet_queue::Broker;
use fleet_runtime::{
    CommonArgs, CommonConfig, TenantsHandle,
    config::admin_ports,
    service::{self, Connected, Service},
};
use fleet_store::{Error as StoreError, Store};

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
    service::exit_code("fleet-prospects", start(Cli::parse()).await)
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
    let store = Store::connect(&common.database_url, &section.pool())?;

    let mut service = Service::start(
        "fleet-prospects",
        &common,
        "prospects",
        admin_ports::PROSPECTS,
    );
    // Loaded once tracing is up, so a warning about the file (its permissions) is logged.
    let tenants = TenantsHandle::load(&common.tenants_path)?;
    fleet_queue::describe_metrics();
    fleet_prospects::metrics::describe();
    let connected: Connected<Broker> = Connected::new();
    // Ready for Postgres once the schema is migrated (when asked to) and while it answers.
    let database: Connected<Store> = Connected::new();
    service
        .serve_admin(|admin| {
            admin
                .with_check(
                    "redis",
                    connected.check("redis", |b: Broker| async move { b.ping().await }),
                )
                .with_check(
                    "postgres",
                    database.check("postgres", |s: Store| async move { s.ping().await }),
                )
                // Not ready against a schema older than this build (a migration not run yet).
                .with_check(
                    "schema",
                    database.check("postgres", |s: Store| async move { s.check_schema().await }),
                )
        })
        .await?;
    // Refuses a Redis that may evict queued work, or is too old (fleet_queue::Broker::check_server).
    let connect =
        Broker::connect_for_service(&common.redis_url, &common.key_prefix, common.allow_eviction);
    let Some(broker) = service.until_stopped(connect).await? else {
        service.stop_admin().await;
        return Ok(());
    };
    connected.set(broker.clone());
    // Postgres may come up after us: the migrations wait for it rather than exit.
    if cli.migrate {
        let migrate = || store.migrate();
        let Some(()) = service
            .set_up("migrations", migrate, StoreError::is_transient)
            .await?
        else {
            service.stop_admin().await;
            return Ok(());
        };
        tracing::info!("migrations applied");
    }
    database.set(store.clone());
    // No work against a schema older than this build: wait (readiness says why) until the
    // migrations are applied, by `--migrate`, `fleetctl db migrate` or a deployment's Job.
    let schema = || store.check_schema();
    let Some(()) = service
        .set_up("the schema", schema, StoreError::is_transient)
        .await?
    else {
        service.stop_admin().await;
        return Ok(());
    };

    // Reply rules change without a restart: SIGHUP reloads the tenants file.
    if let Err(e) = tenants.reload_on_sighup(service.shutdown().clone()) {
        tracing::warn!(error = %e, "cannot listen for SIGHUP; tenants reload disabled");
    }
    let work = fleet_prospects::run(
        config,
        broker,
        store.clone(),
        tenants,
        service.shutdown().clone(),
    );
    let result = service.run(DRAIN_LIMIT, work).await;
    store.close().await;
    result
}
