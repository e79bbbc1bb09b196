//! Helpers shared by the CLI and session tests: run the binary, stop a session at a step.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use lamda_runtime::session::Observer;
use lamda_runtime::train::{StepStats, Trainer};

/// Runs `lamdac ARGS`: (exit code, stdout, stderr).
pub fn lamdac(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lamdac"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets the stop flag (as Ctrl-C does) after step `.0` (1-based).
pub struct StopAt<'a>(pub u64, pub &'a AtomicBool);

impl Observer for StopAt<'_> {
    fn step(&mut self, _: &Trainer, s: &StepStats, _: f64) {
        if s.step + 1 == self.0 {
            self.1.store(true, Ordering::SeqCst);
        }
    }
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// `session::prepare` after the front end on `opts.spec`, as the CLI does it.
pub fn prepare(
    opts: &lamda_runtime::session::RunOptions,
) -> Result<lamda_runtime::session::Session, lamda_runtime::session::SessionError> {
    let checked = lamda_runtime::session::check_spec(&opts.spec)?;
    lamda_runtime::session::prepare(opts, &checked)
}
