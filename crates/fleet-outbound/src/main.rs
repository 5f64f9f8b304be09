//! fleet-outbound binary.
fn main() {}
