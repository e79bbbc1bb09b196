//! The r largest eigenpairs of a symmetric matrix in float64, without the other n - r.
//!
//! faer's `self_adjoint_evd` returns every eigenvector; LaMDA's initialisation
//! needs the top r (16 of 576 for SmolLM2), and most of the full solver's time
//! goes into the n - r it throws away. This one does what LAPACK's `dsyevx`
//! does for a selected range:
//!
//! 1. faer's Householder tridiagonalisation `G = Q T Q^T` (4/3 n^3 flops);
//! 2. the r largest eigenvalues of T by bisection on Sturm counts, to
//!    1e-9 ||T|| (O(n r)), or to full precision where inverse iteration
//!    needs it to tell two close eigenvalues apart;
//! 3. their eigenvectors of T by inverse iteration with a pivoted
//!    tridiagonal LU, re-orthogonalised against the earlier ones of a
//!    cluster (`dstein`'s rule: eigenvalues closer than 1e-3 ||T||); each
//!    eigenvalue is then the Rayleigh quotient of its vector, accurate to
//!    the square of the vector's residual;
//! 4. back to G's basis with the Householder sequence (O(n^2 r)).
//!
//! A final check (residual `||G v - lambda v||` and orthogonality of the r
//! vectors, both against `n eps ||G||` with a wide margin) makes it return
//! None instead of a wrong answer; the caller then falls back to the full
//! solver.

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::evd::tridiag::{tridiag_in_place, tridiag_in_place_scratch};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::matmul::matmul;
use faer::{Accum, Conj, Mat, MatRef, Par};

use super::rng::Xoshiro256StarStar;

/// The `r` largest eigenvalues of the symmetric `g` (n x n; only its lower
/// half is read), largest first, and their unit eigenvectors as the columns
/// of an (n, r) matrix. None when r is 0 or above n, when `g` is not finite,
/// or when the result fails its residual and orthogonality check.
pub fn top_eigen(g: MatRef<'_, f64>, r: usize, par: Par) -> Option<(Vec<f64>, Mat<f64>)> {
    let n = g.nrows();
    if r == 0 || r > n || g.ncols() != n {
        return None;
    }
    // 1. G = Q T Q^T, T in the diagonal and subdiagonal of `trid`, Q as
    //    Householder vectors below it with their block factors in `house`.
    let mut trid = Mat::<f64>::zeros(n, n);
    for j in 0..n {
        for i in j..n {
            let x = g[(i, j)];
            if !x.is_finite() {
                return None;
            }
            trid[(i, j)] = x;
        }
    }
    let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(n, n);
    let mut house = Mat::<f64>::zeros(bs, n.saturating_sub(1));
    let mut buf = MemBuffer::new(StackReq::any_of(&[
        tridiag_in_place_scratch::<f64>(n, par, Default::default()),
        apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(n.saturating_sub(1), bs, r),
    ]));
    tridiag_in_place(
        trid.as_mut(),
        house.as_mut(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    );
    let d: Vec<f64> = (0..n).map(|i| trid[(i, i)]).collect();
    let e: Vec<f64> = (0..n.saturating_sub(1)).map(|i| trid[(i + 1, i)]).collect();
    let t = Tridiagonal { d: &d, e: &e };

    // 2.-3. eigenpairs of T, largest first
    let norm = t.norm_bound();
    let shift: Vec<f64> = (0..r).map(|c| t.eigenvalue(n - 1 - c, SHIFT_TOL)).collect();
    let mut lambda = shift.clone();
    let mut z = Mat::<f64>::zeros(n, r);
    let mut rng = Xoshiro256StarStar::seed_from_u64(0x7e16_e15e);
    for c in 0..r {
        // earlier vectors whose eigenvalues are close enough to mix in
        let cluster: Vec<usize> = (0..c).filter(|&p| (shift[p] - shift[c]).abs() <= 1e-3 * norm).collect();
        let orth = |y: &mut [f64]| {
            for &p in &cluster {
                let dot: f64 = (0..n).map(|i| y[i] * z[(i, p)]).sum();
                for (i, yi) in y.iter_mut().enumerate() {
                    *yi -= dot * z[(i, p)];
                }
            }
        };
        // a neighbour closer than the coarse shift's error keeps the vector
        // mixed: then the shift is bisected to full precision and it goes again
        let (l, v) = match t.inverse_iteration(shift[c], norm, &mut rng, orth) {
            Some(found) => found,
            None => t.inverse_iteration(t.eigenvalue(n - 1 - c, 0.0), norm, &mut rng, orth)?,
        };
        lambda[c] = l;
        for (i, x) in v.into_iter().enumerate() {
            z[(i, c)] = x;
        }
    }

    // 4. back to G's basis: rows 1.. of Q^T z (Q fixes e_0)
    if n > 1 {
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            trid.as_ref().submatrix(1, 0, n - 1, n - 1),
            house.as_ref(),
            Conj::No,
            z.as_mut().subrows_mut(1, n - 1),
            par,
            MemStack::new(&mut buf),
        );
    }
    // the Rayleigh quotients may reorder eigenvalues equal to rounding
    for c in 1..r {
        if lambda[c] > lambda[c - 1] {
            lambda[c] = lambda[c - 1];
        }
    }
    accurate(g, &lambda, z.as_ref(), norm, par).then_some((lambda, z))
}

/// How far bisection narrows each eigenvalue, relative to ||T||: the shift
/// of inverse iteration needs no more (the Rayleigh quotient finishes it).
const SHIFT_TOL: f64 = 1e-9;

/// Whether every pair has `||G v - lambda v|| <= tol` and the vectors are
/// orthonormal to `tol`, with `tol = 1e3 n eps max(||G||, 1)`: about 1e-10
/// at n = 576, a thousand times what the solver reaches and far below what
/// float32 weights can tell apart.
fn accurate(g: MatRef<'_, f64>, lambda: &[f64], z: MatRef<'_, f64>, norm: f64, par: Par) -> bool {
    let (n, r) = (z.nrows(), z.ncols());
    let tol = 1e3 * n as f64 * f64::EPSILON;
    // G is stored whole by the caller; the lower half is what we read above,
    // so the product uses the symmetric matrix rebuilt from it.
    let mut sym = Mat::<f64>::zeros(n, n);
    for j in 0..n {
        for i in j..n {
            sym[(i, j)] = g[(i, j)];
            sym[(j, i)] = g[(i, j)];
        }
    }
    let mut gz = Mat::<f64>::zeros(n, r);
    matmul(gz.as_mut(), Accum::Replace, sym.as_ref(), z, 1.0, par);
    let scale = norm.max(f64::MIN_POSITIVE);
    for c in 0..r {
        let res: f64 = (0..n)
            .map(|i| (gz[(i, c)] - lambda[c] * z[(i, c)]).powi(2))
            .sum::<f64>()
            .sqrt();
        if res.is_nan() || res > tol * scale {
            return false;
        }
    }
    let mut gram = Mat::<f64>::zeros(r, r);
    matmul(gram.as_mut(), Accum::Replace, z.transpose(), z, 1.0, par);
    (0..r).all(|a| (0..r).all(|b| (gram[(a, b)] - if a == b { 1.0 } else { 0.0 }).abs() <= tol))
}

/// A symmetric tridiagonal matrix: diagonal d (n,), off-diagonal e (n - 1,).
struct Tridiagonal<'a> {
    /// Diagonal: (n,).
    d: &'a [f64],
    /// Sub- (= super-) diagonal: (n - 1,).
    e: &'a [f64],
}

impl Tridiagonal<'_> {
    fn n(&self) -> usize {
        self.d.len()
    }

    /// The off-diagonal entry between rows i and i + 1, 0 past the ends.
    fn off(&self, i: isize) -> f64 {
        if i < 0 {
            0.0
        } else {
            self.e.get(i as usize).copied().unwrap_or(0.0)
        }
    }

    /// max_i |d_i| + |e_{i-1}| + |e_i|: a bound on ||T||_2 (Gershgorin).
    fn norm_bound(&self) -> f64 {
        (0..self.n())
            .map(|i| self.d[i].abs() + self.off(i as isize - 1).abs() + self.off(i as isize).abs())
            .fold(0.0, f64::max)
    }

    /// The number of eigenvalues below x: negative pivots of the LDL^T
    /// factorisation of T - x I (Sturm), a zero pivot nudged to -pivmin.
    fn count_below(&self, x: f64, pivmin: f64) -> usize {
        let mut count = 0;
        let mut q = 1.0;
        for i in 0..self.n() {
            let e2 = if i == 0 { 0.0 } else { self.e[i - 1] * self.e[i - 1] };
            q = self.d[i] - x - if i == 0 { 0.0 } else { e2 / q };
            if q.abs() < pivmin {
                q = -pivmin;
            }
            if q < 0.0 {
                count += 1;
            }
        }
        count
    }

    /// The j-th smallest eigenvalue (0-based) by bisection between the
    /// Gershgorin bounds, to a width of `tol ||T||` (or a few eps relative).
    fn eigenvalue(&self, j: usize, tol: f64) -> f64 {
        let n = self.n();
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for i in 0..n {
            let rad = self.off(i as isize - 1).abs() + self.off(i as isize).abs();
            lo = lo.min(self.d[i] - rad);
            hi = hi.max(self.d[i] + rad);
        }
        let norm = lo.abs().max(hi.abs());
        let max_e2 = self.e.iter().map(|x| x * x).fold(1.0, f64::max);
        let pivmin = f64::MIN_POSITIVE * max_e2;
        // widen so that count(lo) <= j < count(hi) holds strictly
        let pad = 2.0 * f64::EPSILON * norm + pivmin;
        lo -= pad;
        hi += pad;
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            let width = (2.0 * f64::EPSILON * lo.abs().max(hi.abs())).max(tol * norm) + pivmin;
            if hi - lo <= width || mid <= lo || mid >= hi {
                break;
            }
            if self.count_below(mid, pivmin) > j {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        0.5 * (lo + hi)
    }

    /// A unit eigenvector near the shift `lambda` by inverse iteration, and
    /// its Rayleigh quotient: solve `(T - lambda I) y = b` with a pivoted LU
    /// (tiny pivots replaced by `eps ||T||`), `orth`, normalise, until the
    /// residual `||T y - (y^T T y) y||` is at the level of `n eps ||T||` (at
    /// least two solves, at most eight). None if it does not get there.
    fn inverse_iteration(
        &self,
        lambda: f64,
        norm: f64,
        rng: &mut Xoshiro256StarStar,
        orth: impl Fn(&mut [f64]),
    ) -> Option<(f64, Vec<f64>)> {
        let n = self.n();
        let lu = PivotedLu::new(self, lambda, f64::EPSILON * norm.max(f64::MIN_POSITIVE));
        let mut y: Vec<f64> = (0..n).map(|_| rng.next_f64() - 0.5).collect();
        let target = 10.0 * n as f64 * f64::EPSILON * norm;
        for iter in 0..8 {
            lu.solve(&mut y);
            orth(&mut y);
            let len = y.iter().map(|x| x * x).sum::<f64>().sqrt();
            if !(len.is_finite() && len > 0.0) {
                return None;
            }
            for x in y.iter_mut() {
                *x /= len;
            }
            if iter >= 1 {
                let rq = self.rayleigh_quotient(&y);
                if self.residual(&y, rq) <= target {
                    return Some((rq, y));
                }
            }
        }
        None
    }

    /// y^T T y for a unit y.
    fn rayleigh_quotient(&self, y: &[f64]) -> f64 {
        let n = self.n();
        let diag: f64 = (0..n).map(|i| self.d[i] * y[i] * y[i]).sum();
        let off: f64 = (0..n.saturating_sub(1)).map(|i| self.e[i] * y[i] * y[i + 1]).sum();
        diag + 2.0 * off
    }

    /// ||T y - lambda y||_2.
    fn residual(&self, y: &[f64], lambda: f64) -> f64 {
        let n = self.n();
        (0..n)
            .map(|i| {
                let mut ty = (self.d[i] - lambda) * y[i];
                if i > 0 {
                    ty += self.e[i - 1] * y[i - 1];
                }
                if i + 1 < n {
                    ty += self.e[i] * y[i + 1];
                }
                ty * ty
            })
            .sum::<f64>()
            .sqrt()
    }
}

/// `P (T - lambda I) = L U` of a tridiagonal matrix with row pivoting
/// (LAPACK's `dlagtf`): U has two super-diagonals, L one multiplier per row.
struct PivotedLu {
    /// Diagonal of U: (n,).
    u0: Vec<f64>,
    /// First super-diagonal of U: (n,), last entry unused.
    u1: Vec<f64>,
    /// Second super-diagonal of U (non-zero only after a swap): (n,).
    u2: Vec<f64>,
    /// Multipliers of L: (n,), last entry unused.
    mult: Vec<f64>,
    /// Whether rows i and i + 1 were swapped: (n,).
    swapped: Vec<bool>,
}

impl PivotedLu {
    fn new(t: &Tridiagonal<'_>, lambda: f64, tiny: f64) -> Self {
        let n = t.n();
        let mut lu = PivotedLu {
            u0: vec![0.0; n],
            u1: vec![0.0; n],
            u2: vec![0.0; n],
            mult: vec![0.0; n],
            swapped: vec![false; n],
        };
        let nudge = |x: f64| {
            if x.abs() < tiny {
                if x < 0.0 { -tiny } else { tiny }
            } else {
                x
            }
        };
        // the pending row i: (diag, sup) in columns (i, i + 1)
        let mut diag = t.d[0] - lambda;
        let mut sup = t.off(0);
        for i in 0..n.saturating_sub(1) {
            let below = t.e[i]; // row i + 1, column i
            let next_diag = t.d[i + 1] - lambda;
            let next_sup = t.off(i as isize + 1);
            if diag.abs() >= below.abs() {
                let p = nudge(diag);
                let m = below / p;
                lu.u0[i] = p;
                lu.u1[i] = sup;
                lu.u2[i] = 0.0;
                lu.mult[i] = m;
                diag = next_diag - m * sup;
                sup = next_sup;
            } else {
                let m = diag / below;
                lu.u0[i] = below;
                lu.u1[i] = next_diag;
                lu.u2[i] = next_sup;
                lu.mult[i] = m;
                lu.swapped[i] = true;
                diag = sup - m * next_diag;
                sup = -m * next_sup;
            }
        }
        lu.u0[n - 1] = nudge(diag);
        lu
    }

    /// y <- (T - lambda I)^{-1} y, rescaled by a power of two whenever it
    /// grows large (inverse iteration only needs the direction).
    fn solve(&self, y: &mut [f64]) {
        let n = y.len();
        for i in 0..n.saturating_sub(1) {
            if self.swapped[i] {
                y.swap(i, i + 1);
            }
            y[i + 1] -= self.mult[i] * y[i];
        }
        for i in (0..n).rev() {
            let mut x = y[i];
            if i + 1 < n {
                x -= self.u1[i] * y[i + 1];
            }
            if i + 2 < n {
                x -= self.u2[i] * y[i + 2];
            }
            y[i] = x / self.u0[i];
            if y[i].abs() > 1e150 {
                for v in y.iter_mut() {
                    *v *= 1e-150;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};

    /// Q diag(lambda) Q^T for a random orthogonal Q.
    fn with_eigenvalues(seed: u64, lambda: &[f64]) -> Mat<f64> {
        let n = lambda.len();
        let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
        let x = Mat::from_fn(n, n, |_, _| rng.next_normal());
        let q = x.qr().compute_Q();
        let ql = Mat::from_fn(n, n, |i, j| q[(i, j)] * lambda[j]);
        &ql * q.transpose()
    }

    /// faer's full solver: eigenvalues descending and the top r vectors.
    fn full(g: &Mat<f64>, r: usize) -> (Vec<f64>, Mat<f64>) {
        let n = g.nrows();
        let mut e = Mat::<f64>::zeros(n, n);
        let mut l = faer::diag::Diag::<f64>::zeros(n);
        let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
            n,
            ComputeEigenvectors::Yes,
            Par::Seq,
            Default::default(),
        ));
        self_adjoint_evd(
            g.as_ref(),
            l.as_mut(),
            Some(e.as_mut()),
            Par::Seq,
            MemStack::new(&mut buf),
            Default::default(),
        )
        .unwrap();
        let lam = l.column_vector();
        (
            (0..r).map(|c| lam[n - 1 - c]).collect(),
            Mat::from_fn(n, r, |i, c| e[(i, n - 1 - c)]),
        )
    }

    fn check_against_full(g: &Mat<f64>, r: usize, tol_vec: f64) {
        let (lam, z) = top_eigen(g.as_ref(), r, Par::Seq).unwrap();
        let (lam_ref, z_ref) = full(g, r);
        let scale = lam_ref[0].abs().max(1.0);
        for c in 0..r {
            assert!(
                (lam[c] - lam_ref[c]).abs() <= 1e-12 * scale,
                "lambda_{c}: {} vs {}",
                lam[c],
                lam_ref[c]
            );
            // eigenvectors up to sign
            let dot: f64 = (0..g.nrows()).map(|i| z[(i, c)] * z_ref[(i, c)]).sum();
            assert!(
                (dot.abs() - 1.0).abs() <= tol_vec,
                "v_{c}: |<v, v_ref>| = {}",
                dot.abs()
            );
        }
    }

    #[test]
    fn matches_the_full_solver_on_a_decaying_spectrum() {
        // the shape of a pretrained weight's Gram matrix: a few large, a long tail
        let n = 300;
        let lambda: Vec<f64> = (0..n).map(|i| 100.0 / (1.0 + i as f64).powf(1.2)).collect();
        check_against_full(&with_eigenvalues(1, &lambda), 16, 1e-10);
    }

    #[test]
    fn matches_the_full_solver_with_negative_and_close_eigenvalues() {
        // indefinite, and pairs 1e-9 apart at the top: the vectors of a pair
        // are only defined as a subspace, so compare the spanned projector
        let n = 120;
        let mut lambda: Vec<f64> = (0..n).map(|i| (i as f64 - 40.0) * 0.37).collect();
        lambda[n - 2] = lambda[n - 1] - 1e-9;
        let g = with_eigenvalues(2, &lambda);
        let r = 6;
        let (lam, z) = top_eigen(g.as_ref(), r, Par::Seq).unwrap();
        let (lam_ref, z_ref) = full(&g, r);
        for c in 0..r {
            assert!((lam[c] - lam_ref[c]).abs() <= 1e-12 * 40.0, "lambda_{c}");
        }
        // projectors onto the top-r subspace agree
        let p = &z * z.transpose();
        let p_ref = &z_ref * z_ref.transpose();
        let diff = (&p - &p_ref).norm_max();
        assert!(diff < 1e-9, "projector difference {diff}");
        // and the pair itself is orthonormal
        let gram = z.transpose() * &z;
        assert!((&gram - Mat::<f64>::identity(r, r)).norm_max() < 1e-12);
    }

    #[test]
    fn an_exactly_repeated_eigenvalue_gets_orthonormal_vectors() {
        let n = 64;
        let mut lambda: Vec<f64> = (0..n).map(|i| i as f64).collect();
        for x in lambda.iter_mut().skip(n - 4) {
            *x = 100.0;
        }
        let g = with_eigenvalues(3, &lambda);
        let (lam, z) = top_eigen(g.as_ref(), 5, Par::Seq).unwrap();
        for &l in &lam[..4] {
            assert!((l - 100.0).abs() < 1e-11);
        }
        assert!((lam[4] - (n - 5) as f64).abs() < 1e-11);
        let gram = z.transpose() * &z;
        assert!((&gram - Mat::<f64>::identity(5, 5)).norm_max() < 1e-12);
    }

    #[test]
    fn small_and_degenerate_sizes() {
        let one = Mat::from_fn(1, 1, |_, _| -3.0);
        let (lam, z) = top_eigen(one.as_ref(), 1, Par::Seq).unwrap();
        assert!((lam[0] + 3.0).abs() < 1e-14);
        assert!((z[(0, 0)].abs() - 1.0).abs() < 1e-15);
        check_against_full(&with_eigenvalues(4, &[2.0, -1.0]), 2, 1e-12);
        let zero = Mat::<f64>::zeros(5, 5);
        let (lam, _) = top_eigen(zero.as_ref(), 2, Par::Seq).unwrap();
        assert!(lam.iter().all(|l| l.abs() < 1e-300));
        assert!(top_eigen(zero.as_ref(), 0, Par::Seq).is_none());
        assert!(top_eigen(zero.as_ref(), 6, Par::Seq).is_none());
        let nan = Mat::from_fn(3, 3, |i, _| if i == 2 { f64::NAN } else { 1.0 });
        assert!(top_eigen(nan.as_ref(), 1, Par::Seq).is_none());
    }
}
