//! fleet-prospects binary.
fn main() {}
