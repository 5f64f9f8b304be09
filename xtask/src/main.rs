//! Fleet's task runner, so that nothing beyond cargo is needed: `cargo xtask <task>`.
//!
//! - `test`: makes sure Redis and Postgres answer (starting local ones), then runs every test;
//! - `demo`: runs the whole pipeline on local defaults and sends it a burst of webhooks;
//! - `services`: only makes sure Redis and Postgres answer;
//! - `bench`: the queue-core throughput benchmark beside `redis-benchmark`;
//! - `ci`: what CI runs: formatting, lints, then `test`.

mod demo;
mod services;

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
    /// Start Redis and Postgres if needed, then run every test of the workspace.
    Test {
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

fn test(args: &[String]) -> Result<()> {
    services::ensure_services()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-targets"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(cmd)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { args } => test(&args),
        Task::Demo(args) => {
            services::ensure_services()?;
            demo::run(args)
        }
        Task::Services => services::ensure_services(),
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
            test(&[])
        }
    }
}
