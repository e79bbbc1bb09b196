//! RMSNorm with a weight, forward and backward (Hugging Face `LlamaRMSNorm`).
//!
//! Forward `y = w * (x * rstd)`, `rstd = 1 / sqrt(mean(x^2) + eps)` per row,
//! in that order of operations (HF normalises first, then scales). The
//! forward saves `rstd` (one float per row) so the backward does not redo the
//! reduction. Rows are independent and run in parallel; the weight gradient,
//! a sum over rows, is reduced from fixed row chunks in chunk order so it is
//! the same on any number of threads.

use rayon::prelude::*;

use super::{OpsError, Store, check_len, dims, rows_per_task};

/// Sum of squares of one row, in f32 with 8 independent partial sums
/// (vectorisable, and a little more accurate than one running sum).
#[inline]
fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm forward: `y[i, :] = w * (x[i, :] * rstd[i])`,
/// `rstd[i] = 1 / sqrt(mean_j x[i, j]^2 + eps)`.
///
/// x: `(n, d)`, w: `(d)`, y: `(n, d)`, rstd: `(n)` (saved for the backward,
/// together with `x` and `w`). `d` must be positive.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    x: &[f32],
    w: &[f32],
    n: usize,
    d: usize,
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "rmsnorm_forward";
    if d == 0 {
        return Err(OpsError::Config {
            op: OP,
            msg: "hidden size d must be positive".into(),
        });
    }
    check_len(OP, "x", x.len(), dims(OP, &[n, d])?)?;
    check_len(OP, "w", w.len(), d)?;
    check_len(OP, "y", y.len(), x.len())?;
    check_len(OP, "rstd", rstd.len(), n)?;
    let rows = rows_per_task(d);
    y.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .zip(rstd.par_chunks_mut(rows))
        .for_each(|((y, x), rstd)| {
            for ((y, x), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(rstd) {
                let var = sum_sq(x) / d as f32;
                *r = 1.0 / (var + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = w * (x * *r);
                }
            }
        });
    Ok(())
}

/// RMSNorm backward, given `dy = dL/dy`.
///
/// With `r = rstd[i]` and `c = sum_j dy_j w_j x_j` over row i:
/// `dr/dx_k = -r^3 x_k / d`, hence
/// `dx_k = r w_k dy_k - (r^3 / d) x_k c`, and
/// `dw_j = sum_i dy[i, j] x[i, j] r_i` (a sum over rows).
///
/// x, dy, dx: `(n, d)`; w, dw: `(d)`; rstd: `(n)` from the forward.
/// `dx` is overwritten; `dw` is written or added into per `dw_store`, and
/// skipped when `None` (a frozen norm weight, as in every lamdac method).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    n: usize,
    d: usize,
    dx: &mut [f32],
    dw: Option<(&mut [f32], Store)>,
) -> Result<(), OpsError> {
    const OP: &str = "rmsnorm_backward";
    if d == 0 {
        return Err(OpsError::Config {
            op: OP,
            msg: "hidden size d must be positive".into(),
        });
    }
    let nd = dims(OP, &[n, d])?;
    check_len(OP, "x", x.len(), nd)?;
    check_len(OP, "w", w.len(), d)?;
    check_len(OP, "rstd", rstd.len(), n)?;
    check_len(OP, "dy", dy.len(), nd)?;
    check_len(OP, "dx", dx.len(), nd)?;
    if let Some((dw, _)) = &dw {
        check_len(OP, "dw", dw.len(), d)?;
    }
    let inv_d = 1.0 / d as f32;
    let rows = rows_per_task(d);
    dx.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d).zip(dy.par_chunks(rows * d)))
        .zip(rstd.par_chunks(rows))
        .for_each(|((dx, (x, dy)), rstd)| {
            for (((dx, x), dy), &r) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
                .zip(rstd)
            {
                let c: f32 = dy.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                let k = r * r * r * inv_d * c;
                for (((dx, &g), &w), &x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                    *dx = r * w * g - k * x;
                }
            }
        });
    if let Some((dw, store)) = dw {
        // Partial sums over fixed chunks of rows (at least 64 rows, so the
        // partials stay small next to x), combined in chunk order.
        let rows = rows.max(64);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(rows * d)
            .zip(dy.par_chunks(rows * d))
            .zip(rstd.par_chunks(rows))
            .map(|((x, dy), rstd)| {
                let mut acc = vec![0.0f32; d];
                for ((x, dy), &r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(rstd) {
                    for ((a, &x), &g) in acc.iter_mut().zip(x).zip(dy) {
                        *a += g * (x * r);
                    }
                }
                acc
            })
            .collect();
        if store == Store::Overwrite {
            dw.fill(0.0);
        }
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    /// Independent f64 reference of the forward.
    fn rmsnorm_ref(x: &[f64], w: &[f64], d: usize, eps: f64) -> Vec<f64> {
        x.chunks(d)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let r = 1.0 / (ms + eps).sqrt();
                row.iter().zip(w).map(move |(x, w)| x * r * w).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn forward_and_fd_backward_awkward_sizes() {
        let mut rng = Rng::new(31);
        for (n, d) in [(1usize, 1usize), (3, 17), (5, 6), (2, 64)] {
            let eps = 1e-5f32;
            let x = rng.vec(n * d);
            let w: Vec<f32> = rng.vec(d).iter().map(|v| 1.0 + 0.3 * v).collect();
            let g = rng.vec(n * d);
            let (x64, w64, g64) = (to64(&x), to64(&w), to64(&g));
            let mut y = vec![0.0; n * d];
            let mut rstd = vec![0.0; n];
            rmsnorm_forward(&x, &w, n, d, eps, &mut y, &mut rstd).unwrap();
            assert_close("y", &y, &rmsnorm_ref(&x64, &w64, d, eps as f64), 1e-6, 1e-5);

            let mut dx = vec![0.0; n * d];
            let mut dw = vec![f32::NAN; d];
            rmsnorm_backward(&x, &w, &rstd, &g, n, d, &mut dx, Some((&mut dw, Store::Overwrite))).unwrap();
            let eps64 = eps as f64;
            let fd_x = fd_grad(&x64, 1e-6, |x| dot(&g64, &rmsnorm_ref(x, &w64, d, eps64)));
            let fd_w = fd_grad(&w64, 1e-6, |w| dot(&g64, &rmsnorm_ref(&x64, w, d, eps64)));
            assert_close("dx", &dx, &fd_x, 1e-5, 1e-4);
            assert_close("dw", &dw, &fd_w, 1e-5, 1e-4);
        }
    }

    #[test]
    fn dw_accumulates_and_is_thread_count_independent() {
        let mut rng = Rng::new(32);
        // Enough rows for several rayon chunks (rows_per_task(8) = 2048).
        let (n, d) = (5000usize, 8usize);
        let x = rng.vec(n * d);
        let w = rng.vec(d);
        let g = rng.vec(n * d);
        let mut y = vec![0.0; n * d];
        let mut rstd = vec![0.0; n];
        rmsnorm_forward(&x, &w, n, d, 1e-6, &mut y, &mut rstd).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut dx = vec![0.0; n * d];
                let mut dw = vec![1.0; d];
                rmsnorm_backward(&x, &w, &rstd, &g, n, d, &mut dx, Some((&mut dw, Store::Accumulate))).unwrap();
                (dx, dw)
            })
        };
        let (dx1, dw1) = run(1);
        let (dx3, dw3) = run(3);
        assert_eq!(dx1, dx3);
        assert_eq!(dw1, dw3);
        // Accumulate added the old value 1.0 onto the f64 sum.
        let want: Vec<f64> = (0..d)
            .map(|j| {
                1.0 + (0..n)
                    .map(|i| g[i * d + j] as f64 * x[i * d + j] as f64 * rstd[i] as f64)
                    .sum::<f64>()
            })
            .collect();
        assert_close("dw", &dw1, &want, 1e-4, 1e-5);
    }
}
