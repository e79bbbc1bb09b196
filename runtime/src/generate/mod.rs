//! Text generation on the CPU with a base model or an adapted one (`lamdac generate`).
//!
//! - [`model`]: the inference forward with a KV cache; adapters merged into the weights.
//! - [`sample`]: greedy, temperature and top-p choice of the next token.
//! - [`chat`]: the model's chat template (MiniJinja).
//! - [`stream`]: token ids to text as it grows, never splitting a character.
//! - [`eval`]: perplexity and exact match on held-out data (`lamdac eval`).
//!
//! [`Generator::open`] loads a checkpoint folder, optionally with a run's
//! adapter, and its tokenizer; [`Generator::generate`] prefills the prompt
//! in one pass and then decodes one token at a time from the cache until a
//! stop token, the token limit or the end of the context.

pub mod chat;
pub mod eval;
pub mod model;
pub mod sample;
pub mod stream;

use std::path::{Path, PathBuf};

use lamda_compiler::diag::Code;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::{BYTE_VOCAB, DataError, Tokenizer};
use crate::export::{ExportError, lora_factors};
use crate::ops::OpsError;

pub use chat::{ChatTemplate, Message};
pub use model::{KvCache, Model};
pub use sample::{Sampler, Sampling, argmax, log_prob};
pub use stream::TextStream;

/// Why generation could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("`{}` has no tokenizer.json, and its vocabulary of {vocab} is not the {BYTE_VOCAB} bytes", dir.display())]
    NoTokenizer { dir: PathBuf, vocab: usize },
    #[error("`{}` has no chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja)", dir.display())]
    NoChatTemplate { dir: PathBuf },
    #[error("the chat template in `{}` fails: {message}", path.display())]
    ChatTemplate { path: PathBuf, message: String },
    #[error("the prompt is {tokens} tokens; the model's context is {context}, so no position is left for a new token")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("the tokenizer cannot encode the prompt: {message}")]
    Encode { message: String },
    #[error("the tokenizer cannot decode token {id}: {message}")]
    Decode { id: u32, message: String },
    #[error("{}: {message}", place(path, *line))]
    EvalData {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("`{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Internal(#[from] OpsError),
}

/// `path:line`, or `path` for the file as a whole (line 0).
fn place(path: &Path, line: usize) -> String {
    if line > 0 {
        format!("{}:{line}", path.display())
    } else {
        path.display().to_string()
    }
}

impl GenerateError {
    /// The diagnostic code.
    pub fn code(&self) -> Code {
        match self {
            Self::Checkpoint(e) => e.code(),
            Self::Data(e) => e.code(),
            Self::Export(e) => e.code(),
            Self::NoTokenizer { .. } => Code::GenerateNoTokenizer,
            Self::NoChatTemplate { .. } => Code::GenerateNoChatTemplate,
            Self::ChatTemplate { .. } => Code::GenerateChatTemplate,
            Self::PromptTooLong { .. } => Code::GeneratePromptTooLong,
            Self::Encode { .. } | Self::Decode { .. } => Code::DataEncode,
            Self::EvalData { .. } => Code::EvalData,
            Self::Io { .. } => Code::Io,
            Self::Internal(_) => Code::GenerateInternal,
        }
    }

    /// What to do about it ("" when there is nothing to say).
    pub fn hint(&self) -> String {
        match self {
            Self::Checkpoint(e) => e.hint(),
            Self::Data(e) => e.hint(),
            Self::Export(ExportError::NotLora { .. }) => {
                "generate applies an adapter through its LoRA form (W + Delta W); methods whose update has rank above r (PiSSA) are not supported yet".into()
            }
            Self::Export(e) => e.hint(),
            Self::NoTokenizer { .. } => {
                "put the model's tokenizer.json into the folder (`lamdac convert` writes one from a GGUF)".into()
            }
            Self::NoChatTemplate { .. } => {
                "leave out --chat to continue the prompt as plain text, or add the chat template of the model's instruct version to its tokenizer_config.json (`lamdac convert` copies a GGUF's)".into()
            }
            Self::ChatTemplate { .. } => "leave out --chat to continue the prompt as plain text".into(),
            Self::PromptTooLong { context, .. } => {
                format!("shorten the prompt to fewer than {context} tokens")
            }
            Self::EvalData { .. } => {
                "each line needs `text`, `prompt` and `completion`, `question` and `answer`, or `messages` (a chat ending with the assistant's turn)".into()
            }
            Self::Encode { .. } | Self::Decode { .. } | Self::Io { .. } | Self::Internal(_) => String::new(),
        }
    }

    /// 2 for I/O problems, 1 for problems with the input.
    pub fn exit_code(&self) -> u8 {
        if self.code() == Code::Io { 2 } else { 1 }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The model produced a stop token (EOS, end of turn); it is not part of the output.
    StopToken,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context (`max_position_embeddings`) is full.
    Context,
}

/// The result of [`Generator::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// The generated ids (a stop token excluded).
    pub tokens: Vec<u32>,
    /// `log p(token | everything before)` of each generated id under the
    /// model's own distribution (the raw logits, whatever the temperature).
    pub logprobs: Vec<f64>,
    /// Why it ended.
    pub stop: Stop,
}

/// A model with its tokenizer and stop tokens, ready to generate.
pub struct Generator {
    /// The weights (with the adapter merged in, if one was given).
    pub model: Model,
    /// The model folder's tokenizer (bytes for a 256-token vocabulary without tokenizer.json).
    pub tokenizer: Tokenizer,
    /// The model folder.
    pub dir: PathBuf,
    /// Ids that end a generation: config.json's `eos_token_id`s, the
    /// tokenizer_config.json `eos_token`, and the end-of-turn markers of the
    /// common chat formats that the vocabulary has (`<|im_end|>`, `<|eot_id|>`, ...).
    pub stop_ids: Vec<u32>,
    /// Modules an adapter was merged into (empty for the base model).
    pub adapted_modules: usize,
}

/// End-of-turn markers of the common chat formats (ChatML, Llama 3, Gemma, Phi).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_turn|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
];

impl Generator {
    /// Opens the checkpoint folder `dir`, merges the adapter file `adapter`
    /// (a run's `adapter.safetensors`) into it when given, and loads its tokenizer.
    pub fn open(dir: &Path, adapter: Option<&Path>) -> Result<Self, GenerateError> {
        let ckpt = Checkpoint::open(dir)?;
        let llama = ckpt.llama()?;
        let tokenizer = match ckpt.tokenizer_path() {
            Some(_) => Tokenizer::for_checkpoint(&ckpt)?,
            None if llama.vocab_size == BYTE_VOCAB => Tokenizer::bytes(),
            None => {
                return Err(GenerateError::NoTokenizer {
                    dir: dir.to_path_buf(),
                    vocab: llama.vocab_size,
                });
            }
        };
        let factors = match adapter {
            Some(a) => lora_factors(a)?,
            None => Vec::new(),
        };
        let model = Model::load(&ckpt, &factors)?;
        let mut stop_ids: Vec<u32> = ckpt.config.eos_token_ids().to_vec();
        if let Ok(Some(t)) = ChatTemplate::for_folder(dir)
            && let Some(id) = tokenizer.token_id(&t.eos_token)
        {
            stop_ids.push(id);
        }
        stop_ids.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Generator {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
            stop_ids,
            adapted_modules: factors.len(),
        })
    }

    /// The prompt's token ids: the text as it is (with the tokenizer's own
    /// special tokens, BOS for Llama), or with `chat` the conversation
    /// `[{user: prompt}]` rendered by the model's chat template with the
    /// assistant's turn opened (no special tokens added: the template has them).
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>, GenerateError> {
        let (text, special) = if chat {
            let template = ChatTemplate::for_folder(&self.dir)?
                .ok_or_else(|| GenerateError::NoChatTemplate { dir: self.dir.clone() })?;
            (template.render(&[Message::user(prompt)], true)?, false)
        } else {
            (prompt.to_string(), true)
        };
        self.tokenizer
            .encode(&text, special)
            .map_err(|message| GenerateError::Encode { message })
    }

    /// Generates up to `max_tokens` ids after `prompt`: prefill in one pass,
    /// then one token at a time from the KV cache (`cached = false`
    /// recomputes the whole sequence at every step instead: the reference the
    /// cache is tested against). `on_token` sees each id as it is chosen.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        cached: bool,
        mut on_token: impl FnMut(u32) -> Result<(), GenerateError>,
    ) -> Result<Generation, GenerateError> {
        let context = self.model.context();
        self.check_prompt(prompt)?;
        let vocab = self.model.vocab();
        let mut sampler = Sampler::new(sampling);
        let mut out = Generation {
            prompt: prompt.to_vec(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stop: Stop::MaxTokens,
        };
        let capacity = (prompt.len() + max_tokens).min(context);
        let mut cache = self.model.cache(capacity)?;
        let mut logits = if max_tokens == 0 {
            Vec::new()
        } else if cached {
            let hidden = self.model.forward(prompt, &mut cache)?;
            let d = self.model.config().hidden_size;
            self.model.logits(&hidden[(prompt.len() - 1) * d..], 1)?
        } else {
            self.model.last_logits_uncached(prompt)?
        };
        while out.tokens.len() < max_tokens {
            let id = sampler.sample(&logits[..vocab]);
            if self.stop_ids.contains(&id) {
                out.stop = Stop::StopToken;
                break;
            }
            out.logprobs.push(log_prob(&logits[..vocab], id));
            out.tokens.push(id);
            on_token(id)?;
            if out.tokens.len() == max_tokens {
                break;
            }
            if prompt.len() + out.tokens.len() >= context {
                out.stop = Stop::Context;
                break;
            }
            logits = if cached {
                let hidden = self.model.forward(&[id], &mut cache)?;
                self.model.logits(&hidden, 1)?
            } else {
                let all: Vec<u32> = prompt.iter().chain(&out.tokens).copied().collect();
                self.model.last_logits_uncached(&all)?
            };
        }
        Ok(out)
    }

    /// A prompt decoding can start from: not empty, shorter than the context.
    fn check_prompt(&self, prompt: &[u32]) -> Result<(), GenerateError> {
        let context = self.model.context();
        if prompt.is_empty() {
            return Err(GenerateError::Encode {
                message: "the prompt has no tokens".into(),
            });
        }
        if prompt.len() >= context {
            return Err(GenerateError::PromptTooLong {
                tokens: prompt.len(),
                context,
            });
        }
        Ok(())
    }

    /// Greedy generations of several prompts at once: each prompt is run
    /// alone into its own cache, then every unfinished sequence takes one
    /// decoding step together with the others ([`Model::forward_batch`]), so
    /// the weights are read once per step for all of them. Each result is
    /// what [`Generator::generate`] with greedy [`Sampling`] gives for that
    /// prompt (same stop rules, same log-probabilities).
    pub fn generate_greedy_batch(
        &self,
        prompts: &[&[u32]],
        max_tokens: usize,
    ) -> Result<Vec<Generation>, GenerateError> {
        let context = self.model.context();
        let (vocab, d) = (self.model.vocab(), self.model.config().hidden_size);
        let mut outs = Vec::with_capacity(prompts.len());
        let mut caches = Vec::with_capacity(prompts.len());
        // last logits of every sequence: (vocab) each
        let mut logits: Vec<Vec<f32>> = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            self.check_prompt(prompt)?;
            let mut cache = self.model.cache((prompt.len() + max_tokens).min(context))?;
            logits.push(if max_tokens == 0 {
                Vec::new()
            } else {
                let hidden = self.model.forward(prompt, &mut cache)?;
                self.model.logits(&hidden[(prompt.len() - 1) * d..], 1)?
            });
            caches.push(cache);
            outs.push(Generation {
                prompt: prompt.to_vec(),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                stop: Stop::MaxTokens,
            });
        }
        let mut sampler = Sampler::new(Sampling::default());
        let mut live: Vec<usize> = if max_tokens == 0 {
            Vec::new()
        } else {
            (0..prompts.len()).collect()
        };
        while !live.is_empty() {
            // each live sequence takes its next token, as `generate` does
            let mut next = Vec::with_capacity(live.len());
            for &b in &live {
                let (out, row) = (&mut outs[b], &logits[b][..vocab]);
                let id = sampler.sample(row);
                if self.stop_ids.contains(&id) {
                    out.stop = Stop::StopToken;
                    continue;
                }
                out.logprobs.push(log_prob(row, id));
                out.tokens.push(id);
                if out.tokens.len() == max_tokens {
                    continue;
                }
                if out.prompt.len() + out.tokens.len() >= context {
                    out.stop = Stop::Context;
                    continue;
                }
                next.push((b, id));
            }
            live = next.iter().map(|&(b, _)| b).collect();
            if live.is_empty() {
                break;
            }
            let ids: Vec<u32> = next.iter().map(|&(_, id)| id).collect();
            let mut step: Vec<&mut model::KvCache> = caches
                .iter_mut()
                .enumerate()
                .filter(|(b, _)| live.contains(b))
                .map(|(_, c)| c)
                .collect();
            let hidden = self.model.forward_batch(&ids, &mut step)?;
            let all = self.model.logits(&hidden, live.len())?;
            for (&b, row) in live.iter().zip(all.chunks_exact(vocab)) {
                logits[b].clear();
                logits[b].extend_from_slice(row);
            }
        }
        Ok(outs)
    }

    /// `log p(ids[i] | ids[..i])` for every `i >= 1` of one sequence (at most
    /// the context long), from one forward pass; the logits are formed `rows`
    /// at a time so a large vocabulary never needs `(n, vocab)` floats at once.
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Vec<f64>, GenerateError> {
        if ids.len() > self.model.context() {
            return Err(GenerateError::PromptTooLong {
                tokens: ids.len(),
                context: self.model.context(),
            });
        }
        if ids.len() < 2 {
            return Ok(Vec::new());
        }
        let mut cache = self.model.cache(ids.len())?;
        let hidden = self.model.forward(&ids[..ids.len() - 1], &mut cache)?;
        let (d, vocab) = (self.model.config().hidden_size, self.model.vocab());
        const ROWS: usize = 64;
        let mut out = Vec::with_capacity(ids.len() - 1);
        for (chunk, h) in hidden.chunks(ROWS * d).enumerate() {
            let n = h.len() / d;
            let logits = self.model.logits(h, n)?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                out.push(log_prob(row, ids[chunk * ROWS + i + 1]));
            }
        }
        Ok(out)
    }
}
