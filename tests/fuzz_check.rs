//! `check` on 100,000 generated and mutated specs, in process: no input
//! makes the front end, the report or the renderer panic, and the outcome
//! has `lamdac check`'s exit semantics (1 exactly when there are errors, and
//! then no resolved spec; 0 with a spec that reports and renders; one case
//! in 97 also compiles the step for the peak-memory estimate, as `check` does).
//!
//! The inputs come from a seeded generator (the same 100,000 on every run,
//! so a failure reproduces; `LAMDAC_FUZZ_CASES` and `LAMDAC_FUZZ_SEED`
//! change them): structured specs built from the grammar's pieces (patterns
//! with alternatives, indices and globs, every clause, train keys with valid
//! and invalid values, definitions), mutations of every UI case, example and
//! stdlib file (deleted, duplicated and swapped spans, inserted tokens, bytes
//! flipped, long lines), and token soup. Files that name checkpoint folders
//! resolve against tests/ui, so the config.json fixtures are read too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use lamda_compiler::diag::{Severity, Style, render};
use lamda_compiler::resolve::check_source;

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const MODELS: &[&str] = &[
    "llama2",
    "tiny",
    "smollm2_135m",
    "llama2_70b",
    "tinyllama_1b",
    "m",
    "lama2",
    "llama",
];
const SEGMENTS: &[&str] = &[
    "attn",
    "mlp",
    "*",
    "**",
    "q",
    "k",
    "v",
    "o",
    "gate",
    "up",
    "down",
    "{q,v}",
    "{q,x}",
    "{gate,up,down}",
    "layers",
    "layers[0]",
    "layers[0..1]",
    "layers[1,0]",
    "layers[3..1]",
    "layers[40]",
    "layers[*]",
    "lm_head",
    "embed",
    "attn_norm",
    "norm",
    "{attn,mlp}",
    "*[0]",
    "blocks",
];
const METHODS: &[&str] = &["lamda", "lora", "lora_fa", "pissa", "vera", "lorra", "mine"];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "4",
    "8",
    "16",
    "17",
    "64",
    "783",
    "2048",
    "8192",
    "-1",
    "0.5",
    "1.5",
    "1e3",
    "1e-5",
    "4294967296",
    "9223372036854775807",
    "99999999999999999999",
    "1e308",
    "\"x\"",
    "none",
    "auto",
];
const SCHEDULES: &[&str] = &[
    "linear(0.3)",
    "linear(1.5)",
    "linear(0)",
    "at(0.5)",
    "never",
    "now",
    "linaer(0.3)",
    "linear()",
    "at(0.5, 1)",
];
const TRAIN_KEYS: &[&str] = &[
    "steps",
    "batch",
    "seq",
    "lr",
    "warmup",
    "schedule",
    "optimizer",
    "clip",
    "accumulate",
    "seed",
    "checkpoint",
    "out",
    "device",
    "data",
    "stop_on_collapse",
    "stepz",
    "learning_rate",
];
const TRAIN_VALUES: &[&str] = &[
    "10",
    "0",
    "1",
    "2",
    "16",
    "1e-3",
    "-1",
    "cosine",
    "constant",
    "linear",
    "cosin",
    "adamw",
    "adamw(wd = 0.1)",
    "adamw(betas = (0.9, 1.5))",
    "sgd",
    "none",
    "every 5",
    "every 0",
    "\"../../tests/golden/lamda_qv_r4_linear03/inputs.safetensors\"",
    "\"fixtures/missing.txt\"",
    "\"fixtures\"",
    "cpu",
    "cuda",
    "auto",
    "4294967296",
    "1048577",
    "\"out\"",
];
const USES: &[&str] = &[
    "use tiny as m",
    "use llama2",
    "use \"fixtures/tiny\" as m",
    "use \"fixtures/gpt2\" as m",
    "use \"fixtures/kv_heads_3\" as m",
    "use \"fixtures/vocab_huge\" as m",
    "use \"fixtures/no_config\" as m",
    "use \"fixtures/does_not_exist\" as m",
    "use \"fixtures/layers_1e18\" as m",
    "use \"fixtures/tiny\"",
    "use llama as m",
    "preset m = llama(vocab = 256, hidden = 64, n_layers = 2, heads = 4, ffn = 172)",
    "preset m = llama(vocab = 256, hidden = 64, n_layers = 100000000, heads = 4, ffn = 172)",
    "preset m = llama(vocab = 16000000, hidden = 16000000, n_layers = 1, heads = 4, ffn = 172)",
    "preset m = llama(vocab = 256, hidden = 63, n_layers = 2, heads = 4, ffn = 172)",
    "preset m = m",
];
const DEFS: &[&str] = &[
    "adapter mine(r) {\n  tensor A [r, in] frozen init svd_right\n  tensor B [out, r] trainable init zeros\n  base keep\n  path B @ A @ x\n}",
    "adapter mine(r, k = 2) {\n  tensor A [r * k, in] frozen init zeros\n  tensor B [out, r * k] trainable init zeros\n  base residual\n  freeze B by columns\n  path B @ A @ x\n}",
    "adapter mine(r) {\n  tensor A [r, in] trainable init kaiming_uniform\n  base keep\n  path relu(A @ x)\n}",
    "model m2(hidden) {\n  proj: linear(hidden, hidden) \"proj\"\n  forward(tokens) {\n    return proj(tokens)\n  }\n}",
];
const TOKENS: &[&str] = &[
    "adapt",
    "use",
    "exclude",
    "train",
    "adapter",
    "model",
    "preset",
    "with",
    "rank",
    "auto",
    "alpha",
    "freeze_b",
    ".",
    "*",
    "**",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    "=",
    "..",
    "\"",
    "#",
    "\n",
    " ",
    "\t",
    "é",
    "∑",
    "\u{feff}",
    "\r\n",
    "\r",
    "\0",
    "every",
    ":",
    "@",
    "budget = 64",
    "min",
    "max",
];

fn pattern(r: &mut Rng, model: &str) -> String {
    let mut p = model.to_string();
    for _ in 0..1 + r.below(3) {
        p.push('.');
        p.push_str(r.pick(SEGMENTS));
    }
    p
}

/// A spec built from the grammar's pieces: mostly well-formed, often wrong.
fn structured(r: &mut Rng) -> String {
    let mut out = Vec::new();
    let mut model = r.pick(MODELS).to_string();
    if r.chance(40) {
        out.push(r.pick(USES).to_string());
        model = "m".into();
    }
    if r.chance(15) {
        out.push(r.pick(DEFS).to_string());
    }
    for _ in 0..r.below(4) + usize::from(r.chance(90)) {
        let mut rule = format!("adapt {}", pattern(r, &model));
        if r.chance(40) {
            rule.push_str(&format!(" with {}", r.pick(METHODS)));
            if r.chance(20) {
                rule.push_str(&format!("(alpha = {})", r.pick(NUMBERS)));
            }
        }
        if r.chance(80) {
            if r.chance(25) {
                rule.push_str(&format!(" rank auto(budget = {})", r.pick(NUMBERS)));
            } else {
                rule.push_str(&format!(" rank {}", r.pick(NUMBERS)));
            }
        }
        if r.chance(30) {
            rule.push_str(&format!(" alpha {}", r.pick(NUMBERS)));
        }
        if r.chance(40) {
            rule.push_str(&format!(" freeze_b {}", r.pick(SCHEDULES)));
        }
        out.push(rule);
    }
    if r.chance(20) {
        out.push(format!("exclude {}", pattern(r, &model)));
    }
    if r.chance(50) {
        let mut block = String::from("train {");
        for _ in 0..r.below(5) {
            block.push_str(&format!("\n  {} {}", r.pick(TRAIN_KEYS), r.pick(TRAIN_VALUES)));
        }
        block.push_str("\n}");
        out.push(block);
    }
    out.join("\n")
}

/// A spec from valid pieces only (it may still fail: overlapping rules,
/// ranks past a dimension), so the success path gets exercised too.
fn plausible(r: &mut Rng) -> String {
    let model = r.pick(&["llama2", "tiny", "smollm2_135m", "tinyllama_1b", "llama2_70b"]);
    let mut out = Vec::new();
    for _ in 0..1 + r.below(3) {
        let pat = r.pick(&[
            "attn.q",
            "attn.*",
            "attn.{q,v}",
            "mlp.*",
            "mlp.{gate,up}",
            "*.*",
            "layers[0].attn.q",
            "layers[0..1].mlp.down",
            "**",
            "lm_head",
        ]);
        let mut rule = format!("adapt {model}.{pat}");
        match r.below(4) {
            0 => rule.push_str(&format!(" rank {}", r.pick(&["1", "2", "4", "8"]))),
            1 => rule.push_str(&format!(" with lora rank {}", r.pick(&["1", "2", "4"]))),
            2 => rule.push_str(" rank auto(budget = 4096)"),
            _ => rule.push_str(&format!(
                " rank 4 freeze_b {}",
                r.pick(&["linear(0.3)", "at(0.5)", "never"])
            )),
        }
        out.push(rule);
    }
    if r.chance(50) {
        out.push(format!(
            "train {{\n  steps {}  batch {}  seq {}\n  lr 1e-3 warmup 1 schedule {}\n}}",
            r.pick(&["2", "10", "1000", "4294967296"]),
            r.pick(&["1", "2", "8"]),
            r.pick(&["16", "64", "256"]),
            r.pick(&["constant", "cosine", "linear"]),
        ));
    }
    out.join("\n")
}

/// `seed` with a few random edits.
fn mutated(r: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + r.below(6) {
        let n = s.len();
        let i = r.below(n + 1);
        match r.below(8) {
            0 if n > 0 => {
                let j = (i + 1 + r.below(8)).min(n);
                s.drain(i.min(n)..j);
            }
            1 => {
                let tok: Vec<char> = r.pick(TOKENS).chars().collect();
                s.splice(i..i, tok);
            }
            2 => {
                let tok: Vec<char> = r.pick(SEGMENTS).chars().chain(r.pick(NUMBERS).chars()).collect();
                s.splice(i..i, tok);
            }
            3 if n > 0 => {
                // duplicate a span
                let j = (i + r.below(40)).min(n);
                let span: Vec<char> = s[i.min(n)..j].to_vec();
                let k = r.below(n + 1);
                s.splice(k..k, span);
            }
            4 if n > 0 => {
                // swap two characters
                let j = r.below(n);
                s.swap(i.min(n - 1), j);
            }
            5 => s.truncate(i),
            6 if n > 0 => {
                // a character turned into another
                let c = char::from_u32(r.below(0x3000) as u32).unwrap_or('?');
                s[i.min(n - 1)] = c;
            }
            _ => {
                // a long line: 16,400 tabs put what follows past column 65535
                let n = [1, 700, 16_400][r.below(3)];
                s.splice(i..i, std::iter::repeat_n('\t', n)).for_each(drop);
            }
        }
    }
    s.into_iter().collect()
}

fn soup(r: &mut Rng) -> String {
    (0..r.below(60))
        .map(|_| r.pick(TOKENS))
        .collect::<Vec<_>>()
        .join(if r.chance(50) { " " } else { "" })
}

/// One input through `check`: the assertions of the CLI's exit semantics.
fn check_one(src: &str, dir: &Path, compile: bool) {
    let c = check_source("fuzz.lamda", src, dir);
    let errors = c.diags.iter().filter(|d| d.severity == Severity::Error).count();
    assert_eq!(c.has_errors(), errors > 0);
    assert_eq!(c.spec.is_some(), errors == 0, "exit 1 exactly when there are errors");
    if let Some(spec) = &c.spec {
        let _ = lamda_compiler::report::render_text(&lamda_compiler::report::report(spec));
        if compile {
            // the peak-memory estimate compiles the training step (spec and LoRA twin)
            if let Some(p) = lamda_compiler::report::peak_memory(spec) {
                let _ = lamda_compiler::report::render_peak(&p);
            }
        }
    }
    let _ = render(&c.sources, &c.diags, Style::Plain);
    let _ = lamda_compiler::diag::to_json(&c.sources, &c.diags);
    if c.spec.is_some() {
        CLEAN.fetch_add(1, Ordering::Relaxed);
    }
}

/// Inputs that checked without errors (the generator must reach both outcomes).
static CLEAN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn check_survives_100k_generated_and_mutated_specs() {
    let cases: usize = std::env::var("LAMDAC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("LAMDAC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1a3d_ac00_0010);
    // the corpus: every UI case, example and stdlib file
    let mut corpus: Vec<String> = Vec::new();
    for dir in [
        "tests/ui",
        "examples",
        "stdlib/models",
        "stdlib/adapters",
        "tests/golden_specs",
    ] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "lamda")
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                corpus.push(t);
            }
        }
    }
    assert!(corpus.len() > 50, "{} seed files", corpus.len());
    let dir = Path::new("tests/ui");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let next = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cases {
                        break;
                    }
                    // each case from its own stream: the same input whatever the thread count
                    let mut r = Rng(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                    let src = match r.below(10) {
                        0..=1 => structured(&mut r),
                        2..=3 => plausible(&mut r),
                        4..=5 => {
                            let s = structured(&mut r);
                            mutated(&mut r, &s)
                        }
                        6..=8 => {
                            let k = r.below(corpus.len());
                            mutated(&mut r, &corpus[k])
                        }
                        _ => soup(&mut r),
                    };
                    let outcome = std::panic::catch_unwind(|| check_one(&src, dir, i.is_multiple_of(97)));
                    if let Err(e) = outcome {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        panic!("case {i} (LAMDAC_FUZZ_SEED={seed}): {msg}\n--- input ---\n{src}\n---");
                    }
                }
            });
        }
    });
    let clean = CLEAN.load(Ordering::Relaxed);
    eprintln!(
        "{cases} specs checked in {:.1} s on {threads} thread(s): {clean} without errors",
        started.elapsed().as_secs_f64()
    );
    assert!(
        clean > cases / 50 && clean < cases - cases / 50,
        "{clean} of {cases} clean"
    );
}
