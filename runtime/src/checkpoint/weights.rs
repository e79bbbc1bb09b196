//! The weights of a checkpoint folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, looked up by Hugging Face tensor name.
//!
//! With an index, every shard it names is opened (and its header checked) up
//! front, and every tensor the index lists must be in the shard it names: a
//! missing shard or an index that lies is reported at open time, not halfway
//! through loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD};
use serde_json::Value;

use super::error::{CheckpointError, close_names};
use super::reader::{SafetensorsFile, TensorMeta};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// All weight files of one checkpoint, with a name → file map.
#[derive(Debug)]
pub struct Weights {
    /// The folder (single file) or the index file (sharded), for messages.
    origin: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → position in `files`.
    location: BTreeMap<String, usize>,
}

impl Weights {
    /// Opens the weights of the checkpoint folder `dir`: the index if there is one,
    /// otherwise `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_single(&single);
        }
        Err(CheckpointError::NoWeights {
            path: dir.to_path_buf(),
            found: weight_like_files(dir),
        })
    }

    /// Opens a single safetensors file as the whole set of weights.
    pub fn open_single(path: &Path) -> Result<Self, CheckpointError> {
        let file = SafetensorsFile::open(path)?;
        let location = file.names().map(|n| (n.to_owned(), 0)).collect();
        Ok(Self {
            origin: path.to_path_buf(),
            files: vec![file],
            location,
        })
    }

    /// Opens a sharded checkpoint through its `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(index).map_err(|source| CheckpointError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| CheckpointError::InvalidJson {
            path: index.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: super::config::strip_position(&e),
        })?;
        let invalid = |reason: String| CheckpointError::InvalidIndex {
            path: index.to_path_buf(),
            reason,
        };
        let Some(Value::Object(map)) = value.get("weight_map") else {
            return Err(invalid("there is no `weight_map` object".into()));
        };
        let dir = index.parent().unwrap_or(Path::new("."));

        // Shard file name → (position, first tensor placed there).
        let mut shard_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut shards: Vec<(String, String)> = Vec::new();
        let mut wanted: Vec<(String, usize)> = Vec::with_capacity(map.len());
        for (tensor, shard) in map {
            let Value::String(shard) = shard else {
                return Err(invalid(format!("the shard of `{tensor}` is not a file name")));
            };
            let plain = Path::new(shard).file_name().is_some_and(|f| f == shard.as_str());
            if !plain {
                return Err(invalid(format!(
                    "shard `{shard}` of `{tensor}` is not a plain file name in the same folder"
                )));
            }
            let pos = *shard_of.entry(shard.clone()).or_insert_with(|| {
                shards.push((shard.clone(), tensor.clone()));
                shards.len() - 1
            });
            wanted.push((tensor.clone(), pos));
        }
        if shards.is_empty() {
            return Err(invalid("`weight_map` is empty".into()));
        }

        let mut files = Vec::with_capacity(shards.len());
        for (shard, first_tensor) in &shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(CheckpointError::MissingShard {
                    index: index.to_path_buf(),
                    shard: path,
                    tensor: first_tensor.clone(),
                });
            }
            files.push(SafetensorsFile::open(&path)?);
        }
        let mut location = BTreeMap::new();
        for (tensor, pos) in wanted {
            let file = files
                .get(pos)
                .ok_or_else(|| invalid("internal shard numbering".into()))?;
            if !file.contains(&tensor) {
                return Err(file.missing(&tensor));
            }
            location.insert(tensor, pos);
        }
        Ok(Self {
            origin: index.to_path_buf(),
            files,
            location,
        })
    }

    /// The folder's single file or its index, whichever the weights came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The opened files (one, or every shard).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// The stored name of `name`: itself, or for `bert.X` the name `X` when
    /// only that exists (a bare BertModel, e.g. sentence-transformers, saves
    /// its tensors without the `bert.` prefix of BertForSequenceClassification).
    fn key<'n>(&self, name: &'n str) -> &'n str {
        match name.strip_prefix("bert.") {
            Some(bare) if !self.location.contains_key(name) && self.location.contains_key(bare) => bare,
            _ => name,
        }
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(self.key(name))
    }

    /// The file holding `name`, or a `MissingTensor` error with close names.
    pub fn file_of(&self, name: &str) -> Result<&SafetensorsFile, CheckpointError> {
        let name = self.key(name);
        self.location
            .get(name)
            .and_then(|&i| self.files.get(i))
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.origin.clone(),
                name: name.to_owned(),
                close: close_names(name, self.names()),
            })
    }

    /// Dtype and shape of a tensor, without reading it.
    pub fn meta(&self, name: &str) -> Result<&TensorMeta, CheckpointError> {
        let (file, name) = (self.file_of(name)?, self.key(name));
        file.meta(name).ok_or_else(|| file.missing(name))
    }

    /// Checks a tensor's shape without reading it.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<(), CheckpointError> {
        self.file_of(name)?.check_shape(self.key(name), expected)
    }

    /// A tensor as f32, any shape.
    pub fn f32(&self, name: &str) -> Result<ArrayD<f32>, CheckpointError> {
        self.file_of(name)?.f32(self.key(name))
    }

    /// A tensor as f32, checked against `expected`.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
        self.file_of(name)?.f32_shaped(self.key(name), expected)
    }

    /// [`Self::tensor`] decoded straight into `dst`.
    pub fn tensor_into(&self, name: &str, expected: &[usize], dst: &mut [f32]) -> Result<(), CheckpointError> {
        self.file_of(name)?.f32_into(self.key(name), expected, dst)
    }

    /// A matrix as f32, checked to be `[rows, cols]`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, CheckpointError> {
        self.file_of(name)?.matrix(self.key(name), rows, cols)
    }

    /// A vector as f32, checked to be `[len]`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>, CheckpointError> {
        self.file_of(name)?.vector(self.key(name), len)
    }
}

/// Files in `dir` that look like weights, for the hint of `NoWeights`.
fn weight_like_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            [".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"]
                .iter()
                .any(|ext| n.ends_with(ext))
        })
        .collect();
    found.sort();
    found
}
