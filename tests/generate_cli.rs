//! `lamdac generate` and `lamdac eval`: output, adapters from a run, and every coded error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::lamdac;
use lamda_runtime::checkpoint::{SafetensorsFile, TensorRef, write_safetensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamdac-gen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// A spec on the golden tiny Llama (byte-level, 128 positions) that trains one
/// step of `method` on q and v.
fn golden_spec(dir: &Path, name: &str, method: &str) -> String {
    let golden = std::fs::canonicalize("tests/golden/lamda_qv_r4_linear03").unwrap();
    write(
        dir,
        name,
        &format!(
            "use \"{}\" as tiny\nadapt tiny.attn.{{q,v}} with {method} rank 2\ntrain {{\n  data \"{}\"\n  steps 1  batch 2  seq 16\n}}\n",
            golden.display(),
            golden.join("inputs.safetensors").display()
        ),
    )
}

#[test]
fn generate_streams_text_with_and_without_an_adapter() {
    let dir = scratch("adapter");
    let spec = golden_spec(&dir, "lamda.lamda", "lamda");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let (code, _, err) = lamdac(&["train", &spec, "--out", run_s, "--quiet"]);
    assert_eq!(code, 0, "{err}");

    let args = ["generate", &spec, "--prompt", "hello", "--max-tokens", "12"];
    let (code, base, err) = lamdac(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("base model: no --run given"), "{err}");
    assert!(err.contains("12 new tokens"), "{err}");
    assert!(base.ends_with('\n'));
    let (code, adapted, err) = lamdac(&[&args[..], &["--run", run_s]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(4 modules merged)"), "{err}");
    let (code, again, err) = lamdac(&[&args[..], &["--no-adapter"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--no-adapter"), "{err}");
    assert_eq!(again, base, "greedy decoding is reproducible");
    let _ = adapted;
    // sampling: a seed gives one text
    let sample = [&args[..], &["--temperature", "1.0", "--top-p", "0.9", "--seed", "7"]].concat();
    let (_, a, _) = lamdac(&sample);
    let (_, b, _) = lamdac(&sample);
    assert_eq!(a, b);

    // usage errors: exit 2
    for bad in [
        &[&args[..], &["--temperature", "-1"]].concat()[..],
        &[&args[..], &["--top-p", "0"]].concat()[..],
        &[&args[..], &["--run", run_s, "--no-adapter"]].concat()[..],
        &["generate", &spec, "--prompt", ""][..],
    ] {
        let (code, _, err) = lamdac(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_errors_have_codes() {
    let dir = scratch("errors");
    let spec = golden_spec(&dir, "lamda.lamda", "lamda");
    let gen_ = |extra: &[&str]| {
        let mut a = vec!["generate", spec.as_str(), "--prompt", "hi"];
        a.extend_from_slice(extra);
        lamdac(&a)
    };
    // a run folder without adapter.safetensors
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = gen_(&["--run", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::export::no_adapter]"), "{err}");
    assert!(err.contains("help:"), "{err}");
    // --chat on a model without a chat template
    let (code, _, err) = gen_(&["--chat"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::no_chat_template]"), "{err}");
    // a prompt that fills the context (128 positions, one byte per token)
    let long = "a".repeat(128);
    let (code, _, err) = lamdac(&["generate", &spec, "--prompt", &long]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::prompt_too_long]"), "{err}");
    // a stdlib preset has no weights
    let preset = write(&dir, "preset.lamda", "adapt tiny.attn.q rank 2\n");
    let (code, _, err) = lamdac(&["generate", &preset, "--prompt", "hi"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::no_weights]"), "{err}");
    let (code, _, err) = lamdac(&["eval", &preset, "--data", "examples/data/emma.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::no_weights]"), "{err}");

    // a model folder of the golden weights with a broken chat template, and
    // one with a 300-token vocabulary and no tokenizer.json
    let golden = Path::new("tests/golden/lamda_qv_r4_linear03");
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden.join(f), broken.join(f)).unwrap();
    }
    write(
        &broken,
        "tokenizer_config.json",
        "{\"chat_template\": \"{% for m in messages %}\"}",
    );
    let spec_broken = write(
        &dir,
        "broken.lamda",
        &format!("use \"{}\" as m\nadapt m.attn.q rank 2\n", broken.display()),
    );
    let (code, _, err) = lamdac(&["generate", &spec_broken, "--prompt", "hi", "--chat"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::chat_template]"), "{err}");

    let wide = dir.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    let config = std::fs::read_to_string(golden.join("config.json")).unwrap();
    std::fs::write(
        wide.join("config.json"),
        config.replace("\"vocab_size\": 256", "\"vocab_size\": 300"),
    )
    .unwrap();
    let st = SafetensorsFile::open(&golden.join("model.safetensors")).unwrap();
    let mut owned: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for name in st.names() {
        let t = st.f32(name).unwrap();
        let mut shape = t.shape().to_vec();
        let mut data: Vec<f32> = t.iter().copied().collect();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            data.resize(300 * shape[1], 0.0);
            shape[0] = 300;
        }
        owned.insert(name.to_string(), (shape, data));
    }
    let refs: BTreeMap<String, TensorRef<'_>> = owned
        .iter()
        .map(|(k, (s, d))| (k.clone(), TensorRef::f32(s, d)))
        .collect();
    write_safetensors(&wide.join("model.safetensors"), &refs, &BTreeMap::new()).unwrap();
    let spec_wide = write(
        &dir,
        "wide.lamda",
        &format!("use \"{}\" as m\nadapt m.attn.q rank 2\n", wide.display()),
    );
    let (code, _, err) = lamdac(&["generate", &spec_wide, "--prompt", "hi"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::no_tokenizer]"), "{err}");

    // PiSSA has no LoRA form: not supported yet
    let pissa = golden_spec(&dir, "pissa.lamda", "pissa");
    let prun = dir.join("pissa-run");
    let (code, _, err) = lamdac(&["train", &pissa, "--out", prun.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = lamdac(&["generate", &pissa, "--prompt", "hi", "--run", prun.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::export::not_lora]"), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_reports_base_and_adapted_side_by_side() {
    let dir = scratch("eval");
    let spec = golden_spec(&dir, "lamda.lamda", "lamda");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let (code, _, err) = lamdac(&["train", &spec, "--out", run_s, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    // GSM-style pairs: perplexity of the answers and exact match of the final answer
    let data = write(
        &dir,
        "qa.jsonl",
        "{\"question\": \"1 + 1?\", \"answer\": \"1 + 1 = 2\\n#### 2\"}\n{\"prompt\": \"Say 5: \", \"completion\": \"#### 5\"}\n{\"text\": \"not counted\"}\n",
    );
    let (code, out, err) = lamdac(&[
        "eval",
        &spec,
        "--run",
        run_s,
        "--data",
        &data,
        "--limit",
        "2",
        "--max-tokens",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "base",
        "adapted",
        "perplexity",
        "exact match",
        "/2 (",
        "2 evaluated",
        "(mixed)",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let preds = std::fs::read_to_string(run.join("eval-qa.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = preds.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["model"], "base");
    assert_eq!(lines[2]["model"], "adapted");
    assert_eq!(lines[0]["reference_answer"], "2");
    assert_eq!(lines[1]["reference_answer"], "5");
    assert!(
        lines
            .iter()
            .all(|l| l["tokens"].as_u64().unwrap() > 0 && l["correct"].is_boolean())
    );

    // text: perplexity only, JSON output
    let (code, out, err) = lamdac(&[
        "eval",
        &spec,
        "--data",
        "examples/data/emma.txt",
        "--format",
        "json",
        "--out",
        dir.join("p.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 1);
    let m = &v["models"][0];
    assert!(m["tokens"].as_u64().unwrap() > 100_000, "{m}");
    assert!(m["perplexity"].as_f64().unwrap() > 1.0);
    assert!(m["exact_match"].is_null());

    // a line that is no example is a coded error
    let bad = write(&dir, "bad.jsonl", "{\"question\": \"q\"}\n");
    let (code, _, err) = lamdac(&["eval", &spec, "--data", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::eval::data]"), "{err}");
    assert!(err.contains("bad.jsonl:1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `messages` JSONL trains (loss on the assistant turns) when the model folder
/// has a chat template, and is a coded error when it has none.
#[test]
fn training_on_chat_messages() {
    let dir = scratch("chat-train");
    let golden = Path::new("tests/golden/lamda_qv_r4_linear03");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden.join(f), model.join(f)).unwrap();
    }
    let line = "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]}\n";
    let data = write(&dir, "chat.jsonl", &line.repeat(4));
    let spec = write(
        &dir,
        "chat.lamda",
        &format!(
            "use \"{}\" as m\nadapt m.attn.{{q,v}} rank 2\ntrain {{\n  data \"{data}\"\n  steps 2  batch 2  seq 32\n}}\n",
            model.display()
        ),
    );
    let run = dir.join("run");
    let (code, _, err) = lamdac(&["train", &spec, "--out", run.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[lamda::generate::no_chat_template]"), "{err}");
    write(
        &model,
        "tokenizer_config.json",
        "{\"chat_template\": \"{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}\"}",
    );
    let (code, _, err) = lamdac(&["train", &spec, "--out", run.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(run.join("adapter.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
