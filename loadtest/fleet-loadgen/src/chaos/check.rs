//! The chaos invariant checker: waits (bounded) until the fleet has drained, then judges each
//! invariant of issue 13 against the ledger of what the load had accepted, Postgres, the true state
//! of the Redis streams (computed here from `XINFO`, `XPENDING` and bounded `XRANGE` pages, not
//! from Fleet's own inspector), `fleetctl queues --json`, the simulator's send log and the fault
//! log; prints a report and says whether every invariant held.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fleet_store::{PoolOptions, Store, audit::OutboundAudit as OutboundRow};
use fred::{cmd, prelude::*, types::Value};
use serde::{Deserialize, Serialize};

use super::{FaultLog, Ledger, status_rank};

/// Queue names (CONTRACT.md).
pub const QUEUES: [&str; 2] = ["inbound", "outbound"];
/// Priorities, highest first, as the stream keys name them.
pub const PRIORITIES: [&str; 3] = ["high", "normal", "low"];
/// How long before the simulator's acceptance an outbound SIGKILL may be stamped and still have
/// caught the send in flight: the fault log stamps a kill when the suite issues it, and the
/// simulator, still deciding a request it had read, learns of the hang-up a moment later (200 ms
/// seen on a loaded machine). A kill this close before a first acceptance is inside that send's
/// provider-to-record window.
const IN_FLIGHT_MS: u64 = 1_000;
/// Entries per `XRANGE` page when counting waiting entries.
const XRANGE_PAGE: usize = 1_000;
/// Most pages counted per stream (ten million entries): the count is a lower bound beyond it.
const MAX_XRANGE_PAGES: usize = 10_000;
/// Records per page of the simulator's send log.
const SENDS_PAGE: usize = 10_000;
/// Dead letters read at most, per queue.
const MAX_DEAD_READ: usize = 10_000;
/// Examples listed under a broken invariant.
const EXAMPLES: usize = 10;
/// Ids bound per Postgres query.
const ID_CHUNK: usize = 20_000;
/// Time between two looks at the fleet while it drains.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Options of one check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The ledger `chaos-load` wrote.
    pub ledger: PathBuf,
    /// The fault log `cargo xtask chaos` wrote (none: no fault excuses anything).
    pub fault_log: Option<PathBuf>,
    /// Postgres of the fleet.
    pub database_url: String,
    /// Redis of the fleet.
    pub redis_url: String,
    /// Key prefix of the fleet.
    pub prefix: String,
    /// Consumer group of the workers.
    pub group: String,
    /// The simulator's base URL.
    pub mock_url: String,
    /// The `fleetctl` binary, for `queues --json`.
    pub fleetctl: PathBuf,
    /// Longest wait for the fleet to drain.
    pub drain: Duration,
}

/// One invariant, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// What must hold.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The figures, in one line.
    pub summary: String,
    /// Examples and explanations.
    pub details: Vec<String>,
}

/// A reply the provider accepted twice, with why it may be excused.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    /// The idempotency key (job id).
    pub key: String,
    /// Recipient digits.
    pub recipient: String,
    /// `origin` of its record (`api`, `auto:welcome`, ...), when recorded.
    pub origin: Option<String>,
    /// Times the provider accepted it, ms after the load's start.
    pub accepted_at: Vec<f64>,
    /// The outbound SIGKILL that excuses it: its target and ms after the first acceptance.
    pub excused_by: Option<(String, u64)>,
    /// Why it is or is not excused.
    pub why: String,
    /// The faults in progress, or begun, between its first and its last acceptance.
    pub during: Vec<String>,
}

/// Sizes of the provider-to-record window, ms: from the provider's acceptance of a send to the
/// write of its `sent` record.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Window {
    /// Sends measured (their record carries their provider message id).
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
}

/// Everything the check found; written as JSON for `cargo xtask chaos`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run id.
    pub run_id: String,
    /// Seed of the traffic.
    pub seed: u64,
    /// Inbound messages per second asked for and achieved.
    pub target_rate: f64,
    /// Inbound messages accepted per second of load.
    pub achieved_rate: f64,
    /// Seconds of load.
    pub load_secs: f64,
    /// Messages, status events and send-API requests accepted.
    pub accepted: (u64, u64, u64),
    /// Whether the fleet drained within the bound, and how long it took (from the check's start).
    pub drained: bool,
    /// Seconds the drain took (or the bound).
    pub drain_secs: f64,
    /// The invariants.
    pub invariants: Vec<Invariant>,
    /// Second sends excused by an outbound SIGKILL inside their provider-to-record window.
    pub excused: Vec<Duplicate>,
    /// The provider-to-record window.
    pub window: Window,
    /// Whether every invariant held.
    pub passed: bool,
}

/// The true state of one queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueTruth {
    /// Queue name.
    pub name: String,
    /// Entries per priority stream (`XLEN`).
    pub length: [u64; 3],
    /// Entries after the group's last-delivered id (counted), per priority.
    pub waiting: [u64; 3],
    /// Entries delivered and not acknowledged (`XPENDING`), per priority.
    pub pending: [u64; 3],
    /// The group's `lag` as Redis reports it (none when it cannot tell), per priority.
    pub lag: [Option<u64>; 3],
    /// Delayed entries (`ZCARD`).
    pub delayed: u64,
    /// The next delayed entries' due times, ms from now (negative: overdue).
    pub next_due_ms: Vec<i64>,
    /// Dead letters (`XLEN`).
    pub dead: u64,
}

impl QueueTruth {
    fn idle(&self) -> bool {
        self.waiting.iter().chain(&self.pending).all(|n| *n == 0) && self.delayed == 0
    }

    fn line(&self) -> String {
        format!(
            "{}: waiting {}/{}/{} pending {}/{}/{} (high/normal/low) delayed {} dead {}",
            self.name,
            self.waiting[0],
            self.waiting[1],
            self.waiting[2],
            self.pending[0],
            self.pending[1],
            self.pending[2],
            self.delayed,
            self.dead
        )
    }
}

/// One record of the simulator's send log (`GET /sends`).
#[derive(Debug, Clone, Deserialize)]
struct Send {
    key: Option<String>,
    recipient: String,
    accepted_at_ms: u64,
    message_id: String,
    answered: bool,
}

#[derive(Deserialize)]
struct SendPage {
    sends: Vec<Send>,
    next: u64,
    total: u64,
    dropped: u64,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::String(s) => Some(s.to_string()),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => text_of(other)?.parse().ok(),
    }
}

fn flat_map(v: &Value) -> BTreeMap<String, Value> {
    match v {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|c| Some((text_of(c.first()?)?, c.get(1)?.clone())))
            .collect(),
        Value::Map(m) => m
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The true state of `queue`: lengths, the group's pending entries, the entries after its
/// last-delivered id (counted page by page), the delayed set and the dead letters.
pub async fn queue_truth(
    client: &Client,
    prefix: &str,
    queue: &str,
    group: &str,
) -> Result<QueueTruth> {
    let keys = fleet_queue::keys::QueueKeys::new(prefix, queue);
    let mut t = QueueTruth {
        name: queue.to_owned(),
        ..QueueTruth::default()
    };
    for (i, stream) in keys.streams().iter().enumerate() {
        t.length[i] = client.xlen(stream.as_str()).await?;
        if t.length[i] == 0 && client.exists::<u64, _>(stream.as_str()).await? == 0 {
            continue;
        }
        let groups: Value = client
            .custom(cmd!("XINFO"), vec!["GROUPS", stream.as_str()])
            .await?;
        let ours = match &groups {
            Value::Array(list) => list
                .iter()
                .map(flat_map)
                .find(|m| m.get("name").and_then(text_of).as_deref() == Some(group)),
            _ => None,
        };
        let Some(info) = ours else {
            // No group yet: every entry waits.
            t.waiting[i] = t.length[i];
            continue;
        };
        t.lag[i] = as_u64(info.get("lag"));
        let pending: Value = client
            .custom(cmd!("XPENDING"), vec![stream.as_str(), group])
            .await?;
        t.pending[i] = match &pending {
            Value::Array(summary) => as_u64(summary.first()).unwrap_or(0),
            _ => 0,
        };
        let last = info
            .get("last-delivered-id")
            .and_then(text_of)
            .unwrap_or_else(|| "0-0".into());
        let mut cursor = last;
        for _ in 0..MAX_XRANGE_PAGES {
            let page: Value = client
                .custom(
                    cmd!("XRANGE"),
                    vec![
                        stream.clone(),
                        format!("({cursor}"),
                        "+".into(),
                        "COUNT".into(),
                        XRANGE_PAGE.to_string(),
                    ],
                )
                .await?;
            let Value::Array(entries) = page else { break };
            t.waiting[i] += entries.len() as u64;
            let next = entries.last().and_then(|e| match e {
                Value::Array(pair) => pair.first().and_then(text_of),
                _ => None,
            });
            match next {
                Some(id) if entries.len() == XRANGE_PAGE => cursor = id,
                _ => break,
            }
        }
    }
    t.delayed = client.zcard(keys.delayed()).await?;
    if t.delayed > 0 {
        let next: Value = client
            .custom(
                cmd!("ZRANGE"),
                vec![keys.delayed(), "0".into(), "4".into(), "WITHSCORES".into()],
            )
            .await?;
        let now = fleet_queue::now_ms() as i64;
        if let Value::Array(items) = next {
            for pair in items.chunks(2) {
                let due = pair
                    .get(1)
                    .and_then(text_of)
                    .and_then(|s| s.parse::<f64>().ok());
                if let Some(due) = due {
                    t.next_due_ms.push(due as i64 - now);
                }
            }
        }
    }
    t.dead = client.xlen(keys.dead()).await?;
    Ok(t)
}

/// `fleetctl queues --json`, as (name, waiting per priority, pending, delayed, dead).
async fn fleetctl_queues(opts: &CheckOptions) -> Result<Vec<(String, [u64; 3], u64, u64, u64)>> {
    let out = tokio::process::Command::new(&opts.fleetctl)
        .args(["--redis-url", &opts.redis_url])
        .args(["--database-url", &opts.database_url])
        .args(["--prefix", &opts.prefix])
        .args(["queues", "--json"])
        .output()
        .await
        .with_context(|| format!("running {}", opts.fleetctl.display()))?;
    if !out.status.success() {
        bail!(
            "fleetctl queues --json failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("fleetctl queues --json is not JSON")?;
    let rows = doc["queues"]
        .as_array()
        .context("fleetctl queues --json has no `queues` list")?;
    Ok(rows
        .iter()
        .map(|q| {
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
            (
                q["name"].as_str().unwrap_or("?").to_owned(),
                [
                    n(&q["lengths"]["high"]),
                    n(&q["lengths"]["normal"]),
                    n(&q["lengths"]["low"]),
                ],
                n(&q["pending"]),
                n(&q["delayed"]),
                n(&q["dead"]),
            )
        })
        .collect())
}

/// Reads the simulator's send log from `from` to its end.
async fn read_sends(
    http: &reqwest::Client,
    mock: &str,
    sends: &mut Vec<Send>,
    dropped: &mut u64,
) -> Result<()> {
    loop {
        let page: SendPage = http
            .get(format!(
                "{mock}/sends?from={}&limit={SENDS_PAGE}",
                sends.len()
            ))
            .send()
            .await
            .context("the simulator's /sends does not answer")?
            .error_for_status()?
            .json()
            .await
            .context("the simulator's /sends answered something else")?;
        let got = page.sends.len();
        *dropped = page.dropped;
        sends.extend(page.sends);
        if got == 0 || page.next >= page.total {
            return Ok(());
        }
    }
}

/// Runs the check: drain, measure, judge.
pub async fn run(opts: &CheckOptions) -> Result<Report> {
    let ledger: Ledger = serde_json::from_slice(
        &std::fs::read(&opts.ledger)
            .with_context(|| format!("cannot read the ledger {}", opts.ledger.display()))?,
    )
    .context("the ledger is not valid JSON")?;
    let faults: FaultLog = match &opts.fault_log {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .context("the fault log is not valid JSON")?,
        None => FaultLog::default(),
    };
    let pool = Store::connect(
        &opts.database_url,
        &PoolOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
            // The checker's whole-table reads are slow on a large run; they are not a worker's.
            statement_timeout: Duration::from_secs(600),
            application_name: "fleet-chaos-check".into(),
        },
    )
    .context("bad Postgres URL")?;
    pool.ping().await.context("cannot connect to Postgres")?;
    let redis = Builder::from_config(Config::from_url(&opts.redis_url).context("bad Redis URL")?)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()?;
    redis.init().await.context("cannot connect to Redis")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mock = opts.mock_url.trim_end_matches('/').to_owned();

    // Drain: every accepted message stored, every queue idle twice in a row, every owed reply
    // delivered; or the bound.
    let accepted = ledger.messages.len() as u64;
    let owed = ledger.owed.total();
    let started = Instant::now();
    let deadline = started + opts.drain;
    let mut sends: Vec<Send> = Vec::new();
    let mut dropped = 0u64;
    let mut idle_rounds = 0;
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let drained = loop {
        let rows = count_inbound(&pool).await.unwrap_or(0);
        let mut truths = Vec::new();
        for q in QUEUES {
            if let Ok(t) = queue_truth(&redis, &opts.prefix, q, &opts.group).await {
                truths.push(t);
            }
        }
        let _ = read_sends(&http, &mock, &mut sends, &mut dropped).await;
        let distinct: HashSet<&str> = sends.iter().filter_map(|s| s.key.as_deref()).collect();
        let idle = truths.len() == QUEUES.len() && truths.iter().all(QueueTruth::idle);
        idle_rounds = if idle { idle_rounds + 1 } else { 0 };
        if rows >= accepted && idle_rounds >= 2 && distinct.len() as u64 >= owed {
            break true;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "chaos-check: draining {:>3.0}s: messages stored {rows}/{accepted}, replies {}/{owed}; {}",
                started.elapsed().as_secs_f64(),
                distinct.len(),
                truths
                    .iter()
                    .map(QueueTruth::line)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    let drain_secs = started.elapsed().as_secs_f64();
    read_sends(&http, &mock, &mut sends, &mut dropped).await?;

    let mut invariants = Vec::new();
    invariants.push(load_settled(&ledger));
    invariants.push(messages_stored(&pool, &ledger).await?);
    invariants.push(message_counts(&pool, &ledger).await?);
    invariants.push(statuses_forward(&pool, &ledger).await?);
    let outbound = outbound_rows(&pool).await?;
    let (owed_inv, twice_inv, excused, window) =
        replies(&ledger, &faults, &sends, dropped, &outbound);
    invariants.push(owed_inv);
    invariants.push(twice_inv);
    let mut truths = Vec::new();
    for q in QUEUES {
        truths.push(queue_truth(&redis, &opts.prefix, q, &opts.group).await?);
    }
    invariants.push(queues_exact(opts, &truths, drained, drain_secs).await);
    let broker = fleet_queue::Broker::connect(&opts.redis_url, &opts.prefix).await?;
    invariants.push(dead_letters(&broker).await?);
    let _ = redis.quit().await;
    pool.close().await;

    let passed = invariants.iter().all(|i| i.ok);
    let load_secs = (ledger.load_end_ms.saturating_sub(ledger.started_at_ms)) as f64 / 1000.0;
    Ok(Report {
        run_id: ledger.run_id.clone(),
        seed: ledger.seed,
        target_rate: ledger.target_rate,
        achieved_rate: ledger.achieved_rate,
        load_secs,
        accepted: (
            accepted,
            ledger.requests.statuses_accepted,
            ledger.api.len() as u64,
        ),
        drained,
        drain_secs,
        invariants,
        excused,
        window,
        passed,
    })
}

async fn count_inbound(pool: &Store) -> Result<u64> {
    Ok(pool.audit_inbound_total().await?)
}

fn examples<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items
        .into_iter()
        .take(EXAMPLES)
        .map(|i| format!("{i}"))
        .collect()
}

fn load_settled(ledger: &Ledger) -> Invariant {
    let r = &ledger.requests;
    let mut details = Vec::new();
    for u in ledger.abandoned.iter().take(EXAMPLES) {
        details.push(format!(
            "abandoned {} of tenant {} ({}), last answer {}",
            u.kind,
            u.tenant,
            u.ids.join(" "),
            u.last
        ));
    }
    for u in ledger.rejected.iter().take(EXAMPLES) {
        details.push(format!(
            "rejected {} of tenant {} ({}): {}",
            u.kind,
            u.tenant,
            u.ids.join(" "),
            u.last
        ));
    }
    Invariant {
        name: "every webhook and send request answered 2xx (retried until accepted)".into(),
        ok: ledger.abandoned.is_empty() && ledger.rejected.is_empty(),
        summary: format!(
            "{} requests, {} accepted, {} abandoned, {} rejected; {} needed retries (most attempts {}, longest {:.1} s to accept); failed attempts: {}",
            r.requests,
            r.accepted,
            ledger.abandoned.len(),
            ledger.rejected.len(),
            r.retried,
            r.max_attempts,
            r.longest_to_accept_ms as f64 / 1000.0,
            if r.failed_attempts.is_empty() {
                "none".into()
            } else {
                r.failed_attempts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        details,
    }
}

async fn messages_stored(pool: &Store, ledger: &Ledger) -> Result<Invariant> {
    let stored: HashSet<(String, String)> = pool
        .audit_inbound_matching(&ledger.id_patterns)
        .await?
        .into_iter()
        .collect();
    let (total, distinct) = pool.audit_inbound_distinct().await?;
    let mut expected: HashSet<(String, String)> = HashSet::with_capacity(ledger.messages.len());
    let mut twice_in_ledger = 0u64;
    for m in &ledger.messages {
        let key = (ledger.tenants[m.tenant as usize].id.clone(), m.id.clone());
        if !expected.insert(key) {
            twice_in_ledger += 1;
        }
    }
    let unsettled: HashSet<&str> = ledger
        .abandoned
        .iter()
        .chain(&ledger.rejected)
        .flat_map(|u| u.ids.iter().map(String::as_str))
        .collect();
    let missing: Vec<&(String, String)> = expected.difference(&stored).collect();
    let extra: Vec<&(String, String)> = stored
        .difference(&expected)
        .filter(|(_, id)| !unsettled.contains(id.as_str()))
        .collect();
    let mut details = examples(missing.iter().map(|(t, id)| format!("missing: {t} {id}")));
    details.extend(examples(
        extra
            .iter()
            .map(|(t, id)| format!("stored but never accepted: {t} {id}")),
    ));
    if twice_in_ledger > 0 {
        details.push(format!(
            "{twice_in_ledger} messages were booked twice by the load (a generator bug)"
        ));
    }
    Ok(Invariant {
        name: "every accepted message stored exactly once".into(),
        ok: missing.is_empty() && extra.is_empty() && total == distinct && twice_in_ledger == 0,
        summary: format!(
            "{} accepted, {} stored ({} rows in all, {} distinct), {} missing, {} stored without being accepted",
            expected.len(),
            stored.len(),
            total,
            distinct,
            missing.len(),
            extra.len()
        ),
        details,
    })
}

async fn message_counts(pool: &Store, ledger: &Ledger) -> Result<Invariant> {
    let (mismatched, orphans) = pool.audit_count_mismatches().await?;
    let stored = pool.audit_message_counts(&ledger.contact_pattern).await?;
    let mut accepted: HashMap<(String, String), i64> = HashMap::new();
    for m in &ledger.messages {
        *accepted
            .entry((
                ledger.tenants[m.tenant as usize].id.clone(),
                m.contact.clone(),
            ))
            .or_default() += 1;
    }
    let mut off: Vec<String> = accepted
        .iter()
        .filter(|(k, n)| stored.get(*k) != Some(*n))
        .map(|((t, c), n)| {
            format!(
                "{t} {c}: {n} accepted, message_count {}",
                stored
                    .get(&(t.clone(), c.clone()))
                    .map_or("absent".into(), i64::to_string)
            )
        })
        .collect();
    off.sort();
    let mut details: Vec<String> = mismatched
        .iter()
        .take(EXAMPLES)
        .map(|m| {
            format!(
                "{} {}: message_count {} but {} rows",
                m.tenant, m.contact, m.message_count, m.rows
            )
        })
        .collect();
    details.extend(off.iter().take(EXAMPLES).cloned());
    if orphans > 0 {
        details.push(format!("{orphans} contacts have messages but no prospect"));
    }
    Ok(Invariant {
        name: "prospects.message_count equals the rows (and the accepted messages)".into(),
        ok: mismatched.is_empty() && orphans == 0 && off.is_empty(),
        summary: format!(
            "{} prospects; {} with message_count different from their rows{}, {} contacts whose count differs from what was accepted, {} without a prospect",
            stored.len(),
            mismatched.len(),
            if mismatched.len() as i64 == fleet_store::audit::MISMATCHES_LISTED {
                "+"
            } else {
                ""
            },
            off.len(),
            orphans
        ),
        details,
    })
}

async fn statuses_forward(pool: &Store, ledger: &Ledger) -> Result<Invariant> {
    let mut stored: HashMap<(String, String), String> = HashMap::new();
    for chunk in ledger.statuses.chunks(ID_CHUNK) {
        let keys: Vec<(String, String)> = chunk
            .iter()
            .map(|s| (ledger.tenants[s.tenant as usize].id.clone(), s.id.clone()))
            .collect();
        stored.extend(pool.audit_statuses(&keys).await?);
    }
    let (mut behind, mut ahead, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for s in &ledger.statuses {
        let tenant = &ledger.tenants[s.tenant as usize].id;
        match stored.get(&(tenant.clone(), s.id.clone())) {
            None => missing.push(format!(
                "{tenant} {}: no status stored, {} accepted",
                s.id, s.highest
            )),
            Some(word) if status_rank(word) < status_rank(&s.highest) => behind.push(format!(
                "{tenant} {}: stored {word}, but {} was accepted ({} events)",
                s.id, s.highest, s.accepted
            )),
            Some(word) if status_rank(word) > status_rank(&s.highest) => ahead.push(format!(
                "{tenant} {}: stored {word}, beyond anything accepted ({})",
                s.id, s.highest
            )),
            Some(_) => {}
        }
    }
    let mut details = examples(behind.iter());
    details.extend(examples(missing.iter()));
    details.extend(examples(ahead.iter()));
    Ok(Invariant {
        name: "statuses never go backwards (each id ends at the highest status accepted)".into(),
        ok: behind.is_empty() && missing.is_empty() && ahead.is_empty(),
        summary: format!(
            "{} status ids ({} events, sent out of order); {} behind the highest accepted, {} missing, {} ahead",
            ledger.statuses.len(),
            ledger.requests.statuses_accepted,
            behind.len(),
            missing.len(),
            ahead.len()
        ),
        details,
    })
}

async fn outbound_rows(pool: &Store) -> Result<HashMap<String, OutboundRow>> {
    Ok(pool.audit_outbound().await?)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Owed replies delivered, and second sends: each key accepted more than once is excused only
/// when an outbound process was SIGKILLed between its first acceptance and the next one, and the
/// first acceptance was never recorded (the kill landed inside its provider-to-record window).
fn replies(
    ledger: &Ledger,
    faults: &FaultLog,
    sends: &[Send],
    dropped: u64,
    outbound: &HashMap<String, OutboundRow>,
) -> (Invariant, Invariant, Vec<Duplicate>, Window) {
    let t0 = faults.t0_ms.unwrap_or(ledger.started_at_ms) as f64;
    let rel = |ms: u64| (ms as f64 - t0) / 1000.0;
    let mut by_key: HashMap<&str, Vec<&Send>> = HashMap::new();
    let mut unkeyed = 0u64;
    for s in sends {
        match s.key.as_deref() {
            Some(k) => by_key.entry(k).or_default().push(s),
            None => unkeyed += 1,
        }
    }
    // The provider-to-record window of every send whose record carries its message id.
    let mut windows: Vec<u64> = sends
        .iter()
        .filter_map(|s| {
            let row = outbound.get(s.key.as_deref()?)?;
            (row.provider_message_id.as_deref() == Some(s.message_id.as_str()))
                .then(|| (row.updated_ms - s.accepted_at_ms as i64).max(0) as u64)
        })
        .collect();
    windows.sort_unstable();
    let window = Window {
        count: windows.len() as u64,
        p50_ms: percentile(&windows, 0.5),
        p99_ms: percentile(&windows, 0.99),
        max_ms: windows.last().copied().unwrap_or(0),
    };
    let kills: Vec<(&str, u64)> = faults
        .faults
        .iter()
        .filter(|f| f.kind == "sigkill" && f.role == "fleet-outbound")
        .map(|f| (f.target.as_str(), f.at_ms))
        .collect();

    // Owed replies.
    let mut by_origin: BTreeMap<String, u64> = BTreeMap::new();
    let mut unrecorded = Vec::new();
    let mut not_sent_state = Vec::new();
    for (key, copies) in &by_key {
        match outbound.get(*key) {
            Some(row) => {
                *by_origin.entry(row.origin.clone()).or_default() += 1;
                if row.state != "sent" {
                    not_sent_state.push(format!(
                        "{key}: accepted by the provider at +{:.1}s but recorded as {}",
                        rel(copies[0].accepted_at_ms),
                        row.state
                    ));
                }
            }
            None => unrecorded.push(format!(
                "{key} to {}: accepted by the provider at +{:.1}s, never recorded",
                copies[0].recipient,
                rel(copies[0].accepted_at_ms)
            )),
        }
    }
    let api_missing: Vec<String> = ledger
        .api
        .iter()
        .filter(|a| !by_key.contains_key(a.job_id.as_str()))
        .map(|a| {
            format!(
                "send-API job {} (key {}) to {} never sent",
                a.job_id, a.key, a.to
            )
        })
        .collect();
    let owed = ledger.owed;
    let delivered = by_key.len() as u64;
    let welcome = by_origin.get("auto:welcome").copied().unwrap_or(0);
    let keyword = by_origin.get("auto:keyword").copied().unwrap_or(0);
    let api = by_origin.get("api").copied().unwrap_or(0);
    let mut details = Vec::new();
    for (what, want, got) in [
        ("welcome", owed.welcome, welcome),
        ("keyword", owed.keyword, keyword),
        ("api", owed.api, api),
    ] {
        if want != got {
            details.push(format!("{what}: {want} owed, {got} delivered"));
        }
    }
    details.extend(examples(api_missing.iter()));
    details.extend(examples(unrecorded.iter()));
    details.extend(examples(not_sent_state.iter()));
    if dropped > 0 {
        details.push(format!(
            "the simulator's send log dropped {dropped} sends (raise --max-send-log)"
        ));
    }
    let owed_inv = Invariant {
        name: "every owed reply delivered, and recorded as sent".into(),
        ok: delivered == owed.total()
            && welcome == owed.welcome
            && keyword == owed.keyword
            && api == owed.api
            && api_missing.is_empty()
            && unrecorded.is_empty()
            && not_sent_state.is_empty()
            && dropped == 0,
        summary: format!(
            "{} owed (welcome {}, keyword {}, api {}), {} delivered (welcome {welcome}, keyword {keyword}, api {api}, by their records' origin); {} sent but never recorded",
            owed.total(),
            owed.welcome,
            owed.keyword,
            owed.api,
            delivered,
            unrecorded.len()
        ),
        details,
    };

    // Second sends.
    let mut excused = Vec::new();
    let mut violations = Vec::new();
    for (key, copies) in &by_key {
        if copies.len() < 2 {
            continue;
        }
        let row = outbound.get(*key);
        let recorded = row.and_then(|r| r.provider_message_id.as_deref());
        let mut excuse = None;
        let mut why = String::new();
        // Each kill excuses at most one resend of a key: the copy after it was sent by a live
        // process.
        let mut used: Vec<u64> = Vec::new();
        for pair in copies.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            // The window opens when the request leaves the sender, which is before the
            // simulator accepts it: a process killed with its request in flight is accepted
            // after its death.
            let kill = kills.iter().find(|(_, at)| {
                *at + IN_FLIGHT_MS >= first.accepted_at_ms
                    && *at <= next.accepted_at_ms
                    && !used.contains(at)
            });
            if let Some((_, at)) = kill {
                used.push(*at);
            }
            let first_recorded = recorded == Some(first.message_id.as_str());
            match (kill, first_recorded) {
                (Some((target, at)), false) if *at >= first.accepted_at_ms => {
                    excuse = Some(((*target).to_owned(), at - first.accepted_at_ms));
                    why = format!(
                        "{target} was SIGKILLed {} ms after the provider's acceptance (answered: {}), before the record",
                        at - first.accepted_at_ms,
                        first.answered
                    );
                }
                (Some((target, at)), false) => {
                    excuse = Some(((*target).to_owned(), 0));
                    why = format!(
                        "{target} was SIGKILLed {} ms before the provider's acceptance, with the request in flight",
                        first.accepted_at_ms - at
                    );
                }
                (Some(_), true) => {
                    excuse = None;
                    why = "the first send was recorded, yet it was sent again".into();
                    break;
                }
                (None, _) => {
                    excuse = None;
                    why = format!(
                        "no outbound process was killed between the two acceptances (first answered: {}, first recorded: {first_recorded})",
                        first.answered
                    );
                    break;
                }
            }
        }
        let (first_ms, last_ms) = (
            copies[0].accepted_at_ms,
            copies.last().map_or(0, |s| s.accepted_at_ms),
        );
        let during: Vec<String> = faults
            .faults
            .iter()
            .filter(|f| f.at_ms <= last_ms && f.until_ms.unwrap_or(f.at_ms) >= first_ms)
            .map(|f| {
                format!(
                    "{} {} (+{:.1}s..{})",
                    f.kind,
                    f.target,
                    rel(f.at_ms),
                    f.until_ms
                        .map_or("not ended".to_owned(), |u| format!("+{:.1}s", rel(u)))
                )
            })
            .collect();
        let dup = Duplicate {
            during,
            key: (*key).to_owned(),
            recipient: copies[0].recipient.clone(),
            origin: row.map(|r| r.origin.clone()),
            accepted_at: copies.iter().map(|s| rel(s.accepted_at_ms)).collect(),
            excused_by: excuse,
            why,
        };
        if dup.excused_by.is_some() {
            excused.push(dup);
        } else {
            violations.push(dup);
        }
    }
    violations.sort_by(|a, b| a.accepted_at[0].total_cmp(&b.accepted_at[0]));
    excused.sort_by(|a, b| a.accepted_at[0].total_cmp(&b.accepted_at[0]));
    let extra_sends: usize = violations.iter().map(|d| d.accepted_at.len() - 1).sum();
    let mut details: Vec<String> = violations
        .iter()
        .take(EXAMPLES)
        .map(|d| {
            format!(
                "{} ({}) to {}: accepted at {}; {}",
                d.key,
                d.origin.as_deref().unwrap_or("unrecorded"),
                d.recipient,
                d.accepted_at
                    .iter()
                    .map(|t| format!("+{t:.1}s"))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.why
            )
        })
        .collect();
    if violations.len() > EXAMPLES {
        details.push(format!("... and {} more", violations.len() - EXAMPLES));
    }
    let mut origins: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &violations {
        *origins
            .entry(d.origin.as_deref().unwrap_or("unrecorded"))
            .or_default() += 1;
    }
    if !origins.is_empty() {
        details.push(format!(
            "by origin: {}",
            origins
                .iter()
                .map(|(o, n)| format!("{o} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut by_fault: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &violations {
        if d.during.is_empty() {
            *by_fault.entry("no fault").or_default() += 1;
        }
        for f in &d.during {
            *by_fault.entry(f.as_str()).or_default() += 1;
        }
    }
    if !by_fault.is_empty() {
        details.push(format!(
            "by the faults between the first and the last acceptance: {}",
            by_fault
                .iter()
                .map(|(f, n)| format!("{f}: {n}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if unkeyed > 0 {
        details.push(format!(
            "{unkeyed} sends carried no idempotency key (not counted)"
        ));
    }
    let twice_inv = Invariant {
        name:
            "no reply sent twice (except an outbound SIGKILL inside the provider-to-record window)"
                .into(),
        ok: violations.is_empty(),
        summary: format!(
            "{} sends accepted for {} replies; {} replies sent more than once ({extra_sends} extra sends) not excused, {} excused by an outbound SIGKILL (window p50 {} ms, p99 {} ms, max {} ms over {} recorded sends)",
            sends.len(),
            by_key.len(),
            violations.len(),
            excused.len(),
            window.p50_ms,
            window.p99_ms,
            window.max_ms,
            window.count
        ),
        details,
    };
    (owed_inv, twice_inv, excused, window)
}

async fn queues_exact(
    opts: &CheckOptions,
    truths: &[QueueTruth],
    drained: bool,
    drain_secs: f64,
) -> Invariant {
    let mut details = Vec::new();
    let mut ok = drained;
    for t in truths {
        if !t.idle() {
            ok = false;
            details.push(format!("not drained: {}", t.line()));
            if !t.next_due_ms.is_empty() {
                details.push(format!(
                    "{}: next delayed entries due in {} ms",
                    t.name,
                    t.next_due_ms
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    match fleetctl_queues(opts).await {
        Ok(rows) => {
            for t in truths {
                let Some((_, lengths, pending, delayed, dead)) =
                    rows.iter().find(|r| r.0 == t.name)
                else {
                    ok = false;
                    details.push(format!("fleetctl queues --json has no row for {}", t.name));
                    continue;
                };
                let true_pending: u64 = t.pending.iter().sum();
                for (i, p) in PRIORITIES.iter().enumerate() {
                    if lengths[i] != t.waiting[i] {
                        ok = false;
                        details.push(format!(
                            "{} {p}: fleetctl says {} waiting, the stream has {} after the group's last-delivered id (XLEN {}, XINFO lag {})",
                            t.name,
                            lengths[i],
                            t.waiting[i],
                            t.length[i],
                            t.lag[i].map_or("null".into(), |l| l.to_string())
                        ));
                    }
                }
                for (what, said, truth) in [
                    ("pending", *pending, true_pending),
                    ("delayed", *delayed, t.delayed),
                    ("dead", *dead, t.dead),
                ] {
                    if said != truth {
                        ok = false;
                        details.push(format!(
                            "{} {what}: fleetctl says {said}, Redis has {truth}",
                            t.name
                        ));
                    }
                }
            }
        }
        Err(e) => {
            ok = false;
            details.push(format!("{e:#}"));
        }
    }
    Invariant {
        name: "nothing pending, nothing waiting, and fleetctl queues --json counts exactly".into(),
        ok,
        summary: format!(
            "{} after {drain_secs:.1} s of drain; {}",
            if drained { "drained" } else { "NOT drained" },
            truths
                .iter()
                .map(QueueTruth::line)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        details,
    }
}

async fn dead_letters(broker: &fleet_queue::Broker) -> Result<Invariant> {
    let mut details = Vec::new();
    let mut total = 0usize;
    let mut reasons: BTreeMap<(String, String), usize> = BTreeMap::new();
    for q in QUEUES {
        let queue = broker.queue(q);
        let mut after: Option<String> = None;
        let mut read = 0;
        while read < MAX_DEAD_READ {
            let page = queue.dead_page(1000, after.as_deref()).await?;
            if page.is_empty() {
                break;
            }
            read += page.len();
            after = page.last().map(|d| d.id.clone());
            for d in page {
                total += 1;
                *reasons.entry((q.to_owned(), d.reason.clone())).or_default() += 1;
                if details.len() < EXAMPLES {
                    details.push(format!(
                        "{q}: job {} died of {} after {} attempts: {}",
                        d.job_id.as_deref().unwrap_or("(not a job)"),
                        d.reason,
                        d.attempts,
                        d.error
                    ));
                }
            }
        }
    }
    Ok(Invariant {
        name: "no unexpected dead letters".into(),
        ok: total == 0,
        summary: if reasons.is_empty() {
            "none".into()
        } else {
            reasons
                .iter()
                .map(|((q, r), n)| format!("{q} {r}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        details,
    })
}

/// The report, for people.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let (m, s, a) = report.accepted;
    out.push_str(&format!(
        "chaos check of run {} (seed {}): {:.0} msg/s achieved of {:.0} asked over {:.1} s; accepted {m} messages, {s} status events, {a} send-API requests\n",
        report.run_id, report.seed, report.achieved_rate, report.target_rate, report.load_secs
    ));
    for i in &report.invariants {
        out.push_str(&format!(
            "[{}] {}\n       {}\n",
            if i.ok { " ok " } else { "FAIL" },
            i.name,
            i.summary
        ));
        for d in &i.details {
            out.push_str(&format!("       - {d}\n"));
        }
    }
    if !report.excused.is_empty() {
        out.push_str(&format!(
            "second sends excused by an outbound SIGKILL inside the provider-to-record window (window p50 {} ms, p99 {} ms, max {} ms):\n",
            report.window.p50_ms, report.window.p99_ms, report.window.max_ms
        ));
        for d in report.excused.iter().take(EXAMPLES) {
            out.push_str(&format!(
                "       - {} ({}) to {}: {}\n",
                d.key,
                d.origin.as_deref().unwrap_or("unrecorded"),
                d.recipient,
                d.why
            ));
        }
    }
    out.push_str(if report.passed {
        "chaos check: every invariant held\n"
    } else {
        "chaos check: INVARIANTS BROKEN\n"
    });
    out
}
