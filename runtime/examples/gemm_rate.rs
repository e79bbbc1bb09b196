//! The f32 GEMM rate of this machine through lamdac's GEMM (faer), for the
//! utilisation figure of scripts/bench-vs-pytorch.sh: prints one JSON line per
//! shape `m x k x n` (row-major `C = A B`; `--at` / `--bt` transpose A / B), the best of
//! several repetitions, on rayon's default pool (the machine's cores).
//!
//! `cargo run --release -p lamda-runtime --example gemm_rate [-- M K N ...]`
//! (default 1024 1024 1024; `GEMM_REPS=N` sets the repetitions).

use std::time::Instant;

use lamda_runtime::ops::gemm::{Trans, gemm};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bt = args.iter().any(|a| a == "--bt");
    let at = args.iter().any(|a| a == "--at");
    let dims: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let dims = if dims.len() >= 3 { dims } else { vec![1024, 1024, 1024] };
    for s in dims.chunks_exact(3) {
        let (m, k, n) = (s[0], s[1], s[2]);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
        let mut c = vec![0.0f32; m * n];
        let tb = if bt { Trans::T } else { Trans::N };
        let ta = if at { Trans::T } else { Trans::N };
        let flops = 2.0 * (m * n * k) as f64;
        // GEMM_REPS fixes the number of repetitions (bench-vs-pytorch.sh: 50)
        let reps = std::env::var("GEMM_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(((2e10 / flops) as usize).clamp(3, 200));
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            if let Err(e) = gemm(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut c) {
                eprintln!("gemm_rate: {e}");
                std::process::exit(1);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"at\": {at}, \"bt\": {bt}, \"gflops\": {:.1}, \"threads\": {}}}",
            flops / best / 1e9,
            rayon::current_num_threads()
        );
    }
}
