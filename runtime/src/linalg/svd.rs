//! Thin SVD in float64 with the sign convention of SEMANTICS §2.
//!
//! `W = U diag(s) V^T` with `k = min(d_out, d_in)` singular values, s
//! descending, computed by faer (`Mat::thin_svd`) from the float32 weight
//! widened to float64. Each pair `(u_i, v_i)` is then flipped so that the
//! entry of `u_i` with the largest absolute value is positive; among entries
//! of equal absolute value the lowest index decides. The sign rule is applied
//! in float64, before any rounding to float32 (SEMANTICS §2).

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::svd::{ComputeSvdVectors, svd, svd_scratch};
use faer::{Accum, Mat, MatMut, Par};

use super::LinalgError;
use super::dense::{MatF32Ref, expect_finite_nonempty, to_f64};

/// A thin SVD `W = U diag(s) V^T` in float64, signs fixed by SEMANTICS §2
/// (or its top r triplets, from [`top_svd`]).
#[derive(Debug, Clone)]
pub struct ThinSvd {
    /// Left singular vectors, column i is u_i: (d_out, k).
    pub u: Mat<f64>,
    /// Singular values, descending: (k,).
    pub s: Vec<f64>,
    /// Right singular vectors, column i is v_i: (d_in, k).
    pub v: Mat<f64>,
}

impl ThinSvd {
    /// The number of singular values: `min(d_out, d_in)`, or r from [`top_svd`].
    pub fn k(&self) -> usize {
        self.s.len()
    }
}

/// The thin SVD of `w` in float64, with the sign convention of SEMANTICS §2.
///
/// w: (d_out, d_in); returns u: (d_out, k), s: (k,), v: (d_in, k) with
/// `k = min(d_out, d_in)` and s descending. Errors on an empty or non-finite
/// weight and when faer's SVD does not converge.
pub fn thin_svd(w: MatF32Ref<'_>) -> Result<ThinSvd, LinalgError> {
    thin_svd_with(w, faer::get_global_parallelism())
}

/// [`thin_svd`] with an explicit parallelism: `Par::Seq` when the caller
/// runs several SVDs side by side (faer's parallel SVD spends much of its
/// time waking threads on matrices of a few hundred rows).
pub fn thin_svd_with(w: MatF32Ref<'_>, par: Par) -> Result<ThinSvd, LinalgError> {
    let _clean = crate::ops::vector_state::ClearOnDrop::for_par(par);
    expect_finite_nonempty("w", w)?;
    let w64 = to_f64(w);
    let (m, n) = (w.rows(), w.cols());
    let k = m.min(n);
    let mut u = Mat::<f64>::zeros(m, k);
    let mut v = Mat::<f64>::zeros(n, k);
    let mut sd = Diag::<f64>::zeros(k);
    let thin = ComputeSvdVectors::Thin;
    let mut buf = MemBuffer::new(svd_scratch::<f64>(m, n, thin, thin, par, Default::default()));
    svd(
        w64.as_ref(),
        sd.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| LinalgError::SvdNoConvergence { rows: m, cols: n })?;
    let s: Vec<f64> = sd.column_vector().iter().copied().collect();
    // faer documents s as nonincreasing; the sign rule and every caller rely
    // on it, so a violation is a faer bug, not a data error.
    debug_assert!(s.windows(2).all(|p| p[0] >= p[1]), "faer: s not sorted");
    apply_sign_convention(u.as_mut(), v.as_mut());
    Ok(ThinSvd { u, s, v })
}

/// Weights whose smaller side is at most this get the exact thin SVD from
/// [`top_svd`]; larger ones the randomized subspace iteration.
pub const EXACT_SVD_MAX_DIM: usize = 1024;

/// Extra columns of the random sketch beyond r.
const OVERSAMPLE: usize = 16;

/// Power iterations (`W^T` then `W`, each followed by a QR).
const POWER_ITERS: usize = 8;

/// The top `r` singular triplets of `w`, signs fixed by SEMANTICS §2:
/// u: (d_out, r), s: (r,), v: (d_in, r).
///
/// When `min(d_out, d_in) <= max_exact_dim` this is [`thin_svd`] (all k
/// triplets, of which callers use the first r). Above, the full SVD costs
/// O(d^3) per weight (a minute at 4096 x 4096 on 2 cores; hours for every
/// projection of a 7B model), so the triplets come from a randomized
/// subspace iteration in float64 (Halko, Martinsson and Tropp 2011, Alg.
/// 4.4): a Gaussian sketch `Y = W Omega` of `r + 16` columns from a fixed
/// seed, 8 power iterations `Q = qr(W qr(W^T Q))`, then the exact SVD of the
/// small `Q^T W`. Cost O(d_out d_in (r + 16)) per pass. The result spans the
/// leading singular subspace up to `(s_{r+16} / s_r)^17` per direction: exact
/// for well separated spectra, an approximation of the principal subspace
/// when the tail is flat (what PEFT's `pissa_niter_n` does). Deterministic:
/// same weight, same result. An adapter built from it is still exact at
/// step 0, because W_res is formed from the A, S, B it gets.
pub fn top_svd(w: MatF32Ref<'_>, r: usize, max_exact_dim: usize) -> Result<ThinSvd, LinalgError> {
    top_svd_with(w, r, max_exact_dim, faer::get_global_parallelism())
}

/// [`top_svd`] with an explicit parallelism for the exact SVD (see [`thin_svd_with`]).
pub fn top_svd_with(w: MatF32Ref<'_>, r: usize, max_exact_dim: usize, par: Par) -> Result<ThinSvd, LinalgError> {
    // (the randomized branch multiplies with faer's global parallelism; the
    // caller of a `Par::Seq` run cleans the other threads once it is done)
    let _clean = crate::ops::vector_state::ClearOnDrop::for_par(par);
    let (m, n) = (w.rows(), w.cols());
    let k = m.min(n);
    if k <= max_exact_dim || r + OVERSAMPLE >= k {
        if k >= GRAM_MIN_DIM && r.saturating_mul(4) <= k {
            expect_finite_nonempty("w", w)?;
            if let Some(svd) = gram_top_svd(w, r, par) {
                return Ok(svd);
            }
        }
        return thin_svd_with(w, par);
    }
    expect_finite_nonempty("w", w)?;
    let w64 = to_f64(w);
    let sketch = r + OVERSAMPLE;
    let mut rng = crate::linalg::rng::Xoshiro256StarStar::seed_from_u64(0x5eed_5bd0);
    let omega = Mat::from_fn(n, sketch, |_, _| rng.next_normal());
    let orth = |y: Mat<f64>| y.qr().compute_thin_Q();
    let mut q = orth(&w64 * &omega);
    for _ in 0..POWER_ITERS {
        let z = orth(w64.transpose() * &q);
        q = orth(&w64 * &z);
    }
    let b = q.transpose() * &w64;
    let small = b
        .thin_svd()
        .map_err(|_| LinalgError::SvdNoConvergence { rows: m, cols: n })?;
    let mut u = (&q * small.U().get(.., ..r)).to_owned();
    let mut v = small.V().get(.., ..r).to_owned();
    let s: Vec<f64> = small.S().column_vector().iter().take(r).copied().collect();
    apply_sign_convention(u.as_mut(), v.as_mut());
    Ok(ThinSvd { u, s, v })
}

/// Weights whose smaller side is at least this (and at least 4 r) get their
/// top r triplets from the Gram matrix in [`top_svd`]; smaller ones the thin SVD.
pub const GRAM_MIN_DIM: usize = 128;

/// The top `r` singular triplets of `w` from the eigendecomposition of its
/// Gram matrix on the smaller side, in float64: for `d_out >= d_in`,
/// `G = W^T W = V diag(s^2) V^T`, the r eigenvectors of the largest
/// eigenvalues are `v_i`, `s_i = sqrt(lambda_i)` and `u_i = W v_i / s_i`
/// (and the mirror image for a wide `w`). None when it would be inaccurate:
/// `s_r` below `1e-4 s_1` (the Gram matrix squares the condition of the
/// small triplets; the top ones lose about `s_1 / s_i` times the SVD's
/// accuracy, ~1e-13 relative for the spectra of pretrained weights), or an
/// eigen solver failure. The eigenpairs come from the partial solver
/// ([`top_eigen`](super::top_eigen::top_eigen)), faer's full one when it
/// rejects its own result. At 576 x 1536, r = 16: Gram 7 ms, eigenpairs
/// ~15 ms on one Sapphire Rapids core, where faer's full eigensolver took 36
/// ms and the thin SVD over 100 ms.
fn gram_top_svd(w: MatF32Ref<'_>, r: usize, par: Par) -> Option<ThinSvd> {
    let w64 = to_f64(w);
    let tall = w64.nrows() >= w64.ncols();
    // The side the eigenvectors live on: W^T W (d_in) when tall, W W^T (d_out) when wide.
    let a = if tall { w64.as_ref() } else { w64.as_ref().transpose() };
    let k = a.ncols();
    if r == 0 || r > k {
        return None;
    }
    // only the lower half: the eigen solvers read nothing else
    let mut g = Mat::<f64>::zeros(k, k);
    triangular::matmul(
        g.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    let (lam, near) = match super::top_eigen::top_eigen(g.as_ref(), r, par) {
        Some(top) => top,
        None => full_top_eigen(g.as_ref(), r, par)?,
    };
    let s: Vec<f64> = lam.iter().map(|&l| l.max(0.0).sqrt()).collect();
    if s[0].is_nan() || s[0] <= 0.0 || s[r - 1] < 1e-4 * s[0] || s.windows(2).any(|p| p[0] < p[1]) {
        return None;
    }
    // the other side: a near / s
    let mut far = Mat::<f64>::zeros(a.nrows(), r);
    matmul(far.as_mut(), Accum::Replace, a, near.as_ref(), 1.0, par);
    for c in 0..r {
        for i in 0..far.nrows() {
            far[(i, c)] /= s[c];
        }
    }
    let (mut u, mut v) = if tall { (far, near) } else { (near, far) };
    apply_sign_convention(u.as_mut(), v.as_mut());
    Some(ThinSvd { u, s, v })
}

/// The r largest eigenpairs of the symmetric `g` (k x k) from faer's full
/// solver, largest first: the fallback when [`top_eigen`](super::top_eigen::top_eigen)
/// rejects its own result.
fn full_top_eigen(g: faer::MatRef<'_, f64>, r: usize, par: Par) -> Option<(Vec<f64>, Mat<f64>)> {
    let k = g.nrows();
    let mut e = Mat::<f64>::zeros(k, k);
    let mut lambda = faer::diag::Diag::<f64>::zeros(k);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        k,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    self_adjoint_evd(
        g,
        lambda.as_mut(),
        Some(e.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    // eigenvalues ascending: the top r are the last r, largest first
    let lam = lambda.column_vector();
    Some((
        (0..r).map(|c| lam[k - 1 - c]).collect(),
        Mat::from_fn(k, r, |i, c| e[(i, k - 1 - c)]),
    ))
}

/// Flips each pair (column i of `u`, column i of `v`) so that the entry of
/// u_i with the largest |.| is positive; ties go to the lowest row index.
///
/// u: (d_out, k), v: (d_in, k).
pub fn apply_sign_convention(mut u: MatMut<'_, f64>, mut v: MatMut<'_, f64>) {
    debug_assert_eq!(u.ncols(), v.ncols());
    for i in 0..u.ncols() {
        let mut best_row = 0;
        let mut best_abs = f64::NEG_INFINITY;
        for row in 0..u.nrows() {
            let a = u[(row, i)].abs();
            // strict: the first (lowest) index with the largest |.| wins
            if a > best_abs {
                best_abs = a;
                best_row = row;
            }
        }
        if u.nrows() > 0 && u[(best_row, i)] < 0.0 {
            for row in 0..u.nrows() {
                u[(row, i)] = -u[(row, i)];
            }
            for row in 0..v.nrows() {
                v[(row, i)] = -v[(row, i)];
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::linalg::rng::Xoshiro256StarStar;

    fn random(rng: &mut Xoshiro256StarStar, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    #[test]
    fn reconstructs_and_fixes_signs_at_awkward_sizes() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(7);
        for &(m, n) in &[(1, 1), (1, 5), (5, 1), (3, 17), (17, 3), (33, 20)] {
            let data = random(&mut rng, m, n);
            let w = MatF32Ref::new("w", &data, m, n).unwrap();
            let svd = thin_svd(w).unwrap();
            let k = m.min(n);
            assert_eq!(svd.k(), k);
            assert_eq!((svd.u.nrows(), svd.u.ncols()), (m, k));
            assert_eq!((svd.v.nrows(), svd.v.ncols()), (n, k));
            assert!(svd.s.windows(2).all(|p| p[0] >= p[1]));
            for i in 0..m {
                for j in 0..n {
                    let rec: f64 = (0..k).map(|c| svd.u[(i, c)] * svd.s[c] * svd.v[(j, c)]).sum();
                    assert!((rec - f64::from(w.at(i, j))).abs() < 1e-12, "{m}x{n} ({i},{j})");
                }
            }
            for c in 0..k {
                let col: Vec<f64> = (0..m).map(|i| svd.u[(i, c)]).collect();
                let max_abs = col.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                let first = col.iter().position(|x| x.abs() == max_abs).unwrap();
                assert!(col[first] > 0.0, "{m}x{n} column {c}");
            }
        }
    }

    /// A (m, n) matrix `U diag(s) V^T` with random orthonormal U, V (QR of
    /// Gaussian-ish matrices) and the given singular values.
    fn with_spectrum(rng: &mut Xoshiro256StarStar, m: usize, n: usize, s: &[f64]) -> Vec<f32> {
        let k = s.len();
        let g = |rows: usize, rng: &mut Xoshiro256StarStar| {
            Mat::from_fn(rows, k, |_, _| rng.next_f64() * 2.0 - 1.0)
                .qr()
                .compute_thin_Q()
        };
        let (u, v) = (g(m, rng), g(n, rng));
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|c| u[(i, c)] * s[c] * v[(j, c)]).sum::<f64>() as f32;
            }
        }
        out
    }

    /// The randomized path against the exact SVD: with a decaying spectrum
    /// the top r values agree to 1e-9 relative and the vectors to 1e-6 (signs
    /// included, so the sign rule is applied alike); with a flat tail the
    /// leading, separated triplets still agree (values 1e-9, vectors 1e-6),
    /// and the others are Ritz values: never above the exact ones, within
    /// the tail's spread below.
    #[test]
    fn randomized_top_svd_matches_the_exact_one() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(11);
        let (m, n, r) = (150, 110, 6);
        let decaying: Vec<f64> = (0..n).map(|i| 10.0 * 0.7f64.powi(i as i32)).collect();
        let flat: Vec<f64> = (0..n)
            .map(|i| if i < 3 { 10.0 - i as f64 } else { 1.0 - 0.001 * i as f64 })
            .collect();
        for (spec, dirs) in [(&decaying, r), (&flat, 3)] {
            let data = with_spectrum(&mut rng, m, n, spec);
            let w = MatF32Ref::new("w", &data, m, n).unwrap();
            let exact = thin_svd(w).unwrap();
            let fast = top_svd(w, r, 50).unwrap();
            assert_eq!((fast.k(), fast.u.nrows(), fast.u.ncols(), fast.v.nrows()), (r, m, r, n));
            for c in 0..r {
                if c < dirs {
                    assert!((fast.s[c] - exact.s[c]).abs() <= 1e-9 * exact.s[c], "s[{c}]");
                } else {
                    let (f, e) = (fast.s[c], exact.s[c]);
                    assert!(f <= e * (1.0 + 1e-12) && f >= 0.85 * e, "s[{c}] {f} vs {e}");
                }
            }
            for c in 0..dirs {
                let du = (0..m).fold(0.0f64, |a, i| a.max((fast.u[(i, c)] - exact.u[(i, c)]).abs()));
                let dv = (0..n).fold(0.0f64, |a, j| a.max((fast.v[(j, c)] - exact.v[(j, c)]).abs()));
                assert!(du < 1e-6 && dv < 1e-6, "direction {c}: {du:e} {dv:e}");
            }
            // small weights (or r too close to k) take the exact path
            assert_eq!(top_svd(w, r, 110).unwrap().k(), n);
            assert_eq!(top_svd(w, 100, 50).unwrap().k(), n);
        }
    }

    /// The Gram path (smaller side >= GRAM_MIN_DIM, r <= k / 4) against the
    /// exact SVD, tall and wide: a decaying spectrum and a slowly falling one
    /// like a pretrained weight's (neighbouring values 0.2% apart): values to
    /// 1e-11 relative, vectors (signs included) to 1e-8. A spectrum whose
    /// r-th value is under 1e-4 of the first takes the exact SVD.
    #[test]
    fn gram_top_svd_matches_the_exact_one() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(3);
        let r = 16;
        for (m, n) in [(300usize, 260usize), (260, 300), (150, 400)] {
            let k = m.min(n);
            let decaying: Vec<f64> = (0..k).map(|i| 5.0 * 0.9f64.powi(i as i32)).collect();
            let slow: Vec<f64> = (0..k).map(|i| 1.0 / (1.0 + 0.02 * i as f64)).collect();
            for spec in [&decaying, &slow] {
                let data = with_spectrum(&mut rng, m, n, spec);
                let w = MatF32Ref::new("w", &data, m, n).unwrap();
                let exact = thin_svd(w).unwrap();
                let fast = top_svd(w, r, EXACT_SVD_MAX_DIM).unwrap();
                assert_eq!(
                    (fast.k(), fast.u.nrows(), fast.v.nrows()),
                    (r, m, n),
                    "the Gram path ran"
                );
                for c in 0..r {
                    assert!((fast.s[c] - exact.s[c]).abs() <= 1e-11 * exact.s[0], "s[{c}]");
                    let du = (0..m).fold(0.0f64, |a, i| a.max((fast.u[(i, c)] - exact.u[(i, c)]).abs()));
                    let dv = (0..n).fold(0.0f64, |a, j| a.max((fast.v[(j, c)] - exact.v[(j, c)]).abs()));
                    assert!(du < 1e-8 && dv < 1e-8, "{m}x{n} direction {c}: {du:e} {dv:e}");
                }
            }
            let steep: Vec<f64> = (0..k).map(|i| 0.3f64.powi(i as i32)).collect();
            let data = with_spectrum(&mut rng, m, n, &steep);
            let w = MatF32Ref::new("w", &data, m, n).unwrap();
            assert_eq!(
                top_svd(w, r, EXACT_SVD_MAX_DIM).unwrap().k(),
                k,
                "falls back to the exact SVD"
            );
        }
    }

    #[test]
    fn sign_rule_flips_pairs_and_breaks_ties_by_lowest_index() {
        // u columns: [-0.5, 0.5] (tie: row 0 decides -> flip), [0.6, -0.8]
        // (row 1 decides -> flip), [0.8, -0.6] (row 0 decides -> keep)
        let mut u = Mat::from_fn(2, 3, |i, j| [[-0.5, 0.6, 0.8], [0.5, -0.8, -0.6]][i][j]);
        let mut v = Mat::from_fn(1, 3, |_, j| [1.0, 2.0, 3.0][j]);
        apply_sign_convention(u.as_mut(), v.as_mut());
        assert_eq!((u[(0, 0)], u[(1, 0)], v[(0, 0)]), (0.5, -0.5, -1.0));
        assert_eq!((u[(0, 1)], u[(1, 1)], v[(0, 1)]), (-0.6, 0.8, -2.0));
        assert_eq!((u[(0, 2)], u[(1, 2)], v[(0, 2)]), (0.8, -0.6, 3.0));
    }

    #[test]
    fn rejects_empty_and_non_finite() {
        let w = MatF32Ref::new("w", &[], 0, 3).unwrap();
        assert!(matches!(thin_svd(w), Err(LinalgError::Empty { .. })));
        let data = [1.0, f32::NAN, 0.0, 2.0];
        let w = MatF32Ref::new("w", &data, 2, 2).unwrap();
        assert!(matches!(
            thin_svd(w),
            Err(LinalgError::NonFinite { row: 0, col: 1, .. })
        ));
    }
}
