//! Export and merge (SEMANTICS §9), checked against the PyTorch golden logits:
//! a LaMDA run exported as PEFT LoRA factors, loaded into lamdac's own LoRA
//! path (a different code path: `x W^T + (x A^T) B^T scale`), and the merged
//! weights loaded as a plain model, both reproduce `final.logits` of the
//! golden case. LoRA runs export their own factors unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::prepare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lamda_runtime::checkpoint::SafetensorsFile;
use lamda_runtime::export::{export_peft, merge};
use lamda_runtime::session::{Observer, RunOptions, run};

struct Quiet;
impl Observer for Quiet {}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamdac-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn golden_logits(case: &str) -> Vec<f32> {
    let f = SafetensorsFile::open(Path::new(&format!("tests/golden/{case}/expected.safetensors"))).unwrap();
    f.f32("final.logits").unwrap().iter().copied().collect()
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Logits of `model` on the case's batch, with a LoRA on q_proj and v_proj
/// whose factors come from `overrides` (or start at B = 0: the plain model).
fn lora_logits(
    dir: &Path,
    model: &Path,
    case: &str,
    rank: usize,
    alpha: f64,
    overrides: BTreeMap<String, Vec<f32>>,
) -> Vec<f32> {
    let spec = dir.join("check.lamda");
    let inputs = std::fs::canonicalize(format!("tests/golden/{case}/inputs.safetensors")).unwrap();
    std::fs::write(
        &spec,
        format!(
            "use \"{}\" as m\nadapt m.attn.{{q,v}} with lora rank {rank} alpha {alpha:?}\ntrain {{ data \"{}\" steps 1 batch 2 seq 16 }}\n",
            model.display(),
            inputs.display()
        ),
    )
    .unwrap();
    let opts = RunOptions {
        spec,
        out: Some(dir.join("check-out")),
        init_overrides: overrides,
        ..RunOptions::default()
    };
    let mut s = prepare(&opts).unwrap();
    let batch = s.eval_batch.clone();
    s.trainer.evaluate(&batch, true).unwrap().logits.unwrap()
}

#[test]
fn lamda_export_and_merge_reproduce_the_golden_final_logits() {
    let case = "lamda_qv_r4_linear03";
    let dir = tmp("lamda");
    let opts = RunOptions {
        spec: PathBuf::from(format!("tests/golden_specs/{case}.lamda")),
        out: Some(dir.join("run")),
        ..RunOptions::default()
    };
    run(&mut prepare(&opts).unwrap(), &mut Quiet, &AtomicBool::new(false)).unwrap();
    let adapter = dir.join("run/adapter.safetensors");
    let model = std::fs::canonicalize(format!("tests/golden/{case}")).unwrap();
    let want = golden_logits(case);

    // PEFT export: lora_A = A, lora_B = alpha (B S - B0 S0), lora_alpha = r.
    let factors = export_peft(&adapter, &model.display().to_string(), &dir.join("peft")).unwrap();
    assert_eq!(factors.len(), 4);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("peft/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 4.0);
    let peft = SafetensorsFile::open(&dir.join("peft/adapter_model.safetensors")).unwrap();
    assert!(
        peft.f32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
            .is_ok()
    );
    let mut overrides = BTreeMap::new();
    for f in &factors {
        overrides.insert(format!("{}.A", f.module), f.a.clone());
        overrides.insert(format!("{}.B", f.module), f.b.clone());
    }
    let got = lora_logits(&dir, &model, case, 4, 4.0, overrides);
    let err = max_err(&got, &want);
    assert!(err <= 1e-4, "exported LoRA vs golden final.logits: {err}");

    // Merge: W + Delta W, then the plain model (a LoRA with B = 0 changes nothing).
    merge(&adapter, &model, &dir.join("merged")).unwrap();
    let got = lora_logits(&dir, &dir.join("merged"), case, 1, 1.0, BTreeMap::new());
    let err = max_err(&got, &want);
    assert!(err <= 1e-4, "merged weights vs golden final.logits: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lora_exports_its_own_factors() {
    let case = "lora_qv_r4_a8";
    let dir = tmp("lora");
    let exp = SafetensorsFile::open(Path::new(&format!("tests/golden/{case}/expected.safetensors"))).unwrap();
    let mut overrides = BTreeMap::new();
    for l in 0..2 {
        for m in ["q", "v"] {
            let name = format!("model.layers.{l}.self_attn.{m}_proj");
            overrides.insert(
                format!("{name}.A"),
                exp.f32(&format!("init.{name}.A")).unwrap().iter().copied().collect(),
            );
        }
    }
    let opts = RunOptions {
        spec: PathBuf::from(format!("tests/golden_specs/{case}.lamda")),
        out: Some(dir.join("run")),
        init_overrides: overrides,
        ..RunOptions::default()
    };
    run(&mut prepare(&opts).unwrap(), &mut Quiet, &AtomicBool::new(false)).unwrap();
    let model = std::fs::canonicalize(format!("tests/golden/{case}")).unwrap();
    let factors = export_peft(&dir.join("run/adapter.safetensors"), "m", &dir.join("peft")).unwrap();
    for f in &factors {
        assert_eq!(f.lora_alpha, 8.0);
        let want: Vec<f32> = exp
            .f32(&format!("final.{}.B", f.module))
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert!(max_err(&f.b, &want) <= 1e-6 + 1e-4 * want.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    }
    merge(&dir.join("run/adapter.safetensors"), &model, &dir.join("merged")).unwrap();
    let got = lora_logits(&dir, &dir.join("merged"), case, 1, 1.0, BTreeMap::new());
    assert!(max_err(&got, &golden_logits(case)) <= 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
}
