//! Descriptions of the queue library's metrics, so each `/metrics` page explains them (`# HELP`).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every metric this library records; call once after installing the recorder.
pub fn describe_metrics() {
    describe_gauge!(
        "fleet_queue_leases_held",
        Unit::Count,
        "Entries a consumer of this process holds (read, not settled), whose leases its heartbeat renews."
    );
    describe_counter!(
        "fleet_queue_leases_lost_total",
        Unit::Count,
        "Held entries found reclaimed by the scheduler (the holder was frozen or cut off past its lease)."
    );
    describe_counter!(
        "fleet_queue_unavailable_retries_total",
        Unit::Count,
        "Worker operations (connect, read, settle) retried because Redis was unavailable, by reason."
    );
    describe_counter!(
        "fleet_queue_enqueued_total",
        Unit::Count,
        "Jobs appended to a queue, by priority."
    );
    describe_counter!(
        "fleet_queue_duplicates_total",
        Unit::Count,
        "Enqueues answered by an idempotency key already seen: nothing appended."
    );
    describe_counter!(
        "fleet_queue_acked_total",
        Unit::Count,
        "Entries acknowledged by consumers."
    );
    describe_counter!(
        "fleet_queue_retried_total",
        Unit::Count,
        "Failed attempts scheduled for a retry in the delayed set."
    );
    describe_counter!(
        "fleet_queue_deferred_total",
        Unit::Count,
        "Jobs put back in the delayed set without counting an attempt (rate limits)."
    );
    describe_counter!(
        "fleet_queue_dead_lettered_total",
        Unit::Count,
        "Jobs moved to the dead-letter stream, by reason."
    );
    describe_counter!(
        "fleet_queue_reclaimed_total",
        Unit::Count,
        "Stalled entries handed back to live consumers."
    );
    describe_counter!(
        "fleet_queue_trimmed_total",
        Unit::Count,
        "Acknowledged entries removed by retention."
    );
    describe_counter!(
        "fleet_queue_replayed_total",
        Unit::Count,
        "Dead letters moved back onto their queue."
    );
    describe_counter!(
        "fleet_queue_consumer_entries_dropped_total",
        Unit::Count,
        "Pending entries dropped by deleting an idle consumer: always 0 unless the removal script is wrong."
    );
    describe_counter!(
        "fleet_queue_waiting_recounted_entries_total",
        Unit::Count,
        "Stream ids walked to recount waiting entries (after a Redis restart, a failover or a deletion ahead of the group)."
    );
    describe_counter!(
        "fleet_queue_waiting_repairs_total",
        Unit::Count,
        "Recounts completed: the group's read counter set right, so waiting counts are O(1) again."
    );
    describe_histogram!(
        "fleet_queue_batch_entries",
        Unit::Count,
        "Entries per consumer batch."
    );
}
