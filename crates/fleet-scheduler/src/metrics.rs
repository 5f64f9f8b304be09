//! Descriptions (Prometheus `HELP` lines) of every metric the scheduler writes, registered once
//! per process so `/metrics` explains itself.

use std::sync::Once;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Registers the descriptions; idempotent. Call after the metrics recorder is installed.
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_gauge!(
            "fleet_queue_length",
            "Entries waiting to be delivered (appended, delivered to no consumer group yet), per queue and priority: exact, or a lower bound while fleet_queue_length_exact is 0."
        );
        describe_gauge!(
            "fleet_queue_length_exact",
            "1 when fleet_queue_length is exact; 0 for the few refreshes a recount takes after a Redis restart, a failover or a deletion."
        );
        describe_gauge!(
            "fleet_queue_pending",
            "Entries delivered and not yet acknowledged, per queue and priority."
        );
        describe_gauge!(
            "fleet_queue_lag",
            "Entries not yet delivered to the workers' consumer group: the same figure as fleet_queue_length (Redis's own lag is stale after a restart)."
        );
        describe_gauge!(
            "fleet_queue_delayed",
            "Entries waiting in the delayed set (retries and delays)."
        );
        describe_gauge!("fleet_queue_dead", "Entries in the dead-letter stream.");
        describe_gauge!(
            "fleet_queue_oldest_pending_seconds",
            Unit::Seconds,
            "Idle time of the oldest pending entry; 0 when nothing is pending."
        );
        describe_gauge!(
            "fleet_queue_consumers",
            "Distinct consumers registered on the queue's streams."
        );
        describe_gauge!("fleet_queue_paused", "1 while the queue is paused, else 0.");
        describe_gauge!(
            "fleet_scheduler_leader",
            "1 while this replica leads (runs the maintenance tasks), else 0."
        );
        describe_gauge!(
            "fleet_scheduler_leader_fencing_token",
            "Fencing token of this replica's latest term as leader."
        );
        describe_counter!(
            "fleet_scheduler_leadership_changes_total",
            "Terms begun (acquired) and ended (released, lost, stepped_down) by this replica."
        );
        describe_counter!(
            "fleet_scheduler_promoted_total",
            "Delayed entries moved onto their streams."
        );
        describe_counter!(
            "fleet_scheduler_reclaimed_total",
            "Stalled entries handed back for a live consumer."
        );
        describe_counter!(
            "fleet_scheduler_dead_lettered_total",
            "Stalled entries out of attempts, moved to the dead-letter stream."
        );
        describe_counter!(
            "fleet_scheduler_trimmed_total",
            "Acknowledged entries removed by retention."
        );
        describe_counter!(
            "fleet_scheduler_dead_trimmed_total",
            "Dead letters removed by retention."
        );
        describe_counter!(
            "fleet_scheduler_consumers_removed_total",
            "Idle consumers holding nothing that were deleted."
        );
        for task in ["delayed", "stalled", "retention", "consumers", "health"] {
            describe_counter!(
                format!("fleet_scheduler_{task}_runs_total"),
                format!("Runs of the {task} task, by outcome (ok, error).")
            );
            describe_histogram!(
                format!("fleet_scheduler_{task}_run_duration_seconds"),
                Unit::Seconds,
                format!("Duration of one run of the {task} task.")
            );
        }
    });
}
