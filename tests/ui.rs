//! UI tests: every tests/ui/*.lamda file is checked; its inline annotations
//! must match the diagnostics exactly, and the source with the rendered
//! report is an insta snapshot.
//!
//! An annotation is a comment `#~ <severity> <code>` at the end of the line
//! where the diagnostic's primary label starts (`#~^` for the line above),
//! e.g. `adapt llama2.attn.q rank 0  #~ error lamda::rank::zero`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use lamda_compiler::diag::{Code, Severity, Style, render};
use lamda_compiler::resolve::{check_path, check_source};

fn expected(src: &str) -> BTreeSet<(usize, String, String)> {
    let mut out = BTreeSet::new();
    for (i, line) in src.lines().enumerate() {
        let Some(pos) = line.find("#~") else { continue };
        let mut rest = &line[pos + 2..];
        let mut l = i + 1;
        while let Some(r) = rest.strip_prefix('^') {
            l -= 1;
            rest = r;
        }
        let mut words = rest.split_whitespace();
        let (Some(sev), Some(code)) = (words.next(), words.next()) else {
            panic!("malformed annotation on line {}: {line}", i + 1)
        };
        out.insert((l, sev.to_string(), code.to_string()));
    }
    out
}

fn sev(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Advice => "advice",
    }
}

#[test]
fn ui() {
    let dir = Path::new("tests/ui");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/ui exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lamda"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "expected at least 30 UI cases, found {}",
        files.len()
    );
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut snapshots = Vec::new();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let bytes = std::fs::read(path).expect("readable");
        let shown = format!("tests/ui/{name}.lamda");
        // A case that is not UTF-8 goes through the path `lamdac check` takes
        // for files; the annotations are read from its lossy text.
        let (src, checked) = match String::from_utf8(bytes) {
            Ok(src) => {
                let checked = check_source(&shown, &src, dir);
                (src, checked)
            }
            Err(e) => (
                String::from_utf8_lossy(e.as_bytes()).into_owned(),
                check_path(Path::new(&shown)).expect("readable"),
            ),
        };
        let got: BTreeSet<(usize, String, String)> = checked
            .diags
            .iter()
            .filter(|d| d.file == checked.file)
            .map(|d| {
                let line = d
                    .labels
                    .first()
                    .map_or(0, |l| checked.sources.line_col(d.file, l.span.start).0);
                (line, sev(d.severity).to_string(), d.code.as_str().to_string())
            })
            .collect();
        let stray: Vec<String> = checked
            .diags
            .iter()
            .filter(|d| d.file != checked.file)
            .map(|d| format!("{} in {}", d.code, checked.sources.files[d.file].name))
            .collect();
        let want = expected(&src);
        if got != want || !stray.is_empty() {
            failures.push(format!(
                "{name}:\n  expected {want:?}\n  got      {got:?}\n  outside the file: {stray:?}\n{}",
                render(&checked.sources, &checked.diags, Style::Plain)
            ));
        }
        covered.extend(got.iter().map(|(_, _, c)| c.clone()));
        let report = render(&checked.sources, &checked.diags, Style::Plain);
        snapshots.push((name, format!("{src}\n-----\n{report}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (name, text) in snapshots {
        insta::with_settings!({snapshot_path => "ui/snapshots", prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!(name, text);
        });
    }
    let missing: Vec<&str> = Code::CHECK
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !covered.contains(*c))
        .collect();
    assert!(missing.is_empty(), "codes without a UI test: {missing:?}");
}

#[test]
fn every_code_is_documented() {
    let doc = std::fs::read_to_string("spec/errors.md").expect("spec/errors.md exists");
    let missing: Vec<&str> = Code::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !doc.contains(&format!("`{c}`")))
        .collect();
    assert!(missing.is_empty(), "codes missing from spec/errors.md: {missing:?}");
}

/// Codes of failures inside lamdac or its libraries that no input is known
/// to provoke (code generation, the executor, a tokenizer that cannot encode
/// or that lamdac built itself, an exported factor that is not finite, an
/// adapter initialiser, a kernel of the inference forward): reported with their code when they happen, and
/// listed as such in spec/errors.md, but no test can make them happen.
const UNPROVOKED: &[Code] = &[
    Code::Emit,
    Code::DataEncode,
    Code::GgufTokenizer,
    Code::ExportLinalg,
    Code::TrainInit,
    Code::TrainStep,
    Code::GenerateInternal,
];

/// The codes only `train`, `export`, `merge`, `convert`, `plan`, `emit` and
/// `bench` report have no UI case; each must be asserted by some test in
/// tests/, runtime/tests/ or compiler/tests/ (as `"lamda::..."` or
/// `Code::Variant`), so a code users can see is never untested.
#[test]
fn every_run_code_is_asserted_by_a_test() {
    let mut text = String::new();
    for dir in ["tests", "runtime/tests", "compiler/tests"] {
        for entry in std::fs::read_dir(dir).expect("a test folder") {
            let path = entry.expect("readable").path();
            if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "ui.rs") {
                text.push_str(&std::fs::read_to_string(&path).expect("readable"));
            }
        }
    }
    // `lamda::data::io` as a whole word: not the start of `lamda::data::io_x`
    let mentions = |code: &str| {
        text.match_indices(code).any(|(i, _)| {
            !text[i + code.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
    };
    let missing: Vec<&str> = Code::RUN
        .iter()
        .filter(|c| !UNPROVOKED.contains(c))
        .filter(|c| !mentions(c.as_str()) && !mentions(&format!("Code::{c:?}")))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "codes no test asserts: {missing:?}");
}

/// One registry: no code is spelled out as a string anywhere in the
/// runtime or the CLI; each comes from [`Code`].
#[test]
fn no_code_is_spelled_outside_the_registry() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let p = entry.expect("readable").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new("runtime/src"), &mut files);
    walk(Path::new("src"), &mut files);
    let spelled: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("readable");
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    !l.trim_start().starts_with("//") && (l.contains("\"lamda::") || l.contains("[lamda::"))
                })
                .map(|(i, l)| format!("{}:{}: {}", f.display(), i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        spelled.is_empty(),
        "codes spelled outside diag::Code:\n{}",
        spelled.join("\n")
    );
}
