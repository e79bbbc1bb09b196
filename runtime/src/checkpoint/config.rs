//! `config.json` of a Hugging Face Llama checkpoint, parsed into a typed [`LlamaConfig`].
//!
//! Defaults follow `transformers`' `LlamaConfig` where config.json may omit a key
//! (`num_key_value_heads` = heads, `head_dim` = hidden / heads, `rms_norm_eps`
//! 1e-6, `rope_theta` 10000, `tie_word_embeddings` false, `max_position_embeddings`
//! 2048); the model dimensions themselves are required. Anything that would change
//! the block's math and is not implemented (RoPE scaling, biases, another
//! activation, quantization) is an error rather than being silently ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::CheckpointError;

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
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CheckpointError::ConfigMissing {
                    path: path.to_path_buf(),
                }
            } else {
                CheckpointError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, CheckpointError> {
        let value: Value = serde_json::from_str(text).map_err(|e| CheckpointError::InvalidJson {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e),
        })?;
        let Value::Object(obj) = &value else {
            return Err(CheckpointError::WrongType {
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
pub(crate) fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// A JSON value in words, for "found ..." in messages.
pub(crate) fn describe(v: &Value) -> String {
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
    fn parse(&self, obj: &Map<String, Value>) -> Result<LlamaConfig, CheckpointError> {
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

    /// `model_type` must be `llama`; `architectures`, when given, must name a causal LM.
    fn architecture(&self, obj: &Map<String, Value>) -> Result<(String, Vec<String>), CheckpointError> {
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
                return Err(CheckpointError::MissingKey {
                    path: self.path.clone(),
                    key: "model_type".into(),
                });
            }
        };
        if model_type != "llama" {
            return Err(CheckpointError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: model_type,
            });
        }
        if let Some(other) = architectures.iter().find(|a| a.as_str() != "LlamaForCausalLM") {
            return Err(CheckpointError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: other.clone(),
            });
        }
        Ok((model_type, architectures))
    }

    /// Features of the HF Llama block that the runtime does not implement.
    fn unsupported_features(&self, obj: &Map<String, Value>) -> Result<(), CheckpointError> {
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
    fn rope(&self, obj: &Map<String, Value>) -> Result<f64, CheckpointError> {
        for key in ["rope_scaling", "rope_parameters"] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    let kind = m.get("rope_type").or_else(|| m.get("type"));
                    match kind {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) if s == "default" => {}
                        Some(Value::String(s)) => {
                            return Err(CheckpointError::UnsupportedRopeScaling {
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

    fn required_positive(&self, obj: &Map<String, Value>, key: &str) -> Result<usize, CheckpointError> {
        self.optional_positive(obj, key)?
            .ok_or_else(|| CheckpointError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            })
    }

    fn optional_positive(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, CheckpointError> {
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
                let limit = if key == "num_hidden_layers" { 1 << 16 } else { 1 << 24 };
                if n > limit {
                    return Err(self.invalid(key, format!("{n} is implausibly large")));
                }
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.invalid(key, format!("{n} is too large")))
            }
        }
    }

    fn optional_f64(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, CheckpointError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    fn optional_bool(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CheckpointError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "`true` or `false`", v)),
        }
    }

    fn optional_token(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, CheckpointError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.token_value(v, key).map(Some),
        }
    }

    fn token_value(&self, v: &Value, key: &str) -> Result<u32, CheckpointError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, "a token id (a non-negative integer)", v))
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> CheckpointError {
        CheckpointError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: describe(found),
        }
    }

    fn invalid(&self, key: &str, reason: String) -> CheckpointError {
        CheckpointError::InvalidValue {
            path: self.path.clone(),
            key: key.into(),
            reason,
        }
    }

    fn unsupported(&self, key: &str, value: String) -> CheckpointError {
        CheckpointError::UnsupportedFeature {
            path: self.path.clone(),
            key: key.into(),
            value,
        }
    }

    /// Prefixes the key of an error raised inside a nested object.
    fn nest(&self, e: CheckpointError, outer: &str) -> CheckpointError {
        match e {
            CheckpointError::WrongType {
                path,
                key,
                expected,
                found,
            } => CheckpointError::WrongType {
                path,
                key: format!("{outer}.{key}"),
                expected,
                found,
            },
            other => other,
        }
    }
}
