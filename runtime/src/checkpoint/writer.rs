//! Atomic safetensors writer for adapters, optimizer state and training checkpoints.
//!
//! The file is written to `<path>.tmp` in the destination folder, flushed and
//! fsynced, then renamed over `<path>` and the folder fsynced: a crash leaves
//! either the old file or the new one, never a torn file under the real name.
//! Tensors are laid out in name order (the `safetensors` format puts no order
//! on them); the header carries `"format": "pt"` so `transformers` and PEFT
//! accept the file, plus whatever metadata the caller passes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, Data, Dimension};
use serde_json::{Map, Value, json};

use super::error::CheckpointError;

/// The values of a tensor to write, borrowed when possible.
#[derive(Debug, Clone)]
pub enum TensorData<'a> {
    /// 32-bit floats, stored as `F32`.
    F32(Cow<'a, [f32]>),
    /// 64-bit integers, stored as `I64`.
    I64(Cow<'a, [i64]>),
}

/// A tensor to write: a row-major shape and its values.
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub data: TensorData<'a>,
}

impl<'a> TensorRef<'a> {
    /// An f32 tensor from a shape and a slice.
    pub fn f32(shape: &[usize], data: &'a [f32]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: TensorData::F32(Cow::Borrowed(data)),
        }
    }

    /// An i64 tensor from a shape and a slice.
    pub fn i64(shape: &[usize], data: &'a [i64]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: TensorData::I64(Cow::Borrowed(data)),
        }
    }

    /// An f32 tensor from any ndarray (borrowed if in standard layout, copied otherwise).
    pub fn from_f32_array<S, D>(a: &'a ArrayBase<S, D>) -> Self
    where
        S: Data<Elem = f32>,
        D: Dimension,
    {
        let data = match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.iter().copied().collect()),
        };
        Self {
            shape: a.shape().to_vec(),
            data: TensorData::F32(data),
        }
    }

    /// An i64 tensor from any ndarray (borrowed if in standard layout, copied otherwise).
    pub fn from_i64_array<S, D>(a: &'a ArrayBase<S, D>) -> Self
    where
        S: Data<Elem = i64>,
        D: Dimension,
    {
        let data = match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.iter().copied().collect()),
        };
        Self {
            shape: a.shape().to_vec(),
            data: TensorData::I64(data),
        }
    }

    fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(d) => d.len(),
            TensorData::I64(d) => d.len(),
        }
    }

    fn dtype(&self) -> &'static str {
        match self.data {
            TensorData::F32(_) => "F32",
            TensorData::I64(_) => "I64",
        }
    }

    fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::F32(d) => d.len() * 4,
            TensorData::I64(d) => d.len() * 8,
        }
    }
}

/// The temporary path `write_safetensors` writes to before renaming: `<path>.tmp`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `tensors` to a safetensors file at `path`, atomically.
///
/// `metadata` goes into the header's `__metadata__` (with `format: pt` added unless
/// given). The destination folder must exist. On error the temporary file is removed
/// and an existing file at `path` is left untouched.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TensorRef<'_>>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    for (name, t) in tensors {
        let expected = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != t.len() {
            return Err(CheckpointError::WriteShape {
                path: path.to_path_buf(),
                name: name.clone(),
                shape: t.shape.clone(),
                len: t.len(),
                expected,
            });
        }
    }
    let header = header_bytes(tensors, metadata);
    let tmp = temporary_path(path);
    let result = write_file(&tmp, &header, tensors).and_then(|()| {
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    });
    result.map_err(|source| {
        // Best effort: the temporary is useless after a failure.
        let _ = std::fs::remove_file(&tmp);
        CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The 8-byte length, then the JSON header padded with spaces to a multiple of 8.
fn header_bytes(tensors: &BTreeMap<String, TensorRef<'_>>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = Map::new();
    let mut meta: Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    meta.entry("format").or_insert_with(|| Value::String("pt".into()));
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.byte_len();
        header.insert(
            name.clone(),
            json!({ "dtype": t.dtype(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out
}

fn write_file(tmp: &Path, header: &[u8], tensors: &BTreeMap<String, TensorRef<'_>>) -> std::io::Result<()> {
    let file = File::create(tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(header)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for t in tensors.values() {
        match &t.data {
            TensorData::F32(d) => {
                for chunk in d.chunks(1 << 14) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
            TensorData::I64(d) => {
                for chunk in d.chunks(1 << 13) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
        }
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Makes the rename durable by syncing the folder (a no-op where folders cannot be opened).
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = parent;
    Ok(())
}
