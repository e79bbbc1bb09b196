//! The BERT golden vectors of tests/golden_bert (transformers'
//! BertForSequenceClassification and an independent PyTorch LaMDA, made by
//! scripts/make_bert_fixtures.py), reproduced by the compiled training step on
//! the CPU executor, fused and unfused: LaMDA's initial tensors and residual
//! weights, the logits and loss of the adapted model (CLS pooling through the
//! pooler, and mean pooling), and the first step's gradients of every
//! trainable tensor (S, B, the classifier's weight and bias); then the
//! case's 5-step training trace through the trainer (losses, the parameters
//! after the first and the last step, AdamW's moments, the final logits).
//! Also: all-MiniLM-L6-v2's tokenizer as lamdac drives it (a text or a pair,
//! special tokens, longest-first truncation, padding and token types through
//! the classification data path) against transformers' outputs in
//! minilm_tokens.json; skipped (and recorded) when the model is not fetched.
//!
//! Tolerances (per tensor, max-norm) as tests/golden.rs: |got - want|_max <=
//! atol + rtol |want|_max. Init tensors: atol 1e-5; logits: atol 1e-4; loss:
//! rtol 1e-5; gradients: rtol 1e-4; parameters: atol 1e-6 + rtol 1e-4;
//! AdamW moments: rtol 1e-4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use lamda_compiler::pipeline::{Options, compile_with};
use lamda_compiler::plan::Plan;
use lamda_runtime::checkpoint::{Checkpoint, SafetensorsFile, Weights};
use lamda_runtime::data::classes::ClassExample;
use lamda_runtime::data::{BatchConfig, Batcher, Dataset, Tokenizer};
use lamda_runtime::exec::{Executor, Inputs};
use lamda_runtime::init::initialize;
use lamda_runtime::session::check_spec;
use lamda_runtime::testkit::skip;
use lamda_runtime::train::Trainer;

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

/// The trainable tensors of the case, by name.
fn trainable_names() -> Vec<String> {
    let mut names: Vec<String> = MODULES
        .iter()
        .flat_map(|m| [format!("{m}.S"), format!("{m}.B")])
        .collect();
    names.push("classifier.weight".into());
    names.push("classifier.bias".into());
    names
}

/// The case's batch as classification examples (ids cut at each row's length).
fn case_examples() -> Vec<ClassExample> {
    let inputs = SafetensorsFile::open(&Path::new(CASE).join("inputs.safetensors")).unwrap();
    let tokens = i64s(&inputs, "input_ids");
    let types = i64s(&inputs, "token_type_ids");
    let mask = i64s(&inputs, "attention_mask");
    let labels = i64s(&inputs, "labels");
    (0..3)
        .map(|r| {
            let row = r * 10..r * 10 + 10;
            let len = mask[row.clone()].iter().sum::<i64>() as usize;
            ClassExample {
                ids: tokens[row.clone()][..len].iter().map(|&t| t as u32).collect(),
                type_ids: types[row][..len].iter().map(|&t| t as u32).collect(),
                label: labels[r],
                line: r + 1,
            }
        })
        .collect()
}

/// The 5-step trace of the case (same batch every step, constant lr 1e-2,
/// AdamW without weight decay) through `Trainer::train_step`, fused and
/// unfused: every loss, the parameters after step 1 and step 5, the AdamW
/// moments after step 5, and the final logits equal the reference's.
#[test]
fn bert_training_trace_matches_the_reference() {
    let want = SafetensorsFile::open(&Path::new(CASE).join("expected.safetensors")).unwrap();
    let weights = Weights::open(Path::new(CASE)).unwrap();
    let want_losses = f32s(&want, "losses");
    assert_eq!(want_losses.len(), 6);
    for fuse in [false, true] {
        let plan = plan("tests/golden_bert_specs/bert_lamda_qv_r4.lamda", fuse);
        let params = initialize(&plan, &weights, &BTreeMap::new()).unwrap();
        let data = Dataset::from_classes(Path::new(CASE), case_examples(), 0);
        let cfg = BatchConfig {
            seq: 10,
            batch: 3,
            seed: 0,
            shuffle: Some(false),
        };
        let batch = Batcher::new(data.clone(), cfg).unwrap().next_batch();
        let mut tr = Trainer::new(plan, params, Batcher::new(data, cfg).unwrap());
        let a0: BTreeMap<String, Vec<f32>> = MODULES
            .iter()
            .map(|m| {
                let n = format!("{m}.A");
                let p = param(&tr.plan, &n);
                (n, tr.params[p].clone())
            })
            .collect();
        let mut losses = Vec::new();
        for t in 0..5 {
            let stats = tr.train_step().unwrap();
            assert_eq!(stats.step, t);
            losses.push(stats.loss);
            if t == 0 {
                for name in trainable_names() {
                    let p = param(&tr.plan, &name);
                    close(
                        &format!("step1 {name} (fuse {fuse})"),
                        &tr.params[p],
                        &f32s(&want, &format!("step1.{name}")),
                        1e-6,
                        1e-4,
                    );
                }
            }
        }
        let last = tr.evaluate(&batch, true).unwrap();
        losses.push(last.loss);
        for (t, (g, w)) in losses.iter().zip(&want_losses).enumerate() {
            close(&format!("losses[{t}] (fuse {fuse})"), &[*g], &[*w], 0.0, 1e-5);
        }
        close(
            &format!("final.logits (fuse {fuse})"),
            &last.logits.unwrap(),
            &f32s(&want, "final.logits"),
            1e-4,
            0.0,
        );
        for name in trainable_names() {
            let p = param(&tr.plan, &name);
            close(
                &format!("final {name} (fuse {fuse})"),
                &tr.params[p],
                &f32s(&want, &format!("final.{name}")),
                1e-6,
                1e-4,
            );
            close(
                &format!("exp_avg {name} (fuse {fuse})"),
                &tr.adam[p].exp_avg,
                &f32s(&want, &format!("final.{name}.exp_avg")),
                0.0,
                1e-4,
            );
            close(
                &format!("exp_avg_sq {name} (fuse {fuse})"),
                &tr.adam[p].exp_avg_sq,
                &f32s(&want, &format!("final.{name}.exp_avg_sq")),
                0.0,
                1e-4,
            );
            assert_eq!(tr.adam[p].step, 5, "{name}: one AdamW step per training step");
        }
        for (n, a) in &a0 {
            assert_eq!(&tr.params[param(&tr.plan, n)], a, "{n} never changes");
        }
    }
}

/// all-MiniLM-L6-v2's tokenizer.json as lamdac loads it (padding and
/// truncation of the file switched off, lamdac's own longest-first cut at
/// `seq`), and the classification data path around it (JSONL -> examples ->
/// padded batch rows, token types, lengths), against transformers'
/// `tok(text[, text_b], max_length=32, truncation=True, padding="max_length")`.
#[test]
fn minilm_tokenizer_matches_transformers() {
    let dir = Path::new("models/all-MiniLM-L6-v2");
    if !dir.join("tokenizer.json").is_file() {
        skip("models/all-MiniLM-L6-v2 is not fetched (scripts/fetch-minilm.sh)");
        return;
    }
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/golden_bert/minilm_tokens.json").unwrap()).unwrap();
    let max_len = fixture["max_length"].as_u64().unwrap() as usize;
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    let ckpt = Checkpoint::open(dir).unwrap();
    let tok = Tokenizer::for_checkpoint(&ckpt).unwrap();
    assert_eq!(tok.pad_id(), fixture["special_ids"]["[PAD]"].as_u64().unwrap() as u32);
    let list =
        |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    let mut jsonl = String::new();
    for (i, c) in cases.iter().enumerate() {
        let (a, b) = match c.get("text") {
            Some(t) => (t.as_str().unwrap(), None),
            None => (c["text_a"].as_str().unwrap(), Some(c["text_b"].as_str().unwrap())),
        };
        let len = c["length"].as_u64().unwrap() as usize;
        let ids = list(&c["input_ids"]);
        let types = list(&c["token_type_ids"]);
        let (got_ids, got_types) = tok.encode_sequence(a, b, max_len).unwrap();
        let got_ids: Vec<i64> = got_ids.iter().map(|&v| i64::from(v)).collect();
        let got_types: Vec<i64> = got_types.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(got_ids, ids[..len], "case {i} ids: {a:?}");
        assert_eq!(got_types, types[..len], "case {i} token types");
        assert_eq!(
            c["truncated"].as_bool().unwrap(),
            c["untruncated_length"].as_u64().unwrap() as usize > len
        );
        let mut line = serde_json::json!({ "label": i % 2 });
        match b {
            None => line["text"] = a.into(),
            Some(b) => {
                line["text_a"] = a.into();
                line["text_b"] = b.into();
            }
        }
        jsonl.push_str(&format!("{line}\n"));
    }
    // The same inputs through the classification data path, batched and padded.
    let tmp = std::env::temp_dir().join(format!("lamdac-minilm-tokens-{}.jsonl", std::process::id()));
    std::fs::write(&tmp, jsonl).unwrap();
    let (data, held) = Dataset::classes(&tmp, &tok, max_len, 2, None).unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert!(held.is_none());
    let cfg = BatchConfig {
        seq: max_len,
        batch: cases.len(),
        seed: 0,
        shuffle: Some(false),
    };
    let batch = Batcher::new(data, cfg).unwrap().next_batch();
    let rows = batch.classes.as_ref().unwrap();
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            batch.input_ids.row(i).to_vec(),
            list(&c["input_ids"]),
            "case {i}: padded ids"
        );
        assert_eq!(
            rows.token_types.row(i).to_vec(),
            list(&c["token_type_ids"]),
            "case {i}: token types"
        );
        let mask = list(&c["attention_mask"]);
        assert_eq!(rows.lengths[i], mask.iter().sum::<i64>(), "case {i}: length");
        assert_eq!(rows.labels[i], (i % 2) as i64);
    }
}
