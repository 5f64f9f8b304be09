//! The `fleet-ingest` binary: loads configuration and tenants, starts telemetry and the admin
//! server, connects to Redis, and serves webhooks and the send API until SIGTERM/SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_ingest::{AppState, IngestConfig};
use fleet_queue::Broker;
use fleet_runtime::{AdminState, CommonArgs, CommonConfig, Shutdown, config::admin_ports};

/// Time in-flight requests get to finish after a shutdown signal.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// Webhook endpoint (Meta WhatsApp Cloud API, Twilio) and send API; pushes onto Redis stream queues.
#[derive(Debug, Parser)]
#[command(name = "fleet-ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let common = match CommonConfig::load(&args.common) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    fleet_runtime::init_tracing(common.log_format);
    let config = match IngestConfig::from_common(&common) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let tenants = match common.load_tenants() {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    runtime.block_on(serve(common, config, tenants))
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("fleet-ingest: {e}");
    ExitCode::FAILURE
}

async fn serve(
    common: CommonConfig,
    config: IngestConfig,
    tenants: fleet_runtime::TenantsHandle,
) -> ExitCode {
    let metrics = fleet_runtime::install_metrics();
    fleet_queue::describe_metrics();
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();

    // A Redis that is down at start is waited for in the background (answering 503 meanwhile);
    // a URL or prefix that can never work is a configuration error.
    let state = AppState::new(config, tenants);
    match Broker::connect(&common.redis_url, &common.key_prefix).await {
        Ok(broker) => state.set_broker(broker),
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "redis not reachable yet; answering 503 until it is")
        }
        Err(e) => return fail(&e),
    }

    let listener = match tokio::net::TcpListener::bind(common.ingest_addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", common.ingest_addr)),
    };
    let admin_addr = common.admin_addr_for("ingest", admin_ports::INGEST);
    let admin_listener = match tokio::net::TcpListener::bind(admin_addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on admin address {admin_addr}: {e}")),
    };
    let ready_state = state.clone();
    let admin = AdminState::new(metrics)
        .with_check("redis", move || {
            let s = ready_state.clone();
            async move { s.ready().await }
        })
        .with_shutdown(shutdown.clone());
    // The admin server outlives the drain so /metrics stays scrapable and /readyz says 503.
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(fleet_runtime::serve_admin(
        admin_listener,
        admin,
        admin_stop.cancelled(),
    ));

    let mut server = tokio::spawn(fleet_ingest::run_with_state(
        state,
        listener,
        shutdown.clone(),
    ));
    let result = tokio::select! {
        joined = &mut server => Some(joined),
        () = shutdown.cancelled() => fleet_runtime::drain_with_timeout(&mut server, DRAIN_LIMIT).await.ok(),
    };
    if result.is_none() {
        server.abort();
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    match result {
        Some(Ok(Ok(()))) | None => ExitCode::SUCCESS,
        Some(Ok(Err(e))) => fail(&e),
        Some(Err(e)) => fail(&e),
    }
}
