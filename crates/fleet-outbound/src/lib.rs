#![doc = include_str!("../README.md")]

pub mod config;
mod ledger;
pub mod worker;

/// The shared rate limiter (GCRA in Redis), now part of `fleet-queue`; re-exported so existing
/// paths keep working.
pub use fleet_queue::ratelimit;

pub use config::{OutboundArgs, OutboundConfig};
pub use worker::run;

/// Registers the HELP text of every metric this crate emits (call once, after installing the
/// recorder).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "fleet_outbound_lease_lost_total",
        "Sends not made because the fence found the entry reclaimed (the worker was frozen or cut off past its lease)."
    );
    describe_counter!(
        "fleet_outbound_sent_notes_total",
        "Sent jobs given back at a stop with their outcome written into them, their record not yet written."
    );
    describe_histogram!(
        "fleet_outbound_sent_lookup_jobs",
        "Jobs asked about in one sent-record lookup."
    );
    describe_counter!(
        "fleet_outbound_sends_total",
        "Send attempts by provider and outcome."
    );
    describe_histogram!(
        "fleet_outbound_send_duration_seconds",
        Unit::Seconds,
        "Duration of one provider call."
    );
    describe_counter!(
        "fleet_outbound_auth_failures_total",
        "Sends refused because of the tenant's credentials; alert on any increase."
    );
    describe_counter!(
        "fleet_outbound_deferred_total",
        "Jobs deferred without an attempt, by reason (sender, recipient, ledger, limiter)."
    );
    describe_counter!(
        "fleet_outbound_dead_lettered_total",
        "Jobs dead-lettered by the worker, by reason."
    );
    describe_counter!(
        "fleet_outbound_already_sent_total",
        "Redelivered jobs found already sent and acknowledged without a send."
    );
    describe_counter!(
        "fleet_outbound_record_failures_total",
        "Failed writes of send results to Postgres."
    );
    describe_histogram!(
        "fleet_outbound_record_duration_seconds",
        Unit::Seconds,
        "Duration of one batch write of send results."
    );
    describe_gauge!(
        "fleet_outbound_in_flight",
        "Sends in flight in this process (handlers holding a send slot)."
    );
}
