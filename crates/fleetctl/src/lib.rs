//! fleetctl: Fleet's operator CLI, as a library so tests can drive its pure renderers and the
//! dashboard without a terminal; `main.rs` only parses the command line and calls [`run`].
//!
//! Every command goes through the `fleet-queue`, `fleet-store` and `fleet-runtime` APIs the
//! services use; no key name is built here.
#![doc = include_str!("../README.md")]

pub mod cli;
pub mod dash;
pub mod db;
pub mod dlq;
pub mod jobs;
pub mod output;
pub mod queues;
pub mod rates;
pub mod tenants;

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fleet_queue::Broker;
use fleet_runtime::{CommonArgs, CommonConfig, redacted_url};

pub use cli::Cli;
use cli::{ColorWhen, Command, DbCmd, DlqCmd, JobsCmd, QueueCmd, TenantsCmd};

/// How long fleetctl waits for Redis to connect, and for each command, before giving up: short,
/// because an operator at a terminal wants an answer, not a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What every command needs: resolved settings and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Redis URL, Postgres URL and key prefix, resolved through flags, env, file and defaults.
    pub config: CommonConfig,
    /// Print one JSON document instead of tables.
    pub json: bool,
    /// Colour human output.
    pub color: bool,
}

impl Ctx {
    /// Resolves the global flags through the shared layered configuration.
    pub fn from_cli(cli: &Cli) -> Result<Ctx> {
        let g = &cli.global;
        let args = CommonArgs {
            redis_url: g.redis_url.clone(),
            database_url: g.database_url.clone(),
            key_prefix: g.prefix.clone(),
            config: g.config.clone(),
            ..CommonArgs::default()
        };
        let config = CommonConfig::load(&args)?;
        let color = match g.color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Ok(Ctx {
            config,
            json: g.json,
            color,
        })
    }

    /// Connects to Redis with a short timeout; the error names the (redacted) URL.
    pub async fn broker(&self) -> Result<Broker> {
        Broker::connect_with_timeout(
            &self.config.redis_url,
            &self.config.key_prefix,
            CONNECT_TIMEOUT,
        )
        .await
        .with_context(|| {
            format!(
                "cannot connect to Redis at {}",
                redacted_url(&self.config.redis_url)
            )
        })
    }

    /// Prints a JSON document on stdout.
    pub fn print_json<T: serde::Serialize + ?Sized>(&self, doc: &T) -> Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, doc)?;
        writeln!(out)?;
        Ok(())
    }

    /// Prints human text on stdout.
    pub fn print(&self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        Ok(())
    }
}

/// A destructive command was not confirmed: nothing changed.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Asks for confirmation of a destructive action: yes when `--yes` was given; otherwise asks on
/// the terminal when both stdin and stderr are one, and refuses (changing nothing) when not.
pub fn confirm(yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    let refuse = || {
        Err(Refused(format!(
            "refusing to {what} without --yes; nothing was changed"
        ))
        .into())
    };
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return refuse();
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        refuse()
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = &cli.command {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "fleetctl", &mut std::io::stdout());
        return Ok(());
    }
    let ctx = Ctx::from_cli(&cli)?;
    match cli.command {
        Command::Queues => queues::queues(&ctx).await,
        Command::Queue(QueueCmd::Inspect { queue, rate_window }) => {
            queues::inspect(&ctx, &queue, rate_window).await
        }
        Command::Queue(QueueCmd::Pause { queue }) => queues::set_paused(&ctx, &queue, true).await,
        Command::Queue(QueueCmd::Resume { queue }) => queues::set_paused(&ctx, &queue, false).await,
        Command::Jobs(JobsCmd::Peek {
            queue,
            priority,
            limit,
        }) => jobs::peek(&ctx, &queue, priority, usize::from(limit)).await,
        Command::Dlq(DlqCmd::List {
            queue,
            limit,
            before,
            scan_limit,
        }) => {
            dlq::list(
                &ctx,
                &queue,
                usize::from(limit),
                before.as_deref(),
                scan_limit,
            )
            .await
        }
        Command::Dlq(DlqCmd::Show { queue, id }) => dlq::show(&ctx, &queue, &id).await,
        Command::Dlq(DlqCmd::Replay {
            queue,
            id,
            reason,
            all,
            dry_run,
            yes,
        }) => {
            let selector = match (id.is_empty(), reason, all) {
                (false, None, false) => dlq::Selector::Ids(id),
                (true, Some(r), false) => dlq::Selector::Reason(r),
                (true, None, true) => dlq::Selector::All,
                _ => bail!("give exactly one of --id, --reason or --all"),
            };
            dlq::replay(&ctx, &queue, selector, dry_run, yes).await
        }
        Command::Dlq(DlqCmd::Purge {
            queue,
            older_than,
            yes,
        }) => dlq::purge(&ctx, &queue, older_than, yes).await,
        Command::Db(DbCmd::Migrate) => db::migrate(&ctx).await,
        Command::Db(DbCmd::Status) => db::status(&ctx).await,
        Command::Db(DbCmd::Wait { timeout }) => db::wait(&ctx, timeout).await,
        Command::Tenants(TenantsCmd::Check { file }) => tenants::check(&ctx, &file),
        Command::Dash(args) => dash::run(&ctx, args.interval).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// An error as one line for stderr: the context chain joined by `: `, newlines flattened.
pub fn error_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '\r'], " ")
}
