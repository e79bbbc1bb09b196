//! A Hugging Face `tokenizer.json` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Supported: `tokenizer.ggml.model = gpt2` (byte-level BPE) with the pre-tokenizer
//! `smollm` (each digit split off on its own, then the GPT-2 regex — llama.cpp's
//! regexes `\p{N}` then `'s|'t|...`, which `tokenizers` writes as `Digits` with
//! `individual_digits` followed by `ByteLevel`) or `gpt-2` (the GPT-2 regex alone).
//! The vocabulary is the token list (id = position), merges are the `"a b"` strings
//! split at their one space, and tokens of type CONTROL / UNKNOWN become special
//! added tokens (USER_DEFINED ones non-special added tokens) so they are matched
//! whole in text. BOS / EOS are added by a template only when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say so; otherwise the
//! post-processor is `ByteLevel`, as in the Hugging Face originals.
//!
//! Not handled: SentencePiece vocabularies (`llama`), other pre-tokenizer regexes;
//! both are reported as [`GgufError::Unsupported`] so a caller can skip the file.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::error::GgufError;
use super::reader::{GgufFile, MetaValue};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The pre-tokenizers this module can express, by `tokenizer.ggml.pre` name.
pub const SUPPORTED_PRE: [&str; 2] = ["smollm", "gpt-2"];

/// Builds the `tokenizer.json` value for the tokenizer described in `gguf`'s metadata.
pub fn tokenizer_json(gguf: &GgufFile) -> Result<Value, GgufError> {
    let path = gguf.path();
    let unsupported = |what: String| GgufError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let model = meta_str(gguf, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(unsupported(format!(
            "the tokenizer model `{model}` (only `gpt2` byte-level BPE is converted)"
        )));
    }
    let pre = match gguf.get("tokenizer.ggml.pre") {
        None => "gpt-2",
        Some(_) => meta_str(gguf, "tokenizer.ggml.pre")?,
    };
    let pre_tokenizer = match pre {
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(false, true),
            ],
        }),
        "gpt-2" => byte_level(false, true),
        other => {
            return Err(unsupported(format!(
                "the pre-tokenizer `{other}` (converted: {})",
                SUPPORTED_PRE.join(", ")
            )));
        }
    };

    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
        None => vec![TOKEN_NORMAL; n],
        Some(v) => {
            let ints: Option<Vec<i64>> = v
                .as_array()
                .and_then(|items| items.iter().map(MetaValue::as_i64).collect());
            match ints {
                Some(t) if t.len() == n => t,
                _ => {
                    return Err(bad(
                        gguf,
                        "tokenizer.ggml.token_type",
                        format!("an array of {n} integers"),
                        v,
                    ));
                }
            }
        }
    };
    let mut vocab = Map::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (id, tok) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(tok, id) {
            return Err(unsupported(format!(
                "a vocabulary with token {tok:?} at both id {first} and id {id}"
            )));
        }
        vocab.insert((*tok).to_owned(), json!(id));
    }
    let merges = string_array(gguf, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                key: "tokenizer.ggml.merges".into(),
                expected: "merges of the form \"left right\"".into(),
                found: format!("{m:?} at position {i}"),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let added_tokens: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| matches!(**t, TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_USER_DEFINED))
        .map(|(id, (tok, &t))| {
            let special = t != TOKEN_USER_DEFINED;
            json!({
                "id": id,
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": !special,
                "special": special,
            })
        })
        .collect();

    let special_id = |key: &str| -> Result<Option<(usize, &str)>, GgufError> {
        let Some(v) = gguf.get(key) else {
            return Ok(None);
        };
        let id = v.as_u64().and_then(|i| usize::try_from(i).ok());
        match id.and_then(|i| tokens.get(i).map(|t| (i, *t))) {
            Some(pair) => Ok(Some(pair)),
            None => Err(bad(gguf, key, format!("a token id below {n}"), v)),
        }
    };
    let bos = special_id("tokenizer.ggml.bos_token_id")?;
    let eos = special_id("tokenizer.ggml.eos_token_id")?;
    let flag = |key: &str| gguf.get(key).and_then(MetaValue::as_bool).unwrap_or(false);
    let add_bos = flag("tokenizer.ggml.add_bos_token").then_some(bos).flatten();
    let add_eos = flag("tokenizer.ggml.add_eos_token").then_some(eos).flatten();
    let post_processor = if add_bos.is_none() && add_eos.is_none() {
        byte_level(true, false)
    } else {
        template(add_bos, add_eos)
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// A Hugging Face `tokenizer_config.json` for the GGUF's tokenizer: its chat
/// template (`tokenizer.chat_template`, verbatim) and the names of its BOS and
/// EOS tokens, so that `transformers`' `apply_chat_template` and `lamdac
/// generate --chat` render the conversation format the model was tuned on.
/// `None` when the GGUF has no chat template (a base model): there is nothing a
/// config file would add then.
pub fn tokenizer_config_json(gguf: &GgufFile) -> Result<Option<Value>, GgufError> {
    let Some(template) = gguf.get("tokenizer.chat_template") else {
        return Ok(None);
    };
    let template = template
        .as_str()
        .ok_or_else(|| bad(gguf, "tokenizer.chat_template", "a string".into(), template))?;
    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let name = |key: &str| -> Value {
        gguf.get(key)
            .and_then(MetaValue::as_u64)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| tokens.get(i))
            .map_or(Value::Null, |t| Value::String((*t).to_string()))
    };
    let flag = |key: &str| gguf.get(key).and_then(MetaValue::as_bool).unwrap_or(false);
    Ok(Some(json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template,
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "add_bos_token": flag("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag("tokenizer.ggml.add_eos_token"),
        "clean_up_tokenization_spaces": false,
    })))
}

/// A `ByteLevel` component (pre-tokenizer, post-processor or decoder) with the GPT-2 regex.
fn byte_level(add_prefix_space: bool, trim_offsets: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": true,
    })
}

/// A `TemplateProcessing` post-processor adding BOS before and / or EOS after.
fn template(bos: Option<(usize, &str)>, eos: Option<(usize, &str)>) -> Value {
    let special = |t: &str| json!({ "SpecialToken": { "id": t, "type_id": 0 } });
    let seq = |s: &str, type_id: u32| json!({ "Sequence": { "id": s, "type_id": type_id } });
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    if let Some((id, t)) = bos {
        single.push(special(t));
        pair.push(special(t));
        specials.insert(t.into(), json!({ "id": t, "ids": [id], "tokens": [t] }));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some((id, t)) = eos {
        single.push(special(t));
        pair.push(special(t));
        specials.insert(t.into(), json!({ "id": t, "ids": [id], "tokens": [t] }));
    }
    if let Some((_, t)) = bos {
        pair.push(json!({ "SpecialToken": { "id": t, "type_id": 1 } }));
    }
    pair.push(seq("B", 1));
    if let Some((_, t)) = eos {
        pair.push(json!({ "SpecialToken": { "id": t, "type_id": 1 } }));
    }
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    })
}

fn meta_str<'a>(gguf: &'a GgufFile, key: &str) -> Result<&'a str, GgufError> {
    match gguf.get(key) {
        None => Err(GgufError::MissingMetadata {
            path: gguf.path().to_path_buf(),
            key: key.into(),
        }),
        Some(v) => v.as_str().ok_or_else(|| bad(gguf, key, "a string".into(), v)),
    }
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, GgufError> {
    let v = gguf.get(key).ok_or_else(|| GgufError::MissingMetadata {
        path: gguf.path().to_path_buf(),
        key: key.into(),
    })?;
    v.as_array()
        .and_then(|items| items.iter().map(MetaValue::as_str).collect())
        .ok_or_else(|| bad(gguf, key, "an array of strings".into(), v))
}

fn bad(gguf: &GgufFile, key: &str, expected: String, found: &MetaValue) -> GgufError {
    GgufError::BadMetadata {
        path: gguf.path().to_path_buf(),
        key: key.into(),
        expected,
        found: found.describe(),
    }
}
