//! fleet-loadgen: an open-loop, coordinated-omission-free load generator for Fleet.
//!
//! It sends signed Meta and Twilio webhooks at a target rate (each at its intended time, whatever
//! the system answers), measures accept and webhook-to-row latency in HDR histograms from the
//! intended send time, verifies at the end that every accepted message is in Postgres exactly
//! once, that no reply went out twice and that the dead letters are exactly the injected ones,
//! and writes a JSON result, a Markdown report and a chart. Cases live in `loadtest/cases/`.
//!
//! [`chaos`] holds the chaos suite's load (every request retried until accepted, with a ledger)
//! and its invariant checker; `cargo xtask chaos` runs them around the faults.

pub mod case;
pub mod chaos;
pub mod payload;
pub mod report;
pub mod run;
pub mod stats;
pub mod tenants;

pub use case::{Case, Profile};
pub use run::{RunOptions, RunResult, Target, run};
