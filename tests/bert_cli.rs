//! A classifier end to end on a tiny random BERT (a bare BertModel folder
//! as sentence-transformers saves one: no `bert.` prefix, a pooler, an
//! integer `position_ids` buffer; no tokenizer.json, so bytes are tokens):
//! LaMDA and a head-only baseline trained, then
//!
//! - `lamdac eval` with both runs side by side: its accuracy equals the
//!   argmax of logits computed through another path (the trained session's
//!   own fused program, adapters unmerged), its per-example logits match
//!   them, and its metrics equal formulas computed here from its JSONL
//!   predictions (precision/recall F1, MCC as the Pearson correlation of
//!   labels and predictions);
//! - `lamdac export` writes a PEFT SEQ_CLS adapter (classifier in
//!   `modules_to_save`) and `lamdac merge` a BertForSequenceClassification
//!   folder whose logits, run by lamdac as a plain model, are the trained
//!   ones; with the bench venv (torch, transformers, peft) present,
//!   scripts/check_peft_bert.py loads both in transformers + PEFT and
//!   reproduces the same logits (skipped, and recorded, without it);
//! - the refusals: a mean-pool head and a head-only run have no PEFT form,
//!   a run of another head does not evaluate with this spec, a shapes-only
//!   preset does not train, neither does an encoder on `--device cuda`, and
//!   an encoder does not generate text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Quiet, lamdac, prepare};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lamda_runtime::checkpoint::{SafetensorsFile, TensorRef, write_safetensors};
use lamda_runtime::data::{BatchConfig, Batcher, Dataset, Source};
use lamda_runtime::session::{RunOptions, run};
use lamda_runtime::testkit::skip;

const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const FFN: usize = 48;
const VOCAB: usize = 256;
const MAX_POS: usize = 64;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamdac-bert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// A tiny BertModel folder: config.json and model.safetensors under bare
/// names (all-MiniLM-L6-v2's layout), with its pooler and position_ids buffer.
fn tiny_bert(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "intermediate_size": FFN,
        "hidden_act": "gelu",
        "max_position_embeddings": MAX_POS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": 0,
        "initializer_range": 0.02,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        t.insert(name, (shape, rng.vec(n, scale, offset)));
    };
    let (d, f) = (HIDDEN, FFN);
    put("embeddings.word_embeddings.weight".into(), vec![VOCAB, d], 0.3, 0.0);
    put(
        "embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, d],
        0.3,
        0.0,
    );
    put("embeddings.token_type_embeddings.weight".into(), vec![2, d], 0.3, 0.0);
    put("embeddings.LayerNorm.weight".into(), vec![d], 0.1, 1.0);
    put("embeddings.LayerNorm.bias".into(), vec![d], 0.1, 0.0);
    for i in 0..LAYERS {
        let p = format!("encoder.layer.{i}");
        for (m, o, inp) in [
            ("attention.self.query", d, d),
            ("attention.self.key", d, d),
            ("attention.self.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", f, d),
            ("output.dense", d, f),
        ] {
            put(format!("{p}.{m}.weight"), vec![o, inp], 0.3, 0.0);
            put(format!("{p}.{m}.bias"), vec![o], 0.1, 0.0);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{ln}.weight"), vec![d], 0.1, 1.0);
            put(format!("{p}.{ln}.bias"), vec![d], 0.1, 0.0);
        }
    }
    put("pooler.dense.weight".into(), vec![d, d], 0.3, 0.0);
    put("pooler.dense.bias".into(), vec![d], 0.1, 0.0);
    let positions: Vec<i64> = (0..MAX_POS as i64).collect();
    let mut refs: BTreeMap<String, TensorRef<'_>> =
        t.iter().map(|(k, (s, v))| (k.clone(), TensorRef::f32(s, v))).collect();
    refs.insert(
        "embeddings.position_ids".into(),
        TensorRef::i64(&[1, MAX_POS], &positions),
    );
    write_safetensors(&dir.join("model.safetensors"), &refs, &BTreeMap::new()).unwrap();
}

/// 64 short labelled texts: label 1 when a "good" word leads.
fn data(path: &Path) {
    let good = ["great", "fine", "superb", "lovely"];
    let bad = ["awful", "dull", "poor", "weak"];
    let rest = ["film", "plot", "cast", "story", "score", "pace"];
    let mut out = String::from("text\tlabel\n");
    for i in 0..64 {
        let label = i % 2;
        let w = if label == 1 { good[i / 2 % 4] } else { bad[i / 2 % 4] };
        out.push_str(&format!("{w} {} and {}\t{label}\n", rest[i % 6], rest[(i / 3) % 6]));
    }
    std::fs::write(path, out).unwrap();
}

fn spec(dir: &Path, name: &str, adapt: &str, head: &str, steps: u64) -> PathBuf {
    let p = dir.join(format!("{name}.lamda"));
    std::fs::write(
        &p,
        format!(
            "use \"model\" as m\n{adapt}\ntrain {{\n  head {head}\n  data \"d.tsv\"  split 0.25\n  steps {steps}  batch 4  seq 24\n  lr 1e-2  seed 0\n  device cpu\n}}\n"
        ),
    )
    .unwrap();
    p
}

/// Logits (rows of 2) of the trained session on every held-out example, in file order.
fn session_logits(spec: &Path, out: &Path) -> (Vec<Vec<f32>>, Vec<i64>, Dataset) {
    let opts = RunOptions {
        spec: spec.to_path_buf(),
        out: Some(out.to_path_buf()),
        fuse: true,
        ..RunOptions::default()
    };
    let mut session = prepare(&opts).unwrap();
    run(&mut session, &mut Quiet, &AtomicBool::new(false)).unwrap();
    let held = session.validation.clone().unwrap();
    let Source::Classes { examples, .. } = &held.source else {
        panic!("classification data");
    };
    let labels: Vec<i64> = examples.iter().map(|e| e.label).collect();
    let n = examples.len();
    let cfg = BatchConfig {
        seq: 24,
        batch: 4,
        seed: 0,
        shuffle: Some(false),
    };
    let mut b = Batcher::new(held.clone(), cfg).unwrap();
    let mut rows = Vec::new();
    while rows.len() < n {
        let batch = b.next_batch();
        let l = session.trainer.evaluate(&batch, true).unwrap().logits.unwrap();
        rows.extend(l.chunks(2).map(<[f32]>::to_vec).take(n - rows.len()));
    }
    (rows, labels, held)
}

fn argmax(r: &[f32]) -> usize {
    usize::from(r[1] > r[0])
}

fn max_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Binary metrics by other formulas than the library's: F1 from precision
/// and recall, MCC as the Pearson correlation of the 0/1 labels and predictions.
fn independent_metrics(pairs: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    let n = pairs.len() as f64;
    let acc = pairs.iter().filter(|(t, p)| t == p).count() as f64 / n;
    let f1_of = |c: f64| {
        let tp = pairs.iter().filter(|&&(t, p)| t == c && p == c).count() as f64;
        let pred = pairs.iter().filter(|&&(_, p)| p == c).count() as f64;
        let real = pairs.iter().filter(|&&(t, _)| t == c).count() as f64;
        let (prec, rec) = (
            if pred > 0.0 { tp / pred } else { 0.0 },
            if real > 0.0 { tp / real } else { 0.0 },
        );
        if prec + rec > 0.0 {
            2.0 * prec * rec / (prec + rec)
        } else {
            0.0
        }
    };
    let (mt, mp) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pairs.iter().map(|(t, p)| (t - mt) * (p - mp)).sum();
    let vt: f64 = pairs.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    let vp: f64 = pairs.iter().map(|(_, p)| (p - mp).powi(2)).sum();
    let mcc = if vt * vp > 0.0 { cov / (vt * vp).sqrt() } else { 0.0 };
    (acc, (f1_of(0.0) + f1_of(1.0)) / 2.0, f1_of(1.0), mcc)
}

/// The bench venv's Python (torch, transformers, peft), if installed.
fn venv_python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/lamdac/bench-venv/bin/python");
    p.is_file().then_some(p)
}

#[test]
fn classifier_eval_export_and_merge() {
    let dir = tmp("cls");
    tiny_bert(&dir.join("model"));
    data(&dir.join("d.tsv"));
    let lamda = spec(
        &dir,
        "lamda",
        "adapt m.attn.{q,v} rank 4 freeze_b never",
        "classify(labels = 2, pool = cls)",
        12,
    );
    let head_only = spec(&dir, "head", "", "classify(labels = 2, pool = cls)", 12);
    let run_lamda = dir.join("run-lamda");
    let run_head = dir.join("run-head");

    // The reference path: the trained session's own program on the held-out part.
    let (want, labels, held) = session_logits(&lamda, &run_lamda);
    let n = labels.len();
    assert_eq!(n, 16, "split 0.25 of 64");
    let want_acc = want
        .iter()
        .zip(&labels)
        .filter(|(r, l)| argmax(r) == **l as usize)
        .count() as f64
        / n as f64;

    let (code, _, err) = lamdac(&[
        "train",
        head_only.to_str().unwrap(),
        "--out",
        run_head.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");

    // eval, both runs side by side
    let (code, stdout, err) = lamdac(&[
        "eval",
        lamda.to_str().unwrap(),
        "--run",
        run_head.to_str().unwrap(),
        "--run",
        run_lamda.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["kind"], "classify");
    assert_eq!(v["evaluated"], 16);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["model"], "run-head");
    assert_eq!(models[1]["model"], "run-lamda");
    let got_acc = models[1]["accuracy"].as_f64().unwrap();
    assert_eq!(got_acc, want_acc, "eval's accuracy vs the session's argmax");
    // its predictions: the same logits, per example, in file order
    let lines = read_jsonl(&run_lamda.join("eval-d-held-out.jsonl"));
    assert_eq!(lines.len(), n);
    let got: Vec<Vec<f32>> = lines
        .iter()
        .map(|l| {
            l["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let e = max_err(&got, &want);
    assert!(e < 1e-4, "logits of eval (merged) vs the session (adapters): {e}");
    let Source::Classes { examples, .. } = &held.source else {
        unreachable!()
    };
    let mut pairs = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["label"], labels[i]);
        assert_eq!(l["line"], examples[i].line);
        assert_eq!(l["model"], "run-lamda");
        assert_eq!(l["prediction"].as_u64().unwrap() as usize, argmax(&want[i]));
        assert_eq!(l["correct"], l["label"] == l["prediction"]);
        pairs.push((l["label"].as_f64().unwrap(), l["prediction"].as_f64().unwrap()));
    }
    let (acc, macro_f1, binary_f1, mcc) = independent_metrics(&pairs);
    let m = &models[1];
    assert!((m["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    assert!((m["macro_f1"].as_f64().unwrap() - macro_f1).abs() < 1e-12, "{m}");
    assert!((m["binary_f1"].as_f64().unwrap() - binary_f1).abs() < 1e-12, "{m}");
    assert!((m["mcc"].as_f64().unwrap() - mcc).abs() < 1e-12, "{m}");
    assert!(run_head.join("eval-d-held-out.jsonl").is_file());
    assert!(
        models[1]["predictions"]
            .as_str()
            .unwrap()
            .ends_with("run-lamda/eval-d-held-out.jsonl")
    );

    // the text table names both runs
    let (code, stdout, err) = lamdac(&[
        "eval",
        lamda.to_str().unwrap(),
        "--run",
        run_head.to_str().unwrap(),
        "--run",
        run_lamda.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for want in ["run-head", "run-lamda", "accuracy", "macro F1", "binary F1", "MCC"] {
        assert!(stdout.contains(want), "{want}:\n{stdout}");
    }

    // export: PEFT SEQ_CLS with the classifier in modules_to_save
    let peft = dir.join("peft");
    let (code, _, err) = lamdac(&[
        "export",
        lamda.to_str().unwrap(),
        "--run",
        run_lamda.to_str().unwrap(),
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 4.0);
    let exported = SafetensorsFile::open(&peft.join("adapter_model.safetensors")).unwrap();
    let adapter = SafetensorsFile::open(&run_lamda.join("adapter.safetensors")).unwrap();
    for i in 0..LAYERS {
        for m in ["query", "value"] {
            for f in ["lora_A", "lora_B"] {
                let k = format!("base_model.model.bert.encoder.layer.{i}.attention.self.{m}.{f}.weight");
                assert!(exported.meta(&k).is_some(), "{k}");
            }
        }
    }
    for t in ["weight", "bias"] {
        let got = exported.f32(&format!("base_model.model.classifier.{t}")).unwrap();
        let want = adapter.f32(&format!("classifier.{t}")).unwrap();
        assert_eq!(got, want, "classifier.{t}");
    }
    let keys = exported.names().count();
    assert_eq!(keys, 2 * 2 * LAYERS + 2, "lora_A/B of 4 modules and the classifier");

    // merge: a BertForSequenceClassification folder lamdac itself runs as a plain model
    let merged = dir.join("merged");
    let (code, _, err) = lamdac(&[
        "merge",
        lamda.to_str().unwrap(),
        "--run",
        run_lamda.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        mc["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    assert_eq!(mc["id2label"].as_object().unwrap().len(), 2);
    let mw = SafetensorsFile::open(&merged.join("model.safetensors")).unwrap();
    assert!(
        mw.names()
            .all(|n| n.starts_with("bert.") || n.starts_with("classifier."))
    );
    assert!(mw.names().all(|n| !n.ends_with("position_ids")));
    std::fs::write(
        dir.join("plain.lamda"),
        "use \"merged\" as m\ntrain {\n  head classify(labels = 2, pool = cls)\n  data \"d.tsv\"  split 0.25\n  steps 1  batch 4  seq 24\n  device cpu\n}\n",
    )
    .unwrap();
    let opts = RunOptions {
        spec: dir.join("plain.lamda"),
        out: Some(dir.join("plain-out")),
        fuse: true,
        ..RunOptions::default()
    };
    let mut plain = prepare(&opts).unwrap();
    let cfg = BatchConfig {
        seq: 24,
        batch: 4,
        seed: 0,
        shuffle: Some(false),
    };
    let mut b = Batcher::new(plain.validation.clone().unwrap(), cfg).unwrap();
    let mut rows = Vec::new();
    while rows.len() < n {
        let batch = b.next_batch();
        let l = plain.trainer.evaluate(&batch, true).unwrap().logits.unwrap();
        rows.extend(l.chunks(2).map(<[f32]>::to_vec).take(n - rows.len()));
    }
    let e = max_err(&rows, &want);
    assert!(e < 1e-4, "merged model's logits vs the trained session's: {e}");

    // transformers + PEFT on the export, transformers on the merged folder
    match venv_python() {
        None => skip(
            "no ~/.cache/lamdac/bench-venv (torch, transformers, peft): the PEFT and transformers loads were not checked",
        ),
        Some(py) => {
            // the held-out examples as transformers reads them: padded ids, mask, token types
            let ids: Vec<i64> = (0..n)
                .flat_map(|i| {
                    let e = &examples[i];
                    (0..24).map(move |j| e.ids.get(j).map_or(0, |&t| i64::from(t)))
                })
                .collect();
            let mask: Vec<i64> = (0..n)
                .flat_map(|i| (0..24).map(move |j| i64::from(j < examples[i].ids.len())))
                .collect();
            let types = vec![0i64; n * 24];
            let mut inputs = BTreeMap::new();
            inputs.insert("input_ids".to_string(), TensorRef::i64(&[n, 24], &ids));
            inputs.insert("attention_mask".to_string(), TensorRef::i64(&[n, 24], &mask));
            inputs.insert("token_type_ids".to_string(), TensorRef::i64(&[n, 24], &types));
            write_safetensors(&dir.join("inputs.safetensors"), &inputs, &BTreeMap::new()).unwrap();
            std::fs::write(
                dir.join("expect.json"),
                serde_json::json!({ "logits": want }).to_string(),
            )
            .unwrap();
            let model = dir.join("model");
            for args in [
                [peft.as_os_str(), model.as_os_str()],
                [std::ffi::OsStr::new("--merged"), merged.as_os_str()],
            ] {
                let out = std::process::Command::new(&py)
                    .arg("scripts/check_peft_bert.py")
                    .args(args)
                    .arg("--inputs")
                    .arg(dir.join("inputs.safetensors"))
                    .arg("--expect")
                    .arg(dir.join("expect.json"))
                    .output()
                    .unwrap();
                let text = format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.status.success(), "check_peft_bert.py {args:?}:\n{text}");
                assert!(text.contains("max_abs_diff_to_expect"), "{text}");
            }
        }
    }

    // refusals: a head-only run has no PEFT LoRA form; a mean-pool head none in transformers
    let (code, _, err) = lamdac(&[
        "export",
        head_only.to_str().unwrap(),
        "--run",
        run_head.to_str().unwrap(),
        "--out",
        dir.join("peft-head").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::export::head_only"), "{err}");
    let mean = spec(
        &dir,
        "mean",
        "adapt m.attn.{q,v} rank 4",
        "classify(labels = 2, pool = mean)",
        1,
    );
    let run_mean = dir.join("run-mean");
    let (code, _, err) = lamdac(&[
        "train",
        mean.to_str().unwrap(),
        "--out",
        run_mean.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    for cmd in ["export", "merge"] {
        let (code, _, err) = lamdac(&[
            cmd,
            mean.to_str().unwrap(),
            "--run",
            run_mean.to_str().unwrap(),
            "--out",
            dir.join(format!("{cmd}-mean")).to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(err.contains("lamda::export::mean_pool"), "{cmd}: {err}");
    }
    // the mean-pool run evaluates with its own spec, not with the cls one
    let (code, _, err) = lamdac(&["eval", mean.to_str().unwrap(), "--run", run_mean.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = lamdac(&["eval", lamda.to_str().unwrap(), "--run", run_mean.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::eval::run_mismatch"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check` says what trains (the head's parameters in the totals; a
/// shapes-only preset said as such), and `train` refuses, before any weight
/// loads, a shapes-only preset and an encoder on `--device cuda`.
#[test]
fn check_reports_the_head_and_train_refuses_what_cannot_run() {
    let dir = tmp("refuse");
    tiny_bert(&dir.join("model"));
    data(&dir.join("d.tsv"));
    let lamda = spec(
        &dir,
        "lamda",
        "adapt m.attn.{q,v} rank 4 freeze_b never",
        "classify(labels = 2, pool = cls)",
        4,
    );
    let (code, stdout, err) = lamdac(&["check", lamda.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let head = (HIDDEN * 2 + 2) as u64;
    assert_eq!(v["head"]["trainable_params"], head);
    assert_eq!(v["totals"]["head_params"], head);
    // 4 modules of rank 4: S (16) and B (32 x 4) each, plus the head
    let adapters = 4 * (16 + 32 * 4) as u64;
    assert_eq!(v["totals"]["trainable_params"], adapters + head);
    assert_eq!(v["totals"]["lora_params"], 4 * 4 * 64 + head);
    assert_eq!(v["model"]["trainable"], true);
    let (code, stdout, _) = lamdac(&["check", lamda.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("an encoder"), "{stdout}");
    assert!(stdout.contains("head"), "{stdout}");

    let (code, _, err) = lamdac(&[
        "train",
        lamda.to_str().unwrap(),
        "--device",
        "cuda",
        "--out",
        dir.join("run-cuda").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::train::device_unsupported"), "{err}");
    assert!(!dir.join("run-cuda").exists(), "refused before the run started");

    let deberta = dir.join("deberta.lamda");
    std::fs::write(
        &deberta,
        "use deberta_v3_base as m\nadapt m.attn.{q,v} rank 8\ntrain {\n  head classify(labels = 2)\n  data \"d.tsv\"\n}\n",
    )
    .unwrap();
    let (code, stdout, err) = lamdac(&["check", deberta.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("shapes only"), "{stdout}");
    let (code, stdout, _) = lamdac(&["check", deberta.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["model"]["trainable"], false);
    let (code, _, err) = lamdac(&["train", deberta.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::train::shapes_only"), "{err}");
    // a label outside the head's classes names its line
    std::fs::write(dir.join("d.tsv"), "text\tlabel\ngood film\t1\nbad film\t2\n").unwrap();
    let (code, _, err) = lamdac(&[
        "train",
        lamda.to_str().unwrap(),
        "--out",
        dir.join("run-bad").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::data::class_example"), "{err}");
    assert!(err.contains("d.tsv") && err.contains('3'), "{err}");
    data(&dir.join("d.tsv"));
    // an encoder generates no text
    let (code, _, err) = lamdac(&["generate", lamda.to_str().unwrap(), "--prompt", "good film"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::checkpoint::not_causal_lm"), "{err}");
    let (code, stdout, err) = lamdac(&["plan", lamda.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("task head: classify, 2 labels"), "{stdout}");
    assert!(stdout.contains("classifier.weight"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
