//! Training data: plain text, JSONL and token-id safetensors, tokenized and batched.
//!
//! - [`tokenizer`]: bytes, or a Hugging Face tokenizer.json.
//! - [`classes`]: TSV/CSV/JSONL examples of a classification head.
//! - [`dataset`]: a data file → tokens ([`Dataset`]), and the vocabulary check.
//! - [`batcher`]: `(input_ids, labels)` batches, deterministic and resumable.
//! - [`split`]: the held-out part of a file (`split F`).
//! - [`error`]: [`DataError`], with a hint and a code per variant.

pub mod batcher;
pub mod classes;
pub mod dataset;
pub mod error;
pub mod split;
pub mod tokenizer;

pub use batcher::{Batch, BatchConfig, Batcher, BatcherState};
pub use dataset::{Dataset, Example, IGNORE_INDEX, Source};
pub use error::DataError;
pub use tokenizer::{BYTE_VOCAB, Tokenizer};
