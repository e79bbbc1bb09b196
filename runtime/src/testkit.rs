//! Test support shared by the suites: recording tests that skip, so CI counts them.
//!
//! A test that cannot run here (no GPU, no NVRTC, no C++20 compiler, a model
//! that was not fetched) returns early and passes as far as libtest knows.
//! [`skip`] says so on stderr and, when `LAMDAC_SKIP_LOG` names a file,
//! appends one line to it (`test<TAB>reason`); `.ci/run` counts and lists
//! those lines after `cargo test`, so a skipped test is reported as skipped,
//! not as passed.

use std::io::Write;

/// Records that the current test (named after its libtest thread) skips, and why.
pub fn skip(reason: impl std::fmt::Display) {
    let name = std::thread::current().name().unwrap_or("<test>").to_string();
    eprintln!("skipped: {name}: {reason}");
    if let Some(log) = std::env::var_os("LAMDAC_SKIP_LOG") {
        // One write per line with O_APPEND: lines of parallel tests do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{name}\t{reason}\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_skip_is_a_line_in_the_log() {
        let log = std::env::temp_dir().join(format!("lamdac-skiplog-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        // SAFETY: no other test of this crate reads or writes LAMDAC_SKIP_LOG.
        unsafe { std::env::set_var("LAMDAC_SKIP_LOG", &log) };
        super::skip("no GPU here");
        unsafe { std::env::remove_var("LAMDAC_SKIP_LOG") };
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "testkit::tests::a_skip_is_a_line_in_the_log\tno GPU here\n");
        let _ = std::fs::remove_file(&log);
    }
}
