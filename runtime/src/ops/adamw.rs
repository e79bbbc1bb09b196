//! AdamW (PyTorch semantics, SEMANTICS §6) with a freeze mask over leading columns (§4).
//!
//! A parameter is a row-major `(rows, cols)` matrix; entries in columns
//! `0 .. frozen_cols` are frozen: no decay, no step, moments untouched. That
//! is exactly LaMDA's B (`(d_out, r)`, leading columns = largest singular
//! values freeze first); every other tensor passes `frozen_cols = 0`. The step
//! counter lives with the tensor's state and advances only when at least one
//! column trains, so a fully frozen tensor is skipped entirely.
//!
//! Hyperparameters are `f64` like PyTorch's Python floats; the derived
//! per-step scalars (`1 - lr wd`, `lr / (1 - b1^k)`, `sqrt(1 - b2^k)`) are
//! formed in f64 and rounded to f32 once, and the elementwise update runs in
//! f32 in the order of the formula.

use rayon::prelude::*;

use super::{OpsError, check_len, rows_per_task};

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay b1.
    pub beta1: f64,
    /// Second-moment decay b2.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// SEMANTICS §6 defaults (`b1 = 0.9`, `b2 = 0.999`, `eps = 1e-8`, `wd = 0`)
    /// with PyTorch's default `lr = 1e-3`.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Optimizer state of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    /// First moment m, same shape as the parameter.
    pub exp_avg: Vec<f32>,
    /// Second moment v, same shape as the parameter.
    pub exp_avg_sq: Vec<f32>,
    /// Number of steps taken (k after the last update).
    pub step: u64,
}

impl AdamState {
    /// Zero moments for a tensor of `len` entries, step 0.
    pub fn new(len: usize) -> Self {
        AdamState {
            exp_avg: vec![0.0; len],
            exp_avg_sq: vec![0.0; len],
            step: 0,
        }
    }
}

/// One AdamW step on the trainable entries of `param`; returns whether the
/// tensor was updated (false when every column is frozen).
///
/// param, grad, state moments: `(rows, cols)` row-major, `cols > 0`; entries
/// with column `< frozen_cols` are frozen. With `k = state.step + 1`, for
/// every trainable entry:
/// ```text
/// p <- p (1 - lr wd)
/// m <- b1 m + (1 - b1) g
/// v <- b2 v + (1 - b2) g^2
/// p <- p - (lr / (1 - b1^k)) m / (sqrt(v) / sqrt(1 - b2^k) + eps)
/// ```
/// `grad` may hold anything in frozen columns; it is not read there.
/// The scalar launch parameters of the generated AdamW kernel
/// (`lamda_compiler::kernel::lib::adamw`) for the `step`-th update (1-based)
/// with `frozen` leading columns: decay, step size, b1, 1 - b1, b2, 1 - b2,
/// sqrt(1 - b2^k), eps, frozen. Rounded exactly as [`adamw_step`] rounds them.
pub fn fused_scalars(cfg: &AdamW, step: u64, frozen: usize) -> [f32; 9] {
    let k = i32::try_from(step).unwrap_or(i32::MAX);
    [
        (1.0 - cfg.lr * cfg.weight_decay) as f32,
        (cfg.lr / (1.0 - cfg.beta1.powi(k))) as f32,
        cfg.beta1 as f32,
        (1.0 - cfg.beta1) as f32,
        cfg.beta2 as f32,
        (1.0 - cfg.beta2) as f32,
        (1.0 - cfg.beta2.powi(k)).sqrt() as f32,
        cfg.eps as f32,
        frozen as f32,
    ]
}

pub fn adamw_step(
    cfg: &AdamW,
    param: &mut [f32],
    grad: &[f32],
    state: &mut AdamState,
    cols: usize,
    frozen_cols: usize,
) -> Result<bool, OpsError> {
    const OP: &str = "adamw_step";
    let len = param.len();
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(OpsError::Config {
            op: OP,
            msg: format!("{len} entries do not form rows of {cols} columns"),
        });
    }
    check_len(OP, "grad", grad.len(), len)?;
    check_len(OP, "exp_avg", state.exp_avg.len(), len)?;
    check_len(OP, "exp_avg_sq", state.exp_avg_sq.len(), len)?;
    if frozen_cols >= cols || len == 0 {
        return Ok(false);
    }
    state.step += 1;
    let k = i32::try_from(state.step).unwrap_or(i32::MAX);
    let decay = (1.0 - cfg.lr * cfg.weight_decay) as f32;
    let step_size = (cfg.lr / (1.0 - cfg.beta1.powi(k))) as f32;
    let bc2_sqrt = (1.0 - cfg.beta2.powi(k)).sqrt() as f32;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let (c1, c2) = ((1.0 - cfg.beta1) as f32, (1.0 - cfg.beta2) as f32);
    let eps = cfg.eps as f32;
    let weight_decay = cfg.weight_decay != 0.0;

    let rows = rows_per_task(cols);
    let chunk = rows * cols;
    param
        .par_chunks_mut(chunk)
        .zip(grad.par_chunks(chunk))
        .zip(
            state
                .exp_avg
                .par_chunks_mut(chunk)
                .zip(state.exp_avg_sq.par_chunks_mut(chunk)),
        )
        .for_each(|((p, g), (m, v))| {
            for (((p, g), m), v) in p
                .chunks_exact_mut(cols)
                .zip(g.chunks_exact(cols))
                .zip(m.chunks_exact_mut(cols))
                .zip(v.chunks_exact_mut(cols))
            {
                for j in frozen_cols..cols {
                    if weight_decay {
                        p[j] *= decay;
                    }
                    m[j] = b1 * m[j] + c1 * g[j];
                    v[j] = b2 * v[j] + c2 * (g[j] * g[j]);
                    let denom = v[j].sqrt() / bc2_sqrt + eps;
                    p[j] -= step_size * (m[j] / denom);
                }
            }
        });
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close};

    /// Hand-rolled f64 AdamW over a sequence of (grad, frozen_cols) steps.
    fn reference(
        cfg: &AdamW,
        p0: &[f32],
        grads: &[Vec<f32>],
        frozen: &[usize],
        cols: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, u64) {
        let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let mut m = vec![0.0f64; p.len()];
        let mut v = vec![0.0f64; p.len()];
        let mut k = 0u64;
        for (g, &f) in grads.iter().zip(frozen) {
            if f >= cols {
                continue;
            }
            k += 1;
            for i in 0..p.len() {
                if i % cols < f {
                    continue;
                }
                let gi = g[i] as f64;
                p[i] *= 1.0 - cfg.lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * gi;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * gi * gi;
                let mhat = m[i] / (1.0 - cfg.beta1.powi(k as i32));
                let vhat = v[i] / (1.0 - cfg.beta2.powi(k as i32));
                // (lr / bc1) m / (sqrt(v)/sqrt(bc2) + eps) == lr mhat / (sqrt(vhat) + eps)
                p[i] -= cfg.lr * mhat / (vhat.sqrt() + cfg.eps);
            }
        }
        (p, m, v, k)
    }

    #[test]
    fn matches_f64_reference_with_growing_freeze_and_decay() {
        let mut rng = Rng::new(81);
        let (rows, cols) = (3usize, 4usize);
        let cfg = AdamW {
            lr: 1e-2,
            weight_decay: 0.1,
            ..AdamW::default()
        };
        // linear(0.3)-like schedule over 8 steps, then fully frozen
        let frozen = [0usize, 1, 2, 2, 3, 4, 4, 4];
        let grads: Vec<Vec<f32>> = frozen.iter().map(|_| rng.vec(rows * cols)).collect();
        let p0 = rng.vec(rows * cols);
        let mut p = p0.clone();
        let mut st = AdamState::new(rows * cols);
        let mut snapshots = Vec::new();
        for (g, &f) in grads.iter().zip(&frozen) {
            let updated = adamw_step(&cfg, &mut p, g, &mut st, cols, f).unwrap();
            assert_eq!(updated, f < cols);
            snapshots.push((p.clone(), st.clone()));
        }
        let (wp, wm, wv, wk) = reference(&cfg, &p0, &grads, &frozen, cols);
        assert_eq!(st.step, wk);
        assert_eq!(wk, 5);
        assert_close("param", &p, &wp, 1e-6, 1e-5);
        assert_close("exp_avg", &st.exp_avg, &wm, 1e-7, 1e-5);
        assert_close("exp_avg_sq", &st.exp_avg_sq, &wv, 1e-9, 1e-5);
        // Column j froze after step (first t with frozen[t] > j) - 1: it and its
        // moments are bit-identical from then on.
        for j in 0..cols {
            let t_freeze = frozen.iter().position(|&f| f > j).unwrap();
            let (p_at, s_at) = &snapshots[t_freeze - 1];
            for (t, (pt, st)) in snapshots.iter().enumerate().skip(t_freeze) {
                for r in 0..rows {
                    let i = r * cols + j;
                    assert_eq!(pt[i], p_at[i], "param col {j} moved at step {t}");
                    assert_eq!(st.exp_avg[i], s_at.exp_avg[i]);
                    assert_eq!(st.exp_avg_sq[i], s_at.exp_avg_sq[i]);
                }
            }
        }
    }

    #[test]
    fn first_step_is_sign_times_lr_without_decay() {
        // With m = v = 0, step 1 moves each entry by lr * g / (|g| + eps).
        let cfg = AdamW {
            lr: 0.5,
            ..AdamW::default()
        };
        let mut p = vec![1.0f32, 1.0, 1.0];
        let mut st = AdamState::new(3);
        adamw_step(&cfg, &mut p, &[2.0, -3.0, 0.0], &mut st, 3, 0).unwrap();
        assert_close("p", &p, &[0.5, 1.5, 1.0], 1e-6, 0.0);
        assert_eq!(st.step, 1);
    }

    #[test]
    fn fully_frozen_tensor_is_skipped() {
        let mut p = vec![1.0f32; 4];
        let mut st = AdamState::new(4);
        let cfg = AdamW {
            weight_decay: 0.5,
            ..AdamW::default()
        };
        let updated = adamw_step(&cfg, &mut p, &[1.0; 4], &mut st, 2, 2).unwrap();
        assert!(!updated);
        assert_eq!(st, AdamState::new(4));
        assert_eq!(p, vec![1.0; 4]);
        assert!(adamw_step(&cfg, &mut p, &[1.0; 4], &mut st, 3, 0).is_err());
    }
}
