//! GGUF Llama → Hugging Face checkpoint folder (`config.json`, `model.safetensors`
//! in F32 with `transformers` names, `tokenizer.json`, and `tokenizer_config.json`
//! with the chat template when the GGUF has one).
//!
//! Expects `general.architecture = llama` and llama.cpp's tensor names. Guarantees
//! that every GGUF tensor lands under exactly one Hugging Face name with the shape
//! the `llama.*` metadata implies (a tensor it does not know is an error, not
//! dropped), that q/k rows are put back in Hugging Face order, and that the folder
//! re-opens with [`Checkpoint::open`] and its tokenizer loads in `tokenizers`.
//!
//! The q/k rows: llama.cpp's `convert_hf_to_gguf.py` permutes the rows of
//! `q_proj` / `k_proj` so its RoPE, which rotates adjacent pairs `(2j, 2j+1)`,
//! equals Hugging Face's rotate-half RoPE, which pairs `j` with `j + head_dim/2`:
//! `w.reshape(n_head, 2, head_dim/2, d_in).swapaxes(1, 2)`. Within a head, GGUF
//! row `2j + t` is therefore Hugging Face row `t * head_dim/2 + j`; [`unpermute_rows`]
//! inverts that (with the kv-head count for k).
//!
//! Deliberately not done: RoPE scaling, MoE, biases, partial rotary embeddings —
//! all reported as unsupported rather than converted into a different model.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};

use super::error::GgufError;
use super::reader::{GgufFile, MetaValue};
use super::tokenizer::{tokenizer_config_json, tokenizer_json};
use crate::checkpoint::writer::temporary_path;
use crate::checkpoint::{
    CONFIG_FILE, Checkpoint, CheckpointError, LlamaConfig, TOKENIZER_FILE, TensorRef, write_safetensors,
};

/// File name of the converted weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the tokenizer settings (chat template, BOS / EOS names), written
/// when the GGUF has a chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// What [`convert_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// The config written to config.json, as lamdac parses it back.
    pub config: LlamaConfig,
    /// Tensors written to model.safetensors.
    pub tensors: usize,
    /// Parameters (f32 values) written.
    pub parameters: usize,
    /// ggml storage types of the source tensors, with the number of tensors of each.
    pub source_dtypes: BTreeMap<&'static str, usize>,
    /// Size of model.safetensors in bytes.
    pub safetensors_bytes: u64,
    /// The tokenizer.json written, if the GGUF tokenizer could be expressed as one.
    pub tokenizer: Option<PathBuf>,
    /// Why no tokenizer.json was written, when none was.
    pub tokenizer_skipped: Option<String>,
    /// The tokenizer_config.json written (when the GGUF has a chat template).
    pub tokenizer_config: Option<PathBuf>,
}

/// Converts the Llama GGUF at `gguf` into a Hugging Face checkpoint folder `out_dir`
/// (created if needed; files in it with the same names are replaced atomically).
///
/// Writes `model.safetensors` (every tensor dequantized to F32, shapes
/// `(d_out, d_in)`, q/k rows un-permuted), `tokenizer.json` (when the GGUF holds a
/// GPT-2 byte-level BPE tokenizer; see [`ConvertSummary::tokenizer_skipped`]) and,
/// last, `config.json`. Then re-opens the folder with [`Checkpoint::open`].
pub fn convert_gguf(gguf: &Path, out_dir: &Path) -> Result<ConvertSummary, GgufError> {
    let file = GgufFile::open(gguf)?;
    let hp = Hparams::read(&file)?;
    let jobs = plan(&file, &hp)?;

    // Tokenizer first: it is cheap, and a broken one should fail before the big write.
    let (tokenizer_text, tokenizer_skipped) = match tokenizer_json(&file) {
        Ok(v) => {
            let text = v.to_string();
            check_tokenizer(&file, &text)?;
            (Some(text), None)
        }
        Err(GgufError::Unsupported { what, .. }) => (None, Some(format!("{what} is not supported"))),
        Err(GgufError::MissingMetadata { key, .. }) if key == "tokenizer.ggml.model" => {
            (None, Some("the GGUF has no tokenizer metadata".into()))
        }
        Err(e) => return Err(e),
    };
    // the chat template travels with the tokenizer (a template without one is of no use)
    let tokenizer_config_text = match &tokenizer_text {
        Some(_) => tokenizer_config_json(&file)?.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"),
        None => None,
    };
    let config_json = hp.config_json(&file)?;
    let config_text = serde_json::to_string_pretty(&config_json).unwrap_or_default() + "\n";
    let config = LlamaConfig::from_json_str(&config_text, &out_dir.join(CONFIG_FILE)).map_err(CheckpointError::from)?;

    let converted: Vec<(String, Vec<usize>, Vec<f32>)> =
        jobs.par_iter().map(|j| j.run(&file)).collect::<Result<_, _>>()?;

    std::fs::create_dir_all(out_dir).map_err(|source| GgufError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let weights_path = out_dir.join(WEIGHTS_FILE);
    let tensors: BTreeMap<String, TensorRef<'_>> = converted
        .iter()
        .map(|(name, shape, data)| (name.clone(), TensorRef::f32(shape, data)))
        .collect();
    let source_name = gguf
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let metadata = BTreeMap::from([("converted_from".to_owned(), source_name)]);
    write_safetensors(&weights_path, &tensors, &metadata)?;
    let parameters = converted.iter().map(|(_, _, d)| d.len()).sum();
    drop(tensors);
    drop(converted);

    let tokenizer = match tokenizer_text {
        Some(text) => {
            let p = out_dir.join(TOKENIZER_FILE);
            write_atomic(&p, text.as_bytes())?;
            Some(p)
        }
        None => None,
    };
    let tokenizer_config = match &tokenizer_config_text {
        Some(text) => {
            let p = out_dir.join(TOKENIZER_CONFIG_FILE);
            write_atomic(&p, text.as_bytes())?;
            Some(p)
        }
        None => None,
    };
    write_atomic(&out_dir.join(CONFIG_FILE), config_text.as_bytes())?;

    Checkpoint::open(out_dir)?;
    let safetensors_bytes = std::fs::metadata(&weights_path)
        .map_err(|source| GgufError::Io {
            path: weights_path.clone(),
            source,
        })?
        .len();
    let mut source_dtypes = BTreeMap::new();
    for t in file.tensors() {
        *source_dtypes.entry(t.dtype.name()).or_insert(0) += 1;
    }
    Ok(ConvertSummary {
        out_dir: out_dir.to_path_buf(),
        config,
        tensors: jobs.len(),
        parameters,
        source_dtypes,
        safetensors_bytes,
        tokenizer,
        tokenizer_skipped,
        tokenizer_config,
    })
}

/// Inverts llama.cpp's q/k row permutation for a `(rows, cols)` row-major matrix
/// whose rows are `n_head` heads of `rows / n_head` rows each.
///
/// Within each head of width `hd`, GGUF row `2j + t` becomes row `t * hd/2 + j`
/// (`t` ∈ {0, 1}, `j` < `hd/2`). Returns `None` when the sizes do not fit
/// (`w.len() != rows * cols`, or `rows` not a multiple of `2 * n_head`).
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || rows.checked_mul(cols) != Some(w.len()) {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for (r_hf, dst) in out.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
        let (h, within) = (r_hf / hd, r_hf % hd);
        let (t, j) = (within / half, within % half);
        let r_gguf = h * hd + 2 * j + t;
        dst.copy_from_slice(w.get(r_gguf * cols..(r_gguf + 1) * cols)?);
    }
    Some(out)
}

/// The Hugging Face name of a llama.cpp tensor name, if it is a Llama tensor.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (idx, tail) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    if idx != i.to_string() {
        return None;
    }
    let hf_tail = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{hf_tail}"))
}

/// The model dimensions, from the `llama.*` metadata and the embedding's shape.
#[derive(Debug, Clone)]
struct Hparams {
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    rms_eps: f64,
    rope_theta: f64,
    context: usize,
    tied: bool,
}

impl Hparams {
    fn read(f: &GgufFile) -> Result<Self, GgufError> {
        let path = f.path();
        match f.get("general.architecture").map(|v| v.as_str()) {
            Some(Some("llama")) => {}
            Some(Some(other)) => {
                return Err(GgufError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: other.into(),
                });
            }
            Some(None) => {
                return Err(bad(
                    f,
                    "general.architecture",
                    "a string",
                    f.get("general.architecture"),
                ));
            }
            None => {
                return Err(GgufError::MissingMetadata {
                    path: path.to_path_buf(),
                    key: "general.architecture".into(),
                });
            }
        }
        if let Some(n) = opt_count(f, "llama.expert_count")?.filter(|&n| n > 0) {
            return Err(GgufError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: format!("llama with {n} experts (mixture of experts)"),
            });
        }
        if let Some(v) = f.get("llama.rope.scaling.type") {
            match v.as_str() {
                Some("none") => {}
                Some(kind) => {
                    return Err(GgufError::Unsupported {
                        path: path.to_path_buf(),
                        what: format!("RoPE scaling `{kind}`"),
                    });
                }
                None => return Err(bad(f, "llama.rope.scaling.type", "a string", Some(v))),
            }
        }
        if f.tensor_info("rope_freqs.weight").is_some() {
            return Err(GgufError::Unsupported {
                path: path.to_path_buf(),
                what: "RoPE frequency factors (`rope_freqs.weight`, Llama 3.1 scaling)".into(),
            });
        }

        let hidden = req_count(f, "llama.embedding_length")?;
        let layers = req_count(f, "llama.block_count")?;
        if layers as u64 > lamda_compiler::limits::MAX_GROUP {
            let found = f.metadata().get("llama.block_count");
            return Err(bad(f, "llama.block_count", "at most 4096 layers", found));
        }
        let heads = req_count(f, "llama.attention.head_count")?;
        let kv_heads = opt_count(f, "llama.attention.head_count_kv")?.unwrap_or(heads);
        let ffn = req_count(f, "llama.feed_forward_length")?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(bad(
                f,
                "llama.attention.head_count_kv",
                &format!("a divisor of the head count {heads}"),
                f.get("llama.attention.head_count_kv"),
            ));
        }
        let head_dim = match opt_count(f, "llama.attention.key_length")? {
            Some(k) => k,
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => {
                return Err(bad(
                    f,
                    "llama.attention.head_count",
                    &format!("a divisor of the embedding length {hidden}"),
                    f.get("llama.attention.head_count"),
                ));
            }
        };
        if let Some(v) = opt_count(f, "llama.attention.value_length")?
            && v != head_dim
        {
            return Err(GgufError::Unsupported {
                path: path.to_path_buf(),
                what: format!("value heads of width {v} with key heads of width {head_dim}"),
            });
        }
        if !head_dim.is_multiple_of(2) {
            return Err(bad(
                f,
                "llama.attention.key_length",
                "an even head width",
                f.get("llama.attention.key_length"),
            ));
        }
        if let Some(r) = opt_count(f, "llama.rope.dimension_count")?
            && r != head_dim
        {
            return Err(GgufError::Unsupported {
                path: path.to_path_buf(),
                what: format!("partial rotary embeddings ({r} of {head_dim} dims)"),
            });
        }
        let rms_eps = req_float(f, "llama.attention.layer_norm_rms_epsilon")?;
        let rope_theta = opt_float(f, "llama.rope.freq_base")?.unwrap_or(10_000.0);
        let context = opt_count(f, "llama.context_length")?.unwrap_or(2048);

        let embd = f
            .tensor_info("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
            })?;
        let embd_shape = embd.shape();
        let vocab = match embd_shape.as_slice() {
            [v, d] if *d == hidden => *v,
            _ => {
                return Err(GgufError::WrongShape {
                    path: path.to_path_buf(),
                    name: "token_embd.weight".into(),
                    expected: vec![opt_count(f, "llama.vocab_size")?.unwrap_or(0), hidden],
                    found: embd_shape,
                });
            }
        };
        if let Some(v) = opt_count(f, "llama.vocab_size")?
            && v != vocab
        {
            return Err(GgufError::WrongShape {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
                expected: vec![v, hidden],
                found: embd_shape,
            });
        }
        let tied = f.tensor_info("output.weight").is_none();
        Ok(Self {
            vocab,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn,
            rms_eps,
            rope_theta,
            context,
            tied,
        })
    }

    /// config.json for `LlamaForCausalLM` with these dimensions and the GGUF's special ids.
    fn config_json(&self, f: &GgufFile) -> Result<Value, GgufError> {
        let mut cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.context,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "tie_word_embeddings": self.tied,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": true,
            "torch_dtype": "float32",
        });
        for (gguf_key, hf_key) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
            ("tokenizer.ggml.padding_token_id", "pad_token_id"),
        ] {
            if let Some(id) = opt_count_any(f, gguf_key)? {
                if id >= self.vocab {
                    return Err(bad(
                        f,
                        gguf_key,
                        &format!("a token id below the vocabulary size {}", self.vocab),
                        f.get(gguf_key),
                    ));
                }
                cfg[hf_key] = json!(id);
            }
        }
        Ok(cfg)
    }
}

/// One tensor to convert.
#[derive(Debug)]
struct Job {
    gguf: String,
    hf: String,
    /// Expected shape, outermost first: `(d_out, d_in)` or `(d,)`.
    shape: Vec<usize>,
    /// Heads to un-permute the rows by (q: heads, k: kv heads).
    unpermute: Option<usize>,
}

impl Job {
    fn run(&self, f: &GgufFile) -> Result<(String, Vec<usize>, Vec<f32>), GgufError> {
        let data = f.dequantize(&self.gguf)?;
        let data = match (self.unpermute, self.shape.as_slice()) {
            (Some(heads), [rows, cols]) => {
                unpermute_rows(&data, *rows, *cols, heads).ok_or_else(|| GgufError::WrongShape {
                    path: f.path().to_path_buf(),
                    name: self.gguf.clone(),
                    expected: self.shape.clone(),
                    found: f.tensor_info(&self.gguf).map(|t| t.shape()).unwrap_or_default(),
                })?
            }
            _ => data,
        };
        Ok((self.hf.clone(), self.shape.clone(), data))
    }
}

/// Every tensor to convert with its expected shape; checks the file holds exactly them.
fn plan(f: &GgufFile, hp: &Hparams) -> Result<Vec<Job>, GgufError> {
    let (d, q, kv, ffn) = (hp.hidden, hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim, hp.ffn);
    let mut want: Vec<(String, Vec<usize>, Option<usize>)> = vec![
        ("token_embd.weight".into(), vec![hp.vocab, d], None),
        ("output_norm.weight".into(), vec![d], None),
    ];
    if !hp.tied {
        want.push(("output.weight".into(), vec![hp.vocab, d], None));
    }
    for i in 0..hp.layers {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        want.extend([
            (b("attn_norm"), vec![d], None),
            (b("attn_q"), vec![q, d], Some(hp.heads)),
            (b("attn_k"), vec![kv, d], Some(hp.kv_heads)),
            (b("attn_v"), vec![kv, d], None),
            (b("attn_output"), vec![d, q], None),
            (b("ffn_norm"), vec![d], None),
            (b("ffn_gate"), vec![ffn, d], None),
            (b("ffn_up"), vec![ffn, d], None),
            (b("ffn_down"), vec![d, ffn], None),
        ]);
    }
    let wanted: BTreeSet<&str> = want.iter().map(|(n, _, _)| n.as_str()).collect();
    if let Some(extra) = f.tensors().iter().find(|t| !wanted.contains(t.name.as_str())) {
        return Err(GgufError::UnexpectedTensor {
            path: f.path().to_path_buf(),
            name: extra.name.clone(),
        });
    }
    want.into_iter()
        .map(|(name, shape, unpermute)| {
            let info = f.tensor_info(&name).ok_or_else(|| GgufError::MissingTensor {
                path: f.path().to_path_buf(),
                name: name.clone(),
            })?;
            if info.shape() != shape {
                return Err(GgufError::WrongShape {
                    path: f.path().to_path_buf(),
                    name,
                    expected: shape,
                    found: info.shape(),
                });
            }
            let hf = hf_name(&name).ok_or_else(|| GgufError::UnexpectedTensor {
                path: f.path().to_path_buf(),
                name: name.clone(),
            })?;
            Ok(Job {
                gguf: name,
                hf,
                shape,
                unpermute,
            })
        })
        .collect()
}

/// Loads the generated tokenizer.json in `tokenizers` and checks its vocabulary size.
fn check_tokenizer(f: &GgufFile, text: &str) -> Result<(), GgufError> {
    let err = |message: String| GgufError::Tokenizer {
        path: f.path().to_path_buf(),
        message,
    };
    let tok: tokenizers::Tokenizer = text.parse().map_err(|e| err(format!("{e}")))?;
    let expected = f
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map_or(0, <[MetaValue]>::len);
    let got = tok.get_vocab_size(true);
    if got != expected {
        return Err(err(format!("it has {got} tokens, the GGUF token list {expected}")));
    }
    Ok(())
}

/// Writes `bytes` to `<path>.tmp`, syncs it, and renames it over `path` (then syncs
/// the folder): readers see the old file or the new one, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GgufError> {
    let tmp = temporary_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|source| {
        // Best effort: the temporary is useless after a failure.
        let _ = std::fs::remove_file(&tmp);
        GgufError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Largest dimension accepted from metadata (as config.json's parser does).
const MAX_DIM: u64 = lamda_compiler::limits::MAX_DIM;

fn bad(f: &GgufFile, key: &str, expected: &str, found: Option<&MetaValue>) -> GgufError {
    GgufError::BadMetadata {
        path: f.path().to_path_buf(),
        key: key.into(),
        expected: expected.into(),
        found: found.map_or_else(|| "nothing".into(), MetaValue::describe),
    }
}

/// A positive dimension from the metadata, if the key is present.
fn opt_count(f: &GgufFile, key: &str) -> Result<Option<usize>, GgufError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_DIM).contains(&n) => Ok(usize::try_from(n).ok()),
            _ => Err(bad(f, key, "a positive integer (one value, not per layer)", Some(v))),
        },
    }
}

/// A non-negative integer (a token id) from the metadata, if the key is present.
fn opt_count_any(f: &GgufFile, key: &str) -> Result<Option<usize>, GgufError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(bad(f, key, "a non-negative integer", Some(v))),
        },
    }
}

fn req_count(f: &GgufFile, key: &str) -> Result<usize, GgufError> {
    opt_count(f, key)?.ok_or_else(|| GgufError::MissingMetadata {
        path: f.path().to_path_buf(),
        key: key.into(),
    })
}

/// A positive float from the metadata. An f32 is widened through its shortest
/// decimal form, so `1e-5` stored as f32 becomes `1e-5`, not `9.999999747378752e-6`
/// (the value Hugging Face configs state, and the one PyTorch rounds back to f32).
fn opt_float(f: &GgufFile, key: &str) -> Result<Option<f64>, GgufError> {
    let Some(v) = f.get(key) else {
        return Ok(None);
    };
    let x = match v {
        MetaValue::F32(x) => x.to_string().parse::<f64>().ok(),
        other => other.as_f64(),
    };
    match x {
        Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
        _ => Err(bad(f, key, "a positive number", Some(v))),
    }
}

fn req_float(f: &GgufFile, key: &str) -> Result<f64, GgufError> {
    opt_float(f, key)?.ok_or_else(|| GgufError::MissingMetadata {
        path: f.path().to_path_buf(),
        key: key.into(),
    })
}
