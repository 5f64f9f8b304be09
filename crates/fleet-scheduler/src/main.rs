//! The `fleet-scheduler` binary: loads and validates configuration, starts telemetry and the
//! admin server, connects to Redis (waiting for it), and runs one scheduler replica until
//! SIGTERM/SIGINT.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use fleet_queue::Broker;
use fleet_runtime::{
    CommonArgs, CommonConfig,
    config::admin_ports,
    service::{self, Connected, Service},
};
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

#[tokio::main]
async fn main() -> ExitCode {
    service::exit_code("fleet-scheduler", start(Args::parse()).await)
}

async fn start(args: Args) -> anyhow::Result<()> {
    let common = CommonConfig::load(&args.common)?;
    let config: SchedulerConfig = common.section("scheduler")?;
    config.validate().map_err(anyhow::Error::msg)?;

    let mut service = Service::start(
        "fleet-scheduler",
        &common,
        "scheduler",
        admin_ports::SCHEDULER,
    );
    fleet_queue::describe_metrics();
    // Ready once connected and while Redis answers.
    let connected: Connected<Broker> = Connected::new();
    service
        .serve_admin(|admin| {
            admin.with_check(
                "redis",
                connected.check("redis", |b: Broker| async move { b.ping().await }),
            )
        })
        .await?;
    let connect = async {
        // Refuses a Redis that may evict queued work, or is too old.
        let broker = Broker::connect_for_service(
            &common.redis_url,
            &common.key_prefix,
            common.allow_eviction,
        )
        .await?;
        let lock = service::patiently(
            "the leadership lock",
            || LeaderLock::connect(&common.redis_url, &common.key_prefix, config.leader.ttl),
            |e: &fleet_queue::Error| e.is_unavailable(),
        )
        .await?;
        Ok::<_, fleet_queue::Error>((broker, lock))
    };
    let Some((broker, lock)) = service.until_stopped(connect).await? else {
        service.stop_admin().await;
        return Ok(());
    };
    connected.set(broker.clone());
    let shutdown = service.shutdown().clone();
    service
        .run(DRAIN_LIMIT, async move {
            Ok(fleet_scheduler::run(config, broker, lock, shutdown).await?)
        })
        .await
}
