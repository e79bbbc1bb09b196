//! Held-out evaluation (`lamdac eval`): perplexity, and exact match of final answers.
//!
//! Data, by extension:
//! - plain text: one token stream (special tokens as training adds them),
//!   cut into windows of at most the model's context; every token but the
//!   first of a window is scored (`-log p(token | the window before it)`).
//! - `.jsonl`, one object per line (blank lines skipped): `text` is scored
//!   the same way, alone; `prompt` / `completion` and `question` / `answer`
//!   are question-answer pairs, encoded as training encodes `prompt` /
//!   `completion` (the prompt with special tokens, the completion without,
//!   then EOS when the model has one); `messages` (a chat, the last turn the
//!   assistant's) is rendered with the model's chat template, the earlier
//!   turns as the prompt with the assistant's turn opened, the last turn's
//!   content as the answer. For a pair, the completion's tokens are scored
//!   given the prompt, and the model also answers the prompt greedily; the
//!   final answer of the prediction and of the reference are compared after
//!   [`normalize_answer`].
//!
//! Final answers follow GSM8K: the text after the last `####` when there is
//! one; otherwise, for the prediction, the last number in it, and for the
//! reference, all of it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use super::{ChatTemplate, GenerateError, Generator, Message};
use crate::data::DataError;

/// One evaluation example.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// Text to score.
    Text(String),
    /// A prompt with its reference answer.
    Pair {
        /// What the model is given (already rendered, for a chat).
        prompt: String,
        /// The reference completion.
        reference: String,
        /// Whether `prompt` came from a chat template (no special tokens added).
        chat: bool,
    },
}

/// An evaluation data file, read and split into examples (not yet tokenized).
#[derive(Clone, Debug)]
pub struct EvalData {
    /// The file.
    pub path: PathBuf,
    /// The examples, in file order.
    pub items: Vec<Item>,
    /// What the file holds: `text`, `prompt/completion`, `question/answer`, `messages`, or `mixed`.
    pub kind: String,
}

fn data_error(path: &Path, line: usize, message: impl Into<String>) -> GenerateError {
    GenerateError::EvalData {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

impl EvalData {
    /// Reads `path` (see the module doc); `chat` renders `messages` lines
    /// (None when the model has no template: such lines are then an error).
    pub fn load(path: &Path, chat: Option<&ChatTemplate>) -> Result<Self, GenerateError> {
        let bytes = std::fs::read(path).map_err(|source| {
            GenerateError::Data(DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        })?;
        let text = String::from_utf8(bytes).map_err(|e| data_error(path, 0, format!("not UTF-8 text: {e}")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            if text.trim().is_empty() {
                return Err(data_error(path, 0, "the file is empty"));
            }
            return Ok(EvalData {
                path: path.to_path_buf(),
                items: vec![Item::Text(text.to_string())],
                kind: "text".into(),
            });
        }
        let mut items = Vec::new();
        let mut kinds = std::collections::BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Json = serde_json::from_str(line).map_err(|e| data_error(path, i + 1, format!("not JSON: {e}")))?;
            let s = |k: &str| v.get(k).and_then(Json::as_str).map(str::to_string);
            let (kind, item) = if let (Some(p), Some(c)) = (s("prompt"), s("completion")) {
                (
                    "prompt/completion",
                    Item::Pair {
                        prompt: p,
                        reference: c,
                        chat: false,
                    },
                )
            } else if let (Some(q), Some(a)) = (s("question"), s("answer")) {
                (
                    "question/answer",
                    Item::Pair {
                        prompt: q,
                        reference: a,
                        chat: false,
                    },
                )
            } else if let Some(messages) = v.get("messages") {
                ("messages", chat_item(path, i + 1, messages, chat)?)
            } else if let Some(t) = s("text") {
                ("text", Item::Text(t))
            } else {
                return Err(data_error(
                    path,
                    i + 1,
                    "the line has none of `text`, `prompt` and `completion`, `question` and `answer`, `messages`",
                ));
            };
            kinds.insert(kind);
            items.push(item);
        }
        if items.is_empty() {
            return Err(data_error(path, 0, "the file holds no example"));
        }
        let kind = if kinds.len() == 1 {
            kinds.into_iter().next().unwrap_or_default().to_string()
        } else {
            "mixed".into()
        };
        Ok(EvalData {
            path: path.to_path_buf(),
            items,
            kind,
        })
    }
}

impl EvalData {
    /// The part of the file that `split fraction` holds out of training
    /// (the same examples, or the same tail of a text: [`crate::data::split`]).
    pub fn held_out(mut self, fraction: f64) -> Result<Self, GenerateError> {
        match self.items.as_slice() {
            // a plain-text file is one item: its tail is held out, as training cuts it
            [Item::Text(t)] if self.path.extension().and_then(|e| e.to_str()) != Some("jsonl") => {
                let cut = crate::data::split::text_cut(t.as_bytes(), fraction, &self.path)?;
                let tail = t[cut..].to_string();
                self.items = vec![Item::Text(tail)];
            }
            _ => {
                let held = crate::data::split::held_out(self.items.len(), fraction, &self.path)?;
                self.items = self
                    .items
                    .into_iter()
                    .zip(held)
                    .filter(|(_, h)| *h)
                    .map(|(i, _)| i)
                    .collect();
            }
        }
        Ok(self)
    }
}

/// A `messages` line: every turn before the last as the prompt (assistant
/// turn opened), the last, an assistant turn, as the reference.
fn chat_item(path: &Path, line: usize, messages: &Json, chat: Option<&ChatTemplate>) -> Result<Item, GenerateError> {
    let turns: Vec<Message> = messages
        .as_array()
        .ok_or_else(|| data_error(path, line, "`messages` is not a list"))?
        .iter()
        .map(|m| {
            let s = |k: &str| m.get(k).and_then(Json::as_str).map(str::to_string);
            match (s("role"), s("content")) {
                (Some(role), Some(content)) => Ok(Message { role, content }),
                _ => Err(data_error(path, line, "a message lacks a `role` or `content` string")),
            }
        })
        .collect::<Result<_, _>>()?;
    let Some((last, before)) = turns.split_last() else {
        return Err(data_error(path, line, "`messages` is empty"));
    };
    if last.role != "assistant" || before.is_empty() {
        return Err(data_error(
            path,
            line,
            "the last message must be the assistant's answer, after at least one other",
        ));
    }
    let template = chat.ok_or_else(|| {
        data_error(
            path,
            line,
            "`messages` needs the model's chat template, and the model folder has none",
        )
    })?;
    Ok(Item::Pair {
        prompt: template.render(before, true)?,
        reference: last.content.clone(),
        chat: true,
    })
}

/// The final answer of a reference or a prediction (see the module doc), normalised.
pub fn final_answer(text: &str, is_reference: bool) -> Option<String> {
    if let Some(i) = text.rfind("####") {
        let after = text[i + 4..].trim();
        // the answer is the first line after the marker
        let line = after.lines().next().unwrap_or_default();
        return Some(normalize_answer(line));
    }
    if is_reference {
        let t = text.trim();
        return (!t.is_empty()).then(|| normalize_answer(t));
    }
    last_number(text).map(|n| normalize_answer(&n))
}

/// The last number in `text` (digits with optional sign, thousands commas and decimals).
fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || (matches!(chars[j], ',' | '.') && chars.get(j + 1).is_some_and(char::is_ascii_digit)))
            {
                j += 1;
            }
            let neg = i > 0 && chars[i - 1] == '-';
            let s: String = chars[i..j].iter().collect();
            last = Some(if neg { format!("-{s}") } else { s });
            i = j;
        } else {
            i += 1;
        }
    }
    last
}

/// An answer in a canonical form: trimmed, a trailing period dropped; a
/// number (with `$`, `%`, thousands commas or trailing zeros) as its shortest
/// decimal (`1,000` = `1000` = `1000.0` = `$1000`), anything else lowercased
/// with runs of whitespace made one space.
pub fn normalize_answer(s: &str) -> String {
    let t = s.trim().trim_end_matches('.').trim();
    let numeric: String = t
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | '%' | ' ' | '\u{a0}'))
        .collect();
    if let Ok(v) = numeric.parse::<f64>()
        && v.is_finite()
        && !numeric.is_empty()
        && numeric.chars().any(|c| c.is_ascii_digit())
        && numeric
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'))
    {
        let v = if v == 0.0 { 0.0 } else { v };
        return format!("{v}");
    }
    t.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Options of [`evaluate`].
#[derive(Clone, Copy, Debug)]
pub struct EvalOptions {
    /// Examples at most (the first ones of the file).
    pub limit: Option<usize>,
    /// New tokens at most per answer.
    pub max_tokens: usize,
}

/// One example's result (one line of the predictions file).
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Position in the data file's examples.
    pub index: usize,
    /// `base` or `adapted`.
    pub model: String,
    /// Tokens scored.
    pub tokens: usize,
    /// Their summed negative log-likelihood (nats).
    pub nll: f64,
    /// The prompt (pairs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The reference completion (pairs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// What the model generated (pairs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<String>,
    /// The reference's final answer, normalised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_answer: Option<String>,
    /// The prediction's final answer, normalised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_answer: Option<String>,
    /// Whether the two answers are equal (pairs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
}

/// What one model scored on a data file.
#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    /// `base` or `adapted`.
    pub model: String,
    /// Examples evaluated.
    pub examples: usize,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Question-answer examples.
    pub answered: usize,
    /// Of those, how many final answers match.
    pub correct: usize,
    /// `correct / answered` (None without question-answer examples).
    pub exact_match: Option<f64>,
}

/// Question/answer items decoded together (batched greedy decoding): a
/// decoding step's GEMMs then read the weights once for this many answers.
pub const DECODE_BATCH: usize = 8;

/// Evaluates one model on `data`; `on_example` sees each example's result as
/// it is done (question/answer examples [`DECODE_BATCH`] at a time, in order).
pub fn evaluate(
    g: &Generator,
    data: &EvalData,
    label: &str,
    opts: EvalOptions,
    mut on_example: impl FnMut(&Prediction),
) -> Result<(EvalSummary, Vec<Prediction>), GenerateError> {
    let context = g.model.context();
    let mut preds = Vec::new();
    let n = opts.limit.unwrap_or(usize::MAX).min(data.items.len());
    let items: Vec<(usize, &Item)> = data.items.iter().take(n).enumerate().collect();
    // question/answer items are answered DECODE_BATCH at a time (batched greedy decoding)
    for group in items.chunks(DECODE_BATCH) {
        let mut scored: Vec<Prediction> = Vec::with_capacity(group.len());
        let mut prompts: Vec<(usize, Vec<u32>)> = Vec::new();
        for (slot, &(index, item)) in group.iter().enumerate() {
            scored.push(match item {
                Item::Text(t) => {
                    let ids = g
                        .tokenizer
                        .encode(t, true)
                        .map_err(|message| GenerateError::Encode { message })?;
                    let (mut nll, mut tokens) = (0.0, 0);
                    for window in ids.chunks(context) {
                        let lp = g.token_logprobs(window)?;
                        nll -= lp.iter().sum::<f64>();
                        tokens += lp.len();
                    }
                    Prediction {
                        index,
                        model: label.into(),
                        tokens,
                        nll,
                        prompt: None,
                        reference: None,
                        prediction: None,
                        reference_answer: None,
                        predicted_answer: None,
                        correct: None,
                    }
                }
                Item::Pair {
                    prompt,
                    reference,
                    chat,
                } => {
                    let enc = |t: &str, special| {
                        g.tokenizer
                            .encode(t, special)
                            .map_err(|message| GenerateError::Encode { message })
                    };
                    let prompt_ids = enc(prompt, !chat)?;
                    let mut completion = enc(reference, false)?;
                    if let Some(eos) = g.tokenizer.eos_id() {
                        completion.push(eos);
                    }
                    // the completion scored given the prompt, cut to the context
                    let all: Vec<u32> = prompt_ids.iter().chain(&completion).copied().collect();
                    let keep = all.len().min(context);
                    let lp = g.token_logprobs(&all[..keep])?;
                    let scored = &lp[prompt_ids.len().saturating_sub(1).min(lp.len())..];
                    let nll = -scored.iter().sum::<f64>();
                    if prompt_ids.len() < context {
                        prompts.push((slot, prompt_ids));
                    }
                    Prediction {
                        index,
                        model: label.into(),
                        tokens: scored.len(),
                        nll,
                        prompt: Some(prompt.clone()),
                        reference: Some(reference.clone()),
                        correct: None,
                        prediction: Some(String::new()),
                        reference_answer: final_answer(reference, true),
                        predicted_answer: None,
                    }
                }
            });
        }
        let refs: Vec<&[u32]> = prompts.iter().map(|(_, p)| p.as_slice()).collect();
        let gens = g.generate_greedy_batch(&refs, opts.max_tokens)?;
        let mut generated: Vec<Option<Vec<u32>>> = vec![None; group.len()];
        for ((slot, _), gen_out) in prompts.iter().zip(gens) {
            generated[*slot] = Some(gen_out.tokens);
        }
        for (mut p, gen_out) in scored.into_iter().zip(generated) {
            if p.reference.is_some() {
                let text = g
                    .tokenizer
                    .decode(&gen_out.unwrap_or_default(), true)
                    .map_err(|message| GenerateError::Decode { id: 0, message })?;
                let got = final_answer(&text, false);
                p.correct = Some(p.reference_answer.is_some() && p.reference_answer == got);
                p.predicted_answer = got;
                p.prediction = Some(text);
            }
            on_example(&p);
            preds.push(p);
        }
    }
    let tokens: usize = preds.iter().map(|p| p.tokens).sum();
    let nll: f64 = preds.iter().map(|p| p.nll).sum();
    let mean_nll = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    let answered = preds.iter().filter(|p| p.correct.is_some()).count();
    let correct = preds.iter().filter(|p| p.correct == Some(true)).count();
    Ok((
        EvalSummary {
            model: label.into(),
            examples: preds.len(),
            tokens,
            mean_nll,
            perplexity: mean_nll.exp(),
            answered,
            correct,
            exact_match: (answered > 0).then(|| correct as f64 / answered as f64),
        },
        preds,
    ))
}

/// The summaries side by side, one column per model.
pub fn render_table(data: &EvalData, shown: usize, rows: &[EvalSummary]) -> String {
    let mut out = format!(
        "data {}: {} examples ({}), {} evaluated\n",
        data.path.display(),
        data.items.len(),
        data.kind,
        shown
    );
    let mut line = |name: &str, cells: Vec<String>| {
        out.push_str(&format!("{name:<14}"));
        for c in cells {
            out.push_str(&format!("{c:>18}"));
        }
        out.push('\n');
    };
    line("", rows.iter().map(|r| r.model.clone()).collect());
    line("tokens scored", rows.iter().map(|r| r.tokens.to_string()).collect());
    line("mean NLL", rows.iter().map(|r| format!("{:.4}", r.mean_nll)).collect());
    line(
        "perplexity",
        rows.iter().map(|r| format!("{:.3}", r.perplexity)).collect(),
    );
    if rows.iter().any(|r| r.answered > 0) {
        line(
            "exact match",
            rows.iter()
                .map(|r| {
                    format!(
                        "{}/{} ({:.1}%)",
                        r.correct,
                        r.answered,
                        100.0 * r.exact_match.unwrap_or(0.0)
                    )
                })
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_normalise_to_one_form() {
        for s in ["1000", "1,000", "1000.0", "$1,000", "1000.", " 1000 ", "1000.00"] {
            assert_eq!(normalize_answer(s), "1000", "{s:?}");
        }
        assert_eq!(normalize_answer("0.50"), "0.5");
        assert_eq!(normalize_answer("-3"), "-3");
        assert_eq!(normalize_answer("-0"), "0");
        assert_eq!(normalize_answer("  Paris  France. "), "paris france");
        assert_ne!(normalize_answer("1000"), normalize_answer("100"));
    }

    #[test]
    fn final_answers_follow_the_gsm_convention() {
        assert_eq!(final_answer("so 3 + 4 = 7\n#### 7", true).as_deref(), Some("7"));
        assert_eq!(final_answer("#### 1,250\nmore text", false).as_deref(), Some("1250"));
        // without ####: the last number of a prediction, all of a reference
        assert_eq!(
            final_answer("She has 12 apples, then 3 more: 15.", false).as_deref(),
            Some("15")
        );
        assert_eq!(
            final_answer("It costs $1,000.50 in total", false).as_deref(),
            Some("1000.5")
        );
        assert_eq!(final_answer("down to -4 degrees", false).as_deref(), Some("-4"));
        assert_eq!(final_answer("no numbers here", false), None);
        assert_eq!(final_answer("Paris", true).as_deref(), Some("paris"));
        assert_eq!(final_answer("   ", true), None);
    }

    #[test]
    fn jsonl_kinds_are_read_and_bad_lines_are_coded_errors() {
        let dir = std::env::temp_dir().join(format!("lamdac-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("qa.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n\n{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"t\"}\n",
        )
        .unwrap_or_default();
        let d = EvalData::load(&p, None).map_err(|e| e.to_string());
        let d = d.as_ref().map(|d| (d.items.len(), d.kind.clone()));
        assert_eq!(d, Ok((3, "mixed".to_string())));
        std::fs::write(&p, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n").unwrap_or_default();
        let e = EvalData::load(&p, None).err().map(|e| (e.code(), e.to_string()));
        assert!(
            e.as_ref()
                .is_some_and(|(c, m)| *c == lamda_compiler::diag::Code::EvalData && m.contains(":1:")),
            "{e:?}"
        );
        std::fs::write(&p, "{\"x\": 1}\n").unwrap_or_default();
        assert!(EvalData::load(&p, None).is_err());
        std::fs::write(&p, "\n\n").unwrap_or_default();
        assert!(EvalData::load(&p, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
