//! `lamdac bench`: side-by-side timings of one spec's training step, in one run.
//!
//! Every variant trains the same spec on the same data from the same
//! initialisation: this spec and its LoRA twin (every rule with LoRA at the
//! same ranks), each unfused (the reference ops) and fused (generated
//! kernels). After `warmup` untimed steps, `steps` steps are timed one by one
//! with a wall clock; the report gives the median milliseconds per step,
//! tokens per second at that median, trainable parameters, the plan's
//! activation peak and saved bytes, the time from the start of the variant to
//! its first step (by phase), and the process's peak resident memory so far
//! (meaningful per variant only when one variant runs per process, as
//! scripts/bench-vs-pytorch.sh does). Timings are only comparable within one
//! run on one machine.

use std::path::Path;
use std::time::Instant;

use lamda_compiler::resolve::Checked;

use crate::session::{RunOptions, SessionError, prepare};

/// One benchmarked variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// LoRA at the same ranks instead of the spec's methods.
    pub lora: bool,
    pub fuse: bool,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchRow {
    pub variant: String,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub trainable_params: u64,
    pub activation_peak_bytes: u64,
    pub saved_bytes: u64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// Seconds from the start of the variant to its first step.
    pub startup_s: f64,
    /// Those seconds by phase of `session::prepare`.
    pub startup_phases: Vec<(String, f64)>,
    /// Peak resident set of the whole process so far (Linux `VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (`VmHWM` in /proc/self/status), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

/// Times every variant on `spec`, whose front end's result is `checked`
/// (see [`crate::session::check_spec`]).
pub fn bench(
    spec: &Path,
    checked: &Checked,
    warmup: u64,
    steps: u64,
    variants: &[Variant],
    profile: bool,
) -> Result<Vec<BenchRow>, SessionError> {
    let mut rows = Vec::new();
    for v in variants {
        let opts = RunOptions {
            spec: spec.to_path_buf(),
            steps: Some(warmup + steps),
            fuse: v.fuse,
            lora_twin: v.lora,
            ..RunOptions::default()
        };
        let mut s = prepare(&opts, checked)?;
        let tr = &mut s.trainer;
        let mut first = f32::NAN;
        for i in 0..warmup {
            let st = tr.train_step()?;
            if i == 0 {
                first = st.loss;
            }
        }
        if profile && let Some(e) = tr.cpu_executor() {
            e.enable_profile();
        }
        let mut times = Vec::with_capacity(steps as usize);
        let mut tokens_per_step = 0usize;
        let mut last = f32::NAN;
        for i in 0..steps {
            let t = Instant::now();
            let st = tr.train_step()?;
            times.push(t.elapsed().as_secs_f64());
            if warmup == 0 && i == 0 {
                first = st.loss;
            }
            tokens_per_step = st.tokens;
            last = st.loss;
        }
        let secs = median(&mut times).max(1e-9);
        if profile && let Some(e) = tr.cpu_executor() {
            eprintln!(
                "profile of `{}` ({steps} steps):",
                if v.lora { "lora" } else { "this spec" }
            );
            for (op, d, n) in e.profile().into_iter().take(12) {
                eprintln!("  {op:<28} {:>9.1} ms  {n:>7} calls", d.as_secs_f64() * 1e3);
            }
        }
        if profile {
            // The verifiers run once, while compiling (part of the startup's `compile`).
            let v = &tr.plan.verify;
            eprintln!(
                "verifiers while compiling: IR {:.2} ms ({} runs), programs {:.2} ms ({} runs)",
                v.ir.as_secs_f64() * 1e3,
                v.ir_runs,
                v.programs.as_secs_f64() * 1e3,
                v.program_runs
            );
        }
        let phase = tr.plan.phases.first();
        let trainable: u64 = phase.map_or(0, |p| p.trainable.iter().map(|&i| tr.plan.params[i].numel()).sum());
        rows.push(BenchRow {
            variant: format!(
                "{}{}",
                if v.lora { "lora (same ranks)" } else { "this spec" },
                if v.fuse { ", fused" } else { ", reference ops" }
            ),
            ms_per_step: secs * 1e3,
            tokens_per_s: tokens_per_step as f64 / secs,
            trainable_params: trainable,
            activation_peak_bytes: tr.plan.memory.activations_peak,
            saved_bytes: tr.plan.memory.saved,
            first_loss: first,
            last_loss: last,
            startup_s: s.startup.total().as_secs_f64(),
            startup_phases: s
                .startup
                .phases
                .iter()
                .map(|(n, d)| ((*n).to_string(), d.as_secs_f64()))
                .collect(),
            peak_rss_bytes: peak_rss_bytes(),
        });
    }
    Ok(rows)
}

/// The report as an aligned table (with peak memory when one variant ran:
/// with more, the process's peak is the largest variant's).
pub fn render(rows: &[BenchRow]) -> String {
    let rss = rows.len() == 1;
    let mut out = format!(
        "{:<32} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}{}\n",
        "variant",
        "ms/step",
        "tokens/s",
        "trainable",
        "act. peak",
        "saved",
        "start s",
        if rss {
            format!(" {:>12}", "peak RSS")
        } else {
            String::new()
        }
    );
    for r in rows {
        let peak = match (rss, r.peak_rss_bytes) {
            (true, Some(b)) => format!(" {:>12}", lamda_compiler::report::bytes(b)),
            (true, None) => format!(" {:>12}", "?"),
            (false, _) => String::new(),
        };
        out.push_str(&format!(
            "{:<32} {:>10.1} {:>10.0} {:>10} {:>12} {:>12} {:>8.2}{peak}\n",
            r.variant,
            r.ms_per_step,
            r.tokens_per_s,
            r.trainable_params,
            lamda_compiler::report::bytes(r.activation_peak_bytes),
            lamda_compiler::report::bytes(r.saved_bytes),
            r.startup_s,
        ));
    }
    out
}
