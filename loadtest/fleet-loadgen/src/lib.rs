//! fleet-loadgen.
