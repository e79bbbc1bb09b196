//! No input makes the parser, the checker or the renderer panic: arbitrary
//! text, lamda-like token soup, and mutations of real specs and stdlib files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lamda_compiler::diag::{Style, render};
use lamda_compiler::resolve::check_source;
use proptest::prelude::*;

fn run(src: &str) {
    let c = check_source("fuzz.lamda", src, Path::new("."));
    let _ = render(&c.sources, &c.diags, Style::Plain);
    if let Some(spec) = &c.spec {
        let _ = lamda_compiler::report::report(spec);
    }
}

const SEEDS: &[&str] = &[
    "adapt llama2.attn.* rank auto(budget=8192) freeze_b linear(0.3)",
    "use tiny as t\nadapt t.layers[0..1].attn.{q,v} with lamda rank 4 alpha 1.0 freeze_b at(0.5)\nexclude t.layers[1].*.*\ntrain { steps 10 batch 2 seq 16 lr 1e-2 optimizer adamw(betas = (0.9, 0.999), wd = 0.0) checkpoint every 5 }",
    include_str!("../../stdlib/adapters/lamda.lamda"),
    include_str!("../../stdlib/adapters/lora.lamda"),
    include_str!("../../stdlib/models/llama.lamda"),
];

const TOKENS: &[&str] = &[
    "adapt", "use", "exclude", "train", "adapter", "model", "preset", "with", "rank", "auto", "alpha", "freeze_b",
    "llama2", "tiny", ".", "attn", "mlp", "*", "**", "{", "}", "[", "]", "(", ")", ",", "=", "..", "0", "1", "8192",
    "0.3", "-1", "1e-5", "\"", "\"x\"", "#", "\n", " ", "q", "v", "layers", "lora", "lamda", "linear", "never", "now",
    "tensor", "A", "[r, in]", "init", "zeros", "path", "@", "x", "base", "keep", "residual", "forward", "for", "in",
    "return", "é", "∑", "\t", "steps", "budget", "min", "max", "every", ":",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(s in "\\PC{0,200}") {
        run(&s);
    }

    #[test]
    fn token_soup(toks in proptest::collection::vec(proptest::sample::select(TOKENS), 0..60)) {
        run(&toks.join(" "));
        run(&toks.concat());
    }

    #[test]
    fn mutated_specs(seed in proptest::sample::select(SEEDS), edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, proptest::sample::select(TOKENS)), 1..8)) {
        let mut s: Vec<char> = seed.chars().collect();
        for (at, kind, tok) in edits {
            if s.is_empty() { break; }
            let i = at.index(s.len());
            match kind {
                0 => { s.remove(i); }
                1 => { for (k, c) in tok.chars().enumerate() { s.insert(i + k, c); } }
                2 => { s.truncate(i); }
                _ => { let j = (i + 5).min(s.len()); s.drain(i..j); }
            }
        }
        run(&s.into_iter().collect::<String>());
    }
}
