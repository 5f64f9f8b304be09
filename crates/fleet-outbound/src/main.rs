//! The `fleet-outbound` binary: parse flags, load config and tenants, start telemetry and the
//! admin server, connect, then run the send worker until SIGTERM or SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_outbound::{OutboundArgs, OutboundConfig};
use fleet_queue::Broker;
use fleet_runtime::{
    CommonArgs, CommonConfig, TenantsHandle,
    config::admin_ports,
    service::{self, Connected, Service},
};
use fleet_store::{Error as StoreError, Store};

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
    #[command(flatten)]
    outbound: OutboundArgs,
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
    service::exit_code("fleet-outbound", start(Cli::parse()).await)
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let common = CommonConfig::load(&cli.common)?;
    let mut config = OutboundConfig::load(&common, &cli.outbound)?;
    if let Some(n) = cli.concurrency {
        config.concurrency = n;
    }
    if let Some(ms) = cli.recipient_interval_ms {
        config.recipient_interval_ms = ms;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let pool = fleet_store::PoolOptions {
        application_name: "fleet-outbound".into(),
        ..Default::default()
    };
    let store = Store::connect(&common.database_url, &pool)?;
    let http = fleet_providers::build_client(&config.http)?;

    let mut service = Service::start("fleet-outbound", &common, "outbound", admin_ports::OUTBOUND);
    // Loaded once tracing is up, so a warning about the file (its permissions) is logged.
    let tenants = TenantsHandle::load(&common.tenants_path)?;
    fleet_queue::describe_metrics();
    fleet_outbound::describe_metrics();
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

    // The worker drains within its own timeout; the process waits a little longer for it.
    let limit = Duration::from_millis(config.drain_timeout_ms) + EXIT_MARGIN;
    let work = fleet_outbound::run(
        config,
        broker,
        store.clone(),
        tenants,
        http,
        service.shutdown().clone(),
    );
    let result = service.run(limit, work).await;
    store.close().await;
    result
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
