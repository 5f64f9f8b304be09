//! The chaos load: inbound messages at a target rate as signed Meta and Twilio webhooks (built by
//! [`crate::payload::Generator`]), status events for a pool of ids sent in shuffled order, a share
//! of provider redeliveries, and send-API requests with an `Idempotency-Key` to contacts that have
//! written in. Every request is retried, on the next ingest in turn, until it is answered 2xx (as
//! Meta retries a webhook, and a careful API client retries a send with the same key), or until
//! the give-up deadline after the load.
//!
//! Bounds: requests in flight (`max_in_flight`; past it the schedule waits, and the achieved rate
//! says so), one attempt's timeout, the retry backoff's ceiling, the give-up deadline, the
//! redelivery ring and the status pool.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::{
    AcceptedMessage, AcceptedSend, AcceptedStatus, Ledger, LedgerTenant, OwedReplies,
    RequestCounts, STATUS_ORDER, Unsettled, status_rank,
};
use crate::{
    case::Mix,
    payload::{EventMeta, Generator, TenantKeys, meta_signature, twilio_signature},
};

/// Timeout of one HTTP attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay; doubled per failed attempt up to [`RETRY_CEILING`], with full jitter.
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Largest retry delay.
pub const RETRY_CEILING: Duration = Duration::from_secs(2);
/// Accepted webhooks kept for redeliveries.
pub const REDELIVERY_RING: usize = 256;
/// Status ids receiving statuses at once; each gets two or three, in shuffled order.
pub const STATUS_POOL: usize = 512;
/// Most Meta messages in one webhook.
pub const MAX_BATCH: usize = 3;

/// Options of one load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tenants file of the fleet (secrets to sign with, API tokens).
    pub tenants_path: PathBuf,
    /// Ingest base URLs (loopback), tried in turn.
    pub targets: Vec<String>,
    /// The base URL ingest believes it is (`FLEET_PUBLIC_URL`): Twilio signs the full URL.
    pub public_url: String,
    /// Inbound messages per second.
    pub rate: f64,
    /// Length of the load.
    pub duration: Duration,
    /// Seed of the traffic.
    pub seed: u64,
    /// Status events per inbound message.
    pub status_share: f64,
    /// Send-API requests per inbound message.
    pub api_share: f64,
    /// Share of webhooks that are redeliveries of an accepted one.
    pub redelivery_share: f64,
    /// Share of messages carrying a reply keyword.
    pub keyword_share: f64,
    /// Distinct contacts per tenant (returning contacts come from these).
    pub contacts_per_tenant: usize,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// How long after the load a request still unanswered is given up.
    pub give_up: Duration,
    /// How often a progress line is printed (standard error).
    pub progress_every: Duration,
}

/// What one request books when it is accepted.
enum Booking {
    /// Inbound messages: (provider message id, contact index, contact number, keyword).
    Messages(Vec<(String, usize, String, bool)>),
    /// One status event.
    Status { id: String, word: &'static str },
    /// A redelivery: nothing new.
    Redelivery,
    /// A send-API request.
    Api { key: String, to: String },
}

/// One request, ready to send (and resend as is).
struct Outgoing {
    tenant: usize,
    kind: &'static str,
    path: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: bytes::Bytes,
}

impl Outgoing {
    fn ids(&self, booking: &Booking) -> Vec<String> {
        match booking {
            Booking::Messages(m) => m.iter().map(|(id, ..)| id.clone()).collect(),
            Booking::Status { id, .. } => vec![id.clone()],
            Booking::Redelivery => Vec::new(),
            Booking::Api { key, .. } => vec![key.clone()],
        }
    }
}

/// A status id being sent its statuses.
struct StatusPlan {
    tenant: usize,
    twilio: bool,
    id: String,
    contact: String,
    words: Vec<&'static str>,
}

/// Everything accepted so far; behind a mutex, never held across an await.
#[derive(Default)]
struct Book {
    messages: Vec<AcceptedMessage>,
    contacts: Vec<Vec<String>>,
    contacts_seen: Vec<HashSet<usize>>,
    keyword: u64,
    statuses: HashMap<String, AcceptedStatus>,
    api: Vec<AcceptedSend>,
    counts: RequestCounts,
    abandoned: Vec<Unsettled>,
    rejected: Vec<Unsettled>,
    ring: VecDeque<Arc<Outgoing>>,
    in_flight: u64,
    retrying: u64,
}

struct Ctx {
    client: reqwest::Client,
    targets: Vec<String>,
    tenant_ids: Vec<String>,
    book: Mutex<Book>,
    /// Unix ms after which a failed request is given up; 0 while the load runs.
    give_up_at_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the load and returns its ledger.
pub async fn run(opts: LoadOptions) -> Result<Ledger> {
    if opts.targets.is_empty() {
        bail!("at least one --target is needed");
    }
    for t in &opts.targets {
        crate::run::ensure_loopback(t)?;
    }
    if !(opts.rate > 0.0 && opts.rate <= crate::case::MAX_RATE) {
        bail!("--rate must be in (0, {}]", crate::case::MAX_RATE);
    }
    if opts.duration > crate::case::MAX_DURATION {
        bail!("--duration is longer than {:?}", crate::case::MAX_DURATION);
    }
    let tenants = fleet_runtime::Tenants::load(&opts.tenants_path)
        .with_context(|| format!("cannot load tenants {}", opts.tenants_path.display()))?;
    let keys = TenantKeys::from_tenants(&tenants);
    if keys.is_empty() {
        bail!("the tenants file has no tenant");
    }
    let tokens: Vec<String> = tenants
        .iter()
        .map(|t| t.api_token.expose_secret().to_owned())
        .collect();
    let run_id = format!("{:08x}", StdRng::seed_from_u64(opts.seed).random::<u32>());
    let mix = Mix {
        status: 0.0,
        redelivery: 0.0,
        keyword: opts.keyword_share,
        max_batch: MAX_BATCH,
        contacts_per_tenant: opts.contacts_per_tenant,
        ..Mix::default()
    };
    let mut generator = Generator::new(keys.clone(), mix, &run_id, &opts.public_url, opts.seed);
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .pool_max_idle_per_host(opts.max_in_flight)
        .tcp_nodelay(true)
        .build()?;
    let ctx = Arc::new(Ctx {
        client,
        targets: opts
            .targets
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect(),
        tenant_ids: keys.iter().map(|k| k.id.clone()).collect(),
        book: Mutex::new(Book {
            contacts: vec![Vec::new(); keys.len()],
            contacts_seen: vec![HashSet::new(); keys.len()],
            ..Book::default()
        }),
        give_up_at_ms: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(opts.max_in_flight));
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xc4a05);
    let started_at_ms = now_ms();
    let start = Instant::now();
    let total = opts.duration.as_secs_f64();
    // Three open-loop schedules, merged: messages, status events, send-API requests.
    let (mut t_msg, mut t_status, mut t_api) = (0.0f64, 0.5 / opts.rate, 1.0 / opts.rate);
    let status_rate = opts.rate * opts.status_share;
    let api_rate = opts.rate * opts.api_share;
    let mut pool: Vec<StatusPlan> = Vec::new();
    let (mut next_status, mut next_api) = (0u64, 0u64);
    let mut next_progress = opts.progress_every.as_secs_f64();
    let mut last_progress = (0.0f64, 0usize);
    loop {
        let t = t_msg.min(t_status).min(t_api);
        if t >= total {
            break;
        }
        let intended = start + Duration::from_secs_f64(t);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        if t >= next_progress {
            next_progress += opts.progress_every.as_secs_f64();
            last_progress = progress(&ctx, t, last_progress);
        }
        let (out, booking) = if t == t_msg {
            if opts.redelivery_share > 0.0 && rng.random_bool(opts.redelivery_share.min(1.0)) {
                let old = {
                    let book = ctx.book.lock().expect("book lock");
                    (!book.ring.is_empty())
                        .then(|| book.ring[rng.random_range(0..book.ring.len())].clone())
                };
                t_msg += 1.0 / opts.rate;
                match old {
                    Some(old) => (old, Booking::Redelivery),
                    None => continue,
                }
            } else {
                let Some(req) = generator.next_request(MAX_BATCH) else {
                    bail!("no tenant can take a webhook");
                };
                let mut messages = Vec::new();
                for e in &req.events {
                    if let EventMeta::Message {
                        id,
                        contact,
                        keyword,
                    } = e
                    {
                        messages.push((
                            id.clone(),
                            *contact,
                            generator.contact_number(*contact),
                            *keyword,
                        ));
                    }
                }
                t_msg += messages.len().max(1) as f64 / opts.rate;
                let out = Outgoing {
                    tenant: req.tenant,
                    kind: "webhook",
                    path: req.path.clone(),
                    content_type: req.content_type,
                    headers: vec![(req.signature.0, req.signature.1.clone())],
                    body: req.body.clone(),
                };
                (Arc::new(out), Booking::Messages(messages))
            }
        } else if t == t_status {
            t_status += 1.0 / status_rate.max(1e-9);
            if status_rate <= 0.0 {
                t_status = f64::INFINITY;
                continue;
            }
            match next_status_event(
                &mut pool,
                &mut next_status,
                &mut rng,
                &keys,
                &generator,
                &ctx,
                &run_id,
                &opts.public_url,
            ) {
                Some(pair) => pair,
                None => continue,
            }
        } else {
            t_api += 1.0 / api_rate.max(1e-9);
            if api_rate <= 0.0 {
                t_api = f64::INFINITY;
                continue;
            }
            match next_api_send(&mut next_api, &mut rng, &keys, &tokens, &ctx, &run_id) {
                Some(pair) => pair,
                None => continue,
            }
        };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let ctx2 = ctx.clone();
        let first_target = rng.random_range(0..ctx.targets.len());
        let jitter_seed = rng.random::<u64>();
        ctx.book.lock().expect("book lock").in_flight += 1;
        tokio::spawn(async move {
            deliver(&ctx2, &out, booking, first_target, jitter_seed).await;
            ctx2.book.lock().expect("book lock").in_flight -= 1;
            drop(permit);
        });
    }
    let load_end_ms = now_ms();
    let load_secs = start.elapsed().as_secs_f64();
    ctx.give_up_at_ms.store(
        load_end_ms + opts.give_up.as_millis() as u64,
        Ordering::Relaxed,
    );
    eprintln!(
        "chaos-load: load over after {load_secs:.1} s; waiting for the requests still retrying (at most {} s)",
        opts.give_up.as_secs()
    );
    let mut every = tokio::time::interval(opts.progress_every);
    every.tick().await;
    let all = u32::try_from(opts.max_in_flight).unwrap_or(u32::MAX);
    let waited = {
        let acquire = permits.acquire_many(all);
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                p = &mut acquire => break p,
                _ = every.tick() => {
                    last_progress = progress(&ctx, start.elapsed().as_secs_f64(), last_progress);
                }
            }
        }
    };
    drop(waited);
    let settled_at_ms = now_ms();
    let mut book = ctx.book.lock().expect("book lock");
    let mut statuses: Vec<AcceptedStatus> = book.statuses.drain().map(|(_, s)| s).collect();
    statuses.sort_by(|a, b| a.id.cmp(&b.id));
    let welcome = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.welcome)
        .map(|(i, _)| book.contacts_seen[i].len() as u64)
        .sum();
    let owed = OwedReplies {
        welcome,
        keyword: book.keyword,
        api: book.api.len() as u64,
    };
    let achieved_rate = book.messages.len() as f64 / load_secs.max(1e-9);
    Ok(Ledger {
        run_id,
        seed: opts.seed,
        started_at_ms,
        load_end_ms,
        settled_at_ms,
        target_rate: opts.rate,
        duration_secs: total,
        achieved_rate,
        id_patterns: generator.id_patterns(),
        contact_pattern: generator.contact_pattern(),
        tenants: keys
            .iter()
            .map(|k| LedgerTenant {
                id: k.id.clone(),
                welcome: k.welcome,
            })
            .collect(),
        messages: std::mem::take(&mut book.messages),
        statuses,
        api: std::mem::take(&mut book.api),
        owed,
        requests: std::mem::take(&mut book.counts),
        abandoned: std::mem::take(&mut book.abandoned),
        rejected: std::mem::take(&mut book.rejected),
    })
}

/// Prints one progress line; returns the (time, messages) it printed, for the next rate.
fn progress(ctx: &Ctx, t: f64, last: (f64, usize)) -> (f64, usize) {
    let book = ctx.book.lock().expect("book lock");
    let n = book.messages.len();
    let rate = (n - last.1.min(n)) as f64 / (t - last.0).max(1e-3);
    let failures: Vec<String> = book
        .counts
        .failed_attempts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    eprintln!(
        "chaos-load: t={t:>5.0}s messages {n} ({rate:.0}/s) statuses {} api {} | in flight {} retrying {} | failed attempts: {}",
        book.counts.statuses_accepted,
        book.api.len(),
        book.in_flight,
        book.retrying,
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        }
    );
    (t, n)
}

/// Sends one request until it is accepted, refused for good, or given up; books the outcome.
async fn deliver(
    ctx: &Ctx,
    out: &Outgoing,
    booking: Booking,
    first_target: usize,
    jitter_seed: u64,
) {
    let first = Instant::now();
    let mut rng = StdRng::seed_from_u64(jitter_seed);
    let mut attempt = 0u32;
    let mut retrying = false;
    let last = loop {
        attempt += 1;
        let base = &ctx.targets[(first_target + attempt as usize - 1) % ctx.targets.len()];
        let mut req = ctx
            .client
            .post(format!("{base}{}", out.path))
            .header("content-type", out.content_type)
            .body(out.body.clone());
        for (k, v) in &out.headers {
            req = req.header(*k, v);
        }
        let cause = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let job_id = match &booking {
                    Booking::Api { .. } => match resp.json::<serde_json::Value>().await {
                        Ok(v) => v["id"].as_str().map(str::to_owned),
                        Err(_) => None,
                    },
                    _ => {
                        let _ = resp.bytes().await;
                        Some(String::new())
                    }
                };
                match job_id {
                    Some(job_id) => {
                        book_accepted(ctx, out, booking, job_id, attempt, first, retrying);
                        return;
                    }
                    // Accepted, but the answer was lost: the same key gets the same id again.
                    None => "unreadable_answer".to_owned(),
                }
            }
            Ok(resp) => {
                let code = resp.status().as_u16();
                let _ = resp.bytes().await;
                if (400..500).contains(&code) && code != 408 && code != 429 {
                    let mut book = ctx.book.lock().expect("book lock");
                    book.counts.requests += 1;
                    book.counts.attempts += u64::from(attempt);
                    if retrying {
                        book.retrying -= 1;
                    }
                    book.rejected.push(Unsettled {
                        kind: out.kind.to_owned(),
                        tenant: ctx.tenant_ids[out.tenant].clone(),
                        ids: out.ids(&booking),
                        last: format!("http_{code}"),
                    });
                    return;
                }
                format!("http_{code}")
            }
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(e) if e.is_connect() => "connect".to_owned(),
            Err(_) => "transport".to_owned(),
        };
        {
            let mut book = ctx.book.lock().expect("book lock");
            *book
                .counts
                .failed_attempts
                .entry(cause.clone())
                .or_default() += 1;
            if !retrying {
                retrying = true;
                book.retrying += 1;
            }
        }
        let give_up_at = ctx.give_up_at_ms.load(Ordering::Relaxed);
        if give_up_at != 0 && now_ms() >= give_up_at {
            break cause;
        }
        let ceiling = RETRY_INITIAL
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(RETRY_CEILING);
        let delay = ceiling.mul_f64(rng.random_range(0.5..=1.0));
        tokio::time::sleep(delay).await;
    };
    let mut book = ctx.book.lock().expect("book lock");
    book.counts.requests += 1;
    book.counts.attempts += u64::from(attempt);
    book.retrying -= 1;
    book.abandoned.push(Unsettled {
        kind: out.kind.to_owned(),
        tenant: ctx.tenant_ids[out.tenant].clone(),
        ids: out.ids(&booking),
        last,
    });
}

fn book_accepted(
    ctx: &Ctx,
    out: &Outgoing,
    booking: Booking,
    job_id: String,
    attempts: u32,
    first: Instant,
    retrying: bool,
) {
    let took_ms = first.elapsed().as_millis() as u64;
    let mut book = ctx.book.lock().expect("book lock");
    let c = &mut book.counts;
    c.requests += 1;
    c.accepted += 1;
    c.attempts += u64::from(attempts);
    c.retried += u64::from(attempts > 1);
    c.max_attempts = c.max_attempts.max(attempts);
    c.longest_to_accept_ms = c.longest_to_accept_ms.max(took_ms);
    if retrying {
        book.retrying -= 1;
    }
    let tenant = out.tenant as u16;
    match booking {
        Booking::Messages(messages) => {
            for (id, contact, number, keyword) in messages {
                if book.contacts_seen[out.tenant].insert(contact) {
                    book.contacts[out.tenant].push(number.clone());
                }
                book.keyword += u64::from(keyword);
                book.messages.push(AcceptedMessage {
                    tenant,
                    id,
                    contact: number,
                    keyword,
                });
            }
            if out.kind == "webhook" {
                if book.ring.len() == REDELIVERY_RING {
                    book.ring.pop_front();
                }
                // The ring holds the very bytes, so a redelivery is byte-identical.
                book.ring.push_back(Arc::new(Outgoing {
                    tenant: out.tenant,
                    kind: "redelivery",
                    path: out.path.clone(),
                    content_type: out.content_type,
                    headers: out.headers.clone(),
                    body: out.body.clone(),
                }));
            }
        }
        Booking::Status { id, word } => {
            book.counts.statuses_accepted += 1;
            let entry = book.statuses.entry(id.clone()).or_insert(AcceptedStatus {
                tenant,
                id,
                highest: word.to_owned(),
                accepted: 0,
            });
            entry.accepted += 1;
            if status_rank(word) > status_rank(&entry.highest) {
                entry.highest = word.to_owned();
            }
        }
        Booking::Redelivery => book.counts.redeliveries += 1,
        Booking::Api { key, to } => book.api.push(AcceptedSend {
            tenant,
            key,
            job_id,
            to,
        }),
    }
}

/// The next status event: a new id with two or three statuses in shuffled order, or the next
/// status of an id under way. None when no contact wrote in yet.
#[allow(clippy::too_many_arguments)]
fn next_status_event(
    pool: &mut Vec<StatusPlan>,
    next_status: &mut u64,
    rng: &mut StdRng,
    keys: &[TenantKeys],
    generator: &Generator,
    ctx: &Ctx,
    run_id: &str,
    public_url: &str,
) -> Option<(Arc<Outgoing>, Booking)> {
    if pool.len() < STATUS_POOL && (pool.is_empty() || rng.random_bool(0.4)) {
        let tenant = rng.random_range(0..keys.len());
        let contact = {
            let book = ctx.book.lock().expect("book lock");
            let c = &book.contacts[tenant];
            if c.is_empty() {
                return None;
            }
            c[rng.random_range(0..c.len())].clone()
        };
        *next_status += 1;
        let twilio =
            keys[tenant].twilio.is_some() && (keys[tenant].meta.is_none() || rng.random_bool(0.25));
        let id = if twilio {
            format!("SM{run_id}x{:023}", *next_status)
        } else {
            format!("wamid.LG{run_id}.x{}", *next_status)
        };
        let mut words = STATUS_ORDER.to_vec();
        words.shuffle(rng);
        words.truncate(rng.random_range(2..=3));
        pool.push(StatusPlan {
            tenant,
            twilio,
            id,
            contact,
            words,
        });
    }
    let _ = generator;
    let i = rng.random_range(0..pool.len());
    let word = pool[i]
        .words
        .pop()
        .expect("plans in the pool have words left");
    let plan = if pool[i].words.is_empty() {
        pool.swap_remove(i)
    } else {
        let p = &pool[i];
        StatusPlan {
            tenant: p.tenant,
            twilio: p.twilio,
            id: p.id.clone(),
            contact: p.contact.clone(),
            words: Vec::new(),
        }
    };
    let out = if plan.twilio {
        twilio_status(&keys[plan.tenant], &plan, word, public_url)
    } else {
        meta_status(&keys[plan.tenant], &plan, word)
    };
    Some((Arc::new(out), Booking::Status { id: plan.id, word }))
}

fn meta_status(tenant: &TenantKeys, plan: &StatusPlan, word: &str) -> Outgoing {
    let (secret, phone_id) = tenant.meta.clone().expect("a Meta tenant");
    let now = chrono::Utc::now().timestamp();
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"WABA{phone_id}","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1555{phone_id}","phone_number_id":"{phone_id}"}},"statuses":[{{"id":"{id}","status":"{word}","timestamp":"{now}","recipient_id":"{contact}","conversation":{{"id":"c-{id}","origin":{{"type":"service"}}}},"pricing":{{"billable":true,"pricing_model":"CBP","category":"service"}}}}]}},"field":"messages"}}]}}]}}"#,
        id = plan.id,
        contact = plan.contact,
    );
    let signature = meta_signature(secret.as_bytes(), body.as_bytes());
    Outgoing {
        tenant: plan.tenant,
        kind: "status",
        path: format!("/webhooks/meta/{}", tenant.id),
        content_type: "application/json",
        headers: vec![("x-hub-signature-256", signature)],
        body: body.into(),
    }
}

fn twilio_status(tenant: &TenantKeys, plan: &StatusPlan, word: &str, public_url: &str) -> Outgoing {
    let (sid, token, from) = tenant.twilio.clone().expect("a Twilio tenant");
    let path = format!("/webhooks/twilio/{}", tenant.id);
    let url = format!("{}{path}", public_url.trim_end_matches('/'));
    let params: Vec<(&str, String)> = vec![
        ("AccountSid", sid),
        ("ApiVersion", "2010-04-01".into()),
        ("MessageSid", plan.id.clone()),
        ("SmsSid", plan.id.clone()),
        ("MessageStatus", word.into()),
        ("SmsStatus", word.into()),
        ("ChannelPrefix", "whatsapp".into()),
        ("From", from),
        ("To", format!("whatsapp:+{}", plan.contact)),
    ];
    let signature = twilio_signature(token.as_bytes(), &url, &params);
    let body = serde_urlencoded::to_string(&params).expect("strings always encode");
    Outgoing {
        tenant: plan.tenant,
        kind: "status",
        path,
        content_type: "application/x-www-form-urlencoded",
        headers: vec![("x-twilio-signature", signature)],
        body: body.into(),
    }
}

/// The next send-API request, to a contact of the tenant that wrote in (inside the customer-service
/// window), at a random priority. None when no contact wrote in yet.
fn next_api_send(
    next_api: &mut u64,
    rng: &mut StdRng,
    keys: &[TenantKeys],
    tokens: &[String],
    ctx: &Ctx,
    run_id: &str,
) -> Option<(Arc<Outgoing>, Booking)> {
    let tenant = rng.random_range(0..keys.len());
    let to = {
        let book = ctx.book.lock().expect("book lock");
        let c = &book.contacts[tenant];
        if c.is_empty() {
            return None;
        }
        c[rng.random_range(0..c.len())].clone()
    };
    *next_api += 1;
    let key = format!("chaos-{run_id}-{}", *next_api);
    let provider = if keys[tenant].twilio.is_some()
        && (keys[tenant].meta.is_none() || rng.random_bool(0.25))
    {
        "twilio"
    } else {
        "meta"
    };
    let priority = ["high", "normal", "normal", "normal", "low"][rng.random_range(0..5)];
    let body = serde_json::json!({
        "to": format!("+{to}"),
        "text": format!("Chaos run {run_id}: API message {}", *next_api),
        "priority": priority,
        "provider": provider,
    })
    .to_string();
    let out = Outgoing {
        tenant,
        kind: "api",
        path: "/v1/messages".into(),
        content_type: "application/json",
        headers: vec![
            ("authorization", format!("Bearer {}", tokens[tenant])),
            ("idempotency-key", key.clone()),
        ],
        body: body.into(),
    };
    Some((Arc::new(out), Booking::Api { key, to }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranks_order_the_words() {
        let ranks: Vec<i32> = STATUS_ORDER.iter().map(|w| status_rank(w)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert_eq!(status_rank("bogus"), -1);
    }
}
