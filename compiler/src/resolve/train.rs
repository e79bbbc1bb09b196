//! The `train { ... }` block: known keys, value types and ranges, defaults.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diag::{Code, Diagnostic, FileId};
use crate::limits::{MAX_BATCH, MAX_SEQ, MAX_STEPS, MAX_TOKENS};
use crate::spec::{AdamW, Device, Head, LrSchedule, Pool, TrainConfig};
use crate::syntax::ast::{Span, TrainBlock, TrainEntry, Value, ValueKind};

/// Every key of a train block with what it takes, for errors and spec/language.md.
pub const KEYS: &[(&str, &str)] = &[
    ("data", "a file: \"data.txt\", \"data.jsonl\" or \"ids.safetensors\""),
    (
        "eval_data",
        "a held-out file for the validation loss, in a format `data` takes",
    ),
    (
        "split",
        "share of the data held out for the validation loss, a number in (0, 0.5]",
    ),
    ("eval", "every N (steps): the validation loss"),
    ("steps", "optimizer steps, an integer >= 1"),
    ("batch", "sequences per micro-batch, an integer >= 1"),
    ("seq", "tokens per sequence, an integer >= 2"),
    ("lr", "peak learning rate, a number > 0"),
    ("warmup", "linear warmup steps, an integer >= 0 and below steps"),
    ("schedule", "learning-rate schedule: constant, cosine or linear"),
    ("optimizer", "adamw or adamw(betas = (b1, b2), eps = e, wd = w)"),
    ("clip", "max global gradient norm, a number > 0, or none"),
    ("accumulate", "micro-batches per optimizer step, an integer >= 1"),
    ("seed", "an integer >= 0"),
    ("checkpoint", "every N (steps)"),
    ("out", "output folder, a string"),
    ("device", "cpu, cuda or auto"),
    (
        "head",
        "the task head of an encoder: classify(labels = N, pool = cls or mean)",
    ),
    (
        "stop_on_collapse",
        "stop after N steps in a row with a zero gradient, an integer >= 0 (0: never)",
    ),
];

/// Names people bring from other trainers, and ours.
const SYNONYMS: &[(&str, &str)] = &[
    ("grad_clip", "clip"),
    ("max_grad_norm", "clip"),
    ("gradient_accumulation_steps", "accumulate"),
    ("grad_accum", "accumulate"),
    ("learning_rate", "lr"),
    ("warmup_steps", "warmup"),
    ("batch_size", "batch"),
    ("seq_len", "seq"),
    ("max_seq_len", "seq"),
    ("output_dir", "out"),
    ("max_steps", "steps"),
    ("lr_scheduler", "schedule"),
    ("optim", "optimizer"),
    ("save_steps", "checkpoint"),
    ("dataset", "data"),
    ("eval_dataset", "eval_data"),
    ("validation_data", "eval_data"),
    ("val_data", "eval_data"),
    ("validation_split", "split"),
    ("val_split", "split"),
    ("eval_steps", "eval"),
];

struct Cx<'a> {
    file: FileId,
    errs: &'a mut Vec<Diagnostic>,
}

impl Cx<'_> {
    fn bad(&mut self, e: &TrainEntry, what: &str) {
        self.bad_at(e.value.span, &e.key.name, what, &e.value.kind);
    }
    fn bad_at(&mut self, span: Span, key: &str, what: &str, found: &ValueKind) {
        let found = match found {
            ValueKind::Int(i) => format!("`{i}`"),
            ValueKind::Float(x) => format!("`{x}`"),
            ValueKind::Ident(n) => format!("`{n}`"),
            other => other.describe().to_string(),
        };
        self.errs.push(
            Diagnostic::error(
                Code::TrainBadValue,
                self.file,
                format!("`{key}` takes {what}, found {found}"),
            )
            .label(span, format!("expected {what}")),
        );
    }
    fn int(&mut self, e: &TrainEntry, min: i64, what: &str) -> Option<u64> {
        self.int_in(e, min, u64::MAX, what)
    }
    /// An integer in `min..=max` (a size bounded by [`crate::limits`]).
    fn int_in(&mut self, e: &TrainEntry, min: i64, max: u64, what: &str) -> Option<u64> {
        match e.value.kind {
            ValueKind::Int(i) if i >= min && !e.every && (i as u64) <= max => Some(i as u64),
            _ => {
                self.bad(e, what);
                None
            }
        }
    }
    fn positive(&mut self, e: &TrainEntry, what: &str) -> Option<f64> {
        match e.value.kind.as_f64() {
            Some(x) if x > 0.0 && x.is_finite() && !e.every => Some(x),
            _ => {
                self.bad(e, what);
                None
            }
        }
    }
}

/// `dir/rel` with `.` and `..` segments folded lexically (`examples/../runs` is `runs`).
pub fn join_clean(dir: &Path, rel: &str) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in dir.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        std::path::PathBuf::from(".")
    } else {
        out
    }
}

/// Checks a train block; `dir` is the folder of the spec file (paths are relative to it).
pub fn check_train(block: &TrainBlock, file: FileId, dir: &Path, errs: &mut Vec<Diagnostic>) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut cx = Cx { file, errs };
    let mut warmup_span = None;
    let (mut batch_span, mut seq_span) = (None, None);
    let (mut eval_data_span, mut split_span, mut eval_span) = (None, None, None);
    for e in &block.entries {
        let key = e.key.name.as_str();
        if !KEYS.iter().any(|(k, _)| *k == key) {
            let names: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            let suggestion = SYNONYMS
                .iter()
                .find(|(from, _)| *from == key)
                .map(|(_, to)| *to)
                .or_else(|| crate::suggest::closest(key, names.iter().copied()));
            let help = match suggestion {
                Some(s) => format!("did you mean `{s}`? settings: {}", names.join(", ")),
                None => format!("settings: {}", names.join(", ")),
            };
            cx.errs.push(
                Diagnostic::error(Code::TrainUnknownKey, file, format!("unknown train setting `{key}`"))
                    .label(e.key.span, "not a train setting")
                    .help(help),
            );
            continue;
        }
        if let Some(prev) = seen.insert(key, e.key.span) {
            cx.errs.push(
                Diagnostic::error(Code::TrainDuplicateKey, file, format!("`{key}` is set twice"))
                    .label(e.key.span, "set again here")
                    .label(prev, "first set here")
                    .help("keep one of them"),
            );
            continue;
        }
        match key {
            "data" => cfg.data = data_file(e, &mut cx, dir),
            "eval_data" => {
                cfg.eval_data = data_file(e, &mut cx, dir);
                eval_data_span = Some(e.key.span);
            }
            "split" => {
                match e.value.kind.as_f64() {
                    Some(x) if x > 0.0 && x <= 0.5 && !e.every => cfg.split = Some(x),
                    _ => cx.bad(e, "a number in (0, 0.5]: the share of the data held out"),
                }
                split_span = Some(e.key.span);
            }
            "eval" => match e.value.kind {
                ValueKind::Int(n) if e.every && n >= 1 => {
                    cfg.eval_every = Some(n as u64);
                    eval_span = Some(e.key.span);
                }
                _ => cx.bad(e, "`every N` with N >= 1"),
            },
            "steps" => {
                cfg.steps = cx
                    .int_in(e, 1, MAX_STEPS, "an integer from 1 to 2^32")
                    .unwrap_or(cfg.steps);
            }
            "batch" => {
                cfg.batch = cx
                    .int_in(e, 1, MAX_BATCH, "an integer from 1 to 2^20")
                    .unwrap_or(cfg.batch);
                batch_span = Some(e.value.span);
            }
            "seq" => {
                cfg.seq = cx.int_in(e, 2, MAX_SEQ, "an integer from 2 to 2^20").unwrap_or(cfg.seq);
                seq_span = Some(e.value.span);
            }
            "lr" => cfg.lr = cx.positive(e, "a number > 0").unwrap_or(cfg.lr),
            "warmup" => {
                cfg.warmup = cx.int(e, 0, "an integer >= 0").unwrap_or(0);
                warmup_span = Some(e.value.span);
            }
            "schedule" => match &e.value.kind {
                ValueKind::Ident(s) if s == "constant" => cfg.schedule = LrSchedule::Constant,
                ValueKind::Ident(s) if s == "cosine" => cfg.schedule = LrSchedule::Cosine,
                ValueKind::Ident(s) if s == "linear" => cfg.schedule = LrSchedule::Linear,
                _ => cx.bad(e, "constant, cosine or linear"),
            },
            "optimizer" => {
                if let Some(o) = optimizer(&e.value, &mut cx) {
                    cfg.optimizer = o;
                }
            }
            "clip" => match &e.value.kind {
                ValueKind::Ident(s) if s == "none" => cfg.clip = None,
                _ => cfg.clip = cx.positive(e, "a number > 0 or none"),
            },
            "accumulate" => {
                cfg.accumulate = cx.int_in(e, 1, MAX_STEPS, "an integer from 1 to 2^32").unwrap_or(1);
            }
            "seed" => cfg.seed = cx.int(e, 0, "an integer >= 0").unwrap_or(0),
            "stop_on_collapse" => {
                cfg.stop_on_collapse = cx.int(e, 0, "an integer >= 0").unwrap_or(cfg.stop_on_collapse);
            }
            "checkpoint" => match e.value.kind {
                ValueKind::Int(n) if e.every && n >= 1 => cfg.checkpoint_every = Some(n as u64),
                _ => cx.bad(e, "`every N` with N >= 1"),
            },
            "out" => match &e.value.kind {
                ValueKind::Str(s) => cfg.out = Some(join_clean(dir, s)),
                _ => cx.bad(e, "a folder path in quotes"),
            },
            "head" => cfg.head = head(&e.value, &mut cx),
            "device" => match &e.value.kind {
                ValueKind::Ident(s) if s == "cpu" => cfg.device = Device::Cpu,
                ValueKind::Ident(s) if s == "cuda" => cfg.device = Device::Cuda,
                ValueKind::Ident(s) if s == "auto" => cfg.device = Device::Auto,
                _ => cx.bad(e, "cpu, cuda or auto"),
            },
            _ => {}
        }
    }
    if let Some(span) = seq_span.or(batch_span)
        && cfg.batch.saturating_mul(cfg.seq) > MAX_TOKENS
    {
        let mut d = Diagnostic::error(
            Code::TrainBadValue,
            file,
            format!(
                "batch {} x seq {} = {} tokens per micro-batch, beyond what a step can hold (at most 2^24 = {MAX_TOKENS})",
                cfg.batch,
                cfg.seq,
                cfg.batch.saturating_mul(cfg.seq)
            ),
        )
        .label(span, "too many tokens per micro-batch")
        .help("lower batch or seq; `accumulate N` trains on N micro-batches per step");
        if let (Some(b), Some(_)) = (batch_span, seq_span) {
            d = d.label(b, "with this batch");
        }
        cx.errs.push(d);
    }
    if let (Some(a), Some(b)) = (eval_data_span, split_span) {
        cx.errs.push(
            Diagnostic::error(
                Code::TrainBadValue,
                file,
                "`eval_data` and `split` both name the validation data",
            )
            .label(b, "held out from `data`")
            .label(a, "a file of its own")
            .help("keep one: `eval_data \"FILE\"` or `split 0.1`"),
        );
    }
    if let Some(span) = eval_span
        && eval_data_span.is_none()
        && split_span.is_none()
    {
        cx.errs.push(
            Diagnostic::error(Code::TrainBadValue, file, "`eval every` without validation data")
                .label(span, "nothing to evaluate on")
                .help("hold out part of the data with `split 0.1`, or name a file with `eval_data \"FILE\"`"),
        );
    }
    if let Some(span) = warmup_span
        && cfg.warmup >= cfg.steps
    {
        cx.errs.push(
            Diagnostic::error(
                Code::TrainBadValue,
                file,
                format!(
                    "warmup ({}) must be shorter than the run ({} steps)",
                    cfg.warmup, cfg.steps
                ),
            )
            .label(span, "too long"),
        );
    }
    cfg
}

/// A data file setting (`data`, `eval_data`): a path in quotes, relative to
/// `dir`, that names an existing file.
fn data_file(e: &TrainEntry, cx: &mut Cx<'_>, dir: &Path) -> Option<std::path::PathBuf> {
    let ValueKind::Str(s) = &e.value.kind else {
        cx.bad(e, "a file path in quotes");
        return None;
    };
    let p = join_clean(dir, s);
    if p.is_dir() {
        cx.errs.push(
            Diagnostic::error(
                Code::TrainDataNotAFile,
                cx.file,
                format!("`{}` is a folder, not a data file", p.display()),
            )
            .label(e.value.span, "a folder")
            .help("name one file: text (.txt), JSONL (.jsonl) or token ids (.safetensors)"),
        );
    } else if !p.is_file() {
        cx.errs.push(
            Diagnostic::error(
                Code::TrainDataNotFound,
                cx.file,
                format!("data file `{}` does not exist", p.display()),
            )
            .label(e.value.span, "no such file")
            .help("paths are relative to the folder of the .lamda file"),
        );
    }
    Some(p)
}

/// `classify(labels = N, pool = cls|mean)`.
fn head(v: &Value, cx: &mut Cx<'_>) -> Option<Head> {
    const USAGE: &str = "head classify(labels = 2, pool = cls)";
    let ValueKind::Call(c) = &v.kind else {
        cx.bad_at(v.span, "head", "classify(labels = N, pool = cls or mean)", &v.kind);
        return None;
    };
    if c.name.name != "classify" {
        cx.errs.push(
            Diagnostic::error(Code::TrainBadValue, cx.file, format!("unknown head `{}`", c.name.name))
                .label(c.name.span, "not a head")
                .help(format!("lamdac has one head, sequence classification: `{USAGE}`")),
        );
        return None;
    }
    let (mut labels, mut pool) = (None, Pool::Cls);
    let mut ok = true;
    for a in &c.args {
        let Some(key) = &a.name else {
            cx.errs.push(
                Diagnostic::error(Code::TrainBadValue, cx.file, "classify takes named arguments")
                    .label(a.span, "name this argument")
                    .help(USAGE),
            );
            ok = false;
            continue;
        };
        match (key.name.as_str(), &a.value.kind) {
            ("labels", ValueKind::Int(n)) if (2..=1 << 16).contains(n) => labels = Some(*n as usize),
            ("labels", other) => {
                cx.bad_at(a.value.span, "labels", "an integer from 2 to 65536", other);
                ok = false;
            }
            ("pool", ValueKind::Ident(p)) if p == "cls" => pool = Pool::Cls,
            ("pool", ValueKind::Ident(p)) if p == "mean" => pool = Pool::Mean,
            ("pool", other) => {
                cx.bad_at(a.value.span, "pool", "cls or mean", other);
                ok = false;
            }
            (other, _) => {
                cx.errs.push(
                    Diagnostic::error(
                        Code::TrainUnknownKey,
                        cx.file,
                        format!("classify has no argument `{other}`"),
                    )
                    .label(key.span, "unknown argument")
                    .help(format!("classify takes labels and pool: `{USAGE}`")),
                );
                ok = false;
            }
        }
    }
    let Some(labels) = labels else {
        if ok {
            cx.errs.push(
                Diagnostic::error(Code::TrainBadValue, cx.file, "classify needs the number of labels")
                    .label(c.span, "no `labels = N`")
                    .help(USAGE),
            );
        }
        return None;
    };
    ok.then_some(Head { labels, pool })
}

fn optimizer(v: &Value, cx: &mut Cx<'_>) -> Option<AdamW> {
    let (name, args) = match &v.kind {
        ValueKind::Ident(n) => (n.as_str(), &[][..]),
        ValueKind::Call(c) => (c.name.name.as_str(), c.args.as_slice()),
        other => {
            cx.bad_at(v.span, "optimizer", "adamw(...)", other);
            return None;
        }
    };
    if name != "adamw" {
        let help = match crate::suggest::closest(name, ["adamw"]) {
            Some(_) => "did you mean `adamw`? lamdac implements AdamW (PyTorch semantics)",
            None => "lamdac implements AdamW (PyTorch semantics): `optimizer adamw(wd = 0.01)`",
        };
        cx.errs.push(
            Diagnostic::error(Code::TrainBadValue, cx.file, format!("unknown optimizer `{name}`"))
                .label(v.span, "not an optimizer")
                .help(help),
        );
        return None;
    }
    let mut o = AdamW::default();
    for a in args {
        let Some(key) = &a.name else {
            cx.errs.push(
                Diagnostic::error(Code::TrainBadValue, cx.file, "adamw takes named arguments")
                    .label(a.span, "name this argument")
                    .help("adamw(betas = (0.9, 0.999), eps = 1e-8, wd = 0.0)"),
            );
            continue;
        };
        let num = |v: &Value| v.kind.as_f64();
        match key.name.as_str() {
            "betas" => match &a.value.kind {
                ValueKind::Tuple(t) if t.len() == 2 => match (num(&t[0]), num(&t[1])) {
                    (Some(b1), Some(b2)) if (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) => {
                        o.beta1 = b1;
                        o.beta2 = b2;
                    }
                    _ => cx.bad_at(a.value.span, "betas", "two numbers in [0, 1)", &a.value.kind),
                },
                other => cx.bad_at(a.value.span, "betas", "a pair (b1, b2)", other),
            },
            "eps" => match num(&a.value) {
                Some(x) if x > 0.0 => o.eps = x,
                _ => cx.bad_at(a.value.span, "eps", "a number > 0", &a.value.kind),
            },
            "wd" | "weight_decay" => match num(&a.value) {
                Some(x) if x >= 0.0 => o.weight_decay = x,
                _ => cx.bad_at(a.value.span, "wd", "a number >= 0", &a.value.kind),
            },
            other => {
                let known = ["betas", "eps", "wd", "weight_decay"];
                let help = match crate::suggest::closest(other, known) {
                    Some(s) => format!("did you mean `{s}`? adamw takes betas, eps, wd"),
                    None => "adamw takes betas, eps, wd".to_string(),
                };
                cx.errs.push(
                    Diagnostic::error(
                        Code::TrainUnknownKey,
                        cx.file,
                        format!("adamw has no argument `{other}`"),
                    )
                    .label(key.span, "unknown argument")
                    .help(help),
                );
            }
        }
    }
    Some(o)
}
