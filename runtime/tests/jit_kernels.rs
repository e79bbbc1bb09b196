//! The Cranelift JIT against the reference interpreter (itself checked against
//! the unfused ops): every library kernel at awkward sizes on seeded inputs.
//!
//! Tolerance, per output buffer: `|got - want| <= 1e-6 + 1e-5 * max|want|`
//! (max over the buffer's finite values); NaN must meet NaN and an infinity
//! the same infinity. The JIT sums in a different order and uses its own
//! `exp`, `log`, `erf` and `tanh` (clif module doc), so exact equality is not expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lamda_compiler::kernel::{Access, Arg, ArgTy, Col, Cond, Expr, Kernel, Reduce, Stmt, lib};
use lamda_runtime::backend::cpu::interp::{self, KArg};
use lamda_runtime::backend::cpu::jit::{CompiledKernel, Jit};

const COLS: [usize; 12] = [1, 2, 3, 4, 5, 7, 8, 9, 17, 33, 64, 172];
const ROWS: [usize; 3] = [1, 3, 17];

/// splitmix64: a small seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An owned launch argument.
#[derive(Clone, Debug)]
enum Buf {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Scalar(f32),
}

/// Launch arguments borrowed from `bufs`, by the kernel's access modes.
fn kargs<'a>(k: &Kernel, bufs: &'a mut [Buf]) -> Vec<KArg<'a>> {
    k.args
        .iter()
        .zip(bufs.iter_mut())
        .map(|(a, b)| match b {
            Buf::F32(v) => {
                if a.access == Access::Read {
                    KArg::F32(v)
                } else {
                    KArg::F32Mut(v)
                }
            }
            Buf::I64(v) => KArg::I64(v),
            Buf::Scalar(s) => KArg::Scalar(*s),
        })
        .collect()
}

/// Scalar launch parameters by name (AdamW at step 3, cross-entropy's 1/count).
fn scalar(name: &str, frozen: f32) -> f32 {
    let (lr, wd, b1, b2, step) = (1e-2f64, 0.1f64, 0.9f64, 0.999f64, 3);
    (match name {
        "decay" => 1.0 - lr * wd,
        "step" => lr / (1.0 - b1.powi(step)),
        "b1" => b1,
        "c1" => 1.0 - b1,
        "b2" => b2,
        "c2" => 1.0 - b2,
        "bc2" => (1.0 - b2.powi(step)).sqrt(),
        "eps" => 1e-8,
        "frozen" => f64::from(frozen),
        "grad_scale" => 0.125,
        _ => 0.75,
    }) as f32
}

/// Seeded inputs for `rows` rows: logits and gates spread wider, second
/// moments and rstd positive, targets in range with some -100 (ignored).
fn inputs(k: &Kernel, rows: usize, seed: u64, frozen: f32) -> Vec<Buf> {
    let mut rng = Rng(seed);
    let first_cols = k
        .args
        .iter()
        .find_map(|a| match a.ty {
            ArgTy::Rows { cols } => Some(cols),
            _ => None,
        })
        .unwrap_or(1);
    k.args
        .iter()
        .map(|a| {
            let scale = match a.name.as_str() {
                "logits" | "gate" => 3.0,
                _ => 1.0,
            };
            let mut vec = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        let x = rng.f32() * scale;
                        if matches!(a.name.as_str(), "v" | "rstd") {
                            x.abs() + 0.01
                        } else {
                            x
                        }
                    })
                    .collect()
            };
            match a.ty {
                ArgTy::Rows { cols } => Buf::F32(vec(rows * cols)),
                ArgTy::Vector { len } => Buf::F32(vec(len)),
                ArgTy::PerRow => Buf::F32(vec(rows)),
                ArgTy::Periodic { period, cols } => Buf::F32(vec(period * cols)),
                ArgTy::Scalar => Buf::Scalar(scalar(&a.name, frozen)),
                ArgTy::PerRowI64 => Buf::I64(
                    (0..rows)
                        .map(|_| {
                            if rng.below(4) == 0 {
                                -100
                            } else {
                                rng.below(first_cols) as i64
                            }
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// Checks `got` against `want` with the file's tolerance.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(0.0f32, |m, w| m.max(w.abs()));
    let tol = 1e-6 + 1e-5 * max;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol
        };
        assert!(ok, "{what}[{i}]: jit {g} vs interpreter {w} (tolerance {tol})");
    }
}

/// Runs `k` through the interpreter and the JIT on the same inputs and compares every written argument.
fn compare(jit: &mut Jit, k: &Kernel, rows: usize, seed: u64, frozen: f32) {
    let compiled = jit.compile(k).unwrap_or_else(|e| panic!("{e}\n{k}"));
    let bufs = inputs(k, rows, seed, frozen);
    let (mut want, mut got) = (bufs.clone(), bufs);
    interp::run(k, &mut kargs(k, &mut want), rows).unwrap();
    compiled.launch(&mut kargs(k, &mut got), rows).unwrap();
    for (a, (g, w)) in k.args.iter().zip(got.iter().zip(&want)) {
        if a.access == Access::Read {
            continue;
        }
        if let (Buf::F32(g), Buf::F32(w)) = (g, w) {
            assert_close(&format!("{} rows {rows} frozen {frozen}: {}", k.name, a.name), g, w);
        }
    }
}

fn check_all(jit: &mut Jit, k: &Kernel) {
    for (s, &rows) in ROWS.iter().enumerate() {
        if k.name.starts_with("adamw") {
            let cols = match k.args[0].ty {
                ArgTy::Rows { cols } => cols,
                _ => 0,
            };
            for frozen in [0, 1, cols] {
                compare(jit, k, rows, 17 * s as u64 + frozen as u64, frozen as f32);
            }
        } else {
            compare(jit, k, rows, 31 * s as u64 + 7, 0.0);
        }
    }
}

#[test]
fn every_example_kernel_matches_the_interpreter() {
    let mut jit = Jit::new().unwrap();
    for k in lib::examples() {
        check_all(&mut jit, &k);
        let c = jit.compile(&k).unwrap();
        eprintln!(
            "{:<36} compiled in {:>7.2} ms",
            k.name,
            c.compile_time().as_secs_f64() * 1e3
        );
    }
}

#[test]
fn library_kernels_at_awkward_sizes_match_the_interpreter() {
    let mut jit = Jit::new().unwrap();
    for &c in &COLS {
        let mut ks = vec![
            lib::rmsnorm(c, 1e-5),
            lib::rmsnorm_grad(c),
            lib::swiglu(c),
            lib::swiglu_grad(c),
            lib::silu(c),
            lib::silu_grad(c),
            lib::layernorm(c, 1e-5),
            lib::layernorm_grad(c),
            lib::gelu(c),
            lib::gelu_grad(c),
            lib::tanh(c),
            lib::tanh_grad(c),
            lib::bias_add(c),
            lib::add_n(c, 1),
            lib::add_n(c, 3),
            lib::cross_entropy(c, false),
            lib::cross_entropy(c, true),
            lib::adamw(c),
            lib::small_matmul(c),
        ];
        for r in [1, 3, 8, 40] {
            ks.push(lib::lamda_epilogue(c, r, 0.5));
            ks.push(lib::lowrank_epilogue(c, r, 2.0));
        }
        for hd in [2, 4, 8, 16, 64] {
            if c % hd == 0 {
                ks.push(lib::rope(c, hd, 5));
                ks.push(lib::rope_grad(c, hd, 1));
            }
        }
        for k in &ks {
            check_all(&mut jit, k);
        }
    }
    // RoPE at head sizes whose half is not a multiple of four (scalar columns) and is.
    for (width, hd, seq) in [
        (24, 6, 5),
        (20, 10, 3),
        (12, 4, 2),
        (48, 8, 5),
        (192, 64, 7),
        (96, 32, 17),
    ] {
        check_all(&mut jit, &lib::rope(width, hd, seq));
        check_all(&mut jit, &lib::rope_grad(width, hd, seq));
    }
}

/// SiLU and its grad compiled by the JIT against the unfused CPU ops
/// (`ops::pointwise::silu`, `silu_grad`), not only the interpreter: wide
/// inputs (|x| up to 12) at every column count, with the file's tolerance.
#[test]
fn silu_kernels_match_the_cpu_ops() {
    use lamda_runtime::ops::pointwise;
    let mut jit = Jit::new().unwrap();
    let mut rng = Rng(99);
    for &d in &COLS {
        for &rows in &ROWS {
            let x: Vec<f32> = (0..rows * d).map(|_| 12.0 * rng.f32()).collect();
            let g: Vec<f32> = (0..rows * d).map(|_| rng.f32()).collect();
            let mut want = vec![0.0; rows * d];
            pointwise::silu(&x, &mut want).unwrap();
            let mut got = vec![f32::NAN; rows * d];
            let k = jit.compile(&lib::silu(d)).unwrap();
            k.launch(&mut [KArg::F32(&x), KArg::F32Mut(&mut got)], rows).unwrap();
            assert_close(&format!("silu d {d} rows {rows}"), &got, &want);
            pointwise::silu_grad(&g, &x, &mut want).unwrap();
            let k = jit.compile(&lib::silu_grad(d)).unwrap();
            k.launch(&mut [KArg::F32(&g), KArg::F32(&x), KArg::F32Mut(&mut got)], rows)
                .unwrap();
            assert_close(&format!("silu_grad d {d} rows {rows}"), &got, &want);
        }
    }
}

/// Adapter ranks around the JIT's f32x4 quads of `row_dot` (below 4, with a
/// remainder, a loop past 32) and output widths around its four-column chunks.
const RANKS: [usize; 11] = [1, 2, 3, 4, 5, 7, 8, 16, 17, 33, 64];
const WIDTHS: [usize; 6] = [1, 3, 4, 5, 17, 64];

#[test]
fn adapter_epilogues_at_every_rank_match_the_interpreter() {
    let mut jit = Jit::new().unwrap();
    for &r in &RANKS {
        for &w in &WIDTHS {
            check_all(&mut jit, &lib::lamda_epilogue(w, r, 0.5));
            check_all(&mut jit, &lib::lowrank_epilogue(w, r, 2.0));
            check_all(&mut jit, &row_dot_scalar_columns(w, r));
        }
        check_all(&mut jit, &lib::small_matmul(r));
    }
}

/// `y[j] = dot(x[i, :], b[j, :]) + t[j % 3]`: the RoPE frequency index with
/// head_dim 6 keeps the loop a column at a time, so the `row_dot` without `bt`
/// takes its one-column form at every column.
fn row_dot_scalar_columns(w: usize, r: usize) -> Kernel {
    Kernel {
        name: format!("row_dot_scalar_columns_w{w}_r{r}"),
        args: vec![
            arg("x", ArgTy::Rows { cols: r }, Access::Read),
            arg("b", ArgTy::Vector { len: w * r }, Access::Read),
            arg("t", ArgTy::Vector { len: 3 }, Access::Read),
            arg("y", ArgTy::Rows { cols: w }, Access::Write),
        ],
        body: vec![Stmt::Store {
            arg: 3,
            cols: w,
            value: Expr::RowDot {
                a: 0,
                b: 1,
                len: r,
                bt: false,
            } + Expr::at(2, Col::HalfIndex { head_dim: 6 }),
            accumulate: false,
        }],
    }
}

/// Infinities and NaN in the shared matrix and zeros in the row: every
/// column's class (finite, +-inf, NaN) must match the interpreter's, also
/// where the JIT's last, overlapping quad of a row re-reads an infinity.
#[test]
fn row_dot_special_values_match_the_interpreter() {
    let mut jit = Jit::new().unwrap();
    for &r in &RANKS {
        for &w in &WIDTHS {
            for k in [lib::lowrank_epilogue(w, r, 2.0), row_dot_scalar_columns(w, r)] {
                let compiled = jit.compile(&k).unwrap();
                let rows = 5;
                let mut bufs = inputs(&k, rows, 3 * r as u64 + w as u64, 0.0);
                let mut rng = Rng(r as u64 * 101 + w as u64);
                // The row and the matrix of the row_dot.
                let (a, b) = if k.args[0].name == "x" { (0, 1) } else { (1, 2) };
                if let Buf::F32(x) = &mut bufs[a] {
                    for v in x.iter_mut() {
                        if rng.below(4) == 0 {
                            *v = 0.0;
                        }
                    }
                }
                if let Buf::F32(m) = &mut bufs[b] {
                    for v in m.iter_mut() {
                        *v = match rng.below(12) {
                            0 => f32::INFINITY,
                            1 => f32::NEG_INFINITY,
                            2 if rng.below(4) == 0 => f32::NAN,
                            _ => *v,
                        };
                    }
                }
                let (mut want, mut got) = (bufs.clone(), bufs);
                interp::run(&k, &mut kargs(&k, &mut want), rows).unwrap();
                compiled.launch(&mut kargs(&k, &mut got), rows).unwrap();
                let y = k.args.len() - 1;
                if let (Buf::F32(g), Buf::F32(wv)) = (&got[y], &want[y]) {
                    assert_close(&format!("{} with infinities", k.name), g, wv);
                }
            }
        }
    }
}

fn arg(name: &str, ty: ArgTy, access: Access) -> Arg {
    Arg {
        name: name.into(),
        ty,
        access,
    }
}

/// A kernel that uses every statement, column form, condition and operator
/// the library does not (accumulating stores, gathers from vectors past their
/// end, `col_below`, `max`, `log`, periodic rows read by column).
fn kitchen_sink(c: usize) -> Kernel {
    let x = || Expr::load(0);
    let abs = |e: Expr| e.clone().max(-e);
    Kernel {
        name: format!("kitchen_sink_c{c}"),
        args: vec![
            arg("x", ArgTy::Rows { cols: c }, Access::Read),
            arg("w", ArgTy::Vector { len: c }, Access::Read),
            arg("t", ArgTy::PerRowI64, Access::Read),
            arg("s", ArgTy::Scalar, Access::Read),
            arg("y", ArgTy::Rows { cols: c }, Access::ReadWrite),
            arg("r", ArgTy::PerRow, Access::Write),
            arg("tab", ArgTy::Periodic { period: 3, cols: c }, Access::Read),
            arg("z", ArgTy::Rows { cols: c }, Access::Write),
        ],
        body: vec![
            Stmt::Reduce {
                var: 0,
                op: Reduce::Max,
                cols: c,
                value: x(),
            },
            Stmt::Reduce {
                var: 1,
                op: Reduce::Sum,
                cols: c,
                value: (abs(x()).sqrt() + Expr::c(1.0)).log(),
            },
            Stmt::Let {
                var: 2,
                value: Expr::load(2),
            },
            Stmt::Let {
                var: 3,
                value: Expr::var(2) + Expr::c(3.0),
            },
            Stmt::Let {
                var: 4,
                value: Expr::at(1, Col::Var(3)) + Expr::at(0, Col::Var(2)),
            },
            Stmt::StoreRow {
                arg: 5,
                value: Expr::select(
                    Cond::NonNegative(2),
                    Expr::var(4) + Expr::var(0),
                    -Expr::var(1) * Expr::load(3),
                ),
            },
            Stmt::Store {
                arg: 4,
                cols: c,
                value: Expr::select(
                    Cond::ColBelow { arg: 3 },
                    x() * Expr::load(6),
                    Expr::load(1).recip().max(x()) - Expr::load(4),
                ),
                accumulate: true,
            },
            Stmt::Store {
                arg: 7,
                cols: c,
                value: Expr::select(Cond::ColIs(2), x().exp(), x().max(Expr::c(0.0)).log()),
                accumulate: false,
            },
            Stmt::Store {
                arg: 7,
                cols: c,
                value: Expr::load(7) * Expr::load(4) + (Expr::var(1) + Expr::c(1.0)).rsqrt(),
                accumulate: true,
            },
        ],
    }
}

#[test]
fn every_statement_and_operator_matches_the_interpreter() {
    let mut jit = Jit::new().unwrap();
    for &c in &COLS {
        let k = kitchen_sink(c);
        for (s, &rows) in ROWS.iter().enumerate() {
            // col_below's scalar: below, inside and past the columns, fractional.
            for s_val in [-1.5f32, 0.0, 2.7, c as f32 + 4.0] {
                let compiled = jit.compile(&k).unwrap();
                let mut bufs = inputs(&k, rows, 100 + s as u64, 0.0);
                bufs[3] = Buf::Scalar(s_val);
                let mut rng = Rng(s as u64);
                // Targets from -3 to c + 2: gathers past the vector's end read NaN in both.
                bufs[2] = Buf::I64((0..rows).map(|_| rng.below(c + 6) as i64 - 3).collect());
                // Keep the row gather in range (the JIT reads NaN past a row's end, the interpreter the next row).
                if let Buf::I64(t) = &mut bufs[2] {
                    for v in t.iter_mut() {
                        *v = (*v).min(c as i64 - 1);
                    }
                }
                let (mut want, mut got) = (bufs.clone(), bufs);
                interp::run(&k, &mut kargs(&k, &mut want), rows).unwrap();
                compiled.launch(&mut kargs(&k, &mut got), rows).unwrap();
                for a in [4, 5, 7] {
                    if let (Buf::F32(g), Buf::F32(w)) = (&got[a], &want[a]) {
                        assert_close(&format!("{} rows {rows} s {s_val}: {}", k.name, k.args[a].name), g, w);
                    }
                }
            }
        }
    }
}

#[test]
fn special_values_match_the_interpreter() {
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        88.7,
        88.73,
        -87.5,
        -100.0,
        -150.0,
        1e30,
        f32::MAX,
        0.5,
    ];
    let n = specials.len();
    // (name, value, tolerance in units of f32::EPSILON relative to the interpreter's value)
    let ops: Vec<(&str, Expr, f32)> = vec![
        ("exp", Expr::load(0).exp(), 2.0),
        ("log", Expr::load(0).log(), 2.0),
        ("sqrt", Expr::load(0).sqrt(), 2.0),
        ("rsqrt", Expr::load(0).rsqrt(), 2.0),
        ("recip", Expr::load(0).recip(), 2.0),
        ("max", Expr::load(0).max(Expr::load(1)), 2.0),
        ("max_rev", Expr::load(1).max(Expr::load(0)), 2.0),
        ("erf", Expr::load(0).erf(), 4.0),
        ("tanh", Expr::load(0).tanh(), 4.0),
    ];
    let mut jit = Jit::new().unwrap();
    for (name, value, eps) in ops {
        let k = Kernel {
            name: format!("special_{name}"),
            args: vec![
                arg("x", ArgTy::Rows { cols: n }, Access::Read),
                arg("w", ArgTy::Rows { cols: n }, Access::Read),
                arg("y", ArgTy::Rows { cols: n }, Access::Write),
            ],
            body: vec![Stmt::Store {
                arg: 2,
                cols: n,
                value,
                accumulate: false,
            }],
        };
        let compiled = jit.compile(&k).unwrap();
        // Each x meets every special w, one row per w.
        let x: Vec<f32> = (0..n).flat_map(|_| specials).collect();
        let w: Vec<f32> = specials.iter().flat_map(|&s| std::iter::repeat_n(s, n)).collect();
        let mut want = vec![0.0f32; n * n];
        let mut got = vec![0.0f32; n * n];
        interp::run(&k, &mut [KArg::F32(&x), KArg::F32(&w), KArg::F32Mut(&mut want)], n).unwrap();
        compiled
            .launch(&mut [KArg::F32(&x), KArg::F32(&w), KArg::F32Mut(&mut got)], n)
            .unwrap();
        for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
            let ok = if wv.is_nan() {
                g.is_nan()
            } else {
                g == wv || (g - wv).abs() <= eps * f32::EPSILON * wv.abs() + 3e-45
            };
            assert!(ok, "{name}({}, {}): jit {g} vs interpreter {wv}", x[i], w[i]);
        }
    }
}

#[test]
fn bad_launches_are_errors() {
    let mut jit = Jit::new().unwrap();
    let k = lib::rmsnorm(9, 1e-5);
    let c = jit.compile(&k).unwrap();
    let (x, w) = (vec![1.0f32; 3 * 9], vec![1.0f32; 9]);
    let (mut y, mut r) = (vec![0.0f32; 3 * 9], vec![0.0f32; 3]);
    // One row too many for every buffer.
    assert!(
        c.launch(
            &mut [KArg::F32(&x), KArg::F32(&w), KArg::F32Mut(&mut y), KArg::F32Mut(&mut r)],
            4
        )
        .is_err()
    );
    // A short weight.
    assert!(
        c.launch(
            &mut [
                KArg::F32(&x),
                KArg::F32(&w[..8]),
                KArg::F32Mut(&mut y),
                KArg::F32Mut(&mut r)
            ],
            3
        )
        .is_err()
    );
    // A short output.
    assert!(
        c.launch(
            &mut [
                KArg::F32(&x),
                KArg::F32(&w),
                KArg::F32Mut(&mut y[..26]),
                KArg::F32Mut(&mut r)
            ],
            3
        )
        .is_err()
    );
    // A read-only buffer where the kernel writes, a scalar for a buffer, too few arguments.
    assert!(
        c.launch(
            &mut [KArg::F32(&x), KArg::F32(&w), KArg::F32(&y), KArg::F32Mut(&mut r)],
            3
        )
        .is_err()
    );
    assert!(
        c.launch(
            &mut [
                KArg::F32(&x),
                KArg::Scalar(1.0),
                KArg::F32Mut(&mut y),
                KArg::F32Mut(&mut r)
            ],
            3
        )
        .is_err()
    );
    assert!(
        c.launch(&mut [KArg::F32(&x), KArg::F32(&w), KArg::F32Mut(&mut y)], 3)
            .is_err()
    );
    // f32 targets for cross-entropy's i64 argument.
    let ce = jit.compile(&lib::cross_entropy(5, false)).unwrap();
    let (logits, t) = (vec![0.0f32; 10], vec![0.0f32; 2]);
    let mut loss = vec![0.0f32; 2];
    assert!(
        ce.launch(&mut [KArg::F32(&logits), KArg::F32(&t), KArg::F32Mut(&mut loss)], 2)
            .is_err()
    );
    // The buffers are untouched and the right launch still works.
    assert!(y.iter().all(|&v| v == 0.0));
    c.launch(
        &mut [KArg::F32(&x), KArg::F32(&w), KArg::F32Mut(&mut y), KArg::F32Mut(&mut r)],
        3,
    )
    .unwrap();
    assert!(y.iter().all(|&v| (v - 1.0).abs() < 1e-4));
}

#[test]
fn compiling_twice_returns_the_cached_kernel() {
    let mut jit = Jit::new().unwrap();
    let a = jit.compile(&lib::swiglu(13)).unwrap();
    let b = jit.compile(&lib::swiglu(13)).unwrap();
    assert!(a.same(&b));
    assert_eq!(jit.len(), 1);
    let mut other = lib::swiglu(14);
    other.name = lib::swiglu(13).name;
    assert!(jit.compile(&other).is_err(), "a different kernel under a cached name");
    // Kernels outlive the JIT that compiled them.
    drop(jit);
    let (g, u) = (vec![1.0f32; 13], vec![2.0f32; 13]);
    let mut h = vec![0.0f32; 13];
    a.launch(&mut [KArg::F32(&g), KArg::F32(&u), KArg::F32Mut(&mut h)], 1)
        .unwrap();
    assert!((h[0] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
}

fn run_blocks(c: &CompiledKernel, bufs: &[Buf], rows: usize, per: Option<usize>) -> Vec<Buf> {
    let mut bufs = bufs.to_vec();
    let k = c.kernel().clone();
    let mut args = kargs(&k, &mut bufs);
    match per {
        Some(per) => c.launch_blocks(&mut args, rows, per).unwrap(),
        None => c.launch(&mut args, rows).unwrap(),
    }
    drop(args);
    bufs
}

fn bits(bufs: &[Buf]) -> Vec<Vec<u32>> {
    bufs.iter()
        .map(|b| match b {
            Buf::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn splitting_rows_across_threads_gives_the_same_bits() {
    let mut jit = Jit::new().unwrap();
    let kernels = [
        lib::rmsnorm(172, 1e-5),
        lib::cross_entropy(33, true),
        lib::adamw(64),
        lib::lamda_epilogue(172, 40, 0.5),
        lib::lowrank_epilogue(65, 17, 2.0),
        lib::rope(48, 8, 5),
        lib::rope(24, 6, 5),
        kitchen_sink(17),
    ];
    for k in &kernels {
        let c = jit.compile(k).unwrap();
        for rows in [37, 1000] {
            let bufs = inputs(k, rows, 5, 3.0);
            let one = bits(&run_blocks(&c, &bufs, rows, Some(rows)));
            let each = bits(&run_blocks(&c, &bufs, rows, Some(1)));
            let some = bits(&run_blocks(&c, &bufs, rows, Some(7)));
            let auto = bits(&run_blocks(&c, &bufs, rows, None));
            assert!(one == each && one == some && one == auto, "{} rows {rows}", k.name);
        }
    }
}

/// `Kernel::overwrites` (the executor then hands the output a stale buffer
/// instead of zeros): every output it claims comes out the same from a
/// NaN-filled start as from zeros, in the interpreter; an output it does not
/// claim is not checked (zeros stay correct for it). The claims must cover
/// the row outputs of the hot kernels, or the test would pass vacuously.
#[test]
fn outputs_claimed_overwritten_do_not_depend_on_their_start() {
    let mut claimed = Vec::new();
    for k in lib::examples() {
        let rows = 5;
        let start = inputs(&k, rows, 3, 0.0);
        let fill = |v: f32| {
            let mut bufs = start.clone();
            for (a, b) in k.args.iter().zip(bufs.iter_mut()) {
                if let (Access::Write, Buf::F32(x)) = (a.access, b) {
                    x.fill(v);
                }
            }
            bufs
        };
        let (mut zeros, mut nans) = (fill(0.0), fill(f32::NAN));
        interp::run(&k, &mut kargs(&k, &mut zeros), rows).unwrap();
        interp::run(&k, &mut kargs(&k, &mut nans), rows).unwrap();
        for (i, a) in k.args.iter().enumerate() {
            if !k.overwrites(i) {
                continue;
            }
            claimed.push(format!("{}.{}", k.name, a.name));
            if let (Buf::F32(z), Buf::F32(n)) = (&zeros[i], &nans[i]) {
                assert_eq!(
                    z.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    n.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{}: output `{}` read its stale start",
                    k.name,
                    a.name
                );
            }
        }
    }
    for want in [
        "swiglu_f13.h",
        "lamda_epilogue_o9_r3_a5e-1.y",
        "lamda_epilogue_o9_r3_a5e-1.u",
    ] {
        assert!(
            claimed.iter().any(|c| c == want),
            "{want} not claimed; claimed: {claimed:?}"
        );
    }
}
