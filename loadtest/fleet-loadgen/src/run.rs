//! The run: an open-loop scheduler that sends each request at its intended time whatever the
//! system answers, a webhook-to-row sampler polling Postgres, a simulator poller, a progress bar,
//! then the drain and the verification pass.
//!
//! Every loop is bounded: the scheduler by the case's duration, the in-flight requests by a
//! semaphore (a request waiting for a permit keeps its intended time, so the wait is measured),
//! the samplers by a stop flag plus a deadline, the drain by `drain_secs`.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fleet_store::{PoolOptions, Store};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::{
    case::{Case, Profile},
    payload::{EventMeta, Generator, SharedRequest, TenantKeys},
    stats::{Percentiles, Recorder},
};

/// How often the webhook-to-row sampler looks for its rows; the figure's resolution.
pub const E2E_POLL: Duration = Duration::from_millis(5);
/// Samples waiting for their row at most (bounded memory; beyond it, samples are skipped).
pub const MAX_PENDING_SAMPLES: usize = 20_000;
/// Rows looked up per poll at most.
const LOOKUP_CHUNK: usize = 5_000;
/// Timeout of one webhook request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per failed request in the final redelivery sweep.
const SWEEP_ATTEMPTS: u32 = 3;

/// Where the system under test lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Ingest base URL (loopback only).
    pub ingest_url: String,
    /// Postgres, for the webhook-to-row samples and the verification.
    pub database_url: Option<String>,
    /// Redis and the key prefix, for the dead-letter counts and the backlog.
    pub redis_url: Option<String>,
    /// Key prefix of the system under test.
    pub prefix: String,
    /// Provider simulator base URL, for reply counts and injected dead letters.
    pub mock_url: Option<String>,
}

/// One run's options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The case.
    pub case: Case,
    /// The system under test.
    pub target: Target,
    /// The tenants file the system under test uses.
    pub tenants_path: PathBuf,
    /// Show the progress bar.
    pub progress: bool,
    /// Seed of the traffic mix.
    pub seed: u64,
    /// Processes whose peak memory and CPU time go into the report (`name`, `pid`).
    pub watch: Vec<(String, u32)>,
}

/// A check of the verification pass.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Expected value.
    pub expected: String,
    /// Observed value.
    pub actual: String,
    /// Whether it holds.
    pub ok: bool,
}

/// One stress step's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Target rate of the step.
    pub target_rate: f64,
    /// Accepted events per second during the step.
    pub achieved_rate: f64,
    /// Accept latency over the step.
    pub accept: Percentiles,
    /// Webhook-to-row latency over the step.
    pub e2e: Percentiles,
    /// Samples of the step still without a row when the step ended, older than the e2e bound.
    pub e2e_overdue: u64,
    /// Share of failed requests.
    pub error_rate: f64,
    /// Whether every criterion held.
    pub passed: bool,
    /// The criteria that broke.
    pub broken: Vec<String>,
}

/// One window of the latency-over-time series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Seconds since the start (window start).
    pub t_secs: f64,
    /// Target rate.
    pub target_rate: f64,
    /// Accepted events per second.
    pub accepted_rate: f64,
    /// Failed requests.
    pub errors: u64,
    /// Accept latency p50 / p99, ms.
    pub accept_p50_ms: f64,
    /// Accept latency p99, ms.
    pub accept_p99_ms: f64,
    /// Webhook-to-row p50, ms.
    pub e2e_p50_ms: f64,
    /// Webhook-to-row p99, ms.
    pub e2e_p99_ms: f64,
    /// Replies delivered by the simulator so far (cumulative), when it is watched.
    pub replies_delivered: Option<u64>,
}

/// Peak memory and CPU of a watched process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    /// Name given on the command line.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Peak resident memory (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident memory at the end (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// CPU time used during the run (user + system), seconds.
    pub cpu_secs: f64,
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Everything a run found; written as `result.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Run id (also in every provider message id of the run).
    pub run_id: String,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// The case as run.
    pub case: Case,
    /// Seconds the load phase lasted.
    pub load_secs: f64,
    /// Requests sent (first deliveries and redeliveries).
    pub requests: u64,
    /// Requests answered 2xx.
    pub requests_ok: u64,
    /// Failures by cause.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Redeliveries sent.
    pub redeliveries: u64,
    /// Messages accepted (distinct).
    pub messages_accepted: u64,
    /// Status events accepted (distinct).
    pub statuses_accepted: u64,
    /// Events accepted per second over the load phase after warmup.
    pub accepted_rate: f64,
    /// Mean target rate over the load phase after warmup.
    pub target_rate: f64,
    /// Accept latency (intended send to 200), after warmup.
    pub accept: Percentiles,
    /// Webhook-to-row latency (intended send to the row being visible), after warmup.
    pub e2e: Percentiles,
    /// Samples skipped because too many waited for their row.
    pub e2e_skipped: u64,
    /// Samples whose row never appeared before the drain ended.
    pub e2e_missing: u64,
    /// Replies the tenants' rules owe (welcome per new contact, keyword matches).
    pub replies_expected: Option<u64>,
    /// Replies the simulator accepted during the run.
    pub replies_delivered: Option<u64>,
    /// Replies the simulator saw twice.
    pub reply_duplicates: Option<u64>,
    /// Webhook to welcome reply: a new contact's first message (intended send time) to outbound
    /// recording the simulator's acceptance of the welcome (`outbound_messages.created_at`).
    pub welcome_reply: Percentiles,
    /// Seconds from the end of the load until the last expected reply was delivered.
    pub reply_drain_secs: Option<f64>,
    /// Seconds from the end of the load until every accepted message had its row.
    pub row_drain_secs: Option<f64>,
    /// Stress: every step, and the highest rate that held.
    pub steps: Vec<StepResult>,
    /// Stress: the highest step rate whose criteria held.
    pub max_sustainable_rate: Option<f64>,
    /// The verification pass.
    pub checks: Vec<Check>,
    /// The case's criteria, judged.
    pub criteria: Vec<Check>,
    /// Whether every check and criterion held.
    pub passed: bool,
    /// Latency over time.
    pub series: Vec<SeriesPoint>,
    /// Peak memory and CPU of watched processes (and of the generator itself); CPU is counted
    /// from the start of the load to the end of the drain.
    pub processes: Vec<ProcessUsage>,
    /// Share of the machine's CPU time busy (all processes, all cores) over the same span.
    pub machine_cpu_busy: Option<f64>,
    /// Cores of the machine.
    pub cores: usize,
    /// Notes on how to read the figures.
    pub notes: Vec<String>,
}

/// Refuses any target that is not on this machine: a load generator must not be pointed at
/// someone else's server by mistake.
pub fn ensure_loopback(url: &str) -> Result<()> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .with_context(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("only loopback targets are allowed (got host {host:?})");
    }
    Ok(())
}

/// Reads `VmHWM`, `VmRSS` (MiB) and CPU seconds of a process from /proc.
pub fn process_usage(name: &str, pid: u32) -> Option<ProcessUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let cpu_secs = (ticks(11) + ticks(12)) / 100.0;
    Some(ProcessUsage {
        name: name.to_owned(),
        pid,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
        cpu_secs,
    })
}

struct Shared {
    rec: Mutex<Recorder>,
    pending: Mutex<HashMap<(String, String), f64>>,
    e2e_skipped: Mutex<u64>,
    start: Instant,
    stop_sampling: AtomicBool,
}

impl Shared {
    fn since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
}

fn classify(result: &Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("http_{}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timeout".into()),
        Err(e) if e.is_connect() => Err("connect".into()),
        Err(_) => Err("transport".into()),
    }
}

async fn send(client: &reqwest::Client, base: &str, req: &SharedRequest) -> Result<(), String> {
    let result = client
        .post(format!("{base}{}", req.path))
        .header("content-type", req.content_type)
        .header(req.signature.0, &req.signature.1)
        .body(req.body.clone())
        .send()
        .await;
    let outcome = classify(&result);
    // Read the (small) body so the connection goes back to the pool.
    if let Ok(r) = result {
        let _ = r.bytes().await;
    }
    outcome
}

async fn mock_stats(client: &reqwest::Client, mock: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = client
        .get(format!("{mock}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((v["deliveries"].as_u64()?, v["duplicates"].as_u64()?))
}

async fn dead_counts(broker: &fleet_queue::Broker) -> Result<(u64, u64)> {
    let inbound = broker.queue(fleet_queue_name::INBOUND).stats().await?;
    let outbound = broker.queue(fleet_queue_name::OUTBOUND).stats().await?;
    Ok((inbound.dead, outbound.dead))
}

/// Queue names as the services use them (CONTRACT.md).
mod fleet_queue_name {
    pub(super) const INBOUND: &str = "inbound";
    pub(super) const OUTBOUND: &str = "outbound";
}

/// Polls Postgres for the rows of pending samples until told to stop and nothing is pending,
/// or until `deadline`.
async fn e2e_sampler(shared: Arc<Shared>, pool: Store, deadline: Instant) {
    let mut interval = tokio::time::interval(E2E_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        interval.tick().await;
        let asked: Vec<(String, String)> = {
            let p = shared.pending.lock().expect("pending lock");
            if p.is_empty() {
                if shared.stop_sampling.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            p.keys().take(LOOKUP_CHUNK).cloned().collect()
        };
        // The row was committed before this query's snapshot: the poll start bounds it.
        let polled_at = shared.since_start(Instant::now());
        let Ok(rows) = pool.audit_stored_inbound(&asked).await else {
            continue;
        };
        let mut found = Vec::with_capacity(rows.len());
        {
            let mut p = shared.pending.lock().expect("pending lock");
            for key in rows {
                if let Some(t) = p.remove(&key) {
                    found.push(t);
                }
            }
        }
        let mut rec = shared.rec.lock().expect("recorder lock");
        for t in found {
            rec.e2e_sample(t, ((polled_at - t).max(0.0) * 1e6) as u64);
        }
    }
}

/// Runs the case against the target and verifies the outcome.
pub async fn run(opts: RunOptions) -> Result<RunResult> {
    ensure_loopback(&opts.target.ingest_url)?;
    if let Some(m) = &opts.target.mock_url {
        ensure_loopback(m)?;
    }
    let case = opts.case.clone();
    case.validate()?;
    let tenants_file = fleet_runtime::Tenants::load(&opts.tenants_path)
        .with_context(|| format!("cannot load tenants {}", opts.tenants_path.display()))?;
    let keys = TenantKeys::from_tenants(&tenants_file);
    if keys.is_empty() {
        bail!("the tenants file has no tenant");
    }
    let welcome: Vec<bool> = keys.iter().map(|k| k.welcome).collect();
    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let started_at = chrono::Utc::now().to_rfc3339();
    let base = opts.target.ingest_url.trim_end_matches('/').to_owned();
    let mut generator = Generator::new(keys.clone(), case.mix.clone(), &run_id, &base, opts.seed);
    let id_patterns = generator.id_patterns();
    let contact_pattern = generator.contact_pattern();

    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(case.max_in_flight)
        .tcp_nodelay(true)
        .build()?;
    let pool = match &opts.target.database_url {
        Some(url) => Some({
            let store = Store::connect(
                url,
                &PoolOptions {
                    max_connections: 4,
                    acquire_timeout: Duration::from_secs(10),
                    application_name: "fleet-loadgen".into(),
                    // The end-of-run counts read whole tables of a long run.
                    statement_timeout: Duration::from_secs(600),
                },
            )
            .context("bad Postgres URL")?;
            store.ping().await.context("cannot connect to Postgres")?;
            store
        }),
        None => None,
    };
    let broker = match &opts.target.redis_url {
        Some(url) => Some(
            fleet_queue::Broker::connect(url, &opts.target.prefix)
                .await
                .context("cannot connect to Redis")?,
        ),
        None => None,
    };
    let dead_before = match &broker {
        Some(b) => Some(dead_counts(b).await?),
        None => None,
    };
    let mock = opts
        .target
        .mock_url
        .as_deref()
        .map(|m| m.trim_end_matches('/').to_owned());
    let mock_before = match &mock {
        Some(m) => Some(
            mock_stats(&client, m)
                .await
                .context("the simulator's /stats does not answer")?,
        ),
        None => None,
    };
    if let (Some(m), true) = (&mock, case.inject_dead_letters > 0) {
        let faults: Vec<serde_json::Value> = (0..case.inject_dead_letters)
            .map(|_| serde_json::json!({"kind": "permanent"}))
            .collect();
        let r = client
            .post(format!("{m}/faults"))
            .json(&faults)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("the simulator refused the scripted faults: {}", r.status());
        }
    }

    let cpu_before: HashMap<u32, f64> = opts
        .watch
        .iter()
        .map(|(_, p)| *p)
        .chain([std::process::id()])
        .filter_map(|p| process_usage("", p).map(|u| (p, u.cpu_secs)))
        .collect();
    let machine_before = machine_jiffies();
    let total = case.total_duration().as_secs_f64();
    let window_secs = if total <= 600.0 {
        1.0
    } else {
        (total / 600.0).ceil()
    };
    let contacts = case.mix.contacts_per_tenant;
    let shared = Arc::new(Shared {
        rec: Mutex::new(Recorder::new(
            keys.len(),
            contacts,
            window_secs,
            case.warmup_secs as f64,
        )),
        pending: Mutex::new(HashMap::new()),
        e2e_skipped: Mutex::new(0),
        start: Instant::now() + Duration::from_millis(200),
        stop_sampling: AtomicBool::new(false),
    });
    // Postgres timestamps are wall-clock: the start in wall-clock terms maps them onto `t`.
    let start_wall =
        std::time::SystemTime::now() + shared.start.saturating_duration_since(Instant::now());
    let start_wall_secs = start_wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let sampler_deadline =
        shared.start + case.total_duration() + Duration::from_secs(case.drain_secs + 5);
    let sampler = pool
        .clone()
        .map(|p| tokio::spawn(e2e_sampler(shared.clone(), p, sampler_deadline)));

    // Replies delivered over time, from the simulator.
    let replies_series: Arc<Mutex<Vec<(f64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let mock_poller = mock.clone().map(|m| {
        let (client, shared, series) = (client.clone(), shared.clone(), replies_series.clone());
        let base_deliveries = mock_before.map_or(0, |b| b.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while Instant::now() < sampler_deadline && !shared.stop_sampling.load(Ordering::Relaxed)
            {
                tick.tick().await;
                if let Some((d, _)) = mock_stats(&client, &m).await {
                    let t = shared.since_start(Instant::now());
                    let mut s = series.lock().expect("series lock");
                    if s.len() < 100_000 {
                        s.push((t, d.saturating_sub(base_deliveries)));
                    }
                }
            }
        })
    });

    let bar = if opts.progress {
        let b = ProgressBar::new(total.ceil() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}",
            )
            .expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let ticker = {
        let (shared, bar, broker) = (shared.clone(), bar.clone(), broker.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let backlog = match &broker {
                    Some(b) => b.queue("inbound").backlog().await.ok(),
                    None => None,
                };
                let (accepted, errors, in_flight, p99) = {
                    let r = shared.rec.lock().expect("recorder lock");
                    let accepted: u64 = r.windows.iter().map(|w| w.events_accepted).sum();
                    (
                        accepted,
                        r.errors(),
                        r.in_flight,
                        r.accept.value_at_quantile(0.99),
                    )
                };
                let now = Instant::now();
                let rate = (accepted - last.1.min(accepted)) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, accepted);
                bar.set_position(shared.since_start(now).max(0.0) as u64);
                bar.set_message(format!(
                    "{rate:>7.0} ev/s accepted {accepted} errors {errors} in-flight {in_flight} accept p99 {:.1} ms{}",
                    p99 as f64 / 1000.0,
                    backlog.map(|b| format!(" inbound backlog {b}")).unwrap_or_default()
                ));
            }
        })
    };

    // The open-loop scheduler.
    let permits = Arc::new(Semaphore::new(case.max_in_flight));
    // One message in `every` is sampled, the same share at every rate, so the webhook-to-row
    // percentiles weigh each message alike (a spike's messages count as much as calm ones).
    // Without a database there is no row to look up: nothing is sampled (a sample nobody looks
    // up would keep the drain waiting for its whole deadline).
    let every: u64 = if case.e2e_samples_per_sec <= 0.0 || pool.is_none() {
        u64::MAX
    } else {
        (case.peak_rate() / case.e2e_samples_per_sec)
            .ceil()
            .max(1.0) as u64
    };
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut t = 0.0f64;
    let mut message_counter = 0u64;
    let steps = case.step_plan();
    let mut step_results = Vec::new();
    let mut next_step_check = steps.get(1).map(|s| s.0 as f64);
    let mut stopped_early = false;
    while t < total {
        let rate = case.rate_at(t).max(1e-3);
        let intended = shared.start + Duration::from_secs_f64(t);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        // Stress: judge a step when its time is over (with what is known by then).
        if case.profile == Profile::Stress
            && let Some(at) = next_step_check
            && t >= at
        {
            let idx = step_results.len();
            let r = judge_step(&case, &shared, idx, &steps);
            let passed = r.passed;
            step_results.push(r);
            next_step_check = steps.get(idx + 2).map(|s| s.0 as f64);
            if !passed {
                stopped_early = true;
                break;
            }
        }
        let redeliver = case.mix.redelivery > 0.0 && rng.random_bool(case.mix.redelivery);
        let redelivery_of = if redeliver {
            let r = shared.rec.lock().expect("recorder lock");
            (!r.ring.is_empty()).then(|| r.ring[rng.random_range(0..r.ring.len())].clone())
        } else {
            None
        };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (client, base, shared2) = (client.clone(), base.clone(), shared.clone());
        if let Some(req) = redelivery_of {
            let n_events = req.events.len() as u64;
            shared.rec.lock().expect("recorder lock").in_flight += 1;
            tokio::spawn(async move {
                let outcome = send(&client, &base, &req).await;
                let lat = Instant::now()
                    .saturating_duration_since(intended)
                    .as_micros() as u64;
                let mut rec = shared2.rec.lock().expect("recorder lock");
                rec.in_flight -= 1;
                rec.redelivery(t, rate, lat, n_events, outcome.is_ok(), outcome.err());
                drop(permit);
            });
            t += n_events.max(1) as f64 / rate;
            continue;
        }
        let Some(req) = generator.next_request(case.mix.max_batch) else {
            bail!("no tenant can take a request");
        };
        let n = req.events.len().max(1);
        let mut samples = Vec::new();
        for e in &req.events {
            if let EventMeta::Message { id, .. } = e {
                message_counter += 1;
                if message_counter.is_multiple_of(every) {
                    samples.push(id.clone());
                }
            }
        }
        let req: SharedRequest = Arc::new(req);
        let tenant_id = keys[req.tenant].id.clone();
        shared.rec.lock().expect("recorder lock").in_flight += 1;
        tokio::spawn(async move {
            let outcome = send(&client, &base, &req).await;
            let lat = Instant::now()
                .saturating_duration_since(intended)
                .as_micros() as u64;
            if outcome.is_ok() && !samples.is_empty() {
                let mut p = shared2.pending.lock().expect("pending lock");
                for id in samples {
                    if p.len() < MAX_PENDING_SAMPLES {
                        p.insert((tenant_id.clone(), id), t);
                    } else {
                        *shared2.e2e_skipped.lock().expect("skipped lock") += 1;
                    }
                }
            }
            let mut rec = shared2.rec.lock().expect("recorder lock");
            rec.in_flight -= 1;
            rec.first_delivery(&req, t, rate, lat, outcome);
            drop(permit);
        });
        t += n as f64 / rate;
    }
    // Wait for every request in flight (each is bounded by the request timeout).
    let _ = permits
        .acquire_many(case.max_in_flight as u32)
        .await
        .expect("never closed");
    let load_end = Instant::now();
    let load_secs = shared.since_start(load_end);
    if case.profile == Profile::Stress && !stopped_early {
        let idx = step_results.len();
        if idx < steps.len() {
            step_results.push(judge_step(&case, &shared, idx, &steps));
        }
    }
    ticker.abort();
    bar.finish_and_clear();

    // Resend what failed, as a provider retries, so every message ends accepted.
    let failed: Vec<SharedRequest> = std::mem::take(&mut shared.rec.lock().expect("lock").failed);
    let mut unresolved = 0u64;
    for chunk in failed.chunks(64) {
        let mut tasks = Vec::new();
        for req in chunk {
            let (client, base, req) = (client.clone(), base.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                for attempt in 0..SWEEP_ATTEMPTS {
                    if send(&client, &base, &req).await.is_ok() {
                        return Some(req);
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                None
            }));
        }
        for task in tasks {
            match task.await {
                Ok(Some(req)) => shared.rec.lock().expect("lock").book_accepted(&req, None),
                _ => unresolved += 1,
            }
        }
    }
    let failed_dropped = shared.rec.lock().expect("lock").failed_dropped;

    // Drain: wait for every accepted message's row, and for the replies.
    let (messages, statuses, keyword_msgs, welcome_contacts) =
        shared.rec.lock().expect("lock").totals(&welcome);
    let replies_expected = welcome_contacts + keyword_msgs;
    let drain_deadline = Instant::now() + Duration::from_secs(case.drain_secs);
    let mut row_drain_secs = None;
    let mut checks = Vec::new();
    let mut per_tenant_rows: HashMap<String, (u64, u64)> = HashMap::new();
    if let Some(pool) = &pool {
        loop {
            per_tenant_rows = count_rows(pool, &id_patterns).await?;
            let rows: u64 = per_tenant_rows.values().map(|v| v.0).sum();
            let status_rows: u64 = per_tenant_rows.values().map(|v| v.1).sum();
            if rows >= messages && status_rows >= statuses {
                row_drain_secs = Some(load_end.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut reply_drain_secs = None;
    let mut mock_after = None;
    let mut dead_after = None;
    if let (Some(m), Some(before)) = (&mock, mock_before) {
        let injected = case.inject_dead_letters.min(replies_expected);
        loop {
            let stats = mock_stats(&client, m).await;
            let dead = match &broker {
                Some(b) => dead_counts(b).await.ok(),
                None => None,
            };
            mock_after = stats;
            dead_after = dead;
            let delivered = stats.map_or(0, |s| s.0 - before.0.min(s.0));
            let out_dead = match (dead, dead_before) {
                (Some(a), Some(b)) => a.1.saturating_sub(b.1),
                _ => injected,
            };
            if delivered + out_dead >= replies_expected {
                reply_drain_secs = Some(load_end.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    } else if let Some(b) = &broker {
        dead_after = dead_counts(b).await.ok();
    }
    // Give the sampler until the drain deadline to find the last rows.
    while !shared.pending.lock().expect("lock").is_empty() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop_sampling.store(true, Ordering::Relaxed);
    let e2e_missing = shared.pending.lock().expect("lock").len() as u64;
    shared.pending.lock().expect("lock").clear();
    if let Some(s) = sampler {
        let _ = s.await;
    }
    if let Some(p) = mock_poller {
        let _ = p.await;
    }

    // Webhook to welcome reply: each new contact's first accepted message to the moment outbound
    // recorded the simulator's acceptance of its welcome.
    let welcome_times = match (&pool, &mock) {
        (Some(pool), Some(_)) => welcome_reply_times(pool, &contact_pattern).await?,
        _ => Vec::new(),
    };
    let mut reply_hist = crate::stats::histogram(3);
    {
        let rec = shared.rec.lock().expect("lock");
        let index: HashMap<&str, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.as_str(), i))
            .collect();
        for (tenant, recipient, at) in &welcome_times {
            let Some(&ti) = index.get(tenant.as_str()) else {
                continue;
            };
            let Some(ci) = recipient
                .strip_prefix(contact_pattern.trim_end_matches('%'))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(&first) = rec.tenants[ti].first_accepted_at.get(ci)
                && first >= 0.0
            {
                let latency = at - start_wall_secs - f64::from(first);
                crate::stats::record(&mut reply_hist, (latency.max(0.0) * 1e6) as u64);
            }
        }
    }

    // The verification pass.
    let prospects = match &pool {
        Some(pool) => count_prospects(pool, &contact_pattern).await?,
        None => HashMap::new(),
    };
    let rec = shared.rec.lock().expect("lock");
    let mut check = |name: &str, expected: String, actual: String, ok: bool| {
        checks.push(Check {
            name: name.to_owned(),
            expected,
            actual,
            ok,
        });
    };
    let exact = unresolved == 0 && failed_dropped == 0;
    check(
        "every failed request was resent until accepted",
        "0 unresolved".into(),
        format!("{unresolved} unresolved, {failed_dropped} not kept"),
        exact,
    );
    if pool.is_some() {
        for (i, k) in keys.iter().enumerate() {
            let (rows, status_rows) = per_tenant_rows.get(&k.id).copied().unwrap_or((0, 0));
            let l = &rec.tenants[i];
            check(
                &format!(
                    "tenant {}: each accepted message exactly once in messages",
                    k.id
                ),
                l.messages.to_string(),
                rows.to_string(),
                rows == l.messages,
            );
            check(
                &format!(
                    "tenant {}: each accepted status once in message_status",
                    k.id
                ),
                l.statuses.to_string(),
                status_rows.to_string(),
                status_rows == l.statuses,
            );
        }
        for (i, k) in keys.iter().enumerate() {
            let l = &rec.tenants[i];
            let (n, sum) = prospects.get(&k.id).copied().unwrap_or((0, 0));
            check(
                &format!(
                    "tenant {}: one prospect per contact, message_count adds up",
                    k.id
                ),
                format!("{} prospects, {} messages", l.distinct_contacts, l.messages),
                format!("{n} prospects, {sum} messages"),
                n == l.distinct_contacts && sum == l.messages,
            );
        }
    }
    if let (Some(before), Some(after)) = (dead_before, dead_after) {
        let injected = case.inject_dead_letters.min(replies_expected);
        check(
            "no inbound dead letters",
            "0".into(),
            after.0.saturating_sub(before.0).to_string(),
            after.0 == before.0,
        );
        check(
            "outbound dead letters are exactly the injected ones",
            injected.to_string(),
            after.1.saturating_sub(before.1).to_string(),
            after.1.saturating_sub(before.1) == injected,
        );
    }
    let (mut replies_delivered, mut reply_duplicates) = (None, None);
    if let (Some(before), Some(after)) = (mock_before, mock_after) {
        let injected = case.inject_dead_letters.min(replies_expected);
        let delivered = after.0.saturating_sub(before.0);
        let dups = after.1.saturating_sub(before.1);
        replies_delivered = Some(delivered);
        reply_duplicates = Some(dups);
        check(
            "no reply sent twice",
            "0".into(),
            dups.to_string(),
            dups == 0,
        );
        check(
            "every owed reply delivered (welcome per new contact, keyword matches, minus injected failures)",
            (replies_expected - injected).to_string(),
            delivered.to_string(),
            delivered == replies_expected - injected,
        );
    }
    if pool.is_some() {
        check(
            "every webhook-to-row sample found its row",
            "0 missing".into(),
            format!("{e2e_missing} missing"),
            e2e_missing == 0,
        );
    }

    // Figures.
    let after_warmup: Vec<_> = rec
        .windows
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as f64) * rec.window_secs >= rec.warmup_secs)
        .map(|(_, w)| w)
        .collect();
    let span = (after_warmup.len() as f64 * rec.window_secs).max(1e-9);
    let accepted_rate = after_warmup.iter().map(|w| w.events_accepted).sum::<u64>() as f64 / span;
    let target_rate =
        after_warmup.iter().map(|w| w.target_rate).sum::<f64>() / after_warmup.len().max(1) as f64;
    let accept = Percentiles::of(&rec.accept);
    let e2e = Percentiles::of(&rec.e2e);
    let replies = replies_series.lock().expect("lock").clone();
    let series: Vec<SeriesPoint> = rec
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let t0 = i as f64 * rec.window_secs;
            let a = Percentiles::of(&w.accept);
            let e = Percentiles::of(&w.e2e);
            SeriesPoint {
                t_secs: t0,
                target_rate: w.target_rate,
                accepted_rate: w.events_accepted as f64 / rec.window_secs,
                errors: w.errors,
                accept_p50_ms: a.p50_ms,
                accept_p99_ms: a.p99_ms,
                e2e_p50_ms: e.p50_ms,
                e2e_p99_ms: e.p99_ms,
                replies_delivered: replies
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= t0 + rec.window_secs)
                    .map(|(_, d)| *d),
            }
        })
        .collect();
    let error_rate = rec.errors() as f64 / rec.requests.max(1) as f64;
    let mut criteria = Vec::new();
    let c = &case.criteria;
    let mut judge = |name: &str, bound: Option<f64>, actual: f64, at_most: bool| {
        if let Some(b) = bound {
            criteria.push(Check {
                name: name.to_owned(),
                expected: format!("{} {b}", if at_most { "<=" } else { ">=" }),
                actual: format!("{actual:.3}"),
                ok: if at_most { actual <= b } else { actual >= b },
            });
        }
    };
    let max_sustainable_rate = if case.profile == Profile::Stress {
        let best = step_results
            .iter()
            .take_while(|s| s.passed)
            .map(|s| s.target_rate)
            .last();
        judge(
            "max sustainable rate (msg/s)",
            c.min_sustained_rate,
            best.unwrap_or(0.0),
            false,
        );
        Some(best.unwrap_or(0.0))
    } else {
        judge("accept p99 (ms)", c.accept_p99_ms, accept.p99_ms, true);
        judge("webhook-to-row p99 (ms)", c.e2e_p99_ms, e2e.p99_ms, true);
        judge("error rate", c.max_error_rate, error_rate, true);
        judge(
            "accepted / target rate",
            c.min_rate_ratio,
            accepted_rate / target_rate.max(1e-9),
            false,
        );
        None
    };
    let mut processes: Vec<ProcessUsage> = opts
        .watch
        .iter()
        .filter_map(|(n, p)| process_usage(n, *p))
        .collect();
    processes.extend(process_usage("fleet-loadgen", std::process::id()));
    for p in &mut processes {
        p.cpu_secs -= cpu_before.get(&p.pid).copied().unwrap_or(0.0);
    }
    let machine_cpu_busy = match (machine_before, machine_jiffies()) {
        (Some(a), Some(b)) if b.1 > a.1 => Some((b.0 - a.0) as f64 / (b.1 - a.1) as f64),
        _ => None,
    };
    let passed = checks.iter().all(|c| c.ok) && criteria.iter().all(|c| c.ok);
    let mut notes = vec![
        format!(
            "Latencies are measured from each request's intended send time (open loop, {} requests in flight at most): queueing anywhere, including in the generator, counts.",
            case.max_in_flight
        ),
        format!(
            "Webhook-to-row: one message in {every} sampled (at most {}/s at the peak rate), looked up in Postgres every {} ms; each figure is an upper bound with that resolution.",
            case.e2e_samples_per_sec,
            E2E_POLL.as_millis()
        ),
        "Replies are counted at the simulator (/stats). Webhook-to-reply is measured for welcome replies: a new contact's first message (intended send time) to outbound_messages.created_at of its welcome (written once the simulator accepted it); outbound's rate limits (per number and Meta's 6 s pair rate) are part of it.".into(),
    ];
    if stopped_early {
        notes.push("Stress stopped at the first step whose criteria broke.".into());
    }
    Ok(RunResult {
        run_id,
        started_at,
        case,
        load_secs,
        requests: rec.requests,
        requests_ok: rec.requests_ok,
        failures: rec.failures.clone(),
        redeliveries: rec.redeliveries,
        messages_accepted: messages,
        statuses_accepted: statuses,
        accepted_rate,
        target_rate,
        accept,
        e2e,
        e2e_skipped: *shared.e2e_skipped.lock().expect("lock"),
        e2e_missing,
        replies_expected: mock.as_ref().map(|_| replies_expected),
        replies_delivered,
        reply_duplicates,
        welcome_reply: Percentiles::of(&reply_hist),
        reply_drain_secs,
        row_drain_secs,
        steps: step_results,
        max_sustainable_rate,
        checks,
        criteria,
        passed,
        series,
        processes,
        machine_cpu_busy,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        notes,
    })
}

/// Judges stress step `idx` (of `steps`) from the windows it covers and its overdue samples.
fn judge_step(case: &Case, shared: &Shared, idx: usize, steps: &[(u64, f64)]) -> StepResult {
    let (at, target_rate) = steps[idx];
    let step_secs = case.steps.as_ref().map_or(1, |s| s.step_secs);
    let c = &case.criteria;
    let rec = shared.rec.lock().expect("lock");
    // Skip the first second of a step: the rate change itself.
    let from = at as f64 + 1.0_f64.min(step_secs as f64 / 2.0);
    let to = (at + step_secs) as f64;
    let mut accept = crate::stats::histogram(2);
    let mut e2e = crate::stats::histogram(2);
    let (mut accepted, mut requests, mut errors) = (0u64, 0u64, 0u64);
    for (i, w) in rec.windows.iter().enumerate() {
        let t = i as f64 * rec.window_secs;
        if t >= from && t < to {
            let _ = accept.add(&w.accept);
            let _ = e2e.add(&w.e2e);
            accepted += w.events_accepted;
            requests += w.requests;
            errors += w.errors;
        }
    }
    drop(rec);
    let now = shared.since_start(Instant::now());
    let bound_secs = c.e2e_p99_ms.unwrap_or(f64::INFINITY) / 1000.0;
    let e2e_overdue = shared
        .pending
        .lock()
        .expect("lock")
        .values()
        .filter(|&&t| t >= from && t < to && now - t > bound_secs)
        .count() as u64;
    let achieved_rate = accepted as f64 / (to - from).max(1e-9);
    let error_rate = errors as f64 / requests.max(1) as f64;
    let accept_p = Percentiles::of(&accept);
    let e2e_p = Percentiles::of(&e2e);
    let mut broken = Vec::new();
    if let Some(b) = c.accept_p99_ms
        && accept_p.p99_ms > b
    {
        broken.push(format!("accept p99 {:.1} ms > {b} ms", accept_p.p99_ms));
    }
    if let Some(b) = c.e2e_p99_ms {
        // Overdue samples are latencies above the bound that have not landed yet.
        let total = e2e_p.count + e2e_overdue;
        if e2e_p.p99_ms > b || (total > 0 && e2e_overdue as f64 / total as f64 > 0.01) {
            broken.push(format!(
                "webhook-to-row p99 {:.1} ms ({e2e_overdue} samples still overdue) > {b} ms",
                e2e_p.p99_ms
            ));
        }
    }
    if let Some(b) = c.max_error_rate
        && error_rate > b
    {
        broken.push(format!("error rate {error_rate:.4} > {b}"));
    }
    if let Some(b) = c.min_rate_ratio
        && achieved_rate < b * target_rate
    {
        broken.push(format!(
            "achieved {achieved_rate:.0}/s < {b} x {target_rate:.0}/s"
        ));
    }
    StepResult {
        target_rate,
        achieved_rate,
        accept: accept_p,
        e2e: e2e_p,
        e2e_overdue,
        error_rate,
        passed: broken.is_empty(),
        broken,
    }
}

/// Inbound message rows and status rows of this run, per tenant.
async fn count_rows(pool: &Store, patterns: &[String]) -> Result<HashMap<String, (u64, u64)>> {
    Ok(pool.audit_rows_per_tenant(patterns).await?)
}

/// Welcome replies sent to this run's contacts: tenant, recipient, epoch seconds recorded.
async fn welcome_reply_times(
    pool: &Store,
    contact_pattern: &str,
) -> Result<Vec<(String, String, f64)>> {
    Ok(pool.audit_welcome_replies(contact_pattern).await?)
}

/// Prospects of this run's contacts and the sum of their message counts, per tenant.
async fn count_prospects(
    pool: &Store,
    contact_pattern: &str,
) -> Result<HashMap<String, (u64, u64)>> {
    Ok(pool.audit_prospects_per_tenant(contact_pattern).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "http://[::1]:80",
            "http://u:p@127.0.0.2:9",
        ] {
            ensure_loopback(ok).unwrap();
        }
        for bad in ["http://10.0.0.1:80", "https://example.com", "example.com"] {
            assert!(ensure_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_process_usage_reads() {
        let u = process_usage("me", std::process::id()).unwrap();
        assert!(u.peak_rss_mib > 0.0 && u.peak_rss_mib >= u.rss_mib * 0.5);
    }
}
