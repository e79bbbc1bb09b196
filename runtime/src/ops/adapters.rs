//! The adapter branches added onto a linear layer: LaMDA (SEMANTICS §3) and LoRA (§5).
//!
//! Both kernels only add their branch: the base product `x W_res^T` (LaMDA)
//! or `x W^T` (LoRA) and its `g W` backward are [`linear`](super::linear)
//! calls made by the caller, so `y` and `dx` are always accumulated into
//! here. Every product is a GEMM of an `(n, ·)` activation with an
//! r-dimensional factor, associated so that nothing of size `d_out x d_in`
//! is ever formed.
//!
//! Saved activations: LaMDA keeps only the r-dimensional `z = x A^T` and
//! `u = z S^T` (never x); LoRA keeps `x` (for dA) and `xa = x A^T` (for dB).

use super::gemm::{Trans, gemm};
use super::{OpsError, check_len, dims};

/// Sizes of one adapted linear: `n` tokens, `W` is `(d_out, d_in)`, rank `r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterShape {
    /// Rows (tokens) of x.
    pub n: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Adapter rank.
    pub r: usize,
}

impl AdapterShape {
    fn nr(&self, op: &'static str) -> Result<usize, OpsError> {
        dims(op, &[self.n, self.r])
    }
}

/// LaMDA forward branch: `z = x A^T`, `u = z S^T`, `y += alpha u B^T`.
///
/// x: `(n, d_in)`, a: `(r, d_in)`, s: `(r, r)`, b: `(d_out, r)`; writes
/// z, u: `(n, r)` (saved for the backward) and adds into y: `(n, d_out)`.
/// alpha is not divided by r.
#[allow(clippy::too_many_arguments)]
pub fn lamda_forward(
    shape: &AdapterShape,
    alpha: f32,
    x: &[f32],
    a: &[f32],
    s: &[f32],
    b: &[f32],
    z: &mut [f32],
    u: &mut [f32],
    y: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "lamda_forward";
    let AdapterShape { n, d_in, d_out, r } = *shape;
    check_len(OP, "x", x.len(), dims(OP, &[n, d_in])?)?;
    check_len(OP, "a", a.len(), dims(OP, &[r, d_in])?)?;
    check_len(OP, "s", s.len(), dims(OP, &[r, r])?)?;
    check_len(OP, "b", b.len(), dims(OP, &[d_out, r])?)?;
    check_len(OP, "z", z.len(), shape.nr(OP)?)?;
    check_len(OP, "u", u.len(), shape.nr(OP)?)?;
    check_len(OP, "y", y.len(), dims(OP, &[n, d_out])?)?;
    gemm(n, r, d_in, 1.0, x, Trans::N, a, Trans::T, 0.0, z)?;
    gemm(n, r, r, 1.0, z, Trans::N, s, Trans::T, 0.0, u)?;
    gemm(n, d_out, r, alpha, u, Trans::N, b, Trans::T, 1.0, y)
}

/// LaMDA backward branch, given `g = dL/dy`:
/// - `dS = alpha (g B)^T z` `(r, r)`
/// - `dB = alpha g^T u` `(d_out, r)`, only when `db` is given (some column of
///   B still trains; the caller masks frozen columns in the optimizer)
/// - `dx += alpha ((g B) S) A` `(n, d_in)`, when `dx` is given; together with
///   the caller's `g W_res` this is SEMANTICS §3's
///   `dx = g W_res + alpha ((g B) S) A`.
///
/// g: `(n, d_out)`; z, u: `(n, r)` from [`lamda_forward`] (u is only read for
/// dB); a: `(r, d_in)`, s: `(r, r)`, b: `(d_out, r)`. dS and dB are overwritten.
/// All lengths are checked before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn lamda_backward(
    shape: &AdapterShape,
    alpha: f32,
    g: &[f32],
    z: &[f32],
    u: &[f32],
    a: &[f32],
    s: &[f32],
    b: &[f32],
    ds: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) -> Result<(), OpsError> {
    const OP: &str = "lamda_backward";
    let AdapterShape { n, d_in, d_out, r } = *shape;
    let nr = shape.nr(OP)?;
    check_len(OP, "g", g.len(), dims(OP, &[n, d_out])?)?;
    check_len(OP, "z", z.len(), nr)?;
    check_len(OP, "a", a.len(), dims(OP, &[r, d_in])?)?;
    check_len(OP, "s", s.len(), dims(OP, &[r, r])?)?;
    check_len(OP, "b", b.len(), dims(OP, &[d_out, r])?)?;
    check_len(OP, "ds", ds.len(), dims(OP, &[r, r])?)?;
    if let Some(db) = &db {
        check_len(OP, "u", u.len(), nr)?;
        check_len(OP, "db", db.len(), dims(OP, &[d_out, r])?)?;
    }
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), dims(OP, &[n, d_in])?)?;
    }
    // gb = g B, (n, r)
    let mut gb = vec![0.0f32; nr];
    gemm(n, r, d_out, 1.0, g, Trans::N, b, Trans::N, 0.0, &mut gb)?;
    // dS = alpha gb^T z
    gemm(r, r, n, alpha, &gb, Trans::T, z, Trans::N, 0.0, ds)?;
    if let Some(db) = db {
        // dB = alpha g^T u
        gemm(d_out, r, n, alpha, g, Trans::T, u, Trans::N, 0.0, db)?;
    }
    if let Some(dx) = dx {
        // t = gb S, then dx += alpha t A
        let mut t = vec![0.0f32; nr];
        gemm(n, r, r, 1.0, &gb, Trans::N, s, Trans::N, 0.0, &mut t)?;
        gemm(n, d_in, r, alpha, &t, Trans::N, a, Trans::N, 1.0, dx)?;
    }
    Ok(())
}

/// LoRA forward branch (PEFT order): `xa = x A^T`, `y += (xa B^T) * scale`,
/// `scale = alpha / r` (the caller divides).
///
/// x: `(n, d_in)`, a: `(r, d_in)`, b: `(d_out, r)`; writes xa: `(n, r)`
/// (saved) and adds into y: `(n, d_out)`. The backward also needs x.
/// The scale is applied as the GEMM's alpha; for the power-of-two scales of
/// the golden cases this is bit-identical to scaling the product afterwards.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    shape: &AdapterShape,
    scale: f32,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    xa: &mut [f32],
    y: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "lora_forward";
    let AdapterShape { n, d_in, d_out, r } = *shape;
    check_len(OP, "x", x.len(), dims(OP, &[n, d_in])?)?;
    check_len(OP, "a", a.len(), dims(OP, &[r, d_in])?)?;
    check_len(OP, "b", b.len(), dims(OP, &[d_out, r])?)?;
    check_len(OP, "xa", xa.len(), shape.nr(OP)?)?;
    check_len(OP, "y", y.len(), dims(OP, &[n, d_out])?)?;
    gemm(n, r, d_in, 1.0, x, Trans::N, a, Trans::T, 0.0, xa)?;
    gemm(n, d_out, r, scale, xa, Trans::N, b, Trans::T, 1.0, y)
}

/// LoRA backward branch, given `g = dL/dy`, with `gb = g B` `(n, r)`:
/// - `dB = scale g^T xa` `(d_out, r)`, when `db` is given
/// - `dA = scale gb^T x` `(r, d_in)`, when `da` is given (not for LoRA-FA)
/// - `dx += scale gb A` `(n, d_in)`, when `dx` is given
///
/// g: `(n, d_out)`, x: `(n, d_in)` (only read for dA; LoRA-FA may pass an
/// empty slice), xa: `(n, r)`, a: `(r, d_in)`, b: `(d_out, r)`. dA and dB are
/// overwritten. All lengths are checked before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    shape: &AdapterShape,
    scale: f32,
    g: &[f32],
    x: &[f32],
    xa: &[f32],
    a: &[f32],
    b: &[f32],
    da: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) -> Result<(), OpsError> {
    const OP: &str = "lora_backward";
    let AdapterShape { n, d_in, d_out, r } = *shape;
    let nr = shape.nr(OP)?;
    check_len(OP, "g", g.len(), dims(OP, &[n, d_out])?)?;
    check_len(OP, "xa", xa.len(), nr)?;
    check_len(OP, "a", a.len(), dims(OP, &[r, d_in])?)?;
    check_len(OP, "b", b.len(), dims(OP, &[d_out, r])?)?;
    if let Some(da) = &da {
        check_len(OP, "x", x.len(), dims(OP, &[n, d_in])?)?;
        check_len(OP, "da", da.len(), dims(OP, &[r, d_in])?)?;
    }
    if let Some(db) = &db {
        check_len(OP, "db", db.len(), dims(OP, &[d_out, r])?)?;
    }
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx.len(), dims(OP, &[n, d_in])?)?;
    }
    if let Some(db) = db {
        gemm(d_out, r, n, scale, g, Trans::T, xa, Trans::N, 0.0, db)?;
    }
    if da.is_none() && dx.is_none() {
        return Ok(());
    }
    let mut gb = vec![0.0f32; nr];
    gemm(n, r, d_out, 1.0, g, Trans::N, b, Trans::N, 0.0, &mut gb)?;
    if let Some(da) = da {
        gemm(r, d_in, n, scale, &gb, Trans::T, x, Trans::N, 0.0, da)?;
    }
    if let Some(dx) = dx {
        gemm(n, d_in, r, scale, &gb, Trans::N, a, Trans::N, 1.0, dx)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    /// `x M^T` for x `(n, k)`, M `(m, k)`, in f64.
    fn xmt(x: &[f64], m: &[f64], n: usize, k: usize, rows_m: usize) -> Vec<f64> {
        let mut y = vec![0.0; n * rows_m];
        for i in 0..n {
            for o in 0..rows_m {
                y[i * rows_m + o] = (0..k).map(|c| x[i * k + c] * m[o * k + c]).sum();
            }
        }
        y
    }

    /// Reference LaMDA branch output `alpha ((x A^T) S^T) B^T` in f64.
    fn lamda_ref(sh: &AdapterShape, alpha: f64, x: &[f64], a: &[f64], s: &[f64], b: &[f64]) -> Vec<f64> {
        let z = xmt(x, a, sh.n, sh.d_in, sh.r);
        let u = xmt(&z, s, sh.n, sh.r, sh.r);
        xmt(&u, b, sh.n, sh.r, sh.d_out).iter().map(|v| alpha * v).collect()
    }

    /// Reference LoRA branch `((x A^T) B^T) scale` in f64.
    fn lora_ref(sh: &AdapterShape, scale: f64, x: &[f64], a: &[f64], b: &[f64]) -> Vec<f64> {
        let xa = xmt(x, a, sh.n, sh.d_in, sh.r);
        xmt(&xa, b, sh.n, sh.r, sh.d_out).iter().map(|v| scale * v).collect()
    }

    #[test]
    fn lamda_forward_and_fd_backward() {
        let mut rng = Rng::new(91);
        for (sh, alpha) in [
            (
                AdapterShape {
                    n: 5,
                    d_in: 6,
                    d_out: 7,
                    r: 3,
                },
                1.0f32,
            ),
            (
                AdapterShape {
                    n: 1,
                    d_in: 17,
                    d_out: 1,
                    r: 1,
                },
                0.5,
            ),
            (
                AdapterShape {
                    n: 3,
                    d_in: 4,
                    d_out: 9,
                    r: 2,
                },
                2.0,
            ),
        ] {
            let AdapterShape { n, d_in, d_out, r } = sh;
            let x = rng.vec(n * d_in);
            let a = rng.vec(r * d_in);
            let s = rng.vec(r * r);
            let b = rng.vec(d_out * r);
            let g = rng.vec(n * d_out);
            let y0 = rng.vec(n * d_out);
            let (x64, a64, s64, b64, g64) = (to64(&x), to64(&a), to64(&s), to64(&b), to64(&g));
            let al = alpha as f64;

            let mut z = vec![0.0; n * r];
            let mut u = vec![0.0; n * r];
            let mut y = y0.clone();
            lamda_forward(&sh, alpha, &x, &a, &s, &b, &mut z, &mut u, &mut y).unwrap();
            let want: Vec<f64> = lamda_ref(&sh, al, &x64, &a64, &s64, &b64)
                .iter()
                .zip(&y0)
                .map(|(v, y0)| v + *y0 as f64)
                .collect();
            assert_close("y", &y, &want, 1e-6, 1e-5);

            let mut ds = vec![f32::NAN; r * r];
            let mut db = vec![f32::NAN; d_out * r];
            let dx0 = rng.vec(n * d_in);
            let mut dx = dx0.clone();
            lamda_backward(
                &sh,
                alpha,
                &g,
                &z,
                &u,
                &a,
                &s,
                &b,
                &mut ds,
                Some(&mut db),
                Some(&mut dx),
            )
            .unwrap();
            let f = |x: &[f64], s: &[f64], b: &[f64]| dot(&g64, &lamda_ref(&sh, al, x, &a64, s, b));
            let fd_s = fd_grad(&s64, 1e-6, |s| f(&x64, s, &b64));
            let fd_b = fd_grad(&b64, 1e-6, |b| f(&x64, &s64, b));
            let fd_x: Vec<f64> = fd_grad(&x64, 1e-6, |x| f(x, &s64, &b64))
                .iter()
                .zip(&dx0)
                .map(|(v, d)| v + *d as f64)
                .collect();
            assert_close("dS", &ds, &fd_s, 1e-5, 1e-5);
            assert_close("dB", &db, &fd_b, 1e-5, 1e-5);
            assert_close("dx (accumulated)", &dx, &fd_x, 1e-5, 1e-5);

            // Without dB and dx, u is not read (may be empty) and dS is unchanged.
            let mut ds2 = vec![0.0; r * r];
            lamda_backward(&sh, alpha, &g, &z, &[], &a, &s, &b, &mut ds2, None, None).unwrap();
            assert_eq!(ds, ds2);
        }
    }

    #[test]
    fn lamda_matches_semantics_dx_formula_with_w_res() {
        // dx = g W_res + alpha ((g B) S) A, built from linear + lamda kernels,
        // against the FD gradient of x -> <g, x (W_res + alpha B S A)^T>.
        use crate::ops::{Store, linear_backward_input, linear_forward};
        let mut rng = Rng::new(92);
        let sh = AdapterShape {
            n: 4,
            d_in: 5,
            d_out: 3,
            r: 2,
        };
        let AdapterShape { n, d_in, d_out, r } = sh;
        let alpha = 1.5f32;
        let (x, w_res, a, s, b, g) = (
            rng.vec(n * d_in),
            rng.vec(d_out * d_in),
            rng.vec(r * d_in),
            rng.vec(r * r),
            rng.vec(d_out * r),
            rng.vec(n * d_out),
        );
        let (mut z, mut u, mut y) = (vec![0.0; n * r], vec![0.0; n * r], vec![0.0; n * d_out]);
        linear_forward(&x, &w_res, n, d_in, d_out, &mut y, Store::Overwrite).unwrap();
        lamda_forward(&sh, alpha, &x, &a, &s, &b, &mut z, &mut u, &mut y).unwrap();
        let mut ds = vec![0.0; r * r];
        let mut dx = vec![0.0; n * d_in];
        linear_backward_input(&g, &w_res, n, d_in, d_out, &mut dx, Store::Overwrite).unwrap();
        lamda_backward(&sh, alpha, &g, &z, &u, &a, &s, &b, &mut ds, None, Some(&mut dx)).unwrap();
        let (w64, a64, s64, b64, g64) = (to64(&w_res), to64(&a), to64(&s), to64(&b), to64(&g));
        let full = |x: &[f64]| {
            let base = xmt(x, &w64, n, d_in, d_out);
            let br = lamda_ref(&sh, alpha as f64, x, &a64, &s64, &b64);
            let yy: Vec<f64> = base.iter().zip(&br).map(|(p, q)| p + q).collect();
            dot(&g64, &yy)
        };
        let fd = fd_grad(&to64(&x), 1e-6, full);
        assert_close("dx", &dx, &fd, 1e-5, 1e-5);
    }

    #[test]
    fn bad_lengths_are_named_and_nothing_is_written() {
        let sh = AdapterShape {
            n: 2,
            d_in: 3,
            d_out: 4,
            r: 2,
        };
        let (g, z, a, s, b) = (vec![1.0; 8], vec![1.0; 4], vec![1.0; 6], vec![1.0; 4], vec![1.0; 8]);
        let mut ds = vec![0.0; 3]; // should be 4
        let mut dx = vec![7.0; 6];
        let err = lamda_backward(&sh, 1.0, &g, &z, &[], &a, &s, &b, &mut ds, None, Some(&mut dx)).unwrap_err();
        assert!(
            matches!(
                err,
                OpsError::Len {
                    name: "ds",
                    expected: 4,
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(dx, vec![7.0; 6]);
        // LoRA-FA: no dA, so x may be empty
        let mut db = vec![0.0; 8];
        lora_backward(&sh, 1.0, &g, &[], &z, &a, &b, None, Some(&mut db), Some(&mut dx)).unwrap();
    }

    #[test]
    fn lora_forward_and_fd_backward() {
        let mut rng = Rng::new(93);
        for (sh, scale) in [
            (
                AdapterShape {
                    n: 5,
                    d_in: 6,
                    d_out: 7,
                    r: 3,
                },
                2.0f32,
            ),
            (
                AdapterShape {
                    n: 1,
                    d_in: 3,
                    d_out: 17,
                    r: 1,
                },
                0.75,
            ),
        ] {
            let AdapterShape { n, d_in, d_out, r } = sh;
            let (x, a, b, g) = (
                rng.vec(n * d_in),
                rng.vec(r * d_in),
                rng.vec(d_out * r),
                rng.vec(n * d_out),
            );
            let (x64, a64, b64, g64) = (to64(&x), to64(&a), to64(&b), to64(&g));
            let sc = scale as f64;
            let mut xa = vec![0.0; n * r];
            let mut y = vec![0.0; n * d_out];
            lora_forward(&sh, scale, &x, &a, &b, &mut xa, &mut y).unwrap();
            assert_close("y", &y, &lora_ref(&sh, sc, &x64, &a64, &b64), 1e-6, 1e-5);

            let (mut da, mut db, mut dx) = (vec![f32::NAN; r * d_in], vec![f32::NAN; d_out * r], vec![0.0; n * d_in]);
            lora_backward(
                &sh,
                scale,
                &g,
                &x,
                &xa,
                &a,
                &b,
                Some(&mut da),
                Some(&mut db),
                Some(&mut dx),
            )
            .unwrap();
            let f = |x: &[f64], a: &[f64], b: &[f64]| dot(&g64, &lora_ref(&sh, sc, x, a, b));
            assert_close("dA", &da, &fd_grad(&a64, 1e-6, |a| f(&x64, a, &b64)), 1e-5, 1e-5);
            assert_close("dB", &db, &fd_grad(&b64, 1e-6, |b| f(&x64, &a64, b)), 1e-5, 1e-5);
            assert_close("dx", &dx, &fd_grad(&x64, 1e-6, |x| f(x, &a64, &b64)), 1e-5, 1e-5);
        }
    }
}
