//! The executor: runs a lowered program of the Plan on any [`Backend`], over a buffer pool laid out by the memory plan.
//!
//! One executor serves every device. It owns what does not depend on the
//! device: the run loop, the value table, shapes (read from the Program's
//! value types, never from buffer lengths), fused-kernel argument binding,
//! loss reduction and target counting. The backend owns storage and
//! arithmetic ([`backend::Backend`]).
//!
//! Memory: every value that is not a parameter lives in the buffer slot the
//! memory plan gave it (`ValueInfo::slot`). The pool holds one buffer per
//! slot index, as large as the largest value any program run so far puts
//! there; it is allocated by the first run of each program and reused by
//! every later run of every program (one program runs at a time), so a
//! steady-state step allocates no value buffer. Once every program of a
//! plan has run, its size is the plan's
//! [`lamda_compiler::plan::MemorySummary::activations_peak`] (computed by
//! `lamda_compiler::pipeline::pool_bytes`) — what `check` prints as
//! activations. Parameters are borrowed from the caller, never copied;
//! `ParamGrad` instructions add into the gradient buffers the caller owns,
//! so several micro-batches accumulate. Integer values (token ids, labels,
//! shifted targets) keep a host copy for target counting and validation,
//! and a backend copy for kernels.

pub mod backend;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lamda_compiler::ir::Op;
use lamda_compiler::kernel::{Access, ArgTy, Kernel};
use lamda_compiler::passes::memory_plan::{Instr, Program};
use smallvec::SmallVec;

pub use crate::backend::cpu::{CpuBackend, KernelMode};
pub use backend::{Backend, Gemm, IdsRef, KernelArg, LossSum, Pointwise};

use crate::ops::{AttnShape, OpsError};

/// Why a program could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{label}: {source}")]
    Op { label: String, source: OpsError },
    #[error("{0}")]
    Internal(String),
}

impl ExecError {
    /// The error with the instruction's label in front.
    fn at(self, label: &str) -> ExecError {
        match self {
            ExecError::Internal(m) => ExecError::Internal(format!("{label}: {m}")),
            ExecError::Op { source, .. } => ExecError::Op {
                label: label.to_string(),
                source,
            },
        }
    }
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

/// Positions of a (batch, seq) label block that count for the loss: position
/// `i` predicts label `i + 1` of its row, so the first label of each row and
/// ignored labels (`IGNORE_INDEX`) count for nothing.
pub fn count_targets(labels: &[i64], seq: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|(i, l)| i % seq.max(1) != 0 && **l != crate::data::IGNORE_INDEX)
        .count()
}

/// Targets of shifted labels that count for the loss (the ignored ones are negative).
pub fn count_shifted_targets(targets: &[i64]) -> usize {
    targets.iter().filter(|&&t| t >= 0).count()
}

/// The integer inputs of one micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// Token ids: (batch * seq).
    pub tokens: &'a [i64],
    /// Causal LM: labels (batch * seq); classifier: one class per sequence (batch).
    pub labels: &'a [i64],
    /// Segment ids (batch * seq); empty: all zeros.
    pub token_types: &'a [i64],
    /// Tokens of each sequence that are not padding (batch); empty: all `seq`.
    pub lengths: &'a [i64],
}

impl<'a> Inputs<'a> {
    /// A causal LM's micro-batch: tokens and labels only.
    pub fn lm(tokens: &'a [i64], labels: &'a [i64]) -> Self {
        Inputs {
            tokens,
            labels,
            ..Default::default()
        }
    }
}

/// Where a value of the running program lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// Not made yet (or released).
    None,
    /// Values `start .. start + len` of parameter `p`.
    Param { p: usize, start: usize, len: usize },
    /// Its pool slot.
    Slot(usize),
    /// The host/backend integer table.
    Ids,
}

/// Runs programs on a backend; keeps the pool and the backend's caches across runs.
pub struct Executor<B: Backend> {
    backend: B,
    /// One buffer per slot index of the memory plans run so far.
    pool: Vec<B::Buf>,
    /// Where each value of the running program lives.
    bind: Vec<Bind>,
    /// Integer values by value index: host copy (len) and backend copy.
    ids: Vec<(Vec<i64>, B::Ids)>,
    /// The running instruction's outputs, taken out of the pool while it runs.
    outs: Vec<B::Buf>,
    /// Time and count per op, when profiling.
    profile: Option<BTreeMap<String, (Duration, u64)>>,
}

impl Executor<CpuBackend> {
    /// An executor on the CPU, fused kernels by the JIT.
    pub fn new() -> Self {
        Self::on(CpuBackend::default())
    }

    /// An executor on the CPU running fused kernels as `mode` says.
    pub fn with_mode(mode: KernelMode) -> Self {
        Self::on(CpuBackend::new(mode))
    }

    /// Compiles `kernels` now (with the JIT), so errors and compile time come at plan load.
    pub fn precompile(&mut self, kernels: &[Kernel]) -> Result<(), ExecError> {
        self.backend.precompile(kernels)
    }
}

impl Default for Executor<CpuBackend> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Executor<B> {
    /// An executor on `backend`.
    pub fn on(backend: B) -> Self {
        Executor {
            backend,
            pool: Vec::new(),
            bind: Vec::new(),
            ids: Vec::new(),
            outs: Vec::new(),
            profile: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, to run buffers through it (optimizer, uploads).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Starts recording the time spent per op.
    pub fn enable_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    /// Time and count per op since profiling started, slowest first.
    pub fn profile(&self) -> Vec<(String, Duration, u64)> {
        let mut v: Vec<_> = self
            .profile
            .iter()
            .flatten()
            .map(|(k, (d, n))| (k.clone(), *d, *n))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Values the pool holds (f32 each), over all slots.
    pub fn pool_values(&self) -> usize {
        self.pool.iter().map(B::buf_len).sum()
    }

    /// Grows the pool to hold every slot of `program`.
    fn reserve(&mut self, program: &Program) -> Result<(), ExecError> {
        let slots = &program.memory.slots;
        while self.pool.len() < slots.len() {
            self.pool.push(B::Buf::default());
        }
        for (s, &bytes) in slots.iter().enumerate() {
            let need = usize::try_from(bytes.div_ceil(4))
                .map_err(|_| ExecError::Internal(format!("slot {s} of {bytes} bytes")))?;
            if B::buf_len(&self.pool[s]) < need {
                self.pool[s] = self.backend.alloc(need)?;
            }
        }
        if self.bind.len() < program.values.len() {
            self.bind.resize(program.values.len(), Bind::None);
        }
        while self.ids.len() < program.values.len() {
            self.ids.push(Default::default());
        }
        self.bind[..program.values.len()].fill(Bind::None);
        Ok(())
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
        params: &[B::Buf],
        grads: &mut [B::Buf],
        tokens: &[i64],
        labels: &[i64],
        grad_scale: f32,
        want_logits: bool,
    ) -> Result<RunOutput, ExecError> {
        self.run_with(
            program,
            params,
            grads,
            Inputs::lm(tokens, labels),
            grad_scale,
            want_logits,
        )
    }

    /// [`Executor::run`] with every integer input (an encoder's segment ids and lengths).
    pub fn run_with(
        &mut self,
        program: &Program,
        params: &[B::Buf],
        grads: &mut [B::Buf],
        inputs: Inputs<'_>,
        grad_scale: f32,
        want_logits: bool,
    ) -> Result<RunOutput, ExecError> {
        self.reserve(program)?;
        let mut loss = None;
        let mut logits = None;
        for ins in &program.instrs {
            let started = self.profile.is_some().then(Instant::now);
            if let Some(l) = self
                .instr(program, ins, params, grads, inputs, grad_scale)
                .map_err(|e| e.at(&ins.label))?
            {
                loss = Some(l);
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
                if want_logits
                    && Some(r) == program.logits
                    && let Bind::Slot(s) = self.bind[r]
                {
                    let view = B::view(&self.pool[s], 0, numel(program, r))?;
                    let mut host = Vec::new();
                    self.backend.download(view, &mut host)?;
                    logits = Some(host);
                }
                self.bind[r] = Bind::None;
            }
        }
        Ok(RunOutput {
            loss: loss.map_or(f32::NAN, |l: LossSum| (l.sum / l.count.max(1) as f64) as f32),
            count: loss.map_or(0, |l| l.count),
            logits,
        })
    }

    /// Runs one instruction; returns the loss when it computes one.
    fn instr(
        &mut self,
        program: &Program,
        ins: &Instr,
        params: &[B::Buf],
        grads: &mut [B::Buf],
        inputs: Inputs<'_>,
        grad_scale: f32,
    ) -> Result<Option<LossSum>, ExecError> {
        let Inputs { tokens, labels, .. } = inputs;
        // Values that are not pool buffers: parameters and integers.
        match &ins.op {
            Op::Param(p) => {
                let len = numel(program, out(ins, 0)?);
                self.bind[out(ins, 0)?] = Bind::Param { p: *p, start: 0, len };
                return Ok(None);
            }
            Op::ParamSlice { param, start, len } => {
                self.bind[out(ins, 0)?] = Bind::Param {
                    p: *param,
                    start: *start,
                    len: *len,
                };
                return Ok(None);
            }
            Op::Tokens
            | Op::Labels
            | Op::ClassLabels
            | Op::Positions { .. }
            | Op::TokenTypes
            | Op::Lengths { .. }
            | Op::ShiftLabels { .. } => {
                let o = out(ins, 0)?;
                let mut host = std::mem::take(&mut self.ids[o].0);
                host.clear();
                let want = numel(program, o);
                match &ins.op {
                    Op::Tokens => host.extend_from_slice(tokens),
                    Op::Labels | Op::ClassLabels => host.extend_from_slice(labels),
                    Op::Positions { seq } => host.extend((0..want).map(|i| (i % (*seq).max(1)) as i64)),
                    Op::TokenTypes if inputs.token_types.is_empty() => host.resize(want, 0),
                    Op::TokenTypes => host.extend_from_slice(inputs.token_types),
                    Op::Lengths { seq } if inputs.lengths.is_empty() => host.resize(want, *seq as i64),
                    Op::Lengths { .. } => host.extend_from_slice(inputs.lengths),
                    Op::ShiftLabels { seq } => {
                        let src = ins.inputs.first().copied().ok_or_else(|| missing(0))?;
                        let seq = (*seq).max(1);
                        let l = &self.ids[src].0;
                        host.extend((0..l.len()).map(|i| {
                            if i % seq == seq - 1 {
                                crate::data::IGNORE_INDEX
                            } else {
                                l[i + 1]
                            }
                        }));
                    }
                    _ => {}
                }
                // shifting reads the next label of a row: the ids must be the program's batch x seq
                let want = numel(program, o);
                if host.len() != want {
                    return Err(ExecError::Op {
                        label: String::new(),
                        source: OpsError::Len {
                            op: ins.op.name(),
                            name: "ids",
                            expected: want,
                            got: host.len(),
                        },
                    });
                }
                self.ids[o].0 = host;
                let (host, dev) = &mut self.ids[o];
                self.backend.set_ids(host, dev)?;
                self.bind[o] = Bind::Ids;
                return Ok(None);
            }
            Op::ParamGrad(p) => {
                let src = ins.inputs.first().copied().ok_or_else(|| missing(0))?;
                let len = numel(program, src);
                let g = value::<B>(program, &self.bind, params, &self.pool, src)?;
                let dst = grads
                    .get_mut(*p)
                    .ok_or_else(|| ExecError::Internal(format!("no gradient buffer for parameter {p}")))?;
                if B::buf_len(dst) != len {
                    return Err(ExecError::Internal(format!(
                        "gradient of parameter {p}: {len} entries into {}",
                        B::buf_len(dst)
                    )));
                }
                let dst = B::view_mut(dst, len)?;
                self.backend.add_into(dst, g)?;
                return Ok(None);
            }
            _ => {}
        }
        // Pool values: take the outputs' buffers out of the pool while the op runs.
        self.outs.clear();
        for &o in &ins.outputs {
            let s = program.values[o]
                .slot
                .ok_or_else(|| ExecError::Internal(format!("value {o} has no slot")))?;
            self.outs.push(std::mem::take(&mut self.pool[s]));
        }
        let mut outs = std::mem::take(&mut self.outs);
        let res = {
            let cx = Cx {
                program,
                ins,
                params,
                pool: &self.pool,
                bind: &self.bind,
                ids: &self.ids,
            };
            cx.run(&mut self.backend, &mut outs, tokens.len(), grad_scale)
        };
        for (&o, buf) in ins.outputs.iter().zip(outs.drain(..)) {
            if let Some(s) = program.values[o].slot {
                self.pool[s] = buf;
                self.bind[o] = Bind::Slot(s);
            }
        }
        self.outs = outs;
        let res = res?;
        for &o in &ins.outputs {
            let info = &program.values[o];
            let special = program.loss == Some(o) || program.logits == Some(o);
            if let (true, false, Bind::Slot(s)) = (info.saved, special, self.bind[o]) {
                let y = B::view_mut(&mut self.pool[s], numel(program, o))?;
                self.backend.saved(y, &info.ty.shape)?;
            }
        }
        Ok(res)
    }
}

/// Elements of value `v`.
fn numel(program: &Program, v: usize) -> usize {
    program.values.get(v).map_or(0, |i| i.ty.shape.iter().product())
}

fn out(ins: &Instr, i: usize) -> Result<usize, ExecError> {
    ins.outputs
        .get(i)
        .copied()
        .ok_or_else(|| ExecError::Internal(format!("missing output {i}")))
}

fn missing(i: usize) -> ExecError {
    ExecError::Internal(format!("missing operand {i}"))
}

/// The float value `v`, wherever it lives.
fn value<'a, B: Backend>(
    program: &Program,
    bind: &[Bind],
    params: &'a [B::Buf],
    pool: &'a [B::Buf],
    v: usize,
) -> Result<B::View<'a>, ExecError> {
    match bind.get(v).copied().unwrap_or(Bind::None) {
        Bind::Param { p, start, len } => {
            let buf = params
                .get(p)
                .ok_or_else(|| ExecError::Internal(format!("no parameter {p}")))?;
            B::view(buf, start, len)
        }
        Bind::Slot(s) => B::view(&pool[s], 0, numel(program, v)),
        Bind::Ids => Err(ExecError::Internal(format!("value {v} is an integer buffer"))),
        Bind::None => Err(ExecError::Internal(format!(
            "value {v} (`{}`) is read before it is made or after its release",
            program.values.get(v).map_or("?", |i| i.label.as_str())
        ))),
    }
}

/// What one instruction reads: the program, its operands, and the tables they live in.
struct Cx<'a, B: Backend> {
    program: &'a Program,
    ins: &'a Instr,
    params: &'a [B::Buf],
    pool: &'a [B::Buf],
    bind: &'a [Bind],
    ids: &'a [(Vec<i64>, B::Ids)],
}

/// Operand views of a stacked op without allocating (up to 8).
type Many<T> = SmallVec<[T; 8]>;

impl<'a, B: Backend> Cx<'a, B> {
    fn input(&self, i: usize) -> Result<usize, ExecError> {
        self.ins.inputs.get(i).copied().ok_or_else(|| missing(i))
    }

    /// Float operand i.
    fn f(&self, i: usize) -> Result<B::View<'a>, ExecError> {
        value::<B>(self.program, self.bind, self.params, self.pool, self.input(i)?)
    }

    /// Integer operand i.
    fn ids(&self, i: usize) -> Result<IdsRef<'a, B>, ExecError> {
        let v = self.input(i)?;
        match self.bind.get(v) {
            Some(Bind::Ids) => {
                let (host, dev) = &self.ids[v];
                Ok(IdsRef { host, dev })
            }
            _ => Err(ExecError::Internal(format!("operand {i} is not an integer buffer"))),
        }
    }

    /// Shape of operand i.
    fn shape(&self, i: usize) -> Result<&'a [usize], ExecError> {
        Ok(self.program.values[self.input(i)?].ty.shape.as_slice())
    }

    /// (rows, cols) of operand i.
    fn dims2(&self, i: usize) -> Result<(usize, usize), ExecError> {
        match self.shape(i)? {
            [a, b] => Ok((*a, *b)),
            other => Err(ExecError::Internal(format!("operand {i} is not a matrix: {other:?}"))),
        }
    }

    /// Elements of output j.
    fn out_len(&self, j: usize) -> Result<usize, ExecError> {
        Ok(numel(self.program, out(self.ins, j)?))
    }

    /// Runs the op with its outputs in `outs` (in output order); returns the loss when it makes one.
    fn run(
        &self,
        be: &mut B,
        outs: &mut [B::Buf],
        n_tokens: usize,
        grad_scale: f32,
    ) -> Result<Option<LossSum>, ExecError> {
        let op = &self.ins.op;
        let mut lens: Many<usize> = SmallVec::new();
        for j in 0..outs.len() {
            lens.push(self.out_len(j)?);
        }
        if let Op::Fused(k) = op {
            return self.fused(be, k, outs, &lens, n_tokens, grad_scale);
        }
        let mut ys: Many<B::ViewMut<'_>> = SmallVec::new();
        for (buf, &len) in outs.iter_mut().zip(&lens) {
            ys.push(B::view_mut(buf, len)?);
        }
        let mut ys = ys.into_iter();
        let mut y = || ys.next().ok_or_else(|| ExecError::Internal("missing output".into()));
        match op {
            Op::Embedding => {
                let (vocab, d) = self.dims2(1)?;
                be.embedding(self.ids(0)?, self.f(1)?, vocab, d, y()?)?;
            }
            Op::RmsNorm { eps } => {
                let (n, d) = self.dims2(0)?;
                be.rmsnorm(self.f(0)?, self.f(1)?, n, d, eps.0 as f32, y()?, y()?)?;
            }
            Op::RmsNormGrad => {
                let (n, d) = self.dims2(1)?;
                be.rmsnorm_grad(self.f(0)?, self.f(1)?, self.f(2)?, self.f(3)?, n, d, y()?)?;
            }
            Op::Linear => {
                let ((n, k), (m, _)) = (self.dims2(0)?, self.dims2(1)?);
                be.gemm(Gemm::Forward, self.f(0)?, self.f(1)?, n, k, m, y()?, false)?;
            }
            Op::LinearAdd => {
                // y = r + x W^T: the residual first, then the product accumulated onto it.
                let ((n, k), (m, _)) = (self.dims2(1)?, self.dims2(2)?);
                let mut c = y()?;
                be.copy(self.f(0)?, B::reborrow(&mut c))?;
                be.gemm(Gemm::Forward, self.f(1)?, self.f(2)?, n, k, m, c, true)?;
            }
            Op::LinearGradInput => {
                let ((n, m), (_, k)) = (self.dims2(0)?, self.dims2(1)?);
                be.gemm(Gemm::GradInput, self.f(0)?, self.f(1)?, n, k, m, y()?, false)?;
            }
            Op::LinearGradWeight => {
                let ((n, m), (_, k)) = (self.dims2(0)?, self.dims2(1)?);
                be.gemm(Gemm::GradWeight, self.f(0)?, self.f(1)?, n, k, m, y()?, false)?;
            }
            Op::Scale { c } => be.pointwise(Pointwise::Scale(c.0 as f32), self.f(0)?, None, y()?)?,
            Op::Silu => be.pointwise(Pointwise::Silu, self.f(0)?, None, y()?)?,
            Op::Add | Op::Mul | Op::SiluGrad | Op::ColScale => {
                let pw = match op {
                    Op::Add => Pointwise::Add,
                    Op::Mul => Pointwise::Mul,
                    Op::SiluGrad => Pointwise::SiluGrad,
                    _ => Pointwise::ColScale,
                };
                be.pointwise(pw, self.f(0)?, Some(self.f(1)?), y()?)?;
            }
            Op::ColScaleGrad => {
                let (_, k) = self.dims2(0)?;
                be.col_scale_grad(self.f(0)?, self.f(1)?, k, y()?)?;
            }
            Op::ColSum => {
                let (_, k) = self.dims2(0)?;
                be.col_sum(self.f(0)?, k, y()?)?;
            }
            Op::Pool { seq, mean } => {
                let (rows, d) = self.dims2(0)?;
                be.pool(self.f(0)?, self.ids(1)?, rows / (*seq).max(1), *seq, d, *mean, y()?)?;
            }
            Op::PoolGrad { seq, mean } => {
                let (batch, d) = self.dims2(0)?;
                be.pool_grad(self.f(0)?, self.ids(1)?, batch, *seq, d, *mean, y()?)?;
            }
            Op::LayerNorm { .. }
            | Op::LayerNormGrad
            | Op::Gelu
            | Op::GeluGrad
            | Op::Tanh
            | Op::TanhGrad
            | Op::BiasAdd
            | Op::ClassifyLoss { .. } => {
                return Err(ExecError::Internal(format!(
                    "{} reaches the executor: the compiler lowers it to a kernel (passes::encoder_kernels)",
                    op.name()
                )));
            }
            Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
                let (n, w) = self.dims2(0)?;
                let heads = w / (*head_dim).max(1);
                let inverse = matches!(op, Op::RopeGrad { .. });
                be.rope(self.f(0)?, n, heads, *head_dim, *seq, theta.0, inverse, y()?)?;
            }
            Op::Attention(d) => {
                let shape = attn_shape(d);
                // bidirectional attention reads the sequences' lengths (its 4th operand)
                let lens = if d.causal { None } else { Some(self.ids(3)?) };
                be.attention(&shape, self.f(0)?, self.f(1)?, self.f(2)?, lens, y()?, y()?)?;
            }
            Op::AttentionGrad(d) => {
                let shape = attn_shape(d);
                let (g, q, k, v, lse) = (self.f(0)?, self.f(1)?, self.f(2)?, self.f(3)?, self.f(4)?);
                let lens = if d.causal { None } else { Some(self.ids(5)?) };
                be.attention_grad(&shape, g, q, k, v, lens, lse, y()?, y()?, y()?)?;
            }
            Op::CrossEntropy { batch, seq, grad } => {
                let (_, vocab) = self.dims2(0)?;
                let (lg, lb) = (self.f(0)?, self.ids(1)?);
                let loss_out = y()?;
                let dl = if *grad { Some((y()?, grad_scale)) } else { None };
                let l = be.cross_entropy(lg, lb, *batch, *seq, vocab, dl)?;
                let mean = (l.sum / l.count.max(1) as f64) as f32;
                be.upload(std::slice::from_ref(&mean), loss_out)?;
                return Ok(Some(l));
            }
            Op::LinearCrossEntropy => {
                let ((n, d), (vocab, _)) = (self.dims2(0)?, self.dims2(1)?);
                let t = self.ids(2)?;
                let count = count_shifted_targets(t.host);
                let scale = grad_scale / count.max(1) as f32;
                let l = be.linear_cross_entropy(self.f(0)?, self.f(1)?, t, n, d, vocab, scale, y()?, y()?)?;
                return Ok(Some(l));
            }
            Op::Split { widths } => {
                let (n, _) = self.dims2(0)?;
                let mut parts: Many<B::ViewMut<'_>> = SmallVec::new();
                for _ in widths {
                    parts.push(y()?);
                }
                be.split_cols(self.f(0)?, n, widths, &mut parts)?;
            }
            Op::Concat { widths } => {
                let (n, _) = self.dims2(0)?;
                let mut xs: Many<B::View<'a>> = SmallVec::new();
                for i in 0..widths.len() {
                    xs.push(self.f(i)?);
                }
                be.concat_cols(&xs, n, widths, y()?)?;
            }
            Op::LinearSplit { widths } => {
                let (n, k) = self.dims2(0)?;
                let mut parts: Many<B::ViewMut<'_>> = SmallVec::new();
                for _ in widths {
                    parts.push(y()?);
                }
                be.linear_split(self.f(0)?, self.f(1)?, n, k, widths, &mut parts)?;
            }
            Op::LinearGradInputCat { widths } => {
                let m = widths.len();
                let (n, _) = self.dims2(0)?;
                let (_, k) = self.dims2(m)?;
                let mut gs: Many<B::View<'a>> = SmallVec::new();
                for i in 0..m {
                    gs.push(self.f(i)?);
                }
                be.linear_grad_input_cat(&gs, self.f(m)?, n, k, widths, y()?)?;
            }
            Op::Fused(_)
            | Op::Tokens
            | Op::Labels
            | Op::ClassLabels
            | Op::Positions { .. }
            | Op::TokenTypes
            | Op::Lengths { .. }
            | Op::ShiftLabels { .. }
            | Op::Param(_)
            | Op::ParamSlice { .. }
            | Op::ParamGrad(_) => {
                return Err(ExecError::Internal(format!("{} is not a pool op", op.name())));
            }
        }
        Ok(None)
    }

    /// A generated kernel: binds its arguments in kernel order (reads from the
    /// operands, writes to the outputs, scalars by name), zeroes the outputs it
    /// accumulates into, and reduces a per-row `loss` output to the step's loss.
    fn fused(
        &self,
        be: &mut B,
        k: &Kernel,
        outs: &mut [B::Buf],
        lens: &[usize],
        n_tokens: usize,
        grad_scale: f32,
    ) -> Result<Option<LossSum>, ExecError> {
        let rows = self
            .ins
            .inputs
            .iter()
            .find_map(|&v| match self.program.values[v].ty.shape.as_slice() {
                [r, _] => Some(*r),
                _ => None,
            })
            .unwrap_or(n_tokens);
        // Read arguments bind the operands in order, written ones the outputs in order.
        let reads = k
            .args
            .iter()
            .filter(|a| a.access != Access::Write && a.ty != ArgTy::Scalar);
        let count = reads
            .enumerate()
            .find(|(_, a)| a.ty == ArgTy::PerRowI64)
            .and_then(|(i, _)| self.ids(i).ok())
            .map(|t| count_shifted_targets(t.host));
        let writes = || k.args.iter().enumerate().filter(|(_, a)| a.access == Access::Write);
        let mut views: Many<B::ViewMut<'_>> = SmallVec::new();
        for ((buf, &len), (a, _)) in outs.iter_mut().zip(lens).zip(writes()) {
            let mut v = B::view_mut(buf, len)?;
            if !k.overwrites(a) {
                be.zero(B::reborrow(&mut v))?;
            }
            views.push(v);
        }
        let loss_at = writes().position(|(_, a)| a.name == "loss");
        {
            let mut views = views.into_iter();
            let mut args: SmallVec<[KernelArg<'_, B>; 16]> = SmallVec::new();
            let mut read_at = 0;
            for a in &k.args {
                args.push(match (a.access, a.ty) {
                    (_, ArgTy::Scalar) => KernelArg::Scalar(match a.name.as_str() {
                        "grad_scale" => grad_scale / count.unwrap_or(0).max(1) as f32,
                        other => return Err(ExecError::Internal(format!("no value for scalar `{other}`"))),
                    }),
                    (Access::Write, _) => {
                        KernelArg::Write(views.next().ok_or_else(|| ExecError::Internal("outputs".into()))?)
                    }
                    (_, ArgTy::PerRowI64) => {
                        read_at += 1;
                        KernelArg::Ids(self.ids(read_at - 1)?)
                    }
                    _ => {
                        read_at += 1;
                        KernelArg::Read(self.f(read_at - 1)?)
                    }
                });
            }
            be.launch(k, &mut args, rows)?;
        }
        // A fused cross-entropy reports per-row losses: the step's loss is their mean.
        if let Some(pos) = loss_at {
            let view = B::view(&outs[pos], 0, lens[pos])?;
            let sum = be.sum(view)?;
            return Ok(Some(LossSum {
                sum,
                count: count.unwrap_or(0),
            }));
        }
        Ok(None)
    }
}

fn attn_shape(d: &lamda_compiler::ir::AttnDims) -> AttnShape {
    AttnShape {
        batch: d.batch,
        seq: d.seq,
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        causal: d.causal,
    }
}
