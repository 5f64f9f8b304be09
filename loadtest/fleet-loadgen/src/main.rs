//! The `fleet-loadgen` binary: `run` a case against a local Fleet, or write a `tenants` file.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fleet_loadgen::{Case, RunOptions, Target, report, tenants};

/// Open-loop load generator for Fleet: signed Meta and Twilio webhooks at a target rate, HDR
/// latency from the intended send time, a verification pass, and a JSON/Markdown/PNG report.
///
/// Example:
///   fleet-loadgen tenants --count 4 --out /tmp/lt/tenants.toml
///   fleet-loadgen run --case loadtest/cases/load/case.toml --tenants /tmp/lt/tenants.toml \
///     --target http://127.0.0.1:8080 --database-url postgres://postgres@127.0.0.1/fleet \
///     --redis-url redis://127.0.0.1:6379 --prefix fleet --mock-url http://127.0.0.1:9090
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a case and write result.json, report.md and latency.png.
    Run(Box<RunArgs>),
    /// Write a tenants file with fresh random secrets for a load run or the demo.
    Tenants {
        /// Number of load tenants (`lt-0`, `lt-1`, …), each with Meta and Twilio.
        #[arg(long, default_value_t = 4)]
        count: usize,
        /// Write the demo's two tenants instead (one Meta, one Twilio).
        #[arg(long)]
        demo: bool,
        /// Where to write the file.
        #[arg(long)]
        out: PathBuf,
    },
    /// The chaos suite's load: webhooks and send-API requests, each retried until accepted; writes
    /// the ledger of what was accepted (run by `cargo xtask chaos`).
    ChaosLoad(Box<ChaosLoadArgs>),
    /// The chaos suite's invariant checker: waits for the fleet to drain, then judges the
    /// invariants against the ledger, Postgres, Redis, fleetctl, the simulator and the fault log;
    /// exits 1 when one is broken.
    ChaosCheck(Box<ChaosCheckArgs>),
}

#[derive(clap::Args, Debug)]
struct ChaosLoadArgs {
    /// Tenants file of the fleet.
    #[arg(long, env = "FLEET_TENANTS")]
    tenants: PathBuf,
    /// Ingest base URL (loopback only); repeat for each ingest, tried in turn.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The base URL ingest believes it is (its `FLEET_PUBLIC_URL`), which Twilio signs.
    #[arg(long)]
    public_url: String,
    /// Inbound messages per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Status events per inbound message.
    #[arg(long, default_value_t = 0.1)]
    status_share: f64,
    /// Send-API requests per inbound message.
    #[arg(long, default_value_t = 0.02)]
    api_share: f64,
    /// Share of webhooks that are redeliveries of an accepted one.
    #[arg(long, default_value_t = 0.01)]
    redelivery_share: f64,
    /// Share of messages carrying a reply keyword.
    #[arg(long, default_value_t = 0.02)]
    keyword_share: f64,
    /// Distinct contacts per tenant.
    #[arg(long, default_value_t = 2000)]
    contacts_per_tenant: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Seconds after the load after which a request still not accepted is given up.
    #[arg(long, default_value_t = 60)]
    give_up_secs: u64,
    /// Where to write the ledger (JSON).
    #[arg(long)]
    ledger: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ChaosCheckArgs {
    /// The ledger written by `chaos-load`.
    #[arg(long)]
    ledger: PathBuf,
    /// The fault log written by `cargo xtask chaos`.
    #[arg(long)]
    fault_log: Option<PathBuf>,
    /// Postgres of the fleet.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Redis of the fleet.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// Key prefix of the fleet.
    #[arg(long, env = "FLEET_KEY_PREFIX", default_value = "fleet")]
    prefix: String,
    /// Consumer group of the workers.
    #[arg(long, default_value = fleet_queue::GROUP_DEFAULT)]
    group: String,
    /// The simulator's base URL.
    #[arg(long)]
    mock_url: String,
    /// The fleetctl binary.
    #[arg(long, default_value = "fleetctl")]
    fleetctl: PathBuf,
    /// Longest wait for the fleet to drain, seconds.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Where to write the report as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The case file (`loadtest/cases/<case>/case.toml`); without it, a smoke run.
    #[arg(long)]
    case: Option<PathBuf>,
    /// Override the case's rate, messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Override the case's duration, seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Tenants file of the system under test (secrets to sign with).
    #[arg(long, env = "FLEET_TENANTS")]
    tenants: PathBuf,
    /// Ingest base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Postgres URL, for webhook-to-row latency and the verification (skipped without it).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Redis URL, for dead-letter counts and the backlog (skipped without it).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Key prefix of the system under test.
    #[arg(long, env = "FLEET_KEY_PREFIX", default_value = "fleet")]
    prefix: String,
    /// Provider simulator base URL, for reply counts and injected dead letters.
    #[arg(long)]
    mock_url: Option<String>,
    /// Directory under which a `<timestamp>-<case>` directory receives the outputs.
    #[arg(long, default_value = "loadtest/results")]
    out_dir: PathBuf,
    /// Seed of the traffic mix (random when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// A process to report peak memory and CPU of, as NAME=PID (repeatable).
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|_| "PID must be a number")?,
    ))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    match Cli::parse().command {
        Command::Tenants { count, demo, out } => {
            if !(1..=64).contains(&count) {
                anyhow::bail!("--count must be between 1 and 64");
            }
            let text = if demo {
                tenants::demo_tenants()
            } else {
                tenants::load_tenants(count)
            };
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok(true)
        }
        Command::ChaosLoad(a) => {
            let opts = fleet_loadgen::chaos::load::LoadOptions {
                tenants_path: a.tenants,
                targets: a.targets,
                public_url: a.public_url,
                rate: a.rate,
                duration: std::time::Duration::try_from_secs_f64(a.duration)
                    .context("--duration must be a positive number of seconds")?,
                seed: a.seed,
                status_share: a.status_share,
                api_share: a.api_share,
                redelivery_share: a.redelivery_share,
                keyword_share: a.keyword_share,
                contacts_per_tenant: a.contacts_per_tenant,
                max_in_flight: a.max_in_flight.max(1),
                give_up: std::time::Duration::from_secs(a.give_up_secs),
                progress_every: std::time::Duration::from_secs(5),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let ledger = runtime.block_on(fleet_loadgen::chaos::load::run(opts))?;
            let text = serde_json::to_vec(&ledger)?;
            std::fs::write(&a.ledger, text)
                .with_context(|| format!("cannot write {}", a.ledger.display()))?;
            eprintln!(
                "chaos-load: {} messages ({:.0}/s), {} status events, {} send-API requests accepted; {} abandoned, {} rejected; ledger {}",
                ledger.messages.len(),
                ledger.achieved_rate,
                ledger.requests.statuses_accepted,
                ledger.api.len(),
                ledger.abandoned.len(),
                ledger.rejected.len(),
                a.ledger.display()
            );
            Ok(ledger.abandoned.is_empty() && ledger.rejected.is_empty())
        }
        Command::ChaosCheck(a) => {
            let opts = fleet_loadgen::chaos::check::CheckOptions {
                ledger: a.ledger,
                fault_log: a.fault_log,
                database_url: a.database_url,
                redis_url: a.redis_url,
                prefix: a.prefix,
                group: a.group,
                mock_url: a.mock_url,
                fleetctl: a.fleetctl,
                drain: std::time::Duration::from_secs(a.drain_secs),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(fleet_loadgen::chaos::check::run(&opts))?;
            if let Some(path) = &a.report {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            print!("{}", fleet_loadgen::chaos::check::render(&report));
            Ok(report.passed)
        }
        Command::Run(args) => {
            let case = match &args.case {
                Some(path) => Case::load(path)?,
                None => Case::smoke(500.0, 5),
            }
            .with_overrides(args.rate, args.duration)?;
            let opts = RunOptions {
                case,
                target: Target {
                    ingest_url: args.target,
                    database_url: args.database_url,
                    redis_url: args.redis_url,
                    prefix: args.prefix,
                    mock_url: args.mock_url,
                },
                tenants_path: args.tenants,
                progress: !args.no_progress,
                seed: args.seed.unwrap_or_else(rand::random),
                watch: args.watch,
            };
            let name = opts.case.name.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(fleet_loadgen::run(opts))?;
            let dir = args.out_dir.join(format!(
                "{}-{name}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ));
            report::write_all(&result, &dir)?;
            print_summary(&result, &dir);
            Ok(result.passed)
        }
    }
}

fn print_summary(r: &fleet_loadgen::RunResult, dir: &std::path::Path) {
    println!(
        "case {} ({:?}): {:.0} events/s accepted (target {:.0}), {} messages + {} statuses accepted, {} requests failed",
        r.case.name,
        r.case.profile,
        r.accepted_rate,
        r.target_rate,
        r.messages_accepted,
        r.statuses_accepted,
        r.failures.values().sum::<u64>()
    );
    println!(
        "accept latency  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.accept.p50_ms, r.accept.p99_ms, r.accept.max_ms
    );
    println!(
        "webhook-to-row  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
        r.e2e.p50_ms, r.e2e.p99_ms, r.e2e.max_ms, r.e2e.count
    );
    if let (Some(e), Some(d)) = (r.replies_expected, r.replies_delivered) {
        println!(
            "replies         owed {e}, delivered {d}, duplicates {}, drained {:.1} s after the load",
            r.reply_duplicates.unwrap_or(0),
            r.reply_drain_secs.unwrap_or(f64::NAN)
        );
    }
    if r.welcome_reply.count > 0 {
        println!(
            "webhook-to-reply p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} welcome replies)",
            r.welcome_reply.p50_ms,
            r.welcome_reply.p99_ms,
            r.welcome_reply.max_ms,
            r.welcome_reply.count
        );
    }
    if let Some(s) = r.max_sustainable_rate {
        println!("max sustainable rate: {s:.0} msg/s");
    }
    for u in &r.processes {
        println!(
            "process {:<20} peak RSS {:>6.1} MiB  CPU {:>6.1} s",
            u.name, u.peak_rss_mib, u.cpu_secs
        );
    }
    if let Some(busy) = r.machine_cpu_busy {
        println!(
            "machine CPU busy {:.0} % of {} cores",
            busy * 100.0,
            r.cores
        );
    }
    for c in r.checks.iter().chain(&r.criteria) {
        println!(
            "[{}] {}: expected {}, got {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.expected,
            c.actual
        );
    }
    println!(
        "{} -> {}",
        if r.passed { "PASS" } else { "FAIL" },
        dir.display()
    );
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
        assert_eq!(parse_watch("ingest=42"), Ok(("ingest".into(), 42)));
        assert!(parse_watch("ingest").is_err());
    }
}
