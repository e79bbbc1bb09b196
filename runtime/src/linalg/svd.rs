//! Thin SVD in float64 with the sign convention of SEMANTICS §2.
//!
//! `W = U diag(s) V^T` with `k = min(d_out, d_in)` singular values, s
//! descending, computed by faer (`Mat::thin_svd`) from the float32 weight
//! widened to float64. Each pair `(u_i, v_i)` is then flipped so that the
//! entry of `u_i` with the largest absolute value is positive; among entries
//! of equal absolute value the lowest index decides. The sign rule is applied
//! in float64, before any rounding to float32 (SEMANTICS §2).

use faer::{Mat, MatMut};

use super::LinalgError;
use super::dense::{MatF32Ref, expect_finite_nonempty, to_f64};

/// A thin SVD `W = U diag(s) V^T` in float64, signs fixed by SEMANTICS §2.
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
    /// `k = min(d_out, d_in)`, the number of singular values.
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
    expect_finite_nonempty("w", w)?;
    let w64 = to_f64(w);
    let svd = w64.thin_svd().map_err(|_| LinalgError::SvdNoConvergence {
        rows: w.rows(),
        cols: w.cols(),
    })?;
    let mut u = svd.U().to_owned();
    let mut v = svd.V().to_owned();
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    // faer documents s as nonincreasing; the sign rule and every caller rely
    // on it, so a violation is a faer bug, not a data error.
    debug_assert!(s.windows(2).all(|p| p[0] >= p[1]), "faer: s not sorted");
    apply_sign_convention(u.as_mut(), v.as_mut());
    Ok(ThinSvd { u, s, v })
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
