//! Native forms of the hottest library kernels (SwiGLU, its gradient, the LaMDA epilogue) at the CPU's widest vectors.
//!
//! Why: Cranelift's SIMD stops at f32x4, so on an AVX-512 machine a JIT
//! kernel uses a quarter of each vector register. The three kernels here are
//! the JIT's largest share of a SmolLM2 step (SwiGLU's `exp` per element,
//! and the epilogue's `r` multiply-adds per output); the same Rust compiled
//! for AVX-512F / AVX2 / the baseline ([`crate::ops::simd`]'s multiversion)
//! runs them at full width.
//!
//! A kernel takes the native path only when it *is* the library kernel:
//! [`Native::of`] rebuilds `lib::swiglu(f)` (and the others) from the
//! kernel's own argument shapes and compares the whole kernel, so a kernel
//! the fusion pass changed, or a new one with a similar name, goes to the
//! JIT. The arithmetic follows the kernel IR's expression order with
//! [`exp_approx`] (the JIT's Cephes polynomial); the results agree with the
//! interpreter within float rounding (tests below; the dot products sum in a
//! different order).

use lamda_compiler::kernel::{ArgTy, BinOp, Expr, Kernel, Stmt, lib};
use rayon::prelude::*;

use super::interp::{self, KArg, KernelError};
use crate::ops::simd::{Simd, exp_approx, multiversion};

/// Elements per rayon task of the element-wise kernels (as ops/elementwise.rs).
const CHUNK: usize = 1 << 14;

/// Rows per rayon task of the epilogue.
const EPILOGUE_ROWS: usize = 16;

/// A library kernel with a native form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Native {
    /// [`lib::swiglu`].
    Swiglu,
    /// [`lib::swiglu_grad`].
    SwigluGrad,
    /// [`lib::lamda_epilogue`] with these parameters.
    LamdaEpilogue { d_out: usize, r: usize, alpha: f32 },
}

impl Native {
    /// The native form of `k`, if `k` is exactly one of the library kernels above.
    pub fn of(k: &Kernel) -> Option<Native> {
        let cols = |i: usize| match k.args.get(i)?.ty {
            ArgTy::Rows { cols } => Some(cols),
            _ => None,
        };
        if k.name.starts_with("swiglu_grad_f") {
            return (*k == lib::swiglu_grad(cols(0)?)).then_some(Native::SwigluGrad);
        }
        if k.name.starts_with("swiglu_f") {
            return (*k == lib::swiglu(cols(0)?)).then_some(Native::Swiglu);
        }
        if k.name.starts_with("lamda_epilogue_") {
            let (d_out, r) = (cols(0)?, cols(1)?);
            // y = base + alpha * RowDot: alpha is the constant of the second store
            let alpha = match k.body.get(1)? {
                Stmt::Store {
                    value: Expr::Binary(BinOp::Add, _, scaled),
                    ..
                } => match scaled.as_ref() {
                    Expr::Binary(BinOp::Mul, c, _) => match c.as_ref() {
                        Expr::Const(a) => a.0,
                        _ => return None,
                    },
                    _ => return None,
                },
                _ => return None,
            };
            return (*k == lib::lamda_epilogue(d_out, r, alpha)).then_some(Native::LamdaEpilogue {
                d_out,
                r,
                alpha: alpha as f32,
            });
        }
        None
    }

    /// Runs `k` (whose native form this is) over `rows` rows; `scratch` holds
    /// the epilogue's transposed B and S (grown once, then reused).
    pub fn run(
        self,
        k: &Kernel,
        args: &mut [KArg<'_>],
        rows: usize,
        scratch: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        interp::check_launch(k, args, rows)?;
        let simd = Simd::detect();
        let fail = |msg: &str| KernelError {
            kernel: k.name.clone(),
            msg: msg.to_string(),
        };
        match (self, args) {
            (Native::Swiglu, [KArg::F32(gate), KArg::F32(up), KArg::F32Mut(h)]) => {
                h.par_chunks_mut(CHUNK)
                    .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
                    .for_each(|(h, (g, u))| swiglu(simd, g, u, h));
            }
            (
                Native::SwigluGrad,
                [
                    KArg::F32(gate),
                    KArg::F32(up),
                    KArg::F32(dh),
                    KArg::F32Mut(dgate),
                    KArg::F32Mut(dup),
                ],
            ) => {
                dgate
                    .par_chunks_mut(CHUNK)
                    .zip(dup.par_chunks_mut(CHUNK))
                    .zip(gate.par_chunks(CHUNK))
                    .zip(up.par_chunks(CHUNK).zip(dh.par_chunks(CHUNK)))
                    .for_each(|(((dg, du), g), (u, d))| swiglu_grad(simd, g, u, d, dg, du));
            }
            (
                Native::LamdaEpilogue { d_out, r, alpha },
                [
                    KArg::F32(base),
                    KArg::F32(z),
                    KArg::F32(s),
                    KArg::F32(b),
                    KArg::F32Mut(u),
                    KArg::F32Mut(y),
                ],
            ) => {
                if d_out == 0 || r == 0 {
                    return Ok(());
                }
                // B (d_out, r) -> B^T (r, d_out) and S -> S^T: both products of
                // a row then run along their output (u's r, y's d_out)
                if scratch.len() < r * (d_out + r) {
                    scratch.resize(r * (d_out + r), 0.0);
                }
                let (bt, st) = scratch[..r * (d_out + r)].split_at_mut(r * d_out);
                for (o, row) in b.chunks_exact(r).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        bt[c * d_out + o] = v;
                    }
                }
                for (a, row) in s.chunks_exact(r).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        st[c * r + a] = v;
                    }
                }
                let (bt, st) = (&*bt, &*st);
                y.par_chunks_mut(EPILOGUE_ROWS * d_out)
                    .zip(u.par_chunks_mut(EPILOGUE_ROWS * r))
                    .zip(
                        base.par_chunks(EPILOGUE_ROWS * d_out)
                            .zip(z.par_chunks(EPILOGUE_ROWS * r)),
                    )
                    .for_each(|((y, u), (base, z))| {
                        for (((y, u), base), z) in y
                            .chunks_exact_mut(d_out)
                            .zip(u.chunks_exact_mut(r))
                            .zip(base.chunks_exact(d_out))
                            .zip(z.chunks_exact(r))
                        {
                            // u = z S^T, then y = base + alpha u B^T
                            row_times(simd, z, st, u);
                            epilogue_row(simd, base, u, bt, alpha, y);
                        }
                    });
            }
            _ => return Err(fail("arguments do not match the native kernel")),
        }
        Ok(())
    }
}

/// `h = gate / (1 + exp(-gate)) * up`.
#[inline(always)]
fn swiglu_impl(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((h, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *h = g / (1.0 + exp_approx(-g)) * u;
    }
}

/// With `s = 1 / (1 + exp(-gate))`: `dgate = dh up s (1 + gate (1 - s))`, `dup = dh gate / (1 + exp(-gate))`.
#[inline(always)]
fn swiglu_grad_impl(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for i in 0..gate.len().min(up.len()).min(dh.len()).min(dgate.len()).min(dup.len()) {
        let (g, d) = (gate[i], dh[i]);
        let e = 1.0 + exp_approx(-g);
        let s = 1.0 / e;
        dgate[i] = d * up[i] * s * (1.0 + g * (1.0 - s));
        dup[i] = d * (g / e);
    }
}

/// `u = z M` for one row, with `m` `(len z, len u)` row-major: the sum over
/// `z`'s entries runs in order, the outputs side by side (vectorised).
#[inline(always)]
fn row_times_impl(z: &[f32], m: &[f32], u: &mut [f32]) {
    u.fill(0.0);
    for (&zc, row) in z.iter().zip(m.chunks_exact(u.len().max(1))) {
        for (ua, &mv) in u.iter_mut().zip(row) {
            *ua += zc * mv;
        }
    }
}

/// `y = base + alpha (u B^T)` for one row, with `bt = B^T` `(r, d_out)`: the
/// dot over `r` accumulated along the row, 64 outputs at a time.
#[inline(always)]
fn epilogue_row_impl(base: &[f32], u: &[f32], bt: &[f32], alpha: f32, y: &mut [f32]) {
    const W: usize = 64;
    let d = y.len();
    let mut o = 0;
    while o < d {
        let w = W.min(d - o);
        let mut acc = [0.0f32; W];
        for (c, &uc) in u.iter().enumerate() {
            let b = &bt[c * d + o..c * d + o + w];
            for (a, &bv) in acc.iter_mut().zip(b) {
                *a += uc * bv;
            }
        }
        for ((yv, &bv), &a) in y[o..o + w].iter_mut().zip(&base[o..o + w]).zip(&acc) {
            *yv = bv + alpha * a;
        }
        o += w;
    }
}

multiversion!(swiglu = swiglu_impl(gate: &[f32], up: &[f32], h: &mut [f32]));
multiversion!(
    swiglu_grad = swiglu_grad_impl(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32])
);
multiversion!(row_times = row_times_impl(z: &[f32], m: &[f32], u: &mut [f32]));
multiversion!(epilogue_row = epilogue_row_impl(base: &[f32], u: &[f32], bt: &[f32], alpha: f32, y: &mut [f32]));

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::Rng;

    /// Runs `k` through the interpreter and natively on the same inputs and
    /// compares every written argument (relative 2e-6, absolute 1e-6).
    fn agrees(k: &Kernel, inputs: &[Vec<f32>], outputs: &[usize], rows: usize) {
        let native = Native::of(k).unwrap_or_else(|| panic!("{} has no native form", k.name));
        let run = |native_path: bool| {
            let mut outs: Vec<Vec<f32>> = outputs.iter().map(|&n| vec![f32::NAN; n]).collect();
            let mut args: Vec<KArg<'_>> = inputs.iter().map(|x| KArg::F32(x)).collect();
            args.extend(outs.iter_mut().map(|o| KArg::F32Mut(o)));
            if native_path {
                native.run(k, &mut args, rows, &mut Vec::new()).unwrap();
            } else {
                interp::run(k, &mut args, rows).unwrap();
            }
            drop(args);
            outs
        };
        let (want, got) = (run(false), run(true));
        for (w, g) in want.iter().zip(&got) {
            for (i, (&a, &b)) in w.iter().zip(g).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 + 2e-6 * a.abs(),
                    "{}: element {i}: interpreter {a}, native {b}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn native_forms_agree_with_the_interpreter() {
        let mut rng = Rng::new(17);
        // awkward widths: not a multiple of any vector length, nor of the 64-wide blocks
        for (rows, f) in [(3usize, 37usize), (70, 300)] {
            let (g, u, dh) = (rng.vec_scaled(rows * f, 8.0), rng.vec(rows * f), rng.vec(rows * f));
            agrees(&lib::swiglu(f), &[g.clone(), u.clone()], &[rows * f], rows);
            agrees(&lib::swiglu_grad(f), &[g, u, dh], &[rows * f, rows * f], rows);
        }
        for (rows, d_out, r) in [(5usize, 70usize, 3usize), (33, 130, 16)] {
            let k = lib::lamda_epilogue(d_out, r, 0.37);
            let ins = [
                rng.vec(rows * d_out),
                rng.vec(rows * r),
                rng.vec(r * r),
                rng.vec(d_out * r),
            ];
            agrees(&k, &ins, &[rows * r, rows * d_out], rows);
        }
    }

    #[test]
    fn only_the_library_kernels_are_native() {
        assert_eq!(Native::of(&lib::swiglu(8)), Some(Native::Swiglu));
        assert_eq!(
            Native::of(&lib::lamda_epilogue(8, 2, 0.5)),
            Some(Native::LamdaEpilogue {
                d_out: 8,
                r: 2,
                alpha: 0.5
            })
        );
        // same name, different body: not native
        let mut k = lib::swiglu(8);
        if let Stmt::Store { accumulate, .. } = &mut k.body[0] {
            *accumulate = true;
        }
        assert_eq!(Native::of(&k), None);
        assert_eq!(Native::of(&lib::rmsnorm(8, 1e-5)), None);
    }
}
