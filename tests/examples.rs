//! Every spec in examples/ checks without errors. A spec that binds a model
//! fetched into models/ (not in the repository; see README) is skipped with a
//! message when that folder is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lamda_compiler::diag::{Code, Style, render};
use lamda_compiler::resolve::check_path;

#[test]
fn every_example_checks() {
    let mut n = 0;
    for entry in std::fs::read_dir("examples").expect("examples/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_none_or(|e| e != "lamda") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        if text.contains("\"../models/") && !Path::new("models").is_dir() {
            lamda_runtime::testkit::skip(format!(
                "{}: its model is fetched into models/ (scripts/fetch-smollm2.sh)",
                path.display()
            ));
            continue;
        }
        n += 1;
        let c = check_path(Path::new(&path)).expect("readable");
        let fetched_missing =
            c.diags.iter().all(|d| {
                !d.is_error() || matches!(d.code, Code::CheckpointFolderMissing | Code::CheckpointConfigMissing)
            }) && text.contains("\"../models/");
        if c.has_errors() && fetched_missing {
            lamda_runtime::testkit::skip(format!(
                "{}: its model folder under models/ has not been converted yet",
                path.display()
            ));
            continue;
        }
        assert!(
            !c.has_errors() && c.spec.is_some(),
            "{}:\n{}",
            path.display(),
            render(&c.sources, &c.diags, Style::Plain)
        );
    }
    assert!(n >= 3, "expected at least three examples, found {n}");
    // the encoder examples (checked above with the rest, or skipped when
    // models/all-MiniLM-L6-v2 is not fetched)
    for name in ["minilm-sentiment", "minilm-sentiment-lora", "minilm-sentiment-head"] {
        let p = Path::new("examples").join(format!("{name}.lamda"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains("head classify(labels = 2"), "{name}: a classifier");
        assert!(
            text.contains("\"data/movie-reviews.tsv\"  split 0.1"),
            "{name}: the same held-out part"
        );
    }
}
