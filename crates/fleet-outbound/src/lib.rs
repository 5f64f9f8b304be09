//! fleet-outbound.
