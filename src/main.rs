//! `lamdac`: the command-line interface (thin: clap + calls into the crates).
fn main() {}
