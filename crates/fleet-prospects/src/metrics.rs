//! The HELP text of every metric fleet-prospects emits, in one place (the queue's own are
//! `fleet_queue::describe_metrics`).

use metrics::{Unit, describe_counter, describe_histogram};

/// Registers the descriptions; call once, after the recorder is installed.
pub fn describe() {
    describe_histogram!(
        "fleet_prospects_batch_size",
        "Inbound entries in one batch handed to the worker."
    );
    describe_histogram!(
        "fleet_prospects_batch_duration_seconds",
        Unit::Seconds,
        "Time to write one batch to Postgres (one transaction), retries included."
    );
    describe_histogram!(
        "fleet_prospects_commit_lag_seconds",
        Unit::Seconds,
        "Time from an event's enqueue to the commit that stored it."
    );
    describe_counter!(
        "fleet_prospects_messages_inserted_total",
        "Inbound messages stored for the first time."
    );
    describe_counter!(
        "fleet_prospects_messages_duplicate_total",
        "Inbound messages already stored (a redelivery or a replay): counted nothing twice."
    );
    describe_counter!(
        "fleet_prospects_replays_unanswered_total",
        "Messages stored earlier and first received longer ago than max_reply_age_secs, received again (a late redelivery or a replayed request): stored once, never answered again."
    );
    describe_counter!(
        "fleet_prospects_prospects_created_total",
        "Prospects (contacts) created by a first message."
    );
    describe_counter!(
        "fleet_prospects_statuses_applied_total",
        "Status events applied to the message log."
    );
    describe_counter!(
        "fleet_prospects_auto_replies_total",
        "Automatic replies planned, by outcome (enqueued, duplicate) and rule."
    );
    describe_counter!(
        "fleet_prospects_failures_total",
        "Failures waited out or retried, by reason."
    );
    describe_counter!(
        "fleet_prospects_dead_lettered_total",
        "Inbound entries sent to the dead letters by the worker, by reason."
    );
}
