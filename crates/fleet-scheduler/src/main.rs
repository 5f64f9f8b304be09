//! The `fleet-scheduler` binary: loads and validates configuration, starts telemetry and the
//! admin server, connects to Redis (waiting for it), and runs one scheduler replica until
//! SIGTERM/SIGINT.

use std::{
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::Duration,
};

use clap::Parser;
use fleet_queue::Broker;
use fleet_runtime::{AdminState, CommonArgs, CommonConfig, Shutdown, config::admin_ports};
use fleet_scheduler::{LeaderLock, SchedulerConfig};

/// Time the replica gets to stop its tasks and release the lock after a shutdown signal.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Queue maintenance: delayed-job promotion, stalled-job recovery, retention, dead-consumer
/// cleanup and queue-health gauges; one leader at a time among any number of replicas.
/// Task settings live in the `[scheduler]` section of the config file.
#[derive(Debug, Parser)]
#[command(name = "fleet-scheduler", version)]
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
    let config = match common
        .section::<SchedulerConfig>("scheduler")
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    fleet_runtime::init_tracing(common.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    runtime.block_on(serve(common, config))
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("fleet-scheduler: {e}");
    ExitCode::FAILURE
}

async fn serve(common: CommonConfig, config: SchedulerConfig) -> ExitCode {
    let metrics = fleet_runtime::install_metrics();
    fleet_queue::describe_metrics();
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();

    let admin_addr = common.admin_addr_for("scheduler", admin_ports::SCHEDULER);
    let admin_listener = match tokio::net::TcpListener::bind(admin_addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on admin address {admin_addr}: {e}")),
    };
    // Ready once connected and while Redis answers; the broker arrives after the admin server
    // is up, so /healthz and /metrics answer while Redis is still awaited.
    let connected: Arc<OnceLock<Broker>> = Arc::new(OnceLock::new());
    let ready = connected.clone();
    let admin = AdminState::new(metrics)
        .with_check("redis", move || {
            let broker = ready.get().cloned();
            async move {
                match broker {
                    Some(b) => b.ping().await.map_err(|e| e.to_string()),
                    None => Err("not connected to redis yet".to_owned()),
                }
            }
        })
        .with_shutdown(shutdown.clone());
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(fleet_runtime::serve_admin(
        admin_listener,
        admin,
        admin_stop.cancelled(),
    ));

    let connect = async {
        let broker = Broker::connect_patiently(&common.redis_url, &common.key_prefix).await?;
        let mut delay = Duration::from_millis(100);
        let lock = loop {
            match LeaderLock::connect(&common.redis_url, &common.key_prefix, config.leader.ttl)
                .await
            {
                Ok(lock) => break lock,
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "redis not reachable yet for the leadership lock");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        Ok((broker, lock))
    };
    let (broker, lock) = tokio::select! {
        r = connect => match r {
            Ok(pair) => pair,
            Err(e) => {
                admin_stop.cancel();
                let _ = admin_task.await;
                return fail(&e);
            }
        },
        () = shutdown.cancelled() => {
            admin_stop.cancel();
            let _ = admin_task.await;
            return ExitCode::SUCCESS;
        }
    };
    let _ = connected.set(broker.clone());

    let mut work = tokio::spawn(fleet_scheduler::run(config, broker, lock, shutdown.clone()));
    let result = tokio::select! {
        joined = &mut work => Some(joined),
        () = shutdown.cancelled() => fleet_runtime::drain_with_timeout(&mut work, DRAIN_LIMIT).await.ok(),
    };
    if result.is_none() {
        work.abort();
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    match result {
        Some(Ok(Ok(()))) | None => ExitCode::SUCCESS,
        Some(Ok(Err(e))) => fail(&e),
        Some(Err(e)) => fail(&e),
    }
}
