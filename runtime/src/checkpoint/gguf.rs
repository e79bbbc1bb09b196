//! GGUF (llama.cpp) files: reading, dequantization, and conversion of a Llama GGUF
//! into a Hugging Face checkpoint folder that [`Checkpoint::open`](super::Checkpoint::open) loads.
//!
//! - [`reader`]: the GGUF v2/v3 container, memory-mapped, every range checked.
//! - [`dequant`]: F32, F16, BF16, Q8_0 and Q4_1 to f32.
//! - [`convert`]: `config.json` + F32 `model.safetensors` + `tokenizer.json` (+ `tokenizer_config.json` with the chat template)
//!   ([`convert_gguf`]), undoing llama.cpp's q/k row permutation.
//! - [`tokenizer`]: `tokenizer.json` from `tokenizer.ggml.*` (GPT-2 byte-level BPE).
//! - [`error`]: [`GgufError`], with a hint and a code per variant.

pub mod convert;
pub mod dequant;
pub mod error;
pub mod reader;
pub mod tokenizer;

pub use convert::{ConvertSummary, TOKENIZER_CONFIG_FILE, WEIGHTS_FILE, convert_gguf, hf_name, unpermute_rows};
pub use dequant::{DequantError, dequantize};
pub use error::GgufError;
pub use reader::{GgmlType, GgufFile, GgufTensorInfo, MetaValue};
pub use tokenizer::{tokenizer_config_json, tokenizer_json};
