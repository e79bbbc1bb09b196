//! GEMM `C = beta C + alpha op(A) op(B)` on row-major `f32` slices, on top of faer's matmul.
//!
//! Design: faer is column-major at heart but takes arbitrary strides, so a
//! row-major `(r, c)` buffer is handed over as the transpose of a column-major
//! `(c, r)` view (`MatRef::from_row_major_slice`) and a transposed operand is
//! just `.transpose()` of that view: no copies, no `unsafe`. faer only knows
//! `Accum::Replace` (`beta = 0`) and `Accum::Add` (`beta = 1`); any other beta
//! scales C first. Products below [`PAR_MIN_FLOPS`] multiply-adds run
//! sequentially: below that, waking rayon costs more than it saves. Kernels
//! that already parallelise over heads call [`gemm_with`] with `Par::Seq`.

use faer::{Accum, MatMut, MatRef, Par};

use super::{OpsError, check_len, dims};

/// Whether an operand enters the product as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// `op(X) = X`.
    N,
    /// `op(X) = X^T`.
    T,
}

/// Products with `m * n * k` below this many multiply-adds (128^3) run on one
/// thread. A heuristic: below it a sequential product takes tens of
/// microseconds, the order of rayon's dispatch and faer's per-thread packing
/// (on 2 cores, a 64^3 product ran ~3x slower on rayon than sequentially).
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// `C = beta C + alpha op(A) op(B)`, multithreaded when large enough.
///
/// Shapes (row-major): `op(A)` is `(m, k)`, so `a` stores `(m, k)` when
/// `ta = N` and `(k, m)` when `ta = T`; `op(B)` is `(k, n)`, so `b` stores
/// `(k, n)` or `(n, k)`; `c` is `(m, n)`. With `beta = 0` the old contents of
/// `c` are not read (BLAS semantics); with `k = 0` the result is `beta C`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    beta: f32,
    c: &mut [f32],
) -> Result<(), OpsError> {
    let par = auto_par(m, n, k);
    gemm_with(par, m, n, k, alpha, a, ta, b, tb, beta, c)
}

/// The parallelism [`gemm`] picks for an `(m, n, k)` product.
pub(crate) fn auto_par(m: usize, n: usize, k: usize) -> Par {
    let flops = m.saturating_mul(n).saturating_mul(k);
    if flops < PAR_MIN_FLOPS || rayon::current_num_threads() <= 1 {
        Par::Seq
    } else {
        Par::rayon(0)
    }
}

/// [`gemm`] with an explicit faer parallelism (`Par::Seq` inside rayon tasks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_with(
    par: Par,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    beta: f32,
    c: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "gemm";
    check_len(OP, "a", a.len(), dims(OP, &[m, k])?)?;
    check_len(OP, "b", b.len(), dims(OP, &[k, n])?)?;
    check_len(OP, "c", c.len(), dims(OP, &[m, n])?)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 || alpha == 0.0 {
        scale(c, beta);
        return Ok(());
    }
    let accum = if beta == 0.0 {
        Accum::Replace
    } else {
        if beta != 1.0 {
            scale(c, beta);
        }
        Accum::Add
    };
    let lhs = match ta {
        Trans::N => MatRef::from_row_major_slice(a, m, k),
        Trans::T => MatRef::from_row_major_slice(a, k, m).transpose(),
    };
    let rhs = match tb {
        Trans::N => MatRef::from_row_major_slice(b, k, n),
        Trans::T => MatRef::from_row_major_slice(b, n, k).transpose(),
    };
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    match par {
        Par::Seq => {
            faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, Par::Seq);
            super::vector_state::clear_upper_here();
        }
        Par::Rayon(_) => split_matmul(dst, accum, lhs, rhs, alpha, rayon::current_num_threads()),
    }
    Ok(())
}

/// `dst (+)= alpha lhs rhs` on `parts` threads: the output split in halves
/// by `rayon::join` until each part is one thread's, by columns while they
/// are many enough (see [`COL_SPLIT_MIN`]), else along the longer side;
/// each part a sequential faer GEMM (which then packs its own share of the
/// other operand: `2 / rows` extra work for a split of rows). Unlike faer's
/// own parallel driver this allocates nothing per call (`join` runs its jobs
/// from the stack), and each thread cleans its own vector state.
fn split_matmul(
    dst: MatMut<'_, f32>,
    accum: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    alpha: f32,
    parts: usize,
) {
    let (m, n) = (dst.nrows(), dst.ncols());
    if parts <= 1 || m.max(n) < 2 * SPLIT_MIN {
        faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, Par::Seq);
        super::vector_state::clear_upper_here();
        return;
    }
    let left = parts / 2;
    // Columns are split while each part keeps at least COL_SPLIT_MIN of
    // them: faer's kernels run markedly slower on some row-split shapes
    // (Sapphire Rapids, one thread, C = A B^T with k = 576, n = 960:
    // 512 rows 102 GFLOP/s, 1024 rows 156; 1024 rows of 480 columns 159).
    if n < parts * COL_SPLIT_MIN && m >= n {
        // multiples of the kernels' row blocks keep every part's tiles whole
        let at = (m * left / parts).next_multiple_of(SPLIT_MIN).min(m);
        let (top, bottom) = dst.split_at_row_mut(at);
        let (l0, l1) = lhs.split_at_row(at);
        rayon::join(
            || split_matmul(top, accum, l0, rhs, alpha, left),
            || split_matmul(bottom, accum, l1, rhs, alpha, parts - left),
        );
    } else {
        let at = (n * left / parts).next_multiple_of(SPLIT_MIN).min(n);
        let (lcols, rcols) = dst.split_at_col_mut(at);
        let (r0, r1) = rhs.split_at_col(at);
        rayon::join(
            || split_matmul(lcols, accum, lhs, r0, alpha, left),
            || split_matmul(rcols, accum, lhs, r1, alpha, parts - left),
        );
    }
}

/// Parts of a split GEMM are multiples of this many rows (or columns).
const SPLIT_MIN: usize = 16;

/// A GEMM is split by columns while each part keeps this many of them.
const COL_SPLIT_MIN: usize = 256;

/// `c *= beta`, with `beta = 0` writing exact zeros (NaN-safe, like BLAS).
fn scale(c: &mut [f32], beta: f32) {
    if beta == 0.0 {
        c.fill(0.0);
    } else if beta != 1.0 {
        c.iter_mut().for_each(|x| *x *= beta);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::Rng;

    /// Naive triple loop in f64 over the same stored operands.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        ta: Trans,
        b: &[f32],
        tb: Trans,
        beta: f32,
        c: &[f32],
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = match ta {
                        Trans::N => a[i * k + p],
                        Trans::T => a[p * m + i],
                    };
                    let bv = match tb {
                        Trans::N => b[p * n + j],
                        Trans::T => b[j * k + p],
                    };
                    s += av as f64 * bv as f64;
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * n + j] as f64
                };
                out[i * n + j] = old + alpha as f64 * s;
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize, alpha: f32, beta: f32, par: Par, rng: &mut Rng) {
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let mut c = rng.vec(m * n);
                let want = naive(m, n, k, alpha, &a, ta, &b, tb, beta, &c);
                gemm_with(par, m, n, k, alpha, &a, ta, &b, tb, beta, &mut c).unwrap();
                // Each entry sums k products of numbers in [-1, 1): error <= ~k ulp.
                let tol = 1e-6 * (k as f64 + 2.0) * (alpha.abs() as f64 + beta.abs() as f64);
                for (idx, (&g, &w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "m={m} n={n} k={k} {ta:?}{tb:?} alpha={alpha} beta={beta} \
                         at {idx}: got {g}, want {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_matches_naive_at_awkward_sizes_all_transposes() {
        let mut rng = Rng::new(1);
        let sizes = [1usize, 2, 3, 5, 17, 33];
        for &m in &sizes {
            for &n in &sizes {
                for &k in &[1usize, 3, 17, 64] {
                    check(m, n, k, 1.0, 0.0, Par::Seq, &mut rng);
                }
            }
        }
        // alpha / beta variants (Replace, Add, general scale)
        for (alpha, beta) in [(0.5, 1.0), (-2.0, 0.25), (1.0, -1.0), (0.0, 0.5)] {
            check(7, 5, 9, alpha, beta, Par::Seq, &mut rng);
        }
    }

    #[test]
    fn gemm_parallel_large_awkward() {
        let mut rng = Rng::new(2);
        check(131, 97, 783, 1.0, 0.0, Par::rayon(0), &mut rng);
        check(67, 301, 129, 0.75, 1.0, Par::rayon(0), &mut rng);
        // the public entry point picks parallelism itself
        let (m, n, k) = (200, 150, 90);
        let a = rng.vec(m * k);
        let b = rng.vec(n * k);
        let mut c = vec![f32::NAN; m * n];
        gemm(m, n, k, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &mut c).unwrap();
        let want = naive(m, n, k, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &c);
        for (g, w) in c.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-4);
        }
    }

    #[test]
    fn gemm_degenerate_sizes() {
        // k = 0: C = beta C; beta = 0 clears NaN.
        let mut c = vec![2.0f32, f32::NAN];
        gemm(1, 2, 0, 1.0, &[], Trans::N, &[], Trans::N, 0.0, &mut c).unwrap();
        assert_eq!(c, vec![0.0, 0.0]);
        let mut c = vec![2.0f32, 4.0];
        gemm(2, 1, 0, 1.0, &[], Trans::T, &[], Trans::N, 0.5, &mut c).unwrap();
        assert_eq!(c, vec![1.0, 2.0]);
        // m = 0
        let mut c: Vec<f32> = vec![];
        gemm(0, 3, 2, 1.0, &[], Trans::N, &[0.0; 6], Trans::N, 0.0, &mut c).unwrap();
        // beta = 0 overwrites NaN garbage
        let mut c = vec![f32::NAN; 4];
        gemm(2, 2, 1, 1.0, &[1.0, 2.0], Trans::N, &[3.0, 4.0], Trans::N, 0.0, &mut c).unwrap();
        assert_eq!(c, vec![3.0, 4.0, 6.0, 8.0]);
    }

    /// Throughput check, not a correctness test:
    /// `cargo test -p lamda-runtime --release gemm_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemm_throughput() {
        let mut rng = Rng::new(3);
        for &(m, n, k) in &[
            (64usize, 64usize, 64usize),
            (256, 256, 256),
            (1024, 1024, 1024),
            (2048, 512, 2048),
        ] {
            let a = rng.vec(m * k);
            let b = rng.vec(n * k);
            let mut c = vec![0.0f32; m * n];
            for (label, par) in [("seq", Par::Seq), ("rayon", Par::rayon(0)), ("auto", auto_par(m, n, k))] {
                let reps = (1usize << 30) / (m * n * k) + 1;
                let t0 = std::time::Instant::now();
                for _ in 0..reps {
                    gemm_with(par, m, n, k, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &mut c).unwrap();
                }
                let s = t0.elapsed().as_secs_f64();
                let gflops = 2.0 * (m * n * k * reps) as f64 / s / 1e9;
                eprintln!("gemm {m}x{n}x{k} {label:5}: {gflops:7.1} GFLOP/s");
            }
        }
    }

    #[test]
    fn gemm_rejects_bad_lengths() {
        let mut c = vec![0.0f32; 4];
        let err = gemm(2, 2, 2, 1.0, &[0.0; 3], Trans::N, &[0.0; 4], Trans::N, 0.0, &mut c);
        assert!(matches!(err, Err(OpsError::Len { name: "a", .. })));
    }
}
