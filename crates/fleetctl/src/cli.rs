//! The command line of `fleetctl`: clap derive, noun-verb, global connection flags accepted
//! before or after the subcommand, and examples in every `--help`.

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum, builder::PossibleValuesParser};
use fleet_core::Priority;
use fleet_runtime::RedactedUrl;

use crate::output::{entry_id_arg, parse_duration};

/// Most entries `dlq list` and `jobs peek` show at once.
pub const LIST_LIMIT_MAX: u16 = 1000;
/// Default cap of the dead entries `dlq list` walks (newest first) to count them by reason: small
/// enough that `dlq list` answers within 100 ms on a large dead-letter stream (docs/PERFORMANCE.md).
pub const REASON_SCAN_DEFAULT: usize = 10_000;
/// Hard cap of `--scan-limit`: the dead-letter stream's own default cap.
pub const REASON_SCAN_MAX: usize = 1_000_000;

const ROOT_HELP: &str = "\
Examples:
  fleetctl queues                              every queue at a glance
  fleetctl queues --json | jq '.queues[0]'     the same for scripts
  fleetctl queue inspect inbound               one queue in depth
  fleetctl dlq list outbound --limit 20        newest dead letters, grouped by reason
  fleetctl dlq replay outbound --reason http_5xx --dry-run
  fleetctl dash                                live dashboard (q quits)

Connection: --redis-url (REDIS_URL), --database-url (DATABASE_URL), --prefix (FLEET_KEY_PREFIX),
--config (FLEET_CONFIG); flags beat environment variables, which beat the config file.

Exit status: 0 on success; 1 when the command failed or was refused (a destructive command
without --yes changes nothing and exits 1); 2 on bad arguments.";

/// Fleet's operator CLI: queues, dead letters, pause/resume, live dashboard, migrations.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, after_help = ROOT_HELP, propagate_version = true)]
pub struct Cli {
    /// Connection and output flags, accepted anywhere on the line.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after the subcommand; `Debug` redacts passwords in the
/// URLs.
#[derive(Clone, Default, Args)]
pub struct GlobalArgs {
    /// Redis URL [env: REDIS_URL] [default: redis://127.0.0.1:6379].
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        value_name = "URL",
        hide_env = true,
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Postgres URL [env: DATABASE_URL] [default: postgres://postgres@127.0.0.1:5432/fleet].
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Prefix of every Redis key [env: FLEET_KEY_PREFIX] [default: fleet].
    #[arg(
        long,
        global = true,
        env = "FLEET_KEY_PREFIX",
        value_name = "PREFIX",
        hide_env = true
    )]
    pub prefix: Option<String>,
    /// TOML config file [env: FLEET_CONFIG].
    #[arg(
        long,
        global = true,
        env = "FLEET_CONFIG",
        value_name = "PATH",
        hide_env = true
    )]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
}

impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalArgs")
            .field("redis_url", &self.redis_url.as_deref().map(RedactedUrl))
            .field(
                "database_url",
                &self.database_url.as_deref().map(RedactedUrl),
            )
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .field("json", &self.json)
            .field("color", &self.color)
            .finish()
    }
}

/// When to use colour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// Only when stdout is a terminal and `NO_COLOR` is not set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The nouns.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every queue: waiting per priority, pending, delayed, dead, consumers, oldest pending, paused.
    #[command(after_help = "\
Examples:
  fleetctl queues
  fleetctl queues --json
  fleetctl --prefix staging queues")]
    Queues,
    /// One queue: inspect, pause, resume.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Jobs waiting in a queue.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// The Postgres database.
    #[command(subcommand)]
    Db(DbCmd),
    /// The tenants file.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Live dashboard of every queue (p pause/resume, d dead letters, q quit).
    #[command(after_help = "\
Keys: up/down or j/k select a queue, p pauses or resumes it, d opens its dead letters,
esc goes back, q quits.

Examples:
  fleetctl dash
  fleetctl dash --interval 500ms")]
    Dash(DashArgs),
    /// Prints a shell completion script.
    #[command(after_help = "\
Examples:
  fleetctl completions bash > /etc/bash_completion.d/fleetctl
  fleetctl completions zsh > \"${fpath[1]}/_fleetctl\"
  fleetctl completions fish > ~/.config/fish/completions/fleetctl.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn queue_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(fleet_core::QUEUES)
}

fn priority_arg(s: &str) -> Result<Priority, String> {
    s.parse()
        .map_err(|e: fleet_core::priority::ParsePriorityError| e.to_string())
}

/// `fleetctl queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Per-priority lengths, consumer groups with lag, consumers with pending and idle, rates.
    #[command(after_help = "\
Examples:
  fleetctl queue inspect inbound
  fleetctl queue inspect outbound --rate-window 5s
  fleetctl queue inspect outbound --rate-window 0s --json")]
    Inspect {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// How long to watch the queue to measure its rates; 0s skips the rates.
        #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
        rate_window: Duration,
    },
    /// Stops consumers from taking new work from the queue; ingest keeps accepting.
    #[command(after_help = "\
Examples:
  fleetctl queue pause outbound
  fleetctl queue resume outbound")]
    Pause {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
    },
    /// Lets consumers take work from the queue again.
    #[command(after_help = "\
Examples:
  fleetctl queue resume outbound")]
    Resume {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
    },
}

/// `fleetctl jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// The next entries of a queue (highest priority first), decoded.
    #[command(after_help = "\
Examples:
  fleetctl jobs peek inbound
  fleetctl jobs peek outbound --priority high --limit 50
  fleetctl jobs peek inbound --json | jq '.jobs[].payload'")]
    Peek {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// Only this priority (high, normal or low); all three, highest first, when absent.
        #[arg(long, value_parser = priority_arg, value_name = "PRIORITY")]
        priority: Option<Priority>,
        /// Most entries to show.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=LIST_LIMIT_MAX as i64))]
        limit: u16,
    },
}

/// `fleetctl dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// Dead entries, newest first, with a summary of how many died of what.
    #[command(after_help = "\
The summary by reason counts the newest --scan-limit dead entries (default 10,000; up to
1,000,000, about 4 ms of CPU per 1,000) and says when it stopped short.
Pages: pass the last id shown as --before to see older entries.

Examples:
  fleetctl dlq list outbound
  fleetctl dlq list outbound --limit 100 --before 1700000000000-0
  fleetctl dlq list inbound --json | jq '.reasons'")]
    List {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// Most entries to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=LIST_LIMIT_MAX as i64))]
        limit: u16,
        /// Show entries older than this id (exclusive): the last id of the previous page.
        #[arg(long, value_parser = entry_id_arg, value_name = "ID")]
        before: Option<String>,
        /// Most dead entries walked to count them by reason (0 skips the summary).
        #[arg(long, default_value_t = REASON_SCAN_DEFAULT, value_parser = scan_limit_arg, value_name = "N")]
        scan_limit: usize,
    },
    /// One dead entry, decoded in full.
    #[command(after_help = "\
Examples:
  fleetctl dlq show outbound 1700000000000-0
  fleetctl dlq show outbound 1700000000000-0 --json")]
    Show {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// The dead entry's id, as `dlq list` shows it.
        #[arg(value_parser = entry_id_arg)]
        id: String,
    },
    /// Moves dead entries back onto their queue, with attempts reset.
    #[command(
        group(ArgGroup::new("which").required(true).args(["id", "reason", "all"])),
        after_help = "\
Without --yes nothing changes (on a terminal, fleetctl asks first); --dry-run shows what would be
replayed.

Examples:
  fleetctl dlq replay outbound --id 1700000000000-0 --id 1700000000001-0 --yes
  fleetctl dlq replay outbound --reason max_attempts --dry-run
  fleetctl dlq replay inbound --all --yes"
    )]
    Replay {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// Replay this dead entry (repeatable).
        #[arg(long = "id", value_parser = entry_id_arg, value_name = "ID")]
        id: Vec<String>,
        /// Replay every dead entry that died of this reason.
        #[arg(long, value_name = "REASON")]
        reason: Option<String>,
        /// Replay every dead entry.
        #[arg(long)]
        all: bool,
        /// Count what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes dead entries, all of them or those older than a given age.
    #[command(after_help = "\
Without --yes nothing is deleted (on a terminal, fleetctl asks first).

Examples:
  fleetctl dlq purge outbound --older-than 7d --yes
  fleetctl dlq purge inbound --yes")]
    Purge {
        /// The queue.
        #[arg(value_parser = queue_parser())]
        queue: String,
        /// Keep entries that died more recently than this (e.g. 7d, 12h, 30m).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: Option<Duration>,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
}

fn scan_limit_arg(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("invalid number {s:?}"))?;
    if n > REASON_SCAN_MAX {
        return Err(format!("at most {REASON_SCAN_MAX}"));
    }
    Ok(n)
}

/// `fleetctl db ...`.
#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Creates the database if needed and applies the pending migrations.
    #[command(after_help = "\
Examples:
  fleetctl db migrate
  fleetctl db migrate --database-url postgres://postgres@db:5432/fleet")]
    Migrate,
    /// Compares the database's schema with this build's migrations; exits 1 when some are pending.
    #[command(after_help = "\
Examples:
  fleetctl db status
  fleetctl db status --json")]
    Status,
    /// Waits until every migration of this build is applied (by `db migrate` elsewhere, such as a
    /// deployment's migration Job); exits 1 at the timeout. For init containers.
    #[command(after_help = "\
Examples:
  fleetctl db wait
  fleetctl db wait --timeout 10m")]
    Wait {
        /// Longest wait, a duration with a unit (ms, s, m, h).
        #[arg(long, default_value = "5m", value_parser = parse_wait, value_name = "DURATION")]
        timeout: std::time::Duration,
    },
}

/// Parses `db wait --timeout` (`300s`, `5m`), at most a day.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d > std::time::Duration::from_secs(24 * 3600) {
        return Err("at most 24h".to_owned());
    }
    Ok(d)
}

/// `fleetctl tenants ...`.
#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    /// Validates a tenants file and says exactly what is wrong (never printing a secret).
    #[command(after_help = "\
Secrets given as `<name>_env = \"VAR\"` are read from the environment, as the services do.

Examples:
  fleetctl tenants check tenants.toml
  fleetctl tenants check /etc/fleet/tenants.toml --json")]
    Check {
        /// The tenants file.
        file: PathBuf,
    },
}

/// `fleetctl dash` options.
#[derive(Debug, Clone, Args)]
pub struct DashArgs {
    /// How often to sample the queues.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn debug_of_the_command_line_redacts_url_passwords() {
        let cli = Cli::try_parse_from([
            "fleetctl",
            "queues",
            "--redis-url",
            "redis://:r3dispw@h:6379",
            "--database-url",
            "postgres://u:pgs3cret@h/db",
        ])
        .unwrap();
        let dbg = format!("{cli:?}");
        assert!(
            !dbg.contains("r3dispw") && !dbg.contains("pgs3cret"),
            "{dbg}"
        );
        assert!(dbg.contains("redis://:***@h:6379"), "{dbg}");
    }
}
