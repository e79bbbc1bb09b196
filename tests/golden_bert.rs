//! The BERT golden vectors of tests/golden_bert (transformers'
//! BertForSequenceClassification and an independent PyTorch LaMDA, made by
//! scripts/make_bert_fixtures.py), reproduced by the compiled training step on
//! the CPU executor, fused and unfused: LaMDA's initial tensors and residual
//! weights, the logits and loss of the adapted model (CLS pooling through the
//! pooler, and mean pooling), and the first step's gradients of every
//! trainable tensor (S, B, the classifier's weight and bias).
//!
//! Tolerances (per tensor, max-norm) as tests/golden.rs: |got - want|_max <=
//! atol + rtol |want|_max. Init tensors: atol 1e-5; logits: atol 1e-4; loss:
//! rtol 1e-5; gradients: rtol 1e-4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use lamda_compiler::pipeline::{Options, compile_with};
use lamda_compiler::plan::Plan;
use lamda_runtime::checkpoint::{SafetensorsFile, Weights};
use lamda_runtime::exec::{Executor, Inputs};
use lamda_runtime::init::initialize;
use lamda_runtime::session::check_spec;

const CASE: &str = "tests/golden_bert/bert_lamda_qv_r4";

fn f32s(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.f32(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .copied()
        .collect()
}

fn i64s(file: &SafetensorsFile, name: &str) -> Vec<i64> {
    file.i64(name)
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

fn plan(spec: &str, fuse: bool) -> Plan {
    let checked = check_spec(Path::new(spec)).unwrap();
    let spec = checked.spec.clone().unwrap_or_else(|| panic!("{spec} does not check"));
    compile_with(&spec, 3, 10, None, Options { fuse, head_loss: fuse }).unwrap()
}

fn param(plan: &Plan, name: &str) -> usize {
    plan.params
        .iter()
        .position(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

/// The adapted modules of the case, by Hugging Face name.
const MODULES: [&str; 4] = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.self.value",
    "bert.encoder.layer.1.attention.self.query",
    "bert.encoder.layer.1.attention.self.value",
];

/// Runs the first phase's program once on the case's batch; returns the
/// loss, the logits (from the evaluation program) and every trainable
/// tensor's gradient by name.
fn step0(plan: &Plan, params: &[Vec<f32>]) -> (f32, Vec<f32>, BTreeMap<String, Vec<f32>>) {
    let inputs = SafetensorsFile::open(&Path::new(CASE).join("inputs.safetensors")).unwrap();
    let tokens = i64s(&inputs, "input_ids");
    let labels = i64s(&inputs, "labels");
    let token_types = i64s(&inputs, "token_type_ids");
    let mask = i64s(&inputs, "attention_mask");
    let lengths: Vec<i64> = mask.chunks(10).map(|r| r.iter().sum()).collect();
    let inputs = Inputs {
        tokens: &tokens,
        labels: &labels,
        token_types: &token_types,
        lengths: &lengths,
    };
    let mut exec = Executor::new();
    let eval = exec.run_with(&plan.eval, params, &mut [], inputs, 1.0, true).unwrap();
    let phase = &plan.phases[0];
    let mut grads: Vec<Vec<f32>> = plan
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if phase.trainable.contains(&i) {
                vec![0.0; p.numel() as usize]
            } else {
                Vec::new()
            }
        })
        .collect();
    let train = exec
        .run_with(&phase.program, params, &mut grads, inputs, 1.0, false)
        .unwrap();
    assert_eq!(train.count, 3, "every sequence counts");
    assert!(
        (train.loss - eval.loss).abs() <= 1e-6 * eval.loss.abs(),
        "train and eval losses"
    );
    let by_name = phase
        .trainable
        .iter()
        .map(|&i| (plan.params[i].name.clone(), grads[i].clone()))
        .collect();
    (eval.loss, eval.logits.unwrap(), by_name)
}

#[test]
fn bert_cls_head_matches_transformers_and_the_reference_lamda() {
    let want = SafetensorsFile::open(&Path::new(CASE).join("expected.safetensors")).unwrap();
    let weights = Weights::open(Path::new(CASE)).unwrap();
    for fuse in [false, true] {
        let plan = plan("tests/golden_bert_specs/bert_lamda_qv_r4.lamda", fuse);
        let params = initialize(&plan, &weights, &BTreeMap::new()).unwrap();
        for m in MODULES {
            for t in ["A", "S", "B"] {
                let got = &params[param(&plan, &format!("{m}.{t}"))];
                close(
                    &format!("init {m}.{t}"),
                    got,
                    &f32s(&want, &format!("init.{m}.{t}")),
                    1e-5,
                    0.0,
                );
            }
            // a fused plan stacks q, k, v: the stack is then the residual's only copy
            let w = &params[param(&plan, &format!("{m}.weight"))];
            if !fuse {
                close(
                    &format!("{m} residual"),
                    w,
                    &f32s(&want, &format!("init.{m}.W_res")),
                    1e-5,
                    0.0,
                );
            }
        }
        let (loss, logits, grads) = step0(&plan, &params);
        close(
            &format!("logits (fuse {fuse})"),
            &logits,
            &f32s(&want, "init.logits"),
            1e-4,
            0.0,
        );
        close("base logits", &logits, &f32s(&want, "base.logits"), 1e-4, 0.0);
        close("loss", &[loss], &f32s(&want, "init.loss"), 0.0, 1e-5);
        assert_eq!(
            grads.len(),
            10,
            "S and B of four modules, the classifier's weight and bias"
        );
        for (name, g) in &grads {
            close(
                &format!("grad {name} (fuse {fuse})"),
                g,
                &f32s(&want, &format!("grad0.{name}")),
                0.0,
                1e-4,
            );
        }
    }
}

#[test]
fn bert_mean_pool_head_matches_the_reference() {
    let want = SafetensorsFile::open(&Path::new(CASE).join("expected.safetensors")).unwrap();
    let weights = Weights::open(Path::new(CASE)).unwrap();
    for fuse in [false, true] {
        let plan = plan("tests/golden_bert_specs/bert_lamda_qv_r4_mean.lamda", fuse);
        let params = initialize(&plan, &weights, &BTreeMap::new()).unwrap();
        let (loss, logits, grads) = step0(&plan, &params);
        close(
            "mean-pool logits",
            &logits,
            &f32s(&want, "base.mean_pool_logits"),
            1e-4,
            0.0,
        );
        close(
            "mean-pool loss",
            &[loss],
            &f32s(&want, "mean_pool.init.loss"),
            0.0,
            1e-5,
        );
        for (name, g) in &grads {
            let w = f32s(&want, &format!("mean_pool.grad0.{name}"));
            close(&format!("mean-pool grad {name} (fuse {fuse})"), g, &w, 0.0, 1e-4);
        }
    }
}
