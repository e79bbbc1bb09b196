//! Errors of GGUF reading and conversion: each names the file, the tensor or
//! metadata key where one is involved, and says what to do ([`GgufError::hint`]).

use lamda_compiler::diag::Code;
use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Everything that can go wrong while reading a GGUF file or converting it to a
/// Hugging Face checkpoint folder.
///
/// The `Display` text states the fact; [`GgufError::hint`] is the help line and
/// [`GgufError::code`] a stable code for diagnostics.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An operating-system error while reading the GGUF file or its folder.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the bytes `GGUF`.
    #[error("`{}` is not a GGUF file: it starts with {found:02x?}, not `GGUF`", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Its first bytes (up to 4).
        found: Vec<u8>,
    },
    /// A GGUF version this reader does not implement (it reads 2 and 3, little-endian).
    #[error("`{}` is GGUF version {version}{}, lamdac reads versions 2 and 3 (little-endian)",
        path.display(), if *big_endian { " (big-endian)" } else { "" })]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read.
        version: u32,
        /// Whether the version reads as a byte-swapped small number (a big-endian file).
        big_endian: bool,
    },
    /// The file ends before a field it declares.
    #[error("`{}` is truncated: {what} needs bytes {start}..{end}, the file has {file_len}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The field being read, in words.
        what: String,
        /// First byte of the field.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The header is malformed or contradicts itself.
    #[error("`{}` is not a valid GGUF file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's data lies (partly) outside the file.
    #[error("tensor `{tensor}` in `{}` lies at bytes {start}..{end}, past the end of the file ({file_len} bytes)", path.display())]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// First byte of its data, absolute.
        start: u64,
        /// One past its last byte, absolute.
        end: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A tensor type id that is not a ggml type (so its size cannot even be computed).
    #[error("tensor `{tensor}` in `{}` has unknown ggml type id {type_id}", path.display())]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type id as stored.
        type_id: u32,
    },
    /// A ggml type that exists but that lamdac does not dequantize.
    #[error("tensor `{tensor}` in `{}` is {dtype}, which lamdac cannot dequantize", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The ggml type name, e.g. `Q6_K`.
        dtype: &'static str,
    },
    /// A metadata key the conversion needs is absent.
    #[error("`{}` has no metadata key `{key}`", path.display())]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value of the wrong type, or an impossible value.
    #[error("metadata `{key}` in `{}` should be {expected}, found {found}", path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What was expected, in words.
        expected: String,
        /// What was found, in words.
        found: String,
    },
    /// The model is not a Llama (or uses a Llama variant lamdac does not implement).
    #[error("`{}` holds a `{found}` model; lamdac converts `llama` models only", path.display())]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture`, or the feature that is not supported.
        found: String,
    },
    /// A feature of the GGUF that the conversion does not implement.
    #[error("`{}`: {what} is not supported", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What, in words (e.g. the tokenizer model).
        what: String,
    },
    /// A tensor the Llama config implies is absent.
    #[error("`{}` has no tensor `{name}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
    },
    /// A tensor whose name the conversion does not know: it would be dropped silently.
    #[error("`{}` has a tensor `{name}` that a Llama checkpoint does not hold", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
    },
    /// A tensor whose shape contradicts the metadata.
    #[error("tensor `{name}` in `{}` has shape {found:?}, the metadata implies {expected:?} (outermost first)", path.display())]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// Shape implied by the metadata, outermost first.
        expected: Vec<usize>,
        /// Shape in the file, outermost first.
        found: Vec<usize>,
    },
    /// Writing an output file (config.json, tokenizer.json) failed.
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        /// The destination file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The generated tokenizer.json does not load in the `tokenizers` library.
    #[error("the tokenizer built from `{}` does not load: {message}", path.display())]
    Tokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// What `tokenizers` said.
        message: String,
    },
    /// Writing the safetensors file, or re-opening the converted folder, failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl GgufError {
    /// A stable diagnostic code, `lamda::gguf::<kind>`.
    pub fn code(&self) -> Code {
        match self {
            Self::Io { .. } => Code::GgufIo,
            Self::BadMagic { .. } => Code::GgufBadMagic,
            Self::UnsupportedVersion { .. } => Code::GgufUnsupportedVersion,
            Self::Truncated { .. } => Code::GgufTruncated,
            Self::Corrupt { .. } => Code::GgufCorrupt,
            Self::TensorOutOfBounds { .. } => Code::GgufTensorOutOfBounds,
            Self::UnknownDtype { .. } => Code::GgufUnknownDtype,
            Self::UnsupportedDtype { .. } => Code::GgufUnsupportedDtype,
            Self::MissingMetadata { .. } => Code::GgufMissingMetadata,
            Self::BadMetadata { .. } => Code::GgufBadMetadata,
            Self::UnsupportedArchitecture { .. } => Code::GgufUnsupportedArchitecture,
            Self::Unsupported { .. } => Code::GgufUnsupported,
            Self::MissingTensor { .. } => Code::GgufMissingTensor,
            Self::UnexpectedTensor { .. } => Code::GgufUnexpectedTensor,
            Self::WrongShape { .. } => Code::GgufWrongShape,
            Self::Write { .. } => Code::Io,
            Self::Tokenizer { .. } => Code::GgufTokenizer,
            Self::Checkpoint(e) => e.code(),
        }
    }

    /// The help line: what the user can do about this error.
    pub fn hint(&self) -> String {
        const REDOWNLOAD: &str = "the file is damaged or cut off; download it again and compare its sha256";
        match self {
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "the file does not exist".into(),
                std::io::ErrorKind::PermissionDenied => "check the file's permissions".into(),
                _ => "check that the file is readable".into(),
            },
            Self::BadMagic { .. } => {
                "pass a `.gguf` file (llama.cpp format); Hugging Face folders are read directly".into()
            }
            Self::UnsupportedVersion { big_endian, .. } => {
                if *big_endian {
                    "convert the file to little-endian with llama.cpp's gguf tools".into()
                } else {
                    "re-export the model with a current llama.cpp `convert_hf_to_gguf.py`".into()
                }
            }
            Self::Truncated { .. } | Self::TensorOutOfBounds { .. } | Self::Corrupt { .. } => REDOWNLOAD.into(),
            Self::UnknownDtype { .. } => format!(
                "the file was written by a newer llama.cpp, or is damaged; {}",
                supported_list()
            ),
            Self::UnsupportedDtype { .. } => format!(
                "{}; re-quantize the model to one of them with llama.cpp's `llama-quantize`",
                supported_list()
            ),
            Self::MissingMetadata { key, .. } => {
                format!("a llama.cpp Llama GGUF sets `{key}`; re-export it with `convert_hf_to_gguf.py`")
            }
            Self::BadMetadata { .. } => REDOWNLOAD.into(),
            Self::UnsupportedArchitecture { .. } => {
                "lamdac supports Llama-family models (`general.architecture = llama`): \
                 Llama 2, TinyLlama, SmolLM2, ..."
                    .into()
            }
            Self::Unsupported { .. } => "convert the original Hugging Face checkpoint instead, or use a GGUF of a \
                 GPT-2 byte-level BPE Llama (e.g. SmolLM2)"
                .into(),
            Self::MissingTensor { .. } | Self::UnexpectedTensor { .. } => {
                "the file is not a standard Llama export (llama.cpp names: token_embd, \
                 blk.N.attn_q, ..., output_norm, output)"
                    .into()
            }
            Self::WrongShape { .. } => {
                "the tensor shapes contradict the `llama.*` metadata; the file is damaged".into()
            }
            Self::Write { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => "choose an output folder you can write to".into(),
                _ => "check free disk space and that the output folder is writable".into(),
            },
            Self::Tokenizer { .. } => "the GGUF tokenizer metadata is unusual; report the model name".into(),
            Self::Checkpoint(e) => e.hint(),
        }
    }
}

fn supported_list() -> String {
    "lamdac dequantizes F32, F16, BF16, Q8_0 and Q4_1".into()
}
