//! fleet-scheduler.
