//! Errors of checkpoint reading and writing: each names the file, the tensor where
//! one is involved, and says what to do about it ([`CheckpointError::hint`]).

use lamda_compiler::diag::Code;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint folder, a safetensors
/// file or a config.json, or while writing a safetensors file.
///
/// The `Display` text states the fact; [`CheckpointError::hint`] is the help line
/// and [`CheckpointError::code`] a stable code for diagnostics.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// config.json (or the checkpoint folder) is missing, unreadable or unusable:
    /// the compiler's parser said so, with the same code `lamdac check` reports.
    #[error(transparent)]
    Config(#[from] crate::checkpoint::config::ConfigError),
    /// An operating-system error while reading a file.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config.json, an index.json) is not valid JSON.
    #[error("invalid JSON in `{}` at line {line}, column {column}: {message}", path.display())]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// The folder has neither model.safetensors nor model.safetensors.index.json.
    #[error("no weights in `{}`: neither model.safetensors nor model.safetensors.index.json", path.display())]
    NoWeights {
        /// The checkpoint folder.
        path: PathBuf,
        /// Weight-looking files that are there (other formats, shards without index).
        found: Vec<String>,
    },
    /// model.safetensors.index.json is valid JSON but not a valid index.
    #[error("`{}` is not a valid safetensors index: {reason}", path.display())]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The index maps a tensor to a shard file that does not exist.
    #[error("`{}` puts `{tensor}` in `{}`, which does not exist", index.display(), shard.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard.
        shard: PathBuf,
        /// The first tensor the index places in that shard.
        tensor: String,
    },
    /// A tensor is not in the checkpoint (or not in the shard the index names).
    #[error("tensor `{name}` not found in `{}`", path.display())]
    MissingTensor {
        /// The file or folder searched.
        path: PathBuf,
        /// The tensor asked for.
        name: String,
        /// Names that are there and close to `name`, closest first (at most 3).
        close: Vec<String>,
    },
    /// A tensor has a different shape from what the caller or the config expects.
    #[error("tensor `{name}` in `{}` has shape {found:?}, expected {expected:?}", path.display())]
    WrongShape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The shape that was expected.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a different number of dimensions from what the caller asks for.
    #[error("tensor `{name}` in `{}` has shape {found:?}, expected a {expected_rank}-D tensor", path.display())]
    WrongRank {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The number of dimensions asked for.
        expected_rank: usize,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype that cannot be converted to what was asked.
    #[error("tensor `{name}` in `{}` is {dtype}, cannot read it as {wanted}", path.display())]
    UnsupportedDtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dtype in the file.
        dtype: String,
        /// What the caller asked for, with the dtypes that convert to it.
        wanted: &'static str,
    },
    /// The file is shorter than its safetensors header says it is.
    #[error("`{}` is truncated: its header describes {expected_len} bytes, the file has {actual_len}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Length the header implies, in bytes.
        expected_len: u64,
        /// Length on disk, in bytes.
        actual_len: u64,
    },
    /// The safetensors header is malformed or contradicts itself.
    #[error("`{}` is not a valid safetensors file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The tensor whose entry is wrong, where one is.
        tensor: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Writing a safetensors file failed.
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        /// The destination file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An encoder where a causal language model is needed (generation).
    #[error("`{}` is a {family} encoder, not a causal language model", path.display())]
    NotCausalLm {
        /// The checkpoint folder.
        path: PathBuf,
        /// Its family.
        family: &'static str,
    },
    /// A tensor handed to the writer has a value count that does not match its shape.
    #[error("tensor `{name}` for `{}` has {len} values but shape {shape:?} holds {expected}", path.display())]
    WriteShape {
        /// The destination file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its declared shape.
        shape: Vec<usize>,
        /// The number of values given.
        len: usize,
        /// The number of values the shape holds.
        expected: usize,
    },
}

impl CheckpointError {
    /// A stable diagnostic code, `lamda::checkpoint::<kind>`.
    pub fn code(&self) -> Code {
        match self {
            Self::Config(e) => e.code(),
            Self::Io { .. } => Code::CheckpointIo,
            Self::InvalidJson { .. } => Code::CheckpointInvalidJson,
            Self::NoWeights { .. } => Code::CheckpointNoWeights,
            Self::InvalidIndex { .. } => Code::CheckpointInvalidIndex,
            Self::MissingShard { .. } => Code::CheckpointMissingShard,
            Self::MissingTensor { .. } => Code::CheckpointMissingTensor,
            Self::WrongShape { .. } => Code::CheckpointWrongShape,
            Self::WrongRank { .. } => Code::CheckpointWrongRank,
            Self::UnsupportedDtype { .. } => Code::CheckpointUnsupportedDtype,
            Self::Truncated { .. } => Code::CheckpointTruncated,
            Self::Corrupt { .. } => Code::CheckpointCorrupt,
            // a file that cannot be written is an I/O problem (exit 2), not bad input
            Self::Write { .. } => Code::Io,
            Self::WriteShape { .. } => Code::CheckpointWriteShape,
            Self::NotCausalLm { .. } => Code::CheckpointNotCausalLm,
        }
    }

    /// The help line: what the user can do about this error.
    pub fn hint(&self) -> String {
        match self {
            Self::Config(e) => e.hint(),
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "the file does not exist".into(),
                std::io::ErrorKind::PermissionDenied => "check the file's permissions".into(),
                _ => "check that the file is readable".into(),
            },
            Self::InvalidJson { .. } => "the file was probably cut off or edited by hand; \
                 restore it from the original checkpoint"
                .into(),
            Self::NoWeights { found, .. } => {
                let mut h = String::from(
                    "put the weights in model.safetensors, or in shards listed by \
                     model.safetensors.index.json",
                );
                if found.iter().any(|f| f.ends_with(".bin") || f.ends_with(".pt")) {
                    h.push_str("; PyTorch .bin/.pt weights must be converted to safetensors first");
                }
                if found.iter().any(|f| f.ends_with(".safetensors")) {
                    let _ = write!(h, " (found {}, but not under those names)", found.join(", "));
                } else if found.iter().any(|f| f.ends_with(".gguf")) {
                    h.push_str("; GGUF files are not read as checkpoints");
                }
                h
            }
            Self::InvalidIndex { .. } => "model.safetensors.index.json needs a `weight_map` object \
                 from tensor names to shard file names in the same folder"
                .into(),
            Self::MissingShard { .. } => {
                "a shard is missing: download every model-0000x-of-0000y.safetensors the index lists".into()
            }
            Self::MissingTensor { close, .. } => {
                if close.is_empty() {
                    "the checkpoint does not match its config.json, or the name is misspelled".into()
                } else {
                    format!(
                        "did you mean {}?",
                        close.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                    )
                }
            }
            Self::WrongShape { .. } => "config.json and the weights disagree: they are from different models, \
                 or the weight is transposed"
                .into(),
            Self::WrongRank { expected_rank, .. } => {
                format!("ask for a tensor with {expected_rank} dimension(s), or check the name")
            }
            Self::UnsupportedDtype { .. } => {
                "convert the checkpoint to float32, bfloat16 or float16 safetensors".into()
            }
            Self::Truncated { .. } => "the file was cut off (interrupted download or copy); fetch it again".into(),
            Self::Corrupt { .. } => "the file is damaged or not a safetensors file; fetch it again".into(),
            Self::Write { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "create the output folder first".into(),
                std::io::ErrorKind::PermissionDenied => "the output folder is not writable; choose another".into(),
                _ => "check free disk space and that the output folder is writable".into(),
            },
            Self::WriteShape { .. } => {
                "internal error: a tensor's data does not match its shape; please report it".into()
            }
            Self::NotCausalLm { .. } => "`generate` and the text `eval` need a causal LM (Llama family); \
                 evaluate an encoder's classifier with `lamdac eval` on labelled data"
                .into(),
        }
    }

    /// The file or folder the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Config(e) => e.path(),
            Self::Io { path, .. }
            | Self::InvalidJson { path, .. }
            | Self::NoWeights { path, .. }
            | Self::InvalidIndex { path, .. }
            | Self::MissingTensor { path, .. }
            | Self::WrongShape { path, .. }
            | Self::WrongRank { path, .. }
            | Self::UnsupportedDtype { path, .. }
            | Self::Truncated { path, .. }
            | Self::Corrupt { path, .. }
            | Self::Write { path, .. }
            | Self::WriteShape { path, .. }
            | Self::NotCausalLm { path, .. } => path,
            Self::MissingShard { index, .. } => index,
        }
    }
}

/// Up to three names from `candidates` closest to `name` (normalized Levenshtein
/// similarity at least 0.5), closest first.
pub(crate) fn close_names<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .map(|c| (strsim::normalized_levenshtein(name, c), c))
        .filter(|(s, _)| *s >= 0.5)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, c)| c.to_owned()).collect()
}
