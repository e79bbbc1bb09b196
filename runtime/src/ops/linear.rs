//! Bias-free linear layer `y = x W^T` (SEMANTICS §1) and its two backward products.
//!
//! Thin wrappers over [`gemm`](super::gemm::gemm) that fix the transposes and
//! shapes, with a [`Store`] so that a projection can write straight into the
//! residual stream (`h += o_proj(...)`) and gradients from several consumers
//! of one activation can be summed in place.

use super::columns::{concat_cols, split_cols};
use super::gemm::{Trans, gemm};
use super::{OpsError, Store, check_len, dims};

fn beta(store: Store) -> f32 {
    match store {
        Store::Overwrite => 0.0,
        Store::Accumulate => 1.0,
    }
}

/// Linear forward: `y (=|+=) x W^T`.
///
/// x: `(n, d_in)`, w: `(d_out, d_in)`, y: `(n, d_out)`. The backward needs
/// `w` for dx and `x` for dW.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    y: &mut [f32],
    store: Store,
) -> Result<(), OpsError> {
    gemm(n, d_out, d_in, 1.0, x, Trans::N, w, Trans::T, beta(store), y)
}

/// Linear backward w.r.t. the input: `dx (=|+=) g W` (from `y = x W^T`).
///
/// g: `(n, d_out)`, w: `(d_out, d_in)`, dx: `(n, d_in)`.
pub fn linear_backward_input(
    g: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    dx: &mut [f32],
    store: Store,
) -> Result<(), OpsError> {
    gemm(n, d_in, d_out, 1.0, g, Trans::N, w, Trans::N, beta(store), dx)
}

/// Linear backward w.r.t. the weight: `dW (=|+=) g^T x` (from `y = x W^T`).
///
/// g: `(n, d_out)`, x: `(n, d_in)`, dw: `(d_out, d_in)`. Only needed for a
/// trainable weight (never a base weight in lamdac).
pub fn linear_backward_weight(
    g: &[f32],
    x: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    dw: &mut [f32],
    store: Store,
) -> Result<(), OpsError> {
    gemm(d_out, d_in, n, 1.0, g, Trans::T, x, Trans::N, beta(store), dw)
}

/// The first `len` values of `scratch`, grown (with zeros) when it is shorter.
fn grown(scratch: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    &mut scratch[..len]
}

/// Blocks narrower than this many columns share one GEMM with their narrow
/// neighbours (through a small copy): a GEMM of 16 columns runs at about half
/// the rate of a wide one, and the A's of a stack (rank r each) sit side by side.
pub const NARROW_BLOCK: usize = 64;

/// The runs of [`stacked_linear_forward`] and [`stacked_linear_backward_input`]:
/// `(first block, past the last block)` — a wide block alone, or a maximal
/// run of adjacent narrow blocks.
fn block_runs(widths: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= widths.len() {
            return None;
        }
        let mut j = i + 1;
        if widths[i] < NARROW_BLOCK {
            while j < widths.len() && widths[j] < NARROW_BLOCK {
                j += 1;
            }
        }
        let run = (i, j);
        i = j;
        Some(run)
    })
}

/// Linear forward against a weight stacked by rows, each block of the
/// product into its own buffer: `ys[i] = x W_i^T`, `W = [W_0; W_1; ...]`.
///
/// x: `(n, d_in)`, w: `(sum widths, d_in)`, ys\[i\]: `(n, widths[i])`. A wide
/// block is one GEMM writing its buffer; a run of narrow blocks is one GEMM
/// into a scratch `(n, run width)` split afterwards (a copy of only those
/// columns; `scratch` is that buffer, grown once and reused by the caller).
/// The whole product never exists.
#[allow(clippy::too_many_arguments)]
pub fn stacked_linear_forward(
    x: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    widths: &[usize],
    ys: &mut [&mut [f32]],
    scratch: &mut Vec<f32>,
) -> Result<(), OpsError> {
    const OP: &str = "linear_split";
    let total: usize = widths.iter().sum();
    check_len(OP, "x", x.len(), dims(OP, &[n, d_in])?)?;
    check_len(OP, "w", w.len(), dims(OP, &[total, d_in])?)?;
    check_len(OP, "ys", ys.len(), widths.len())?;
    let mut row = 0;
    for (a, b) in block_runs(widths) {
        let cols: usize = widths[a..b].iter().sum();
        let wb = &w[row * d_in..(row + cols) * d_in];
        if b == a + 1 {
            check_len(OP, "y", ys[a].len(), n * cols)?;
            linear_forward(x, wb, n, d_in, cols, ys[a], Store::Overwrite)?;
        } else {
            let scratch = grown(scratch, n * cols);
            linear_forward(x, wb, n, d_in, cols, scratch, Store::Overwrite)?;
            split_cols(scratch, n, &widths[a..b], &mut ys[a..b])?;
        }
        row += cols;
    }
    Ok(())
}

/// Linear backward w.r.t. the input of a stacked weight, from the blocks of
/// the output gradient: `dx = sum_i g_i W_i`, `W = [W_0; W_1; ...]`.
///
/// gs\[i\]: `(n, widths[i])`, w: `(sum widths, d_in)`, dx: `(n, d_in)`. A wide
/// block is one GEMM accumulating into dx; a run of narrow blocks is
/// concatenated first (a copy of only those columns, into `scratch`) and
/// multiplied once.
#[allow(clippy::too_many_arguments)]
pub fn stacked_linear_backward_input(
    gs: &[&[f32]],
    w: &[f32],
    n: usize,
    d_in: usize,
    widths: &[usize],
    dx: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), OpsError> {
    const OP: &str = "linear_grad_input_cat";
    let total: usize = widths.iter().sum();
    check_len(OP, "w", w.len(), dims(OP, &[total, d_in])?)?;
    check_len(OP, "gs", gs.len(), widths.len())?;
    check_len(OP, "dx", dx.len(), dims(OP, &[n, d_in])?)?;
    let mut store = Store::Overwrite;
    let mut row = 0;
    for (a, b) in block_runs(widths) {
        let cols: usize = widths[a..b].iter().sum();
        let wb = &w[row * d_in..(row + cols) * d_in];
        if b == a + 1 {
            check_len(OP, "g", gs[a].len(), n * cols)?;
            linear_backward_input(gs[a], wb, n, d_in, cols, dx, store)?;
        } else {
            let scratch = grown(scratch, n * cols);
            concat_cols(&gs[a..b], n, &widths[a..b], scratch)?;
            linear_backward_input(scratch, wb, n, d_in, cols, dx, store)?;
        }
        store = Store::Accumulate;
        row += cols;
    }
    if widths.is_empty() {
        dx.fill(0.0);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    fn linear_ref(x: &[f64], w: &[f64], n: usize, d_in: usize, d_out: usize) -> Vec<f64> {
        let mut y = vec![0.0; n * d_out];
        for i in 0..n {
            for o in 0..d_out {
                y[i * d_out + o] = (0..d_in).map(|c| x[i * d_in + c] * w[o * d_in + c]).sum();
            }
        }
        y
    }

    #[test]
    fn forward_and_fd_backward() {
        let mut rng = Rng::new(61);
        for (n, d_in, d_out) in [(1usize, 1usize, 1usize), (3, 17, 5), (5, 6, 13)] {
            let x = rng.vec(n * d_in);
            let w = rng.vec(d_out * d_in);
            let g = rng.vec(n * d_out);
            let (x64, w64, g64) = (to64(&x), to64(&w), to64(&g));
            let mut y = vec![f32::NAN; n * d_out];
            linear_forward(&x, &w, n, d_in, d_out, &mut y, Store::Overwrite).unwrap();
            assert_close("y", &y, &linear_ref(&x64, &w64, n, d_in, d_out), 1e-6, 1e-6);
            // Accumulate: y + x W^T
            linear_forward(&x, &w, n, d_in, d_out, &mut y, Store::Accumulate).unwrap();
            let twice: Vec<f64> = linear_ref(&x64, &w64, n, d_in, d_out).iter().map(|v| 2.0 * v).collect();
            assert_close("2y", &y, &twice, 1e-6, 1e-6);

            let mut dx = vec![f32::NAN; n * d_in];
            let mut dw = vec![f32::NAN; d_out * d_in];
            linear_backward_input(&g, &w, n, d_in, d_out, &mut dx, Store::Overwrite).unwrap();
            linear_backward_weight(&g, &x, n, d_in, d_out, &mut dw, Store::Overwrite).unwrap();
            let fd_x = fd_grad(&x64, 1e-6, |x| dot(&g64, &linear_ref(x, &w64, n, d_in, d_out)));
            let fd_w = fd_grad(&w64, 1e-6, |w| dot(&g64, &linear_ref(&x64, w, n, d_in, d_out)));
            assert_close("dx", &dx, &fd_x, 1e-6, 1e-5);
            assert_close("dw", &dw, &fd_w, 1e-6, 1e-5);
        }
    }

    /// The stacked forms against the f64 product of the whole stack, with
    /// wide, narrow and mixed runs of blocks (awkward widths, a lone narrow
    /// block between wide ones, a run of narrow ones at the end).
    #[test]
    fn stacked_forms_equal_the_whole_product() {
        let mut rng = Rng::new(7);
        for widths in [vec![70usize], vec![3, 5], vec![65, 7, 80, 16, 16, 1], vec![100, 64, 63]] {
            let (n, d_in) = (17usize, 13usize);
            let total: usize = widths.iter().sum();
            let x = rng.vec(n * d_in);
            let w = rng.vec(total * d_in);
            let y = linear_ref(&to64(&x), &to64(&w), n, d_in, total);
            let mut ys: Vec<Vec<f32>> = widths.iter().map(|&c| vec![f32::NAN; n * c]).collect();
            let mut views: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
            stacked_linear_forward(&x, &w, n, d_in, &widths, &mut views, &mut Vec::new()).unwrap();
            let mut at = 0;
            for (yi, &c) in ys.iter().zip(&widths) {
                let want: Vec<f64> = (0..n)
                    .flat_map(|r| y[r * total + at..r * total + at + c].to_vec())
                    .collect();
                assert_close("block", yi, &want, 1e-6, 1e-6);
                at += c;
            }
            // backward: [g_0, g_1, ...] W
            let gs: Vec<Vec<f32>> = widths.iter().map(|&c| rng.vec(n * c)).collect();
            let g: Vec<f64> = (0..n)
                .flat_map(|r| {
                    gs.iter()
                        .zip(&widths)
                        .flat_map(move |(gi, &c)| to64(&gi[r * c..(r + 1) * c]))
                })
                .collect();
            let w64 = to64(&w);
            let want: Vec<f64> = (0..n * d_in)
                .map(|e| {
                    (0..total)
                        .map(|o| g[(e / d_in) * total + o] * w64[o * d_in + e % d_in])
                        .sum()
                })
                .collect();
            let mut dx = vec![f32::NAN; n * d_in];
            let refs: Vec<&[f32]> = gs.iter().map(Vec::as_slice).collect();
            stacked_linear_backward_input(&refs, &w, n, d_in, &widths, &mut dx, &mut Vec::new()).unwrap();
            assert_close("dx", &dx, &want, 1e-6, 1e-6);
        }
    }
}
