//! The BERT row-wise kernels (LayerNorm, GELU, tanh, their grads, bias add)
//! through the Cranelift JIT and the reference interpreter, against plain f64
//! references written here: forward kernels against the formulas, grads
//! against central finite differences of the f64 forward. Also the accuracy
//! of the JIT's inline `erf` and `tanh` (clif module doc) and of the
//! interpreter's `erf` over strided sweeps of every f32 bit pattern.
//!
//! The f64 `erf` here is the everywhere-convergent series of positive terms
//! (Abramowitz-Stegun 7.1.6) `erf x = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) / (1 3 5 ... (2n+1))`,
//! a different expansion from the interpreter's (Maclaurin and a continued
//! fraction), checked against tabulated values; `tanh` is std's f64 `tanh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lamda_compiler::kernel::{Access, Arg, ArgTy, Expr, Kernel, Stmt, lib};
use lamda_runtime::backend::cpu::interp::{self, KArg};
use lamda_runtime::backend::cpu::jit::Jit;

// ------------------------------------------------------------------ f64 references

/// erf in f64 by Abramowitz-Stegun 7.1.6 (positive terms, so no cancellation);
/// relative error around 1e-15. `|x| >= 6` gives +-1 (erfc(6) < 3e-17).
fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    if a >= 6.0 {
        return 1.0f64.copysign(x);
    }
    let (mut sum, mut term) = (0.0f64, a);
    let mut n = 0.0f64;
    loop {
        sum += term;
        n += 1.0;
        term *= 2.0 * a * a / (2.0 * n + 1.0);
        if term <= 1e-17 * sum {
            break;
        }
    }
    (std::f64::consts::FRAC_2_SQRT_PI * (-a * a).exp() * sum).copysign(x)
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
}

/// LayerNorm of one row (two passes, biased variance): (y, mean, rstd).
fn layernorm64(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> (Vec<f64>, f64, f64) {
    let d = x.len() as f64;
    let mean = x.iter().sum::<f64>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d;
    let rstd = 1.0 / (var + eps).sqrt();
    let y = x
        .iter()
        .zip(w.iter().zip(b))
        .map(|(v, (w, b))| (v - mean) * rstd * w + b)
        .collect();
    (y, mean, rstd)
}

#[test]
fn the_reference_erf_matches_tabulated_values() {
    // erf and erfc (mpmath at 40 digits, rounded to f64).
    let table = [
        (1e-3, 0.001_128_378_790_969_236_5, 0.998_871_621_209_030_7),
        (0.5, 0.520_499_877_813_046_5, 0.479_500_122_186_953_5),
        (1.0, 0.842_700_792_949_714_9, 0.157_299_207_050_285_13),
        (1.5, 0.966_105_146_475_310_8, 0.033_894_853_524_689_274),
        (2.0, 0.995_322_265_018_952_7, 0.004_677_734_981_047_266),
        (3.0, 0.999_977_909_503_001_4, 2.209_049_699_858_544e-5),
        (3.5, 0.999_999_256_901_627_6, 7.430_983_723_414_128e-7),
        (4.5, 0.999_999_999_803_383_9, 1.966_160_441_542_887_6e-10),
    ];
    for (x, erf, erfc) in table {
        let got = erf64(x);
        assert!((got - erf).abs() <= 2e-15 * erf, "erf({x}) = {got:e}, want {erf:e}");
        assert!(
            (1.0 - got - erfc).abs() <= 2e-15 + 1e-12 * erfc,
            "1 - erf({x}) = {:e}, want {erfc:e}",
            1.0 - got
        );
        assert_eq!(erf64(-x), -got);
    }
}

// ------------------------------------------------------------------ accuracy sweeps

/// Columns per row: 4093 = 511 * 8 + 4 + 1, so every code path (two f32x4 a
/// step, one f32x4, single columns) runs.
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

/// Every `step`-th bit pattern from `lo` to `hi` (as u32), plus both ends.
fn sweep(lo: u32, hi: u32, step: usize) -> Vec<f32> {
    (lo..=hi).step_by(step).chain([lo, hi]).map(f32::from_bits).collect()
}

/// f32s of both signs: every 4099th bit pattern up to infinity, every 127th
/// from 0.25 to 8 (where erf and tanh bend), and special values.
fn all_floats() -> Vec<f32> {
    let mut xs = sweep(0, 0x7F80_0000, 4099);
    xs.extend(sweep(0x8000_0000, 0xFF80_0000, 4099));
    xs.extend(sweep(0.25f32.to_bits(), 8.0f32.to_bits(), 127));
    xs.extend(sweep((-0.25f32).to_bits(), (-8.0f32).to_bits(), 127));
    xs.extend([
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::MAX,
        f32::MIN,
        0.8,
        -0.8,
        0.799_999_95,
        1.0,
        -1.0,
        0.999_999_94,
        4.0,
        4.000_000_5,
        12.0,
        -30.0,
        44.0,
        45.0,
        89.0,
    ]);
    xs
}

/// The JIT's values of `value` (a function of `x`) at `xs`.
fn jit_values(name: &str, value: Expr, xs: &[f32]) -> Vec<f32> {
    let rows = xs.len().div_ceil(COLS);
    let mut x = xs.to_vec();
    x.resize(rows * COLS, 0.0);
    let mut jit = Jit::new().unwrap();
    let k = jit.compile(&unary(name, value)).unwrap();
    let mut y = vec![0.0f32; x.len()];
    k.launch(&mut [KArg::F32(&x), KArg::F32Mut(&mut y)], rows).unwrap();
    y.truncate(xs.len());
    y
}

/// The worst absolute error and the worst distance in ulps of `got` from
/// `reference` (rounded to f32), with the arguments where they occur; NaN
/// must meet NaN and a finite reference a finite value.
fn errors(name: &str, xs: &[f32], got: &[f32], reference: impl Fn(f64) -> f64) -> ((f64, f32), (i64, f32)) {
    let (mut abs, mut ulps) = ((0.0f64, 0.0f32), (0i64, 0.0f32));
    for (&x, &y) in xs.iter().zip(got) {
        let want = reference(f64::from(x));
        if want.is_nan() {
            assert!(y.is_nan(), "{name}({x:e}) = {y:e}, expected NaN");
            continue;
        }
        assert!(!y.is_nan(), "{name}({x:e}) is NaN, expected {want:e}");
        let e = (f64::from(y) - want).abs();
        if e > abs.0 {
            abs = (e, x);
        }
        let d = (ordinal(y) - ordinal(want as f32)).abs();
        if d > ulps.0 {
            ulps = (d, x);
        }
    }
    eprintln!(
        "{name}: at most {:.3e} absolute (at x = {:e}), {} ulp (at x = {:e})",
        abs.0, abs.1, ulps.0, ulps.1
    );
    (abs, ulps)
}

#[test]
fn jit_erf_is_within_2e_7_absolute_and_a_few_ulps() {
    let xs = all_floats();
    let got = jit_values("erf", Expr::load(0).erf(), &xs);
    let ((abs, _), (ulps, _)) = errors("jit erf", &xs, &got, erf64);
    assert!(abs <= 2e-7, "erf: {abs:e} absolute");
    assert!(ulps <= 4, "erf: {ulps} ulp");
    // Odd, saturating, and exact at zero.
    for (&x, &y) in xs.iter().zip(&got) {
        if x.is_infinite() || x.abs() >= 4.0 {
            assert_eq!(y, 1.0f32.copysign(x), "erf({x:e})");
        }
        if x == 0.0 {
            assert_eq!(y.to_bits(), x.to_bits(), "erf({x:e})");
        }
    }
}

#[test]
fn jit_tanh_is_within_a_few_ulps() {
    let xs = all_floats();
    let got = jit_values("tanh", Expr::load(0).tanh(), &xs);
    let (_, (ulps, _)) = errors("jit tanh", &xs, &got, f64::tanh);
    assert!(ulps <= 3, "tanh: {ulps} ulp");
    for (&x, &y) in xs.iter().zip(&got) {
        if x.is_infinite() || x.abs() >= 10.0 {
            assert_eq!(y, 1.0f32.copysign(x), "tanh({x:e})");
        }
        if x == 0.0 {
            assert_eq!(y.to_bits(), x.to_bits(), "tanh({x:e})");
        }
    }
}

#[test]
fn interpreter_erf_is_within_an_ulp() {
    let xs = all_floats();
    let erf: Vec<f32> = xs.iter().map(|&x| interp::erf(x)).collect();
    let (_, (ulps, _)) = errors("interpreter erf", &xs, &erf, erf64);
    assert!(ulps <= 1, "interpreter erf: {ulps} ulp");
    // The interpreter evaluates the IR's erf and tanh with interp::erf and f32::tanh.
    for (name, value, f) in [
        ("erf", Expr::load(0).erf(), interp::erf as fn(f32) -> f32),
        ("tanh", Expr::load(0).tanh(), f32::tanh),
    ] {
        let k = unary(name, value);
        let x: Vec<f32> = (0..COLS).map(|j| (j as f32 - 2046.0) / 128.0).collect();
        let mut y = vec![0.0f32; COLS];
        interp::run(&k, &mut [KArg::F32(&x), KArg::F32Mut(&mut y)], 1).unwrap();
        for (x, y) in x.iter().zip(&y) {
            assert_eq!(y.to_bits(), f(*x).to_bits(), "interpreter {name}({x})");
        }
    }
}

// ------------------------------------------------------------------ kernels

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
}

/// Row widths: odd and prime (no f32x4 chunk fits exactly), two warps, BERT-base's
/// 768 and a multiple of eight, and the degenerate one column.
const WIDTHS: [usize; 6] = [1, 5, 37, 64, 384, 768];

/// Rows of test values, `rows x d`: row 0 uniform in [-3, 3], row 1 in
/// [-30, 30], row 2 offset (5 + uniform: a mean far from 0), row 3 mixed with
/// the values ±12, ±30, 0, ±1e-3 and ±1e-30 every few columns.
fn test_rows(d: usize, seed: u64) -> (usize, Vec<f32>) {
    let mut rng = Rng(seed);
    let specials = [12.0f32, -12.0, 30.0, -30.0, 0.0, 1e-3, -1e-3, 1e-30, -1e-30];
    let rows = 4;
    let mut x = Vec::with_capacity(rows * d);
    for r in 0..rows {
        for j in 0..d {
            let u = rng.f32();
            x.push(match r {
                0 => 3.0 * u,
                1 => 30.0 * u,
                2 => 5.0 + u,
                _ if j % 3 == 0 => specials[(j / 3) % specials.len()],
                _ => 2.0 * u,
            });
        }
    }
    (rows, x)
}

fn uniform(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| scale * rng.f32()).collect()
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `|got - want| <= tol (1 + |want|)` elementwise.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (f64::from(g) - w).abs() / (1.0 + w.abs());
        assert!(
            e <= tol,
            "{what}[{i}]: {g:e} vs reference {w:e} (relative to 1 + |ref|: {e:.2e} > {tol:e})"
        );
        worst = worst.max(e);
    }
    eprintln!("{what:<40} worst {worst:.2e}");
}

/// Runs `k` over `rows` rows through the interpreter and the JIT on the same
/// inputs (one slice per argument, in order; written ones are outputs) and
/// returns both results of every written argument: `[(interpreter, jit)]`.
fn run_both(jit: &mut Jit, k: &Kernel, rows: usize, bufs: &[Vec<f32>]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let compiled = jit.compile(k).unwrap();
    let mut runs = Vec::new();
    for use_jit in [false, true] {
        let mut owned: Vec<Vec<f32>> = bufs.to_vec();
        let mut args: Vec<KArg<'_>> = k
            .args
            .iter()
            .zip(owned.iter_mut())
            .map(|(a, b)| {
                if a.access == Access::Read {
                    KArg::F32(b)
                } else {
                    KArg::F32Mut(b)
                }
            })
            .collect();
        if use_jit {
            compiled.launch(&mut args, rows).unwrap();
        } else {
            interp::run(k, &mut args, rows).unwrap();
        }
        drop(args);
        runs.push(owned);
    }
    let jit_run = runs.pop().unwrap();
    let interp_run = runs.pop().unwrap();
    k.args
        .iter()
        .enumerate()
        .filter(|(_, a)| a.access != Access::Read)
        .map(|(i, _)| (interp_run[i].clone(), jit_run[i].clone()))
        .collect()
}

/// Checks both results of an output against the reference.
fn check_both(what: &str, got: &(Vec<f32>, Vec<f32>), want: &[f64], tol: f64) {
    assert_close(&format!("{what} (interpreter)"), &got.0, want, tol);
    assert_close(&format!("{what} (jit)"), &got.1, want, tol);
}

/// Output buffers start as NaN, so an element left unwritten fails.
fn nans(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

#[test]
fn layernorm_matches_the_f64_formula() {
    let mut jit = Jit::new().unwrap();
    for &d in &WIDTHS {
        for eps in [1e-12, 1e-5] {
            let (rows, x) = test_rows(d, d as u64);
            let (w, b) = (uniform(d, 2.0, 1), uniform(d, 1.0, 2));
            let k = lib::layernorm(d, eps);
            let out = run_both(
                &mut jit,
                &k,
                rows,
                &[x.clone(), w.clone(), b.clone(), nans(rows * d), nans(rows), nans(rows)],
            );
            let (mut y, mut mean, mut rstd) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rows {
                let (yr, m, s) = layernorm64(&to64(&x[r * d..(r + 1) * d]), &to64(&w), &to64(&b), eps);
                y.extend(yr);
                mean.push(m);
                rstd.push(s);
            }
            let name = format!("layernorm d {d} eps {eps:e}");
            check_both(&format!("{name} y"), &out[0], &y, 2e-5);
            check_both(&format!("{name} mean"), &out[1], &mean, 2e-6);
            // d = 1 has variance 0: rstd = 1 / sqrt(eps), relative.
            let rel: Vec<f64> = rstd.iter().map(|s| 1.0 / s).collect();
            for (i, run) in [&out[2].0, &out[2].1].into_iter().enumerate() {
                let scaled: Vec<f32> = run.iter().zip(&rel).map(|(g, r)| (f64::from(*g) * r) as f32).collect();
                assert_close(
                    &format!("{name} rstd (run {i}) / reference"),
                    &scaled,
                    &vec![1.0; rows],
                    2e-5,
                );
            }
        }
    }
}

#[test]
fn layernorm_grad_matches_finite_differences() {
    let mut jit = Jit::new().unwrap();
    let eps = 1e-5;
    for &d in &[2usize, 5, 37, 384] {
        let (rows, x) = test_rows(d, 40 + d as u64);
        let w = uniform(d, 2.0, 3);
        let b = uniform(d, 1.0, 4);
        let g = uniform(rows * d, 1.0, 5);
        let (w64, b64) = (to64(&w), to64(&b));
        // mean and rstd as the forward kernel's outputs would hold them (f64, rounded).
        let mut mean = Vec::new();
        let mut rstd = Vec::new();
        let mut want = Vec::new();
        for r in 0..rows {
            let xr = to64(&x[r * d..(r + 1) * d]);
            let gr = to64(&g[r * d..(r + 1) * d]);
            let (_, m, s) = layernorm64(&xr, &w64, &b64, eps);
            mean.push(m as f32);
            rstd.push(s as f32);
            // dx_k = d/dx_k sum_j g_j y_j, by central differences.
            let loss = |xs: &[f64]| {
                let (y, _, _) = layernorm64(xs, &w64, &b64, eps);
                y.iter().zip(&gr).map(|(y, g)| y * g).sum::<f64>()
            };
            for k in 0..d {
                let h = 1e-4 * (1.0 + xr[k].abs());
                let (mut up, mut down) = (xr.clone(), xr.clone());
                up[k] += h;
                down[k] -= h;
                want.push((loss(&up) - loss(&down)) / (2.0 * h));
            }
        }
        let out = run_both(
            &mut jit,
            &lib::layernorm_grad(d),
            rows,
            &[g.clone(), x.clone(), w.clone(), mean, rstd, nans(rows * d)],
        );
        check_both(&format!("layernorm_grad d {d} dx"), &out[0], &want, 2e-5);
    }
}

#[test]
fn gelu_and_tanh_match_the_f64_formulas() {
    let mut jit = Jit::new().unwrap();
    for &d in &WIDTHS {
        let (rows, x) = test_rows(d, 7 + d as u64);
        let x64 = to64(&x);
        let out = run_both(&mut jit, &lib::gelu(d), rows, &[x.clone(), nans(rows * d)]);
        let want: Vec<f64> = x64.iter().map(|&v| gelu64(v)).collect();
        check_both(&format!("gelu d {d}"), &out[0], &want, 1e-6);
        let out = run_both(&mut jit, &lib::tanh(d), rows, &[x.clone(), nans(rows * d)]);
        let want: Vec<f64> = x64.iter().map(|v| v.tanh()).collect();
        check_both(&format!("tanh d {d}"), &out[0], &want, 4e-7);
        let bias = uniform(d, 3.0, 9);
        let out = run_both(
            &mut jit,
            &lib::bias_add(d),
            rows,
            &[x.clone(), bias.clone(), nans(rows * d)],
        );
        let want: Vec<f64> = x64
            .iter()
            .enumerate()
            .map(|(e, v)| v + f64::from(bias[e % d]))
            .collect();
        check_both(&format!("bias_add d {d}"), &out[0], &want, 1e-7);
    }
}

#[test]
fn gelu_grad_and_tanh_grad_match_finite_differences() {
    let mut jit = Jit::new().unwrap();
    for &d in &WIDTHS {
        let (rows, x) = test_rows(d, 70 + d as u64);
        let g = uniform(rows * d, 1.0, 11);
        let central = |f: &dyn Fn(f64) -> f64, v: f64| {
            let h = 1e-5 * (1.0 + v.abs());
            (f(v + h) - f(v - h)) / (2.0 * h)
        };
        let out = run_both(
            &mut jit,
            &lib::gelu_grad(d),
            rows,
            &[g.clone(), x.clone(), nans(rows * d)],
        );
        let want: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&v, &gv)| f64::from(gv) * central(&gelu64, f64::from(v)))
            .collect();
        check_both(&format!("gelu_grad d {d}"), &out[0], &want, 2e-6);
        // tanh_grad reads the forward output y = tanh(x) (rounded to f32).
        let y: Vec<f32> = x.iter().map(|&v| f64::from(v).tanh() as f32).collect();
        let out = run_both(&mut jit, &lib::tanh_grad(d), rows, &[g.clone(), y, nans(rows * d)]);
        let want: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&v, &gv)| f64::from(gv) * central(&f64::tanh, f64::from(v)))
            .collect();
        check_both(&format!("tanh_grad d {d}"), &out[0], &want, 2e-6);
    }
}

#[test]
fn gelu_at_infinities_and_nan() {
    // gelu(+inf) = +inf; gelu(-inf) = -inf * 0 = NaN, as the formula (and torch) gives;
    // the grads at +-inf are NaN too (x * pdf = inf * 0); NaN stays NaN.
    let mut jit = Jit::new().unwrap();
    let x = vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e30, -1e30];
    let out = run_both(&mut jit, &lib::gelu(5), 1, &[x.clone(), nans(5)]);
    for run in [&out[0].0, &out[0].1] {
        assert_eq!(run[0], f32::INFINITY);
        assert!(run[1].is_nan() && run[2].is_nan());
        assert_eq!(run[3], 1e30);
        assert_eq!(run[4], -0.0);
    }
    let out = run_both(&mut jit, &lib::tanh(5), 1, &[x, nans(5)]);
    for run in [&out[0].0, &out[0].1] {
        assert_eq!(run[..2], [1.0, -1.0]);
        assert!(run[2].is_nan());
        assert_eq!(run[3..], [1.0, -1.0]);
    }
}
