//! The CPU executor: runs a lowered program of the Plan over flat f32 buffers.
//!
//! Values live in a slot table indexed like the program's values; parameters
//! are borrowed from the parameter store, never copied; every other value is
//! allocated when its instruction runs and dropped at the release point the
//! memory plan chose. `ParamGrad` instructions add into the gradient buffers
//! the caller owns, so several micro-batches accumulate.

use std::collections::HashMap;

use lamda_compiler::ir::Op;
use lamda_compiler::passes::memory_plan::Program;

use crate::ops::{self, AttnShape, OpsError, RopeTable, Store};

/// Why a program could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{label}: {source}")]
    Op { label: String, source: OpsError },
    #[error("{0}")]
    Internal(String),
}

/// Buffers of a program run.
enum Slot {
    Empty,
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// A parameter of the store.
    Param(usize),
    /// Values `start .. start + len` of a parameter (a row block of a stacked weight).
    ParamSlice(usize, usize, usize),
}

/// The result of running a program.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Mean cross-entropy over the counted positions.
    pub loss: f32,
    /// Positions that counted.
    pub count: usize,
    /// The logits (n, vocab), when asked for.
    pub logits: Option<Vec<f32>>,
}

/// How fused kernels run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelMode {
    /// Compiled with Cranelift at first use (the default).
    #[default]
    Jit,
    /// The reference interpreter (slow; for tests).
    Interpret,
}

/// Runs programs; caches RoPE tables and compiled kernels across runs.
#[derive(Default)]
pub struct Executor {
    rope: HashMap<(usize, usize, u64), RopeTable>,
    mode: KernelMode,
    jit: Option<crate::backend::cpu::jit::Jit>,
    /// Time and count per op, when profiling.
    profile: Option<std::collections::BTreeMap<String, (std::time::Duration, u64)>>,
    /// Released f32 buffers, for the next run's values of the same size.
    pool: BufferPool,
}

/// Released buffers, by capacity: every step of a program allocates the
/// same sizes, so from the second step on its values reuse memory that is
/// already mapped (a fresh large `Vec` costs page faults and the kernel's
/// zeroing of every page: ~10% of a SmolLM2 step). A request takes the
/// smallest free buffer of at least its length and at most twice it.
#[derive(Default)]
struct BufferPool {
    free: std::collections::BTreeMap<usize, Vec<Vec<f32>>>,
}

impl BufferPool {
    /// A released buffer for `len` values, with whatever it held, if one fits.
    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        let cap = *self.free.range(len..=len.saturating_mul(2)).next()?.0;
        let list = self.free.get_mut(&cap)?;
        let v = list.pop()?;
        if list.is_empty() {
            self.free.remove(&cap);
        }
        Some(v)
    }

    /// `len` zeros, in a released buffer when one fits.
    fn zeroed(&mut self, len: usize) -> Vec<f32> {
        match self.take(len) {
            Some(mut v) => {
                v.clear();
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    /// `len` values for an op that writes every one of them before reading
    /// any: a released buffer keeps its stale values (no memset, which took
    /// ~3% of a SmolLM2 step); a new one is zeros (fresh pages, no memset).
    fn for_overwrite(&mut self, len: usize) -> Vec<f32> {
        match self.take(len) {
            Some(mut v) => {
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0.0);
                }
                v
            }
            None => vec![0.0; len],
        }
    }

    /// A copy of `x`, in a released buffer when one fits.
    fn copy_of(&mut self, x: &[f32]) -> Vec<f32> {
        match self.take(x.len()) {
            Some(mut v) => {
                v.clear();
                v.extend_from_slice(x);
                v
            }
            None => x.to_vec(),
        }
    }

    /// Keeps `v` for a later value.
    fn put(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.free.entry(v.capacity()).or_default().push(v);
        }
    }
}

impl Executor {
    pub fn new() -> Self {
        Self::default()
    }

    /// An executor running fused kernels as `mode` says.
    pub fn with_mode(mode: KernelMode) -> Self {
        Executor {
            mode,
            ..Self::default()
        }
    }

    /// Starts recording the time spent per op.
    pub fn enable_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    /// Time and count per op since profiling started, slowest first.
    pub fn profile(&self) -> Vec<(String, std::time::Duration, u64)> {
        let mut v: Vec<_> = self
            .profile
            .iter()
            .flatten()
            .map(|(k, (d, n))| (k.clone(), *d, *n))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Compiles `kernels` now (with the JIT), so errors and compile time come at plan load.
    pub fn precompile(&mut self, kernels: &[lamda_compiler::kernel::Kernel]) -> Result<(), ExecError> {
        if self.mode != KernelMode::Jit || kernels.is_empty() {
            return Ok(());
        }
        if self.jit.is_none() {
            self.jit =
                Some(crate::backend::cpu::jit::Jit::new().map_err(|e| ExecError::Internal(format!("JIT: {e}")))?);
        }
        let jit = self.jit.as_mut().ok_or_else(|| ExecError::Internal("JIT".into()))?;
        for k in kernels {
            jit.compile(k).map_err(|e| ExecError::Internal(format!("JIT: {e}")))?;
        }
        Ok(())
    }

    /// Runs one fused kernel over `rows` rows (JIT or interpreter, by mode).
    pub fn launch(
        &mut self,
        k: &lamda_compiler::kernel::Kernel,
        args: &mut [crate::backend::cpu::interp::KArg<'_>],
        rows: usize,
    ) -> Result<(), ExecError> {
        match self.mode {
            KernelMode::Interpret => {
                crate::backend::cpu::interp::run(k, args, rows).map_err(|e| ExecError::Internal(e.to_string()))
            }
            KernelMode::Jit => {
                if self.jit.is_none() {
                    self.jit = Some(
                        crate::backend::cpu::jit::Jit::new().map_err(|e| ExecError::Internal(format!("JIT: {e}")))?,
                    );
                }
                let jit = self.jit.as_mut().ok_or_else(|| ExecError::Internal("JIT".into()))?;
                let compiled = jit.compile(k).map_err(|e| ExecError::Internal(format!("JIT: {e}")))?;
                compiled
                    .launch(args, rows)
                    .map_err(|e| ExecError::Internal(e.to_string()))
            }
        }
    }

    /// Runs `program` on one micro-batch. `params[i]` holds parameter i;
    /// `grads[i]` (for trainable i) receives `ParamGrad` contributions added
    /// to what it holds; the gradient of the loss is multiplied by
    /// `grad_scale` (the micro-batch's share of an accumulated step).
    /// tokens, labels: (batch * seq).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        program: &Program,
        params: &[Vec<f32>],
        grads: &mut [Vec<f32>],
        tokens: &[i64],
        labels: &[i64],
        grad_scale: f32,
        want_logits: bool,
    ) -> Result<RunOutput, ExecError> {
        let mut slots: Vec<Slot> = (0..program.values.len()).map(|_| Slot::Empty).collect();
        let mut loss = (f32::NAN, 0usize);
        let mut logits = None;
        for ins in &program.instrs {
            let started = self.profile.is_some().then(std::time::Instant::now);
            let shapes: Vec<&[usize]> = ins
                .inputs
                .iter()
                .map(|&v| program.values[v].ty.shape.as_slice())
                .collect();
            let outs = self
                .step(
                    &ins.op,
                    &ins.inputs,
                    &shapes,
                    &slots,
                    params,
                    grads,
                    (tokens, labels, grad_scale),
                    &mut loss,
                )
                .map_err(|e| match e {
                    ExecError::Internal(m) => ExecError::Internal(format!("{}: {m}", ins.label)),
                    ExecError::Op { source, .. } => ExecError::Op {
                        label: ins.label.clone(),
                        source,
                    },
                })?;
            for (&o, s) in ins.outputs.iter().zip(outs) {
                slots[o] = s;
            }
            if let (Some(t), Some(p)) = (started, self.profile.as_mut()) {
                let key = match &ins.op {
                    Op::Fused(k) => format!("fused {}", k.name.split('_').next().unwrap_or("")),
                    op => op.name().to_string(),
                };
                let e = p.entry(key).or_default();
                e.0 += t.elapsed();
                e.1 += 1;
            }
            for &r in &ins.release {
                if want_logits && Some(r) == program.logits {
                    if let Slot::F32(v) = std::mem::replace(&mut slots[r], Slot::Empty) {
                        logits = Some(v);
                    }
                    continue;
                }
                if let Slot::F32(v) = std::mem::replace(&mut slots[r], Slot::Empty) {
                    self.pool.put(v);
                }
            }
        }
        Ok(RunOutput {
            loss: loss.0,
            count: loss.1,
            logits,
        })
    }

    fn rope_table(&mut self, seq: usize, head_dim: usize, theta: f64) -> Result<&RopeTable, OpsError> {
        let key = (seq, head_dim, theta.to_bits());
        match self.rope.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(RopeTable::new(seq, head_dim, theta)?)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        op: &Op,
        inputs: &[usize],
        shapes: &[&[usize]],
        slots: &[Slot],
        params: &[Vec<f32>],
        grads: &mut [Vec<f32>],
        (tokens, labels, grad_scale): (&[i64], &[i64], f32),
        loss: &mut (f32, usize),
    ) -> Result<Vec<Slot>, ExecError> {
        let f = |i: usize| -> Result<&[f32], ExecError> {
            let v = *inputs
                .get(i)
                .ok_or_else(|| ExecError::Internal(format!("missing operand {i}")))?;
            match slots.get(v) {
                Some(Slot::F32(x)) => Ok(x),
                Some(Slot::Param(p)) => params
                    .get(*p)
                    .map(Vec::as_slice)
                    .ok_or_else(|| ExecError::Internal(format!("no parameter {p}"))),
                Some(Slot::ParamSlice(p, start, len)) => params
                    .get(*p)
                    .and_then(|b| b.get(*start..start + len))
                    .ok_or_else(|| ExecError::Internal(format!("no values {start}..{} of parameter {p}", start + len))),
                _ => Err(ExecError::Internal(format!(
                    "operand {i} (value {v}) is not an f32 buffer"
                ))),
            }
        };
        let ids = |i: usize| -> Result<&[i64], ExecError> {
            let v = *inputs
                .get(i)
                .ok_or_else(|| ExecError::Internal(format!("missing operand {i}")))?;
            match slots.get(v) {
                Some(Slot::I64(x)) => Ok(x),
                _ => Err(ExecError::Internal(format!("operand {i} is not an i64 buffer"))),
            }
        };
        let op_err = |source: OpsError| ExecError::Op {
            label: String::new(),
            source,
        };
        // (rows, cols) of operand i.
        let dims2 = |i: usize| -> Result<(usize, usize), ExecError> {
            match shapes.get(i) {
                Some([a, b]) => Ok((*a, *b)),
                other => Err(ExecError::Internal(format!("operand {i} is not a matrix: {other:?}"))),
            }
        };
        let out = match op {
            Op::Tokens => vec![Slot::I64(tokens.to_vec())],
            Op::Labels => vec![Slot::I64(labels.to_vec())],
            Op::Param(p) => vec![Slot::Param(*p)],
            Op::ParamSlice { param, start, len } => vec![Slot::ParamSlice(*param, *start, *len)],
            Op::Embedding => {
                let (idv, table) = (ids(0)?, f(1)?);
                let n = idv.len();
                let (vocab, d) = dims2(1)?;
                let mut y = self.pool.for_overwrite(n * d);
                ops::embedding_forward(table, vocab, d, idv, &mut y).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::RmsNorm { eps } => {
                let (x, w) = (f(0)?, f(1)?);
                let d = w.len();
                let n = x.len() / d.max(1);
                let (mut y, mut rstd) = (self.pool.for_overwrite(x.len()), self.pool.for_overwrite(n));
                ops::rmsnorm_forward(x, w, n, d, eps.0 as f32, &mut y, &mut rstd).map_err(op_err)?;
                vec![Slot::F32(y), Slot::F32(rstd)]
            }
            Op::Linear => {
                let (x, w) = (f(0)?, f(1)?);
                let ((n, k), (m, _)) = (dims2(0)?, dims2(1)?);
                let mut y = self.pool.for_overwrite(n * m);
                ops::linear_forward(x, w, n, k, m, &mut y, Store::Overwrite).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::LinearGradInput => {
                let (g, w) = (f(0)?, f(1)?);
                let ((n, m), (_, k)) = (dims2(0)?, dims2(1)?);
                let mut dx = self.pool.for_overwrite(n * k);
                ops::linear_backward_input(g, w, n, k, m, &mut dx, Store::Overwrite).map_err(op_err)?;
                vec![Slot::F32(dx)]
            }
            Op::LinearGradWeight => {
                let (g, x) = (f(0)?, f(1)?);
                let ((n, m), (_, k)) = (dims2(0)?, dims2(1)?);
                let mut dw = self.pool.for_overwrite(m * k);
                ops::linear_backward_weight(g, x, n, k, m, &mut dw, Store::Overwrite).map_err(op_err)?;
                vec![Slot::F32(dw)]
            }
            Op::Scale { c } => {
                let x = f(0)?;
                let mut y = self.pool.for_overwrite(x.len());
                ops::pointwise::scale(x, c.0 as f32, &mut y).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::Add | Op::Mul | Op::SiluGrad => {
                let (a, b) = (f(0)?, f(1)?);
                let mut y = self.pool.for_overwrite(a.len());
                match op {
                    Op::Add => ops::pointwise::add(a, b, &mut y),
                    Op::Mul => ops::pointwise::mul(a, b, &mut y),
                    _ => ops::pointwise::silu_grad(a, b, &mut y),
                }
                .map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::Silu => {
                let x = f(0)?;
                let mut y = self.pool.for_overwrite(x.len());
                ops::pointwise::silu(x, &mut y).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::ColScale => {
                let (x, v) = (f(0)?, f(1)?);
                let mut y = self.pool.for_overwrite(x.len());
                ops::pointwise::col_scale(x, v, &mut y).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::ColScaleGrad => {
                let (g, x) = (f(0)?, f(1)?);
                let (_, k) = dims2(0)?;
                let mut dv = self.pool.zeroed(k);
                ops::pointwise::col_scale_grad(g, x, &mut dv).map_err(op_err)?;
                vec![Slot::F32(dv)]
            }
            Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
                let mut y = self.pool.copy_of(f(0)?);
                let n = tokens.len();
                let heads = y.len() / n.max(1) / (*head_dim).max(1);
                let table = self.rope_table(*seq, *head_dim, theta.0).map_err(op_err)?;
                if matches!(op, Op::Rope { .. }) {
                    ops::rope_forward(table, &mut y, n, heads).map_err(op_err)?;
                } else {
                    ops::rope_backward(table, &mut y, n, heads).map_err(op_err)?;
                }
                vec![Slot::F32(y)]
            }
            Op::Attention(d) => {
                let shape = AttnShape {
                    batch: d.batch,
                    seq: d.seq,
                    heads: d.heads,
                    kv_heads: d.kv_heads,
                    head_dim: d.head_dim,
                };
                let (q, k, v) = (f(0)?, f(1)?, f(2)?);
                let mut o = self.pool.for_overwrite(q.len());
                let mut lse = self.pool.for_overwrite(d.batch * d.heads * d.seq);
                ops::attention_forward(&shape, q, k, v, &mut o, &mut lse).map_err(op_err)?;
                vec![Slot::F32(o), Slot::F32(lse)]
            }
            Op::AttentionGrad(d) => {
                let shape = AttnShape {
                    batch: d.batch,
                    seq: d.seq,
                    heads: d.heads,
                    kv_heads: d.kv_heads,
                    head_dim: d.head_dim,
                };
                let (g, q, k, v, lse) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
                let (mut dq, mut dk, mut dv) = (
                    self.pool.for_overwrite(q.len()),
                    self.pool.for_overwrite(k.len()),
                    self.pool.for_overwrite(v.len()),
                );
                ops::attention_backward(&shape, q, k, v, lse, g, &mut dq, &mut dk, &mut dv).map_err(op_err)?;
                vec![Slot::F32(dq), Slot::F32(dk), Slot::F32(dv)]
            }
            Op::RmsNormGrad => {
                let (g, x, w, rstd) = (f(0)?, f(1)?, f(2)?, f(3)?);
                let d = w.len();
                let n = rstd.len();
                let mut dx = self.pool.for_overwrite(x.len());
                ops::rmsnorm_backward(x, w, rstd, g, n, d, &mut dx, None).map_err(op_err)?;
                vec![Slot::F32(dx)]
            }
            Op::CrossEntropy { batch, seq, grad } => {
                let (lg, lb) = (f(0)?, ids(1)?);
                let vocab = lg.len() / (batch * seq).max(1);
                let mut dl = if *grad {
                    self.pool.for_overwrite(lg.len())
                } else {
                    Vec::new()
                };
                let ce =
                    ops::causal_lm_cross_entropy(lg, lb, *batch, *seq, vocab, if *grad { Some(&mut dl) } else { None })
                        .map_err(op_err)?;
                *loss = (ce.loss, ce.count);
                if *grad && grad_scale != 1.0 {
                    dl.iter_mut().for_each(|v| *v *= grad_scale);
                }
                let mut out = vec![Slot::F32(vec![ce.loss])];
                if *grad {
                    out.push(Slot::F32(dl));
                }
                out
            }
            Op::ParamGrad(p) => {
                let g = f(0)?;
                let dst = grads
                    .get_mut(*p)
                    .ok_or_else(|| ExecError::Internal(format!("no gradient buffer for parameter {p}")))?;
                if dst.len() != g.len() {
                    return Err(ExecError::Internal(format!(
                        "gradient of parameter {p}: {} entries into {}",
                        g.len(),
                        dst.len()
                    )));
                }
                ops::add_assign(dst, g).map_err(op_err)?;
                vec![]
            }
            Op::Split { widths } => {
                let x = f(0)?;
                let (n, _) = dims2(0)?;
                let mut outs: Vec<Vec<f32>> = widths.iter().map(|&c| self.pool.for_overwrite(n * c)).collect();
                ops::split_cols(x, n, widths, &mut outs).map_err(op_err)?;
                outs.into_iter().map(Slot::F32).collect()
            }
            Op::Concat { widths } => {
                let total: usize = widths.iter().sum();
                let n = shapes.first().and_then(|s| s.first()).copied().unwrap_or(0);
                let xs = (0..widths.len()).map(&f).collect::<Result<Vec<_>, _>>()?;
                let mut y = self.pool.for_overwrite(n * total);
                ops::concat_cols(&xs, n, widths, &mut y).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::LinearSplit { widths } => {
                let (x, w) = (f(0)?, f(1)?);
                let (n, k) = dims2(0)?;
                let mut ys: Vec<Vec<f32>> = widths.iter().map(|&c| self.pool.for_overwrite(n * c)).collect();
                ops::linear::stacked_linear_forward(x, w, n, k, widths, &mut ys).map_err(op_err)?;
                ys.into_iter().map(Slot::F32).collect()
            }
            Op::LinearGradInputCat { widths } => {
                let m = widths.len();
                let gs = (0..m).map(&f).collect::<Result<Vec<_>, _>>()?;
                let w = f(m)?;
                let (_, k) = dims2(m)?;
                let n = shapes.first().and_then(|s| s.first()).copied().unwrap_or(0);
                let mut dx = self.pool.for_overwrite(n * k);
                ops::linear::stacked_linear_backward_input(&gs, w, n, k, widths, &mut dx).map_err(op_err)?;
                vec![Slot::F32(dx)]
            }
            Op::LinearCrossEntropy => {
                let (h, w, t) = (f(0)?, f(1)?, ids(2)?);
                let ((n, d), (vocab, _)) = (dims2(0)?, dims2(1)?);
                let count = t.iter().filter(|&&v| v >= 0).count();
                let scale = grad_scale / count.max(1) as f32;
                let (mut rows, mut dh) = (self.pool.for_overwrite(n), self.pool.for_overwrite(n * d));
                let r = ops::head_loss::linear_cross_entropy(h, w, t, n, d, vocab, scale, &mut rows, &mut dh)
                    .map_err(op_err)?;
                *loss = ((r.sum / r.count.max(1) as f64) as f32, r.count);
                vec![Slot::F32(rows), Slot::F32(dh)]
            }
            Op::LinearAdd => {
                let (r, x, w) = (f(0)?, f(1)?, f(2)?);
                let ((n, k), (m, _)) = (dims2(1)?, dims2(2)?);
                let mut y = self.pool.copy_of(r);
                ops::linear_forward(x, w, n, k, m, &mut y, Store::Accumulate).map_err(op_err)?;
                vec![Slot::F32(y)]
            }
            Op::ShiftLabels { seq } => {
                let l = ids(0)?;
                let t: Vec<i64> = (0..l.len())
                    .map(|i| {
                        if i % seq == seq - 1 {
                            crate::data::IGNORE_INDEX
                        } else {
                            l[i + 1]
                        }
                    })
                    .collect();
                vec![Slot::I64(t)]
            }
            Op::Fused(k) => {
                use crate::backend::cpu::interp::KArg;
                use lamda_compiler::kernel::{Access, ArgTy};
                let reads = k.inputs();
                let rows = shapes
                    .iter()
                    .find_map(|s| if s.len() == 2 { Some(s[0]) } else { None })
                    .unwrap_or(tokens.len());
                let count = (0..reads.len())
                    .find(|&i| k.args[reads[i]].ty == ArgTy::PerRowI64)
                    .and_then(|i| ids(i).ok())
                    .map_or(0, |t| t.iter().filter(|&&v| v >= 0).count());
                let mut outs: Vec<Vec<f32>> = k
                    .outputs()
                    .iter()
                    .map(|&a| match k.args[a].ty {
                        ArgTy::Rows { cols } if k.overwrites(a) => self.pool.for_overwrite(rows * cols),
                        ArgTy::PerRow if k.overwrites(a) => self.pool.for_overwrite(rows),
                        ArgTy::Rows { cols } => self.pool.zeroed(rows * cols),
                        ArgTy::PerRow => self.pool.zeroed(rows),
                        ArgTy::Vector { len } => self.pool.zeroed(len),
                        ArgTy::Periodic { period, cols } => self.pool.zeroed(period * cols),
                        ArgTy::PerRowI64 | ArgTy::Scalar => Vec::new(),
                    })
                    .collect();
                {
                    let mut out_iter = outs.iter_mut();
                    let mut args: Vec<KArg<'_>> = Vec::with_capacity(k.args.len());
                    let mut read_at = 0;
                    for a in &k.args {
                        args.push(match (a.access, a.ty) {
                            (_, ArgTy::Scalar) => KArg::Scalar(match a.name.as_str() {
                                "grad_scale" => grad_scale / count.max(1) as f32,
                                other => return Err(ExecError::Internal(format!("no value for scalar `{other}`"))),
                            }),
                            (Access::Write, _) => KArg::F32Mut(
                                out_iter
                                    .next()
                                    .ok_or_else(|| ExecError::Internal("outputs".into()))?
                                    .as_mut_slice(),
                            ),
                            (_, ArgTy::PerRowI64) => {
                                read_at += 1;
                                KArg::I64(ids(read_at - 1)?)
                            }
                            _ => {
                                read_at += 1;
                                KArg::F32(f(read_at - 1)?)
                            }
                        });
                    }
                    self.launch(k, &mut args, rows)?;
                }
                // A fused cross-entropy reports per-row losses: the step's loss is their mean.
                if let Some(pos) = k.outputs().iter().position(|&a| k.args[a].name == "loss") {
                    let total: f64 = outs[pos].iter().map(|&v| f64::from(v)).sum();
                    *loss = ((total / count.max(1) as f64) as f32, count);
                }
                outs.into_iter().map(Slot::F32).collect()
            }
        };
        Ok(out)
    }
}
