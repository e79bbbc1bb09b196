//! Accuracy of the JIT's inline `exp` and `log` (clif module doc) against f64
//! `exp`/`ln` rounded to f32, over strided sweeps of every f32 bit pattern in
//! their domains (both the f32x4 and the one-column code: 4093 columns a row).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lamda_compiler::kernel::{Access, Arg, ArgTy, Expr, Kernel, Stmt};
use lamda_runtime::backend::cpu::interp::KArg;
use lamda_runtime::backend::cpu::jit::Jit;

/// Columns per row: 4093 = 511 * 8 + 4 + 1, so every code path runs.
const COLS: usize = 4093;

fn unary(name: &str, value: Expr) -> Kernel {
    Kernel {
        name: format!("accuracy_{name}"),
        args: vec![
            Arg {
                name: "x".into(),
                ty: ArgTy::Rows { cols: COLS },
                access: Access::Read,
            },
            Arg {
                name: "y".into(),
                ty: ArgTy::Rows { cols: COLS },
                access: Access::Write,
            },
        ],
        body: vec![Stmt::Store {
            arg: 1,
            cols: COLS,
            value,
            accumulate: false,
        }],
    }
}

/// f32 values in their order as integers: adjacent floats differ by 1, -0 == +0.
fn ordinal(x: f32) -> i64 {
    let i = i64::from(x.to_bits() as i32);
    if i < 0 { i64::from(i32::MIN) - i } else { i }
}

/// Runs `f` on `xs` with the JIT and returns the largest distance in ulps from `reference`.
fn max_ulps(name: &str, value: Expr, mut xs: Vec<f32>, reference: impl Fn(f64) -> f64) -> i64 {
    let rows = xs.len().div_ceil(COLS);
    xs.resize(rows * COLS, 1.0);
    let mut jit = Jit::new().unwrap();
    let k = jit.compile(&unary(name, value)).unwrap();
    let mut ys = vec![0.0f32; xs.len()];
    k.launch(&mut [KArg::F32(&xs), KArg::F32Mut(&mut ys)], rows).unwrap();
    let mut worst = (0i64, 0.0f32);
    for (&x, &y) in xs.iter().zip(&ys) {
        let want = reference(f64::from(x)) as f32;
        if want.is_nan() {
            assert!(y.is_nan(), "{name}({x:e}) = {y:e}, expected NaN");
            continue;
        }
        let d = (ordinal(y) - ordinal(want)).abs();
        if d > worst.0 {
            worst = (d, x);
        }
    }
    eprintln!("{name}: at most {} ulp (at x = {:e})", worst.0, worst.1);
    worst.0
}

/// Every `step`-th bit pattern from `lo` to `hi` (as u32), plus both ends.
fn sweep(lo: u32, hi: u32, step: usize) -> Vec<f32> {
    (lo..=hi).step_by(step).chain([lo, hi]).map(f32::from_bits).collect()
}

const SPECIALS: [f32; 10] = [
    0.0,
    -0.0,
    1.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MIN_POSITIVE,
    f32::MAX,
    1e-45,
    -1.0,
];

#[test]
fn exp_is_within_two_ulps() {
    // Positive x up to past overflow (89.5), negative down to past underflow (-104.5).
    let mut xs = sweep(0, 89.5f32.to_bits(), 127);
    xs.extend(sweep(0x8000_0000, (-104.5f32).to_bits(), 127));
    xs.extend(SPECIALS);
    xs.extend([88.72283, 88.72284, -87.33655, -103.27893, -103.97208, -104.0]);
    assert!(max_ulps("exp", Expr::load(0).exp(), xs, f64::exp) <= 2);
}

#[test]
fn log_is_within_two_ulps() {
    // Every positive float (subnormals included) up to infinity, and a few negatives.
    let mut xs = sweep(1, 0x7F80_0000, 127);
    xs.extend(SPECIALS);
    xs.extend([-1e-40, -5.0, 0.999_999_94, 1.000_000_1, std::f32::consts::FRAC_1_SQRT_2]);
    assert!(max_ulps("log", Expr::load(0).log(), xs, f64::ln) <= 2);
}
