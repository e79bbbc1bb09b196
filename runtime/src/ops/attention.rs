//! Grouped-query causal self-attention (eager, as Hugging Face's `eager_attention_forward`).
//!
//! Design: the inputs keep the layout of the projections, `q: (n, H hd)`,
//! `k, v: (n, KV hd)`, rows `b * seq + t`, so the kernel needs no transposes
//! from the caller. Work is split into independent rayon tasks, one per
//! `(batch, head)` in the forward and one per `(batch, kv head)` group in the
//! backward (the group owns its `dK`, `dV`, so the sum over the query heads
//! that share a kv head needs no synchronisation). A task gathers its head
//! into contiguous `(seq, hd)` buffers (O(seq hd) copies against O(seq^2 hd)
//! work), runs two GEMMs, and the results are scattered back afterwards.
//! When there are fewer tasks than threads, the GEMMs inside may use rayon
//! themselves.
//!
//! Saved for the backward: only the row log-sum-exp of the scaled, masked
//! scores, `lse: (batch, H, seq)`, as in FlashAttention. The backward
//! recomputes `P = exp(S - lse)` from q and k instead of keeping the
//! `(batch, H, seq, seq)` probabilities, and forms `D = rowsum(P * dP)`
//! itself, so the attention output need not be kept either. The backward
//! therefore needs `q`, `k` (both after RoPE), `v` and `lse`.

use faer::Par;
use rayon::prelude::*;

use super::gemm::{Trans, auto_par, gemm_with};
use super::{OpsError, check_len, dims};

/// Shape of one attention call. Query head `h` reads key/value head
/// `h / (heads / kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (every sequence is full; positions 0 .. seq-1).
    pub seq: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads KV (H must be a multiple of KV).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

/// Derived sizes of a validated [`AttnShape`].
struct Sizes {
    /// batch * seq
    n: usize,
    /// H * hd, row width of q and o
    qw: usize,
    /// KV * hd, row width of k and v
    kvw: usize,
    /// H / KV
    group: usize,
    /// 1 / sqrt(hd)
    scale: f32,
}

impl AttnShape {
    fn sizes(&self, op: &'static str) -> Result<Sizes, OpsError> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(OpsError::Config {
                op,
                msg: format!(
                    "heads ({}) must be a positive multiple of kv_heads ({})",
                    self.heads, self.kv_heads
                ),
            });
        }
        if self.head_dim == 0 {
            return Err(OpsError::Config {
                op,
                msg: "head_dim must be positive".into(),
            });
        }
        Ok(Sizes {
            n: dims(op, &[self.batch, self.seq])?,
            qw: dims(op, &[self.heads, self.head_dim])?,
            kvw: dims(op, &[self.kv_heads, self.head_dim])?,
            group: self.heads / self.kv_heads,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        })
    }
}

/// Copies head columns `col .. col + hd` of rows `b*seq .. (b+1)*seq` of a
/// `(n, width)` buffer into a contiguous `(seq, hd)` buffer.
fn gather(src: &[f32], width: usize, b: usize, seq: usize, col: usize, hd: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(seq * hd);
    for t in 0..seq {
        let start = (b * seq + t) * width + col;
        out.extend_from_slice(&src[start..start + hd]);
    }
    out
}

/// Inverse of [`gather`]: writes a `(seq, hd)` buffer into head columns of `dst`.
fn scatter(dst: &mut [f32], width: usize, b: usize, seq: usize, col: usize, hd: usize, src: &[f32]) {
    for (t, row) in src.chunks_exact(hd).enumerate() {
        let start = (b * seq + t) * width + col;
        dst[start..start + hd].copy_from_slice(row);
    }
}

/// Parallelism for the GEMMs inside one task.
fn inner_par(tasks: usize, m: usize, n: usize, k: usize) -> Par {
    if tasks >= rayon::current_num_threads() {
        Par::Seq
    } else {
        auto_par(m, n, k)
    }
}

/// Attention forward: per batch b and query head h (kv head `g = h / (H/KV)`),
/// `S = Q_h K_g^T / sqrt(hd)` `(seq, seq)`, `S_ij = -inf` for `j > i`,
/// `P = softmax_rows(S)`, `O_h = P V_g`.
///
/// q: `(n, H hd)`, k, v: `(n, KV hd)`, o: `(n, H hd)` (HF's attention output
/// before `o_proj`), lse: `(batch, H, seq)` with `lse[b, h, i] = log sum_j exp(S_ij)`,
/// saved for [`attention_backward`].
pub fn attention_forward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "attention_forward";
    let sz = shape.sizes(OP)?;
    let (seq, hd, heads) = (shape.seq, shape.head_dim, shape.heads);
    check_len(OP, "q", q.len(), dims(OP, &[sz.n, sz.qw])?)?;
    check_len(OP, "k", k.len(), dims(OP, &[sz.n, sz.kvw])?)?;
    check_len(OP, "v", v.len(), dims(OP, &[sz.n, sz.kvw])?)?;
    check_len(OP, "o", o.len(), q.len())?;
    check_len(OP, "lse", lse.len(), dims(OP, &[shape.batch, heads, seq])?)?;
    if sz.n == 0 {
        return Ok(());
    }
    let tasks = shape.batch * heads;
    let outs: Vec<Vec<f32>> = lse
        .par_chunks_mut(seq)
        .enumerate()
        .map(|(task, lse)| -> Result<Vec<f32>, OpsError> {
            let (b, h) = (task / heads, task % heads);
            let g = h / sz.group;
            let qh = gather(q, sz.qw, b, seq, h * hd, hd);
            let kg = gather(k, sz.kvw, b, seq, g * hd, hd);
            let vg = gather(v, sz.kvw, b, seq, g * hd, hd);
            // S = scale * Q K^T, (seq, seq)
            let mut p = vec![0.0f32; seq * seq];
            let par = inner_par(tasks, seq, seq, hd);
            gemm_with(par, seq, seq, hd, sz.scale, &qh, Trans::N, &kg, Trans::T, 0.0, &mut p)?;
            // causal softmax per row; masked entries become exact zeros
            for (i, row) in p.chunks_exact_mut(seq).enumerate() {
                let (live, masked) = row.split_at_mut(i + 1);
                let max = live.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0.0f32;
                for s in live.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                live.iter_mut().for_each(|s| *s /= sum);
                masked.fill(0.0);
                lse[i] = max + sum.ln();
            }
            // O = P V, (seq, hd)
            let mut oh = vec![0.0f32; seq * hd];
            let par = inner_par(tasks, seq, hd, seq);
            gemm_with(par, seq, hd, seq, 1.0, &p, Trans::N, &vg, Trans::N, 0.0, &mut oh)?;
            Ok(oh)
        })
        .collect::<Result<_, _>>()?;
    for (task, oh) in outs.iter().enumerate() {
        let (b, h) = (task / heads, task % heads);
        scatter(o, sz.qw, b, seq, h * hd, hd, oh);
    }
    Ok(())
}

/// Attention backward, given `do = dL/do`; overwrites dq, dk, dv.
///
/// Per (b, h) with kv head g, recomputing `P_ij = exp(S_ij - lse_i)` (0 for `j > i`):
/// - `dV_g += P^T dO_h` (summed over the heads of the group)
/// - `dP = dO_h V_g^T`
/// - softmax: `dS_ij = P_ij (dP_ij - D_i)`, `D_i = sum_j P_ij dP_ij` (= `dO_i . O_i`)
/// - `S = scale Q K^T`: `dQ_h = scale dS K_g`, `dK_g += scale dS^T Q_h`
///
/// q, dq: `(n, H hd)`; k, v, dk, dv: `(n, KV hd)`; lse: `(batch, H, seq)`
/// from [`attention_forward`]; d_o: `(n, H hd)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "attention_backward";
    let sz = shape.sizes(OP)?;
    let (seq, hd, heads, kvh) = (shape.seq, shape.head_dim, shape.heads, shape.kv_heads);
    let qlen = dims(OP, &[sz.n, sz.qw])?;
    let kvlen = dims(OP, &[sz.n, sz.kvw])?;
    check_len(OP, "q", q.len(), qlen)?;
    check_len(OP, "k", k.len(), kvlen)?;
    check_len(OP, "v", v.len(), kvlen)?;
    check_len(OP, "lse", lse.len(), dims(OP, &[shape.batch, heads, seq])?)?;
    check_len(OP, "d_o", d_o.len(), qlen)?;
    check_len(OP, "dq", dq.len(), qlen)?;
    check_len(OP, "dk", dk.len(), kvlen)?;
    check_len(OP, "dv", dv.len(), kvlen)?;
    if sz.n == 0 {
        return Ok(());
    }
    let tasks = shape.batch * kvh;
    type GroupGrads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let outs: Vec<GroupGrads> = (0..tasks)
        .into_par_iter()
        .map(|task| -> Result<GroupGrads, OpsError> {
            let (b, g) = (task / kvh, task % kvh);
            let kg = gather(k, sz.kvw, b, seq, g * hd, hd);
            let vg = gather(v, sz.kvw, b, seq, g * hd, hd);
            let mut dkg = vec![0.0f32; seq * hd];
            let mut dvg = vec![0.0f32; seq * hd];
            let mut dqs = Vec::with_capacity(sz.group);
            let mut p = vec![0.0f32; seq * seq];
            let mut dp = vec![0.0f32; seq * seq];
            let par_ss = inner_par(tasks, seq, seq, hd);
            let par_sh = inner_par(tasks, seq, hd, seq);
            for h in g * sz.group..(g + 1) * sz.group {
                let qh = gather(q, sz.qw, b, seq, h * hd, hd);
                let doh = gather(d_o, sz.qw, b, seq, h * hd, hd);
                let lse_h = &lse[(b * heads + h) * seq..(b * heads + h + 1) * seq];
                // P = exp(scale Q K^T - lse), causal
                gemm_with(
                    par_ss,
                    seq,
                    seq,
                    hd,
                    sz.scale,
                    &qh,
                    Trans::N,
                    &kg,
                    Trans::T,
                    0.0,
                    &mut p,
                )?;
                for (i, row) in p.chunks_exact_mut(seq).enumerate() {
                    let (live, masked) = row.split_at_mut(i + 1);
                    live.iter_mut().for_each(|s| *s = (*s - lse_h[i]).exp());
                    masked.fill(0.0);
                }
                // dV_g += P^T dO
                gemm_with(par_sh, seq, hd, seq, 1.0, &p, Trans::T, &doh, Trans::N, 1.0, &mut dvg)?;
                // dP = dO V^T
                gemm_with(par_ss, seq, seq, hd, 1.0, &doh, Trans::N, &vg, Trans::T, 0.0, &mut dp)?;
                // dS = P (dP - D), stored in dp
                for (prow, dprow) in p.chunks_exact(seq).zip(dp.chunks_exact_mut(seq)) {
                    let d: f32 = prow.iter().zip(dprow.iter()).map(|(p, dp)| p * dp).sum();
                    dprow.iter_mut().zip(prow).for_each(|(dp, &p)| *dp = p * (*dp - d));
                }
                // dQ_h = scale dS K, dK_g += scale dS^T Q_h
                let mut dqh = vec![0.0f32; seq * hd];
                gemm_with(
                    par_sh,
                    seq,
                    hd,
                    seq,
                    sz.scale,
                    &dp,
                    Trans::N,
                    &kg,
                    Trans::N,
                    0.0,
                    &mut dqh,
                )?;
                gemm_with(
                    par_sh,
                    seq,
                    hd,
                    seq,
                    sz.scale,
                    &dp,
                    Trans::T,
                    &qh,
                    Trans::N,
                    1.0,
                    &mut dkg,
                )?;
                dqs.push(dqh);
            }
            Ok((dqs, dkg, dvg))
        })
        .collect::<Result<_, _>>()?;
    for (task, (dqs, dkg, dvg)) in outs.iter().enumerate() {
        let (b, g) = (task / kvh, task % kvh);
        for (i, dqh) in dqs.iter().enumerate() {
            scatter(dq, sz.qw, b, seq, (g * sz.group + i) * hd, hd, dqh);
        }
        scatter(dk, sz.kvw, b, seq, g * hd, hd, dkg);
        scatter(dv, sz.kvw, b, seq, g * hd, hd, dvg);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    /// Independent f64 reference: straightforward loops over b, h, i, j.
    fn attn_ref(s: &AttnShape, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let (hd, seq) = (s.head_dim, s.seq);
        let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
        let mut o = vec![0.0; s.batch * seq * qw];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                for i in 0..seq {
                    let qi = &q[(b * seq + i) * qw + h * hd..][..hd];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[(b * seq + j) * kvw + g * hd..][..hd];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for (j, sc) in scores.iter().enumerate() {
                        let p = (sc - m).exp() / z;
                        for c in 0..hd {
                            o[(b * seq + i) * qw + h * hd + c] += p * v[(b * seq + j) * kvw + g * hd + c];
                        }
                    }
                }
            }
        }
        o
    }

    fn check(s: AttnShape, seed: u64) {
        let mut rng = Rng::new(seed);
        let n = s.batch * s.seq;
        let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let q = rng.vec_scaled(n * qw, 2.0);
        let k = rng.vec_scaled(n * kvw, 2.0);
        let v = rng.vec(n * kvw);
        let g = rng.vec(n * qw);
        let (q64, k64, v64, g64) = (to64(&q), to64(&k), to64(&v), to64(&g));
        let mut o = vec![f32::NAN; n * qw];
        let mut lse = vec![0.0; s.batch * s.heads * s.seq];
        attention_forward(&s, &q, &k, &v, &mut o, &mut lse).unwrap();
        assert_close("o", &o, &attn_ref(&s, &q64, &k64, &v64), 1e-6, 1e-5);

        let mut dq = vec![f32::NAN; n * qw];
        let mut dk = vec![f32::NAN; n * kvw];
        let mut dv = vec![f32::NAN; n * kvw];
        attention_backward(&s, &q, &k, &v, &lse, &g, &mut dq, &mut dk, &mut dv).unwrap();
        let fd_q = fd_grad(&q64, 1e-6, |x| dot(&g64, &attn_ref(&s, x, &k64, &v64)));
        let fd_k = fd_grad(&k64, 1e-6, |x| dot(&g64, &attn_ref(&s, &q64, x, &v64)));
        let fd_v = fd_grad(&v64, 1e-6, |x| dot(&g64, &attn_ref(&s, &q64, &k64, x)));
        assert_close("dq", &dq, &fd_q, 1e-5, 1e-4);
        assert_close("dk", &dk, &fd_k, 1e-5, 1e-4);
        assert_close("dv", &dv, &fd_v, 1e-5, 1e-4);
    }

    #[test]
    fn gqa_forward_and_fd_backward_awkward_shapes() {
        // heads 3 sharing one kv head, head_dim 6, seq 5
        check(
            AttnShape {
                batch: 2,
                seq: 5,
                heads: 3,
                kv_heads: 1,
                head_dim: 6,
            },
            51,
        );
        // seq 1: softmax over a single key
        check(
            AttnShape {
                batch: 1,
                seq: 1,
                heads: 2,
                kv_heads: 2,
                head_dim: 3,
            },
            52,
        );
        // groups of 2, odd head_dim, seq 17
        check(
            AttnShape {
                batch: 1,
                seq: 17,
                heads: 4,
                kv_heads: 2,
                head_dim: 5,
            },
            53,
        );
        // plain multi-head
        check(
            AttnShape {
                batch: 3,
                seq: 4,
                heads: 2,
                kv_heads: 2,
                head_dim: 1,
            },
            54,
        );
    }

    #[test]
    fn backward_is_thread_count_independent() {
        let s = AttnShape {
            batch: 1,
            seq: 9,
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
        };
        let mut rng = Rng::new(55);
        let n = s.batch * s.seq;
        let q = rng.vec(n * 16);
        let k = rng.vec(n * 8);
        let v = rng.vec(n * 8);
        let g = rng.vec(n * 16);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut o = vec![0.0; n * 16];
                let mut lse = vec![0.0; 4 * 9];
                attention_forward(&s, &q, &k, &v, &mut o, &mut lse).unwrap();
                let (mut dq, mut dk, mut dv) = (vec![0.0; n * 16], vec![0.0; n * 8], vec![0.0; n * 8]);
                attention_backward(&s, &q, &k, &v, &lse, &g, &mut dq, &mut dk, &mut dv).unwrap();
                (o, dq, dk, dv)
            })
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn rejects_bad_head_counts() {
        let s = AttnShape {
            batch: 1,
            seq: 2,
            heads: 3,
            kv_heads: 2,
            head_dim: 2,
        };
        let mut o = vec![0.0; 12];
        let mut lse = vec![0.0; 6];
        assert!(attention_forward(&s, &[0.0; 12], &[0.0; 8], &[0.0; 8], &mut o, &mut lse).is_err());
    }
}
