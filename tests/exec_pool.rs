//! The executor's buffer pool (issue 8): a steady-state training step
//! allocates nothing, and the pool it holds is exactly the activation memory
//! the plan reports (`check`'s "activations").
//!
//! A counting global allocator sees every allocation of this process, on
//! every thread (the rayon workers included), while one step of the
//! quickstart spec runs: forward, backward and the gradient accumulation,
//! fused and unfused, with the calling thread one of rayon's workers as in
//! `lamdac` (src/main.rs). The first steps fill the pool, compile the
//! kernels, build the RoPE tables and the ops' scratch; from then on a step
//! allocates nothing: values live in the pool, scratch and per-chunk results
//! in reused buffers, the GEMMs split their work with `rayon::join` (no heap
//! jobs), and a worker's jobs go to its own deque, not to the global queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lamda_runtime::exec::Executor;
use lamda_runtime::session::RunOptions;

mod common;
use common::prepare;

/// Counts allocations (and their bytes) while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// Allocations of at least [`BUFFER`] bytes.
static BIG: AtomicUsize = AtomicUsize::new(0);
/// An allocation this large is a buffer of data, not bookkeeping.
const BUFFER: usize = 4096;

// SAFETY: forwards to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
            if layout.size() >= BUFFER {
                BIG.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
            if new_size >= BUFFER {
                BIG.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: as the caller promised.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations of a steady-state step.
struct Counted {
    all: usize,
    bytes: usize,
    buffers: usize,
}

/// What a steady-state step of the quickstart spec, and (pool bytes, plan's activation bytes).
fn steady_state(fuse: bool) -> (Counted, (u64, u64)) {
    // as `lamdac` runs: the calling thread is one of the pool's workers
    let _pool = rayon::ThreadPoolBuilder::new().use_current_thread().build().unwrap();
    let dir = std::env::temp_dir().join(format!("lamdac-pool-{fuse}-{}", std::process::id()));
    let opts = RunOptions {
        spec: "examples/quickstart.lamda".into(),
        out: Some(dir.clone()),
        fuse,
        ..RunOptions::default()
    };
    let mut s = prepare(&opts).unwrap();
    let tr = &mut s.trainer;
    let plan = tr.plan.clone();
    let params = tr.params.clone();
    let mut grads = tr.grads.clone();
    let batch = tr.data.next_batch();
    let tokens: Vec<i64> = batch.input_ids.iter().copied().collect();
    let labels: Vec<i64> = batch.labels.iter().copied().collect();
    let mut exec = Executor::new();
    exec.precompile(&plan.kernels()).unwrap();
    let program = &plan.phases[0].program;
    // Warm-up: the pool, the RoPE tables, the JIT'd kernels, the GEMM's per-thread buffers.
    for _ in 0..2 {
        exec.run(program, &params, &mut grads, &tokens, &labels, 0.5, false)
            .unwrap();
    }
    exec.run(&plan.eval, &params, &mut [], &tokens, &labels, 1.0, false)
        .unwrap();
    for p in plan.phases.iter().skip(1) {
        exec.run(&p.program, &params, &mut grads, &tokens, &labels, 0.5, false)
            .unwrap();
    }
    exec.run(program, &params, &mut grads, &tokens, &labels, 0.5, false)
        .unwrap();
    ALLOCS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    BIG.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = exec.run(program, &params, &mut grads, &tokens, &labels, 0.5, false);
    COUNTING.store(false, Ordering::SeqCst);
    let out = out.unwrap();
    assert!(out.loss.is_finite() && out.count > 0, "{out:?}");
    let counted = Counted {
        all: ALLOCS.load(Ordering::SeqCst),
        bytes: BYTES.load(Ordering::SeqCst),
        buffers: BIG.load(Ordering::SeqCst),
    };
    let _ = std::fs::remove_dir_all(&dir);
    (counted, ((exec.pool_values() * 4) as u64, plan.memory.activations_peak))
}

/// The tests of this file run one at a time: the counter sees the whole process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(fuse: bool) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (c, (pool, planned)) = steady_state(fuse);
    eprintln!(
        "fuse {fuse}: {} allocations ({} bytes, {} of them >= {BUFFER} bytes) in a steady-state step; pool {pool} bytes, plan {planned}",
        c.all, c.bytes, c.buffers
    );
    assert_eq!(
        pool, planned,
        "the pool is not the plan's activation memory (fuse {fuse})"
    );
    assert_eq!(
        c.all, 0,
        "a steady-state step allocated {} times ({} bytes, {} of them buffers), fuse {fuse}",
        c.all, c.bytes, c.buffers
    );
}

#[test]
fn a_fused_step_allocates_nothing_and_the_pool_is_the_plans_number() {
    check(true);
}

#[test]
fn an_unfused_step_allocates_nothing_and_the_pool_is_the_plans_number() {
    check(false);
}
