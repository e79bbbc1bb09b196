//! Grouped-query self-attention, causal (decoders) or bidirectional
//! (encoders), with optional per-sequence key lengths (eager, as Hugging
//! Face's `eager_attention_forward` with its additive mask).
//!
//! Masking: key `j` of sequence `b` is visible to query `i` iff
//! `(!causal || j <= i) && j < lens[b]` (no `lens`: every sequence is full,
//! `lens[b] = seq`). Query rows at or past `lens[b]` are computed like the
//! others (they attend to the visible keys), as BERT's padded rows are; masked
//! probabilities are exact zeros, so masked keys get exact-zero `dK`, `dV`.
//!
//! Design: the inputs keep the layout of the projections, `q: (n, H hd)`,
//! `k, v: (n, KV hd)`, rows `b * seq + t`, so the kernel needs no transposes
//! from the caller. Work is split into independent rayon tasks, one per
//! `(batch, kv head)` group in both passes: a task gathers `K_g`, `V_g` once
//! for all the query heads that share them, owns the group's columns of `o`
//! (or `dq`) and its `dK`, `dV`, so the sum over the heads of a group needs
//! no synchronisation and every output is written in place. Scratch buffers
//! come from a process-wide pool (taken by a task, given back when it ends,
//! grown only when shapes grow), never `(seq, seq)`: at most `(group * BLOCK, seq)`.
//!
//! Causal blocking: query rows are processed in blocks of [`BLOCK`]; the
//! block `r0 .. r1` only multiplies against keys `0 .. min(r1, len)`, so the
//! masked upper triangle is skipped except inside the block on the diagonal
//! (work `~ seq^2 / 2` per head rather than `seq^2`). Bidirectional blocks
//! multiply against keys `0 .. len` (the padding keys are skipped too). The rows of a block for all
//! heads of the group are stacked into one `(group * rows, hd)` matrix, so
//! each product is one GEMM of the shared `K_g` / `V_g`. Every row still sees
//! all its live keys at once, so the softmax is the plain one of the eager
//! reference (f32, maximum subtracted, divided by the sum), not an online
//! rescaling. The backward walks the same blocks and adds the blocks' `dK`,
//! `dV` into the task's accumulators in block order.
//!
//! The element-wise passes (softmax, `exp(S - lse)`, `dS`) dominated once
//! the masked work was gone, so they use a polynomial `exp` that vectorises
//! ([`exp_approx`], within 1 ulp) and row reductions in 8 fixed lanes, and
//! are compiled for AVX-512 and AVX2 besides the baseline, picked at run time;
//! all copies give identical results. Nothing depends on the thread count:
//! a task's arithmetic is fixed by its shape. When there are fewer tasks than
//! threads, the GEMMs inside may use rayon themselves.
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
use super::simd::{Simd, exp_approx, multiversion};
use super::{OpsError, ScratchPool, at_least, check_len, dims};

/// Shape of one attention call. Query head `h` reads key/value head
/// `h / (heads / kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (positions 0 .. seq-1; a sequence's keys past its
    /// length, when the call passes lengths, are padding).
    pub seq: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads KV (H must be a multiple of KV).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Query `i` sees only keys `j <= i` (decoders); every key when false (encoders).
    pub causal: bool,
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

    /// Checks per-sequence key lengths `lens: (batch)` for an attention call
    /// of this shape: one per sequence, each in `1 ..= seq`. `None` (every
    /// sequence full) is always valid.
    pub fn check_lens(&self, op: &'static str, lens: Option<&[i64]>) -> Result<(), OpsError> {
        let Some(lens) = lens else { return Ok(()) };
        check_len(op, "lens", lens.len(), self.batch)?;
        let bad = lens
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::try_from(l).ok().filter(|l| (1..=self.seq).contains(l)).is_none());
        match bad {
            Some((b, &l)) => Err(OpsError::Config {
                op,
                msg: format!(
                    "key length {l} of sequence {b} is outside 1..={} (a sequence needs at least one key, at most seq)",
                    self.seq
                ),
            }),
            None => Ok(()),
        }
    }

    /// Key length of sequence `b` (`lens` already checked by [`Self::check_lens`]).
    fn len_of(&self, lens: Option<&[i64]>, b: usize) -> usize {
        lens.map_or(self.seq, |l| l[b] as usize)
    }
}

/// Query rows per block. The block `r0 .. r1` meets keys `0 .. r1` only;
/// per head a pass costs `~ seq^2 / 2 + seq * BLOCK / 2` multiply-adds per
/// head dimension instead of `seq^2`. Smaller blocks skip more of the masked
/// triangle but make smaller GEMMs; with the heads of a group stacked, 32
/// rows measured best at seq 192 and 512 (16 and 64 within a few percent).
const BLOCK: usize = 32;

/// The `(batch * seq, width)` buffer split into `batch * parts` column parts
/// of width `pw = width / parts`: part `b * parts + p` is, in row order, the
/// `seq` row slices `buf[b * seq + t, p * pw .. (p + 1) * pw]`. Lets the
/// `(batch, kv head)` tasks write their own columns of an output in place,
/// with no list of row slices to allocate per call.
struct Parts<'a> {
    ptr: *mut f32,
    seq: usize,
    width: usize,
    pw: usize,
    parts: usize,
    count: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Parts` hands out disjoint slices of the buffer it borrows
// mutably (see `row`); sharing it between threads is sharing that borrow.
unsafe impl Send for Parts<'_> {}
unsafe impl Sync for Parts<'_> {}

impl<'a> Parts<'a> {
    fn new(buf: &'a mut [f32], seq: usize, width: usize, parts: usize) -> Self {
        let rows = buf.len() / width.max(1);
        Parts {
            ptr: buf.as_mut_ptr(),
            seq,
            width,
            pw: width / parts.max(1),
            parts,
            count: rows / seq.max(1) * parts,
            _buf: std::marker::PhantomData,
        }
    }

    /// Row `t` of part `part`.
    ///
    /// # Safety
    /// At any time at most one caller may use a given `part` (its rows are
    /// disjoint from every other part's), and no two slices of the same
    /// (part, row) may be live at once.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, part: usize, t: usize) -> &mut [f32] {
        assert!(
            part < self.count && t < self.seq,
            "part {part} row {t} of {} x {}",
            self.count,
            self.seq
        );
        let (b, p) = (part / self.parts, part % self.parts);
        let start = (b * self.seq + t) * self.width + p * self.pw;
        // SAFETY: in bounds (rows * width values, checked above); disjoint as the caller promised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.pw) }
    }
}

/// Copies head columns `col .. col + hd` of rows `row0 .. row0 + rows` of a
/// `(n, width)` buffer into `out[.. rows * hd]`, a contiguous `(rows, hd)` matrix.
fn gather(out: &mut [f32], src: &[f32], width: usize, row0: usize, rows: usize, col: usize, hd: usize) {
    for (t, dst) in out[..rows * hd].chunks_exact_mut(hd).enumerate() {
        let start = (row0 + t) * width + col;
        dst.copy_from_slice(&src[start..start + hd]);
    }
}

/// Gathers rows `row0 .. row0 + rows` of the `group` heads whose columns
/// start at `col` in the `(n, width)` buffer `src`, stacked head after head
/// into `out: (group * rows, hd)`: row `j * rows + i` is row `row0 + i` of head `j`.
#[allow(clippy::too_many_arguments)]
fn gather_block(
    out: &mut [f32],
    src: &[f32],
    width: usize,
    row0: usize,
    rows: usize,
    col: usize,
    group: usize,
    hd: usize,
) {
    for j in 0..group {
        gather(&mut out[j * rows * hd..], src, width, row0, rows, col + j * hd, hd);
    }
}

/// Query rows `r0 .. r1` of a block, for every head of a kv group, stacked:
/// row `j * (r1 - r0) + i` of a block matrix is head `j` of the group at
/// position `r0 + i`, and its `cols` columns are the keys `0 .. cols`.
#[derive(Clone, Copy, Debug)]
struct Block {
    r0: usize,
    r1: usize,
    /// key columns of the block's matrices: `min(r1, len)` when causal, else `len`
    cols: usize,
    /// columns past the diagonal are masked
    causal: bool,
    /// tokens per sequence, the row length of `lse_g: (group, seq)`
    seq: usize,
}

impl Block {
    /// The block of query rows `r0 .. r1` of a sequence whose keys `0 .. len` are visible.
    fn new(r0: usize, r1: usize, len: usize, causal: bool, seq: usize) -> Block {
        let cols = if causal { r1.min(len) } else { len };
        Block {
            r0,
            r1,
            cols,
            causal,
            seq,
        }
    }

    /// `(j, t)`: head in the group and position of stacked row `row`.
    #[inline(always)]
    fn pos(self, row: usize) -> (usize, usize) {
        let rows = self.r1 - self.r0;
        (row / rows, self.r0 + row % rows)
    }

    /// Visible keys `0 .. live` of the row at position `t` (at least 1).
    #[inline(always)]
    fn live(self, t: usize) -> usize {
        if self.causal { (t + 1).min(self.cols) } else { self.cols }
    }
}

/// Lanes of the partial sums in [`row_max`], [`row_sum`] and [`row_dot`]:
/// independent accumulators that the compiler keeps in a vector register,
/// instead of one serial chain of dependent adds. A fixed number, so the
/// order of the additions does not depend on the instruction set.
const LANES: usize = 8;

/// `max_j x_j` (`-inf` for an empty row; NaNs are skipped, as by `f32::max`).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// `sum_j x_j`, in [`LANES`] interleaved partial sums.
#[inline(always)]
fn row_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum_j x_j y_j` (equal lengths), in [`LANES`] interleaved partial sums.
#[inline(always)]
fn row_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (x8, y8) in (&mut xc).zip(&mut yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(x8).zip(y8) {
            *a += u * v;
        }
    }
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(u, v)| u * v).sum();
    acc.iter().sum::<f32>() + tail
}

/// `x_j = exp(x_j - sub)` for every `j` (vectorised, see [`exp_approx`]).
#[inline(always)]
fn exp_sub(x: &mut [f32], sub: f32) {
    x.iter_mut().for_each(|v| *v = exp_approx(*v - sub));
}

/// Forward softmax of a block: `s: (m, cols)` scaled scores in, probabilities
/// out, the masked columns `live(t) .. cols` of the row at position `t` set to 0;
/// writes `lse_g[j * seq + t] = max + ln(sum)`. `lse_g: (group, seq)`.
#[inline(always)]
fn softmax_rows_impl(s: &mut [f32], blk: Block, lse_g: &mut [f32]) {
    for (row_idx, row) in s.chunks_exact_mut(blk.cols).enumerate() {
        let (j, t) = blk.pos(row_idx);
        let (live, masked) = row.split_at_mut(blk.live(t));
        let max = row_max(live);
        exp_sub(live, max);
        let sum = row_sum(live);
        live.iter_mut().for_each(|s| *s /= sum);
        masked.fill(0.0);
        lse_g[j * blk.seq + t] = max + sum.ln();
    }
}

/// Backward probabilities of a block: `p: (m, cols)` scaled scores in,
/// `P = exp(s - lse)` out, masked columns 0. `lse_g: (group, seq)`.
#[inline(always)]
fn probs_rows_impl(p: &mut [f32], blk: Block, lse_g: &[f32]) {
    for (row_idx, row) in p.chunks_exact_mut(blk.cols).enumerate() {
        let (j, t) = blk.pos(row_idx);
        let (live, masked) = row.split_at_mut(blk.live(t));
        exp_sub(live, lse_g[j * blk.seq + t]);
        masked.fill(0.0);
    }
}

/// Softmax backward of a block: `dp: (m, cols)` in, `dS = P (dP - D)` out with
/// `D = rowsum(P dP)` over the live columns, masked columns 0. `p: (m, cols)`.
#[inline(always)]
fn dsoftmax_rows_impl(p: &[f32], dp: &mut [f32], blk: Block) {
    for (row_idx, (prow, dprow)) in p.chunks_exact(blk.cols).zip(dp.chunks_exact_mut(blk.cols)).enumerate() {
        let (_, t) = blk.pos(row_idx);
        let live = blk.live(t);
        let (dlive, dmasked) = dprow.split_at_mut(live);
        let plive = &prow[..live];
        let d = row_dot(plive, dlive);
        dlive.iter_mut().zip(plive).for_each(|(dp, &p)| *dp = p * (*dp - d));
        dmasked.fill(0.0);
    }
}

multiversion!(softmax_rows = softmax_rows_impl(s: &mut [f32], blk: Block, lse_g: &mut [f32]));
multiversion!(probs_rows = probs_rows_impl(p: &mut [f32], blk: Block, lse_g: &[f32]));
multiversion!(dsoftmax_rows = dsoftmax_rows_impl(p: &[f32], dp: &mut [f32], blk: Block));

/// Parallelism for the GEMMs inside one task.
fn inner_par(tasks: usize, m: usize, n: usize, k: usize) -> Par {
    if tasks >= rayon::current_num_threads() {
        Par::Seq
    } else {
        auto_par(m, n, k)
    }
}

static FWD_SCRATCH: ScratchPool<FwdScratch> = ScratchPool::new();
static BWD_SCRATCH: ScratchPool<BwdScratch> = ScratchPool::new();

/// Scratch of a forward task (from [`FWD_SCRATCH`]).
#[derive(Default)]
struct FwdScratch {
    /// `K_g`: (seq, hd)
    k: Vec<f32>,
    /// `V_g`: (seq, hd)
    v: Vec<f32>,
    /// stacked query rows of a block: (group * BLOCK, hd)
    q: Vec<f32>,
    /// scores, then probabilities, of a block: (group * BLOCK, seq), used as (m, cols)
    s: Vec<f32>,
    /// stacked outputs of a block: (group * BLOCK, hd)
    o: Vec<f32>,
}

impl FwdScratch {
    /// Grows every buffer to the task's shapes.
    fn fit(&mut self, seq: usize, hd: usize, group: usize) {
        let rows = group * BLOCK.min(seq);
        at_least(&mut self.k, seq * hd);
        at_least(&mut self.v, seq * hd);
        at_least(&mut self.q, rows * hd);
        at_least(&mut self.s, rows * seq);
        at_least(&mut self.o, rows * hd);
    }
}

/// Attention forward: per batch b and query head h (kv head `g = h / (H/KV)`),
/// `S = Q_h K_g^T / sqrt(hd)` `(seq, seq)`, `S_ij = -inf` where key j is
/// masked (`j >= lens[b]`, or `j > i` when causal), `P = softmax_rows(S)`,
/// `O_h = P V_g`.
///
/// q: `(n, H hd)`, k, v: `(n, KV hd)`, lens: `(batch)` key lengths, each in
/// `1 ..= seq` (`None`: all `seq`), o: `(n, H hd)` (HF's attention output
/// before `o_proj`), lse: `(batch, H, seq)` with
/// `lse[b, h, i] = log sum_{visible j} exp(S_ij)`, saved for [`attention_backward`].
pub fn attention_forward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: Option<&[i64]>,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "attention_forward";
    let sz = shape.sizes(OP)?;
    let (seq, hd, heads, kvh, group) = (shape.seq, shape.head_dim, shape.heads, shape.kv_heads, sz.group);
    check_len(OP, "q", q.len(), dims(OP, &[sz.n, sz.qw])?)?;
    check_len(OP, "k", k.len(), dims(OP, &[sz.n, sz.kvw])?)?;
    check_len(OP, "v", v.len(), dims(OP, &[sz.n, sz.kvw])?)?;
    check_len(OP, "o", o.len(), q.len())?;
    check_len(OP, "lse", lse.len(), dims(OP, &[shape.batch, heads, seq])?)?;
    shape.check_lens(OP, lens)?;
    if sz.n == 0 {
        return Ok(());
    }
    let tasks = shape.batch * kvh;
    let simd = Simd::detect();
    let rows = group * BLOCK.min(seq);
    let par_s = inner_par(tasks, rows, seq, hd);
    let par_o = inner_par(tasks, rows, hd, seq);
    // task b * KV + g owns the columns of heads g*group .. (g+1)*group of o,
    // and lse[b, g*group .. (g+1)*group, :], which is contiguous
    let o_parts = Parts::new(o, seq, sz.qw, kvh);
    lse.par_chunks_mut(group * seq)
        .take(tasks)
        .enumerate()
        .try_for_each(|(task, lse_g)| -> Result<(), OpsError> {
            let mut held = FWD_SCRATCH.take();
            held.fit(seq, hd, group);
            let scr = &mut held;
            let res = (|| -> Result<(), OpsError> {
                let (b, g) = (task / kvh, task % kvh);
                let len = shape.len_of(lens, b);
                gather(&mut scr.k, k, sz.kvw, b * seq, len, g * hd, hd);
                gather(&mut scr.v, v, sz.kvw, b * seq, len, g * hd, hd);
                for r0 in (0..seq).step_by(BLOCK) {
                    let r1 = (r0 + BLOCK).min(seq);
                    let (bq, m) = (r1 - r0, group * (r1 - r0));
                    let blk = Block::new(r0, r1, len, shape.causal, seq);
                    let c = blk.cols;
                    gather_block(&mut scr.q, q, sz.qw, b * seq + r0, bq, g * group * hd, group, hd);
                    let (qs, kp, vp) = (&scr.q[..m * hd], &scr.k[..c * hd], &scr.v[..c * hd]);
                    // S = scale Q K[..c]^T, (m, c)
                    let s = &mut scr.s[..m * c];
                    gemm_with(par_s, m, c, hd, sz.scale, qs, Trans::N, kp, Trans::T, 0.0, s)?;
                    // masked softmax per row; masked entries become exact zeros
                    softmax_rows(simd, s, blk, lse_g);
                    // O = P V[..c], (m, hd)
                    let os = &mut scr.o[..m * hd];
                    gemm_with(par_o, m, hd, c, 1.0, s, Trans::N, vp, Trans::N, 0.0, os)?;
                    for (row_idx, src) in os.chunks_exact(hd).enumerate() {
                        let (j, i) = (row_idx / bq, row_idx % bq);
                        // SAFETY: this task alone writes part `task`.
                        let row = unsafe { o_parts.row(task, r0 + i) };
                        row[j * hd..(j + 1) * hd].copy_from_slice(src);
                    }
                }
                Ok(())
            })();
            FWD_SCRATCH.give(held);
            res
        })
}

/// Scratch of a backward task (from [`BWD_SCRATCH`]).
#[derive(Default)]
struct BwdScratch {
    /// `K_g`: (seq, hd)
    k: Vec<f32>,
    /// `V_g`: (seq, hd)
    v: Vec<f32>,
    /// `dK_g` accumulator: (seq, hd)
    dk: Vec<f32>,
    /// `dV_g` accumulator: (seq, hd)
    dv: Vec<f32>,
    /// stacked Q rows of a block: (group * BLOCK, hd)
    q: Vec<f32>,
    /// stacked dO rows of a block: (group * BLOCK, hd)
    d_o: Vec<f32>,
    /// stacked dQ rows of a block: (group * BLOCK, hd)
    dq: Vec<f32>,
    /// P of a block: (group * BLOCK, seq), used as (m, cols)
    p: Vec<f32>,
    /// dP, then dS, of a block: (group * BLOCK, seq), used as (m, cols)
    dp: Vec<f32>,
}

impl BwdScratch {
    /// Grows every buffer to the task's shapes.
    fn fit(&mut self, seq: usize, hd: usize, group: usize) {
        let rows = group * BLOCK.min(seq);
        for b in [&mut self.k, &mut self.v, &mut self.dk, &mut self.dv] {
            at_least(b, seq * hd);
        }
        for b in [&mut self.q, &mut self.d_o, &mut self.dq] {
            at_least(b, rows * hd);
        }
        at_least(&mut self.p, rows * seq);
        at_least(&mut self.dp, rows * seq);
    }
}

/// Attention backward, given `do = dL/do`; overwrites dq, dk, dv.
///
/// Per (b, h) with kv head g, recomputing `P_ij = exp(S_ij - lse_i)` (0 where
/// key j is masked, as in [`attention_forward`]; masked keys get exact-zero `dK`, `dV`):
/// - `dV_g += P^T dO_h` (summed over the heads of the group)
/// - `dP = dO_h V_g^T`
/// - softmax: `dS_ij = P_ij (dP_ij - D_i)`, `D_i = sum_j P_ij dP_ij` (= `dO_i . O_i`)
/// - `S = scale Q K^T`: `dQ_h = scale dS K_g`, `dK_g += scale dS^T Q_h`
///
/// q, dq: `(n, H hd)`; k, v, dk, dv: `(n, KV hd)`; lens: `(batch)` as given
/// to [`attention_forward`]; lse: `(batch, H, seq)` from it; d_o: `(n, H hd)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: Option<&[i64]>,
    lse: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "attention_backward";
    let sz = shape.sizes(OP)?;
    let (seq, hd, heads, kvh, group) = (shape.seq, shape.head_dim, shape.heads, shape.kv_heads, sz.group);
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
    shape.check_lens(OP, lens)?;
    if sz.n == 0 {
        return Ok(());
    }
    let tasks = shape.batch * kvh;
    let simd = Simd::detect();
    let rows = group * BLOCK.min(seq);
    let par_s = inner_par(tasks, rows, seq, hd);
    let par_q = inner_par(tasks, rows, hd, seq);
    let par_k = inner_par(tasks, seq, hd, rows);
    // task b * KV + g owns dK_g, dV_g, the dq columns of heads
    // g*group .. (g+1)*group, and reads lse[b, g*group .. (g+1)*group, :]
    let (dq_parts, dk_parts, dv_parts) = (
        Parts::new(dq, seq, sz.qw, kvh),
        Parts::new(dk, seq, sz.kvw, kvh),
        Parts::new(dv, seq, sz.kvw, kvh),
    );
    lse.par_chunks(group * seq)
        .take(tasks)
        .enumerate()
        .try_for_each(|(task, lse_g)| -> Result<(), OpsError> {
            let mut held = BWD_SCRATCH.take();
            held.fit(seq, hd, group);
            let scr = &mut held;
            let res = (|| -> Result<(), OpsError> {
                let (b, g) = (task / kvh, task % kvh);
                let len = shape.len_of(lens, b);
                gather(&mut scr.k, k, sz.kvw, b * seq, len, g * hd, hd);
                gather(&mut scr.v, v, sz.kvw, b * seq, len, g * hd, hd);
                // keys len .. seq are never visible: their rows stay exact zeros
                scr.dk.fill(0.0);
                scr.dv.fill(0.0);
                let col = g * group * hd;
                for r0 in (0..seq).step_by(BLOCK) {
                    let r1 = (r0 + BLOCK).min(seq);
                    let (bq, m) = (r1 - r0, group * (r1 - r0));
                    gather_block(&mut scr.q, q, sz.qw, b * seq + r0, bq, col, group, hd);
                    gather_block(&mut scr.d_o, d_o, sz.qw, b * seq + r0, bq, col, group, hd);
                    let blk = Block::new(r0, r1, len, shape.causal, seq);
                    let c = blk.cols;
                    let (qs, dos) = (&scr.q[..m * hd], &scr.d_o[..m * hd]);
                    let (kp, vp) = (&scr.k[..c * hd], &scr.v[..c * hd]);
                    let (dkp, dvp) = (&mut scr.dk[..c * hd], &mut scr.dv[..c * hd]);
                    let (p, dp) = (&mut scr.p[..m * c], &mut scr.dp[..m * c]);
                    // P = exp(scale Q K[..c]^T - lse), masked, (m, c)
                    gemm_with(par_s, m, c, hd, sz.scale, qs, Trans::N, kp, Trans::T, 0.0, p)?;
                    probs_rows(simd, p, blk, lse_g);
                    // dV[..c] += P^T dO (the GEMM sums over the group's heads)
                    gemm_with(par_k, c, hd, m, 1.0, p, Trans::T, dos, Trans::N, 1.0, dvp)?;
                    // dP = dO V[..c]^T, (m, c)
                    gemm_with(par_s, m, c, hd, 1.0, dos, Trans::N, vp, Trans::T, 0.0, dp)?;
                    // dS = P (dP - D), stored in dp; masked entries exact zeros
                    dsoftmax_rows(simd, p, dp, blk);
                    // dQ = scale dS K[..c], dK[..c] += scale dS^T Q
                    let dqs = &mut scr.dq[..m * hd];
                    gemm_with(par_q, m, hd, c, sz.scale, dp, Trans::N, kp, Trans::N, 0.0, dqs)?;
                    gemm_with(par_k, c, hd, m, sz.scale, dp, Trans::T, qs, Trans::N, 1.0, dkp)?;
                    for (row_idx, src) in dqs.chunks_exact(hd).enumerate() {
                        let (j, i) = (row_idx / bq, row_idx % bq);
                        // SAFETY: this task alone writes part `task`.
                        let row = unsafe { dq_parts.row(task, r0 + i) };
                        row[j * hd..(j + 1) * hd].copy_from_slice(src);
                    }
                }
                let acc = scr.dk.chunks_exact(hd).zip(scr.dv.chunks_exact(hd));
                for (t, (dks, dvs)) in acc.take(seq).enumerate() {
                    // SAFETY: this task alone writes part `task` of dk and dv.
                    unsafe { dk_parts.row(task, t) }.copy_from_slice(dks);
                    unsafe { dv_parts.row(task, t) }.copy_from_slice(dvs);
                }
                Ok(())
            })();
            BWD_SCRATCH.give(held);
            res
        })
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
        attention_forward(&s, &q, &k, &v, None, &mut o, &mut lse).unwrap();
        assert_close("o", &o, &attn_ref(&s, &q64, &k64, &v64), 1e-6, 1e-5);

        let mut dq = vec![f32::NAN; n * qw];
        let mut dk = vec![f32::NAN; n * kvw];
        let mut dv = vec![f32::NAN; n * kvw];
        attention_backward(&s, &q, &k, &v, None, &lse, &g, &mut dq, &mut dk, &mut dv).unwrap();
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
                causal: true,
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
                causal: true,
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
                causal: true,
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
                causal: true,
            },
            54,
        );
    }

    /// Independent f64 reference backward: the same loops as [`attn_ref`]
    /// over the visible keys ([`visible`]), differentiated by hand; returns `(dq, dk, dv, lse)`.
    #[allow(clippy::type_complexity)]
    fn attn_grad_ref(
        s: &AttnShape,
        lens: Option<&[i64]>,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        d_o: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (hd, seq) = (s.head_dim, s.seq);
        let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
        let scale = 1.0 / (hd as f64).sqrt();
        let n = s.batch * seq;
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * qw], vec![0.0; n * kvw], vec![0.0; n * kvw]);
        let mut lse = vec![0.0; s.batch * s.heads * seq];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                let qi = |i: usize| (b * seq + i) * qw + h * hd;
                let kj = |j: usize| (b * seq + j) * kvw + g * hd;
                for i in 0..seq {
                    let keys: Vec<usize> = (0..seq).filter(|&j| visible(s, lens, b, i, j)).collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&j| (0..hd).map(|c| q[qi(i) + c] * k[kj(j) + c]).sum::<f64>() * scale)
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    lse[(b * s.heads + h) * seq + i] = m + z.ln();
                    let p: Vec<f64> = scores.iter().map(|s| (s - m).exp() / z).collect();
                    let dp: Vec<f64> = keys
                        .iter()
                        .map(|&j| (0..hd).map(|c| d_o[qi(i) + c] * v[kj(j) + c]).sum())
                        .collect();
                    let dsum: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
                    for (jj, &j) in keys.iter().enumerate() {
                        let ds = p[jj] * (dp[jj] - dsum);
                        for c in 0..hd {
                            dq[qi(i) + c] += scale * ds * k[kj(j) + c];
                            dk[kj(j) + c] += scale * ds * q[qi(i) + c];
                            dv[kj(j) + c] += p[jj] * d_o[qi(i) + c];
                        }
                    }
                }
            }
        }
        (dq, dk, dv, lse)
    }

    /// Forward and backward against the f64 references at sizes where the
    /// query blocks do not divide seq (the last block is partial, and a
    /// block's diagonal part is masked).
    #[test]
    fn blocked_kernel_matches_reference_across_block_boundaries() {
        for (s, seed) in [
            (
                AttnShape {
                    batch: 2,
                    seq: 67,
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 8,
                    causal: true,
                },
                61,
            ),
            (
                AttnShape {
                    batch: 1,
                    seq: 130,
                    heads: 3,
                    kv_heads: 1,
                    head_dim: 5,
                    causal: true,
                },
                62,
            ),
            (
                AttnShape {
                    batch: 1,
                    seq: 2 * BLOCK,
                    heads: 2,
                    kv_heads: 2,
                    head_dim: 4,
                    causal: true,
                },
                63,
            ),
        ] {
            let mut rng = Rng::new(seed);
            let n = s.batch * s.seq;
            let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
            let q = rng.vec_scaled(n * qw, 2.0);
            let k = rng.vec_scaled(n * kvw, 2.0);
            let v = rng.vec(n * kvw);
            let g = rng.vec(n * qw);
            let (q64, k64, v64, g64) = (to64(&q), to64(&k), to64(&v), to64(&g));
            let mut o = vec![f32::NAN; n * qw];
            let mut lse = vec![f32::NAN; s.batch * s.heads * s.seq];
            attention_forward(&s, &q, &k, &v, None, &mut o, &mut lse).unwrap();
            let (dq_ref, dk_ref, dv_ref, lse_ref) = attn_grad_ref(&s, None, &q64, &k64, &v64, &g64);
            assert_close("o", &o, &attn_ref(&s, &q64, &k64, &v64), 0.0, 1e-5);
            assert_close("lse", &lse, &lse_ref, 0.0, 1e-5);
            let mut dq = vec![f32::NAN; n * qw];
            let mut dk = vec![f32::NAN; n * kvw];
            let mut dv = vec![f32::NAN; n * kvw];
            attention_backward(&s, &q, &k, &v, None, &lse, &g, &mut dq, &mut dk, &mut dv).unwrap();
            assert_close("dq", &dq, &dq_ref, 0.0, 1e-5);
            assert_close("dk", &dk, &dk_ref, 0.0, 1e-5);
            assert_close("dv", &dv, &dv_ref, 0.0, 1e-5);
        }
    }

    /// The softmax's `exp` against f64 `exp` over its range, and its edges.
    #[test]
    fn exp_approx_is_within_one_ulp() {
        let mut worst = 0.0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.3f32 + (88.3 + 87.3) * i as f32 / steps as f32;
            let want = (x as f64).exp();
            // the spacing of f32 values at `want`
            let near = want as f32;
            let ulp = f32::from_bits(near.to_bits() + 1) as f64 - near as f64;
            worst = worst.max((exp_approx(x) as f64 - want).abs() / ulp);
        }
        assert!(worst <= 1.0, "worst error {worst} ulp");
        assert_eq!(exp_approx(0.0), 1.0);
        assert_eq!(exp_approx(-88.0), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(89.0), f32::INFINITY);
        assert!(exp_approx(f32::NAN).is_nan());
        let mut v = [1.0f32, 0.0, -9.0];
        exp_sub(&mut v, 1.0);
        assert_eq!(v[0], 1.0);
        assert!((v[1] - (-1.0f32).exp()).abs() <= f32::EPSILON);
    }

    /// The element-wise passes give bit-identical results with every
    /// instruction set the CPU offers (row lengths around the lane counts).
    #[test]
    fn simd_variants_agree_bitwise() {
        let sets = Simd::available();
        let (group, seq) = (2, 53);
        let mut rng = Rng::new(64);
        // causal full, causal with a key length inside and before the block, bidirectional
        let blocks = [
            (0, 17, seq, true),
            (17, 34, seq, true),
            (34, 53, seq, true),
            (17, 34, 23, true),
            (34, 53, 9, true),
            (0, 17, 41, false),
            (34, 53, 1, false),
        ];
        for (r0, r1, len, causal) in blocks {
            let blk = Block::new(r0, r1, len, causal, seq);
            let m = group * (r1 - r0);
            let s = rng.vec_scaled(m * blk.cols, 4.0);
            let dp = rng.vec(m * blk.cols);
            let run = |simd| {
                let mut p = s.clone();
                let mut lse = vec![0.0; group * seq];
                softmax_rows(simd, &mut p, blk, &mut lse);
                let mut p2 = s.clone();
                probs_rows(simd, &mut p2, blk, &lse);
                let mut ds = dp.clone();
                dsoftmax_rows(simd, &p2, &mut ds, blk);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(&p), bits(&lse), bits(&p2), bits(&ds))
            };
            let base = run(Simd::Base);
            for &simd in &sets[1..] {
                assert!(run(simd) == base, "{simd:?} differs from the baseline");
            }
        }
    }

    #[test]
    fn backward_is_thread_count_independent() {
        // one block; several blocks with a partial last one, more tasks than threads;
        // causal and bidirectional, with key lengths in the second
        let lens: &[i64] = &[2 * BLOCK as i64 + 5, 40, 3];
        for (batch, seq, causal, lens) in [
            (1, 9, true, None),
            (3, 2 * BLOCK + 5, true, None),
            (3, 2 * BLOCK + 5, true, Some(lens)),
            (3, 2 * BLOCK + 5, false, Some(lens)),
            (1, 9, false, None),
        ] {
            let s = AttnShape {
                batch,
                seq,
                heads: 4,
                kv_heads: 2,
                head_dim: 4,
                causal,
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
                    let mut lse = vec![0.0; batch * 4 * seq];
                    attention_forward(&s, &q, &k, &v, lens, &mut o, &mut lse).unwrap();
                    let (mut dq, mut dk, mut dv) = (vec![0.0; n * 16], vec![0.0; n * 8], vec![0.0; n * 8]);
                    attention_backward(&s, &q, &k, &v, lens, &lse, &g, &mut dq, &mut dk, &mut dv).unwrap();
                    (o, lse, dq, dk, dv)
                })
            };
            assert_eq!(run(1), run(4));
        }
    }

    #[test]
    fn rejects_bad_head_counts() {
        let s = AttnShape {
            batch: 1,
            seq: 2,
            heads: 3,
            kv_heads: 2,
            head_dim: 2,
            causal: true,
        };
        let mut o = vec![0.0; 12];
        let mut lse = vec![0.0; 6];
        assert!(attention_forward(&s, &[0.0; 12], &[0.0; 8], &[0.0; 8], None, &mut o, &mut lse).is_err());
    }

    /// Whether key `j` of sequence `b` is visible to query `i`: the contract, written out.
    fn visible(s: &AttnShape, lens: Option<&[i64]>, b: usize, i: usize, j: usize) -> bool {
        (!s.causal || j <= i) && lens.is_none_or(|l| (j as i64) < l[b])
    }

    /// Independent f64 reference with an explicit mask, as Hugging Face's eager
    /// attention: the full `(seq, seq)` scores of each (b, h), `-inf` added
    /// where a key is masked, softmax over the whole row, `O = P V`.
    /// Returns `(o, lse)`.
    fn masked_ref(s: &AttnShape, lens: Option<&[i64]>, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (hd, seq) = (s.head_dim, s.seq);
        let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
        let mut o = vec![0.0; s.batch * seq * qw];
        let mut lse = vec![0.0; s.batch * s.heads * seq];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                for i in 0..seq {
                    let scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            let qi = &q[(b * seq + i) * qw + h * hd..][..hd];
                            let kj = &k[(b * seq + j) * kvw + g * hd..][..hd];
                            let dot = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt();
                            let mask = if visible(s, lens, b, i, j) {
                                0.0
                            } else {
                                f64::NEG_INFINITY
                            };
                            dot + mask
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    lse[(b * s.heads + h) * seq + i] = m + z.ln();
                    for (j, sc) in scores.iter().enumerate() {
                        let p = (sc - m).exp() / z;
                        for c in 0..hd {
                            o[(b * seq + i) * qw + h * hd + c] += p * v[(b * seq + j) * kvw + g * hd + c];
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    /// Random inputs of a shape: `(q, k, v, g)`, `g` like the output.
    fn inputs(s: &AttnShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let n = s.batch * s.seq;
        let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let q = rng.vec_scaled(n * qw, 2.0);
        let k = rng.vec_scaled(n * kvw, 2.0);
        let v = rng.vec(n * kvw);
        let g = rng.vec(n * qw);
        (q, k, v, g)
    }

    /// Forward and backward of the kernel: `(o, lse, dq, dk, dv)`.
    #[allow(clippy::type_complexity)]
    fn run_both(
        s: &AttnShape,
        lens: Option<&[i64]>,
        (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut o = vec![f32::NAN; q.len()];
        let mut lse = vec![f32::NAN; s.batch * s.heads * s.seq];
        attention_forward(s, q, k, v, lens, &mut o, &mut lse).unwrap();
        let mut dq = vec![f32::NAN; q.len()];
        let mut dk = vec![f32::NAN; k.len()];
        let mut dv = vec![f32::NAN; v.len()];
        attention_backward(s, q, k, v, lens, &lse, g, &mut dq, &mut dk, &mut dv).unwrap();
        (o, lse, dq, dk, dv)
    }

    /// The rows of `dk`, `dv` of keys no query sees (`j >= lens[b]`) are exact zeros.
    fn assert_masked_keys_zero(s: &AttnShape, lens: Option<&[i64]>, dk: &[f32], dv: &[f32]) {
        let Some(lens) = lens else { return };
        let kvw = s.kv_heads * s.head_dim;
        for (b, &len) in lens.iter().enumerate() {
            for j in len as usize..s.seq {
                let row = (b * s.seq + j) * kvw..(b * s.seq + j + 1) * kvw;
                assert!(
                    dk[row.clone()].iter().all(|&x| x == 0.0),
                    "dk of masked key {j} of sequence {b}"
                );
                assert!(
                    dv[row].iter().all(|&x| x == 0.0),
                    "dv of masked key {j} of sequence {b}"
                );
            }
        }
    }

    /// Causal and bidirectional, with and without key lengths `[seq, 5, 1]`,
    /// grouped heads (4 sharing 2 kv heads), head_dim 8 and 16, seq 9 (one
    /// block), 37 and 70 (not multiples of the block): forward against the
    /// masked f64 reference; backward against central finite differences of it
    /// (dq, dk, dv) at seq 9 (with key lengths 9, 5, 1), against the
    /// hand-differentiated reference at every size; masked keys' gradients
    /// exact zeros, and masked keys' values without influence.
    #[test]
    fn masked_forward_and_fd_backward_causal_and_bidirectional() {
        for (seq, hd, seed) in [(9, 16, 70), (37, 8, 71), (70, 16, 72)] {
            let lens_v: Vec<i64> = vec![seq as i64, 5, 1];
            for causal in [true, false] {
                for lens in [None, Some(&lens_v[..])] {
                    let s = AttnShape {
                        batch: 3,
                        seq,
                        heads: 4,
                        kv_heads: 2,
                        head_dim: hd,
                        causal,
                    };
                    let what = format!("seq {seq} hd {hd} causal {causal} lens {lens:?}");
                    let (q, k, v, g) = inputs(&s, seed);
                    let (q64, k64, v64, g64) = (to64(&q), to64(&k), to64(&v), to64(&g));
                    let (o, lse, dq, dk, dv) = run_both(&s, lens, (&q, &k, &v, &g));
                    let (o_ref, lse_ref) = masked_ref(&s, lens, &q64, &k64, &v64);
                    assert_close(&format!("o ({what})"), &o, &o_ref, 1e-6, 1e-5);
                    assert_close(&format!("lse ({what})"), &lse, &lse_ref, 1e-6, 1e-5);
                    assert_masked_keys_zero(&s, lens, &dk, &dv);
                    let (dq_ref, dk_ref, dv_ref, _) = attn_grad_ref(&s, lens, &q64, &k64, &v64, &g64);
                    assert_close(&format!("dq ({what})"), &dq, &dq_ref, 1e-6, 1e-5);
                    assert_close(&format!("dk ({what})"), &dk, &dk_ref, 1e-6, 1e-5);
                    assert_close(&format!("dv ({what})"), &dv, &dv_ref, 1e-6, 1e-5);

                    // finite differences are costly: the smallest shape only (every mask)
                    if seq == 9 {
                        let loss = |q: &[f64], k: &[f64], v: &[f64]| dot(&g64, &masked_ref(&s, lens, q, k, v).0);
                        let fd_q = fd_grad(&q64, 1e-6, |x| loss(x, &k64, &v64));
                        let fd_k = fd_grad(&k64, 1e-6, |x| loss(&q64, x, &v64));
                        let fd_v = fd_grad(&v64, 1e-6, |x| loss(&q64, &k64, x));
                        assert_close(&format!("dq ({what})"), &dq, &fd_q, 1e-5, 1e-4);
                        assert_close(&format!("dk ({what})"), &dk, &fd_k, 1e-5, 1e-4);
                        assert_close(&format!("dv ({what})"), &dv, &fd_v, 1e-5, 1e-4);
                        // the hand-differentiated reference is right too (it checks the larger sizes)
                        for (name, r, fd) in [("dq", &dq_ref, &fd_q), ("dk", &dk_ref, &fd_k), ("dv", &dv_ref, &fd_v)] {
                            let err = r.iter().zip(fd.iter()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                            assert!(err < 1e-7, "{name} reference vs finite differences: {err:e} ({what})");
                        }
                    }

                    // changing the masked keys and values changes nothing, bit for bit
                    if let Some(lens) = lens {
                        let (mut k2, mut v2) = (k.clone(), v.clone());
                        let kvw = s.kv_heads * s.head_dim;
                        for (b, &len) in lens.iter().enumerate() {
                            let rows = (b * seq + len as usize) * kvw..(b + 1) * seq * kvw;
                            k2[rows.clone()].iter_mut().for_each(|x| *x = 1e3);
                            v2[rows].iter_mut().for_each(|x| *x = f32::MAX);
                        }
                        let (o2, lse2, dq2, _, _) = run_both(&s, Some(lens), (&q, &k2, &v2, &g));
                        assert!(o2 == o && lse2 == lse && dq2 == dq, "masked keys leak ({what})");
                    }
                }
            }
        }
    }

    /// Without lengths, a causal call equals one with every length `seq`,
    /// and a bidirectional call equals the causal one on the last query row.
    #[test]
    fn full_lengths_and_last_row_agree() {
        let mk = |causal| AttnShape {
            batch: 2,
            seq: 45,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            causal,
        };
        let (q, k, v, g) = inputs(&mk(true), 73);
        let full = [45i64, 45];
        let a = run_both(&mk(true), None, (&q, &k, &v, &g));
        let b = run_both(&mk(true), Some(&full), (&q, &k, &v, &g));
        assert!(a == b, "lens = seq differs from no lens");
        let (ob, _, _, _, _) = run_both(&mk(false), None, (&q, &k, &v, &g));
        let qw = 4 * 8;
        for bch in 0..2 {
            let last = (bch * 45 + 44) * qw..(bch * 45 + 45) * qw;
            let ref_o: Vec<f64> = a.0[last.clone()].iter().map(|&x| x as f64).collect();
            assert_close("last row", &ob[last], &ref_o, 1e-6, 1e-6);
        }
    }

    /// Key lengths of 0, past seq, negative, or not one per sequence are
    /// errors that say so, from both passes, never a panic or NaN.
    #[test]
    fn rejects_bad_key_lengths() {
        for causal in [true, false] {
            let s = AttnShape {
                batch: 2,
                seq: 3,
                heads: 2,
                kv_heads: 1,
                head_dim: 2,
                causal,
            };
            let (q, k, v, g) = (vec![0.5; 24], vec![0.5; 12], vec![0.5; 12], vec![0.5; 24]);
            let (mut o, mut lse) = (vec![0.0; 24], vec![0.0; 12]);
            let (mut dq, mut dk, mut dv) = (vec![0.0; 24], vec![0.0; 12], vec![0.0; 12]);
            for (lens, says) in [
                (&[3i64, 0][..], "key length 0 of sequence 1 is outside 1..=3"),
                (&[4, 2][..], "key length 4 of sequence 0 is outside 1..=3"),
                (&[-1, 2][..], "key length -1 of sequence 0"),
                (&[3][..], "`lens` has 1 elements, expected 2"),
                (&[3, 3, 3][..], "`lens` has 3 elements, expected 2"),
            ] {
                let e = attention_forward(&s, &q, &k, &v, Some(lens), &mut o, &mut lse).unwrap_err();
                assert!(e.to_string().contains(says), "{e}");
                assert!(e.to_string().starts_with("attention_forward"), "{e}");
                let e =
                    attention_backward(&s, &q, &k, &v, Some(lens), &lse, &g, &mut dq, &mut dk, &mut dv).unwrap_err();
                assert!(e.to_string().contains(says), "{e}");
                assert!(e.to_string().starts_with("attention_backward"), "{e}");
            }
            // the edges are fine
            attention_forward(&s, &q, &k, &v, Some(&[1, 3]), &mut o, &mut lse).unwrap();
            assert!(o.iter().chain(&lse).all(|x| x.is_finite()));
        }
    }
}
