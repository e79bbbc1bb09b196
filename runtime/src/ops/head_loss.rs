//! The LM head and the causal-LM cross-entropy in one op, in chunks of
//! rows, so that the `(tokens, vocab)` logits and their gradient never exist
//! whole (at SmolLM2's 49,152-token vocabulary and 1,024 tokens a step, each
//! would be 200 MB).
//!
//! Design. Only rows with a target take part (`target >= 0`; the others get
//! a zero gradient and no loss), gathered into chunks of [`CHUNK`] rows; the
//! chunks run side by side on rayon, each with sequential GEMMs. A chunk walks
//! the vocabulary once, in blocks of [`VOCAB_BLOCK`] entries, the way flash
//! attention walks keys (an online softmax whose "values" are the rows of W):
//!
//! 1. `Z_b^T = W_b H_c^T` — the block's logits transposed, `(block, c)`, in
//!    L2 (the weight as left operand: faer packs the narrow side);
//! 2. per column (token) the block's max; where it raises the running max
//!    `m`, the running sum of exponentials and the accumulated rows are
//!    multiplied by `exp(m_old - m_new)`;
//! 3. `E = exp(Z_b - m)` in place and its column sums (vectorised across
//!    tokens, the same `exp` as the attention kernels, `simd::exp_approx`);
//! 4. `acc += E^T W_b`.
//!
//! At the end `loss_i = ln(sum_i) + m_i - z_{t_i, i}` and
//! `dH_i = scale (acc_i / sum_i - W_{t_i})`, which is `(softmax - onehot) W`.
//! W is read from memory once per chunk and each block's logits go from one
//! GEMM to the next through L2; nothing of size `vocab x c` exists (the
//! chunked form before this wrote, reread and rescaled 25 MB of logits per
//! chunk: SmolLM2, Sapphire Rapids, the op alone, 1024 tokens: 560-600 ms
//! then, 445-460 ms now).
//!
//! The head weight is frozen (lamdac never trains it), so there is no dW.
//! Matches the unfused `linear` + `cross_entropy` + `linear_grad_input`
//! within float rounding (tests below, against float64).

use faer::Par;
use rayon::prelude::*;

use super::gemm::{Trans, gemm_with};
use super::simd::{Simd, exp_approx, multiversion};
use super::{OpsError, ScratchPool, at_least, check_len, dims};

/// Rows per chunk. faer's f32 kernels work in strips of 96 rows of its
/// column-major destination (the chunk's columns in step 1): 64 leaves every
/// strip part-empty (SmolLM2, Sapphire Rapids, the op alone: 64 rows
/// 540-590 ms, 128 rows 445-500, 256 rows 427-472, within the noise of 128).
pub const CHUNK: usize = 128;

/// Vocabulary entries per block: a block's transposed logits are
/// `VOCAB_BLOCK x CHUNK` floats (512 KiB), in L2 from the GEMM that writes
/// them to the GEMM that reads them.
pub const VOCAB_BLOCK: usize = 1024;

/// What [`linear_cross_entropy`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadLoss {
    /// Rows with a target.
    pub count: usize,
    /// Sum of their losses (float64).
    pub sum: f64,
}

/// Scratch of one chunk (from [`CHUNKS`]); after the chunk ran, `loss`
/// holds its rows' losses and `dhc` their `dH` rows.
#[derive(Default)]
struct Chunk {
    /// gathered rows of H: (c, d)
    hc: Vec<f32>,
    /// a block's logits, then their exponentials, transposed: (VOCAB_BLOCK, c)
    zt: Vec<f32>,
    /// column max and sum of exponentials: (c)
    max: Vec<f32>,
    sum: Vec<f32>,
    /// per-row target logit, then loss: (c)
    loss: Vec<f32>,
    /// the block's column max, then the rescale factors: (c)
    factor: Vec<f32>,
    /// accumulated `E^T W` rows, then dH rows: (c, d)
    dhc: Vec<f32>,
}

impl Chunk {
    /// Grows every buffer to a chunk of `c` rows.
    fn fit(&mut self, c: usize, d: usize, block: usize) {
        at_least(&mut self.hc, c * d);
        at_least(&mut self.zt, block * c);
        for b in [&mut self.max, &mut self.sum, &mut self.loss, &mut self.factor] {
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
            k.fit(c, d, VOCAB_BLOCK.min(vocab));
            for (dst, &i) in k.hc[..c * d].chunks_exact_mut(d.max(1)).zip(rows) {
                dst.copy_from_slice(&h[i * d..(i + 1) * d]);
            }
            let (max, sum, zt_t) = (&mut k.max[..c], &mut k.sum[..c], &mut k.loss[..c]);
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            let acc = &mut k.dhc[..c * d];
            acc.fill(0.0);
            for v0 in (0..vocab).step_by(VOCAB_BLOCK) {
                let vb = VOCAB_BLOCK.min(vocab - v0);
                let wb = &w[v0 * d..(v0 + vb) * d];
                // 1. Z_b^T (vb, c) = W_b (vb, d) H_c^T
                let zt = &mut k.zt[..vb * c];
                gemm_with(Par::Seq, vb, c, d, 1.0, wb, Trans::N, &k.hc[..c * d], Trans::T, 0.0, zt)?;
                for (j, &i) in rows.iter().enumerate() {
                    let t = targets[i] as usize;
                    if (v0..v0 + vb).contains(&t) {
                        zt_t[j] = zt[(t - v0) * c + j];
                    }
                }
                // 2. the running max; sums and accumulated rows rescaled to it
                let bmax = &mut k.factor[..c];
                bmax.fill(f32::NEG_INFINITY);
                col_max(simd, zt, bmax);
                let mut rescale = false;
                for j in 0..c {
                    if bmax[j] > max[j] {
                        let f = exp_approx(max[j] - bmax[j]);
                        sum[j] *= f;
                        max[j] = bmax[j];
                        bmax[j] = f;
                        rescale = true;
                    } else {
                        bmax[j] = 1.0;
                    }
                }
                if rescale {
                    for (row, &f) in acc.chunks_exact_mut(d.max(1)).zip(bmax.iter()) {
                        if f != 1.0 {
                            row.iter_mut().for_each(|x| *x *= f);
                        }
                    }
                }
                // 3. E = exp(Z - max) in place, with the column sums
                col_exp_sum(simd, zt, max, sum);
                // 4. acc (c, d) += E^T (c, vb) W_b (vb, d)
                gemm_with(
                    Par::Seq,
                    c,
                    d,
                    vb,
                    1.0,
                    &k.zt[..vb * c],
                    Trans::T,
                    wb,
                    Trans::N,
                    1.0,
                    acc,
                )?;
            }
            // 5. loss = ln(sum) + max - z_t (in place of z_t); dH = scale (acc / sum - W_t) (in place of acc)
            for (j, &i) in rows.iter().enumerate() {
                let t = targets[i] as usize;
                zt_t[j] = sum[j].ln() + max[j] - zt_t[j];
                let f = scale / sum[j];
                let wt = &w[t * d..(t + 1) * d];
                for (x, &wv) in acc[j * d..(j + 1) * d].iter_mut().zip(wt) {
                    *x = *x * f - scale * wv;
                }
            }
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

multiversion!(col_max = col_max_impl(z: &[f32], max: &mut [f32]));
multiversion!(col_exp_sum = col_exp_sum_impl(z: &mut [f32], max: &[f32], sum: &mut [f32]));

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
            // several vocabulary blocks, the last one partial: the running
            // max rises across blocks and targets fall in every block
            (37, 6, 2 * VOCAB_BLOCK + 77),
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
            (z, m, s)
        };
        let base = run(Simd::Base);
        for &simd in &sets[1..] {
            assert!(run(simd) == base, "{simd:?} differs from the baseline");
        }
    }
}
