//! Fused (JIT-compiled kernels) and unfused (reference ops) plans agree up
//! to float rounding on a randomly initialised llama at awkward sizes
//! (hidden 24, 3 heads of 8 with 1 key/value head, ffn 37, vocab 29), with
//! LaMDA on every linear layer (B freezing mid-run) and with LoRA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::prepare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lamda_runtime::checkpoint::{TensorRef, write_safetensors};
use lamda_runtime::session::{Observer, RunOptions, run};

struct Quiet;
impl Observer for Quiet {}

/// splitmix64 uniforms in [-s, s).
fn uniform(seed: &mut u64, n: usize, s: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
        })
        .collect()
}

fn write_model(dir: &Path) {
    let (vocab, hidden, layers, heads, kv, hd, ffn) = (29usize, 24usize, 2usize, 3usize, 1usize, 8usize, 37usize);
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": {vocab}, "hidden_size": {hidden},
"num_hidden_layers": {layers}, "num_attention_heads": {heads}, "num_key_value_heads": {kv}, "head_dim": {hd},
"intermediate_size": {ffn}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
"max_position_embeddings": 64, "hidden_act": "silu"}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut seed = 7u64;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v = uniform(&mut seed, n, scale).into_iter().map(|x| x + offset).collect();
        tensors.insert(name, (shape, v));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, hidden], 0.5, 0.0);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![heads * hd, hidden],
            0.3,
            0.0,
        );
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, hidden], 0.3, 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, hidden], 0.3, 0.0);
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![hidden, heads * hd],
            0.3,
            0.0,
        );
        add(format!("{p}.mlp.gate_proj.weight"), vec![ffn, hidden], 0.3, 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![ffn, hidden], 0.3, 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![hidden, ffn], 0.3, 0.0);
        add(format!("{p}.input_layernorm.weight"), vec![hidden], 0.1, 1.0);
        add(format!("{p}.post_attention_layernorm.weight"), vec![hidden], 0.1, 1.0);
    }
    add("model.norm.weight".into(), vec![hidden], 0.1, 1.0);
    add("lm_head.weight".into(), vec![vocab, hidden], 0.5, 0.0);
    let refs: BTreeMap<String, TensorRef<'_>> = tensors
        .iter()
        .map(|(k, (shape, v))| (k.clone(), TensorRef::f32(shape, v)))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &refs, &BTreeMap::new()).unwrap();
    // Token ids below the vocabulary: 3 rows of 7 (the last row of a batch is cut off).
    let ids: Vec<i64> = (0..21).map(|i| (i * 11 + 3) % vocab as i64).collect();
    let refs: BTreeMap<String, TensorRef<'_>> = [("input_ids".to_string(), TensorRef::i64(&[3, 7], &ids))].into();
    write_safetensors(&dir.join("ids.safetensors"), &refs, &BTreeMap::new()).unwrap();
}

fn run_spec(dir: &Path, body: &str, fuse: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let spec = dir.join(format!("spec-{fuse}.lamda"));
    std::fs::write(
        &spec,
        format!(
            "use \"model\" as m\n{body}\ntrain {{ data \"model/ids.safetensors\" steps 6 batch 3 seq 7 lr 5e-2 }}\n"
        ),
    )
    .unwrap();
    let opts = RunOptions {
        spec,
        out: Some(dir.join(format!("out-{fuse}"))),
        fuse,
        ..RunOptions::default()
    };
    let mut s = prepare(&opts).unwrap();
    let summary = run(&mut s, &mut Quiet, &AtomicBool::new(false)).unwrap();
    let tr = &s.trainer;
    let trained: Vec<Vec<f32>> = tr
        .plan
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trainable())
        .map(|(i, _)| tr.params[i].clone())
        .collect();
    (summary.losses, trained)
}

fn agree(body: &str, name: &str) {
    let dir: PathBuf = std::env::temp_dir().join(format!("lamdac-fusion-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_model(&dir.join("model"));
    let (l0, p0) = run_spec(&dir, body, false);
    let (l1, p1) = run_spec(&dir, body, true);
    assert_eq!(l0.len(), l1.len());
    for (t, (a, b)) in l0.iter().zip(&l1).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{name}: loss[{t}] {a} vs {b}");
    }
    assert!(l0.last() < l0.first(), "{name}: the loss falls ({l0:?})");
    for (a, b) in p0.iter().zip(&p1) {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-6 + 1e-4 * scale,
            "{name}: trained parameters differ by {err} (scale {scale})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lamda_everywhere_fused_equals_unfused() {
    agree("adapt m.*.* rank 3 freeze_b linear(0.5)", "lamda");
}

#[test]
fn lora_fused_equals_unfused() {
    agree(
        "adapt m.attn.* with lora rank 5\nadapt m.mlp.* with lora_fa rank 2",
        "lora",
    );
}

/// Ranks past the JIT's unrolled `row_dot` quads (13: three quads and a
/// remainder; 19) and up to the fused-epilogue limit, on both methods.
#[test]
fn high_rank_epilogues_fused_equal_unfused() {
    const { assert!(lamda_compiler::passes::fusion::MAX_EPILOGUE_RANK >= 19) };
    agree(
        "adapt m.attn.{q,o} rank 13 freeze_b linear(0.5)\nadapt m.mlp.* rank 19",
        "lamda_high",
    );
    agree(
        "adapt m.attn.{q,o} with lora rank 13\nadapt m.mlp.{gate,up} with lora rank 19",
        "lora_high",
    );
}
