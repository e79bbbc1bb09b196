//! The golden vectors of tests/golden (an independent PyTorch implementation),
//! reproduced through the path `lamdac train` takes: a .lamda spec per case
//! (tests/golden_specs), `session::prepare` and `session::run`.
//!
//! Tolerances (per tensor, max-norm): |got - want|_max <= atol + rtol |want|_max.
//! Losses: rtol 1e-5; logits: atol 1e-4; init tensors: atol 1e-5; gradients,
//! parameters and AdamW moments: rtol 1e-4 (parameters also atol 1e-6);
//! frozen columns and ranks: exact; energies: atol 1e-6.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::prepare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lamda_runtime::checkpoint::SafetensorsFile;
use lamda_runtime::session::{Observer, RunOptions, run};
use lamda_runtime::train::{StepStats, Trainer};

fn expected(case: &str) -> SafetensorsFile {
    SafetensorsFile::open(&PathBuf::from(format!("tests/golden/{case}/expected.safetensors"))).unwrap()
}

fn f32s(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.f32(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .copied()
        .collect()
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((f64::from(g) - f64::from(w)).abs()));
    assert!(
        err <= atol + rtol * scale,
        "{what}: max error {err:e} > {atol:e} + {rtol:e} * {scale:e}"
    );
}

fn modules(case: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(format!("tests/golden/{case}/case.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["modules"].as_array().unwrap().clone()
}

fn param(tr: &Trainer, name: &str) -> usize {
    tr.plan
        .params
        .iter()
        .position(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

struct Recorder {
    grad0: BTreeMap<String, Vec<f32>>,
    step1: BTreeMap<String, Vec<f32>>,
    frozen: BTreeMap<String, Vec<u64>>,
    final_logits: Vec<f32>,
    watch: Vec<String>,
}

impl Observer for Recorder {
    fn step(&mut self, tr: &Trainer, stats: &StepStats, _: f64) {
        for name in &self.watch {
            let p = param(tr, name);
            if stats.step == 0 {
                if !tr.grads[p].is_empty() {
                    self.grad0.insert(name.clone(), tr.grads[p].clone());
                }
                self.step1.insert(name.clone(), tr.params[p].clone());
            }
            self.frozen
                .entry(name.clone())
                .or_default()
                .push(tr.frozen_cols(p, stats.step) as u64);
        }
    }
    fn finish(&mut self, _: &Trainer, _: f32, logits: &[f32]) {
        self.final_logits = logits.to_vec();
    }
}

fn training_case(case: &str, fuse: bool) {
    let exp = expected(case);
    let mods = modules(case);
    let lora = case.starts_with("lora");
    let tensors: &[&str] = if lora { &["A", "B"] } else { &["A", "S", "B"] };
    let mut overrides = BTreeMap::new();
    if lora {
        for m in &mods {
            let name = m["name"].as_str().unwrap();
            overrides.insert(format!("{name}.A"), f32s(&exp, &format!("init.{name}.A")));
        }
    }
    let out = std::env::temp_dir().join(format!("lamdac-golden-{case}-{fuse}-{}", std::process::id()));
    let opts = RunOptions {
        spec: PathBuf::from(format!("tests/golden_specs/{case}.lamda")),
        out: Some(out.clone()),
        init_overrides: overrides,
        fuse,
        ..RunOptions::default()
    };
    let mut session = prepare(&opts).unwrap_or_else(|e| panic!("{case}: {e}"));
    // Step 0 of a LaMDA run computes the base model: init logits ~ base logits.
    let eval_batch = session.eval_batch.clone();
    let init = session.trainer.evaluate(&eval_batch, true).unwrap();
    let init_logits = init.logits.unwrap();
    close("init.logits", &init_logits, &f32s(&exp, "init.logits"), 1e-4, 0.0);
    close("base.logits", &init_logits, &f32s(&exp, "base.logits"), 1e-4, 0.0);
    close("init.loss", &[init.loss], &f32s(&exp, "init.loss"), 1e-4, 0.0);
    close("base.loss", &[init.loss], &f32s(&exp, "base.loss"), 1e-4, 0.0);
    let tr = &session.trainer;
    let mut watch = Vec::new();
    for m in &mods {
        let name = m["name"].as_str().unwrap();
        for t in tensors {
            let full = format!("{name}.{t}");
            close(
                &format!("init {full}"),
                &tr.params[param(tr, &full)],
                &f32s(&exp, &format!("init.{full}")),
                1e-5,
                0.0,
            );
            watch.push(full);
        }
        if !lora {
            let w = format!("{name}.weight");
            close(
                &format!("init {w} (W_res)"),
                tr.param_values(param(tr, &w)).unwrap(),
                &f32s(&exp, &format!("init.{name}.W_res")),
                1e-5,
                0.0,
            );
        }
    }
    let mut rec = Recorder {
        grad0: BTreeMap::new(),
        step1: BTreeMap::new(),
        frozen: BTreeMap::new(),
        final_logits: Vec::new(),
        watch,
    };
    let summary = run(&mut session, &mut rec, &AtomicBool::new(false)).unwrap();
    let want_losses = f32s(&exp, "losses");
    assert_eq!(summary.losses.len(), want_losses.len());
    for (t, (g, w)) in summary.losses.iter().zip(&want_losses).enumerate() {
        close(&format!("losses[{t}]"), &[*g], &[*w], 0.0, 1e-5);
    }
    close(
        "final.logits",
        &rec.final_logits,
        &f32s(&exp, "final.logits"),
        1e-4,
        0.0,
    );
    let tr = &session.trainer;
    for m in &mods {
        let name = m["name"].as_str().unwrap();
        let trainable: Vec<&str> = m["trainable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for t in &trainable {
            let full = format!("{name}.{t}");
            let p = param(tr, &full);
            if let Some(g) = rec.grad0.get(&full) {
                close(
                    &format!("grad0 {full}"),
                    g,
                    &f32s(&exp, &format!("grad0.{full}")),
                    0.0,
                    1e-4,
                );
            }
            close(
                &format!("step1 {full}"),
                &rec.step1[&full],
                &f32s(&exp, &format!("step1.{full}")),
                1e-6,
                1e-4,
            );
            close(
                &format!("final {full}"),
                &tr.params[p],
                &f32s(&exp, &format!("final.{full}")),
                1e-6,
                1e-4,
            );
            close(
                &format!("exp_avg {full}"),
                &tr.adam[p].exp_avg,
                &f32s(&exp, &format!("final.{full}.exp_avg")),
                0.0,
                1e-4,
            );
            close(
                &format!("exp_avg_sq {full}"),
                &tr.adam[p].exp_avg_sq,
                &f32s(&exp, &format!("final.{full}.exp_avg_sq")),
                0.0,
                1e-4,
            );
        }
        if !lora {
            let want: Vec<u64> = exp
                .i64(&format!("frozen_cols.{name}"))
                .unwrap()
                .iter()
                .map(|&v| v as u64)
                .collect();
            assert_eq!(rec.frozen[&format!("{name}.B")], want, "frozen_cols.{name}");
            // A never changes.
            close(
                &format!("{name}.A unchanged"),
                &tr.params[param(tr, &format!("{name}.A"))],
                &f32s(&exp, &format!("init.{name}.A")),
                0.0,
                0.0,
            );
        }
    }
    // The outputs a run promises.
    assert!(out.join("adapter.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), want_losses.len());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn golden_lamda_qv_r4_linear03() {
    training_case("lamda_qv_r4_linear03", false);
}

#[test]
fn golden_lamda_qv_r4_linear03_fused() {
    training_case("lamda_qv_r4_linear03", true);
}

#[test]
fn golden_lamda_all7_r2_never() {
    training_case("lamda_all7_r2_never", false);
}

#[test]
fn golden_lamda_all7_r2_never_fused() {
    training_case("lamda_all7_r2_never", true);
}

#[test]
fn golden_lora_qv_r4_a8() {
    training_case("lora_qv_r4_a8", false);
}

#[test]
fn golden_lora_qv_r4_a8_fused() {
    training_case("lora_qv_r4_a8", true);
}

/// LaMDA++ through the compiler pipeline, with energies from the case's weights.
#[test]
fn golden_alloc_basic() {
    struct FileSpectra(SafetensorsFile);
    impl lamda_compiler::pipeline::Spectra for FileSpectra {
        fn energy(&mut self, weight: &str, r0: u64) -> Result<f64, String> {
            let name = weight.trim_end_matches(".weight");
            let w = self.0.f32(name).map_err(|e| e.to_string())?;
            let (rows, cols) = (w.shape()[0], w.shape()[1]);
            let data: Vec<f32> = w.iter().copied().collect();
            let m = lamda_runtime::linalg::MatF32Ref::new("w", &data, rows, cols).map_err(|e| e.to_string())?;
            lamda_runtime::linalg::energy(m, r0 as usize).map_err(|e| e.to_string())
        }
    }
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/golden/alloc_basic/case.json").unwrap()).unwrap();
    let exp = expected("alloc_basic");
    let template = std::fs::read_to_string("tests/golden_specs/alloc_basic.lamda").unwrap();
    for (i, sc) in case["scenarios"].as_array().unwrap().iter().enumerate() {
        let budget = sc["budget"].as_u64().unwrap();
        let src = template.replace("BUDGET", &budget.to_string());
        let checked = lamda_compiler::resolve::check_source("alloc_basic.lamda", &src, Path::new("."));
        if sc.get("error").is_some() {
            let codes: Vec<&str> = checked.diags.iter().map(|d| d.code.as_str()).collect();
            assert!(
                codes.contains(&"lamda::rank::infeasible_budget"),
                "scenario {i}: {codes:?}"
            );
            continue;
        }
        let spec = checked
            .spec
            .unwrap_or_else(|| panic!("scenario {i}: {:?}", checked.diags));
        let weights = SafetensorsFile::open(Path::new("tests/golden/alloc_basic/weights.safetensors")).unwrap();
        let plan = lamda_compiler::pipeline::compile(&spec, 1, 2, Some(&mut FileSpectra(weights))).unwrap();
        let alloc = &plan.allocation[0];
        assert!(alloc.allocated);
        let names: Vec<&str> = case["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        let got_names: Vec<&str> = alloc.modules.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(got_names, names, "module order");
        let want_e: Vec<f64> = exp
            .f64(&format!("scenario{i}.energy"))
            .unwrap()
            .iter()
            .copied()
            .collect();
        let want_r: Vec<i64> = exp
            .i64(&format!("scenario{i}.ranks"))
            .unwrap()
            .iter()
            .copied()
            .collect();
        for (k, m) in alloc.modules.iter().enumerate() {
            assert!(
                (m.1 - want_e[k]).abs() <= 1e-6,
                "scenario {i} energy {k}: {} vs {}",
                m.1,
                want_e[k]
            );
            assert_eq!(m.2 as i64, want_r[k], "scenario {i} rank of {}", m.0);
        }
        // The plan's adapter shapes follow the allocated ranks.
        for (a, m) in plan.adapters.iter().zip(&alloc.modules) {
            assert_eq!(a.rank as u64, m.2);
        }
    }
}
