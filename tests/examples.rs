//! Every spec in examples/ checks without errors.

use std::path::Path;

use lamda_compiler::diag::{Style, render};
use lamda_compiler::resolve::check_path;

#[test]
fn every_example_checks() {
    let mut n = 0;
    for entry in std::fs::read_dir("examples").expect("examples/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_none_or(|e| e != "lamda") {
            continue;
        }
        n += 1;
        let c = check_path(Path::new(&path)).expect("readable");
        assert!(
            !c.has_errors() && c.spec.is_some(),
            "{}:\n{}",
            path.display(),
            render(&c.sources, &c.diags, Style::Plain)
        );
    }
    assert!(n >= 3, "expected at least three examples, found {n}");
}
