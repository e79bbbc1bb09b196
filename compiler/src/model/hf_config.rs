//! Hugging Face config.json to family arguments (the llama family's parameters).
//!
//! `use "folder" as m` reads `folder/config.json` and no weights. Only
//! Llama-architecture configs map to a stdlib family today; anything else is
//! a clear `lamda::checkpoint::unsupported` error rather than a guess.

use std::path::Path;

use serde_json::Value as Json;

use crate::consteval::Const;

/// Why a checkpoint's config cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// No config.json, or it cannot be read (the io error as text).
    Missing { path: String, reason: String },
    /// Not JSON, or a key has the wrong type / is missing.
    Invalid { path: String, reason: String },
    /// A valid config of an architecture lamdac has no family for.
    Unsupported { path: String, what: String },
}

impl ConfigError {
    pub fn message(&self) -> String {
        match self {
            ConfigError::Missing { path, reason } => format!("cannot read `{path}`: {reason}"),
            ConfigError::Invalid { path, reason } => format!("`{path}` is not a usable model config: {reason}"),
            ConfigError::Unsupported { path, what } => format!("`{path}`: {what}"),
        }
    }
}

/// The family a config maps to, and its arguments in family parameter names.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyConfig {
    pub family: &'static str,
    pub args: Vec<(&'static str, Const)>,
}

/// Reads `<dir>/config.json`.
pub fn read_config(dir: &Path) -> Result<FamilyConfig, ConfigError> {
    let path = dir.join("config.json");
    let shown = path.display().to_string();
    if !dir.is_dir() {
        return Err(ConfigError::Missing {
            path: dir.display().to_string(),
            reason: "no such folder".into(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Missing {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse_config(&text, &shown)
}

/// Parses the text of a config.json (`shown` names it in errors).
pub fn parse_config(text: &str, shown: &str) -> Result<FamilyConfig, ConfigError> {
    let json: Json = serde_json::from_str(text).map_err(|e| ConfigError::Invalid {
        path: shown.to_string(),
        reason: format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column()),
    })?;
    let obj = json.as_object().ok_or_else(|| ConfigError::Invalid {
        path: shown.to_string(),
        reason: "not a JSON object".into(),
    })?;
    let model_type = obj.get("model_type").and_then(Json::as_str).unwrap_or("");
    let archs: Vec<&str> = obj
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let is_llama = model_type == "llama" || archs.contains(&"LlamaForCausalLM");
    if !is_llama {
        let what = if model_type.is_empty() && archs.is_empty() {
            "the config names no `model_type` or `architectures`".to_string()
        } else {
            format!(
                "architecture `{}` is not supported (lamdac has the llama family: model_type \"llama\", LlamaForCausalLM)",
                if archs.is_empty() {
                    model_type.to_string()
                } else {
                    archs.join(", ")
                }
            )
        };
        return Err(ConfigError::Unsupported {
            path: shown.to_string(),
            what,
        });
    }
    let invalid = |reason: String| ConfigError::Invalid {
        path: shown.to_string(),
        reason,
    };
    let int = |key: &str| -> Result<Option<i64>, ConfigError> {
        match obj.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(i) if i > 0 => Ok(Some(i)),
                _ => Err(invalid(format!("`{key}` must be a positive integer, found {v}"))),
            },
        }
    };
    let req =
        |key: &str| -> Result<i64, ConfigError> { int(key)?.ok_or_else(|| invalid(format!("`{key}` is missing"))) };
    let float = |v: Option<&Json>, key: &str| -> Result<Option<f64>, ConfigError> {
        match v {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(format!("`{key}` must be a number, found {v}"))),
        }
    };
    for unsupported in ["attention_bias", "mlp_bias"] {
        if obj.get(unsupported).and_then(Json::as_bool) == Some(true) {
            return Err(ConfigError::Unsupported {
                path: shown.to_string(),
                what: format!("`{unsupported}: true` is not supported (the llama family has no biases)"),
            });
        }
    }
    if let Some(scaling) = obj.get("rope_scaling")
        && !scaling.is_null()
    {
        return Err(ConfigError::Unsupported {
            path: shown.to_string(),
            what: format!("`rope_scaling` ({scaling}) is not supported: lamdac implements the default RoPE"),
        });
    }
    if let Some(act) = obj.get("hidden_act").and_then(Json::as_str)
        && act != "silu"
    {
        return Err(ConfigError::Unsupported {
            path: shown.to_string(),
            what: format!("`hidden_act: {act}` is not supported (the llama family uses silu)"),
        });
    }
    let mut args: Vec<(&'static str, Const)> = vec![
        ("vocab", Const::Int(req("vocab_size")?)),
        ("hidden", Const::Int(req("hidden_size")?)),
        ("n_layers", Const::Int(req("num_hidden_layers")?)),
        ("heads", Const::Int(req("num_attention_heads")?)),
        ("ffn", Const::Int(req("intermediate_size")?)),
    ];
    if let Some(kv) = int("num_key_value_heads")? {
        args.push(("kv_heads", Const::Int(kv)));
    }
    if let Some(hd) = int("head_dim")? {
        args.push(("head_dim", Const::Int(hd)));
    }
    // transformers' LlamaConfig defaults rms_norm_eps to 1e-6 when the key is absent.
    let eps = float(obj.get("rms_norm_eps"), "rms_norm_eps")?.unwrap_or(1e-6);
    args.push(("eps", Const::Float(eps)));
    let theta = match float(obj.get("rope_theta"), "rope_theta")? {
        Some(t) => Some(t),
        None => float(
            obj.get("rope_parameters").and_then(|p| p.get("rope_theta")),
            "rope_parameters.rope_theta",
        )?,
    };
    if let Some(t) = theta {
        args.push(("rope_theta", Const::Float(t)));
    }
    match obj.get("tie_word_embeddings") {
        None | Some(Json::Null) => {}
        Some(Json::Bool(b)) => args.push(("tie_embeddings", Const::Bool(*b))),
        Some(v) => {
            return Err(invalid(format!(
                "`tie_word_embeddings` must be true or false, found {v}"
            )));
        }
    }
    Ok(FamilyConfig { family: "llama", args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_config_maps_to_tiny() {
        let text = include_str!("../../../tests/golden/lamda_qv_r4_linear03/config.json");
        let c = parse_config(text, "config.json").unwrap();
        assert_eq!(c.family, "llama");
        let get = |k: &str| c.args.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("hidden"), Some(Const::Int(64)));
        assert_eq!(get("kv_heads"), Some(Const::Int(2)));
        assert_eq!(get("ffn"), Some(Const::Int(172)));
        assert_eq!(get("rope_theta"), Some(Const::Float(10000.0)));
        assert_eq!(get("tie_embeddings"), Some(Const::Bool(false)));
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(parse_config("{", "c"), Err(ConfigError::Invalid { .. })));
        assert!(matches!(
            parse_config(r#"{"model_type":"gpt2"}"#, "c"),
            Err(ConfigError::Unsupported { .. })
        ));
        let e = parse_config(r#"{"model_type":"llama","vocab_size":10}"#, "c").unwrap_err();
        assert!(e.message().contains("hidden_size"), "{}", e.message());
        let e = parse_config(r#"{"model_type":"llama","vocab_size":"x"}"#, "c").unwrap_err();
        assert!(e.message().contains("positive integer"), "{}", e.message());
    }
}
