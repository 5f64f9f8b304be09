//! xtask binary.
fn main() {}
