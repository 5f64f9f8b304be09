//! fleet-ingest binary.
fn main() {}
