//! One GGUF file (llama.cpp's format, versions 2 and 3), memory-mapped, its header
//! parsed and every tensor's byte range checked against the file.
//!
//! Layout (little-endian throughout): `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; the metadata key/values (a string key, a u32 value type, the
//! value; arrays are a u32 element type, a u64 count and the elements); the tensor
//! infos (name, u32 dim count, u64 dims innermost first, u32 ggml type, u64 offset
//! into the data section); then the data section, which starts at the next multiple
//! of `general.alignment` (32 when absent).
//!
//! Every count read from the file is checked against the bytes left before anything
//! is allocated for it, every slice is taken with `get`, and sizes are computed with
//! checked arithmetic: a damaged or hostile file gives a [`GgufError`], never a panic
//! or a huge allocation. Tensor data is not touched until asked for.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::dequant::{self, DequantError};
use super::error::GgufError;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the data-section alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are rejected (real files use none).
const MAX_ARRAY_DEPTH: usize = 4;

/// A ggml tensor type: how the elements of a tensor are stored.
///
/// Block types store `block_size` elements in `type_size` bytes; plain types have a
/// block size of 1. Only some are dequantized ([`GgmlType::dequantizable`]); the
/// others are known so their sizes can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs, non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, name, elements per block, bytes per block), from ggml's type traits.
const GGML_TYPES: [(GgmlType, u32, &str, u64, u64); 32] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// The type with ggml id `id`, if it is one this reader knows.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn row(self) -> (GgmlType, u32, &'static str, u64, u64) {
        // Every variant has a row; the fallback is never taken.
        GGML_TYPES
            .iter()
            .copied()
            .find(|t| t.0 == self)
            .unwrap_or((GgmlType::F32, 0, "F32", 1, 4))
    }

    /// The ggml type id stored in GGUF files.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The ggml name, e.g. `Q4_1`.
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (1 for plain types, 32 or 256 for quantized ones).
    pub fn block_size(self) -> u64 {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.row().4
    }

    /// Whether [`GgufFile::dequantize`] converts this type to f32.
    pub fn dequantizable(self) -> bool {
        dequant::supports(self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value. Integers keep their stored width so nothing is lost.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// `elem_type` is the GGUF value type id of the elements (kept for empty arrays).
    Array {
        elem_type: u32,
        items: Vec<MetaValue>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The value as a u64 if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an i64 if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as an f64 if it is a float (or an integer, converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    /// The value in words, for messages: `u32 7`, `string "gpt2"`, `array of 3 i32`.
    pub fn describe(&self) -> String {
        match self {
            Self::Array { .. } => self.type_name(),
            Self::String(s) if s.len() > 60 => format!("a string of {} bytes", s.len()),
            Self::String(s) => format!("string {s:?}"),
            Self::U8(v) => format!("u8 {v}"),
            Self::I8(v) => format!("i8 {v}"),
            Self::U16(v) => format!("u16 {v}"),
            Self::I16(v) => format!("i16 {v}"),
            Self::U32(v) => format!("u32 {v}"),
            Self::I32(v) => format!("i32 {v}"),
            Self::F32(v) => format!("f32 {v}"),
            Self::Bool(v) => format!("bool {v}"),
            Self::U64(v) => format!("u64 {v}"),
            Self::I64(v) => format!("i64 {v}"),
            Self::F64(v) => format!("f64 {v}"),
        }
    }

    /// The type in words, for messages: `u32`, `string`, `array of 3 i32`.
    pub fn type_name(&self) -> String {
        match self {
            Self::Array { elem_type, items } => {
                format!("array of {} {}", items.len(), value_type_name(*elem_type))
            }
            Self::U8(_) => "u8".into(),
            Self::I8(_) => "i8".into(),
            Self::U16(_) => "u16".into(),
            Self::I16(_) => "i16".into(),
            Self::U32(_) => "u32".into(),
            Self::I32(_) => "i32".into(),
            Self::F32(_) => "f32".into(),
            Self::Bool(_) => "bool".into(),
            Self::String(_) => "string".into(),
            Self::U64(_) => "u64".into(),
            Self::I64(_) => "i64".into(),
            Self::F64(_) => "f64".into(),
        }
    }
}

/// The name of a GGUF value type id.
fn value_type_name(t: u32) -> &'static str {
    match t {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// The smallest encoding of one value of a type, in bytes (to bound array counts).
fn min_value_len(t: u32) -> u64 {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string or an array starts with a u64 length; an array also has its u32 type.
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// llama.cpp name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dims `ne`, innermost first: a `(d_out, d_in)` matrix has `[d_in, d_out]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Absolute byte range of the data in the file (checked to lie inside it).
    start: usize,
    end: usize,
}

impl GgufTensorInfo {
    /// The row-major shape, outermost first (`dims` reversed): `(d_out, d_in)` for a
    /// matrix, the shape safetensors and PyTorch use.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim fits in usize: the product was checked against the file length.
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Bytes of stored data.
    pub fn byte_len(&self) -> usize {
        self.end - self.start
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A GGUF file opened for reading: header and metadata parsed, tensor ranges checked.
/// Tensor data is read (and dequantized) only on request.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    /// In file order.
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, then parses and checks its header.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len < 4096 {
            // Too small to be worth a mapping (and empty files cannot be mapped everywhere).
            Bytes::Owned(std::fs::read(path).map_err(io)?)
        } else {
            // SAFETY: the map is read-only and private to this process. Another process
            // truncating the file while it is mapped would fault on access; lamdac never
            // writes GGUF files, and model files are not rewritten in place (downloads
            // are renamed into place), the contract llama.cpp's own mmap loader relies on.
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Parses a GGUF file held in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(path.to_path_buf(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, GgufError> {
        let header = Header::parse(&path, &bytes)?;
        let mut by_name = HashMap::with_capacity(header.tensors.len());
        for (i, t) in header.tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(GgufError::Corrupt {
                    path,
                    reason: format!("tensor `{}` is listed twice", t.name),
                });
            }
        }
        Ok(Self {
            path,
            bytes,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data-section alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Every metadata key/value.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Every tensor's header entry, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The header entry of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    fn info_or_err(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })
    }

    /// The stored bytes of a tensor, as they are in the file.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.info_or_err(name)?;
        self.bytes
            .get(info.start..info.end)
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                path: self.path.clone(),
                tensor: name.to_owned(),
                start: info.start as u64,
                end: info.end as u64,
                file_len: self.bytes.len() as u64,
            })
    }

    /// A tensor dequantized to f32, row-major with [`GgufTensorInfo::shape`]
    /// (`numel` values). F32, F16, BF16, Q8_0 and Q4_1 are supported.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.info_or_err(name)?;
        let bytes = self.tensor_bytes(name)?;
        dequant::dequantize(info.dtype, bytes, info.numel()).map_err(|e| match e {
            DequantError::Unsupported(t) => GgufError::UnsupportedDtype {
                path: self.path.clone(),
                tensor: name.to_owned(),
                dtype: t.name(),
            },
            e @ (DequantError::Length { .. } | DequantError::PartialBlock { .. }) => GgufError::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            },
        })
    }
}

/// The parsed header, before the tensor-name index is built.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
}

impl Header {
    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { path, bytes, pos: 0 };
        let magic = bytes.get(..4).unwrap_or(bytes);
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic.to_vec(),
            });
        }
        c.pos = 4;
        let version = c.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                // A big-endian file's small version reads byte-swapped.
                big_endian: version != 0 && version.swap_bytes() <= 0xffff,
            });
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes and
        // each tensor info 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
        c.check_count(n_kv, 13, "metadata entries")?;
        c.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("the key of metadata entry {i}"))?;
            let vtype = c.u32(&format!("the value type of `{key}`"))?;
            let value = c.value(vtype, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.corrupt(format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        path: path.to_path_buf(),
                        key: ALIGNMENT_KEY.into(),
                        expected: "a power of two".into(),
                        found: v.describe(),
                    });
                }
            },
        };

        // Usize capacity bounded by check_count above.
        let mut raw = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}"))?;
            let n_dims = c.u32(&format!("the dim count of `{name}`"))?;
            let n_dims = usize::try_from(n_dims).unwrap_or(usize::MAX);
            if n_dims > MAX_DIMS {
                return Err(c.corrupt(format!(
                    "tensor `{name}` has {n_dims} dims, ggml allows at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                dims.push(c.u64(&format!("dim {d} of `{name}`"))?);
            }
            let type_id = c.u32(&format!("the type of `{name}`"))?;
            let offset = c.u64(&format!("the offset of `{name}`"))?;
            let Some(dtype) = GgmlType::from_id(type_id) else {
                return Err(GgufError::UnknownDtype {
                    path: path.to_path_buf(),
                    tensor: name,
                    type_id,
                });
            };
            raw.push((name, dims, dtype, offset));
        }

        let data_offset =
            align_up(c.pos as u64, alignment).ok_or_else(|| c.corrupt("the data section starts past 2^64".into()))?;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, dtype, offset) in raw {
            let byte_len = tensor_byte_len(&dims, dtype)
                .map_err(|reason| c.corrupt(format!("tensor `{name}` with dims {dims:?} ({dtype}): {reason}")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(c.corrupt(format!(
                    "tensor `{name}` starts at data offset {offset}, not a multiple of the \
                     alignment {alignment}"
                )));
            }
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(byte_len));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(c.corrupt(format!("tensor `{name}` ends past 2^64")));
            };
            if end > file_len {
                return Err(GgufError::TensorOutOfBounds {
                    path: path.to_path_buf(),
                    tensor: name,
                    start,
                    end,
                    file_len,
                });
            }
            // Both are at most the file length, which is a usize.
            let (start, end) = (start as usize, end as usize);
            tensors.push(GgufTensorInfo {
                name,
                dims,
                dtype,
                offset,
                start,
                end,
            });
        }
        Ok(Self {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }
}

/// The stored size of a tensor, or why it has none: the element count overflows, or
/// the rows (`dims[0]`) are not a whole number of blocks.
fn tensor_byte_len(dims: &[u64], dtype: GgmlType) -> Result<u64, String> {
    let numel = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or("the element count overflows")?;
    let block = dtype.block_size();
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(format!(
            "rows of {row} elements are not a whole number of {block}-element blocks"
        ));
    }
    (numel / block)
        .checked_mul(dtype.type_size())
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| "the byte size overflows".into())
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

/// Reads little-endian fields from the header, every read bounds-checked.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn corrupt(&self, reason: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], GgufError> {
        let start = self.pos;
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .and_then(|end| self.bytes.get(start..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_owned(),
                start: start as u64,
                end: (start as u64).saturating_add(n),
                file_len: self.bytes.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_len` bytes fit in the rest of the file.
    fn check_count(&self, count: u64, min_len: u64, what: &str) -> Result<(), GgufError> {
        let left = (self.bytes.len() - self.pos.min(self.bytes.len())) as u64;
        if count.saturating_mul(min_len) > left {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{count} {what}"),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(count.saturating_mul(min_len)),
                file_len: self.bytes.len() as u64,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(&format!("the length of {what}"))?;
        let start = self.pos;
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.corrupt(format!("{what} (at byte {start}) is not UTF-8: {e}"))),
        }
    }

    /// One metadata value of GGUF value type `vtype`; `key` names it in messages.
    fn value(&mut self, vtype: u32, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let what = || format!("the value of `{key}`");
        Ok(match vtype {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(&what())?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what())?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())? {
                [0] => MetaValue::Bool(false),
                [1] => MetaValue::Bool(true),
                [b] => return Err(self.corrupt(format!("`{key}` holds the bool byte {b}"))),
            },
            8 => MetaValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!("`{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem_type = self.u32(&format!("the element type of `{key}`"))?;
                if elem_type > 12 {
                    return Err(self.corrupt(format!("`{key}` is an array of unknown value type {elem_type}")));
                }
                let count = self.u64(&format!("the length of `{key}`"))?;
                self.check_count(count, min_value_len(elem_type), &format!("items of `{key}`"))?;
                let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array { elem_type, items }
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what())?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(self.corrupt(format!("`{key}` has unknown value type {other}")));
            }
        })
    }
}
