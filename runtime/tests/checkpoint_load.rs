//! Loading checkpoints: the golden folders, dtype conversion, sharded folders and the
//! atomic writer, each checked against the `safetensors` and `half` crates (an
//! independent reader/writer and converter) or against facts stated in the golden README.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use lamda_compiler::diag::Code;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lamda_runtime::checkpoint::{Checkpoint, CheckpointError, SafetensorsFile, TensorRef, Weights, write_safetensors};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(case)
}

const TRAIN_CASES: [&str; 3] = ["lamda_qv_r4_linear03", "lamda_all7_r2_never", "lora_qv_r4_a8"];

/// Shapes stated by tests/golden/README.md for the tiny Llama (not derived from our code).
fn readme_shapes() -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), vec![256, 64]);
    m.insert("model.norm.weight".to_string(), vec![64]);
    m.insert("lm_head.weight".to_string(), vec![256, 64]);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![64]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![64]);
        m.insert(format!("{p}.self_attn.q_proj.weight"), vec![64, 64]); // 4 heads x 16
        m.insert(format!("{p}.self_attn.k_proj.weight"), vec![32, 64]); // 2 kv heads x 16
        m.insert(format!("{p}.self_attn.v_proj.weight"), vec![32, 64]);
        m.insert(format!("{p}.self_attn.o_proj.weight"), vec![64, 64]);
        m.insert(format!("{p}.mlp.gate_proj.weight"), vec![172, 64]);
        m.insert(format!("{p}.mlp.up_proj.weight"), vec![172, 64]);
        m.insert(format!("{p}.mlp.down_proj.weight"), vec![64, 172]);
    }
    m
}

#[test]
fn golden_checkpoints_load_with_config_values_from_readme() {
    for case in TRAIN_CASES {
        let ckpt = Checkpoint::open(golden(case)).unwrap();
        let c = ckpt.llama().unwrap();
        assert_eq!(c.model_type, "llama");
        assert_eq!(c.architectures, vec!["LlamaForCausalLM".to_string()]);
        assert_eq!(c.vocab_size, 256);
        assert_eq!(c.hidden_size, 64);
        assert_eq!(c.num_hidden_layers, 2);
        assert_eq!(c.num_attention_heads, 4);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.intermediate_size, 172);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.max_position_embeddings, 128);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.pad_token_id, None);
        assert!(ckpt.problems().is_empty());
        assert!(ckpt.tokenizer_path().is_none());
    }
}

#[test]
fn golden_tensors_have_the_shapes_the_config_implies() {
    let want = readme_shapes();
    for case in TRAIN_CASES {
        let ckpt = Checkpoint::open(golden(case)).unwrap();
        // The config-implied list is exactly the README's list, and the file holds nothing else.
        let implied: BTreeMap<String, Vec<usize>> = ckpt
            .config
            .expected_tensors()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        assert_eq!(implied, want);
        let names: Vec<&str> = ckpt.weights.names().collect();
        assert_eq!(names, want.keys().map(String::as_str).collect::<Vec<_>>());
        for (name, shape) in &want {
            let t = ckpt.tensor(name).unwrap();
            assert_eq!(t.shape(), shape.as_slice(), "{case}: {name}");
            assert!(t.iter().all(|v| v.is_finite()));
            match shape.len() {
                1 => assert_eq!(ckpt.vector(name).unwrap().len(), shape[0]),
                2 => assert_eq!(ckpt.matrix(name).unwrap().dim(), (shape[0], shape[1])),
                _ => unreachable!(),
            }
        }
        assert_eq!(ckpt.lm_head().unwrap().dim(), (256, 64));
    }
}

#[test]
fn golden_values_match_the_safetensors_crate_and_the_readme_statistics() {
    let path = golden("lamda_qv_r4_linear03").join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ckpt = Checkpoint::open(golden("lamda_qv_r4_linear03")).unwrap();
    for name in ckpt.weights.names() {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.dtype(), StDtype::F32);
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got = ckpt.tensor(name).unwrap();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), want, "{name}");
    }
    // README: RMSNorm weights are 1 + 0.1 N(0,1); other weights N(0, 0.1^2).
    let norm = ckpt.vector("model.layers.1.input_layernorm.weight").unwrap();
    let mean = norm.mean().unwrap();
    assert!((mean - 1.0).abs() < 0.06, "norm mean {mean}");
    let q = ckpt.matrix("model.layers.0.self_attn.q_proj.weight").unwrap();
    let std = (q.mapv(|v| v * v).mean().unwrap()).sqrt();
    assert!((std - 0.1).abs() < 0.01, "q std {std}");
}

fn le_bytes_bf16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
}

fn le_bytes_f16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
}

/// Awkward values: zero, signs, subnormals for f16, overflow to inf in f16, rounding cases.
fn awkward_values(n: usize) -> Vec<f32> {
    let special = [
        0.0,
        -0.0,
        1.0,
        -2.5,
        2.71,
        1e-3,
        -1e-8,
        65504.0,
        70000.0,
        1.0e30,
        0.1,
        1.0 / 3.0,
    ];
    (0..n)
        .map(|i| {
            special
                .get(i)
                .copied()
                .unwrap_or_else(|| ((i as f32) * 0.7321).sin() * (i as f32))
        })
        .collect()
}

#[test]
fn bf16_and_f16_convert_exactly_like_the_half_crate() {
    let dir = tempfile::tempdir().unwrap();
    // [3, 5] stays in memory; [33, 65] (4290 bytes as f16) goes through the memory map.
    for shape in [vec![3usize, 5], vec![33, 65]] {
        let n: usize = shape.iter().product();
        let values = awkward_values(n);
        let bf = le_bytes_bf16(&values);
        let hf = le_bytes_f16(&values);
        let tensors = vec![
            ("w_bf16", TensorView::new(StDtype::BF16, shape.clone(), &bf).unwrap()),
            ("w_f16", TensorView::new(StDtype::F16, shape.clone(), &hf).unwrap()),
        ];
        let path = dir.path().join(format!("half_{n}.safetensors"));
        std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();

        let file = SafetensorsFile::open(&path).unwrap();
        let got_bf = file.matrix("w_bf16", shape[0], shape[1]).unwrap();
        let got_hf = file.matrix("w_f16", shape[0], shape[1]).unwrap();
        for (i, v) in values.iter().enumerate() {
            let (r, c) = (i / shape[1], i % shape[1]);
            let want_bf = half::bf16::from_f32(*v).to_f32();
            let want_hf = half::f16::from_f32(*v).to_f32();
            assert_eq!(got_bf[[r, c]].to_bits(), want_bf.to_bits(), "bf16 {v}");
            assert_eq!(got_hf[[r, c]].to_bits(), want_hf.to_bits(), "f16 {v}");
        }
        // f64 reads widen the same values exactly.
        let wide = file.f64("w_bf16").unwrap();
        assert_eq!(wide[[0, 4]], f64::from(half::bf16::from_f32(values[4]).to_f32()));
    }
}

#[test]
fn sharded_checkpoint_loads_through_its_index() {
    let src = golden("lora_qv_r4_a8");
    let single = Checkpoint::open(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();

    // Split the golden tensors over three shards with the safetensors crate.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let shard = format!("model-{:05}-of-00003.safetensors", k + 1);
        let views: Vec<(String, TensorView<'_>)> = chunk.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(dir.path().join(&shard), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in chunk {
            weight_map.insert(n.clone(), serde_json::Value::String(shard.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(sharded.weights.files().len(), 3);
    assert_eq!(
        sharded.weights.names().collect::<Vec<_>>(),
        single.weights.names().collect::<Vec<_>>()
    );
    for name in single.weights.names() {
        assert_eq!(sharded.tensor(name).unwrap(), single.tensor(name).unwrap(), "{name}");
    }
}

#[test]
fn writer_output_reads_back_with_the_safetensors_crate_and_our_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.safetensors");
    let a: Vec<f32> = (0..17 * 3).map(|i| i as f32 * 0.25 - 3.0).collect();
    let steps: Vec<i64> = vec![0, 1, 2, 4, 4, -100, i64::MAX];
    let s = ndarray::Array2::<f32>::eye(3);
    let transposed = ndarray::Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32).reversed_axes();
    let mut tensors = BTreeMap::new();
    tensors.insert("m.A".to_string(), TensorRef::f32(&[17, 3], &a));
    tensors.insert("m.S".to_string(), TensorRef::from_f32_array(&s));
    tensors.insert("m.T".to_string(), TensorRef::from_f32_array(&transposed));
    tensors.insert("frozen_cols".to_string(), TensorRef::i64(&[7], &steps));
    tensors.insert("empty".to_string(), TensorRef::f32(&[0, 4], &[]));
    let mut meta = BTreeMap::new();
    meta.insert("step".to_string(), "100".to_string());
    write_safetensors(&path, &tensors, &meta).unwrap();
    assert!(!dir.path().join("adapter.safetensors.tmp").exists());

    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().clone().unwrap();
    assert_eq!(md.get("format").map(String::as_str), Some("pt"));
    assert_eq!(md.get("step").map(String::as_str), Some("100"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("frozen_cols").unwrap();
    assert_eq!(view.dtype(), StDtype::I64);
    let got: Vec<i64> = view
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, steps);
    assert_eq!(st.tensor("m.A").unwrap().shape(), &[17, 3]);

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(
        file.matrix("m.A", 17, 3).unwrap().iter().copied().collect::<Vec<_>>(),
        a
    );
    assert_eq!(file.matrix("m.S", 3, 3).unwrap(), s);
    assert_eq!(file.matrix("m.T", 3, 2).unwrap(), transposed);
    assert_eq!(file.i64("frozen_cols").unwrap().into_raw_vec_and_offset().0, steps);
    assert_eq!(file.f32("empty").unwrap().shape(), &[0, 4]);
    assert_eq!(file.metadata().get("step").map(String::as_str), Some("100"));

    // Overwriting replaces the file whole.
    let mut small = BTreeMap::new();
    small.insert("x".to_string(), TensorRef::f32(&[1], &[7.0]));
    write_safetensors(&path, &small, &BTreeMap::new()).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.names().collect::<Vec<_>>(), vec!["x"]);
}

#[test]
fn writer_errors_leave_no_temporary_and_keep_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/folder/a.safetensors");
    let mut t = BTreeMap::new();
    t.insert("x".to_string(), TensorRef::f32(&[2], &[1.0, 2.0]));
    let err = write_safetensors(&missing, &t, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.code(), Code::Io);
    assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
    assert!(err.hint().contains("create the output folder"));

    let path = dir.path().join("a.safetensors");
    write_safetensors(&path, &t, &BTreeMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = BTreeMap::new();
    bad.insert("y".to_string(), TensorRef::f32(&[3, 2], &[1.0, 2.0]));
    let err = write_safetensors(&path, &bad, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.code(), Code::CheckpointWriteShape);
    assert!(
        matches!(&err, CheckpointError::WriteShape { name, len: 2, expected: 6, .. } if name == "y"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!dir.path().join("a.safetensors.tmp").exists());
}

#[test]
fn weights_open_single_file_directly() {
    let w = Weights::open_single(&golden("alloc_basic").join("weights.safetensors")).unwrap();
    assert!(w.names().count() > 0);
    for name in w.names().map(str::to_owned).collect::<Vec<_>>() {
        let meta = w.meta(&name).unwrap().clone();
        assert_eq!(meta.shape.len(), 2);
        let m = w.matrix(&name, meta.shape[0], meta.shape[1]).unwrap();
        assert_eq!(m.shape(), meta.shape.as_slice());
    }
}

/// A BERT folder opens (its config parses) but is not a causal LM: what
/// `generate` and the LM paths ask for is refused with its own code.
#[test]
fn a_bert_checkpoint_is_not_a_causal_lm() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden_bert/bert_lamda_qv_r4");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let err = ckpt.llama().unwrap_err();
    assert_eq!(err.code().as_str(), "lamda::checkpoint::not_causal_lm", "{err}");
}
