//! `lamdac bench`: side-by-side timings of one spec's training step, in one run.
//!
//! Every variant trains the same spec on the same data from the same
//! initialisation: this spec and its LoRA twin (every rule with LoRA at the
//! same ranks), each unfused (the reference ops) and fused (generated
//! kernels). After `warmup` untimed steps, `steps` steps are timed with a
//! wall clock; the report gives milliseconds per step, tokens per second,
//! trainable parameters, and the plan's activation peak and saved bytes.
//! Timings are only comparable within one run on one machine.

use std::path::Path;
use std::time::Instant;

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
}

/// Times every variant on `spec`.
pub fn bench(
    spec: &Path,
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
        let mut s = prepare(&opts)?;
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
        let started = Instant::now();
        let mut tokens = 0usize;
        let mut last = f32::NAN;
        for i in 0..steps {
            let st = tr.train_step()?;
            if warmup == 0 && i == 0 {
                first = st.loss;
            }
            tokens += st.tokens;
            last = st.loss;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        if profile && let Some(e) = tr.cpu_executor() {
            eprintln!(
                "profile of `{}` ({steps} steps):",
                if v.lora { "lora" } else { "this spec" }
            );
            for (op, d, n) in e.profile().into_iter().take(12) {
                eprintln!("  {op:<28} {:>9.1} ms  {n:>7} calls", d.as_secs_f64() * 1e3);
            }
        }
        let phase = tr.plan.phases.first();
        let trainable: u64 = phase.map_or(0, |p| p.trainable.iter().map(|&i| tr.plan.params[i].numel()).sum());
        rows.push(BenchRow {
            variant: format!(
                "{}{}",
                if v.lora { "lora (same ranks)" } else { "this spec" },
                if v.fuse { ", fused" } else { ", reference ops" }
            ),
            ms_per_step: secs * 1e3 / steps.max(1) as f64,
            tokens_per_s: tokens as f64 / secs,
            trainable_params: trainable,
            activation_peak_bytes: tr.plan.memory.activations_peak,
            saved_bytes: tr.plan.memory.saved,
            first_loss: first,
            last_loss: last,
        });
    }
    Ok(rows)
}

/// The report as an aligned table.
pub fn render(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<32} {:>10} {:>12} {:>12} {:>14} {:>12}\n",
        "variant", "ms/step", "tokens/s", "trainable", "act. peak", "saved"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<32} {:>10.1} {:>12.0} {:>12} {:>14} {:>12}\n",
            r.variant,
            r.ms_per_step,
            r.tokens_per_s,
            r.trainable_params,
            lamda_compiler::report::bytes(r.activation_peak_bytes),
            lamda_compiler::report::bytes(r.saved_bytes)
        ));
    }
    out
}
