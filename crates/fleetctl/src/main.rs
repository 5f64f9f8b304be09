//! fleetctl binary.
fn main() {}
