//! Fleet's task runner, so that nothing beyond cargo is needed: `cargo xtask <task>`.
//!
//! - `test`: checks the architecture invariants (`tidy`) and the supply chain (`deny`, not when
//!   test arguments filter the run), makes sure Redis and Postgres answer (starting local ones),
//!   runs every test, then the short chaos suite (skipped with `--skip-chaos` or
//!   `FLEET_SKIP_CHAOS=1`);
//! - `demo`: runs the whole pipeline on local defaults and sends it a burst of webhooks;
//! - `services`: only makes sure Redis and Postgres answer;
//! - `bench`: the queue-core throughput benchmark beside `redis-benchmark`;
//! - `chaos`: the chaos suite: the real binaries under faults, then the invariants (docs/chaos.md);
//! - `tidy`: the architecture invariants (crate layering, SQL only in fleet-store, Redis keys and
//!   Lua only in fleet-queue, a `//!` line atop every file); `test` runs it first;
//! - `deny`: `cargo deny check` against deny.toml (licenses, bans, sources, and advisories when
//!   the advisory database can be fetched), installing the pinned cargo-deny if needed;
//! - `ci`: what CI runs: formatting, lints, then `test`.

mod chaos;
mod demo;
mod deny;
mod services;
mod tidy;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Fleet's task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Start Redis and Postgres if needed, run every test of the workspace, then the short chaos
    /// suite (not when test arguments filter the run).
    Test {
        /// Skip the chaos suite (also `FLEET_SKIP_CHAOS=1`).
        #[arg(long)]
        skip_chaos: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the whole pipeline on local defaults and send it a burst of signed webhooks.
    Demo(demo::DemoArgs),
    /// Make sure Redis and Postgres answer, starting the local ones when needed.
    Services,
    /// Queue-core throughput beside redis-benchmark (see docs/PERFORMANCE.md).
    Bench,
    /// The chaos suite: the real binaries under a seeded fault schedule, then the invariants.
    Chaos(chaos::ChaosArgs),
    /// Check the architecture invariants of ARCHITECTURE.md (also the first step of `test`).
    Tidy,
    /// `cargo deny check` against deny.toml, installing the pinned cargo-deny if needed (also
    /// a step of `test`).
    Deny,
    /// Formatting, lints and tests, as CI runs them.
    Ci,
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn test(args: &[String], skip_chaos: bool) -> Result<()> {
    tidy::run()?;
    if args.is_empty() {
        deny::run_checks()?;
    } else {
        eprintln!("xtask: cargo deny skipped (the tests were filtered)");
    }
    services::ensure_services()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-targets"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(cmd)?;
    if skip_chaos || chaos::skipped_by_env() {
        eprintln!("xtask: chaos suite skipped (--skip-chaos or FLEET_SKIP_CHAOS)");
        return Ok(());
    }
    if !args.is_empty() {
        eprintln!("xtask: chaos suite skipped (the tests were filtered)");
        return Ok(());
    }
    chaos::run(chaos::ChaosArgs::short_default())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { args, skip_chaos } => test(&args, skip_chaos),
        Task::Chaos(args) => chaos::run(args),
        Task::Demo(args) => {
            services::ensure_services()?;
            demo::run(args)
        }
        Task::Services => services::ensure_services(),
        Task::Tidy => tidy::run(),
        Task::Deny => deny::run_checks(),
        Task::Bench => {
            services::ensure_services()?;
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "fleet-queue", "--bench", "throughput"]);
            run(cmd)
        }
        Task::Ci => {
            let mut fmt = cargo();
            fmt.args(["fmt", "--all", "--check"]);
            run(fmt)?;
            let mut clippy = cargo();
            clippy.args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            run(clippy)?;
            test(&[], false)
        }
    }
}
