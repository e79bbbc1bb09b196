//! Hugging Face `config.json` of a Llama checkpoint: the one parser of it.
//!
//! `check` (through `use "folder" as m`) and `train` (through the runtime's
//! checkpoint loader) read config.json with this parser, so they accept and
//! reject the same configs with the same codes. Defaults follow
//! `transformers`' `LlamaConfig` where config.json may omit a key
//! (`num_key_value_heads` = heads, `head_dim` = hidden / heads, `rms_norm_eps`
//! 1e-6, `rope_theta` 10000, `tie_word_embeddings` false,
//! `max_position_embeddings` 2048); the model dimensions themselves are
//! required. Anything that would change the block's math and is not
//! implemented (RoPE scaling, biases, another activation, quantization) is an
//! error rather than being silently ignored, and so are sizes no real model
//! has (they would overflow shape arithmetic or exhaust memory downstream).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::consteval::Const;
use crate::diag::Code;

/// Why a checkpoint's config.json cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The checkpoint folder does not exist.
    #[error("checkpoint folder `{}` does not exist", path.display())]
    FolderMissing { path: PathBuf },
    /// The path names a file, not a folder.
    #[error("`{}` is not a folder", path.display())]
    NotAFolder { path: PathBuf },
    /// The folder has no config.json.
    #[error("`{}` does not exist", path.display())]
    ConfigMissing { path: PathBuf },
    /// config.json exists but cannot be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// config.json is not JSON.
    #[error("invalid JSON in `{}` at line {line}, column {column}: {message}", path.display())]
    InvalidJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A required key is absent.
    #[error("`{}` has no `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },
    /// A key has the wrong JSON type.
    #[error("`{key}` in `{}` should be {expected}, found {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A key has a value no model can have.
    #[error("invalid `{key}` in `{}`: {reason}", path.display())]
    InvalidValue { path: PathBuf, key: String, reason: String },
    /// Not a Llama-family config.
    #[error("`{}` describes a `{found}` model, which lamdac cannot load", path.display())]
    UnsupportedArchitecture { path: PathBuf, found: String },
    /// RoPE scaling other than the default.
    #[error("`{}` uses rope scaling `{rope_type}`, which lamdac does not implement", path.display())]
    UnsupportedRopeScaling { path: PathBuf, rope_type: String },
    /// A feature of the block that is not implemented (biases, activation, quantization).
    #[error("`{}` sets `{key}` = {value}, which lamdac does not implement", path.display())]
    UnsupportedFeature { path: PathBuf, key: String, value: String },
}

impl ConfigError {
    /// The stable code users see.
    pub fn code(&self) -> Code {
        match self {
            Self::FolderMissing { .. } => Code::CheckpointFolderMissing,
            Self::NotAFolder { .. } => Code::CheckpointNotAFolder,
            Self::ConfigMissing { .. } => Code::CheckpointConfigMissing,
            Self::Io { .. } => Code::CheckpointIo,
            Self::InvalidJson { .. } => Code::CheckpointInvalidJson,
            Self::MissingKey { .. } => Code::CheckpointMissingKey,
            Self::WrongType { .. } => Code::CheckpointWrongType,
            Self::InvalidValue { .. } => Code::CheckpointInvalidValue,
            Self::UnsupportedArchitecture { .. } => Code::CheckpointUnsupportedArchitecture,
            Self::UnsupportedRopeScaling { .. } => Code::CheckpointUnsupportedRopeScaling,
            Self::UnsupportedFeature { .. } => Code::CheckpointUnsupportedFeature,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::FolderMissing { .. } => {
                "check the path in `use \"...\"`; it is resolved relative to the .lamda file".into()
            }
            Self::NotAFolder { .. } => {
                "point at the folder that holds config.json and model.safetensors, not at a file".into()
            }
            Self::ConfigMissing { .. } => "a Hugging Face checkpoint folder holds config.json next to its \
                 model.safetensors; download or copy it with the weights"
                .into(),
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "the file does not exist".into(),
                std::io::ErrorKind::PermissionDenied => "check the file's permissions".into(),
                _ => "check that the file is readable".into(),
            },
            Self::InvalidJson { .. } => "the file was probably cut off or edited by hand; \
                 restore it from the original checkpoint"
                .into(),
            Self::MissingKey { key, .. } => {
                format!("a Llama config.json sets `{key}`; restore the original config.json")
            }
            Self::WrongType { key, expected, .. } => format!("set `{key}` to {expected}"),
            Self::InvalidValue { .. } => "restore the original config.json".into(),
            Self::UnsupportedArchitecture { .. } => {
                "lamdac supports Llama-family causal LMs (`model_type: \"llama\"`, \
                 `LlamaForCausalLM`: Llama 2, TinyLlama, SmolLM2, ...) and BERT encoders (`model_type: \"bert\"`, \
                 `BertModel` / `BertForSequenceClassification`: all-MiniLM-L6-v2, bert-base, ...)"
                    .into()
            }
            Self::UnsupportedRopeScaling { .. } => "only the default RoPE (no scaling) is implemented; use a model \
                 without `rope_scaling` / with `rope_type: \"default\"`"
                .into(),
            Self::UnsupportedFeature { key, .. } => {
                format!("lamdac implements the standard Llama block; `{key}` changes it")
            }
        }
    }

    /// The file or folder the problem is in.
    pub fn path(&self) -> &Path {
        match self {
            Self::FolderMissing { path }
            | Self::NotAFolder { path }
            | Self::ConfigMissing { path }
            | Self::Io { path, .. }
            | Self::InvalidJson { path, .. }
            | Self::MissingKey { path, .. }
            | Self::WrongType { path, .. }
            | Self::InvalidValue { path, .. }
            | Self::UnsupportedArchitecture { path, .. }
            | Self::UnsupportedRopeScaling { path, .. }
            | Self::UnsupportedFeature { path, .. } => path,
        }
    }
}

/// Reads `<dir>/config.json`, after checking that `dir` is a folder.
pub fn read_dir_config(dir: &Path) -> Result<LlamaConfig, ConfigError> {
    if !dir.exists() {
        return Err(ConfigError::FolderMissing {
            path: dir.to_path_buf(),
        });
    }
    if !dir.is_dir() {
        return Err(ConfigError::NotAFolder {
            path: dir.to_path_buf(),
        });
    }
    LlamaConfig::load(&dir.join("config.json"))
}

/// The family a config maps to, and its arguments in family parameter names.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyConfig {
    pub family: &'static str,
    pub args: Vec<(&'static str, Const)>,
}

/// A checkpoint's config.json, parsed for the family it describes.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    Bert(BertConfig),
}

impl ModelConfig {
    /// Reads `<dir>/config.json` (after checking that `dir` is a folder):
    /// `model_type: "bert"` is a BERT encoder, anything else must be a Llama.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        if !dir.exists() {
            return Err(ConfigError::FolderMissing {
                path: dir.to_path_buf(),
            });
        }
        if !dir.is_dir() {
            return Err(ConfigError::NotAFolder {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join("config.json");
        let text = read_text(&path)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ConfigError::InvalidJson {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e),
        })?;
        if let Value::Object(obj) = &value
            && obj.get("model_type").and_then(Value::as_str) == Some("bert")
        {
            return Parser { path }.parse_bert(obj).map(ModelConfig::Bert);
        }
        LlamaConfig::from_json_str(&text, &path).map(ModelConfig::Llama)
    }

    /// Every tensor the family's model holds, with its shape, in model order.
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        match self {
            ModelConfig::Llama(c) => c.expected_tensors(),
            ModelConfig::Bert(c) => c.expected_tensors(),
        }
    }

    /// The shape the config implies for a tensor name, if it names one.
    pub fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            ModelConfig::Llama(c) => c.expected_shape(name),
            ModelConfig::Bert(c) => c
                .expected_tensors()
                .into_iter()
                .find(|t| t.name == name)
                .map(|t| t.shape),
        }
    }

    /// `pad_token_id`, if set.
    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Llama(c) => c.pad_token_id,
            ModelConfig::Bert(c) => c.pad_token_id,
        }
    }

    /// The end-of-sequence ids (none for an encoder).
    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            ModelConfig::Llama(c) => &c.eos_token_ids,
            ModelConfig::Bert(_) => &[],
        }
    }

    /// Rows of the token embedding.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Bert(c) => c.vocab_size,
        }
    }
}

/// The hyperparameters of a BERT encoder (`BertModel`,
/// `BertForSequenceClassification`), as config.json states them. Defaults
/// follow `transformers`' `BertConfig` where config.json may omit a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `architectures`; empty when absent.
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Rows of the position embedding (the longest sequence).
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) embedding.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    /// Classes of a saved classification head (`num_labels`, or the size of `id2label`).
    pub num_labels: Option<usize>,
}

impl BertConfig {
    /// Every tensor of the encoder and its pooler under BertForSequenceClassification's
    /// names (`bert.` prefix; a bare BertModel's names without it are accepted by the loader).
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        let (d, f) = (self.hidden_size, self.intermediate_size);
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| out.push(ExpectedTensor { name, shape });
        push(
            "bert.embeddings.word_embeddings.weight".into(),
            vec![self.vocab_size, d],
        );
        push(
            "bert.embeddings.position_embeddings.weight".into(),
            vec![self.max_position_embeddings, d],
        );
        push(
            "bert.embeddings.token_type_embeddings.weight".into(),
            vec![self.type_vocab_size, d],
        );
        push("bert.embeddings.LayerNorm.weight".into(), vec![d]);
        push("bert.embeddings.LayerNorm.bias".into(), vec![d]);
        for i in 0..self.num_hidden_layers {
            let p = format!("bert.encoder.layer.{i}");
            for (m, o, k) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", f, d),
                ("output.dense", d, f),
            ] {
                push(format!("{p}.{m}.weight"), vec![o, k]);
                push(format!("{p}.{m}.bias"), vec![o]);
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                push(format!("{p}.{n}.weight"), vec![d]);
                push(format!("{p}.{n}.bias"), vec![d]);
            }
        }
        push("bert.pooler.dense.weight".into(), vec![d, d]);
        push("bert.pooler.dense.bias".into(), vec![d]);
        out
    }
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::ConfigMissing {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads `<dir>/config.json` as arguments of a stdlib model family.
pub fn read_config(dir: &Path) -> Result<FamilyConfig, ConfigError> {
    Ok(match ModelConfig::load_dir(dir)? {
        ModelConfig::Llama(c) => family_args(&c),
        ModelConfig::Bert(c) => bert_family_args(&c),
    })
}

/// The bert family's arguments for a parsed config.
pub fn bert_family_args(c: &BertConfig) -> FamilyConfig {
    let int = |v: usize| Const::Int(i64::try_from(v).unwrap_or(i64::MAX));
    FamilyConfig {
        family: "bert",
        args: vec![
            ("vocab", int(c.vocab_size)),
            ("hidden", int(c.hidden_size)),
            ("n_layers", int(c.num_hidden_layers)),
            ("heads", int(c.num_attention_heads)),
            ("ffn", int(c.intermediate_size)),
            ("max_pos", int(c.max_position_embeddings)),
            ("type_vocab", int(c.type_vocab_size)),
            ("eps", Const::Float(c.layer_norm_eps)),
        ],
    }
}

/// The llama family's arguments for a parsed config.
pub fn family_args(c: &LlamaConfig) -> FamilyConfig {
    let int = |v: usize| Const::Int(i64::try_from(v).unwrap_or(i64::MAX));
    FamilyConfig {
        family: "llama",
        args: vec![
            ("vocab", int(c.vocab_size)),
            ("hidden", int(c.hidden_size)),
            ("n_layers", int(c.num_hidden_layers)),
            ("heads", int(c.num_attention_heads)),
            ("ffn", int(c.intermediate_size)),
            ("kv_heads", int(c.num_key_value_heads)),
            ("head_dim", int(c.head_dim)),
            ("eps", Const::Float(c.rms_norm_eps)),
            ("rope_theta", Const::Float(c.rope_theta)),
            ("tie_embeddings", Const::Bool(c.tie_word_embeddings)),
        ],
    }
}

/// The `rope_theta` `transformers` uses when config.json has none.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// The `rms_norm_eps` `transformers` uses when config.json has none.
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// The `max_position_embeddings` `transformers` uses when config.json has none.
pub const DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 2048;

/// The hyperparameters of a Llama-family causal LM, as config.json states them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `model_type`, always `llama` once parsed.
    pub model_type: String,
    /// `architectures` (e.g. `["LlamaForCausalLM"]`); empty when absent.
    pub architectures: Vec<String>,
    /// Rows of the embedding and of `lm_head`.
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); equals the query heads when absent.
    pub num_key_value_heads: usize,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    pub head_dim: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base, from `rope_theta` or `rope_parameters.rope_theta`.
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// `bos_token_id`, if set.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (a number or a list in config.json); empty when absent.
    pub eos_token_ids: Vec<u32>,
    /// `pad_token_id`, if set.
    pub pad_token_id: Option<u32>,
    /// `dtype` / `torch_dtype` as written (informative: weights are converted on load).
    pub torch_dtype: Option<String>,
}

/// One tensor a checkpoint must hold according to its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape, `[d_out, d_in]` for linear weights.
    pub shape: Vec<usize>,
}

impl LlamaConfig {
    /// Reads and parses a config.json file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::ConfigMissing {
                    path: path.to_path_buf(),
                }
            } else {
                ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::InvalidJson {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e),
        })?;
        let Value::Object(obj) = &value else {
            return Err(ConfigError::WrongType {
                path: path.to_path_buf(),
                key: "(top level)".into(),
                expected: "a JSON object",
                found: describe(&value),
            });
        };
        Parser {
            path: path.to_path_buf(),
        }
        .parse(obj)
    }

    /// Every tensor of `LlamaForCausalLM` with its shape, in model order
    /// (`lm_head.weight` only when the embeddings are not tied).
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        let d = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let f = self.intermediate_size;
        let mut out = Vec::with_capacity(9 * self.num_hidden_layers + 3);
        let mut push = |name: String, shape: Vec<usize>| out.push(ExpectedTensor { name, shape });
        push("model.embed_tokens.weight".into(), vec![self.vocab_size, d]);
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            push(format!("{p}.input_layernorm.weight"), vec![d]);
            push(format!("{p}.self_attn.q_proj.weight"), vec![q, d]);
            push(format!("{p}.self_attn.k_proj.weight"), vec![kv, d]);
            push(format!("{p}.self_attn.v_proj.weight"), vec![kv, d]);
            push(format!("{p}.self_attn.o_proj.weight"), vec![d, q]);
            push(format!("{p}.post_attention_layernorm.weight"), vec![d]);
            push(format!("{p}.mlp.gate_proj.weight"), vec![f, d]);
            push(format!("{p}.mlp.up_proj.weight"), vec![f, d]);
            push(format!("{p}.mlp.down_proj.weight"), vec![d, f]);
        }
        push("model.norm.weight".into(), vec![d]);
        if !self.tie_word_embeddings {
            push("lm_head.weight".into(), vec![self.vocab_size, d]);
        }
        out
    }

    /// The shape the config implies for a Hugging Face tensor name, if it names one
    /// (`lm_head.weight` has one even when tied).
    pub fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        if name == "lm_head.weight" {
            return Some(vec![self.vocab_size, self.hidden_size]);
        }
        let layer_ok = |rest: &str| -> Option<String> {
            let rest = rest.strip_prefix("model.layers.")?;
            let (idx, tail) = rest.split_once('.')?;
            let i: usize = idx.parse().ok()?;
            (i < self.num_hidden_layers && idx == i.to_string()).then(|| tail.to_owned())
        };
        let d = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let f = self.intermediate_size;
        match name {
            "model.embed_tokens.weight" => return Some(vec![self.vocab_size, d]),
            "model.norm.weight" => return Some(vec![d]),
            _ => {}
        }
        let tail = layer_ok(name)?;
        Some(match tail.as_str() {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![d],
            "self_attn.q_proj.weight" => vec![q, d],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, d],
            "self_attn.o_proj.weight" => vec![d, q],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, d],
            "mlp.down_proj.weight" => vec![d, f],
            _ => return None,
        })
    }
}

/// serde_json appends " at line L column C" to its messages; the error already says where.
pub fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// A JSON value in words, for "found ..." in messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            format!("the string \"{short}\"")
        }
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

struct Parser {
    path: PathBuf,
}

impl Parser {
    fn parse(&self, obj: &Map<String, Value>) -> Result<LlamaConfig, ConfigError> {
        let (model_type, architectures) = self.architecture(obj)?;
        self.unsupported_features(obj)?;

        let vocab_size = self.required_positive(obj, "vocab_size")?;
        let hidden_size = self.required_positive(obj, "hidden_size")?;
        let num_hidden_layers = self.required_positive(obj, "num_hidden_layers")?;
        let num_attention_heads = self.required_positive(obj, "num_attention_heads")?;
        let intermediate_size = self.required_positive(obj, "intermediate_size")?;
        let num_key_value_heads = self
            .optional_positive(obj, "num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads > num_attention_heads || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.invalid(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} key/value heads do not divide {num_attention_heads} \
                     attention heads"
                ),
            ));
        }
        let head_dim = match self.optional_positive(obj, "head_dim")? {
            Some(h) => h,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(self.invalid(
                        "num_attention_heads",
                        format!(
                            "hidden_size {hidden_size} is not a multiple of \
                             {num_attention_heads} heads and there is no `head_dim`"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };

        let rms_norm_eps = match self.optional_f64(obj, "rms_norm_eps")? {
            Some(e) if !(e.is_finite() && e > 0.0) => {
                return Err(self.invalid("rms_norm_eps", format!("{e} is not a positive number")));
            }
            Some(e) => e,
            None => DEFAULT_RMS_NORM_EPS,
        };
        let rope_theta = self.rope(obj)?;
        let tie_word_embeddings = self.optional_bool(obj, "tie_word_embeddings")?.unwrap_or(false);
        let max_position_embeddings = self
            .optional_positive(obj, "max_position_embeddings")?
            .unwrap_or(DEFAULT_MAX_POSITION_EMBEDDINGS);

        let bos_token_id = self.optional_token(obj, "bos_token_id")?;
        let pad_token_id = self.optional_token(obj, "pad_token_id")?;
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| self.token_value(v, "eos_token_id"))
                .collect::<Result<_, _>>()?,
            Some(v) => vec![self.token_value(v, "eos_token_id")?],
        };
        let torch_dtype = match obj.get("dtype").or_else(|| obj.get("torch_dtype")) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };

        Ok(LlamaConfig {
            model_type,
            architectures,
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings,
            max_position_embeddings,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            torch_dtype,
        })
    }

    /// A BERT config: the encoder's dimensions; what would change its math
    /// and is not implemented (another activation, relative positions) is an error.
    fn parse_bert(&self, obj: &Map<String, Value>) -> Result<BertConfig, ConfigError> {
        let architectures: Vec<String> = match obj.get("architectures") {
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        if let Some(other) = architectures
            .iter()
            .find(|a| !matches!(a.as_str(), "BertModel" | "BertForSequenceClassification"))
        {
            return Err(ConfigError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: other.clone(),
            });
        }
        match obj.get("hidden_act") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "gelu" => {}
            Some(Value::String(s)) => return Err(self.unsupported("hidden_act", format!("\"{s}\""))),
            Some(other) => return Err(self.wrong_type("hidden_act", "a string", other)),
        }
        match obj.get("position_embedding_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "absolute" => {}
            Some(Value::String(s)) => {
                return Err(self.unsupported("position_embedding_type", format!("\"{s}\"")));
            }
            Some(other) => return Err(self.wrong_type("position_embedding_type", "a string", other)),
        }
        let hidden_size = self.required_positive(obj, "hidden_size")?;
        let num_attention_heads = self.required_positive(obj, "num_attention_heads")?;
        if hidden_size % num_attention_heads != 0 {
            return Err(self.invalid(
                "num_attention_heads",
                format!("hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads"),
            ));
        }
        let layer_norm_eps = match self.optional_f64(obj, "layer_norm_eps")? {
            Some(e) if !(e.is_finite() && e > 0.0) => {
                return Err(self.invalid("layer_norm_eps", format!("{e} is not a positive number")));
            }
            Some(e) => e,
            None => 1e-12,
        };
        let num_labels = match self.optional_positive(obj, "num_labels")? {
            Some(n) => Some(n),
            None => match obj.get("id2label") {
                Some(Value::Object(m)) if !m.is_empty() => Some(m.len()),
                _ => None,
            },
        };
        Ok(BertConfig {
            architectures,
            vocab_size: self.required_positive(obj, "vocab_size")?,
            hidden_size,
            num_hidden_layers: self.required_positive(obj, "num_hidden_layers")?,
            num_attention_heads,
            intermediate_size: self.required_positive(obj, "intermediate_size")?,
            max_position_embeddings: self.optional_positive(obj, "max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: self.optional_positive(obj, "type_vocab_size")?.unwrap_or(2),
            layer_norm_eps,
            pad_token_id: self.optional_token(obj, "pad_token_id")?,
            num_labels,
        })
    }

    /// `model_type` must be `llama`; `architectures`, when given, must name a causal LM.
    fn architecture(&self, obj: &Map<String, Value>) -> Result<(String, Vec<String>), ConfigError> {
        let architectures: Vec<String> = match obj.get("architectures") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong_type("architectures", "a list of strings", other)),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(self.wrong_type("architectures", "a list of strings", other));
            }
        };
        let model_type = match obj.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(self.wrong_type("model_type", "a string", other)),
            None if architectures.iter().any(|a| a == "LlamaForCausalLM") => "llama".into(),
            None => {
                return Err(ConfigError::MissingKey {
                    path: self.path.clone(),
                    key: "model_type".into(),
                });
            }
        };
        if model_type != "llama" {
            return Err(ConfigError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: model_type,
            });
        }
        if let Some(other) = architectures.iter().find(|a| a.as_str() != "LlamaForCausalLM") {
            return Err(ConfigError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: other.clone(),
            });
        }
        Ok((model_type, architectures))
    }

    /// Features of the HF Llama block that the runtime does not implement.
    fn unsupported_features(&self, obj: &Map<String, Value>) -> Result<(), ConfigError> {
        match obj.get("hidden_act") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "silu" => {}
            Some(Value::String(s)) => {
                return Err(self.unsupported("hidden_act", format!("\"{s}\"")));
            }
            Some(other) => return Err(self.wrong_type("hidden_act", "a string", other)),
        }
        for key in ["attention_bias", "mlp_bias"] {
            if self.optional_bool(obj, key)? == Some(true) {
                return Err(self.unsupported(key, "true".into()));
            }
        }
        match obj.get("quantization_config") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let method = v.get("quant_method").and_then(Value::as_str).unwrap_or("(unknown)");
                return Err(self.unsupported("quantization_config", format!("\"{method}\"")));
            }
        }
        Ok(())
    }

    /// `rope_theta` from `rope_parameters` (transformers 5) or the top level (4.x);
    /// any scaling other than `default` is an error.
    fn rope(&self, obj: &Map<String, Value>) -> Result<f64, ConfigError> {
        for key in ["rope_scaling", "rope_parameters"] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    let kind = m.get("rope_type").or_else(|| m.get("type"));
                    match kind {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) if s == "default" => {}
                        Some(Value::String(s)) => {
                            return Err(ConfigError::UnsupportedRopeScaling {
                                path: self.path.clone(),
                                rope_type: s.clone(),
                            });
                        }
                        Some(other) => {
                            return Err(self.wrong_type(&format!("{key}.rope_type"), "a string", other));
                        }
                    }
                }
                Some(other) => return Err(self.wrong_type(key, "an object or null", other)),
            }
        }
        let nested = match obj.get("rope_parameters") {
            Some(Value::Object(m)) => self
                .optional_f64(m, "rope_theta")
                .map_err(|e| self.nest(e, "rope_parameters"))?,
            _ => None,
        };
        let top = self.optional_f64(obj, "rope_theta")?;
        let theta = match (nested, top) {
            (Some(a), Some(b)) if a != b => {
                return Err(self.invalid(
                    "rope_theta",
                    format!("`rope_parameters.rope_theta` is {a} but `rope_theta` is {b}"),
                ));
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => DEFAULT_ROPE_THETA,
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(self.invalid("rope_theta", format!("{theta} is not a positive number")));
        }
        Ok(theta)
    }

    fn required_positive(&self, obj: &Map<String, Value>, key: &str) -> Result<usize, ConfigError> {
        self.optional_positive(obj, key)?
            .ok_or_else(|| ConfigError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            })
    }

    fn optional_positive(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, ConfigError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.wrong_type(key, "a positive integer", v))?;
                if n == 0 {
                    return Err(self.invalid(key, "must be at least 1".into()));
                }
                // Larger than any real model; rejecting it keeps shape products from
                // overflowing and the tensor list of a hostile config small.
                let limit = if key == "num_hidden_layers" {
                    crate::limits::MAX_GROUP
                } else {
                    crate::limits::MAX_DIM
                };
                if n > limit {
                    return Err(self.invalid(key, format!("{n} is implausibly large")));
                }
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.invalid(key, format!("{n} is too large")))
            }
        }
    }

    fn optional_f64(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ConfigError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    fn optional_bool(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ConfigError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "`true` or `false`", v)),
        }
    }

    fn optional_token(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, ConfigError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.token_value(v, key).map(Some),
        }
    }

    fn token_value(&self, v: &Value, key: &str) -> Result<u32, ConfigError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, "a token id (a non-negative integer)", v))
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: describe(found),
        }
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.clone(),
            key: key.into(),
            reason,
        }
    }

    fn unsupported(&self, key: &str, value: String) -> ConfigError {
        ConfigError::UnsupportedFeature {
            path: self.path.clone(),
            key: key.into(),
            value,
        }
    }

    /// Prefixes the key of an error raised inside a nested object.
    fn nest(&self, e: ConfigError, outer: &str) -> ConfigError {
        match e {
            ConfigError::WrongType {
                path,
                key,
                expected,
                found,
            } => ConfigError::WrongType {
                path,
                key: format!("{outer}.{key}"),
                expected,
                found,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_config_maps_to_tiny() {
        let text = include_str!("../../../tests/golden/lamda_qv_r4_linear03/config.json");
        let c = family_args(&LlamaConfig::from_json_str(text, Path::new("config.json")).unwrap());
        assert_eq!(c.family, "llama");
        let get = |k: &str| c.args.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("hidden"), Some(Const::Int(64)));
        assert_eq!(get("kv_heads"), Some(Const::Int(2)));
        assert_eq!(get("ffn"), Some(Const::Int(172)));
        assert_eq!(get("rope_theta"), Some(Const::Float(10000.0)));
        assert_eq!(get("tie_embeddings"), Some(Const::Bool(false)));
    }

    #[test]
    fn errors_carry_the_codes_train_reports() {
        let p = Path::new("c");
        let e = LlamaConfig::from_json_str("{", p).unwrap_err();
        assert_eq!(e.code(), Code::CheckpointInvalidJson);
        let e = LlamaConfig::from_json_str(r#"{"model_type":"gpt2"}"#, p).unwrap_err();
        assert_eq!(e.code().as_str(), "lamda::checkpoint::unsupported_architecture");
        let e = LlamaConfig::from_json_str(r#"{"model_type":"llama","vocab_size":10}"#, p).unwrap_err();
        assert_eq!(e.code(), Code::CheckpointMissingKey);
        assert!(e.to_string().contains("hidden_size"), "{e}");
    }
}
