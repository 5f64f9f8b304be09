//! fleet-runtime.
