//! GGUF reading, dequantization and conversion, checked against files this test
//! writes itself (a small GGUF writer below) with hand-encoded blocks whose values
//! are computed here from the ggml block layouts, against llama.cpp's q/k
//! permutation written forward (the library only implements its inverse), and
//! against the `safetensors` crate as an independent reader of the output. Malformed
//! files (every truncation, bad magic / version, out-of-bounds data, unknown types,
//! random byte flips) must give errors, never panics. The last test converts the
//! real SmolLM2-135M-Instruct GGUF when `models/` holds it (see
//! `scripts/fetch-smollm2.sh`); set `LAMDAC_GGUF_OUT=<dir>` to keep its output for
//! `scripts/check_smollm2.py`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use lamda_compiler::diag::Code;
use std::path::{Path, PathBuf};

use lamda_runtime::checkpoint::Checkpoint;
use lamda_runtime::checkpoint::gguf::{GgmlType, GgufError, GgufFile, MetaValue, convert_gguf, unpermute_rows};
use safetensors::SafeTensors;

// ---------------------------------------------------------------------------
// A minimal GGUF writer (little-endian, v3 by default), following the format
// description rather than the reader's code.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements.
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

fn s(x: &str) -> V {
    V::Str(x.to_owned())
}

impl V {
    fn type_id(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            V::U8(x) => out.push(*x),
            V::I8(x) => out.extend(x.to_le_bytes()),
            V::U16(x) => out.extend(x.to_le_bytes()),
            V::I16(x) => out.extend(x.to_le_bytes()),
            V::U32(x) => out.extend(x.to_le_bytes()),
            V::I32(x) => out.extend(x.to_le_bytes()),
            V::F32(x) => out.extend(x.to_le_bytes()),
            V::Bool(x) => out.push(u8::from(*x)),
            V::Str(x) => put_str(out, x),
            V::Arr(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            V::U64(x) => out.extend(x.to_le_bytes()),
            V::I64(x) => out.extend(x.to_le_bytes()),
            V::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
}

fn put_str(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

struct T {
    name: String,
    /// ggml ne, innermost first.
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

fn t(name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> T {
    T {
        name: name.to_owned(),
        dims: dims.to_vec(),
        type_id,
        data,
    }
}

/// A GGUF file image. `alignment` is used for the layout; it is written to the
/// metadata only if `kv` says so.
fn gguf_bytes(version: u32, kv: &[(&str, V)], tensors: &[T], alignment: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        out.extend(v.type_id().to_le_bytes());
        v.write(&mut out);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.type_id.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(alignment) * alignment;
    }
    while !out.len().is_multiple_of(alignment) {
        out.push(0);
    }
    let base = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(base + off, 0);
        out.extend(&t.data);
    }
    out
}

fn open(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(Path::new("test.gguf"), bytes)
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// IEEE half bit patterns of small dyadic numbers, with their values (by definition
// of binary16: sign, 5-bit exponent biased by 15, 10-bit fraction).
const F16_TABLE: [(u16, f64); 8] = [
    (0x3c00, 1.0),
    (0x3800, 0.5),
    (0x3400, 0.25),
    (0x2000, 0.0078125),
    (0x4000, 2.0),
    (0x3e00, 1.5),
    (0xbc00, -1.0),
    (0xb600, -0.375),
];

// ---------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------

#[test]
fn f32_f16_bf16_decode_known_bit_patterns() {
    let f32_vals = [1.5f32, -2.25, 0.0, -0.0, 3.4e38, 1e-40, 7.0, -1e-3, 42.0];
    let f16_bits: [(u16, f64); 9] = [
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x3555, 0.333_251_953_125),
        (0x7bff, 65504.0),
        (0x0001, 5.960_464_477_539_063e-8), // smallest subnormal, 2^-24
        (0x8000, -0.0),
        (0x3800, 0.5),
        (0x0400, 6.103_515_625e-5), // smallest normal, 2^-14
        (0xfbff, -65504.0),
    ];
    let bf16_bits: [(u16, f64); 9] = [
        (0x3f80, 1.0),
        (0xc040, -3.0),
        (0x4049, 3.140625),
        (0x0001, 9.183_549_615_799_121e-41), // f32 bits 0x0001_0000
        (0x8000, -0.0),
        (0x7f7f, 3.389_531_389_251_535e38),
        (0x3c00, 0.0078125),
        (0xbf00, -0.5),
        (0x4780, 65536.0),
    ];
    let raw16 = |bits: &[(u16, f64)]| bits.iter().flat_map(|b| b.0.to_le_bytes()).collect();
    let bytes = gguf_bytes(
        3,
        &[],
        &[
            t("a", &[3, 3], 0, f32_vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
            t("b", &[9], 1, raw16(&f16_bits)),
            t("c", &[1, 9, 1], 30, raw16(&bf16_bits)),
        ],
        32,
    );
    let f = open(bytes).unwrap();
    assert_eq!(f.dequantize("a").unwrap(), f32_vals);
    let b = f.dequantize("b").unwrap();
    for (got, (bits, want)) in b.iter().zip(f16_bits) {
        assert_eq!(got.to_bits(), (want as f32).to_bits(), "f16 {bits:#06x}");
    }
    let c = f.dequantize("c").unwrap();
    for (got, (bits, want)) in c.iter().zip(bf16_bits) {
        assert_eq!(got.to_bits(), (want as f32).to_bits(), "bf16 {bits:#06x}");
    }
    assert_eq!(f.tensor_info("c").unwrap().shape(), vec![1, 9, 1]);
    assert_eq!(f.tensor_info("c").unwrap().dtype, GgmlType::BF16);
}

/// Q8_0: 17 rows of 3 blocks (ne = [96, 17]); block = f16 d, 32 × i8.
#[test]
fn q8_0_blocks_decode_to_scale_times_int8() {
    let (cols, rows) = (96usize, 17usize);
    let mut rng = Rng(7);
    let mut data = Vec::new();
    let mut want = Vec::new();
    for b in 0..rows * cols / 32 {
        let (bits, d) = F16_TABLE[b % F16_TABLE.len()];
        data.extend(bits.to_le_bytes());
        for i in 0..32 {
            // Include both extremes of i8.
            let q: i8 = match (b, i) {
                (0, 0) => -128,
                (0, 1) => 127,
                _ => rng.below(256) as u8 as i8,
            };
            data.push(q as u8);
            want.push(d * f64::from(q));
        }
    }
    let f = open(gguf_bytes(3, &[], &[t("q", &[cols as u64, rows as u64], 8, data)], 32)).unwrap();
    let info = f.tensor_info("q").unwrap();
    assert_eq!(info.shape(), vec![rows, cols]);
    assert_eq!(info.byte_len(), rows * cols / 32 * 34);
    let got = f.dequantize("q").unwrap();
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(f64::from(*g), *w, "element {k}");
    }
}

/// Q4_1: 3 rows of 5 blocks; block = f16 d, f16 m, 16 bytes where byte j holds
/// element j (low nibble) and element j + 16 (high nibble); value = d * q + m.
#[test]
fn q4_1_blocks_decode_low_nibbles_first() {
    let (cols, rows) = (160usize, 3usize);
    let mut rng = Rng(11);
    let mut data = Vec::new();
    let mut want = Vec::new();
    for b in 0..rows * cols / 32 {
        let (dbits, d) = F16_TABLE[b % F16_TABLE.len()];
        let (mbits, m) = F16_TABLE[(b * 3 + 5) % F16_TABLE.len()];
        data.extend(dbits.to_le_bytes());
        data.extend(mbits.to_le_bytes());
        let nibbles: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
        for j in 0..16 {
            data.push(nibbles[j] | (nibbles[j + 16] << 4));
        }
        for q in nibbles {
            want.push(d * f64::from(q) + m);
        }
    }
    let f = open(gguf_bytes(3, &[], &[t("w", &[cols as u64, rows as u64], 3, data)], 32)).unwrap();
    let got = f.dequantize("w").unwrap();
    assert_eq!(got.len(), rows * cols);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(f64::from(*g), *w, "element {k}");
    }
    // One explicit block: d = 1, m = -1, byte 0 = 0x52 → element 0 is 2·1−1, element 16 is 5·1−1.
    let mut block = vec![0x00, 0x3c, 0x00, 0xbc, 0x52];
    block.extend([0u8; 15]);
    let f = open(gguf_bytes(3, &[], &[t("one", &[32], 3, block)], 32)).unwrap();
    let v = f.dequantize("one").unwrap();
    assert_eq!((v[0], v[16], v[1], v[31]), (1.0, 4.0, -1.0, -1.0));
}

#[test]
fn known_but_unsupported_types_fail_on_dequantize_only() {
    // Q6_K: 256 elements in 210 bytes; the reader knows its size.
    let f = open(gguf_bytes(3, &[], &[t("k", &[256, 2], 14, vec![0; 420])], 32)).unwrap();
    assert_eq!(f.tensor_info("k").unwrap().dtype, GgmlType::Q6_K);
    let e = f.dequantize("k").unwrap_err();
    assert_eq!(e.code(), Code::GgufUnsupportedDtype);
    assert!(matches!(e, GgufError::UnsupportedDtype { dtype: "Q6_K", .. }), "{e:?}");
    assert!(e.hint().contains("Q4_1"), "{}", e.hint());
    assert!(e.to_string().contains("test.gguf"));
    assert!(f.dequantize("missing").is_err());
}

#[test]
fn rows_that_are_not_whole_blocks_are_rejected() {
    let e = open(gguf_bytes(3, &[], &[t("q", &[48, 2], 8, vec![0; 102])], 32)).unwrap_err();
    assert_eq!(e.code(), Code::GgufCorrupt);
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("`q`"), "{e}");
}

// ---------------------------------------------------------------------------
// Header and metadata
// ---------------------------------------------------------------------------

#[test]
fn every_metadata_value_type_round_trips() {
    let kv = vec![
        ("u8", V::U8(200)),
        ("i8", V::I8(-100)),
        ("u16", V::U16(60000)),
        ("i16", V::I16(-30000)),
        ("u32", V::U32(4_000_000_000)),
        ("i32", V::I32(-2_000_000_000)),
        ("f32", V::F32(1e-5)),
        ("bool", V::Bool(true)),
        ("str", s("héllo ✓")),
        ("arr_i32", V::Arr(5, vec![V::I32(1), V::I32(-2), V::I32(3)])),
        ("arr_str", V::Arr(8, vec![s("a b"), s(""), s("Ġx")])),
        ("arr_empty", V::Arr(6, vec![])),
        (
            "arr_nested",
            V::Arr(9, vec![V::Arr(0, vec![V::U8(1), V::U8(2)]), V::Arr(0, vec![])]),
        ),
        ("u64", V::U64(u64::MAX)),
        ("i64", V::I64(i64::MIN)),
        ("f64", V::F64(-0.125)),
    ];
    let f = open(gguf_bytes(3, &kv, &[], 32)).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata().len(), kv.len());
    assert_eq!(f.get("u8"), Some(&MetaValue::U8(200)));
    assert_eq!(f.get("i8"), Some(&MetaValue::I8(-100)));
    assert_eq!(f.get("u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(f.get("i16"), Some(&MetaValue::I16(-30000)));
    assert_eq!(f.get("u32").unwrap().as_u64(), Some(4_000_000_000));
    assert_eq!(f.get("i32").unwrap().as_i64(), Some(-2_000_000_000));
    assert_eq!(f.get("i32").unwrap().as_u64(), None);
    assert_eq!(f.get("f32"), Some(&MetaValue::F32(1e-5)));
    assert_eq!(f.get("bool").unwrap().as_bool(), Some(true));
    assert_eq!(f.get("str").unwrap().as_str(), Some("héllo ✓"));
    let a = f.get("arr_i32").unwrap().as_array().unwrap();
    assert_eq!(a.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), [1, -2, 3]);
    let a = f.get("arr_str").unwrap().as_array().unwrap();
    assert_eq!(
        a.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        ["a b", "", "Ġx"]
    );
    assert_eq!(
        f.get("arr_empty"),
        Some(&MetaValue::Array {
            elem_type: 6,
            items: vec![]
        })
    );
    let n = f.get("arr_nested").unwrap().as_array().unwrap();
    assert_eq!(n[0].as_array().unwrap()[1], MetaValue::U8(2));
    assert_eq!(f.get("u64").unwrap().as_u64(), Some(u64::MAX));
    assert_eq!(f.get("i64").unwrap().as_i64(), Some(i64::MIN));
    assert_eq!(f.get("f64").unwrap().as_f64(), Some(-0.125));
    // Version 2 has the same layout.
    assert_eq!(open(gguf_bytes(2, &kv, &[], 32)).unwrap().version(), 2);
}

#[test]
fn general_alignment_moves_the_data_section() {
    let data: Vec<u8> = (0..5u32).flat_map(|i| (i as f32 + 0.5).to_le_bytes()).collect();
    let tensors = [t("x", &[5], 0, data.clone()), t("y", &[5], 0, data.clone())];
    for align in [32usize, 64, 256] {
        let kv = [("general.alignment", V::U32(align as u32))];
        let f = open(gguf_bytes(3, &kv, &tensors, align)).unwrap();
        assert_eq!(f.alignment(), align as u64);
        assert_eq!(f.data_offset() % align as u64, 0);
        assert_eq!(f.tensor_info("y").unwrap().offset, align as u64);
        assert_eq!(f.dequantize("y").unwrap(), [0.5, 1.5, 2.5, 3.5, 4.5]);
    }
    // Default 32 when absent.
    let f = open(gguf_bytes(3, &[], &tensors, 32)).unwrap();
    assert_eq!(f.alignment(), 32);
    // Not a power of two.
    let kv = [("general.alignment", V::U32(48))];
    let e = open(gguf_bytes(3, &kv, &tensors, 48)).unwrap_err();
    assert_eq!(e.code(), Code::GgufBadMetadata);
    assert!(matches!(e, GgufError::BadMetadata { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// Malformed files: errors, never panics
// ---------------------------------------------------------------------------

fn small_valid_file() -> Vec<u8> {
    let kv = [
        ("general.architecture", s("llama")),
        ("list", V::Arr(8, vec![s("ab"), s("c")])),
        ("f", V::F32(2.0)),
    ];
    let mut q4 = vec![0x00, 0x3c, 0x00, 0x00];
    q4.extend([0x21u8; 16]);
    gguf_bytes(
        3,
        &kv,
        &[
            t("a", &[4], 0, vec![0; 16]),
            t("b", &[32], 3, q4),
            t("c", &[2, 2], 1, vec![0, 0x3c, 0, 0x40, 0, 0xc0, 0, 0]),
        ],
        32,
    )
}

#[test]
fn every_truncation_is_an_error() {
    let full = small_valid_file();
    let f = open(full.clone()).unwrap();
    assert_eq!(f.dequantize("b").unwrap()[..2], [1.0, 1.0]);
    assert_eq!(f.dequantize("b").unwrap()[16], 2.0);
    for len in 0..full.len() {
        let Err(e) = open(full[..len].to_vec()) else {
            // Only padding after the last tensor's data may be cut without harm.
            let last_end = f.data_offset() as usize + 64 + 8;
            assert!(len >= last_end, "truncated to {len} bytes but opened");
            continue;
        };
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. } | GgufError::BadMagic { .. }
            ),
            "{len}: {e:?}"
        );
        assert!(!e.hint().is_empty());
    }
}

#[test]
fn bad_magic_and_versions_are_errors() {
    let mut b = small_valid_file();
    b[..4].copy_from_slice(b"GGML");
    let e = open(b).unwrap_err();
    assert_eq!(e.code(), Code::GgufBadMagic);
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e:?}");
    assert_eq!(e.code().as_str(), "lamda::gguf::bad_magic");
    for v in [0u32, 1, 4, 3 << 24] {
        let mut b = small_valid_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = open(b).unwrap_err();
        assert_eq!(e.code(), Code::GgufUnsupportedVersion);
        let GgufError::UnsupportedVersion {
            version, big_endian, ..
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(version, v);
        assert_eq!(big_endian, v == 3 << 24);
    }
    assert!(matches!(open(Vec::new()).unwrap_err(), GgufError::BadMagic { .. }));
}

#[test]
fn tensor_data_out_of_bounds_is_an_error() {
    // The header promises 64 floats, the file holds 4.
    let mut b = gguf_bytes(3, &[], &[t("a", &[4], 0, vec![0; 16])], 32);
    let b2 = {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        put_str(&mut out, "a");
        out.extend(1u32.to_le_bytes());
        out.extend(64u64.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.resize(64, 0);
        out.extend([0u8; 16]);
        out
    };
    let e = open(b2).unwrap_err();
    assert_eq!(e.code(), Code::GgufTensorOutOfBounds);
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { ref tensor, .. } if tensor == "a"),
        "{e:?}"
    );
    // An offset far past the end, and one that overflows.
    for off in [1u64 << 40, u64::MAX - 31] {
        let n = b.len();
        // The offset field is the 8 bytes just before the header padding.
        let header_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4 + 8;
        b[header_end - 8..header_end].copy_from_slice(&off.to_le_bytes());
        assert_eq!(b.len(), n);
        let e = open(b.clone()).unwrap_err();
        assert!(
            matches!(e, GgufError::TensorOutOfBounds { .. } | GgufError::Corrupt { .. }),
            "{e:?}"
        );
    }
}

#[test]
fn unknown_type_ids_and_hostile_counts_are_errors() {
    let e = open(gguf_bytes(3, &[], &[t("z", &[4], 99, vec![0; 16])], 32)).unwrap_err();
    assert_eq!(e.code(), Code::GgufUnknownDtype);
    assert!(matches!(e, GgufError::UnknownDtype { type_id: 99, .. }), "{e:?}");
    // Removed types 4, 5 are unknown too.
    assert!(open(gguf_bytes(3, &[], &[t("z", &[32], 4, vec![0; 20])], 32)).is_err());

    let header = |n_tensors: u64, n_kv: u64| {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(n_tensors.to_le_bytes());
        out.extend(n_kv.to_le_bytes());
        out
    };
    // Counts far beyond the file.
    let e = open(header(u64::MAX, 0)).unwrap_err();
    assert_eq!(e.code(), Code::GgufTruncated);
    assert!(matches!(e, GgufError::Truncated { .. }));
    assert!(matches!(
        open(header(0, 1 << 50)).unwrap_err(),
        GgufError::Truncated { .. }
    ));
    // A string of 2^63 bytes.
    let mut b = header(0, 1);
    b.extend((1u64 << 63).to_le_bytes());
    b.extend([0u8; 32]);
    assert!(matches!(open(b).unwrap_err(), GgufError::Truncated { .. }));
    // An array of 2^60 u32s.
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(open(b).unwrap_err(), GgufError::Truncated { .. }));
    // Unknown value type, bad bool byte, invalid UTF-8 key.
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(13u32.to_le_bytes());
    b.extend([0u8; 16]);
    assert!(matches!(open(b).unwrap_err(), GgufError::Corrupt { .. }));
    let mut b = header(0, 1);
    put_str(&mut b, "k");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert!(matches!(open(b).unwrap_err(), GgufError::Corrupt { .. }));
    let mut b = header(0, 1);
    b.extend(2u64.to_le_bytes());
    b.extend([0xff, 0xfe]);
    b.extend(7u32.to_le_bytes());
    b.push(1);
    assert!(matches!(open(b).unwrap_err(), GgufError::Corrupt { .. }));
    // Five dims; dims whose product overflows; a duplicate tensor name.
    let e = open(gguf_bytes(3, &[], &[t("a", &[1, 1, 1, 1, 1], 0, vec![0; 4])], 32)).unwrap_err();
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e:?}");
    let e = open(gguf_bytes(3, &[], &[t("a", &[1 << 40, 1 << 40], 0, vec![])], 32)).unwrap_err();
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e:?}");
    let e = open(gguf_bytes(
        3,
        &[],
        &[t("a", &[1], 0, vec![0; 4]), t("a", &[1], 0, vec![0; 4])],
        32,
    ))
    .unwrap_err();
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e:?}");
    // Duplicate metadata key.
    let e = open(gguf_bytes(3, &[("k", V::U8(1)), ("k", V::U8(2))], &[], 32)).unwrap_err();
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e:?}");
}

#[test]
fn random_byte_flips_never_panic() {
    let full = small_valid_file();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = match rng.below(3) {
                0 => rng.next() as u8,
                1 => 0xff,
                _ => b[i] ^ (1 << rng.below(8)),
            };
        }
        if let Ok(f) = open(b) {
            for t in f.tensors() {
                let _ = f.dequantize(&t.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// q/k un-permutation
// ---------------------------------------------------------------------------

/// llama.cpp's `convert_hf_to_gguf.py` permutation, written forward:
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output index order (h, j, t) reads input row (h, t, j).
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * 2 + t) * half + j;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_llama_cpp_permutation_on_known_rows() {
    // One head of width 6, one column: GGUF rows are HF rows [0, 3, 1, 4, 2, 5].
    let hf: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let gguf = llama_cpp_permute(&hf, 6, 1, 1);
    assert_eq!(gguf, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(unpermute_rows(&gguf, 6, 1, 1).unwrap(), hf);
    // Two heads of width 4, three columns.
    let hf: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let gguf = llama_cpp_permute(&hf, 8, 3, 2);
    assert_eq!(&gguf[3..6], &[6.0, 7.0, 8.0]); // GGUF row 1 = HF row 2
    assert_eq!(unpermute_rows(&gguf, 8, 3, 2).unwrap(), hf);
    // Awkward sizes.
    let mut rng = Rng(3);
    for (heads, hd, cols) in [(3, 2, 17), (9, 64, 5), (1, 10, 1), (5, 6, 3)] {
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|_| rng.next() as f32).collect();
        let gguf = llama_cpp_permute(&hf, rows, cols, heads);
        assert_eq!(unpermute_rows(&gguf, rows, cols, heads).unwrap(), hf);
    }
    assert!(unpermute_rows(&[0.0; 6], 6, 1, 2).is_none()); // head width 3 is odd
    assert!(unpermute_rows(&[0.0; 6], 4, 1, 1).is_none()); // length mismatch
    assert!(unpermute_rows(&[], 0, 1, 0).is_none());
}

// ---------------------------------------------------------------------------
// Conversion of a synthetic tiny Llama
// ---------------------------------------------------------------------------

struct Tiny {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    layers: usize,
}

const TINY: Tiny = Tiny {
    hidden: 8,
    heads: 2,
    kv_heads: 1,
    ffn: 12,
    layers: 2,
};

fn tiny_tokens() -> Vec<&'static str> {
    vec![
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "a",
        "b",
        "c",
        "Ġ",
        "1",
        "2",
        "ab",
        "Ġa",
        "Ġab",
    ]
}

/// A known HF-order matrix: value = seed + r * 0.01 + c * 0.0001.
fn known(rows: usize, cols: usize, seed: f32) -> Vec<f32> {
    (0..rows * cols)
        .map(|k| seed + (k / cols) as f32 * 0.01 + (k % cols) as f32 * 0.0001)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A converted tensor: Hugging Face name, shape, values.
type HfTensor = (String, Vec<usize>, Vec<f32>);

/// A tiny Llama GGUF (F32 weights, q/k permuted as llama.cpp does) and the HF
/// tensors it should convert back to.
fn tiny_gguf(with_output: bool, extra_kv: &[(&str, V)]) -> (Vec<u8>, Vec<HfTensor>) {
    let Tiny {
        hidden: d,
        heads,
        kv_heads,
        ffn,
        layers,
    } = TINY;
    let hd = d / heads;
    let vocab = tiny_tokens().len();
    let mut kv = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tiny")),
        ("llama.block_count", V::U32(layers as u32)),
        ("llama.context_length", V::U32(128)),
        ("llama.embedding_length", V::U32(d as u32)),
        ("llama.feed_forward_length", V::U32(ffn as u32)),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv_heads as u32)),
        ("llama.rope.freq_base", V::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.dimension_count", V::U32(hd as u32)),
        ("llama.vocab_size", V::U32(vocab as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            V::Arr(8, tiny_tokens().into_iter().map(s).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            V::Arr(5, (0..vocab).map(|i| V::I32(if i < 3 { 3 } else { 1 })).collect()),
        ),
        ("tokenizer.ggml.merges", V::Arr(8, vec![s("Ġ a"), s("a b"), s("Ġa b")])),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.padding_token_id", V::U32(2)),
    ];
    kv.extend(extra_kv.iter().cloned());
    let mut tensors = Vec::new();
    let mut hf = Vec::new();
    let mut seed = 0.0f32;
    let mut add = |gguf_name: String, hf_name: String, shape: Vec<usize>, permute: Option<usize>| {
        seed += 1.0;
        let rows = shape[0];
        let cols = shape.get(1).copied().unwrap_or(1);
        let w = known(rows, cols, seed);
        let stored = match permute {
            Some(h) => llama_cpp_permute(&w, rows, cols, h),
            None => w.clone(),
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
        tensors.push(t(&gguf_name, &dims, 0, f32_bytes(&stored)));
        hf.push((hf_name, shape, w));
    };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![vocab, d],
        None,
    );
    for i in 0..layers {
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        let h = |n: &str| format!("model.layers.{i}.{n}.weight");
        add(g("attn_norm"), h("input_layernorm"), vec![d], None);
        add(g("attn_q"), h("self_attn.q_proj"), vec![heads * hd, d], Some(heads));
        add(
            g("attn_k"),
            h("self_attn.k_proj"),
            vec![kv_heads * hd, d],
            Some(kv_heads),
        );
        add(g("attn_v"), h("self_attn.v_proj"), vec![kv_heads * hd, d], None);
        add(g("attn_output"), h("self_attn.o_proj"), vec![d, heads * hd], None);
        add(g("ffn_norm"), h("post_attention_layernorm"), vec![d], None);
        add(g("ffn_gate"), h("mlp.gate_proj"), vec![ffn, d], None);
        add(g("ffn_up"), h("mlp.up_proj"), vec![ffn, d], None);
        add(g("ffn_down"), h("mlp.down_proj"), vec![d, ffn], None);
    }
    add("output_norm.weight".into(), "model.norm.weight".into(), vec![d], None);
    if with_output {
        add("output.weight".into(), "lm_head.weight".into(), vec![vocab, d], None);
    }
    (gguf_bytes(3, &kv, &tensors, 32), hf)
}

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn tiny_llama_converts_to_a_checkpoint_with_hf_order_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, hf) = tiny_gguf(false, &[]);
    let src = write_tmp(tmp.path(), "tiny.gguf", &bytes);
    let out = tmp.path().join("out");
    let summary = convert_gguf(&src, &out).unwrap();
    assert_eq!(summary.tensors, hf.len());
    assert_eq!(summary.source_dtypes.get("F32"), Some(&hf.len()));
    assert!(summary.tokenizer_skipped.is_none());

    let c = &summary.config;
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size),
        (12, 8, 2, 12)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (2, 1, 4));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 1e5);
    assert_eq!(c.max_position_embeddings, 128);
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
        (Some(1), vec![2], Some(2))
    );

    // The safetensors crate as an independent reader.
    let raw = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&raw).unwrap();
    assert_eq!(st.len(), hf.len());
    for (name, shape, want) in &hf {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(view.shape(), shape.as_slice(), "{name}");
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(&got, want, "{name}");
    }
    assert!(st.tensor("lm_head.weight").is_err());
    let ckpt = Checkpoint::open(&out).unwrap();
    assert_eq!(ckpt.lm_head().unwrap().shape(), &[12, 8]);

    // The tokenizer: digits split one by one, GPT-2 byte level, merges, specials whole.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = |text: &str| tok.encode(text, true).unwrap().get_ids().to_vec();
    // "ab" → ab(9); " ab" → Ġab(11); "12" → 1(7), 2(8); "<|im_end|>" → 2; " a" → Ġa(10)
    assert_eq!(ids("ab ab12<|im_end|> a"), [9, 11, 7, 8, 2, 10]);
    assert_eq!(tok.decode(&[9, 11, 7, 8, 10], false).unwrap(), "ab ab12 a");
    assert_eq!(tok.get_vocab_size(true), 12);
}

#[test]
fn a_chat_template_is_written_to_tokenizer_config_and_used_by_generate() {
    let tmp = tempfile::tempdir().unwrap();
    // without a template there is no tokenizer_config.json
    let (bytes, _) = tiny_gguf(false, &[]);
    let plain = tmp.path().join("plain");
    convert_gguf(&write_tmp(tmp.path(), "plain.gguf", &bytes), &plain).unwrap();
    assert!(!plain.join("tokenizer_config.json").exists());

    let template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}";
    let (bytes, _) = tiny_gguf(false, &[("tokenizer.chat_template", s(template))]);
    let out = tmp.path().join("chat");
    convert_gguf(&write_tmp(tmp.path(), "chat.gguf", &bytes), &out).unwrap();
    let text = std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cfg["chat_template"], template);
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["add_bos_token"], false);

    // `generate --chat` renders it: <|im_start|> ab <|im_end|> <|im_start|>
    let g = lamda_runtime::generate::Generator::open(&out, None).unwrap();
    assert_eq!(g.prompt_ids("ab", true).unwrap(), [1, 9, 2, 1]);
    assert!(g.stop_ids.contains(&2), "{:?}", g.stop_ids);
    let r = g
        .generate(
            &[1, 9, 2, 1],
            5,
            lamda_runtime::generate::Sampling::default(),
            true,
            |_| Ok(()),
        )
        .unwrap();
    assert!(r.tokens.len() <= 5 && r.tokens.iter().all(|t| !g.stop_ids.contains(t)));
}

#[test]
fn untied_output_and_add_bos_are_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, hf) = tiny_gguf(true, &[("tokenizer.ggml.add_bos_token", V::Bool(true))]);
    let src = write_tmp(tmp.path(), "tiny.gguf", &bytes);
    let out = tmp.path().join("out");
    let summary = convert_gguf(&src, &out).unwrap();
    assert!(!summary.config.tie_word_embeddings);
    let ckpt = Checkpoint::open(&out).unwrap();
    let lm = ckpt.matrix("lm_head.weight").unwrap();
    let want = &hf.iter().find(|h| h.0 == "lm_head.weight").unwrap().2;
    assert_eq!(lm.as_slice().unwrap(), want.as_slice());
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode("ab", true).unwrap().get_ids(), [1, 9]);
    assert_eq!(tok.encode("ab", false).unwrap().get_ids(), [9]);
}

#[test]
fn conversion_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let convert = |extra: &[(&str, V)], name: &str| {
        let (bytes, _) = tiny_gguf(false, extra);
        let src = write_tmp(tmp.path(), name, &bytes);
        convert_gguf(&src, &tmp.path().join(format!("{name}.out")))
    };
    // Later duplicate keys are rejected by the reader, so override through new keys only.
    let e = convert(&[("llama.rope.scaling.type", s("yarn"))], "a.gguf").unwrap_err();
    assert_eq!(e.code(), Code::GgufUnsupported);
    assert!(matches!(e, GgufError::Unsupported { .. }), "{e:?}");
    let e = convert(&[("llama.expert_count", V::U32(8))], "b.gguf").unwrap_err();
    assert_eq!(e.code(), Code::GgufUnsupportedArchitecture);
    assert!(matches!(e, GgufError::UnsupportedArchitecture { .. }), "{e:?}");
    let e = convert(&[("llama.attention.key_length", V::U32(6))], "c.gguf").unwrap_err();
    assert!(
        matches!(e, GgufError::Unsupported { .. } | GgufError::WrongShape { .. }),
        "{e:?}"
    );

    // A tensor a Llama does not have, and a missing one.
    let (bytes, _) = tiny_gguf(false, &[]);
    let f = open(bytes).unwrap();
    let mut kv: Vec<(String, V)> = Vec::new();
    for (k, v) in f.metadata() {
        kv.push((k.clone(), meta_to_v(v)));
    }
    let mut tensors: Vec<T> = f
        .tensors()
        .iter()
        .map(|i| t(&i.name, &i.dims, 0, f.tensor_bytes(&i.name).unwrap().to_vec()))
        .collect();
    let kv_ref: Vec<(&str, V)> = kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    tensors.push(t("blk.0.attn_q.bias", &[8], 0, vec![0; 32]));
    let src = write_tmp(tmp.path(), "d.gguf", &gguf_bytes(3, &kv_ref, &tensors, 32));
    let e = convert_gguf(&src, &tmp.path().join("d")).unwrap_err();
    assert_eq!(e.code(), Code::GgufUnexpectedTensor);
    assert!(
        matches!(e, GgufError::UnexpectedTensor { ref name, .. } if name == "blk.0.attn_q.bias"),
        "{e:?}"
    );
    tensors.pop();
    tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let src = write_tmp(tmp.path(), "e.gguf", &gguf_bytes(3, &kv_ref, &tensors, 32));
    let e = convert_gguf(&src, &tmp.path().join("e")).unwrap_err();
    assert_eq!(e.code(), Code::GgufMissingTensor);
    assert!(
        matches!(e, GgufError::MissingTensor { ref name, .. } if name == "blk.1.ffn_up.weight"),
        "{e:?}"
    );
    assert!(!tmp.path().join("e").exists(), "nothing written on error");

    // Another architecture.
    let kv_arch: Vec<(&str, V)> = kv_ref
        .iter()
        .map(|(k, v)| {
            if *k == "general.architecture" {
                (*k, s("qwen2"))
            } else {
                (*k, v.clone())
            }
        })
        .collect();
    let src = write_tmp(tmp.path(), "f.gguf", &gguf_bytes(3, &kv_arch, &[], 32));
    let e = convert_gguf(&src, &tmp.path().join("f")).unwrap_err();
    assert!(matches!(e, GgufError::UnsupportedArchitecture { .. }), "{e:?}");

    // A SentencePiece tokenizer is skipped, not fatal.
    let kv_spm: Vec<(&str, V)> = kv_ref
        .iter()
        .map(|(k, v)| {
            if *k == "tokenizer.ggml.model" {
                (*k, s("llama"))
            } else {
                (*k, v.clone())
            }
        })
        .collect();
    let src = write_tmp(tmp.path(), "g.gguf", &gguf_bytes(3, &kv_spm, &tensors_all(&f), 32));
    let summary = convert_gguf(&src, &tmp.path().join("g")).unwrap();
    assert!(summary.tokenizer.is_none());
    assert!(summary.tokenizer_skipped.unwrap().contains("llama"));
    assert!(!tmp.path().join("g/tokenizer.json").exists());
}

fn tensors_all(f: &GgufFile) -> Vec<T> {
    f.tensors()
        .iter()
        .map(|i| t(&i.name, &i.dims, 0, f.tensor_bytes(&i.name).unwrap().to_vec()))
        .collect()
}

fn meta_to_v(v: &MetaValue) -> V {
    match v {
        MetaValue::U8(x) => V::U8(*x),
        MetaValue::I8(x) => V::I8(*x),
        MetaValue::U16(x) => V::U16(*x),
        MetaValue::I16(x) => V::I16(*x),
        MetaValue::U32(x) => V::U32(*x),
        MetaValue::I32(x) => V::I32(*x),
        MetaValue::F32(x) => V::F32(*x),
        MetaValue::Bool(x) => V::Bool(*x),
        MetaValue::String(x) => V::Str(x.clone()),
        MetaValue::Array { elem_type, items } => V::Arr(*elem_type, items.iter().map(meta_to_v).collect()),
        MetaValue::U64(x) => V::U64(*x),
        MetaValue::I64(x) => V::I64(*x),
        MetaValue::F64(x) => V::F64(*x),
    }
}

// ---------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct GGUF, when fetched
// ---------------------------------------------------------------------------

fn real_gguf() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        lamda_runtime::testkit::skip(format!("{} is absent (run scripts/fetch-smollm2.sh)", p.display()));
        None
    }
}

#[test]
fn real_smollm2_converts_with_matching_shapes_and_tokenizer() {
    let Some(src) = real_gguf() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("LAMDAC_GGUF_OUT").map_or_else(|| tmp.path().join("smollm2"), PathBuf::from);
    let start = std::time::Instant::now();
    let summary = convert_gguf(&src, &out).unwrap();
    eprintln!(
        "converted {} in {:.2?}: {} tensors, {} parameters, {:?}, {} bytes → {}",
        src.display(),
        start.elapsed(),
        summary.tensors,
        summary.parameters,
        summary.source_dtypes,
        summary.safetensors_bytes,
        out.display()
    );

    // Facts stated by ../shared/MODELS.md.
    let c = &summary.config;
    assert_eq!(c.num_hidden_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!((c.rope_theta, c.rms_norm_eps), (1e5, 1e-5));
    assert!(c.tie_word_embeddings);
    assert_eq!(summary.tensors, 30 * 9 + 2);
    assert_eq!(
        summary.source_dtypes,
        [("F32", 61), ("Q4_1", 210), ("Q8_0", 1)].into_iter().collect()
    );
    // 134.5M parameters, as MODELS.md says.
    assert_eq!(summary.parameters / 100_000, 1345);

    // Every tensor the config implies, with that shape (header check), and no others.
    let ckpt = Checkpoint::open(&out).unwrap();
    let expected = ckpt.config.expected_tensors();
    assert_eq!(ckpt.weights.names().count(), expected.len());
    for e in &expected {
        assert_eq!(ckpt.weights.meta(&e.name).unwrap().shape, e.shape, "{}", e.name);
    }

    // The embedding against an independent Q8_0 decode of one raw row.
    let gguf = GgufFile::open(&src).unwrap();
    let raw = gguf.tensor_bytes("token_embd.weight").unwrap();
    let row = 1000usize;
    let row_bytes = &raw[row * 18 * 34..(row + 1) * 18 * 34];
    let want: Vec<f32> = row_bytes
        .chunks_exact(34)
        .flat_map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            b[2..].iter().map(move |&q| d * f32::from(q as i8))
        })
        .collect();
    let embd = ckpt.matrix("model.embed_tokens.weight").unwrap();
    assert_eq!(embd.row(row).to_vec(), want);

    // The tokenizer: ids from the GGUF token list itself.
    let tokens = gguf.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    let id_of = |piece: &str| {
        tokens
            .iter()
            .position(|t| t.as_str() == Some(piece))
            .unwrap_or_else(|| panic!("{piece:?} not in the GGUF vocabulary")) as u32
    };
    let want: Vec<u32> = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
        .into_iter()
        .map(id_of)
        .collect();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok.encode("The capital of France is", true).unwrap();
    assert_eq!(enc.get_ids(), want.as_slice());
    eprintln!("\"The capital of France is\" → {want:?}");
    // Digits one by one; specials whole.
    let ids = tok.encode("<|im_start|>2024", false).unwrap().get_ids().to_vec();
    assert_eq!(
        ids,
        [id_of("<|im_start|>"), id_of("2"), id_of("0"), id_of("2"), id_of("4")]
    );
    assert_eq!(tok.decode(&want, false).unwrap(), "The capital of France is");
}

/// Issue 10.8: converting into a folder that cannot be created is an I/O
/// problem (`lamda::io`, exit 2 in the CLI), not an input error.
#[test]
fn converting_into_an_unwritable_folder_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, _) = tiny_gguf(false, &[]);
    let src = write_tmp(tmp.path(), "m.gguf", &bytes);
    let blocker = write_tmp(tmp.path(), "a-file", b"x");
    let e = convert_gguf(&src, &blocker.join("out")).unwrap_err();
    assert_eq!(e.code().as_str(), "lamda::io", "{e:?}");
}

/// The remaining conversion codes: an unreadable file, a missing metadata
/// key, and shapes that contradict the metadata.
#[test]
fn conversion_io_metadata_and_shape_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = convert_gguf(&tmp.path().join("missing.gguf"), &tmp.path().join("o")).unwrap_err();
    assert_eq!(e.code(), Code::GgufIo, "{e:?}");

    let (bytes, _) = tiny_gguf(false, &[]);
    let f = open(bytes).unwrap();
    let kv: Vec<(String, V)> = f.metadata().iter().map(|(k, v)| (k.clone(), meta_to_v(v))).collect();
    let tensors: Vec<T> = f
        .tensors()
        .iter()
        .map(|i| t(&i.name, &i.dims, 0, f.tensor_bytes(&i.name).unwrap().to_vec()))
        .collect();
    let without: Vec<(&str, V)> = kv
        .iter()
        .filter(|(k, _)| k != "llama.block_count")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let src = write_tmp(tmp.path(), "m.gguf", &gguf_bytes(3, &without, &tensors, 32));
    let e = convert_gguf(&src, &tmp.path().join("m")).unwrap_err();
    assert_eq!(e.code(), Code::GgufMissingMetadata, "{e:?}");

    let wider: Vec<(&str, V)> = kv
        .iter()
        .map(|(k, v)| {
            if k == "llama.feed_forward_length" {
                (k.as_str(), V::U32(1000))
            } else {
                (k.as_str(), v.clone())
            }
        })
        .collect();
    let src = write_tmp(tmp.path(), "w.gguf", &gguf_bytes(3, &wider, &tensors, 32));
    let e = convert_gguf(&src, &tmp.path().join("w")).unwrap_err();
    assert_eq!(e.code(), Code::GgufWrongShape, "{e:?}");
}
