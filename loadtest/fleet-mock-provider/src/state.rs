//! The simulator's memory: counters, remembered keys, per-sender limiters and the send log, all
//! bounded.
//!
//! One `std::sync::Mutex` guards it; every critical section is a few map operations and never
//! awaits, so it is cheaper than an async lock at the request rates a load test reaches.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::Rng;
use serde::Serialize;

use crate::config::{Fault, MockConfig};

/// Bound on scripted faults waiting to be answered.
const MAX_SCRIPTED_FAULTS: usize = 100_000;
/// Bound on senders with their own counters and limiter.
const MAX_SENDERS: usize = 10_000;
/// Bound on recipients listed with their violations in `/stats`.
const MAX_LISTED_RECIPIENTS: usize = 1_000;

/// What the handler learned from a request.
pub(crate) struct Parsed {
    pub(crate) sender: String,
    pub(crate) recipient: String,
    pub(crate) content: String,
    pub(crate) key: Option<String>,
    pub(crate) auth_ok: bool,
    pub(crate) twilio: bool,
}

/// How the simulator answers one request.
pub(crate) enum Verdict {
    /// Accepted; `seq` is its place in the send log (none when the log is full).
    Delivered {
        message_id: String,
        seq: Option<u64>,
    },
    Auth,
    RateLimited {
        retry_after_secs: Option<u64>,
    },
    SenderLimit,
    RecipientLimit,
    ServerError,
    Permanent,
    Timeout,
}

/// Counters of one sender.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SenderStats {
    /// Messages accepted.
    pub deliveries: u64,
    /// Accepted messages whose key (idempotency key, or recipient and content) was accepted before.
    pub duplicates: u64,
    /// Requests over the sender's rate.
    pub sender_violations: u64,
    /// Requests to a recipient sooner than the recipient interval.
    pub recipient_violations: u64,
    /// Milliseconds since the simulator started (or was reset) of the first accepted message.
    pub first_delivery_ms: Option<u64>,
    /// Milliseconds since the simulator started (or was reset) of the last accepted message.
    pub last_delivery_ms: Option<u64>,
}

/// Requests answered with an error, by cause.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rejected {
    /// Wrong or missing credentials, or an injected auth fault.
    pub auth: u64,
    /// Injected 429s.
    pub rate_limited: u64,
    /// Requests refused by the sender limit.
    pub sender_limit: u64,
    /// Requests refused by the recipient interval.
    pub recipient_limit: u64,
    /// Injected 5xx.
    pub server_error: u64,
    /// Injected permanent errors.
    pub permanent: u64,
    /// Injected hangs.
    pub timeout: u64,
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Send requests received (well-formed ones).
    pub requests: u64,
    /// Messages accepted.
    pub deliveries: u64,
    /// Accepted messages that were accepted before (by idempotency key, else recipient and content).
    pub duplicates: u64,
    /// Requests answered with an error, by cause.
    pub rejected: Rejected,
    /// Requests over the sender rate, whether refused or (with `enforce_limits` off) accepted.
    pub sender_violations: u64,
    /// Requests sooner than the recipient interval, whether refused or accepted.
    pub recipient_violations: u64,
    /// Per-sender counters.
    pub senders: BTreeMap<String, SenderStats>,
    /// Recipients with at least one violation and their count (at most 1000 listed).
    pub recipients_with_violations: BTreeMap<String, u64>,
    /// Accepted messages whose key was not remembered because `max_tracked_keys` was reached.
    pub untracked: u64,
    /// Milliseconds since the simulator started or was reset.
    pub uptime_ms: u64,
    /// Accepted sends in the send log (`GET /sends`).
    pub send_log_len: u64,
    /// Accepted sends not logged because `max_send_log` was reached.
    pub send_log_dropped: u64,
}

/// One accepted send, as `GET /sends` lists it: enough to count duplicates by idempotency key and
/// to line each send up with a fault log and the sender's own record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SendRecord {
    /// Place in the log, from 0, in the order the sends were accepted.
    pub seq: u64,
    /// The `Idempotency-Key` header (or Meta `biz_opaque_callback_data`); Fleet sends its job id.
    pub key: Option<String>,
    /// `meta` or `twilio`.
    pub provider: &'static str,
    /// Phone number id (Meta) or `From` (Twilio).
    pub sender: String,
    /// Recipient digits.
    pub recipient: String,
    /// Wall-clock time of the acceptance, Unix milliseconds.
    pub accepted_at_ms: u64,
    /// The provider message id answered.
    pub message_id: String,
    /// Whether the answer was handed to the connection; false when the client hung up before it
    /// (it then never learned the message id), or while the answer is still being delayed.
    pub answered: bool,
}

/// One page of the send log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SendPage {
    /// Records from the requested position, in order.
    pub sends: Vec<SendRecord>,
    /// Position to ask for next (`from`).
    pub next: u64,
    /// Records in the log.
    pub total: u64,
    /// Accepted sends not logged because the log was full.
    pub dropped: u64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct State {
    config: MockConfig,
    script: VecDeque<Fault>,
    stats: Stats,
    seen: HashSet<u64>,
    last_to_recipient: HashMap<u64, Instant>,
    buckets: HashMap<String, Bucket>,
    started: Instant,
    next_id: u64,
    sends: Vec<SendRecord>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

impl Inner {
    pub(crate) fn new(config: MockConfig) -> Self {
        Inner {
            state: Mutex::new(State {
                config,
                script: VecDeque::new(),
                stats: Stats::default(),
                seen: HashSet::new(),
                last_to_recipient: HashMap::new(),
                buckets: HashMap::new(),
                started: Instant::now(),
                next_id: 0,
                sends: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still meaningful; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        let s = self.lock();
        let mut stats = s.stats.clone();
        stats.uptime_ms = s.started.elapsed().as_millis() as u64;
        stats.send_log_len = s.sends.len() as u64;
        stats
    }

    /// Up to `limit` records of the send log from position `from`.
    pub(crate) fn sends(&self, from: u64, limit: usize) -> SendPage {
        let s = self.lock();
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(s.sends.len());
        let end = start.saturating_add(limit).min(s.sends.len());
        SendPage {
            sends: s.sends[start..end].to_vec(),
            next: end as u64,
            total: s.sends.len() as u64,
            dropped: s.stats.send_log_dropped,
        }
    }

    /// Marks send `seq` as answered (its answer was handed to the connection).
    pub(crate) fn answered(&self, seq: u64) {
        let mut s = self.lock();
        if let Some(r) = usize::try_from(seq).ok().and_then(|i| s.sends.get_mut(i)) {
            r.answered = true;
        }
    }

    /// How long to hold a request before deciding it, when the configuration says so.
    pub(crate) fn hold(&self) -> Option<Duration> {
        let s = self.lock();
        s.config
            .hold_before_accept
            .then(|| s.config.latency.sample(&mut rand::rng()))
    }

    pub(crate) fn reset(&self) {
        let mut s = self.lock();
        s.script.clear();
        s.stats = Stats::default();
        s.seen.clear();
        s.last_to_recipient.clear();
        s.buckets.clear();
        s.sends.clear();
        s.started = Instant::now();
    }

    pub(crate) fn config(&self) -> MockConfig {
        self.lock().config.clone()
    }

    pub(crate) fn set_config(&self, config: MockConfig) {
        self.lock().config = config;
    }

    pub(crate) fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        let mut s = self.lock();
        for f in faults {
            if s.script.len() >= MAX_SCRIPTED_FAULTS {
                break;
            }
            s.script.push_back(f);
        }
    }

    /// Decides the answer to one request and how long to wait before giving it.
    pub(crate) fn decide(&self, req: &Parsed) -> (Verdict, Duration) {
        let mut rng = rand::rng();
        let mut guard = self.lock();
        let s = &mut *guard;
        let now = Instant::now();
        s.stats.requests += 1;
        // Held requests waited out their latency before the decision (`hold`).
        let latency = if s.config.hold_before_accept {
            Duration::ZERO
        } else {
            s.config.latency.sample(&mut rng)
        };
        let hang = Duration::from_millis(s.config.timeout_hang_ms);

        // Bad credentials are refused before anything else, and do not use up a scripted fault.
        if !req.auth_ok {
            s.stats.rejected.auth += 1;
            return (Verdict::Auth, latency);
        }
        let fault = s.script.pop_front().unwrap_or_else(|| {
            let f = &s.config.faults;
            if rng.random_bool(f.rate_limited.clamp(0.0, 1.0)) {
                Fault::RateLimited {
                    retry_after_secs: s.config.retry_after_secs,
                }
            } else if rng.random_bool(f.server_error.clamp(0.0, 1.0)) {
                Fault::ServerError
            } else if rng.random_bool(f.permanent.clamp(0.0, 1.0)) {
                Fault::Permanent
            } else if rng.random_bool(f.timeout.clamp(0.0, 1.0)) {
                Fault::Timeout
            } else {
                Fault::Ok
            }
        });
        if fault == Fault::Auth {
            s.stats.rejected.auth += 1;
            return (Verdict::Auth, latency);
        }
        match fault {
            Fault::Ok | Fault::Auth => {}
            Fault::RateLimited { retry_after_secs } => {
                s.stats.rejected.rate_limited += 1;
                return (Verdict::RateLimited { retry_after_secs }, latency);
            }
            Fault::ServerError => {
                s.stats.rejected.server_error += 1;
                return (Verdict::ServerError, latency);
            }
            Fault::Permanent => {
                s.stats.rejected.permanent += 1;
                return (Verdict::Permanent, latency);
            }
            Fault::Timeout => {
                s.stats.rejected.timeout += 1;
                return (Verdict::Timeout, hang);
            }
        }

        let enforce = s.config.enforce_limits;
        let track_sender =
            s.stats.senders.contains_key(&req.sender) || s.stats.senders.len() < MAX_SENDERS;

        // Sender rate: a token bucket refilled at `sender_rate`, holding at most `sender_burst`.
        let mut sender_violation = false;
        if let (Some(rate), true) = (s.config.sender_rate, track_sender) {
            let burst = s.config.sender_burst.unwrap_or(rate.max(1.0));
            let bucket = s.buckets.entry(req.sender.clone()).or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
            bucket.last = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
            } else {
                sender_violation = true;
            }
        }
        // Recipient interval: the time since the last message of this sender to this recipient.
        let mut recipient_violation = false;
        if let Some(interval_ms) = s.config.recipient_interval_ms {
            let pair = hash_of(&[&req.sender, &req.recipient]);
            let interval = Duration::from_millis(interval_ms);
            match s.last_to_recipient.get(&pair) {
                Some(last) if now.saturating_duration_since(*last) < interval => {
                    recipient_violation = true
                }
                _ => {}
            }
            let refused = enforce && (recipient_violation || sender_violation);
            if !refused
                && (s.last_to_recipient.len() < s.config.max_tracked_keys
                    || s.last_to_recipient.contains_key(&pair))
            {
                s.last_to_recipient.insert(pair, now);
            }
        }
        let sender = if track_sender {
            Some(s.stats.senders.entry(req.sender.clone()).or_default())
        } else {
            None
        };
        if let Some(st) = sender {
            st.sender_violations += u64::from(sender_violation);
            st.recipient_violations += u64::from(recipient_violation);
        }
        s.stats.sender_violations += u64::from(sender_violation);
        if recipient_violation {
            s.stats.recipient_violations += 1;
            let listed = s.stats.recipients_with_violations.len() < MAX_LISTED_RECIPIENTS;
            if let Some(n) = s.stats.recipients_with_violations.get_mut(&req.recipient) {
                *n += 1;
            } else if listed {
                s.stats
                    .recipients_with_violations
                    .insert(req.recipient.clone(), 1);
            }
        }
        if enforce && sender_violation {
            s.stats.rejected.sender_limit += 1;
            return (Verdict::SenderLimit, latency);
        }
        if enforce && recipient_violation {
            s.stats.rejected.recipient_limit += 1;
            return (Verdict::RecipientLimit, latency);
        }

        // Delivered: count it, and count it as a duplicate when its key was delivered before.
        let key = match &req.key {
            Some(k) => hash_of(&["key", &req.sender, k]),
            None => hash_of(&["content", &req.sender, &req.recipient, &req.content]),
        };
        let duplicate = if s.seen.contains(&key) {
            true
        } else {
            if s.seen.len() < s.config.max_tracked_keys {
                s.seen.insert(key);
            } else {
                s.stats.untracked += 1;
            }
            false
        };
        let at_ms = now.saturating_duration_since(s.started).as_millis() as u64;
        s.stats.deliveries += 1;
        s.stats.duplicates += u64::from(duplicate);
        if let Some(st) =
            track_sender.then(|| s.stats.senders.entry(req.sender.clone()).or_default())
        {
            st.deliveries += 1;
            st.duplicates += u64::from(duplicate);
            st.first_delivery_ms.get_or_insert(at_ms);
            st.last_delivery_ms = Some(at_ms);
        }
        s.next_id += 1;
        let message_id = if req.twilio {
            format!("SM{:032x}", s.next_id)
        } else {
            format!("wamid.MOCK{:016x}", s.next_id)
        };
        let seq = if s.sends.len() < s.config.max_send_log {
            let seq = s.sends.len() as u64;
            s.sends.push(SendRecord {
                seq,
                key: req.key.clone(),
                provider: if req.twilio { "twilio" } else { "meta" },
                sender: req.sender.clone(),
                recipient: req.recipient.clone(),
                accepted_at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                message_id: message_id.clone(),
                answered: false,
            });
            Some(seq)
        } else {
            s.stats.send_log_dropped += 1;
            None
        };
        (Verdict::Delivered { message_id, seq }, latency)
    }
}
