//! Adapter initialisation: LaMDA (SEMANTICS §3), PiSSA-style, and kaiming-uniform LoRA A (§5).
//!
//! Every product is evaluated in float64 from float32 operands and rounded to
//! float32 once (SEMANTICS §1). The singular vectors come from
//! [`thin_svd`], signs fixed by SEMANTICS §2.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};

use super::LinalgError;
use super::dense::{MatF32, MatF32Ref, expect_dims, expect_finite_nonempty, to_f64};
use super::rng::Xoshiro256StarStar;
use super::svd::{ThinSvd, thin_svd};

/// The initial tensors of one LaMDA module (SEMANTICS §3).
#[derive(Debug, Clone, PartialEq)]
pub struct LamdaInit {
    /// PMA, `V[:, :r]^T`, frozen: (r, d_in).
    pub a: MatF32,
    /// LDA, `I_r`: (r, r).
    pub s: MatF32,
    /// PMB, `U[:, :r]`; also `B0` for export: (d_out, r).
    pub b: MatF32,
    /// Residual base weight `W - alpha B S A`, frozen: (d_out, d_in).
    pub w_res: MatF32,
}

/// The initial tensors of one PiSSA-style module.
#[derive(Debug, Clone, PartialEq)]
pub struct PissaInit {
    /// `sqrt(s_r) V_r^T`, i.e. row c is `sqrt(s_c) v_c^T`: (r, d_in).
    pub a: MatF32,
    /// `U_r sqrt(s_r)`, i.e. column c is `sqrt(s_c) u_c`: (d_out, r).
    pub b: MatF32,
    /// Residual base weight `W - B A`: (d_out, d_in).
    pub w_res: MatF32,
}

/// LaMDA initialisation of a weight: SVD, then [`lamda_init_from_svd`].
///
/// w: (d_out, d_in); `1 <= r <= min(d_out, d_in)`; alpha: the LaMDA scale
/// (not divided by r).
pub fn lamda_init(w: MatF32Ref<'_>, r: usize, alpha: f64) -> Result<LamdaInit, LinalgError> {
    let svd = thin_svd(w)?;
    lamda_init_from_svd(w, &svd, r, alpha)
}

/// LaMDA initialisation from a precomputed SVD of `w` (SEMANTICS §3):
/// `A = V[:, :r]^T`, `S = I_r`, `B = U[:, :r]` rounded to float32, and
/// `W_res = W - alpha B S A` in float64 from the float32 W, A, S, B, rounded once.
///
/// w: (d_out, d_in); svd: the [`thin_svd`] of w.
pub fn lamda_init_from_svd(w: MatF32Ref<'_>, svd: &ThinSvd, r: usize, alpha: f64) -> Result<LamdaInit, LinalgError> {
    check_svd(w, svd, r)?;
    let (d_out, d_in) = (w.rows(), w.cols());
    let a = MatF32::round_from(svd.v.as_ref().get(.., ..r).transpose());
    let b = MatF32::round_from(svd.u.as_ref().get(..d_out, ..r));
    let s = MatF32::identity(r);
    debug_assert_eq!((a.rows(), a.cols()), (r, d_in));
    let w_res = lamda_residual(w, a.view(), s.view(), b.view(), alpha)?;
    Ok(LamdaInit { a, s, b, w_res })
}

/// `W - alpha B S A`, in float64 from the float32 operands, rounded once.
///
/// w: (d_out, d_in), a: (r, d_in), s: (r, r), b: (d_out, r).
pub fn lamda_residual(
    w: MatF32Ref<'_>,
    a: MatF32Ref<'_>,
    s: MatF32Ref<'_>,
    b: MatF32Ref<'_>,
    alpha: f64,
) -> Result<MatF32, LinalgError> {
    let _clean = crate::ops::vector_state::ClearOnDrop::all();
    let (d_out, d_in, r) = (w.rows(), w.cols(), a.rows());
    expect_dims("a", a, r, d_in)?;
    expect_dims("s", s, r, r)?;
    expect_dims("b", b, d_out, r)?;
    let bs = to_f64(b) * to_f64(s); // (d_out, r)
    let mut out = to_f64(w); // (d_out, d_in)
    let par = faer::get_global_parallelism();
    matmul(out.as_mut(), Accum::Add, bs.as_ref(), to_f64(a).as_ref(), -alpha, par);
    Ok(MatF32::round_from(out.as_ref()))
}

/// PiSSA-style initialisation: SVD, then [`pissa_init_from_svd`].
///
/// w: (d_out, d_in); `1 <= r <= min(d_out, d_in)`.
pub fn pissa_init(w: MatF32Ref<'_>, r: usize) -> Result<PissaInit, LinalgError> {
    let svd = thin_svd(w)?;
    pissa_init_from_svd(w, &svd, r)
}

/// PiSSA-style initialisation from a precomputed SVD of `w`:
/// `A = sqrt(s_r) V_r^T` and `B = U_r sqrt(s_r)` (float64, rounded once),
/// `W_res = W - B A` in float64 from the float32 W, A, B, rounded once.
///
/// w: (d_out, d_in); svd: the [`thin_svd`] of w.
pub fn pissa_init_from_svd(w: MatF32Ref<'_>, svd: &ThinSvd, r: usize) -> Result<PissaInit, LinalgError> {
    check_svd(w, svd, r)?;
    let (d_out, d_in) = (w.rows(), w.cols());
    let root: Vec<f64> = svd.s[..r].iter().map(|x| x.sqrt()).collect();
    let a64 = Mat::from_fn(r, d_in, |c, j| root[c] * svd.v[(j, c)]);
    let b64 = Mat::from_fn(d_out, r, |i, c| svd.u[(i, c)] * root[c]);
    let a = MatF32::round_from(a64.as_ref());
    let b = MatF32::round_from(b64.as_ref());
    let w_res = lamda_residual(w, a.view(), MatF32::identity(r).view(), b.view(), 1.0)?;
    Ok(PissaInit { a, b, w_res })
}

/// A LoRA A drawn from kaiming-uniform with `a = sqrt(5)`, i.e.
/// `U(-1/sqrt(d_in), 1/sqrt(d_in))` (SEMANTICS §5), from a seeded generator.
///
/// Each entry is `(2 u - 1) / sqrt(d_in)` in float64 with `u` from
/// [`Xoshiro256StarStar::next_f64`], rounded to float32, drawn row by row.
/// Returns (r, d_in). The stream differs from PyTorch's: it does not
/// reproduce a PyTorch initialisation for the same seed.
pub fn kaiming_uniform(rng: &mut Xoshiro256StarStar, r: usize, d_in: usize) -> Result<MatF32, LinalgError> {
    if r == 0 || d_in == 0 {
        return Err(LinalgError::Empty {
            what: "lora A",
            rows: r,
            cols: d_in,
        });
    }
    let n = r.checked_mul(d_in).ok_or(LinalgError::ShapeOverflow {
        what: "lora A",
        rows: r,
        cols: d_in,
    })?;
    let bound = 1.0 / (d_in as f64).sqrt();
    let data = (0..n).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32).collect();
    MatF32::new("lora A", data, r, d_in)
}

/// Checks that `svd` is a thin SVD of a matrix shaped like `w` and `r` is a valid rank.
fn check_svd(w: MatF32Ref<'_>, svd: &ThinSvd, r: usize) -> Result<(), LinalgError> {
    expect_finite_nonempty("w", w)?;
    let (d_out, d_in) = (w.rows(), w.cols());
    let k = d_out.min(d_in);
    if svd.s.len() != k || (svd.u.nrows(), svd.u.ncols()) != (d_out, k) || (svd.v.nrows(), svd.v.ncols()) != (d_in, k) {
        return Err(LinalgError::DimMismatch {
            what: "svd (u rows x v rows)",
            expected_rows: d_out,
            expected_cols: d_in,
            rows: svd.u.nrows(),
            cols: svd.v.nrows(),
        });
    }
    if r == 0 || r > k {
        return Err(LinalgError::RankOutOfRange { rank: r, max: k });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn random(rng: &mut Xoshiro256StarStar, rows: usize, cols: usize) -> MatF32 {
        let data = (0..rows * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        MatF32::new("w", data, rows, cols).unwrap()
    }

    /// max |x - y| over float64 products of float32 matrices, for checks.
    fn max_abs_diff(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
        let mut m = 0.0f64;
        for i in 0..x.nrows() {
            for j in 0..x.ncols() {
                m = m.max((x[(i, j)] - y[(i, j)]).abs());
            }
        }
        m
    }

    #[test]
    fn lamda_init_reproduces_w_at_step_zero() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(11);
        for &(m, n, r, alpha) in &[(17, 3, 2, 1.0), (3, 17, 3, 2.5), (40, 29, 5, 0.5)] {
            let w = random(&mut rng, m, n);
            let init = lamda_init(w.view(), r, alpha).unwrap();
            assert_eq!((init.a.rows(), init.a.cols()), (r, n));
            assert_eq!((init.b.rows(), init.b.cols()), (m, r));
            assert_eq!(init.s, MatF32::identity(r));
            // W_res + alpha B S A == W up to the single rounding of W_res
            let bsa = to_f64(init.b.view()) * to_f64(init.s.view()) * to_f64(init.a.view());
            let rec = to_f64(init.w_res.view()) + bsa * alpha;
            assert!(max_abs_diff(&rec, &to_f64(w.view())) < 1e-6);
        }
    }

    #[test]
    fn pissa_init_reproduces_w_and_splits_sqrt_s() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(12);
        let w = random(&mut rng, 23, 31);
        let svd = thin_svd(w.view()).unwrap();
        let init = pissa_init_from_svd(w.view(), &svd, 4).unwrap();
        let ba = to_f64(init.b.view()) * to_f64(init.a.view());
        let rec = to_f64(init.w_res.view()) + ba;
        assert!(max_abs_diff(&rec, &to_f64(w.view())) < 1e-6);
        for c in 0..4 {
            let norm2: f64 = (0..31).map(|j| f64::from(init.a.at(c, j)).powi(2)).sum();
            assert!((norm2 - svd.s[c]).abs() < 1e-5 * svd.s[c]);
        }
    }

    #[test]
    fn rank_out_of_range_is_an_error() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(13);
        let w = random(&mut rng, 4, 6);
        for r in [0, 5] {
            assert_eq!(
                lamda_init(w.view(), r, 1.0),
                Err(LinalgError::RankOutOfRange { rank: r, max: 4 })
            );
        }
    }

    #[test]
    fn kaiming_uniform_is_seeded_and_bounded() {
        let a = kaiming_uniform(&mut Xoshiro256StarStar::seed_from_u64(5), 3, 17).unwrap();
        let b = kaiming_uniform(&mut Xoshiro256StarStar::seed_from_u64(5), 3, 17).unwrap();
        let c = kaiming_uniform(&mut Xoshiro256StarStar::seed_from_u64(6), 3, 17).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!((a.rows(), a.cols()), (3, 17));
        let bound = (1.0 / 17f64.sqrt()) as f32;
        assert!(a.data().iter().all(|x| x.abs() <= bound));
        // 4000 draws: the mean is 0 and the variance bound^2 / 3, within 5 sigma
        let big = kaiming_uniform(&mut Xoshiro256StarStar::seed_from_u64(9), 40, 100).unwrap();
        let n = big.data().len() as f64;
        let mean = big.data().iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = big.data().iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n;
        let b2 = 0.01; // bound^2 for d_in = 100
        assert!(mean.abs() < 5.0 * (b2 / 3.0 / n).sqrt());
        assert!((var - b2 / 3.0).abs() < 5.0 * b2 * (4.0 / 45.0 / n).sqrt());
        assert!(kaiming_uniform(&mut Xoshiro256StarStar::seed_from_u64(1), 0, 4).is_err());
    }
}
