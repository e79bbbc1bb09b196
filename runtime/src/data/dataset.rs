//! Training data files, tokenized: plain text, JSONL examples, or token-id safetensors.
//!
//! - Plain text (any extension but the two below) becomes one token stream, cut
//!   into `seq`-long windows by the batcher. With a tokenizer.json the whole file
//!   is encoded at once with special tokens (one BOS at the very start for Llama).
//! - `.jsonl`: one JSON object per line, `{"text": ...}`, `{"prompt": ...,
//!   "completion": ...}` or `{"messages": [{"role", "content"}, ...]}` (see
//!   [`chat_example`]). Each line is one example; `text` and the prompt are
//!   encoded with special tokens, the completion without (prompt and completion
//!   are encoded separately, so the mask boundary is exact), then EOS when the
//!   tokenizer knows one (from config.json; never at byte level). Labels are -100
//!   on prompt tokens, so the loss covers the completion (and EOS) only. Blank
//!   lines are skipped; other keys are ignored.
//! - `.safetensors`: `input_ids` and optional `labels`, integer `[rows, seq]`,
//!   used exactly as stored (labels default to the ids).
//!
//! Labels are not shifted here: following SEMANTICS §7 the loss compares
//! `logits[:, i]` with `labels[:, i + 1]`, so a label at position j is "predict
//! token j from positions before it".

use std::path::{Path, PathBuf};

use lamda_compiler::diag::Code;

use ndarray::Array2;
use serde_json::Value;

use super::error::DataError;
use super::tokenizer::Tokenizer;
use crate::checkpoint::SafetensorsFile;
use crate::generate::chat::{ChatTemplate, Message};

/// The label of a position that takes no part in the loss.
pub const IGNORE_INDEX: i64 = -100;

/// One JSONL example: token ids, of which the first `loss_from` (and those
/// in the `no_loss` ranges) carry no loss.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    /// Token ids (prompt, then completion).
    pub ids: Vec<u32>,
    /// Labels are -100 before this position (the prompt's length; 0 for `text`).
    pub loss_from: usize,
    /// Further positions without loss after `loss_from`, as `[start, end)`
    /// ranges in order: the user turns between a chat's assistant turns.
    /// Empty for `text` and `prompt` / `completion`.
    pub no_loss: Vec<(usize, usize)>,
}

impl Example {
    /// Whether position `i` carries loss.
    pub fn counts(&self, i: usize) -> bool {
        i >= self.loss_from && !self.no_loss.iter().any(|&(a, b)| (a..b).contains(&i))
    }
}

/// The tokens of a data file, in one of three layouts.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// One token stream (plain text), to be cut into windows.
    Stream(Vec<u32>),
    /// Separate examples (JSONL), each truncated or padded to `seq`.
    Examples {
        /// The examples, in file order.
        examples: Vec<Example>,
        /// The id written at padding positions.
        pad_id: u32,
    },
    /// Sequences to classify (TSV, CSV or JSONL with labels), padded to `seq`.
    Classes {
        /// The examples, in file order.
        examples: Vec<super::classes::ClassExample>,
        /// The id written at padding positions.
        pad_id: u32,
    },
    /// Fixed rows (token-id safetensors), used as they are.
    Rows {
        /// Token ids. // (rows, seq)
        input_ids: Array2<i64>,
        /// Labels, -100 where there is no loss. // (rows, seq)
        labels: Array2<i64>,
    },
}

/// A tokenized data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    path: PathBuf,
    byte_level: bool,
    /// The tokens.
    pub source: Source,
}

impl Dataset {
    /// Loads a data file, choosing the format by extension: `.jsonl` → JSONL,
    /// `.safetensors` → token ids, anything else → plain text.
    pub fn load(path: &Path, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        Self::load_with_chat(path, tokenizer, None)
    }

    /// [`Dataset::load`], with the model's chat template for JSONL `messages` lines.
    pub fn load_with_chat(path: &Path, tokenizer: &Tokenizer, chat: Option<&ChatTemplate>) -> Result<Self, DataError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Self::jsonl_with_chat(path, tokenizer, chat),
            Some("safetensors") => Self::token_ids(path),
            _ => Self::text(path, tokenizer),
        }
    }

    /// [`Dataset::load_with_chat`], split into the part that trains and the
    /// part held out at share `fraction` (see [`super::split`]).
    pub fn load_split(
        path: &Path,
        tokenizer: &Tokenizer,
        chat: Option<&ChatTemplate>,
        fraction: f64,
    ) -> Result<(Self, Self), DataError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "safetensors") => Self::load_with_chat(path, tokenizer, chat)?.split_items(fraction),
            _ => {
                let bytes = read(path)?;
                let cut = super::split::text_cut(&bytes, fraction, path)?;
                Ok((
                    Self::text_bytes(path, &bytes[..cut], tokenizer)?,
                    Self::text_bytes(path, &bytes[cut..], tokenizer)?,
                ))
            }
        }
    }

    /// Loads the examples of a classification head (`labels` classes), each
    /// truncated to `seq` tokens; split at share `fraction` when given:
    /// (train, held out).
    pub fn classes(
        path: &Path,
        tokenizer: &Tokenizer,
        seq: usize,
        labels: usize,
        fraction: Option<f64>,
    ) -> Result<(Self, Option<Self>), DataError> {
        let examples = super::classes::load(path, tokenizer, seq, labels)?;
        let data = Self {
            path: path.to_path_buf(),
            byte_level: tokenizer.is_byte_level(),
            source: Source::Classes {
                examples,
                pad_id: tokenizer.pad_id(),
            },
        };
        match fraction {
            None => Ok((data, None)),
            Some(f) => data.split_items(f).map(|(t, v)| (t, Some(v))),
        }
    }

    /// Sequences to classify given as token ids, not read from a file (tests
    /// and tools that hold ids already); `path` names them in errors.
    pub fn from_classes(path: &Path, examples: Vec<super::classes::ClassExample>, pad_id: u32) -> Self {
        Self {
            path: path.to_path_buf(),
            byte_level: false,
            source: Source::Classes { examples, pad_id },
        }
    }

    /// Examples or rows split by [`super::split::held_out`]: (train, held out).
    fn split_items(self, fraction: f64) -> Result<(Self, Self), DataError> {
        let part = |source| Self {
            path: self.path.clone(),
            byte_level: self.byte_level,
            source,
        };
        match &self.source {
            Source::Examples { examples, pad_id } => {
                let held = super::split::held_out(examples.len(), fraction, &self.path)?;
                let (mut train, mut val) = (Vec::new(), Vec::new());
                for (e, h) in examples.iter().zip(held) {
                    if h { &mut val } else { &mut train }.push(e.clone());
                }
                let pad_id = *pad_id;
                Ok((
                    part(Source::Examples {
                        examples: train,
                        pad_id,
                    }),
                    part(Source::Examples { examples: val, pad_id }),
                ))
            }
            Source::Classes { examples, pad_id } => {
                let held = super::split::held_out(examples.len(), fraction, &self.path)?;
                let (mut train, mut val) = (Vec::new(), Vec::new());
                for (e, h) in examples.iter().zip(held) {
                    if h { &mut val } else { &mut train }.push(e.clone());
                }
                let pad_id = *pad_id;
                Ok((
                    part(Source::Classes {
                        examples: train,
                        pad_id,
                    }),
                    part(Source::Classes { examples: val, pad_id }),
                ))
            }
            Source::Rows { input_ids, labels } => {
                let held = super::split::held_out(input_ids.nrows(), fraction, &self.path)?;
                let pick = |want: bool| -> Vec<usize> { (0..held.len()).filter(|&i| held[i] == want).collect() };
                let rows = |ix: &[usize]| Source::Rows {
                    input_ids: input_ids.select(ndarray::Axis(0), ix),
                    labels: labels.select(ndarray::Axis(0), ix),
                };
                Ok((part(rows(&pick(false))), part(rows(&pick(true)))))
            }
            Source::Stream(_) => Err(DataError::Split {
                path: self.path.clone(),
                problem: "a token stream is split as text, before tokenizing".into(),
            }),
        }
    }

    /// Loads a plain-text file as one token stream.
    pub fn text(path: &Path, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        Self::text_bytes(path, &read(path)?, tokenizer)
    }

    /// The text `bytes` (of the file `path`) as one token stream.
    fn text_bytes(path: &Path, bytes: &[u8], tokenizer: &Tokenizer) -> Result<Self, DataError> {
        let tokens: Vec<u32> = match tokenizer {
            Tokenizer::Bytes => bytes.iter().map(|&b| u32::from(b)).collect(),
            Tokenizer::Hf(_) => {
                let text = utf8(path, bytes)?;
                tokenizer.encode(text, true).map_err(|message| DataError::Encode {
                    path: path.to_path_buf(),
                    line: 1,
                    message,
                })?
            }
        };
        if tokens.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            byte_level: tokenizer.is_byte_level(),
            source: Source::Stream(tokens),
        })
    }

    /// Loads a JSONL file of `text` or `prompt` + `completion` examples.
    pub fn jsonl(path: &Path, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        Self::jsonl_with_chat(path, tokenizer, None)
    }

    /// [`Dataset::jsonl`], with the model's chat template for `messages` lines.
    pub fn jsonl_with_chat(path: &Path, tokenizer: &Tokenizer, chat: Option<&ChatTemplate>) -> Result<Self, DataError> {
        let bytes = read(path)?;
        // A UTF-8 byte order mark (editors on Windows write one) is not JSON.
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
        let mut examples = Vec::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(raw).map_err(|e| DataError::JsonlSyntax {
                path: path.to_path_buf(),
                line,
                column: e.column(),
                message: crate::checkpoint::config::strip_position(&e),
            })?;
            examples.push(example(path, line, &value, tokenizer, chat)?);
        }
        if examples.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            byte_level: tokenizer.is_byte_level(),
            source: Source::Examples {
                examples,
                pad_id: tokenizer.pad_id(),
            },
        })
    }

    /// Loads a safetensors file of token ids: `input_ids` and optional `labels`,
    /// integer tensors of shape `[rows, seq]`.
    pub fn token_ids(path: &Path) -> Result<Self, DataError> {
        let file = SafetensorsFile::open(path)?;
        let layout = |problem: String| DataError::IdsLayout {
            path: path.to_path_buf(),
            problem,
        };
        let matrix = |name: &str| -> Result<Array2<i64>, DataError> {
            let a = file.i64(name)?;
            let shape = a.shape().to_vec();
            a.into_dimensionality()
                .map_err(|_| layout(format!("`{name}` has shape {shape:?}, expected [rows, seq]")))
        };
        if !file.contains("input_ids") {
            return Err(layout(format!(
                "there is no `input_ids` tensor (tensors: {})",
                file.names().collect::<Vec<_>>().join(", ")
            )));
        }
        let input_ids = matrix("input_ids")?;
        let labels = if file.contains("labels") {
            let labels = matrix("labels")?;
            if labels.dim() != input_ids.dim() {
                return Err(layout(format!(
                    "`labels` has shape {:?} but `input_ids` has {:?}",
                    labels.shape(),
                    input_ids.shape()
                )));
            }
            labels
        } else {
            input_ids.clone()
        };
        if input_ids.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        if let Some(((row, pos), id)) = input_ids.indexed_iter().find(|(_, v)| **v < 0) {
            return Err(layout(format!(
                "`input_ids` holds the negative id {id} at row {row}, position {pos}"
            )));
        }
        for ((row, pos), &label) in labels.indexed_iter() {
            if label < 0 && label != IGNORE_INDEX {
                return Err(DataError::BadLabel {
                    path: path.to_path_buf(),
                    label,
                    row,
                    pos,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            byte_level: false,
            source: Source::Rows { input_ids, labels },
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether ids are raw bytes.
    pub fn is_byte_level(&self) -> bool {
        self.byte_level
    }

    /// The smallest and the largest token id (inputs and labels, -100 excluded).
    pub fn id_range(&self) -> Option<(i64, i64)> {
        let mut range: Option<(i64, i64)> = None;
        let mut see = |v: i64| {
            range = Some(match range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        };
        match &self.source {
            Source::Stream(t) => t.iter().for_each(|&v| see(i64::from(v))),
            Source::Examples { examples, pad_id } => {
                examples.iter().flat_map(|e| &e.ids).for_each(|&v| see(i64::from(v)));
                see(i64::from(*pad_id));
            }
            Source::Classes { examples, pad_id } => {
                examples.iter().flat_map(|e| &e.ids).for_each(|&v| see(i64::from(v)));
                see(i64::from(*pad_id));
            }
            Source::Rows { input_ids, labels } => {
                input_ids.iter().for_each(|&v| see(v));
                labels.iter().filter(|&&v| v != IGNORE_INDEX).for_each(|&v| see(v));
            }
        }
        range
    }

    /// Checks every id against the model's vocabulary size: a clear error instead
    /// of an out-of-bounds embedding lookup later.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<(), DataError> {
        let Some((lo, hi)) = self.id_range() else {
            return Ok(());
        };
        let bad = if lo < 0 {
            Some(lo)
        } else if usize::try_from(hi).map_or(true, |h| h >= vocab_size) {
            Some(hi)
        } else {
            None
        };
        match bad {
            Some(token) => Err(DataError::TokenOutOfVocab {
                path: self.path.clone(),
                token,
                vocab_size,
                byte_level: self.byte_level,
            }),
            None => Ok(()),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, DataError> {
    std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_path_buf(),
        line: 1 + bytes
            .get(..e.valid_up_to())
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()),
    })
}

/// One JSONL line → an example.
fn example(
    path: &Path,
    line: usize,
    value: &Value,
    tok: &Tokenizer,
    chat: Option<&ChatTemplate>,
) -> Result<Example, DataError> {
    let fail = |problem: String| DataError::JsonlExample {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let Value::Object(obj) = value else {
        return Err(fail(format!(
            "expected a JSON object, found {}",
            crate::checkpoint::config::describe(value)
        )));
    };
    let field = |key: &str| -> Result<Option<&str>, DataError> {
        match obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(fail(format!(
                "`{key}` should be a string, found {}",
                crate::checkpoint::config::describe(other)
            ))),
        }
    };
    let encode = |text: &str, special: bool| {
        tok.encode(text, special).map_err(|message| DataError::Encode {
            path: path.to_path_buf(),
            line,
            message,
        })
    };
    let (text, prompt, completion) = (field("text")?, field("prompt")?, field("completion")?);
    if let Some(messages) = obj.get("messages") {
        if text.is_some() || prompt.is_some() || completion.is_some() {
            return Err(fail(
                "has `messages` and `text` or `prompt`/`completion`; use one form per line".into(),
            ));
        }
        return chat_example(path, line, messages, tok, chat);
    }
    let mut ex = match (text, prompt, completion) {
        (Some(t), None, None) => Example {
            ids: encode(t, true)?,
            loss_from: 0,
            no_loss: Vec::new(),
        },
        (Some(_), _, _) => {
            return Err(fail(
                "has both `text` and `prompt`/`completion`; use one form per line".into(),
            ));
        }
        (None, Some(p), Some(c)) => {
            let mut ids = encode(p, true)?;
            let loss_from = ids.len();
            ids.extend(encode(c, false)?);
            Example {
                ids,
                loss_from,
                no_loss: Vec::new(),
            }
        }
        (None, Some(_), None) => return Err(fail("has `prompt` but no `completion`".into())),
        (None, None, Some(_)) => return Err(fail("has `completion` but no `prompt`".into())),
        (None, None, None) => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(fail(format!(
                "has neither `text` nor `prompt` + `completion` (keys: {})",
                if keys.is_empty() {
                    "none".into()
                } else {
                    keys.join(", ")
                }
            )));
        }
    };
    if let Some(eos) = tok.eos_id() {
        ex.ids.push(eos);
    }
    Ok(ex)
}

/// A `messages` line: a chat rendered with the model's template, loss on the
/// assistant's turns only.
///
/// For each assistant turn k the template renders the turns before it with
/// the assistant's turn opened (`add_generation_prompt`) and then the turns
/// up to and including it; the text between the two is the assistant's
/// answer as the template writes it (its end-of-turn marker included), and
/// carries loss; everything else (system and user turns, the opening of each
/// assistant turn) does not. Each piece is encoded without added special
/// tokens (the template writes them), and no EOS is appended (the template's
/// end-of-turn marker is the stop). A template that does not render a
/// conversation as a growing text (each rendering a prefix of the next) is
/// not supported yet, and said so.
fn chat_example(
    path: &Path,
    line: usize,
    messages: &Value,
    tok: &Tokenizer,
    chat: Option<&ChatTemplate>,
) -> Result<Example, DataError> {
    let fail = |problem: String| DataError::JsonlExample {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let chat_fail = |problem: String, code| DataError::Chat {
        path: path.to_path_buf(),
        line,
        problem,
        code,
    };
    let Value::Array(items) = messages else {
        return Err(fail(format!(
            "`messages` should be a list, found {}",
            crate::checkpoint::config::describe(messages)
        )));
    };
    let turns: Vec<Message> = items
        .iter()
        .map(|m| {
            match (
                m.get("role").and_then(Value::as_str),
                m.get("content").and_then(Value::as_str),
            ) {
                (Some(role), Some(content)) => Ok(Message {
                    role: role.to_string(),
                    content: content.to_string(),
                }),
                _ => Err(fail("a message needs `role` and `content` strings".into())),
            }
        })
        .collect::<Result<_, _>>()?;
    if !turns.iter().any(|m| m.role == "assistant") {
        return Err(fail("`messages` has no assistant turn, so nothing would train".into()));
    }
    let Some(template) = chat else {
        return Err(chat_fail(
            "`messages` needs the model's chat template, and the model folder has none".into(),
            Code::GenerateNoChatTemplate,
        ));
    };
    let render = |upto: usize, open: bool| {
        template
            .render(&turns[..upto], open)
            .map_err(|e| chat_fail(e.to_string(), Code::GenerateChatTemplate))
    };
    let encode = |text: &str| {
        tok.encode(text, false).map_err(|message| DataError::Encode {
            path: path.to_path_buf(),
            line,
            message,
        })
    };
    let not_growing = || {
        chat_fail(
            "the chat template does not render the conversation as a growing text (each turn's rendering a prefix of the next): not supported yet".into(),
            Code::GenerateChatTemplate,
        )
    };
    // (text, carries loss) pieces in order
    let mut pieces: Vec<(String, bool)> = Vec::new();
    let mut done = String::new();
    for (k, m) in turns.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let opened = render(k, true)?;
        let answered = render(k + 1, false)?;
        let context = opened.strip_prefix(done.as_str()).ok_or_else(not_growing)?;
        let answer = answered.strip_prefix(opened.as_str()).ok_or_else(not_growing)?;
        pieces.push((context.to_string(), false));
        pieces.push((answer.to_string(), true));
        done = answered;
    }
    let all = render(turns.len(), false)?;
    pieces.push((
        all.strip_prefix(done.as_str()).ok_or_else(not_growing)?.to_string(),
        false,
    ));
    let mut ex = Example::default();
    let mut first_loss = None;
    for (text, loss) in pieces {
        let start = ex.ids.len();
        ex.ids.extend(encode(&text)?);
        let end = ex.ids.len();
        match (loss, first_loss) {
            (true, None) => first_loss = Some(start),
            (false, Some(_)) if end > start => ex.no_loss.push((start, end)),
            _ => {}
        }
    }
    ex.loss_from = first_loss.unwrap_or(ex.ids.len());
    Ok(ex)
}
