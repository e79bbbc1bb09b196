//! Bounds on sizes: what no real model or run reaches, refused before anything is allocated.
//!
//! Every size a user controls (a preset's arguments, a checkpoint's
//! config.json, the train block) is checked against these limits where it is
//! read, with a coded error (`lamda::model::too_large`,
//! `lamda::checkpoint::invalid_value`, `lamda::train::bad_value`). Within them
//! every product the compiler forms (a weight's elements, a model's
//! parameters, a step's activation bytes, parameter updates over a run) fits
//! in a `u64`; the arithmetic saturates anyway, so a size past the limits can
//! only ever read as "too large", never wrap to a small one (`batch
//! 4294967296 seq 4294967296` once passed `check` with a 3 MiB peak).

/// Largest dimension of a weight (vocabulary, width, FFN size, heads): 2^24.
pub const MAX_DIM: u64 = 1 << 24;
/// Most entries of a repeated group (`layers[n_layers]`): 4096, 32x the
/// deepest released Llama (126 layers).
pub const MAX_GROUP: u64 = 1 << 12;
/// Most modules in a model: 2^20.
pub const MAX_MODULES: usize = 1 << 20;
/// Most parameters of a model: 2^42 (4.4 T).
pub const MAX_PARAMS: u64 = 1 << 42;
/// Most sequences in a micro-batch: 2^20.
pub const MAX_BATCH: u64 = 1 << 20;
/// Most tokens in a sequence: 2^20.
pub const MAX_SEQ: u64 = 1 << 20;
/// Most tokens in a micro-batch (`batch * seq`): 2^24.
pub const MAX_TOKENS: u64 = 1 << 24;
/// Most optimizer steps of a run, and micro-batches per step: 2^32.
pub const MAX_STEPS: u64 = 1 << 32;
