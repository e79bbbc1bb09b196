//! The inference forward and generation (`lamdac generate`) against PyTorch and against themselves.
//!
//! - The forward (base weights, and LoRA factors merged in) against the
//!   PyTorch golden logits of `tests/golden/lora_qv_r4_a8` (`base.logits`,
//!   `final.logits`; atol 1e-4 as in tests/golden/README.md), run from an
//!   empty cache and run incrementally, one position at a time, from the cache.
//! - Generation with the KV cache against recomputing the whole sequence at
//!   every step, on the quickstart's austen-tiny: the same tokens, greedy and
//!   sampled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use lamda_runtime::checkpoint::{Checkpoint, SafetensorsFile};
use lamda_runtime::export::LoraFactors;
use lamda_runtime::generate::{Generator, Model, Sampling, Stop};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn f32s(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.f32(name).unwrap().iter().copied().collect()
}

/// `|got - want| <= atol` everywhere.
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, err) =
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |(bi, be), (i, e)| if e > be || e.is_nan() { (i, e) } else { (bi, be) },
            );
    assert!(
        err <= atol,
        "{what}: max error {err:.3e} at {i} (got {}, want {})",
        got[i],
        want[i]
    );
}

/// The logits of every position of `ids`, from one pass over an empty cache
/// (`step = None`) or fed `step` tokens at a time through the cache.
fn all_logits(model: &Model, ids: &[u32], step: Option<usize>) -> Vec<f32> {
    let mut cache = model.cache(ids.len()).unwrap();
    let mut out = Vec::new();
    for chunk in ids.chunks(step.unwrap_or(ids.len())) {
        let hidden = model.forward(chunk, &mut cache).unwrap();
        out.extend(model.logits(&hidden, chunk.len()).unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    out
}

#[test]
fn forward_matches_pytorch_base_and_lora_logits_with_and_without_the_cache() {
    let case = root().join("tests/golden/lora_qv_r4_a8");
    let ckpt = Checkpoint::open(&case).unwrap();
    let inputs = SafetensorsFile::open(&case.join("inputs.safetensors")).unwrap();
    let expected = SafetensorsFile::open(&case.join("expected.safetensors")).unwrap();
    let ids: Vec<i64> = inputs.i64("input_ids").unwrap().iter().copied().collect();
    let (batch, seq, vocab) = (2usize, 16usize, 256usize);
    assert_eq!(ids.len(), batch * seq);

    // LoRA rank 4, alpha 8 on q and v of both layers: the trained factors of the case
    let factors: Vec<LoraFactors> = (0..2)
        .flat_map(|l| ["q_proj", "v_proj"].map(move |m| format!("model.layers.{l}.self_attn.{m}")))
        .map(|module| {
            let a = f32s(&expected, &format!("final.{module}.A"));
            let b = f32s(&expected, &format!("final.{module}.B"));
            let d_in = a.len() / 4;
            let d_out = b.len() / 4;
            LoraFactors {
                module,
                a,
                b,
                rank: 4,
                d_in,
                d_out,
                lora_alpha: 8.0,
            }
        })
        .collect();
    for (adapters, key) in [(&[][..], "base.logits"), (&factors[..], "final.logits")] {
        let model = Model::load(&ckpt, adapters).unwrap();
        let want = f32s(&expected, key);
        for b in 0..batch {
            let row: Vec<u32> = ids[b * seq..(b + 1) * seq].iter().map(|&i| i as u32).collect();
            let want = &want[b * seq * vocab..(b + 1) * seq * vocab];
            assert_close(
                &format!("{key} row {b}, one pass"),
                &all_logits(&model, &row, None),
                want,
                1e-4,
            );
            for step in [1, 3] {
                let got = all_logits(&model, &row, Some(step));
                assert_close(&format!("{key} row {b}, {step} at a time"), &got, want, 1e-4);
            }
        }
    }
}

#[test]
fn an_adapter_for_a_module_the_model_lacks_is_an_error() {
    let case = root().join("tests/golden/lora_qv_r4_a8");
    let ckpt = Checkpoint::open(&case).unwrap();
    let f = LoraFactors {
        module: "model.layers.7.self_attn.q_proj".into(),
        a: vec![0.0; 4 * 64],
        b: vec![0.0; 64 * 4],
        rank: 4,
        d_in: 64,
        d_out: 64,
        lora_alpha: 8.0,
    };
    let e = Model::load(&ckpt, std::slice::from_ref(&f)).err().expect("an error");
    assert_eq!(e.code(), lamda_compiler::diag::Code::CheckpointMissingTensor);
    let f = LoraFactors {
        module: "model.layers.0.self_attn.v_proj".into(),
        ..f
    };
    let e = Model::load(&ckpt, &[f]).err().expect("an error");
    assert_eq!(e.code(), lamda_compiler::diag::Code::CheckpointWrongShape);
}

#[test]
fn cached_generation_equals_full_recompute() {
    let g = Generator::open(&root().join("examples/models/austen-tiny"), None).unwrap();
    assert!(g.tokenizer.is_byte_level());
    let prompt = g.prompt_ids("It is a truth universally", false).unwrap();
    assert_eq!(prompt, b"It is a truth universally".map(u32::from));
    for sampling in [
        Sampling::default(),
        Sampling {
            temperature: 0.9,
            top_p: 0.95,
            seed: 5,
        },
    ] {
        let cached = g.generate(&prompt, 40, sampling, true, |_| Ok(())).unwrap();
        let full = g.generate(&prompt, 40, sampling, false, |_| Ok(())).unwrap();
        assert_eq!(cached.tokens, full.tokens, "{sampling:?}");
        assert_eq!(cached.tokens.len(), 40);
        assert_eq!(cached.stop, Stop::MaxTokens);
        for (a, b) in cached.logprobs.iter().zip(&full.logprobs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
    // the context ends a generation: austen-tiny has 512 positions
    let long: Vec<u32> = std::iter::repeat_n(u32::from(b'a'), 508).collect();
    let r = g.generate(&long, 10, Sampling::default(), true, |_| Ok(())).unwrap();
    assert_eq!((r.tokens.len(), r.stop), (4, Stop::Context));
    let too_long: Vec<u32> = std::iter::repeat_n(u32::from(b'a'), 512).collect();
    let e = g
        .generate(&too_long, 10, Sampling::default(), true, |_| Ok(()))
        .unwrap_err();
    assert_eq!(e.code(), lamda_compiler::diag::Code::GeneratePromptTooLong);
}

/// Batched greedy decoding (what `lamdac eval` answers with) against one
/// greedy generation per prompt: prompts of different lengths, one that
/// reaches the context (so it stops while the others go on), token for
/// token, with the same stop reasons and log-probabilities.
#[test]
fn batched_greedy_decoding_equals_one_generation_per_prompt() {
    let g = Generator::open(&root().join("examples/models/austen-tiny"), None).unwrap();
    let texts = [
        "It is a truth universally",
        "Emma",
        "She was",
        "The family of Dashwood had long",
    ];
    let mut prompts: Vec<Vec<u32>> = texts.iter().map(|t| g.prompt_ids(t, false).unwrap()).collect();
    prompts.push(std::iter::repeat_n(u32::from(b'a'), 500).collect());
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let batched = g.generate_greedy_batch(&refs, 30).unwrap();
    assert_eq!(batched.len(), prompts.len());
    for (prompt, b) in prompts.iter().zip(&batched) {
        let one = g.generate(prompt, 30, Sampling::default(), true, |_| Ok(())).unwrap();
        assert_eq!(b.tokens, one.tokens, "prompt of {} tokens", prompt.len());
        assert_eq!(b.stop, one.stop, "prompt of {} tokens", prompt.len());
        for (x, y) in b.logprobs.iter().zip(&one.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    assert_eq!(batched[4].stop, Stop::Context);
    assert_eq!(batched[0].tokens.len(), 30);
}

#[test]
fn token_logprobs_are_those_of_the_generation() {
    let g = Generator::open(&root().join("examples/models/austen-tiny"), None).unwrap();
    let prompt = g.prompt_ids("Mr. Darcy", false).unwrap();
    let r = g.generate(&prompt, 12, Sampling::default(), true, |_| Ok(())).unwrap();
    let all: Vec<u32> = prompt.iter().chain(&r.tokens).copied().collect();
    let lp = g.token_logprobs(&all).unwrap();
    assert_eq!(lp.len(), all.len() - 1);
    for (a, b) in lp[prompt.len() - 1..].iter().zip(&r.logprobs) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}
