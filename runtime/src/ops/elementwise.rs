//! Elementwise ops: the SwiGLU gate of the MLP and the residual add.
//!
//! Flat slices split into fixed chunks for rayon; every element is
//! independent, so results do not depend on the split.

use rayon::prelude::*;

use super::{OpsError, check_len};

/// Elements per rayon task for elementwise kernels.
const CHUNK: usize = 1 << 14;

/// `silu(x) = x sigmoid(x)`, evaluated as PyTorch's CPU kernel does: `x / (1 + exp(-x))`.
#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU forward: `h = silu(gate) * up`.
///
/// gate, up, h: `(n, f)` (any common length `n * f`). Backward needs `gate` and `up`.
pub fn swiglu_forward(gate: &[f32], up: &[f32], h: &mut [f32]) -> Result<(), OpsError> {
    const OP: &str = "swiglu_forward";
    check_len(OP, "up", up.len(), gate.len())?;
    check_len(OP, "h", h.len(), gate.len())?;
    h.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(h, (gate, up))| {
            for ((h, &g), &u) in h.iter_mut().zip(gate).zip(up) {
                *h = silu(g) * u;
            }
        });
    Ok(())
}

/// SwiGLU backward, given `dh = dL/dh`.
///
/// With `s = sigmoid(gate)`:
/// `d silu(x)/dx = s + x s (1 - s) = s (1 + x (1 - s))`, so
/// `dgate = dh * up * s (1 + gate (1 - s))` and `dup = dh * silu(gate)`.
///
/// gate, up, dh, dgate, dup: `(n, f)`; both outputs are overwritten.
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    dh: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "swiglu_backward";
    let len = gate.len();
    check_len(OP, "up", up.len(), len)?;
    check_len(OP, "dh", dh.len(), len)?;
    check_len(OP, "dgate", dgate.len(), len)?;
    check_len(OP, "dup", dup.len(), len)?;
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK).zip(dh.par_chunks(CHUNK)))
        .for_each(|(((dgate, dup), gate), (up, dh))| {
            for i in 0..gate.len() {
                let x = gate[i];
                let s = 1.0 / (1.0 + (-x).exp());
                dgate[i] = dh[i] * up[i] * (s * (1.0 + x * (1.0 - s)));
                dup[i] = dh[i] * silu(x);
            }
        });
    Ok(())
}

/// Residual add: `dst += src`. dst, src: `(n, d)` (any common length).
///
/// Also the gradient fan-in of the residual stream: `d h_in += d h_out` flows
/// unchanged through `h_out = h_in + f(h_in)`.
pub fn add_assign(dst: &mut [f32], src: &[f32]) -> Result<(), OpsError> {
    check_len("add_assign", "src", src.len(), dst.len())?;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    /// Independent f64 reference: silu(g) * u with silu = g * sigmoid(g).
    fn swiglu_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
        gate.iter()
            .zip(up)
            .map(|(&g, &u)| g * (1.0 / (1.0 + (-g).exp())) * u)
            .collect()
    }

    #[test]
    fn swiglu_forward_and_fd_backward() {
        let mut rng = Rng::new(11);
        for (n, f) in [(1usize, 1usize), (3, 17), (5, 7)] {
            let gate = rng.vec_scaled(n * f, 4.0);
            let up = rng.vec_scaled(n * f, 2.0);
            let gproj = rng.vec(n * f);
            let mut h = vec![0.0; n * f];
            swiglu_forward(&gate, &up, &mut h).unwrap();
            let (g64, u64_, p64) = (to64(&gate), to64(&up), to64(&gproj));
            assert_close("h", &h, &swiglu_ref(&g64, &u64_), 1e-6, 1e-6);

            let mut dgate = vec![0.0; n * f];
            let mut dup = vec![0.0; n * f];
            swiglu_backward(&gate, &up, &gproj, &mut dgate, &mut dup).unwrap();
            let fd_gate = fd_grad(&g64, 1e-6, |g| dot(&p64, &swiglu_ref(g, &u64_)));
            let fd_up = fd_grad(&u64_, 1e-6, |u| dot(&p64, &swiglu_ref(&g64, u)));
            assert_close("dgate", &dgate, &fd_gate, 1e-6, 1e-5);
            assert_close("dup", &dup, &fd_up, 1e-6, 1e-5);
        }
    }

    #[test]
    fn add_assign_adds_and_checks_len() {
        let mut a = vec![1.0f32, 2.0, 3.0];
        add_assign(&mut a, &[0.5, -2.0, 1.0]).unwrap();
        assert_eq!(a, vec![1.5, 0.0, 4.0]);
        assert!(add_assign(&mut a, &[1.0]).is_err());
        // larger than one chunk
        let mut big = vec![1.0f32; 40_000];
        let src: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        add_assign(&mut big, &src).unwrap();
        assert!(big.iter().enumerate().all(|(i, &v)| v == 1.0 + i as f32));
    }
}
