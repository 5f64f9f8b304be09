//! Ingest's metric names and the helpers that record them, so names and labels live in one place.
//!
//! Labels are bounded: `provider` (`meta`, `twilio`, or `api` for the send API), `outcome`,
//! `reason` (a fixed set of words from the rejection sites), `queue`; never a tenant-supplied
//! string, id or phone number.

use std::time::Duration;

/// Requests answered, by `provider` and `outcome`.
pub const REQUESTS_TOTAL: &str = "fleet_ingest_requests_total";
/// Request handling time, by `provider` and `outcome`.
pub const REQUEST_DURATION_SECONDS: &str = "fleet_ingest_request_duration_seconds";
/// Request body bytes read, by `provider`.
pub const REQUEST_BODY_BYTES_TOTAL: &str = "fleet_ingest_request_body_bytes_total";
/// Requests refused, by `provider` and `reason`.
pub const REJECTED_TOTAL: &str = "fleet_ingest_rejected_total";
/// Events (messages, statuses, send requests) handed to a queue, by `provider` and `outcome`
/// (`enqueued` or `duplicate`).
pub const EVENTS_TOTAL: &str = "fleet_ingest_events_total";
/// Events per `enqueue_batch` call of the group commit.
pub const ENQUEUE_BATCH_SIZE: &str = "fleet_ingest_enqueue_batch_size";
/// Meta changes of fields other than `messages`, answered 200 and not enqueued.
pub const OTHER_FIELDS_TOTAL: &str = "fleet_ingest_other_fields_total";
/// Status events with a status word Fleet does not track, answered 200 and not enqueued.
pub const IGNORED_STATUSES_TOTAL: &str = "fleet_ingest_ignored_statuses_total";
/// Webhook changes (Meta) or requests (Twilio) for another account or business number than the
/// URL's tenant: skipped (Meta, answered 200) or refused with 403 (Twilio), by `provider`.
pub const MISROUTED_TOTAL: &str = "fleet_ingest_misrouted_total";
/// Messages, statuses or changes of a verified Meta body that cannot be read: skipped while the
/// rest of the body is enqueued, by `provider`.
pub const MALFORMED_ITEMS_TOTAL: &str = "fleet_ingest_malformed_items_total";
/// Meta subscription handshakes, by `outcome`.
pub const HANDSHAKES_TOTAL: &str = "fleet_ingest_handshakes_total";
/// The last backlog read of each queue, by `queue`.
pub const QUEUE_BACKLOG_ENTRIES: &str = "fleet_ingest_queue_backlog_entries";
/// 1 while Redis is unreachable (webhooks answer 503), 0 otherwise.
pub const REDIS_UNAVAILABLE: &str = "fleet_ingest_redis_unavailable";

/// Replica waits after a group commit (`durability = "replicas"`), by `outcome` (`acked`,
/// `timeout`, `error`).
pub const REPLICA_WAITS_TOTAL: &str = "fleet_ingest_replica_waits_total";
/// Time a group commit waited for its replicas.
pub const REPLICA_WAIT_DURATION_SECONDS: &str = "fleet_ingest_replica_wait_duration_seconds";
/// Replicas a group commit waits for (`wait_replicas`; 0 with `durability = "default"`).
pub const WAIT_REPLICAS: &str = "fleet_ingest_wait_replicas";
/// 1 when the Redis server keeps an AOF (`appendonly yes`), as read at start.
pub const REDIS_APPENDONLY: &str = "fleet_ingest_redis_appendonly";
/// 1 when the Redis server fsyncs its AOF before answering each write (`appendfsync always`), as
/// read at start: only then does an answered webhook survive a crash of the Redis host.
pub const REDIS_APPENDFSYNC_ALWAYS: &str = "fleet_ingest_redis_appendfsync_always";

/// Connections open now.
pub const OPEN_CONNECTIONS: &str = "fleet_ingest_open_connections";
/// The connection cap (`[ingest] max_connections`).
pub const MAX_CONNECTIONS: &str = "fleet_ingest_max_connections";
/// Times a new connection had to wait because the cap was reached.
pub const CONNECTION_LIMIT_WAITS_TOTAL: &str = "fleet_ingest_connection_limit_waits_total";

/// Describes every metric once, so `/metrics` carries HELP lines.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered by ingest, by provider and outcome."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from request start to answer, by provider and outcome."
    );
    metrics::describe_counter!(
        REQUEST_BODY_BYTES_TOTAL,
        metrics::Unit::Bytes,
        "Request body bytes read."
    );
    metrics::describe_counter!(REJECTED_TOTAL, "Requests refused, by provider and reason.");
    metrics::describe_counter!(
        EVENTS_TOTAL,
        "Events handed to a queue, by provider and outcome."
    );
    metrics::describe_histogram!(
        ENQUEUE_BATCH_SIZE,
        "Events per enqueue call (concurrent requests share one)."
    );
    metrics::describe_counter!(
        MISROUTED_TOTAL,
        "Meta changes skipped or Twilio requests refused (403) because they are for another account or business number than the URL's tenant, by provider."
    );
    metrics::describe_counter!(
        MALFORMED_ITEMS_TOTAL,
        "Unreadable messages, statuses or changes skipped from a verified Meta body (the rest is enqueued), by provider."
    );
    metrics::describe_counter!(
        OTHER_FIELDS_TOTAL,
        "Meta changes of fields other than messages (not enqueued)."
    );
    metrics::describe_counter!(
        IGNORED_STATUSES_TOTAL,
        "Status events with an untracked status word (not enqueued)."
    );
    metrics::describe_counter!(
        HANDSHAKES_TOTAL,
        "Meta subscription handshakes, by outcome."
    );
    metrics::describe_gauge!(
        QUEUE_BACKLOG_ENTRIES,
        "Waiting entries of each queue at the last backlog check."
    );
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Connections open now.");
    metrics::describe_gauge!(
        MAX_CONNECTIONS,
        "Most open connections at once; more wait to be accepted."
    );
    metrics::describe_counter!(
        CONNECTION_LIMIT_WAITS_TOTAL,
        "Times a new connection waited because the connection cap was reached."
    );
    metrics::describe_gauge!(
        REDIS_UNAVAILABLE,
        "1 while Redis is unreachable and ingest answers 503."
    );
    metrics::describe_counter!(
        REPLICA_WAITS_TOTAL,
        "Replica waits after a group commit, by outcome (acked, timeout: answered 503, error)."
    );
    metrics::describe_histogram!(
        REPLICA_WAIT_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time a group commit waited for its replicas."
    );
    metrics::describe_gauge!(
        WAIT_REPLICAS,
        "Replicas each group commit waits for (0: durability = default)."
    );
    metrics::describe_gauge!(
        REDIS_APPENDONLY,
        "1 when the Redis server keeps an AOF, as read at start."
    );
    metrics::describe_gauge!(
        REDIS_APPENDFSYNC_ALWAYS,
        "1 when the Redis server fsyncs every write before answering (appendfsync always), as read at start."
    );
}

/// Records one answered request.
pub fn request(
    provider: &'static str,
    outcome: &'static str,
    elapsed: Duration,
    body_bytes: usize,
) {
    metrics::counter!(REQUESTS_TOTAL, "provider" => provider, "outcome" => outcome).increment(1);
    metrics::histogram!(REQUEST_DURATION_SECONDS, "provider" => provider, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
    if body_bytes > 0 {
        metrics::counter!(REQUEST_BODY_BYTES_TOTAL, "provider" => provider)
            .increment(body_bytes as u64);
    }
}

/// Records one refused request.
pub fn rejected(provider: &'static str, reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "provider" => provider, "reason" => reason).increment(1);
}

/// Records events handed to a queue.
pub fn events(provider: &'static str, enqueued: u64, duplicates: u64) {
    if enqueued > 0 {
        metrics::counter!(EVENTS_TOTAL, "provider" => provider, "outcome" => "enqueued")
            .increment(enqueued);
    }
    if duplicates > 0 {
        metrics::counter!(EVENTS_TOTAL, "provider" => provider, "outcome" => "duplicate")
            .increment(duplicates);
    }
}
