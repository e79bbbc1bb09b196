//! CI guard against speed cliffs of the CPU path that no golden test sees:
//! elementwise work (JIT kernels and the reference ops) timed right after a
//! parallel faer GEMM, against a plain copy of the same bytes and against
//! the same work on a cleaned vector state, all in this one process.
//!
//! The regression this guards (issue 7): faer's AVX-512 assembly kernels
//! return with dirty upper vector halves, and on Intel cores every
//! legacy-SSE instruction that runs afterwards pays a state-transition
//! penalty: elementwise ops ran ~50x slower than after `vzeroupper`
//! (runtime/src/ops/vector_state.rs). The bounds are wide (a ratio of 8),
//! so machine noise never trips them while a cliff of that kind does; each
//! figure is the best of several repetitions. No absolute time is asserted.
//! The legitimate ratios measured on a Sapphire Rapids VM (2 threads) are
//! printed with `--nocapture`; they were below 3 there. The thread-pool
//! reference ops are compared with themselves on a clean vector state: on
//! an AMD EPYC (Zen 4) VM their time after a GEMM varied 3.5-9.5x a plain
//! copy from worker wake-up alone, which is not the cliff this guards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lamda_compiler::kernel::lib;
use lamda_runtime::backend::cpu::interp::KArg;
use lamda_runtime::backend::cpu::jit::Jit;
use lamda_runtime::ops::gemm::{Trans, gemm};
use lamda_runtime::ops::{elementwise, pointwise, vector_state};

/// Rows x columns of the elementwise operands: 1 MiB per f32 buffer, in cache.
const ROWS: usize = 256;
const COLS: usize = 1024;
/// The GEMM run before each timed call: large enough to run on every thread.
const G: usize = 256;
const REPS: usize = 9;
/// Fails only beyond this ratio.
const MAX_RATIO: f64 = 8.0;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// A parallel GEMM, as a training step runs one before most elementwise work.
fn run_gemm(a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm(G, G, G, 1.0, a, Trans::N, b, Trans::T, 0.0, c).unwrap();
}

/// The best of [`REPS`] timings of `work`, each right after `before`.
fn best(mut before: impl FnMut(), mut work: impl FnMut()) -> Duration {
    (0..REPS)
        .map(|_| {
            before();
            let t = Instant::now();
            work();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn ratio(what: &str, slow: Duration, base: Duration, against: &str) {
    let r = slow.as_secs_f64() / base.as_secs_f64().max(1e-9);
    println!("{what}: {slow:?} vs {against} {base:?}: ratio {r:.2}");
    assert!(
        r <= MAX_RATIO,
        "{what} took {slow:?}, {r:.1}x {against} ({base:?}); the bound is {MAX_RATIO}x. \
         A cliff like this is usually code running with a dirty upper vector state \
         (see runtime/src/ops/vector_state.rs)"
    );
}

#[test]
fn elementwise_work_after_a_gemm_is_not_a_cliff() {
    let (ga, gb) = (data(G * G, 1), data(G * G, 2));
    let mut gc = vec![0.0f32; G * G];
    let n = ROWS * COLS;
    let (x, y) = (data(n, 3), data(n, 4));
    let mut out = vec![0.0f32; n];
    let mut out2 = vec![0.0f32; n];

    let mut jit = Jit::new().unwrap();
    let add = jit.compile(&lib::add_n(COLS, 2)).unwrap();
    let swiglu = jit.compile(&lib::swiglu(COLS)).unwrap();

    let copy = best(|| run_gemm(&ga, &gb, &mut gc), || out2.copy_from_slice(&x));
    let jit_add = best(
        || run_gemm(&ga, &gb, &mut gc),
        || {
            add.launch(&mut [KArg::F32(&x), KArg::F32(&y), KArg::F32Mut(&mut out)], ROWS)
                .unwrap()
        },
    );
    ratio(
        "JIT add (x + y) after a GEMM",
        jit_add,
        copy,
        "a copy of the output's bytes",
    );
    // The reference ops split their work over the thread pool, whose worker
    // wake-up on a 2-vCPU VM varies by tens of microseconds (3.5-9.5x a
    // one-thread copy, 2.7-8x a thread-pool copy on a Zen 4 VM): their
    // baseline is the same op on a clean vector state, which pays the same.
    let add_after_gemm = best(
        || run_gemm(&ga, &gb, &mut gc),
        || pointwise::add(&x, &y, &mut out).unwrap(),
    );
    let add_clean = best(vector_state::clear_upper_all, || {
        pointwise::add(&x, &y, &mut out).unwrap()
    });
    ratio(
        "reference add after a GEMM",
        add_after_gemm,
        add_clean,
        "on a clean vector state",
    );

    // exp per element: compared with the same work on a clean state.
    let jit_swiglu = |out: &mut [f32]| {
        swiglu
            .launch(&mut [KArg::F32(&x), KArg::F32(&y), KArg::F32Mut(out)], ROWS)
            .unwrap()
    };
    let after_gemm = best(|| run_gemm(&ga, &gb, &mut gc), || jit_swiglu(&mut out));
    let clean = best(vector_state::clear_upper_all, || jit_swiglu(&mut out));
    ratio("JIT swiglu after a GEMM", after_gemm, clean, "on a clean vector state");

    let ref_swiglu = |out: &mut [f32]| elementwise::swiglu_forward(&x, &y, out).unwrap();
    let after_gemm = best(|| run_gemm(&ga, &gb, &mut gc), || ref_swiglu(&mut out));
    let clean = best(vector_state::clear_upper_all, || ref_swiglu(&mut out));
    ratio(
        "reference swiglu after a GEMM",
        after_gemm,
        clean,
        "on a clean vector state",
    );
}
