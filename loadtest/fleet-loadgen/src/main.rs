//! fleet-loadgen binary.
fn main() {}
