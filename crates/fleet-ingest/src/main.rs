//! The `fleet-ingest` binary: loads configuration and tenants, starts telemetry and the admin
//! server, connects to Redis, and serves webhooks and the send API until SIGTERM/SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_ingest::{AppState, IngestArgs, IngestConfig};
use fleet_queue::Broker;
use fleet_runtime::{
    CommonArgs, CommonConfig, TenantsHandle,
    config::admin_ports,
    service::{self, Service},
};

/// Time in-flight requests get to finish after a shutdown signal.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// Webhook endpoint (Meta WhatsApp Cloud API, Twilio) and send API; pushes onto Redis stream queues.
#[derive(Debug, Parser)]
#[command(name = "fleet-ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    ingest: IngestArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    service::exit_code("fleet-ingest", start(Args::parse()).await)
}

async fn start(args: Args) -> anyhow::Result<()> {
    let common = CommonConfig::load(&args.common)?;
    let config = IngestConfig::load(&common, &args.ingest)?;

    let mut service = Service::start("fleet-ingest", &common, "ingest", admin_ports::INGEST);
    // Loaded once tracing is up, so a warning about the file (its permissions) is logged.
    let tenants = TenantsHandle::load(&common.tenants_path)?;
    config
        .check_tenants(&tenants.current())
        .map_err(anyhow::Error::msg)?;
    fleet_queue::describe_metrics();
    // A Redis that is down at start is waited for in the background (answering 503 meanwhile);
    // a URL or prefix that can never work is a configuration error.
    let ingest_addr = config.ingest_addr;
    let state = AppState::new(config, tenants);
    match Broker::connect(&common.redis_url, &common.key_prefix).await {
        // An unfit server (an eviction policy, too old) stops ingest here, before it serves; one
        // gone again before it could be checked is left to the background connection.
        Ok(broker) => match broker.check_server(common.allow_eviction).await {
            Ok(_) => state.set_broker(broker),
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "redis not reachable yet; answering 503 until it is")
            }
            Err(e) => return Err(e.into()),
        },
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "redis not reachable yet; answering 503 until it is")
        }
        Err(e) => return Err(e.into()),
    }
    let listener = tokio::net::TcpListener::bind(ingest_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {ingest_addr}: {e}"))?;
    let ready_state = state.clone();
    service
        .serve_admin(|admin| {
            admin.with_check("redis", move || {
                let s = ready_state.clone();
                async move { s.ready().await }
            })
        })
        .await?;
    let work = fleet_ingest::run_with_state(state, listener, service.shutdown().clone());
    service
        .run(DRAIN_LIMIT, async move { Ok(work.await?) })
        .await
}
