//! The reference interpreter of the kernel IR (compiler/src/kernel): the
//! semantics the code generators must match, one row and one column at a time.
//!
//! It is slow on purpose (a recursive walk per element); it exists to define
//! and test, not to train. Sums run in column order in f32. Unary functions
//! are std's f32 ones (the C library's), except `erf`, which std lacks:
//! [`erf`] evaluates it in f64 and rounds once.

use lamda_compiler::kernel::{Access, ArgTy, BinOp, Col, Cond, Expr, Kernel, Reduce, Stmt, UnOp};

/// One argument of a launch.
pub enum KArg<'a> {
    /// A read-only f32 buffer.
    F32(&'a [f32]),
    /// A written (or read-written) f32 buffer.
    F32Mut(&'a mut [f32]),
    /// A read-only i64 buffer (per-row targets).
    I64(&'a [i64]),
    /// A scalar launch parameter.
    Scalar(f32),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("kernel {kernel}: {msg}")]
pub struct KernelError {
    pub kernel: String,
    pub msg: String,
}

/// Checks the launch arguments against the kernel's signature for `rows` rows.
pub fn check_launch(k: &Kernel, args: &[KArg<'_>], rows: usize) -> Result<(), KernelError> {
    let fail = |msg: String| {
        Err(KernelError {
            kernel: k.name.clone(),
            msg,
        })
    };
    if args.len() != k.args.len() {
        return fail(format!("{} arguments, expected {}", args.len(), k.args.len()));
    }
    for (a, given) in k.args.iter().zip(args) {
        let want = a.ty.len(rows);
        let (len, ok) = match (given, a.ty, a.access) {
            (KArg::Scalar(_), ArgTy::Scalar, _) => (None, true),
            (KArg::I64(b), ArgTy::PerRowI64, Access::Read) => (Some(b.len()), true),
            (KArg::F32(b), _, Access::Read) => (Some(b.len()), a.ty != ArgTy::Scalar && a.ty != ArgTy::PerRowI64),
            (KArg::F32Mut(b), _, Access::Write | Access::ReadWrite) => (Some(b.len()), true),
            _ => (None, false),
        };
        if !ok {
            return fail(format!("argument `{}` has the wrong kind", a.name));
        }
        if len != want {
            return fail(format!("argument `{}` has {len:?} values, expected {want:?}", a.name));
        }
    }
    Ok(())
}

struct Row<'r, 'a> {
    k: &'r Kernel,
    args: &'r [KArg<'a>],
    i: usize,
    vars: &'r [f32],
}

impl Row<'_, '_> {
    fn col(&self, col: Col, j: usize) -> usize {
        match col {
            Col::J => j,
            Col::RopePartner { head_dim } => (j / head_dim) * head_dim + (j % head_dim + head_dim / 2) % head_dim,
            Col::HalfIndex { head_dim } => j % (head_dim / 2),
            Col::Var(v) => self.vars[v as usize].max(0.0) as usize,
        }
    }

    fn read(&self, arg: usize, idx: usize) -> f32 {
        match &self.args[arg] {
            KArg::F32(b) => b.get(idx).copied().unwrap_or(f32::NAN),
            KArg::F32Mut(b) => b.get(idx).copied().unwrap_or(f32::NAN),
            KArg::I64(b) => b.get(idx).map_or(f32::NAN, |&v| v as f32),
            KArg::Scalar(s) => *s,
        }
    }

    fn eval(&self, e: &Expr, j: usize, loop_cols: usize) -> f32 {
        match e {
            Expr::Const(c) => c.0 as f32,
            Expr::Var(v) => self.vars[*v as usize],
            Expr::Load { arg, col } => {
                let c = self.col(*col, j);
                let idx = match self.k.args[*arg].ty {
                    ArgTy::Rows { cols } => self.i * cols + c,
                    ArgTy::Vector { .. } => c,
                    ArgTy::PerRow | ArgTy::PerRowI64 => self.i,
                    ArgTy::Scalar => 0,
                    ArgTy::Periodic { period, cols } => (self.i % period) * cols + c,
                };
                self.read(*arg, idx)
            }
            Expr::RowDot { a, b, len, bt } => {
                let mut acc = 0.0f32;
                for c in 0..*len {
                    let bi = if *bt { c * loop_cols + j } else { j * len + c };
                    acc += self.read(*a, self.i * len + c) * self.read(*b, bi);
                }
                acc
            }
            Expr::Unary(op, a) => {
                let x = self.eval(a, j, loop_cols);
                match op {
                    UnOp::Neg => -x,
                    UnOp::Exp => x.exp(),
                    UnOp::Log => x.ln(),
                    UnOp::Sqrt => x.sqrt(),
                    UnOp::Rsqrt => 1.0 / x.sqrt(),
                    UnOp::Recip => 1.0 / x,
                    UnOp::Erf => erf(x),
                    UnOp::Tanh => x.tanh(),
                }
            }
            Expr::Binary(op, a, b) => {
                let (x, y) = (self.eval(a, j, loop_cols), self.eval(b, j, loop_cols));
                match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    BinOp::Max => x.max(y),
                }
            }
            Expr::Select(c, a, b) => {
                let take = match *c {
                    Cond::FirstHalf { head_dim } => j % head_dim < head_dim / 2,
                    Cond::ColBelow { arg } => (j as f32) < self.read(arg, 0).floor(),
                    Cond::ColIs(v) => j as f32 == self.vars[v as usize],
                    Cond::NonNegative(v) => self.vars[v as usize] >= 0.0,
                };
                if take {
                    self.eval(a, j, loop_cols)
                } else {
                    self.eval(b, j, loop_cols)
                }
            }
        }
    }
}

/// `erf(x)`, evaluated in f64 and rounded to f32 (so within an ulp of the
/// correctly rounded value): the Maclaurin series
/// `2 / sqrt(pi) sum_n (-1)^n x^(2n+1) / (n! (2n+1))` for `|x| < 2.5` (its
/// largest term is below e^6.25, so cancellation costs at most three of f64's
/// sixteen digits), and above `1 - erfc(x)` with Laplace's continued fraction
/// `erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...))))`
/// evaluated bottom-up from 60 terms (relative error below 1e-13 for x >= 2.5).
/// Odd; NaN stays NaN.
pub fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let a = x.abs();
    let r = if a.is_nan() {
        f64::NAN
    } else if a < 2.5 {
        let (mut sum, mut term) = (0.0f64, a);
        for n in 0..60u32 {
            let add = term / f64::from(2 * n + 1);
            sum += add;
            if add.abs() <= 1e-17 * sum {
                break;
            }
            term *= -a * a / f64::from(n + 1);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a < 6.0 {
        let mut k = a;
        for n in (1..=60u32).rev() {
            k = a + f64::from(n) / 2.0 / k;
        }
        1.0 - (-a * a).exp() * (std::f64::consts::FRAC_2_SQRT_PI / 2.0) / k
    } else {
        // erfc(6) < 3e-17: erf is 1 in f64.
        1.0
    };
    r.copysign(x) as f32
}

/// Runs `k` over `rows` rows.
pub fn run(k: &Kernel, args: &mut [KArg<'_>], rows: usize) -> Result<(), KernelError> {
    check_launch(k, args, rows)?;
    let mut vars = vec![0.0f32; k.vars()];
    for i in 0..rows {
        for s in &k.body {
            match s {
                Stmt::Let { var, value } => {
                    let v = Row {
                        k,
                        args,
                        i,
                        vars: &vars,
                    }
                    .eval(value, 0, 0);
                    vars[*var as usize] = v;
                }
                Stmt::Reduce { var, op, cols, value } => {
                    let row = Row {
                        k,
                        args,
                        i,
                        vars: &vars,
                    };
                    let mut acc = match op {
                        Reduce::Sum => 0.0f32,
                        Reduce::Max => f32::NEG_INFINITY,
                    };
                    for j in 0..*cols {
                        let x = row.eval(value, j, *cols);
                        acc = match op {
                            Reduce::Sum => acc + x,
                            Reduce::Max => acc.max(x),
                        };
                    }
                    vars[*var as usize] = acc;
                }
                Stmt::Store {
                    arg,
                    cols,
                    value,
                    accumulate,
                } => {
                    let vals: Vec<f32> = {
                        let row = Row {
                            k,
                            args,
                            i,
                            vars: &vars,
                        };
                        (0..*cols).map(|j| row.eval(value, j, *cols)).collect()
                    };
                    if let KArg::F32Mut(b) = &mut args[*arg] {
                        let dst = &mut b[i * cols..(i + 1) * cols];
                        for (d, v) in dst.iter_mut().zip(vals) {
                            *d = if *accumulate { *d + v } else { v };
                        }
                    }
                }
                Stmt::StoreRow { arg, value } => {
                    let v = Row {
                        k,
                        args,
                        i,
                        vars: &vars,
                    }
                    .eval(value, 0, 0);
                    if let KArg::F32Mut(b) = &mut args[*arg] {
                        b[i] = v;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The library kernels agree with the unfused reference ops.
    use super::*;
    use crate::ops;
    use crate::ops::testutil::{Rng, assert_close, to64};
    use lamda_compiler::kernel::lib;

    #[test]
    fn rmsnorm_and_its_grad_match_the_ops() {
        let (n, d) = (5, 17);
        let mut rng = Rng::new(1);
        let (x, w, g) = (rng.vec(n * d), rng.vec(d), rng.vec(n * d));
        let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        ops::rmsnorm_forward(&x, &w, n, d, 1e-5, &mut y, &mut rstd).unwrap();
        let (mut ky, mut kr) = (vec![0.0; n * d], vec![0.0; n]);
        run(
            &lib::rmsnorm(d, 1e-5),
            &mut [
                KArg::F32(&x),
                KArg::F32(&w),
                KArg::F32Mut(&mut ky),
                KArg::F32Mut(&mut kr),
            ],
            n,
        )
        .unwrap();
        assert_close("y", &ky, &to64(&y), 1e-6, 1e-5);
        assert_close("rstd", &kr, &to64(&rstd), 1e-6, 1e-5);
        let mut dx = vec![0.0; n * d];
        ops::rmsnorm_backward(&x, &w, &rstd, &g, n, d, &mut dx, None).unwrap();
        let mut kdx = vec![0.0; n * d];
        run(
            &lib::rmsnorm_grad(d),
            &mut [
                KArg::F32(&g),
                KArg::F32(&x),
                KArg::F32(&w),
                KArg::F32(&rstd),
                KArg::F32Mut(&mut kdx),
            ],
            n,
        )
        .unwrap();
        assert_close("dx", &kdx, &to64(&dx), 1e-6, 1e-5);
    }

    #[test]
    fn swiglu_and_its_grad_match_the_ops() {
        let (n, f) = (3, 13);
        let mut rng = Rng::new(2);
        let (gate, up, dh) = (rng.vec_scaled(n * f, 3.0), rng.vec(n * f), rng.vec(n * f));
        let mut h = vec![0.0; n * f];
        ops::swiglu_forward(&gate, &up, &mut h).unwrap();
        let mut kh = vec![0.0; n * f];
        run(
            &lib::swiglu(f),
            &mut [KArg::F32(&gate), KArg::F32(&up), KArg::F32Mut(&mut kh)],
            n,
        )
        .unwrap();
        assert_close("h", &kh, &to64(&h), 1e-6, 1e-5);
        let (mut dg, mut du) = (vec![0.0; n * f], vec![0.0; n * f]);
        ops::swiglu_backward(&gate, &up, &dh, &mut dg, &mut du).unwrap();
        let (mut kdg, mut kdu) = (vec![0.0; n * f], vec![0.0; n * f]);
        run(
            &lib::swiglu_grad(f),
            &mut [
                KArg::F32(&gate),
                KArg::F32(&up),
                KArg::F32(&dh),
                KArg::F32Mut(&mut kdg),
                KArg::F32Mut(&mut kdu),
            ],
            n,
        )
        .unwrap();
        assert_close("dgate", &kdg, &to64(&dg), 1e-6, 1e-5);
        assert_close("dup", &kdu, &to64(&du), 1e-6, 1e-5);
    }

    #[test]
    fn silu_and_its_grad_match_the_ops() {
        let (n, d) = (4, 37);
        let mut rng = Rng::new(7);
        let (x, g) = (rng.vec_scaled(n * d, 6.0), rng.vec(n * d));
        let mut y = vec![0.0; n * d];
        ops::pointwise::silu(&x, &mut y).unwrap();
        let mut ky = vec![0.0; n * d];
        run(&lib::silu(d), &mut [KArg::F32(&x), KArg::F32Mut(&mut ky)], n).unwrap();
        assert_close("silu", &ky, &to64(&y), 1e-6, 1e-5);
        let mut dx = vec![0.0; n * d];
        ops::pointwise::silu_grad(&g, &x, &mut dx).unwrap();
        let mut kdx = vec![0.0; n * d];
        run(
            &lib::silu_grad(d),
            &mut [KArg::F32(&g), KArg::F32(&x), KArg::F32Mut(&mut kdx)],
            n,
        )
        .unwrap();
        assert_close("silu_grad", &kdx, &to64(&dx), 1e-6, 1e-5);
    }

    #[test]
    fn rope_and_its_grad_match_the_ops() {
        let (seq, hd, heads, batch) = (5, 6, 4, 2);
        let n = batch * seq;
        let width = heads * hd;
        let table = ops::RopeTable::new(seq, hd, 10000.0).unwrap();
        let mut rng = Rng::new(3);
        let x = rng.vec(n * width);
        let mut y = x.clone();
        ops::rope_forward(&table, &mut y, n, heads).unwrap();
        let mut ky = vec![0.0; n * width];
        run(
            &lib::rope(width, hd, seq),
            &mut [
                KArg::F32(&x),
                KArg::F32(table.cos()),
                KArg::F32(table.sin()),
                KArg::F32Mut(&mut ky),
            ],
            n,
        )
        .unwrap();
        assert_close("rope", &ky, &to64(&y), 1e-6, 1e-5);
        let mut back = y.clone();
        ops::rope_backward(&table, &mut back, n, heads).unwrap();
        let mut kb = vec![0.0; n * width];
        run(
            &lib::rope_grad(width, hd, seq),
            &mut [
                KArg::F32(&y),
                KArg::F32(table.cos()),
                KArg::F32(table.sin()),
                KArg::F32Mut(&mut kb),
            ],
            n,
        )
        .unwrap();
        assert_close("rope_grad", &kb, &to64(&back), 1e-6, 1e-5);
        assert_close("inverse", &kb, &to64(&x), 1e-5, 1e-5);
    }

    #[test]
    fn lamda_epilogue_matches_the_adapter_op() {
        let (n, d_in, d_out, r) = (4, 7, 9, 3);
        let mut rng = Rng::new(4);
        let (x, a, s, b) = (rng.vec(n * d_in), rng.vec(r * d_in), rng.vec(r * r), rng.vec(d_out * r));
        let shape = ops::AdapterShape { n, d_in, d_out, r };
        let (mut z, mut u, mut y) = (vec![0.0; n * r], vec![0.0; n * r], vec![0.0; n * d_out]);
        ops::lamda_forward(&shape, 0.5, &x, &a, &s, &b, &mut z, &mut u, &mut y).unwrap();
        let base = vec![0.0; n * d_out];
        let (mut ku, mut ky) = (vec![0.0; n * r], vec![0.0; n * d_out]);
        run(
            &lib::lamda_epilogue(d_out, r, 0.5),
            &mut [
                KArg::F32(&base),
                KArg::F32(&z),
                KArg::F32(&s),
                KArg::F32(&b),
                KArg::F32Mut(&mut ku),
                KArg::F32Mut(&mut ky),
            ],
            n,
        )
        .unwrap();
        assert_close("u", &ku, &to64(&u), 1e-6, 1e-5);
        assert_close("y", &ky, &to64(&y), 1e-6, 1e-5);
    }

    #[test]
    fn cross_entropy_matches_the_op() {
        let (batch, seq, vocab) = (2, 4, 11);
        let n = batch * seq;
        let mut rng = Rng::new(5);
        let logits = rng.vec_scaled(n * vocab, 3.0);
        let labels: Vec<i64> = (0..n)
            .map(|i| if i == 3 { -100 } else { (i * 7 % vocab) as i64 })
            .collect();
        let mut dl = vec![0.0; n * vocab];
        let ce = ops::causal_lm_cross_entropy(&logits, &labels, batch, seq, vocab, Some(&mut dl)).unwrap();
        let target: Vec<i64> = (0..n)
            .map(|i| if i % seq == seq - 1 { -100 } else { labels[i + 1] })
            .collect();
        let (mut loss, mut kdl) = (vec![0.0; n], vec![0.0; n * vocab]);
        run(
            &lib::cross_entropy(vocab, true),
            &mut [
                KArg::F32(&logits),
                KArg::I64(&target),
                KArg::F32Mut(&mut loss),
                KArg::Scalar(1.0 / ce.count as f32),
                KArg::F32Mut(&mut kdl),
            ],
            n,
        )
        .unwrap();
        let mean = loss.iter().map(|&l| f64::from(l)).sum::<f64>() / ce.count as f64;
        assert!((mean - f64::from(ce.loss)).abs() < 1e-5, "{mean} vs {}", ce.loss);
        assert_close("dlogits", &kdl, &to64(&dl), 1e-7, 1e-5);
    }

    #[test]
    fn adamw_matches_the_op_with_frozen_columns() {
        let (rows, cols) = (3, 5);
        let mut rng = Rng::new(6);
        let cfg = ops::AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let p0 = rng.vec(rows * cols);
        let mut p = p0.clone();
        let mut st = ops::AdamState::new(rows * cols);
        let (mut kp, mut km, mut kv) = (p0.clone(), vec![0.0; rows * cols], vec![0.0; rows * cols]);
        for (k, frozen) in [0usize, 2, 2, 4].into_iter().enumerate() {
            let g = rng.vec(rows * cols);
            ops::adamw_step(&cfg, &mut p, &g, &mut st, cols, frozen).unwrap();
            let scalars = ops::adamw::fused_scalars(&cfg, (k + 1) as u64, frozen);
            let mut args = vec![
                KArg::F32Mut(&mut kp),
                KArg::F32(&g),
                KArg::F32Mut(&mut km),
                KArg::F32Mut(&mut kv),
            ];
            args.extend(scalars.iter().map(|&s| KArg::Scalar(s)));
            run(&lib::adamw(cols), &mut args, rows).unwrap();
        }
        assert_close("p", &kp, &to64(&p), 0.0, 1e-6);
        assert_close("m", &km, &to64(&st.exp_avg), 0.0, 1e-6);
        assert_close("v", &kv, &to64(&st.exp_avg_sq), 0.0, 1e-6);
    }
}
