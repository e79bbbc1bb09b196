//! Export and merge of a trained LaMDA module as a standard LoRA update (SEMANTICS §9).
//!
//! With `W_res = W - alpha B0 S0 A` and `S0 = I_r`, a trained module computes
//! `W_res + alpha B S A = W + alpha (B S - B0 S0) A`: a rank-r update of the
//! ORIGINAL weight. [`lora_export_b`] gives its LoRA B (`lora_A = A` as is,
//! `lora_alpha = r`); [`merge`] writes the merged weight. Both evaluate in
//! float64 from the float32 tensors and round once. `S0` is always `I_r`
//! (SEMANTICS §3), so it is not an argument.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};

use super::LinalgError;
use super::dense::{MatF32, MatF32Ref, expect_dims, to_f64};

/// `alpha (B S - B0 S0)` with `S0 = I_r`: the `lora_B` of the export.
///
/// b: (d_out, r), s: (r, r), b0: (d_out, r); returns (d_out, r). At step 0
/// (`B = B0`, `S = I`) every entry is exactly 0.
pub fn lora_export_b(b: MatF32Ref<'_>, s: MatF32Ref<'_>, b0: MatF32Ref<'_>, alpha: f64) -> Result<MatF32, LinalgError> {
    let _clean = crate::ops::vector_state::ClearOnDrop::all();
    let delta = delta_b(b, s, b0)?;
    Ok(MatF32::round_from((delta * alpha).as_ref()))
}

/// The merged weight `W + alpha (B S - B0 S0) A` with `S0 = I_r`.
///
/// w: (d_out, d_in), a: (r, d_in), s: (r, r), b: (d_out, r), b0: (d_out, r);
/// returns (d_out, d_in).
pub fn merge(
    w: MatF32Ref<'_>,
    a: MatF32Ref<'_>,
    s: MatF32Ref<'_>,
    b: MatF32Ref<'_>,
    b0: MatF32Ref<'_>,
    alpha: f64,
) -> Result<MatF32, LinalgError> {
    let _clean = crate::ops::vector_state::ClearOnDrop::all();
    let (d_out, d_in, r) = (w.rows(), w.cols(), a.rows());
    expect_dims("a", a, r, d_in)?;
    expect_dims("b", b, d_out, r)?;
    let delta = delta_b(b, s, b0)?; // (d_out, r)
    let mut out = to_f64(w); // (d_out, d_in)
    let par = faer::get_global_parallelism();
    matmul(out.as_mut(), Accum::Add, delta.as_ref(), to_f64(a).as_ref(), alpha, par);
    Ok(MatF32::round_from(out.as_ref()))
}

/// `B S - B0` in float64. b: (d_out, r), s: (r, r), b0: (d_out, r).
fn delta_b(b: MatF32Ref<'_>, s: MatF32Ref<'_>, b0: MatF32Ref<'_>) -> Result<Mat<f64>, LinalgError> {
    let (d_out, r) = (b.rows(), b.cols());
    expect_dims("s", s, r, r)?;
    expect_dims("b0", b0, d_out, r)?;
    Ok(to_f64(b) * to_f64(s) - to_f64(b0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::linalg::init::lamda_init;
    use crate::linalg::rng::Xoshiro256StarStar;

    fn random(rng: &mut Xoshiro256StarStar, rows: usize, cols: usize, scale: f64) -> MatF32 {
        let data = (0..rows * cols)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
            .collect();
        MatF32::new("m", data, rows, cols).unwrap()
    }

    fn add(x: &MatF32, y: &MatF32) -> MatF32 {
        let data = x.data().iter().zip(y.data()).map(|(a, b)| a + b).collect();
        MatF32::new("sum", data, x.rows(), x.cols()).unwrap()
    }

    #[test]
    fn export_at_init_is_zero_and_merge_matches_the_trained_layer() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(21);
        for &(m, n, r, alpha) in &[(19, 7, 3, 1.0), (5, 33, 2, 2.5)] {
            let w = random(&mut rng, m, n, 1.0);
            let init = lamda_init(w.view(), r, alpha).unwrap();
            let zero = lora_export_b(init.b.view(), init.s.view(), init.b.view(), alpha).unwrap();
            assert!(zero.data().iter().all(|&x| x == 0.0));
            let merged0 = merge(
                w.view(),
                init.a.view(),
                init.s.view(),
                init.b.view(),
                init.b.view(),
                alpha,
            )
            .unwrap();
            assert_eq!(merged0, w);

            let b = add(&init.b, &random(&mut rng, m, r, 0.1));
            let s = add(&init.s, &random(&mut rng, r, r, 0.1));
            let merged = merge(w.view(), init.a.view(), s.view(), b.view(), init.b.view(), alpha).unwrap();
            let want = to_f64(init.w_res.view()) + to_f64(b.view()) * to_f64(s.view()) * to_f64(init.a.view()) * alpha;
            for i in 0..m {
                for j in 0..n {
                    assert!((f64::from(merged.at(i, j)) - want[(i, j)]).abs() < 1e-6);
                }
            }
            // the export is the same update: W + lora_B lora_A == merge
            let lora_b = lora_export_b(b.view(), s.view(), init.b.view(), alpha).unwrap();
            let via_lora = to_f64(w.view()) + to_f64(lora_b.view()) * to_f64(init.a.view());
            for i in 0..m {
                for j in 0..n {
                    assert!((f64::from(merged.at(i, j)) - via_lora[(i, j)]).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let b = MatF32::identity(3);
        let s = MatF32::identity(2);
        assert!(matches!(
            lora_export_b(b.view(), s.view(), b.view(), 1.0),
            Err(LinalgError::DimMismatch { what: "s", .. })
        ));
    }
}
