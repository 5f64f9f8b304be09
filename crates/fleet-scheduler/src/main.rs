//! fleet-scheduler binary.
fn main() {}
