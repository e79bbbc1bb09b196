//! Dequantization of ggml tensor data to f32: F32, F16, BF16, Q8_0 and Q4_1.
//!
//! Block layouts, as ggml's `ggml-common.h` defines them (all little-endian):
//!
//! - `Q8_0`: 32 values in 34 bytes: f16 scale `d`, then 32 × i8 `q`;
//!   value `i` = `d * q[i]`.
//! - `Q4_1`: 32 values in 20 bytes: f16 scale `d`, f16 min `m`, then 16 bytes of
//!   nibbles; byte `j` holds value `j` in its low nibble and value `j + 16` in its
//!   high nibble; value = `d * nibble + m`.
//! - `F16` / `BF16`: one 2-byte float per value; `F32`: one 4-byte float.
//!
//! The scales are widened to f32 before the multiply-add, as in ggml's reference
//! `dequantize_row_*` (which a C compiler may fuse into one FMA; the difference is
//! at most one rounding of a value already carrying 4- or 8-bit quantization error).
//! Large tensors are split across threads in runs of whole blocks.

use rayon::prelude::*;

use super::reader::GgmlType;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type is known but not implemented here.
    #[error("{0} is not dequantized by lamdac")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{numel} {dtype} values are not a whole number of {block}-value blocks")]
    PartialBlock {
        /// The type.
        dtype: GgmlType,
        /// Elements asked for.
        numel: usize,
        /// Elements per block.
        block: usize,
    },
    /// The byte count does not match the element count for this type.
    #[error("{numel} {dtype} values take {expected} bytes, the buffer has {found}")]
    Length {
        /// The type.
        dtype: GgmlType,
        /// Elements asked for.
        numel: usize,
        /// Bytes they take.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
}

/// Whether [`dequantize`] implements `dtype`.
pub fn supports(dtype: GgmlType) -> bool {
    matches!(
        dtype,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_1
    )
}

/// Elements per parallel task: whole blocks, and enough work to be worth a thread.
const CHUNK_ELEMS: usize = 32 * 2048;

/// Dequantizes `numel` values of `dtype` stored in `bytes` (exactly their size) to f32.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, DequantError> {
    if !supports(dtype) {
        return Err(DequantError::Unsupported(dtype));
    }
    // Block sizes are 1 or 32 and type sizes at most 34: these fit in usize.
    let block = dtype.block_size() as usize;
    let type_size = dtype.type_size() as usize;
    if !numel.is_multiple_of(block) {
        return Err(DequantError::PartialBlock { dtype, numel, block });
    }
    let expected = numel / block * type_size;
    if expected != bytes.len() {
        return Err(DequantError::Length {
            dtype,
            numel,
            expected,
            found: bytes.len(),
        });
    }
    let mut out = vec![0f32; numel];
    let kernel: fn(&[u8], &mut [f32]) = match dtype {
        GgmlType::F32 => f32_run,
        GgmlType::F16 => f16_run,
        GgmlType::BF16 => bf16_run,
        GgmlType::Q8_0 => q8_0_run,
        GgmlType::Q4_1 => q4_1_run,
        other => return Err(DequantError::Unsupported(other)),
    };
    let src_chunk = CHUNK_ELEMS / block * type_size;
    out.par_chunks_mut(CHUNK_ELEMS)
        .zip(bytes.par_chunks(src_chunk))
        .for_each(|(dst, src)| kernel(src, dst));
    Ok(out)
}

/// An IEEE half from two little-endian bytes, widened.
fn f16_le(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

fn f32_run(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn f16_run(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16_le(b[0], b[1]);
    }
}

fn bf16_run(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        // bf16 is the top half of an f32.
        *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

fn q8_0_run(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
        let (d, qs) = b.split_at(2);
        let d = f16_le(d[0], d[1]);
        for (yi, &q) in y.iter_mut().zip(qs) {
            *yi = d * f32::from(q as i8);
        }
    }
}

fn q4_1_run(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(20)) {
        let (dm, qs) = b.split_at(4);
        let d = f16_le(dm[0], dm[1]);
        let m = f16_le(dm[2], dm[3]);
        let (lo, hi) = y.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *l = f32::from(q & 0x0f) * d + m;
            *h = f32::from(q >> 4) * d + m;
        }
    }
}
