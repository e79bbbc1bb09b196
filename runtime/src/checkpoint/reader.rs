//! One safetensors file, memory-mapped, with typed reads that convert on the fly.
//!
//! The header is parsed and checked here rather than by the `safetensors` crate so
//! that every failure names the tensor and the byte counts involved: the header
//! must fit in the file, tensors must tile the data section exactly (no gaps, no
//! overlap, nothing after the last one), and each tensor's byte range must equal
//! its element count times its dtype size. All arithmetic is checked: no file
//! content can make this code panic. Tensors are decoded only when asked for, so
//! opening a multi-gigabyte shard costs one header read.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use serde_json::Value;

use super::error::{CheckpointError, close_names};

/// The largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// The element type of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 1-byte boolean.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// 8-bit float, E4M3.
    F8E4M3,
    /// 8-bit float, E5M2.
    F8E5M2,
    /// A dtype this reader does not know; its tensors can be listed but not read.
    Other(String),
}

impl Dtype {
    /// Parses the dtype string of a safetensors header (`"F32"`, `"BF16"`, ...).
    pub fn parse(s: &str) -> Self {
        match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "U16" => Self::U16,
            "I16" => Self::I16,
            "U32" => Self::U32,
            "I32" => Self::I32,
            "U64" => Self::U64,
            "I64" => Self::I64,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The header spelling of this dtype.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::U16 => "U16",
            Self::I16 => "I16",
            Self::U32 => "U32",
            Self::I32 => "I32",
            Self::U64 => "U64",
            Self::I64 => "I64",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F32 => "F32",
            Self::F64 => "F64",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
            Self::Other(s) => s,
        }
    }

    /// Bytes per element, or `None` for an unknown dtype.
    pub fn size(&self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E4M3 | Self::F8E5M2 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Other(_) => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the header says about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Element type in the file.
    pub dtype: Dtype,
    /// Shape, row-major.
    pub shape: Vec<usize>,
}

impl TensorMeta {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug)]
struct Entry {
    meta: TensorMeta,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
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

/// A safetensors file opened for reading. Cheap to open; tensors are decoded on request.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    tensors: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and memory-maps `path`, then checks its header.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
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
            // rewrites a safetensors file in place (its writer renames a finished temporary
            // over the destination), which is the same contract the `safetensors` and
            // `candle` loaders rely on.
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Parses a safetensors file held in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        Self::parse(path.to_path_buf(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, CheckpointError> {
        let file_len = bytes.len() as u64;
        let corrupt = |tensor: Option<&str>, reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            tensor: tensor.map(str::to_owned),
            reason,
        };
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(CheckpointError::Truncated {
                path: path.clone(),
                expected_len: 8,
                actual_len: file_len,
            });
        };
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(len_bytes);
        let header_len = u64::from_le_bytes(n8);
        if header_len > MAX_HEADER_LEN {
            // A real header this large does not exist; most likely not a safetensors file.
            return if header_len.saturating_add(8) > file_len {
                Err(corrupt(
                    None,
                    format!(
                        "the first 8 bytes give a header length of {header_len} bytes, larger \
                         than the whole file ({file_len} bytes)"
                    ),
                ))
            } else {
                Err(corrupt(
                    None,
                    format!("header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit"),
                ))
            };
        }
        let data_start = 8 + header_len; // cannot overflow: header_len <= MAX_HEADER_LEN
        if data_start > file_len {
            return Err(CheckpointError::Truncated {
                path: path.clone(),
                expected_len: data_start,
                actual_len: file_len,
            });
        }
        let header_bytes = bytes.get(8..data_start as usize).unwrap_or_default();
        let header_text =
            std::str::from_utf8(header_bytes).map_err(|e| corrupt(None, format!("the header is not UTF-8 ({e})")))?;
        let header: Value = serde_json::from_str(header_text).map_err(|e| {
            corrupt(
                None,
                format!(
                    "the header is not valid JSON (line {}, column {}): {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Value::Object(header) = header else {
            return Err(corrupt(None, "the header is not a JSON object".into()));
        };

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = parse_metadata(&value).map_err(|r| corrupt(None, r))?;
                continue;
            }
            let (meta, begin, end) = parse_entry(&value).map_err(|r| corrupt(Some(&name), r))?;
            if end < begin {
                return Err(corrupt(
                    Some(&name),
                    format!("tensor `{name}` has data_offsets [{begin}, {end}] that run backwards"),
                ));
            }
            if let Some(size) = meta.dtype.size() {
                let bytes_needed = meta
                    .shape
                    .iter()
                    .try_fold(size as u64, |acc, &d| acc.checked_mul(d as u64));
                let have = end - begin;
                if bytes_needed != Some(have) {
                    let needed = match bytes_needed {
                        Some(b) => format!("{b} bytes"),
                        None => "more bytes than fit in 64 bits".into(),
                    };
                    return Err(corrupt(
                        Some(&name),
                        format!(
                            "tensor `{name}` is {} {:?}, which takes {needed}, but its \
                             data_offsets span {have} bytes",
                            meta.dtype, meta.shape
                        ),
                    ));
                }
            }
            tensors.insert(name, (meta, begin, end));
        }

        // The tensors must tile the data section: sorted by offset, each starts where the
        // previous one ended, and the last ends at the end of the file.
        let mut order: Vec<(&String, u64, u64)> = tensors.iter().map(|(n, (_, b, e))| (n, *b, *e)).collect();
        order.sort_by(|a, b| (a.1, a.2, a.0).cmp(&(b.1, b.2, b.0)));
        let mut cursor = 0u64;
        for &(name, begin, end) in &order {
            if begin != cursor {
                let what = if begin < cursor {
                    "overlaps the previous tensor"
                } else {
                    "leaves a gap"
                };
                return Err(corrupt(
                    Some(name),
                    format!("tensor `{name}` starts at data byte {begin} and {what} (expected {cursor})"),
                ));
            }
            cursor = end;
        }
        let data_len = file_len - data_start;
        if cursor > data_len {
            return Err(CheckpointError::Truncated {
                path: path.clone(),
                expected_len: data_start.saturating_add(cursor),
                actual_len: file_len,
            });
        }
        if cursor < data_len {
            return Err(corrupt(
                None,
                format!(
                    "{} bytes after the last tensor that no header entry describes",
                    data_len - cursor
                ),
            ));
        }

        // Every range is now inside the file, whose length fits in usize (it is in memory).
        let mut entries = BTreeMap::new();
        for (name, (meta, begin, end)) in tensors {
            let start = usize::try_from(data_start + begin)
                .map_err(|_| corrupt(Some(&name), "offset does not fit in memory".into()))?;
            let stop = usize::try_from(data_start + end)
                .map_err(|_| corrupt(Some(&name), "offset does not fit in memory".into()))?;
            entries.insert(name, Entry { meta, start, end: stop });
        }
        Ok(Self {
            path,
            bytes,
            tensors: entries,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dtype and shape of a tensor, without reading it.
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name).map(|e| &e.meta)
    }

    /// The header's `__metadata__` string map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A `MissingTensor` error for `name`, with the closest names in this file.
    pub fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
            close: close_names(name, self.names()),
        }
    }

    fn entry(&self, name: &str) -> Result<(&Entry, &[u8]), CheckpointError> {
        let entry = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let raw = self
            .bytes
            .get(entry.start..entry.end)
            .ok_or_else(|| CheckpointError::Corrupt {
                path: self.path.clone(),
                tensor: Some(name.to_owned()),
                reason: "byte range outside the file".into(),
            })?;
        Ok((entry, raw))
    }

    /// Checks a tensor's shape against `expected` without reading its data.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<(), CheckpointError> {
        let meta = self.meta(name).ok_or_else(|| self.missing(name))?;
        if meta.shape != expected {
            return Err(CheckpointError::WrongShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: expected.to_vec(),
                found: meta.shape.clone(),
            });
        }
        Ok(())
    }

    /// A tensor as f32, whatever its shape; F32, BF16 and F16 are accepted.
    pub fn f32(&self, name: &str) -> Result<ArrayD<f32>, CheckpointError> {
        let (entry, raw) = self.entry(name)?;
        let data = match entry.meta.dtype {
            Dtype::F32 => decode::<4, f32>(raw, f32::from_le_bytes),
            Dtype::BF16 => decode::<2, f32>(raw, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F16 => decode::<2, f32>(raw, |b| half::f16::from_le_bytes(b).to_f32()),
            _ => {
                return Err(self.bad_dtype(name, &entry.meta.dtype, "f32 (from F32, BF16 or F16)"));
            }
        };
        self.shaped(name, &entry.meta.shape, data)
    }

    /// A tensor as f32, checked against the shape the caller expects.
    pub fn f32_shaped(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>, CheckpointError> {
        self.check_shape(name, expected)?;
        self.f32(name)
    }

    /// [`Self::f32_shaped`] decoded straight into `dst` (row-major, `expected`'s element count).
    pub fn f32_into(&self, name: &str, expected: &[usize], dst: &mut [f32]) -> Result<(), CheckpointError> {
        self.check_shape(name, expected)?;
        let (entry, raw) = self.entry(name)?;
        let whole = match entry.meta.dtype {
            Dtype::F32 => decode_into::<4, f32>(raw, dst, f32::from_le_bytes),
            Dtype::BF16 => decode_into::<2, f32>(raw, dst, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F16 => decode_into::<2, f32>(raw, dst, |b| half::f16::from_le_bytes(b).to_f32()),
            _ => return Err(self.bad_dtype(name, &entry.meta.dtype, "f32 (from F32, BF16 or F16)")),
        };
        if !whole {
            return Err(self.shape_bug(name));
        }
        Ok(())
    }

    /// A matrix as f32, checked to be `[rows, cols]`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, CheckpointError> {
        self.check_shape(name, &[rows, cols])?;
        let a = self.f32(name)?;
        a.into_dimensionality().map_err(|_| self.shape_bug(name))
    }

    /// A vector as f32, checked to be `[len]`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>, CheckpointError> {
        self.check_shape(name, &[len])?;
        let a = self.f32(name)?;
        a.into_dimensionality().map_err(|_| self.shape_bug(name))
    }

    /// A tensor as f64; F64, F32, BF16 and F16 are accepted (all widen exactly).
    pub fn f64(&self, name: &str) -> Result<ArrayD<f64>, CheckpointError> {
        let (entry, raw) = self.entry(name)?;
        let data = match entry.meta.dtype {
            Dtype::F64 => decode::<8, f64>(raw, f64::from_le_bytes),
            Dtype::F32 => decode::<4, f64>(raw, |b| f64::from(f32::from_le_bytes(b))),
            Dtype::BF16 => decode::<2, f64>(raw, |b| half::bf16::from_le_bytes(b).to_f64()),
            Dtype::F16 => decode::<2, f64>(raw, |b| half::f16::from_le_bytes(b).to_f64()),
            _ => {
                return Err(self.bad_dtype(name, &entry.meta.dtype, "f64 (from F64, F32, BF16 or F16)"));
            }
        };
        self.shaped(name, &entry.meta.shape, data)
    }

    /// A tensor as i64; I64, I32, U32, I16, U16, I8 and U8 are accepted (all widen exactly).
    pub fn i64(&self, name: &str) -> Result<ArrayD<i64>, CheckpointError> {
        let (entry, raw) = self.entry(name)?;
        let data = match entry.meta.dtype {
            Dtype::I64 => decode::<8, i64>(raw, i64::from_le_bytes),
            Dtype::I32 => decode::<4, i64>(raw, |b| i64::from(i32::from_le_bytes(b))),
            Dtype::U32 => decode::<4, i64>(raw, |b| i64::from(u32::from_le_bytes(b))),
            Dtype::I16 => decode::<2, i64>(raw, |b| i64::from(i16::from_le_bytes(b))),
            Dtype::U16 => decode::<2, i64>(raw, |b| i64::from(u16::from_le_bytes(b))),
            Dtype::I8 => decode::<1, i64>(raw, |b| i64::from(i8::from_le_bytes(b))),
            Dtype::U8 => decode::<1, i64>(raw, |b| i64::from(b[0])),
            _ => {
                return Err(self.bad_dtype(name, &entry.meta.dtype, "i64 (from a signed or 8-32 bit integer dtype)"));
            }
        };
        self.shaped(name, &entry.meta.shape, data)
    }

    fn shaped<T>(&self, name: &str, shape: &[usize], data: Vec<T>) -> Result<ArrayD<T>, CheckpointError> {
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|_| self.shape_bug(name))
    }

    fn bad_dtype(&self, name: &str, dtype: &Dtype, wanted: &'static str) -> CheckpointError {
        CheckpointError::UnsupportedDtype {
            path: self.path.clone(),
            name: name.to_owned(),
            dtype: dtype.to_string(),
            wanted,
        }
    }

    /// Unreachable once the header is validated; reported rather than panicking.
    fn shape_bug(&self, name: &str) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.clone(),
            tensor: Some(name.to_owned()),
            reason: "element count does not match the shape".into(),
        }
    }
}

/// Decodes little-endian elements of `N` bytes each.
fn decode<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

/// Decodes `raw` into `dst`; false (and nothing written) when the lengths differ.
fn decode_into<const N: usize, T>(raw: &[u8], dst: &mut [T], f: impl Fn([u8; N]) -> T) -> bool {
    if raw.len() != dst.len() * N {
        return false;
    }
    for (d, c) in dst.iter_mut().zip(raw.chunks_exact(N)) {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        *d = f(b);
    }
    true
}

fn parse_metadata(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(m) = value else {
        return Err("`__metadata__` is not an object".into());
    };
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(format!("`__metadata__.{k}` is not a string")),
        })
        .collect()
}

fn offset(v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("data offset {v} is not a non-negative integer"))
}

/// `{"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}`.
fn parse_entry(value: &Value) -> Result<(TensorMeta, u64, u64), String> {
    let Value::Object(m) = value else {
        return Err("its header entry is not an object".into());
    };
    let dtype = match m.get("dtype") {
        Some(Value::String(s)) => Dtype::parse(s),
        Some(_) => return Err("`dtype` is not a string".into()),
        None => return Err("its header entry has no `dtype`".into()),
    };
    let shape = match m.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| format!("shape entry {d} is not a non-negative integer"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("`shape` is not a list".into()),
        None => return Err("its header entry has no `shape`".into()),
    };
    let (begin, end) = match m.get("data_offsets").map(|v| v.as_array().map(Vec::as_slice)) {
        Some(Some([b, e])) => (offset(b)?, offset(e)?),
        Some(_) => return Err("`data_offsets` is not a list of two integers".into()),
        None => return Err("its header entry has no `data_offsets`".into()),
    };
    Ok((TensorMeta { dtype, shape }, begin, end))
}
