//! Placeholder while the apalis-vs-plain benchmark is written.
fn main() {}
