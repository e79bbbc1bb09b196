//! Text → token ids: raw bytes when the model has no tokenizer.json, the Hugging
//! Face `tokenizers` library when it has one.
//!
//! Byte-level ids are the UTF-8 bytes themselves (0..=255, no BOS/EOS), so a
//! byte-level model needs a vocabulary of at least 256. With a tokenizer.json,
//! special tokens come from the tokenizer's own post-processor (Llama's adds BOS)
//! when asked for, and EOS / pad ids from config.json where the tokenizer has none.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::DataError;
use crate::checkpoint::{Checkpoint, ModelConfig};

/// Vocabulary size of byte-level tokenization.
pub const BYTE_VOCAB: usize = 256;

/// How text becomes token ids.
pub enum Tokenizer {
    /// Every byte is a token: ids 0..=255, no special tokens, pad id 0.
    Bytes,
    /// A Hugging Face tokenizer.json.
    Hf(Box<HfTokenizer>),
}

/// A loaded tokenizer.json with the special ids training needs.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pad_id: u32,
    /// Whether tokenizer.json named the pad id (config.json's then does not override it).
    padding_set: bool,
    eos_id: Option<u32>,
    /// A copy of `inner` that truncates longest-first at the length it is
    /// keyed by, made once per length: [`Tokenizer::encode_sequence`] would
    /// otherwise copy the whole vocabulary for every example.
    truncating: std::sync::Mutex<Option<(usize, tokenizers::Tokenizer)>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes => f.write_str("Tokenizer::Bytes"),
            Self::Hf(t) => f
                .debug_struct("Tokenizer::Hf")
                .field("path", &t.path)
                .field("vocab_size", &t.inner.get_vocab_size(true))
                .field("pad_id", &t.pad_id)
                .field("eos_id", &t.eos_id)
                .finish(),
        }
    }
}

impl Tokenizer {
    /// Byte-level tokenization.
    pub fn bytes() -> Self {
        Self::Bytes
    }

    /// Loads a tokenizer.json. The pad id is the tokenizer's padding id if it has
    /// one, else 0; there is no EOS id until [`Tokenizer::with_config`] gives one.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let pad_id = inner.get_padding().map_or(0, |p| p.pad_id);
        let padding_set = inner.get_padding().is_some();
        // lamdac pads and truncates itself: a tokenizer.json that pads or
        // truncates every encoding (BERT's often do, to 128) must not.
        let mut inner = inner;
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        Ok(Self::Hf(Box::new(HfTokenizer {
            inner,
            path: path.to_path_buf(),
            pad_id,
            padding_set,
            eos_id: None,
            truncating: std::sync::Mutex::new(None),
        })))
    }

    /// The tokenizer of a checkpoint: its tokenizer.json if the folder has one,
    /// bytes otherwise; special ids completed from its config.
    pub fn for_checkpoint(ckpt: &Checkpoint) -> Result<Self, DataError> {
        match ckpt.tokenizer_path() {
            Some(p) => Ok(Self::from_file(&p)?.with_config(&ckpt.config)),
            None => Ok(Self::Bytes),
        }
    }

    /// Takes EOS (the first `eos_token_id`) and, where the tokenizer sets no padding,
    /// the pad id (`pad_token_id`) from a model config. No effect on byte level.
    pub fn with_config(self, config: &ModelConfig) -> Self {
        match self {
            Self::Bytes => Self::Bytes,
            Self::Hf(mut t) => {
                t.eos_id = config.eos_token_ids().first().copied().or(t.eos_id);
                if let (false, Some(p)) = (t.padding_set, config.pad_token_id()) {
                    t.pad_id = p;
                }
                Self::Hf(t)
            }
        }
    }

    /// Whether ids are raw bytes.
    pub fn is_byte_level(&self) -> bool {
        matches!(self, Self::Bytes)
    }

    /// Number of ids the tokenizer can produce (256 for bytes; with added tokens for HF).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => BYTE_VOCAB,
            Self::Hf(t) => t.inner.get_vocab_size(true),
        }
    }

    /// The id padding positions get (their labels are -100 regardless).
    pub fn pad_id(&self) -> u32 {
        match self {
            Self::Bytes => 0,
            Self::Hf(t) => t.pad_id,
        }
    }

    /// The id appended after each JSONL example, if any.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Self::Bytes => None,
            Self::Hf(t) => t.eos_id,
        }
    }

    /// The tokenizer.json path, for an HF tokenizer.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Bytes => None,
            Self::Hf(t) => Some(&t.path),
        }
    }

    /// Decodes ids back to text. `skip_special` leaves out special tokens
    /// (BOS, EOS, chat markers). Byte level: the bytes as UTF-8, an incomplete
    /// or invalid sequence as U+FFFD (as the byte-level BPE decoder does), so a
    /// caller streaming text can hold back a trailing U+FFFD until the
    /// character's last byte arrives. The error is the tokenizers library's message.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        match self {
            Self::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| u8::try_from(i).unwrap_or(b'?')).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Self::Hf(t) => t.inner.decode(ids, skip_special).map_err(|e| e.to_string()),
        }
    }

    /// The id of a token given by its text (`<|im_end|>`), if the vocabulary
    /// has it (added tokens included). None at byte level.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Bytes => None,
            Self::Hf(t) => t.inner.token_to_id(token),
        }
    }

    /// Encodes a sequence to classify, a text or a pair, as the model's
    /// tokenizer.json does with its special tokens (`[CLS] a [SEP] b [SEP]`
    /// for BERT) truncated to `max_len` tokens longest-first (as transformers'
    /// `truncation=True`): (ids, token type ids). At byte level: the bytes of
    /// `a` (and then `b`) cut at `max_len`, all of type 0 (1 for `b`).
    pub fn encode_sequence(&self, a: &str, b: Option<&str>, max_len: usize) -> Result<(Vec<u32>, Vec<u32>), String> {
        match self {
            Self::Bytes => {
                let mut ids: Vec<u32> = a.bytes().map(u32::from).collect();
                let mut types = vec![0; ids.len()];
                if let Some(b) = b {
                    ids.extend(b.bytes().map(u32::from));
                    types.resize(ids.len(), 1);
                }
                ids.truncate(max_len);
                types.truncate(max_len);
                Ok((ids, types))
            }
            Self::Hf(t) => {
                let mut cached = t.truncating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if cached.as_ref().is_none_or(|(len, _)| *len != max_len) {
                    let mut tk = t.inner.clone();
                    tk.with_truncation(Some(tokenizers::TruncationParams {
                        max_length: max_len,
                        strategy: tokenizers::TruncationStrategy::LongestFirst,
                        ..Default::default()
                    }))
                    .map_err(|e| e.to_string())?;
                    *cached = Some((max_len, tk));
                }
                let Some((_, tk)) = cached.as_ref() else {
                    return Err("no tokenizer".into());
                };
                let input = match b {
                    Some(b) => tokenizers::EncodeInput::Dual(a.into(), b.into()),
                    None => tokenizers::EncodeInput::Single(a.into()),
                };
                let e = tk.encode(input, true).map_err(|e| e.to_string())?;
                Ok((e.get_ids().to_vec(), e.get_type_ids().to_vec()))
            }
        }
    }

    /// Encodes text. `special` adds the tokenizer's special tokens (e.g. BOS); ignored
    /// at byte level. The error is the tokenizers library's message.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf(t) => t
                .inner
                .encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    }
}
