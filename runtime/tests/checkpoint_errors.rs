//! Every way a checkpoint can be wrong produces its own error variant, names the file
//! and tensor, and carries a hint; random bytes never make the loader panic.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use lamda_compiler::diag::Code;
use std::path::{Path, PathBuf};

use lamda_runtime::checkpoint::{Checkpoint, CheckpointError, ConfigError, LlamaConfig, SafetensorsFile, Weights};
use proptest::prelude::*;
use serde_json::{Value, json};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(case)
}

fn golden_config() -> Value {
    let text = std::fs::read_to_string(golden("lora_qv_r4_a8").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A temporary checkpoint folder: the golden weights and a (possibly edited) config.
fn folder_with(config: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        golden("lora_qv_r4_a8").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn parse_config(v: &Value) -> Result<LlamaConfig, CheckpointError> {
    LlamaConfig::from_json_str(&v.to_string(), Path::new("config.json")).map_err(CheckpointError::from)
}

fn edited(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut v = golden_config();
    f(v.as_object_mut().unwrap());
    v
}

/// A safetensors file from a literal header and data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn assert_hint(e: &CheckpointError) {
    assert!(!e.hint().is_empty(), "{e}");
    assert!(e.code().as_str().starts_with("lamda::checkpoint::"));
    assert!(!e.to_string().is_empty());
}

#[test]
fn folder_missing_and_not_a_folder() {
    let e = Checkpoint::open("/definitely/not/here").unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::FolderMissing { path }) if path == Path::new("/definitely/not/here"))
    );
    assert_hint(&e);
    let file = golden("lora_qv_r4_a8").join("config.json");
    let e = Checkpoint::open(&file).unwrap_err();
    assert!(
        matches!(e, CheckpointError::Config(ConfigError::NotAFolder { .. })),
        "{e}"
    );
}

#[test]
fn config_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden("lora_qv_r4_a8").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::ConfigMissing { path }) if path.ends_with("config.json")),
        "{e}"
    );
    assert_hint(&e);
}

#[test]
fn no_weights_lists_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), golden_config().to_string()).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not read").unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.code(), Code::CheckpointNoWeights);
    let CheckpointError::NoWeights { found, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(found, &vec!["pytorch_model.bin".to_string()]);
    assert!(e.hint().contains("converted to safetensors"), "{}", e.hint());
}

#[test]
fn invalid_json_reports_line_and_column() {
    let text = "{\n  \"vocab_size\": 256,\n  oops\n}";
    let e = LlamaConfig::from_json_str(text, Path::new("c/config.json")).unwrap_err();
    let ConfigError::InvalidJson { line, column, path, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!((*line, *column), (3, 3));
    assert_eq!(path, Path::new("c/config.json"));
    assert!(e.to_string().contains("line 3, column 3"), "{e}");
}

#[test]
fn missing_key_and_wrong_type() {
    let e = parse_config(&edited(|m| {
        m.remove("hidden_size");
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::MissingKey { key, .. }) if key == "hidden_size"),
        "{e}"
    );
    assert_hint(&e);

    let e = parse_config(&edited(|m| {
        m.insert("hidden_size".into(), json!("64"));
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::WrongType { key, found, .. }) if key == "hidden_size" && found.contains("\"64\"")),
        "{e}"
    );

    let e = parse_config(&edited(|m| {
        m.insert("tie_word_embeddings".into(), json!(1));
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::WrongType { key, .. }) if key == "tie_word_embeddings"),
        "{e}"
    );

    let e = parse_config(&edited(|m| {
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": "big"}),
        );
        m.remove("rope_theta");
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::WrongType { key, .. }) if key == "rope_parameters.rope_theta"),
        "{e}"
    );

    let e = parse_config(&json!([1, 2])).unwrap_err();
    assert!(
        matches!(e, CheckpointError::Config(ConfigError::WrongType { .. })),
        "{e}"
    );
}

#[test]
fn invalid_values() {
    for (key, value) in [
        ("num_key_value_heads", json!(3)),
        ("num_attention_heads", json!(0)),
        ("rms_norm_eps", json!(-1.0)),
    ] {
        let e = parse_config(&edited(|m| {
            m.insert(key.into(), value.clone());
        }))
        .unwrap_err();
        assert!(
            matches!(e, CheckpointError::Config(ConfigError::InvalidValue { .. })),
            "{key}: {e}"
        );
    }
    // The two rope_theta spellings disagree.
    let e = parse_config(&edited(|m| {
        m.insert("rope_theta".into(), json!(500000.0));
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::InvalidValue { key, .. }) if key == "rope_theta"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_rope_and_features() {
    let e = parse_config(&edited(|m| {
        m.insert("model_type".into(), json!("gpt2"));
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::UnsupportedArchitecture { found, .. }) if found == "gpt2"),
        "{e}"
    );
    assert!(e.hint().contains("Llama"));

    let e = parse_config(&edited(|m| {
        m.insert("architectures".into(), json!(["LlamaForSequenceClassification"]));
    }))
    .unwrap_err();
    assert!(
        matches!(e, CheckpointError::Config(ConfigError::UnsupportedArchitecture { .. })),
        "{e}"
    );

    // transformers 5 layout (Llama 3.1 style).
    let e = parse_config(&edited(|m| {
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
        );
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::UnsupportedRopeScaling { rope_type, .. }) if rope_type == "llama3"),
        "{e}"
    );

    // transformers 4 layout.
    let e = parse_config(&edited(|m| {
        m.insert("rope_scaling".into(), json!({"type": "linear", "factor": 2.0}));
    }))
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Config(ConfigError::UnsupportedRopeScaling { rope_type, .. }) if rope_type == "linear"),
        "{e}"
    );

    for (key, value) in [
        ("attention_bias", json!(true)),
        ("mlp_bias", json!(true)),
        ("hidden_act", json!("gelu")),
        ("quantization_config", json!({"quant_method": "gptq"})),
    ] {
        let e = parse_config(&edited(|m| {
            m.insert(key.into(), value.clone());
        }))
        .unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Config(ConfigError::UnsupportedFeature { key: k, .. }) if k == key),
            "{key}: {e}"
        );
        assert_hint(&e);
    }
}

#[test]
fn config_defaults_and_both_rope_theta_layouts() {
    // transformers 5: only rope_parameters.rope_theta.
    let c = parse_config(&edited(|m| {
        m.remove("rope_theta");
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 500000.0}),
        );
    }))
    .unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    // transformers 4: only a top-level rope_theta, rope_scaling null.
    let c = parse_config(&edited(|m| {
        m.remove("rope_parameters");
        m.insert("rope_theta".into(), json!(100000.0));
        m.insert("rope_scaling".into(), Value::Null);
    }))
    .unwrap();
    assert_eq!(c.rope_theta, 100000.0);
    // Older configs: no head_dim, no num_key_value_heads, no rope_theta, eos as a list.
    let c = parse_config(&edited(|m| {
        for k in [
            "head_dim",
            "num_key_value_heads",
            "rope_theta",
            "rope_parameters",
            "rms_norm_eps",
        ] {
            m.remove(k);
        }
        m.insert("eos_token_id".into(), json!([2, 7]));
        m.insert("tie_word_embeddings".into(), json!(true));
    }))
    .unwrap();
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert!(c.expected_tensors().iter().all(|t| t.name != "lm_head.weight"));
}

#[test]
fn truncated_file() {
    let dir = folder_with(&golden_config());
    let path = dir.path().join("model.safetensors");
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 100]).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    let CheckpointError::Truncated {
        path: p,
        expected_len,
        actual_len,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(p, &path);
    assert_eq!(*expected_len, full.len() as u64);
    assert_eq!(*actual_len, full.len() as u64 - 100);
    assert_hint(&e);

    // Cut inside the header, and inside the 8-byte length.
    std::fs::write(&path, &full[..100]).unwrap();
    let e = SafetensorsFile::open(&path).unwrap_err();
    assert_eq!(e.code(), Code::CheckpointTruncated);
    assert!(matches!(e, CheckpointError::Truncated { actual_len: 100, .. }), "{e}");
    std::fs::write(&path, &full[..5]).unwrap();
    let e = SafetensorsFile::open(&path).unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError::Truncated {
                actual_len: 5,
                expected_len: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn lying_header_is_corrupt_and_names_the_tensor() {
    let p = Path::new("lie.safetensors");
    // [4, 4] F32 needs 64 bytes; the offsets give 32 (and the file has 32).
    let bytes = raw_safetensors(
        r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,32]}}"#,
        &[0u8; 32],
    );
    let e = SafetensorsFile::from_bytes(p, bytes).unwrap_err();
    assert_eq!(e.code(), Code::CheckpointCorrupt);
    assert!(
        matches!(&e, CheckpointError::Corrupt { tensor: Some(t), reason, .. } if t == "w" && reason.contains("64 bytes")),
        "{e}"
    );
    // Offsets beyond the end of the file: truncated.
    let bytes = raw_safetensors(
        r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#,
        &[0u8; 32],
    );
    let e = SafetensorsFile::from_bytes(p, bytes).unwrap_err();
    assert!(matches!(e, CheckpointError::Truncated { .. }), "{e}");
    // Overlapping tensors.
    let bytes = raw_safetensors(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0u8; 12],
    );
    let e = SafetensorsFile::from_bytes(p, bytes).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Corrupt { tensor: Some(t), .. } if t == "b"),
        "{e}"
    );
    // Trailing bytes nobody describes.
    let bytes = raw_safetensors(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0u8; 12]);
    let e = SafetensorsFile::from_bytes(p, bytes).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { tensor: None, .. }), "{e}");
    // Header length pointing past the end, header not JSON, shape overflow.
    let mut bytes = raw_safetensors("{}", &[]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        SafetensorsFile::from_bytes(p, bytes).unwrap_err(),
        CheckpointError::Corrupt { .. }
    ));
    let e = SafetensorsFile::from_bytes(p, raw_safetensors("{not json", &[])).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
    let huge = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
    let e = SafetensorsFile::from_bytes(p, raw_safetensors(huge, &[])).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
}

#[test]
fn unsupported_dtype() {
    let bytes = raw_safetensors(
        r#"{"q":{"dtype":"I8","shape":[2,2],"data_offsets":[0,4]},"x":{"dtype":"F4","shape":[8],"data_offsets":[4,8]}}"#,
        &[1, 2, 3, 4, 0, 0, 0, 0],
    );
    let file = SafetensorsFile::from_bytes(Path::new("q.safetensors"), bytes).unwrap();
    let e = file.f32("q").unwrap_err();
    assert_eq!(e.code(), Code::CheckpointUnsupportedDtype);
    assert!(
        matches!(&e, CheckpointError::UnsupportedDtype { name, dtype, .. } if name == "q" && dtype == "I8"),
        "{e}"
    );
    assert_hint(&e);
    // Integers still read as integers; an unknown dtype is listed but not readable.
    assert_eq!(
        file.i64("q").unwrap().iter().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(matches!(
        file.f32("x").unwrap_err(),
        CheckpointError::UnsupportedDtype { .. }
    ));
}

#[test]
fn missing_tensor_suggests_close_names() {
    let ckpt = Checkpoint::open(golden("lora_qv_r4_a8")).unwrap();
    let e = ckpt
        .weights
        .matrix("model.layers.0.self_attn.q_proj.weights", 64, 64)
        .unwrap_err();
    assert_eq!(e.code(), Code::CheckpointMissingTensor);
    let CheckpointError::MissingTensor { name, close, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(name, "model.layers.0.self_attn.q_proj.weights");
    assert_eq!(
        close.first().map(String::as_str),
        Some("model.layers.0.self_attn.q_proj.weight")
    );
    assert!(
        e.hint()
            .contains("did you mean `model.layers.0.self_attn.q_proj.weight`"),
        "{}",
        e.hint()
    );

    // A checkpoint that lacks a tensor its config implies fails to open.
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(golden("lora_qv_r4_a8").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .iter()
        .filter(|(n, _)| *n != "model.norm.weight")
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), golden_config().to_string()).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::MissingTensor { name, .. } if name == "model.norm.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_expected_vs_found() {
    let ckpt = Checkpoint::open(golden("lora_qv_r4_a8")).unwrap();
    let e = ckpt
        .weights
        .matrix("model.layers.1.self_attn.k_proj.weight", 64, 64)
        .unwrap_err();
    assert_eq!(e.code(), Code::CheckpointWrongShape);
    assert!(
        matches!(&e, CheckpointError::WrongShape { name, expected, found, .. }
            if name == "model.layers.1.self_attn.k_proj.weight" && expected == &vec![64, 64] && found == &vec![32, 64]),
        "{e}"
    );
    assert_hint(&e);
    let e = ckpt.weights.vector("model.norm.weight", 65).unwrap_err();
    assert!(matches!(e, CheckpointError::WrongShape { .. }), "{e}");
    // A config that disagrees with the weights (intermediate 172 → 128).
    let dir = folder_with(&edited(|m| {
        m.insert("intermediate_size".into(), json!(128));
    }));
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::WrongShape { name, expected, found, .. }
            if name == "model.layers.0.mlp.gate_proj.weight" && expected == &vec![128, 64] && found == &vec![172, 64]),
        "{e}"
    );
    let ckpt = Checkpoint::open_unchecked(dir.path()).unwrap();
    assert_eq!(ckpt.problems().len(), 6); // gate, up, down in each of 2 layers
}

fn sharded_folder() -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), golden_config().to_string()).unwrap();
    let src = std::fs::read(golden("lora_qv_r4_a8").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut map = serde_json::Map::new();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (n, v) in st.iter() {
        if n.starts_with("model.layers.1") {
            second.push((n.to_string(), v));
            map.insert(n.to_string(), json!("model-00002-of-00002.safetensors"));
        } else {
            first.push((n.to_string(), v));
            map.insert(n.to_string(), json!("model-00001-of-00002.safetensors"));
        }
    }
    let shard1 = dir.path().join("model-00001-of-00002.safetensors");
    let shard2 = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::write(shard1, safetensors::serialize(first, None).unwrap()).unwrap();
    std::fs::write(shard2, safetensors::serialize(second, None).unwrap()).unwrap();
    let index = json!({ "weight_map": map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    (dir, index)
}

#[test]
fn index_pointing_to_a_missing_shard() {
    let (dir, _) = sharded_folder();
    assert!(Checkpoint::open(dir.path()).is_ok());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.code(), Code::CheckpointMissingShard);
    let CheckpointError::MissingShard { index, shard, tensor } = &e else {
        panic!("{e}")
    };
    assert!(index.ends_with("model.safetensors.index.json"));
    assert!(shard.ends_with("model-00002-of-00002.safetensors"));
    assert!(tensor.starts_with("model.layers.1."), "{tensor}");
    assert_hint(&e);
}

#[test]
fn index_that_lies_or_is_malformed() {
    let (dir, mut index) = sharded_folder();
    let idx_path = dir.path().join("model.safetensors.index.json");
    // A tensor the index places in shard 1 that is really in shard 2.
    index["weight_map"]["model.layers.1.mlp.up_proj.weight"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(&idx_path, index.to_string()).unwrap();
    let e = Weights::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::MissingTensor { path, name, .. }
            if name == "model.layers.1.mlp.up_proj.weight" && path.ends_with("model-00001-of-00002.safetensors")),
        "{e}"
    );
    // Escaping the folder.
    index["weight_map"]["model.layers.1.mlp.up_proj.weight"] = json!("../model-00002-of-00002.safetensors");
    std::fs::write(&idx_path, index.to_string()).unwrap();
    assert!(matches!(
        Weights::open(dir.path()).unwrap_err(),
        CheckpointError::InvalidIndex { .. }
    ));
    // No weight_map; not JSON.
    std::fs::write(&idx_path, r#"{"metadata": {}}"#).unwrap();
    let e = Weights::open(dir.path()).unwrap_err();
    assert_eq!(e.code(), Code::CheckpointInvalidIndex);
    assert!(matches!(e, CheckpointError::InvalidIndex { .. }));
    std::fs::write(&idx_path, "{\"weight_map\": {").unwrap();
    assert!(matches!(
        Weights::open(dir.path()).unwrap_err(),
        CheckpointError::InvalidJson { line: 1, .. }
    ));
}

/// A small valid safetensors file to mutate.
fn small_valid() -> Vec<u8> {
    raw_safetensors(
        r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"F32","shape":[2,2],"data_offsets":[6,22]},"c":{"dtype":"I64","shape":[1],"data_offsets":[22,30]}}"#,
        &(0u8..30).collect::<Vec<_>>(),
    )
}

fn read_everything(file: &SafetensorsFile) {
    let names: Vec<String> = file.names().map(str::to_owned).collect();
    for n in names {
        let _ = file.f32(&n);
        let _ = file.f64(&n);
        let _ = file.i64(&n);
        let _ = file.matrix(&n, 2, 2);
        let _ = file.vector(&n, 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_the_safetensors_reader(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(file) = SafetensorsFile::from_bytes(Path::new("r.safetensors"), bytes) {
            read_everything(&file);
        }
    }

    #[test]
    fn mutated_valid_files_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut bytes = small_valid();
        for (i, b) in edits {
            let k = i.index(bytes.len());
            bytes[k] = b;
        }
        let keep = bytes.len() - cut.index(4);
        bytes.truncate(keep);
        if let Ok(file) = SafetensorsFile::from_bytes(Path::new("m.safetensors"), bytes) {
            read_everything(&file);
        }
    }

    #[test]
    fn random_text_never_panics_the_config_parser(text in "\\PC{0,200}") {
        let _ = LlamaConfig::from_json_str(&text, Path::new("config.json"));
    }

    #[test]
    fn random_config_values_never_panic(
        values in proptest::collection::vec(
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e30f64..1e30).prop_map(Value::from),
                "[a-z]{0,6}".prop_map(Value::from),
                Just(json!({"rope_type": "default", "rope_theta": 0})),
                Just(json!([1, "x"])),
            ],
            20,
        ),
        drop in proptest::collection::vec(any::<bool>(), 20),
    ) {
        let keys = [
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "head_dim", "rms_norm_eps",
            "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings",
            "max_position_embeddings", "model_type", "architectures", "eos_token_id",
            "bos_token_id", "pad_token_id", "hidden_act", "attention_bias",
        ];
        let mut cfg = golden_config();
        let m = cfg.as_object_mut().unwrap();
        for ((k, v), d) in keys.iter().zip(values).zip(drop) {
            if d { m.remove(*k); } else { m.insert((*k).into(), v); }
        }
        if let Ok(c) = parse_config(&cfg) {
            // Whatever parsed is internally consistent enough to list its tensors.
            let _ = c.expected_tensors();
        }
    }
}

/// Asking for a matrix where the config implies a vector.
#[test]
fn a_vector_read_as_a_matrix_is_a_wrong_rank() {
    let dir = folder_with(&golden_config());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let e = ckpt.matrix("model.norm.weight").unwrap_err();
    assert_eq!(e.code(), Code::CheckpointWrongRank, "{e}");
}
