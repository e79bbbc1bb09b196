//! `config.json` of a Hugging Face Llama checkpoint: the compiler's parser, re-exported.
//!
//! `lamdac check` and the runtime read config.json with one parser
//! ([`lamda_compiler::model::hf_config`]), so both accept and reject the same
//! configs with the same codes; its errors reach runtime callers as
//! [`CheckpointError::Config`](super::CheckpointError::Config).

pub use lamda_compiler::model::hf_config::{
    BertConfig, ConfigError, DEFAULT_MAX_POSITION_EMBEDDINGS, DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, ExpectedTensor,
    LlamaConfig, ModelConfig, describe, read_dir_config, strip_position,
};
