//! Bias-free linear layer `y = x W^T` (SEMANTICS §1) and its two backward products.
//!
//! Thin wrappers over [`gemm`](super::gemm::gemm) that fix the transposes and
//! shapes, with a [`Store`] so that a projection can write straight into the
//! residual stream (`h += o_proj(...)`) and gradients from several consumers
//! of one activation can be summed in place.

use super::gemm::{Trans, gemm};
use super::{OpsError, Store};

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
}
