//! fleet-store.
