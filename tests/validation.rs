//! Held-out data (`split`, `eval_data`, `eval every`): the validation loss
//! against `lamdac eval`'s independent forward (the generate path's KV-cache
//! model), its place in metrics.jsonl and loss.svg, resume, and bad settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::{Quiet, StopAt, lamdac, prepare};
use lamda_runtime::session::{RunOptions, run};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamdac-val-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 25 short sums as prompt / completion lines (each fits the model's 512 positions).
fn sums(dir: &Path) -> PathBuf {
    let p = dir.join("sums.jsonl");
    let text: String = (0..25)
        .map(|i| {
            let (a, b) = (3 * i + 7, 11 * i + 2);
            serde_json::json!({
                "prompt": format!("What is {a} plus {b}?\n"),
                "completion": format!("{a} + {b} = {}\n#### {}", a + b, a + b),
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// A LaMDA spec on the quickstart model (byte-level, 512 positions) with `extra` in its train block.
fn spec(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let model = std::fs::canonicalize("examples/models/austen-tiny").unwrap();
    let p = dir.join("val.lamda");
    std::fs::write(
        &p,
        format!(
            "use \"{}\" as austen\nadapt austen.attn.{{q,v}} rank 4 freeze_b linear(0.3)\ntrain {{\n  data \"{}\"\n  steps 6  batch 4  seq 48  lr 5e-3  seed 3\n  {extra}\n  out \"{}\"\n}}\n",
            model.display(),
            data.display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    p
}

/// `(step, val_loss, val_targets)` of every validation line of a metrics.jsonl.
fn validations(metrics: &Path) -> Vec<(u64, f64, u64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((
                v["step"].as_u64()?,
                v.get("val_loss")?.as_f64()?,
                v["val_targets"].as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn validation_loss_before_training_equals_eval_on_the_held_out_part() {
    // 25 examples, split 0.25: 6 held out, two batches of 4, the second with
    // two filler rows that must carry no loss. At step 0 LaMDA computes the
    // pretrained model, so the training executor's mean loss over the held-out
    // completions must equal what `lamdac eval` (another forward: the
    // generate path, one example at a time with a KV cache) measures for the
    // base model on the same part of the file.
    let dir = scratch("eval");
    let data = sums(&dir);
    let spec = spec(&dir, &data, "split 0.25  eval every 3");
    let spec_s = spec.to_str().unwrap();
    let (code, _, err) = lamdac(&["train", spec_s, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("validation loss"), "{err}");
    let run = dir.join("run");
    let vals = validations(&run.join("metrics.jsonl"));
    assert_eq!(
        vals.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![0, 3, 6],
        "before the first step, every 3 and after the last"
    );
    assert!(vals[2].1 < vals[0].1, "the validation loss falls: {vals:?}");

    let (code, out, err) = lamdac(&["eval", spec_s, "--max-tokens", "1", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("holds out of training"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["evaluated"].as_u64(), Some(6), "{out}");
    let base = &v["models"][0];
    assert_eq!(base["tokens"].as_u64(), Some(vals[0].2), "held-out targets: {out}");
    let nll = base["mean_nll"].as_f64().unwrap();
    assert!(
        (nll - vals[0].1).abs() <= 1e-4 * nll,
        "eval {nll} vs validation loss at step 0 {}",
        vals[0].1
    );

    // the picture: train and validation loss
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn eval_data_is_validated_and_training_never_sees_the_held_out_part() {
    let dir = scratch("file");
    let data = sums(&dir);
    let held = dir.join("held.jsonl");
    std::fs::write(
        &held,
        "{\"prompt\": \"What is 1 plus 1?\\n\", \"completion\": \"1 + 1 = 2\\n#### 2\"}\n",
    )
    .unwrap();
    let spec = spec(&dir, &data, &format!("eval_data \"{}\"", held.display()));
    let (code, _, err) = lamdac(&["train", spec.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let vals = validations(&dir.join("run/metrics.jsonl"));
    // no checkpoint setting and no `eval every`: before the first step and after the last
    assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 6]);
    // "1 + 1 = 2\n#### 2" is 16 bytes: 16 targets
    assert_eq!(vals[0].2, 16);

    // the data a split trains on and the part it holds out are disjoint and make up the file
    use lamda_runtime::data::{Dataset, Source, Tokenizer};
    let all = Dataset::load(&data, &Tokenizer::Bytes).unwrap();
    let (train, val) = Dataset::load_split(&data, &Tokenizer::Bytes, None, 0.25).unwrap();
    let ex = |d: &Dataset| match &d.source {
        Source::Examples { examples, .. } => examples.clone(),
        _ => panic!("examples"),
    };
    let (all, train, val) = (ex(&all), ex(&train), ex(&val));
    assert_eq!((train.len(), val.len()), (19, 6));
    assert!(val.iter().all(|e| !train.contains(e)));
    assert!(all.iter().all(|e| train.contains(e) || val.contains(e)));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_resumed_run_has_the_validation_losses_of_an_uninterrupted_one() {
    let dir = scratch("resume");
    let data = sums(&dir);
    let spec = spec(&dir, &data, "split 0.25  eval every 2  checkpoint every 2");
    let full_out = dir.join("full");
    let opts = |out: &Path, resume: bool| RunOptions {
        spec: spec.clone(),
        out: Some(out.to_path_buf()),
        resume: resume.then(|| out.to_path_buf()),
        ..RunOptions::default()
    };
    let full = run(
        &mut prepare(&opts(&full_out, false)).unwrap(),
        &mut Quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    let out = dir.join("stopped");
    let stop = AtomicBool::new(false);
    let first = run(&mut prepare(&opts(&out, false)).unwrap(), &mut StopAt(3, &stop), &stop).unwrap();
    assert!(first.interrupted);
    let second = run(
        &mut prepare(&opts(&out, true)).unwrap(),
        &mut Quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(second.validations, full.validations);
    assert_eq!(
        validations(&out.join("metrics.jsonl")),
        validations(&full_out.join("metrics.jsonl"))
    );
    assert_eq!(
        full.validations.iter().map(|v| v.step).collect::<Vec<_>>(),
        vec![0, 2, 4, 6]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_validation_settings_are_coded_errors() {
    let dir = scratch("bad");
    let data = sums(&dir);
    let cases: [(&str, &str, &str); 4] = [
        (
            "split 0.1  eval_data \"sums.jsonl\"",
            "lamda::train::bad_value",
            "both name the validation data",
        ),
        ("eval every 5", "lamda::train::bad_value", "without validation data"),
        ("split 0.9", "lamda::train::bad_value", "(0, 0.5]"),
        (
            "eval_data \"nowhere.jsonl\"",
            "lamda::train::data_not_found",
            "does not exist",
        ),
    ];
    for (extra, code_name, text) in cases {
        let spec = spec(&dir, &data, extra);
        let (code, _, err) = lamdac(&["check", spec.to_str().unwrap()]);
        assert_eq!(code, 1, "{extra}: {err}");
        assert!(err.contains(code_name) && err.contains(text), "{extra}: {err}");
    }
    // a split that leaves nothing to train on is a data error with the file
    let one = dir.join("one.jsonl");
    std::fs::write(&one, "{\"text\": \"only one example\"}\n").unwrap();
    let spec = spec(&dir, &one, "split 0.5");
    let (code, _, err) = lamdac(&["train", spec.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lamda::data::split") && err.contains("one.jsonl"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
