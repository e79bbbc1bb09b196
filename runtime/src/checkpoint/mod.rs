//! Checkpoints: Hugging Face folders (config.json + safetensors), dtype conversion on load.
//!
//! - [`config`]: config.json → [`LlamaConfig`], and the tensors it implies.
//! - [`reader`]: one safetensors file, memory-mapped, header checked, typed reads.
//! - [`weights`]: `model.safetensors` or shards through `model.safetensors.index.json`.
//! - [`writer`]: atomic safetensors writing (adapters, optimizer state, resumable runs).
//! - [`error`]: [`CheckpointError`], with a hint and a code per variant.
//!
//! [`Checkpoint::open`] ties them together and checks, from the headers alone,
//! that every tensor the config implies is there with the shape it implies.

pub mod config;
pub mod error;
pub mod gguf;
pub mod reader;
pub mod weights;
pub mod writer;

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD};

pub use config::{BertConfig, ConfigError, ExpectedTensor, LlamaConfig, ModelConfig};
pub use error::CheckpointError;
pub use reader::{Dtype, SafetensorsFile, TensorMeta};
pub use weights::Weights;
pub use writer::{TensorData, TensorRef, write_safetensors};

/// File name of the config in a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of a Hugging Face tokenizer in a checkpoint folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A Hugging Face Llama checkpoint folder, opened and checked against its config.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    /// The parsed config.json.
    pub config: ModelConfig,
    /// The weight files.
    pub weights: Weights,
}

impl Checkpoint {
    /// Opens a checkpoint folder: parses config.json, opens the weights, and checks
    /// that every tensor the config implies exists with the implied shape (headers
    /// only; no tensor data is read). Returns the first problem found, in model order;
    /// [`Checkpoint::problems`] lists them all.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let ckpt = Self::open_unchecked(dir)?;
        match ckpt.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(ckpt),
        }
    }

    /// Opens a checkpoint folder without checking the tensors against the config.
    pub fn open_unchecked(dir: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        let config = ModelConfig::load_dir(dir)?;
        let weights = Weights::open(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// The config of a causal LM (generation and the LM head need one).
    pub fn llama(&self) -> Result<&LlamaConfig, CheckpointError> {
        match &self.config {
            ModelConfig::Llama(c) => Ok(c),
            ModelConfig::Bert(_) => Err(CheckpointError::NotCausalLm {
                path: self.dir.clone(),
                family: "bert",
            }),
        }
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `tokenizer.json` in the folder, if there is one.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        let p = self.dir.join(TOKENIZER_FILE);
        p.is_file().then_some(p)
    }

    /// Every mismatch between the config and the weights: missing tensors and wrong
    /// shapes, in model order. Extra tensors (e.g. `rotary_emb.inv_freq`) are allowed.
    pub fn problems(&self) -> Vec<CheckpointError> {
        self.config
            .expected_tensors()
            .into_iter()
            .filter_map(|t| self.weights.check_shape(&t.name, &t.shape).err())
            .collect()
    }

    /// A tensor as f32, checked against the shape the config implies when it implies
    /// one (any shape otherwise).
    pub fn tensor(&self, name: &str) -> Result<ArrayD<f32>, CheckpointError> {
        match self.config.expected_shape(name) {
            Some(shape) => self.weights.tensor(name, &shape),
            None => self.weights.f32(name),
        }
    }

    /// A 2-D tensor as f32, checked against the config-implied shape (or only for
    /// being 2-D when the config implies none).
    pub fn matrix(&self, name: &str) -> Result<Array2<f32>, CheckpointError> {
        let a = self.tensor(name)?;
        let found = a.shape().to_vec();
        a.into_dimensionality().map_err(|_| self.wrong_rank(name, 2, found))
    }

    /// A 1-D tensor as f32, checked against the config-implied shape (or only for
    /// being 1-D when the config implies none).
    pub fn vector(&self, name: &str) -> Result<Array1<f32>, CheckpointError> {
        let a = self.tensor(name)?;
        let found = a.shape().to_vec();
        a.into_dimensionality().map_err(|_| self.wrong_rank(name, 1, found))
    }

    fn wrong_rank(&self, name: &str, expected_rank: usize, found: Vec<usize>) -> CheckpointError {
        let path = self
            .weights
            .file_of(name)
            .map_or_else(|_| self.dir.clone(), |f| f.path().to_path_buf());
        CheckpointError::WrongRank {
            path,
            name: name.to_owned(),
            expected_rank,
            found,
        }
    }

    /// The output projection `(vocab, hidden)`: `lm_head.weight`, or the embedding
    /// when the config ties them (or `lm_head.weight` is absent and they are tied).
    pub fn lm_head(&self) -> Result<Array2<f32>, CheckpointError> {
        if self.llama()?.tie_word_embeddings && !self.weights.contains("lm_head.weight") {
            self.matrix("model.embed_tokens.weight")
        } else {
            self.matrix("lm_head.weight")
        }
    }
}
