//! Pointwise ops of the unfused IR: scale, add, mul, silu and its gradient, column scaling.
//!
//! The fused SwiGLU in `elementwise.rs` covers the MLP when fusion runs; the
//! unfused graph keeps `silu` and `mul` separate, and adapters may scale
//! columns by a vector (`diag(v)` in a path). All outputs are overwritten.

use rayon::prelude::*;

use super::{OpsError, check_len};

const CHUNK: usize = 1 << 14;

fn zip2(
    op: &'static str,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(), OpsError> {
    check_len(op, "b", b.len(), a.len())?;
    check_len(op, "out", out.len(), a.len())?;
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        });
    Ok(())
}

/// `out = c x`. x, out: any common length.
pub fn scale(x: &[f32], c: f32, out: &mut [f32]) -> Result<(), OpsError> {
    check_len("scale", "out", out.len(), x.len())?;
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = c * v;
        }
    });
    Ok(())
}

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), OpsError> {
    zip2("add", a, b, out, |x, y| x + y)
}

/// `out = a * b` elementwise.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), OpsError> {
    zip2("mul", a, b, out, |x, y| x * y)
}

/// `out = silu(x) = x / (1 + exp(-x))` (PyTorch's CPU formula).
pub fn silu(x: &[f32], out: &mut [f32]) -> Result<(), OpsError> {
    check_len("silu", "out", out.len(), x.len())?;
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v / (1.0 + (-v).exp());
        }
    });
    Ok(())
}

/// `out = g silu'(x)`, `silu'(x) = s (1 + x (1 - s))` with `s = sigmoid(x)`.
pub fn silu_grad(g: &[f32], x: &[f32], out: &mut [f32]) -> Result<(), OpsError> {
    zip2("silu_grad", g, x, out, |g, x| {
        let s = 1.0 / (1.0 + (-x).exp());
        g * s * (1.0 + x * (1.0 - s))
    })
}

/// `out = x diag(v)`: x, out (n, k), v (k).
pub fn col_scale(x: &[f32], v: &[f32], out: &mut [f32]) -> Result<(), OpsError> {
    let k = v.len();
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(OpsError::Config {
            op: "col_scale",
            msg: format!("{} entries are not rows of {k}", x.len()),
        });
    }
    check_len("col_scale", "out", out.len(), x.len())?;
    out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| {
        for ((o, &a), &b) in o.iter_mut().zip(x).zip(v) {
            *o = a * b;
        }
    });
    Ok(())
}

/// `dv = sum over rows of g * x`: g, x (n, k), dv (k). Rows are summed in order.
pub fn col_scale_grad(g: &[f32], x: &[f32], dv: &mut [f32]) -> Result<(), OpsError> {
    let k = dv.len();
    check_len("col_scale_grad", "x", x.len(), g.len())?;
    if k == 0 || !g.len().is_multiple_of(k) {
        return Err(OpsError::Config {
            op: "col_scale_grad",
            msg: format!("{} entries are not rows of {k}", g.len()),
        });
    }
    dv.fill(0.0);
    for (gr, xr) in g.chunks_exact(k).zip(x.chunks_exact(k)) {
        for ((d, &a), &b) in dv.iter_mut().zip(gr).zip(xr) {
            *d += a * b;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    fn silu64(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    #[test]
    fn silu_grad_matches_finite_differences() {
        let mut rng = Rng::new(7);
        for len in [1, 3, 17, 783] {
            let x = rng.vec_scaled(len, 4.0);
            let g = rng.vec(len);
            let mut y = vec![0.0; len];
            silu(&x, &mut y).unwrap();
            assert_close(
                "silu",
                &y,
                &to64(&x).iter().map(|&v| silu64(v)).collect::<Vec<_>>(),
                1e-6,
                1e-6,
            );
            let mut dx = vec![0.0; len];
            silu_grad(&g, &x, &mut dx).unwrap();
            let g64 = to64(&g);
            let want = fd_grad(&to64(&x), 1e-6, |x| {
                dot(&g64, &x.iter().map(|&v| silu64(v)).collect::<Vec<_>>())
            });
            assert_close("silu_grad", &dx, &want, 1e-6, 1e-5);
        }
    }

    #[test]
    fn col_scale_grads_match_finite_differences() {
        let mut rng = Rng::new(11);
        for (n, k) in [(1, 1), (3, 5), (17, 3)] {
            let x = rng.vec(n * k);
            let v = rng.vec(k);
            let g = rng.vec(n * k);
            let g64 = to64(&g);
            let f =
                |x: &[f64], v: &[f64]| -> f64 { dot(&g64, &(0..n * k).map(|i| x[i] * v[i % k]).collect::<Vec<_>>()) };
            let mut dx = vec![0.0; n * k];
            col_scale(&g, &v, &mut dx).unwrap();
            let want_dx = fd_grad(&to64(&x), 1e-6, |x| f(x, &to64(&v)));
            assert_close("dx", &dx, &want_dx, 1e-6, 1e-5);
            let mut dv = vec![0.0; k];
            col_scale_grad(&g, &x, &mut dv).unwrap();
            let want_dv = fd_grad(&to64(&v), 1e-6, |v| f(&to64(&x), v));
            assert_close("dv", &dv, &want_dv, 1e-6, 1e-5);
        }
    }

    #[test]
    fn mul_and_scale_grads_are_the_other_factor() {
        // d<g, a*b>/da = g*b, d<g, c a>/da = c g: checked by finite differences.
        let mut rng = Rng::new(3);
        let (a, b, g) = (rng.vec(17), rng.vec(17), rng.vec(17));
        let g64 = to64(&g);
        let mut da = vec![0.0; 17];
        mul(&g, &b, &mut da).unwrap();
        let want = fd_grad(&to64(&a), 1e-6, |a| {
            dot(&g64, &a.iter().zip(to64(&b)).map(|(x, y)| x * y).collect::<Vec<_>>())
        });
        assert_close("mul", &da, &want, 1e-6, 1e-5);
        let mut ds = vec![0.0; 17];
        scale(&g, 0.37, &mut ds).unwrap();
        let want = fd_grad(&to64(&a), 1e-6, |a| {
            dot(&g64, &a.iter().map(|x| 0.37 * x).collect::<Vec<_>>())
        });
        assert_close("scale", &ds, &want, 1e-6, 1e-5);
        let mut s = vec![0.0; 17];
        add(&a, &b, &mut s).unwrap();
        assert_close(
            "add",
            &s,
            &to64(&a).iter().zip(to64(&b)).map(|(x, y)| x + y).collect::<Vec<_>>(),
            1e-7,
            0.0,
        );
    }
}
