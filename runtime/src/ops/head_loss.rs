//! The LM head and the causal-LM cross-entropy in one op, in chunks of
//! rows, so that the `(tokens, vocab)` logits and their gradient never exist
//! whole (at SmolLM2's 49,152-token vocabulary and 1,024 tokens a step, each
//! would be 200 MB).
//!
//! Design. Only rows with a target take part (`target >= 0`; the others get
//! a zero gradient and no loss), gathered into chunks of [`CHUNK`] rows; the
//! chunks run side by side on rayon, each with sequential GEMMs. Per chunk:
//!
//! 1. `Z^T = W H_c^T` — the logits of the chunk transposed, `(vocab, c)`:
//!    the weight is the left operand, which runs about twice as fast as
//!    `H_c W^T` for a wide vocabulary (faer packs the narrow side);
//! 2. per column (token) the max, `exp(z - max)` and its sum, by rows of
//!    `Z^T` with the token index innermost (vectorised across tokens, the
//!    same `exp` as the attention kernels, `simd::exp_approx`);
//! 3. `loss_i = ln(sum_i) + max_i - z_{t_i, i}` and, in place,
//!    `dZ = (softmax - onehot(t)) * scale`;
//! 4. `dH_c = dZ^T W`, the chunk's rows of the input gradient.
//!
//! The head weight is frozen (lamdac never trains it), so there is no dW.
//! Matches the unfused `linear` + `cross_entropy` + `linear_grad_input`
//! within float rounding (tests below, against float64).

use faer::Par;
use rayon::prelude::*;

use super::gemm::{Trans, gemm_with};
use super::simd::{Simd, exp_approx, multiversion};
use super::{OpsError, ScratchPool, at_least, check_len, dims};

/// Rows per chunk: the chunk's transposed logits are `vocab x CHUNK` floats
/// (25 MB at 49,152 x 128), one per thread at a time. faer's f32 kernels
/// work in strips of 96 rows of its column-major destination (the chunk's
/// columns here): 64 leaves every strip part-empty, 128 one of two (SmolLM2,
/// Sapphire Rapids, same run: 7% less time in the head than 64; 256 took
/// 10-20% more than 128 in three alternated runs on another SPR VM).
pub const CHUNK: usize = 128;

/// What [`linear_cross_entropy`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadLoss {
    /// Rows with a target.
    pub count: usize,
    /// Sum of their losses (float64).
    pub sum: f64,
}

/// A chunk's losses `(c)` and input-gradient rows `(c, d)`.
/// Scratch of one chunk (from [`CHUNKS`]); after the chunk ran, `loss`
/// holds its rows' losses and `dhc` their `dH` rows.
#[derive(Default)]
struct Chunk {
    /// gathered rows of H: (c, d)
    hc: Vec<f32>,
    /// logits, then dZ, transposed: (vocab, c)
    zt: Vec<f32>,
    /// column max and sum of exponentials: (c)
    max: Vec<f32>,
    sum: Vec<f32>,
    /// per-row loss and `scale / sum`: (c)
    loss: Vec<f32>,
    inv: Vec<f32>,
    /// dH rows: (c, d)
    dhc: Vec<f32>,
}

impl Chunk {
    /// Grows every buffer to a chunk of `c` rows.
    fn fit(&mut self, c: usize, d: usize, vocab: usize) {
        at_least(&mut self.hc, c * d);
        at_least(&mut self.zt, vocab * c);
        for b in [&mut self.max, &mut self.sum, &mut self.loss, &mut self.inv] {
            at_least(b, c);
        }
        at_least(&mut self.dhc, c * d);
    }
}

/// Chunk scratch, reused across chunks and calls: a step allocates none.
static CHUNKS: ScratchPool<Chunk> = ScratchPool::new();

/// The chunks' results, reused across calls.
static RESULTS: ScratchPool<Vec<Result<Chunk, OpsError>>> = ScratchPool::new();

/// The row indices with a target, reused across calls.
static ACTIVE: ScratchPool<Vec<usize>> = ScratchPool::new();

/// Loss and input gradient of `loss_rows = CE(h W^T, targets)`.
///
/// h: `(n, d)`, w: `(vocab, d)`, targets: `(n)` (already shifted; `< 0` =
/// ignored), loss_rows: `(n)` (0 for ignored rows), dh: `(n, d)`, the
/// gradient of `scale * sum_i loss_i` (so `scale = 1 / count` gives the
/// mean's). A target outside `0..vocab` is an error.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy(
    h: &[f32],
    w: &[f32],
    targets: &[i64],
    n: usize,
    d: usize,
    vocab: usize,
    scale: f32,
    loss_rows: &mut [f32],
    dh: &mut [f32],
) -> Result<HeadLoss, OpsError> {
    const OP: &str = "linear_cross_entropy";
    check_len(OP, "h", h.len(), dims(OP, &[n, d])?)?;
    check_len(OP, "w", w.len(), dims(OP, &[vocab, d])?)?;
    check_len(OP, "targets", targets.len(), n)?;
    check_len(OP, "loss", loss_rows.len(), n)?;
    check_len(OP, "dh", dh.len(), n * d)?;
    if let Some(&t) = targets.iter().find(|&&t| t >= 0 && t as u64 >= vocab as u64) {
        return Err(OpsError::Config {
            op: OP,
            msg: format!("target {t} outside the vocabulary of {vocab}"),
        });
    }
    loss_rows.fill(0.0);
    dh.fill(0.0);
    let mut active = ACTIVE.take();
    active.clear();
    active.extend((0..n).filter(|&i| targets[i] >= 0));
    if active.is_empty() || vocab == 0 {
        ACTIVE.give(active);
        return Ok(HeadLoss { count: 0, sum: 0.0 });
    }
    let simd = Simd::detect();
    // Per chunk: its rows' losses (c) and dH rows (c, d), in a pooled scratch.
    let mut results = RESULTS.take();
    active
        .par_chunks(CHUNK)
        .map(|rows| {
            let c = rows.len();
            let mut k = CHUNKS.take();
            k.fit(c, d, vocab);
            for (dst, &i) in k.hc[..c * d].chunks_exact_mut(d.max(1)).zip(rows) {
                dst.copy_from_slice(&h[i * d..(i + 1) * d]);
            }
            // 1. Z^T (vocab, c) = W (vocab, d) H_c^T
            let zt = &mut k.zt[..vocab * c];
            gemm_with(
                Par::Seq,
                vocab,
                c,
                d,
                1.0,
                w,
                Trans::N,
                &k.hc[..c * d],
                Trans::T,
                0.0,
                zt,
            )?;
            // 2. column max, then exp(z - max) in place with the column sums
            let (max, sum) = (&mut k.max[..c], &mut k.sum[..c]);
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            for (j, &i) in rows.iter().enumerate() {
                k.loss[j] = -zt[targets[i] as usize * c + j];
            }
            col_max(simd, zt, max);
            col_exp_sum(simd, zt, max, sum);
            // 3. losses (log sum exp - picked logit); dZ = (p - onehot) * scale
            for j in 0..c {
                k.loss[j] += sum[j].ln() + max[j];
                k.inv[j] = scale / sum[j];
            }
            col_scale(simd, zt, &k.inv[..c]);
            for (j, &i) in rows.iter().enumerate() {
                zt[targets[i] as usize * c + j] -= scale;
            }
            // 4. dH_c (c, d) = dZ^T (c, vocab) W (vocab, d)
            let dhc = &mut k.dhc[..c * d];
            gemm_with(
                Par::Seq,
                c,
                d,
                vocab,
                1.0,
                &k.zt[..vocab * c],
                Trans::T,
                w,
                Trans::N,
                0.0,
                dhc,
            )?;
            Ok(k)
        })
        .collect_into_vec(&mut results);
    let mut sum = 0.0f64;
    let mut failed = None;
    for (rows, res) in active.chunks(CHUNK).zip(results.drain(..)) {
        match res {
            Ok(k) => {
                for ((&i, &l), src) in rows.iter().zip(&k.loss).zip(k.dhc.chunks_exact(d.max(1))) {
                    loss_rows[i] = l;
                    sum += f64::from(l);
                    dh[i * d..(i + 1) * d].copy_from_slice(src);
                }
                CHUNKS.give(k);
            }
            Err(e) => failed = Some(e),
        }
    }
    let count = active.len();
    ACTIVE.give(active);
    RESULTS.give(results);
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(HeadLoss { count, sum })
}

/// `max[j] = max(max[j], max_v z[v, j])`, z: `(vocab, c)`, max: `(c)`.
#[inline(always)]
fn col_max_impl(z: &[f32], max: &mut [f32]) {
    for row in z.chunks_exact(max.len()) {
        max.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
    }
}

/// `z[v, j] = exp(z[v, j] - max[j])`, `sum[j] += z[v, j]`.
#[inline(always)]
fn col_exp_sum_impl(z: &mut [f32], max: &[f32], sum: &mut [f32]) {
    for row in z.chunks_exact_mut(max.len()) {
        for ((x, &m), s) in row.iter_mut().zip(max).zip(sum.iter_mut()) {
            *x = exp_approx(*x - m);
            *s += *x;
        }
    }
}

/// `z[v, j] *= f[j]`.
#[inline(always)]
fn col_scale_impl(z: &mut [f32], f: &[f32]) {
    for row in z.chunks_exact_mut(f.len()) {
        row.iter_mut().zip(f).for_each(|(x, &g)| *x *= g);
    }
}

multiversion!(col_max = col_max_impl(z: &[f32], max: &mut [f32]));
multiversion!(col_exp_sum = col_exp_sum_impl(z: &mut [f32], max: &[f32], sum: &mut [f32]));
multiversion!(col_scale = col_scale_impl(z: &mut [f32], f: &[f32]));

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close};

    /// Float64 reference: loss per row and `dh = scale * (softmax - onehot) W`.
    fn reference(h: &[f32], w: &[f32], t: &[i64], n: usize, d: usize, v: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let mut loss = vec![0.0; n];
        let mut dh = vec![0.0; n * d];
        for i in 0..n {
            if t[i] < 0 {
                continue;
            }
            let z: Vec<f64> = (0..v)
                .map(|o| (0..d).map(|k| f64::from(h[i * d + k]) * f64::from(w[o * d + k])).sum())
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|x| (x - m).exp()).sum();
            loss[i] = s.ln() + m - z[t[i] as usize];
            for o in 0..v {
                let g = scale * ((z[o] - m).exp() / s - if o as i64 == t[i] { 1.0 } else { 0.0 });
                for k in 0..d {
                    dh[i * d + k] += g * f64::from(w[o * d + k]);
                }
            }
        }
        (loss, dh)
    }

    #[test]
    fn matches_float64_at_awkward_sizes_with_ignored_rows() {
        let mut rng = Rng::new(11);
        for (n, d, v) in [
            (1usize, 1usize, 2usize),
            (3, 5, 7),
            (70, 9, 131),
            (131, 17, 33),
            (300, 9, 50),
        ] {
            let h = rng.vec_scaled(n * d, 2.0);
            let w = rng.vec_scaled(v * d, 2.0);
            let t: Vec<i64> = (0..n)
                .map(|i| if i % 5 == 3 { -100 } else { rng.below(v) as i64 })
                .collect();
            let count = t.iter().filter(|&&x| x >= 0).count();
            let scale = 1.0 / count.max(1) as f32;
            let (mut loss, mut dh) = (vec![f32::NAN; n], vec![f32::NAN; n * d]);
            let got = linear_cross_entropy(&h, &w, &t, n, d, v, scale, &mut loss, &mut dh).unwrap();
            let (wl, wd) = reference(&h, &w, &t, n, d, v, f64::from(scale));
            assert_eq!(got.count, count);
            assert_close("loss", &loss, &wl, 1e-5, 1e-5);
            assert_close("dh", &dh, &wd, 1e-6, 1e-5);
            assert!((got.sum - wl.iter().sum::<f64>()).abs() <= 1e-4 * count as f64);
        }
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let (h, w) = (vec![0.5f32; 4], vec![0.25f32; 6]);
        let (mut l, mut dh) = (vec![0.0; 2], vec![0.0; 4]);
        let e = linear_cross_entropy(&h, &w, &[0, 3], 2, 2, 3, 1.0, &mut l, &mut dh);
        assert!(e.is_err());
    }

    #[test]
    fn instruction_sets_agree_bitwise() {
        let mut rng = Rng::new(5);
        let (v, c) = (37usize, 13usize);
        let z0 = rng.vec_scaled(v * c, 20.0);
        let sets = Simd::available();
        let run = |simd| {
            let mut z = z0.clone();
            let mut m = vec![f32::NEG_INFINITY; c];
            col_max(simd, &z, &mut m);
            let mut s = vec![0.0; c];
            col_exp_sum(simd, &mut z, &m, &mut s);
            col_scale(simd, &mut z, &s);
            (z, m, s)
        };
        let base = run(Simd::Base);
        for &simd in &sets[1..] {
            assert!(run(simd) == base, "{simd:?} differs from the baseline");
        }
    }
}
