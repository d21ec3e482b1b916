//! The `domain` command.
fn main() {}
