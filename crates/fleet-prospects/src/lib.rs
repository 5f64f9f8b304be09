//! fleet-prospects.
