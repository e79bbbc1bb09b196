//! The SVD, LaMDA initialisation and LoRA export against the PyTorch golden vectors.
//!
//! Cases `lamda_qv_r4_linear03` and `lamda_all7_r2_never` (tests/golden, see
//! its README): for every LaMDA module, the singular values of W against
//! `sigma.<m>` (float64, |d| <= 1e-12 s_0), and A, S, B, W_res against
//! `init.<m>.*` with the golden tolerance (atol 1e-5, rtol 0: a wrong sign
//! shows up as an error near 1). Export and merge are checked on the trained
//! state the reference stores (`final.<m>.B`, `final.<m>.S`).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;

use lamda_runtime::linalg::{MatF32, MatF32Ref, lamda_init_from_svd, lora_export_b, merge, thin_svd};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The golden `init.*` tolerance of tests/golden/README.md.
const INIT_ATOL: f64 = 1e-5;

fn golden_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(case)
}

fn read(case: &str, file: &str) -> Vec<u8> {
    let path = golden_dir(case).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32_tensor(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (data, t.shape().to_vec())
}

fn f64_tensor(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// A float32 tensor of shape (rows, cols) as a matrix.
fn matrix(st: &SafeTensors<'_>, name: &str, rows: usize, cols: usize) -> MatF32 {
    let (data, shape) = f32_tensor(st, name);
    assert_eq!(shape, [rows, cols], "{name}");
    MatF32::new("golden", data, rows, cols).unwrap()
}

/// `max |got - want|`, asserted `<= atol` (rtol 0); returns the maximum.
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs())
        .fold(0.0, f64::max);
    assert!(err <= atol, "{what}: max |got - want| = {err:e} > {atol:e}");
    err
}

struct Module {
    name: String,
    d_out: usize,
    d_in: usize,
    rank: usize,
}

fn case_modules(case: &Value) -> Vec<Module> {
    case["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Module {
            name: m["name"].as_str().unwrap().to_owned(),
            d_out: m["d_out"].as_u64().unwrap() as usize,
            d_in: m["d_in"].as_u64().unwrap() as usize,
            rank: m["rank"].as_u64().unwrap() as usize,
        })
        .collect()
}

fn check_case(case_name: &str) {
    let case: Value = serde_json::from_slice(&read(case_name, "case.json")).unwrap();
    assert_eq!(case["method"], "lamda");
    let alpha = case["alpha"].as_f64().unwrap();
    let model_bytes = read(case_name, "model.safetensors");
    let model = SafeTensors::deserialize(&model_bytes).unwrap();
    let expected_bytes = read(case_name, "expected.safetensors");
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();

    let modules = case_modules(&case);
    assert!(!modules.is_empty());
    let mut worst = [0.0f64; 5]; // sigma (relative to s_0), A, S, B, W_res
    for m in &modules {
        let (d_out, d_in, r) = (m.d_out, m.d_in, m.rank);
        let w = matrix(&model, &format!("{}.weight", m.name), d_out, d_in);
        let svd = thin_svd(w.view()).unwrap();

        let sigma = f64_tensor(&expected, &format!("sigma.{}", m.name));
        assert_eq!(svd.s.len(), sigma.len(), "{}: k", m.name);
        let s_err = svd.s.iter().zip(&sigma).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / sigma[0];
        assert!(s_err <= 1e-12, "{}: singular values differ by {s_err:e} s_0", m.name);
        worst[0] = worst[0].max(s_err);

        let init = lamda_init_from_svd(w.view(), &svd, r, alpha).unwrap();
        let p = format!("init.{}", m.name);
        let want_a = matrix(&expected, &format!("{p}.A"), r, d_in);
        let want_s = matrix(&expected, &format!("{p}.S"), r, r);
        let want_b = matrix(&expected, &format!("{p}.B"), d_out, r);
        let want_w_res = matrix(&expected, &format!("{p}.W_res"), d_out, d_in);
        worst[1] = worst[1].max(assert_close(&format!("{p}.A"), init.a.data(), want_a.data(), INIT_ATOL));
        worst[2] = worst[2].max(assert_close(&format!("{p}.S"), init.s.data(), want_s.data(), INIT_ATOL));
        worst[3] = worst[3].max(assert_close(&format!("{p}.B"), init.b.data(), want_b.data(), INIT_ATOL));
        worst[4] = worst[4].max(assert_close(
            &format!("{p}.W_res"),
            init.w_res.data(),
            want_w_res.data(),
            INIT_ATOL,
        ));
    }
    println!(
        "{case_name}: {} modules; max error sigma {:.1e} s_0, A {:.1e}, S {:.1e}, B {:.1e}, W_res {:.1e}",
        modules.len(),
        worst[0],
        worst[1],
        worst[2],
        worst[3],
        worst[4]
    );
}

#[test]
fn lamda_qv_r4_linear03_svd_and_init() {
    check_case("lamda_qv_r4_linear03");
}

#[test]
fn lamda_all7_r2_never_svd_and_init() {
    check_case("lamda_all7_r2_never");
}

/// SEMANTICS §9 on the reference's own trained state: the export of the
/// initial state is exactly zero, and merging `final.<m>.{B,S}` gives
/// `W_res + alpha B S A` (float64) within 1e-6.
#[test]
fn lora_export_and_merge_on_the_trained_state() {
    for case_name in ["lamda_qv_r4_linear03", "lamda_all7_r2_never"] {
        let case: Value = serde_json::from_slice(&read(case_name, "case.json")).unwrap();
        let alpha = case["alpha"].as_f64().unwrap();
        let model_bytes = read(case_name, "model.safetensors");
        let model = SafeTensors::deserialize(&model_bytes).unwrap();
        let expected_bytes = read(case_name, "expected.safetensors");
        let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
        for m in case_modules(&case) {
            let (d_out, d_in, r) = (m.d_out, m.d_in, m.rank);
            let w = matrix(&model, &format!("{}.weight", m.name), d_out, d_in);
            let svd = thin_svd(w.view()).unwrap();
            let init = lamda_init_from_svd(w.view(), &svd, r, alpha).unwrap();

            let zero = lora_export_b(init.b.view(), init.s.view(), init.b.view(), alpha).unwrap();
            assert!(zero.data().iter().all(|&x| x == 0.0), "{}: lora_B at init", m.name);

            let b = matrix(&expected, &format!("final.{}.B", m.name), d_out, r);
            let s = matrix(&expected, &format!("final.{}.S", m.name), r, r);
            assert!(b != init.b && s != init.s, "{}: the trained state moved", m.name);
            let merged = merge(w.view(), init.a.view(), s.view(), b.view(), init.b.view(), alpha).unwrap();
            let want = w_res_plus_bsa(init.w_res.view(), b.view(), s.view(), init.a.view(), alpha);
            let err = merged
                .data()
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (f64::from(g) - w).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-6, "{}: merge differs by {err:e}", m.name);

            // the export is the same update: W + lora_B lora_A (lora_alpha / r = 1)
            let lora_b = lora_export_b(b.view(), s.view(), init.b.view(), alpha).unwrap();
            let ones = MatF32::identity(r);
            let via_lora = w_res_plus_bsa(w.view(), lora_b.view(), ones.view(), init.a.view(), 1.0);
            let err = merged
                .data()
                .iter()
                .zip(&via_lora)
                .map(|(&g, &w)| (f64::from(g) - w).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 1e-6,
                "{}: W + lora_B lora_A differs from the merge by {err:e}",
                m.name
            );
        }
    }
}

/// `base + alpha B S A` in float64, row-major (d_out, d_in); a plain triple
/// loop, independent of the library's faer products.
fn w_res_plus_bsa(base: MatF32Ref<'_>, b: MatF32Ref<'_>, s: MatF32Ref<'_>, a: MatF32Ref<'_>, alpha: f64) -> Vec<f64> {
    let (d_out, d_in, r) = (base.rows(), base.cols(), a.rows());
    let mut bs = vec![0.0f64; d_out * r];
    for i in 0..d_out {
        for c in 0..r {
            bs[i * r + c] = (0..r).map(|d| f64::from(b.at(i, d)) * f64::from(s.at(d, c))).sum();
        }
    }
    let mut out = vec![0.0f64; d_out * d_in];
    for i in 0..d_out {
        for j in 0..d_in {
            let bsa: f64 = (0..r).map(|c| bs[i * r + c] * f64::from(a.at(c, j))).sum();
            out[i * d_in + j] = f64::from(base.at(i, j)) + alpha * bsa;
        }
    }
    out
}
