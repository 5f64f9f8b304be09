//! fleet-mock-provider binary.
fn main() {}
