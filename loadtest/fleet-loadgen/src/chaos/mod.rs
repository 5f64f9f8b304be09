//! The chaos suite's two halves that talk to Fleet (`cargo xtask chaos` runs everything else):
//!
//! - [`load`]: signed Meta and Twilio webhooks (messages, and status events sent out of order) and
//!   send-API requests, each retried until answered 2xx as Meta and a careful API client do, with
//!   a ledger of everything accepted;
//! - [`check`]: after the load, waits (bounded) for the fleet to drain, then judges the invariants
//!   against the ledger, Postgres, the true state of the Redis streams, `fleetctl queues --json`,
//!   the simulator's send log and the fault log, and prints a report.
//!
//! The ledger and the fault log are JSON files, so each half runs as its own process and a failed
//! run can be judged again (`fleet-loadgen chaos-check`) without running it again.

pub mod check;
pub mod load;

use serde::{Deserialize, Serialize};

/// What the load had accepted, written by [`load`] and read by [`check`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Run id (in every provider message id and contact number of the run).
    pub run_id: String,
    /// Seed of the traffic.
    pub seed: u64,
    /// Wall-clock start of the load, Unix ms.
    pub started_at_ms: u64,
    /// Wall-clock end of the load (the last first attempt), Unix ms.
    pub load_end_ms: u64,
    /// Wall-clock time the last request was settled (accepted, rejected or abandoned), Unix ms.
    pub settled_at_ms: u64,
    /// Inbound messages per second asked for.
    pub target_rate: f64,
    /// Seconds of load asked for.
    pub duration_secs: f64,
    /// Inbound messages accepted per second of load.
    pub achieved_rate: f64,
    /// `LIKE` patterns of every provider message id of the run.
    pub id_patterns: Vec<String>,
    /// `LIKE` pattern of every contact number of the run.
    pub contact_pattern: String,
    /// Tenant ids, in the order the records below index them.
    pub tenants: Vec<LedgerTenant>,
    /// Every inbound message accepted (answered 2xx), once.
    pub messages: Vec<AcceptedMessage>,
    /// Every status id with at least one status event accepted, with the highest accepted.
    pub statuses: Vec<AcceptedStatus>,
    /// Every send-API request accepted (answered 202), once per idempotency key.
    pub api: Vec<AcceptedSend>,
    /// Replies the tenants' rules and the send API owe.
    pub owed: OwedReplies,
    /// Request counts.
    pub requests: RequestCounts,
    /// Requests never answered 2xx before the give-up deadline: their events may or may not be
    /// stored, and the load did not do what it promised.
    pub abandoned: Vec<Unsettled>,
    /// Requests refused for good (a 4xx other than 408 and 429): a signed, valid request must not
    /// be refused.
    pub rejected: Vec<Unsettled>,
}

/// One tenant of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerTenant {
    /// Tenant id.
    pub id: String,
    /// Whether it sends a welcome to every new contact.
    pub welcome: bool,
}

/// One accepted inbound message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptedMessage {
    /// Index into [`Ledger::tenants`].
    pub tenant: u16,
    /// Provider message id.
    pub id: String,
    /// Contact number (digits).
    pub contact: String,
    /// Whether its text matches a keyword rule (a keyword reply is owed).
    pub keyword: bool,
}

/// A status id and the highest status accepted for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptedStatus {
    /// Index into [`Ledger::tenants`].
    pub tenant: u16,
    /// The provider message id the statuses are about.
    pub id: String,
    /// Highest status word accepted (`sent` < `delivered` < `read`).
    pub highest: String,
    /// Status events accepted for it.
    pub accepted: u32,
}

/// One accepted send-API request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptedSend {
    /// Index into [`Ledger::tenants`].
    pub tenant: u16,
    /// The `Idempotency-Key` sent.
    pub key: String,
    /// The job id answered.
    pub job_id: String,
    /// Recipient digits.
    pub to: String,
}

/// Replies owed at the end of the run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OwedReplies {
    /// One welcome per new contact of a tenant with a welcome rule.
    pub welcome: u64,
    /// One per accepted message matching a keyword rule.
    pub keyword: u64,
    /// One per accepted send-API request.
    pub api: u64,
}

impl OwedReplies {
    /// Every reply owed.
    pub fn total(&self) -> u64 {
        self.welcome + self.keyword + self.api
    }
}

/// How the requests went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Distinct requests (webhooks, redeliveries and send-API calls).
    pub requests: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    /// Requests answered 2xx.
    pub accepted: u64,
    /// Requests that needed more than one attempt.
    pub retried: u64,
    /// Most attempts one request needed.
    pub max_attempts: u32,
    /// Longest time from a request's first attempt to its acceptance, ms.
    pub longest_to_accept_ms: u64,
    /// Failed attempts by cause (`http_503`, `timeout`, `connect`, ...).
    pub failed_attempts: std::collections::BTreeMap<String, u64>,
    /// Provider redeliveries of already accepted webhooks.
    pub redeliveries: u64,
    /// Status events accepted.
    pub statuses_accepted: u64,
}

/// A request that did not end accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unsettled {
    /// `webhook`, `status`, `redelivery` or `api`.
    pub kind: String,
    /// Tenant id.
    pub tenant: String,
    /// Provider message ids (or the idempotency key) it carried.
    pub ids: Vec<String>,
    /// The last answer or error.
    pub last: String,
}

/// Status words the load sends, lowest first: a stored status must be the highest accepted.
pub const STATUS_ORDER: [&str; 3] = ["sent", "delivered", "read"];

/// Rank of a status word in [`STATUS_ORDER`] (`queued` 0, unknown words -1, `failed` 4, as the store
/// ranks them).
pub fn status_rank(word: &str) -> i32 {
    match word {
        "queued" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => -1,
    }
}

/// The fault log `cargo xtask chaos` writes: what the suite did to the fleet, and when.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultLog {
    /// Seed of the schedule.
    #[serde(default)]
    pub seed: u64,
    /// Wall-clock start of the load as the suite counts it, Unix ms: the report's times are
    /// relative to it (the ledger's own start when absent).
    #[serde(default)]
    pub t0_ms: Option<u64>,
    /// Every fault, in the order it began.
    #[serde(default)]
    pub faults: Vec<FaultRecord>,
}

/// One fault as it happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultRecord {
    /// `sigkill`, `sigstop`, `sigterm`, `redis_kill`, `postgres_outage`, `slow_provider`,
    /// `dlq_replay`.
    pub kind: String,
    /// The process it hit (`fleet-outbound-1`), or the service.
    pub target: String,
    /// The binary (`fleet-outbound`), when a Fleet process.
    #[serde(default)]
    pub role: String,
    /// When it began, Unix ms.
    pub at_ms: u64,
    /// When it ended (process restarted, resumed, service back), Unix ms.
    #[serde(default)]
    pub until_ms: Option<u64>,
}
