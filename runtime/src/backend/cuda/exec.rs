//! The CUDA executor: runs a lowered program of the Plan on the GPU, op for op as `crate::exec` does on the CPU.
//!
//! # Design
//!
//! Values live in a table indexed like the program's values: f32 values are
//! device buffers, i64 values (tokens, labels, shifted targets: n entries)
//! are device buffers with a host mirror, because the CPU semantics validate
//! ids and count targets on the host and so do we, with the same errors,
//! before any kernel reads them. Parameters are uploaded once, in Plan order,
//! and referenced, never copied; every other value is allocated when its
//! instruction runs and freed at the release point of the memory plan (the
//! driver's stream-ordered pool makes both cheap). `ParamGrad` adds into
//! device gradient buffers, so micro-batches accumulate on the device.
//!
//! Two ways to drive it. [`CudaExecutor::run`] has the CPU executor's
//! signature (host parameters and gradients): it uploads the parameters that
//! train in some phase, runs, and adds the device gradients into the host
//! ones, so a trainer can swap executors without other changes.
//! [`CudaExecutor::run_device`] keeps everything on the device; with
//! [`CudaExecutor::zero_grads`], [`CudaExecutor::zero_frozen_cols`],
//! [`CudaExecutor::grad_norm`], [`CudaExecutor::scale_grads`] and
//! [`CudaExecutor::adamw_step`] a training step never copies a parameter.
//!
//! Each op checks the lengths of its operands against the shapes it derives,
//! as the CPU ops do, before launching: a kernel never indexes past a buffer.
//!
//! bf16 mode ([`Precision::Bf16`]): a weight matrix that trains in no phase
//! is uploaded as bf16 bits (vectors and RoPE tables stay f32); a saved
//! feature activation is rounded into a bf16 buffer right after the
//! instruction that makes it ([`bf16_saved_schedule`]) and the f32 one
//! freed. Before each instruction, every bf16 operand the op does not read
//! itself ([`reads_bf16`]: GEMM operands, the embedding table) is
//! widened into a transient f32 buffer that stands in for it during that
//! instruction only. A GEMM with one bf16 operand rounds the other to bf16.

use std::collections::{BTreeSet, HashMap};

use lamda_compiler::codegen::cuda::{block_threads, support};
use lamda_compiler::ir::{AttnDims, Op};
use lamda_compiler::kernel::{Access, ArgTy, Kernel};
use lamda_compiler::passes::memory_plan::{Instr, Program};
use lamda_compiler::plan::Plan;

use super::gpu::{DevBuf, Dt, Gpu, KArg, int, long};
use super::{CudaDevice, CudaError};
use crate::data::IGNORE_INDEX;
use crate::exec::{ExecError, RunOutput};
use crate::ops::{AdamState, AdamW, OpsError, RopeTable};

/// How to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// GPU number (default 0).
    pub device: usize,
    /// Let cuBLAS use TF32 tensor cores for the f32 GEMMs (faster, ~1e-3
    /// relative error per product: not the parity mode).
    pub tf32: bool,
    /// Storage of frozen weights and saved activations.
    pub precision: Precision,
}

/// Storage precision on the GPU (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32: the parity mode, which matches the CPU to rounding.
    #[default]
    F32,
    /// Frozen weights and saved activations in bf16; trainable parameters,
    /// their gradients and AdamW moments in f32; GEMMs that read a bf16
    /// tensor run with bf16 inputs and f32 accumulation.
    Bf16,
}

impl Precision {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// A parameter on the device: an f32 buffer, or bf16 bits for one that never trains (bf16 mode).
enum PBuf {
    /// (numel)
    F32(DevBuf<f32>),
    /// (numel) bf16 bits
    Bf16(DevBuf<u16>),
}

impl PBuf {
    fn len(&self) -> usize {
        match self {
            PBuf::F32(b) => b.len(),
            PBuf::Bf16(b) => b.len(),
        }
    }
    fn dt(&self) -> Dt {
        match self {
            PBuf::F32(_) => Dt::F32,
            PBuf::Bf16(_) => Dt::Bf16,
        }
    }
    fn ptr(&self, gpu: &Gpu) -> u64 {
        match self {
            PBuf::F32(b) => b.ptr(gpu),
            PBuf::Bf16(b) => b.ptr(gpu),
        }
    }
}

/// `x` rounded to bf16 (nearest even; NaN stays NaN), as `lamdac_f32_to_bf16` does.
fn host_bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

/// A value of a running program.
enum Val {
    Empty,
    F32(DevBuf<f32>),
    /// A saved activation kept in bf16 between the forward and the backward (bf16 mode).
    Bf16(DevBuf<u16>),
    I64 {
        dev: DevBuf<i64>,
        host: Vec<i64>,
    },
    Param(usize),
    /// Values `start .. start + len` of a parameter (a row block of a stacked weight).
    ParamSlice(usize, usize, usize),
}

/// (device address, length, storage) of a float operand.
type Operand = (u64, usize, Dt);

/// Both operands of a GEMM in one storage: (storage, a, b, the bf16 copies
/// made for it, to keep alive until the GEMM is queued).
type GemmPair = (Dt, u64, u64, Vec<DevBuf<u16>>);

/// (seq, head_dim, theta bits) of a RoPE table.
type RopeKey = (usize, usize, u64);

/// AdamW state of one parameter on the device.
struct DevAdam {
    /// First moment (numel).
    m: DevBuf<f32>,
    /// Second moment (numel).
    v: DevBuf<f32>,
    step: u64,
}

/// Runs a Plan's programs on a GPU. See the module doc.
pub struct CudaExecutor {
    gpu: Gpu,
    /// Every parameter of the Plan, in Plan order: (numel), f32 or bf16.
    params: Vec<PBuf>,
    /// Gradient buffers (numel), made on first use.
    grads: Vec<Option<DevBuf<f32>>>,
    adam: Vec<Option<DevAdam>>,
    /// Parameters that train in some phase: [`CudaExecutor::run`] uploads them before each program.
    trainable: Vec<usize>,
    /// RoPE (cos, sin) tables by (seq, head_dim, theta bits): (seq, head_dim / 2) each.
    rope: HashMap<RopeKey, (DevBuf<f32>, DevBuf<f32>)>,
    precision: Precision,
}

fn op_err(source: OpsError) -> CudaError {
    CudaError::Op {
        label: String::new(),
        source,
    }
}

fn len_check(op: &'static str, name: &'static str, got: usize, expected: usize) -> Result<(), CudaError> {
    if got == expected {
        Ok(())
    } else {
        Err(op_err(OpsError::Len {
            op,
            name,
            expected,
            got,
        }))
    }
}

/// Every fused kernel of `programs`, once.
fn program_kernels<'p>(programs: impl IntoIterator<Item = &'p Program>) -> Vec<Kernel> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for prog in programs {
        for ins in &prog.instrs {
            if let Op::Fused(k) = &ins.op
                && seen.insert(k.name.clone())
            {
                out.push((**k).clone());
            }
        }
    }
    out
}

impl CudaExecutor {
    /// An executor for `plan` on the first GPU with `params[i]` holding
    /// parameter i (Plan order, as the CPU trainer keeps them): detects the
    /// device, compiles the module (support kernels and every fused kernel of
    /// the Plan) with NVRTC, uploads the parameters.
    pub fn new(plan: &Plan, params: &[Vec<f32>]) -> Result<CudaExecutor, CudaError> {
        Self::with_options(plan, params, CudaOptions::default())
    }

    /// [`CudaExecutor::new`] with options.
    pub fn with_options(plan: &Plan, params: &[Vec<f32>], opts: CudaOptions) -> Result<CudaExecutor, CudaError> {
        let dev = CudaDevice::open(opts.device)?;
        Self::on_device(dev, plan, params, opts)
    }

    /// [`CudaExecutor::new`] on a device already opened.
    pub fn on_device(
        dev: CudaDevice,
        plan: &Plan,
        params: &[Vec<f32>],
        opts: CudaOptions,
    ) -> Result<CudaExecutor, CudaError> {
        if params.len() != plan.params.len() {
            return Err(CudaError::Program(format!(
                "{} parameter buffers for a plan of {}",
                params.len(),
                plan.params.len()
            )));
        }
        // Base weights that only live inside a stacked weight are dropped by
        // `init::initialize` (empty); no program reads them.
        let used = crate::init::referenced_params(plan);
        for (i, (info, host)) in plan.params.iter().zip(params).enumerate() {
            let dropped = host.is_empty() && !used.contains(&i);
            if host.len() as u64 != info.numel() && !dropped {
                return Err(CudaError::Program(format!(
                    "parameter `{}` has {} values, its shape {:?} needs {}",
                    info.name,
                    host.len(),
                    info.shape,
                    info.numel()
                )));
            }
        }
        let programs: Vec<&Program> = plan.phases.iter().map(|p| &p.program).chain([&plan.eval]).collect();
        let trainable: Vec<usize> = plan
            .phases
            .iter()
            .flat_map(|p| p.trainable.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // The RoPE tables are matrices too, but small and precision-sensitive: f32.
        let mut narrow = bf16_storage(&programs, params.len(), &trainable, opts.precision);
        for (n, info) in narrow.iter_mut().zip(&plan.params) {
            if matches!(info.role, lamda_compiler::ir::ParamRole::Table(_)) {
                *n = false;
            }
        }
        Self::build(dev, &programs, params, &trainable, &narrow, opts)
    }

    /// An executor for any `programs` (a Plan's, or hand-built ones in tests):
    /// `params[i]` is parameter i, `trainable` the parameters
    /// [`CudaExecutor::run`] uploads before each run (those a trainer updates).
    /// In bf16 mode, a parameter that does not train and that the programs
    /// read as a matrix is stored in bf16.
    pub fn for_programs(
        dev: CudaDevice,
        programs: &[&Program],
        params: &[Vec<f32>],
        trainable: &[usize],
        opts: CudaOptions,
    ) -> Result<CudaExecutor, CudaError> {
        let narrow = bf16_storage(programs, params.len(), trainable, opts.precision);
        Self::build(dev, programs, params, trainable, &narrow, opts)
    }

    /// The executor, with parameter `p` stored in bf16 where `narrow[p]`.
    fn build(
        dev: CudaDevice,
        programs: &[&Program],
        params: &[Vec<f32>],
        trainable: &[usize],
        narrow: &[bool],
        opts: CudaOptions,
    ) -> Result<CudaExecutor, CudaError> {
        let gpu = Gpu::new(dev, &program_kernels(programs.iter().copied()), opts.tf32)?;
        if let Some(&p) = trainable.iter().find(|&&p| p >= params.len()) {
            return Err(CudaError::Program(format!(
                "trainable parameter {p} of {}",
                params.len()
            )));
        }
        let dev_params = params
            .iter()
            .enumerate()
            .map(|(p, h)| {
                if narrow.get(p).copied().unwrap_or(false) {
                    gpu.upload(&host_bf16(h)).map(PBuf::Bf16)
                } else {
                    gpu.upload(h).map(PBuf::F32)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CudaExecutor {
            gpu,
            grads: (0..params.len()).map(|_| None).collect(),
            adam: (0..params.len()).map(|_| None).collect(),
            params: dev_params,
            trainable: trainable.to_vec(),
            rope: HashMap::new(),
            precision: opts.precision,
        })
    }

    /// The GPU it runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.gpu.dev
    }

    /// Device bytes of the parameters as stored (2 per value of a bf16 one, 4 otherwise).
    pub fn param_bytes(&self) -> u64 {
        self.params.iter().map(|b| (b.len() * b.dt().bytes()) as u64).sum()
    }

    /// Whether parameter `p` is stored in bf16.
    pub fn param_is_bf16(&self, p: usize) -> bool {
        matches!(self.params.get(p), Some(PBuf::Bf16(_)))
    }

    /// The storage precision it runs with.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The NVRTC architecture of its module (`compute_90`).
    pub fn arch(&self) -> &'static str {
        self.gpu.arch()
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.dev.synchronize()
    }

    /// Runs `program` with the CPU executor's contract (see
    /// [`crate::exec::Executor::run`]): `params` are the host parameters
    /// (those that train in some phase are uploaded first; the others must
    /// not have changed since [`CudaExecutor::new`]), and every `ParamGrad`
    /// contribution is added into `grads[p]` on the host.
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
        for &p in &self.trainable.clone() {
            let host = params
                .get(p)
                .ok_or_else(|| ExecError::Internal(format!("no parameter {p}")))?;
            self.upload_param(p, host)?;
        }
        let targets: BTreeSet<usize> = program
            .instrs
            .iter()
            .filter_map(|i| if let Op::ParamGrad(p) = i.op { Some(p) } else { None })
            .collect();
        for &p in &targets {
            let host_len = grads
                .get(p)
                .map(Vec::len)
                .ok_or_else(|| ExecError::Internal(format!("no gradient buffer for parameter {p}")))?;
            let numel = self.params.get(p).map_or(0, PBuf::len);
            if host_len != numel {
                return Err(ExecError::Internal(format!(
                    "gradient of parameter {p}: {numel} entries into {host_len}"
                )));
            }
            self.zero_grads(&[p])?;
        }
        let out = self.run_device(program, tokens, labels, grad_scale, want_logits)?;
        for &p in &targets {
            let g = self.download_grad(p)?;
            if let Some(dst) = grads.get_mut(p) {
                dst.iter_mut().zip(&g).for_each(|(d, s)| *d += s);
            }
        }
        Ok(out)
    }

    /// Runs `program` on one micro-batch with everything on the device:
    /// `ParamGrad` adds into the device gradients (see [`CudaExecutor::zero_grads`]),
    /// the gradient of the loss is multiplied by `grad_scale`. tokens, labels: (batch * seq).
    pub fn run_device(
        &mut self,
        program: &Program,
        tokens: &[i64],
        labels: &[i64],
        grad_scale: f32,
        want_logits: bool,
    ) -> Result<RunOutput, CudaError> {
        self.prepare(program)?;
        let mut vals: Vec<Val> = (0..program.values.len()).map(|_| Val::Empty).collect();
        let mut loss = (f32::NAN, 0usize);
        let mut logits = None;
        let to_bf16 = (self.precision == Precision::Bf16).then(|| bf16_saved_schedule(program));
        for (i, ins) in program.instrs.iter().enumerate() {
            let restore = self.widen_operands(ins, &mut vals).map_err(|e| e.at(&ins.label))?;
            let outs = self.step(ins, program, &vals, (tokens, labels, grad_scale), &mut loss);
            for (v, orig) in restore {
                vals[v] = orig;
            }
            let outs = outs.map_err(|e| e.at(&ins.label))?;
            if outs.len() != ins.outputs.len() {
                return Err(CudaError::Program(format!(
                    "{}: {} outputs, the program expects {}",
                    ins.label,
                    outs.len(),
                    ins.outputs.len()
                )));
            }
            for (&o, s) in ins.outputs.iter().zip(outs) {
                if let Some(slot) = vals.get_mut(o) {
                    *slot = s;
                }
            }
            for &r in &ins.release {
                let Some(slot) = vals.get_mut(r) else { continue };
                let v = std::mem::replace(slot, Val::Empty);
                if want_logits
                    && Some(r) == program.logits
                    && let Val::F32(b) = &v
                {
                    logits = Some(self.gpu.download(b)?);
                }
            }
            for &v in to_bf16.as_ref().and_then(|s| s.get(i)).map_or(&[][..], Vec::as_slice) {
                if let Some(slot) = vals.get_mut(v)
                    && let Val::F32(b) = slot
                {
                    let h = self.gpu.alloc::<u16>(b.len())?;
                    self.gpu.to_bf16(b.ptr(&self.gpu), h.ptr(&self.gpu), b.len())?;
                    *slot = Val::Bf16(h);
                }
            }
        }
        self.synchronize()?;
        Ok(RunOutput {
            loss: loss.0,
            count: loss.1,
            logits,
        })
    }

    // ------------------------------------------------------------------ parameters, gradients, AdamW

    fn param_len(&self, p: usize) -> Result<usize, CudaError> {
        self.params
            .get(p)
            .map(PBuf::len)
            .ok_or_else(|| CudaError::Program(format!("no parameter {p}")))
    }

    /// (device address, length, storage) of a float value; None for the others.
    fn float_operand(&self, val: &Val) -> Result<Option<Operand>, CudaError> {
        let param = |p: usize| {
            self.params
                .get(p)
                .ok_or_else(|| CudaError::Program(format!("no parameter {p}")))
        };
        Ok(Some(match val {
            Val::F32(b) => (b.ptr(&self.gpu), b.len(), Dt::F32),
            Val::Bf16(b) => (b.ptr(&self.gpu), b.len(), Dt::Bf16),
            Val::Param(p) => {
                let b = param(*p)?;
                (b.ptr(&self.gpu), b.len(), b.dt())
            }
            Val::ParamSlice(p, start, len) => {
                let b = param(*p)?;
                if start + len > b.len() {
                    return Err(CudaError::Program(format!(
                        "no values {start}..{} of parameter {p}",
                        start + len
                    )));
                }
                (b.ptr(&self.gpu) + (start * b.dt().bytes()) as u64, *len, b.dt())
            }
            Val::Empty | Val::I64 { .. } => return Ok(None),
        }))
    }

    /// Before `ins` runs: every bf16 operand it does not read as bf16 itself
    /// ([`reads_bf16`]) is widened into a fresh f32 buffer that takes its
    /// place in `vals` for this instruction. Returns the originals, to put back after it.
    fn widen_operands(&self, ins: &Instr, vals: &mut [Val]) -> Result<Vec<(usize, Val)>, CudaError> {
        let mut restore: Vec<(usize, Val)> = Vec::new();
        for (slot, &v) in ins.inputs.iter().enumerate() {
            if reads_bf16(&ins.op, slot) || restore.iter().any(|(r, _)| *r == v) {
                continue;
            }
            let Some(val) = vals.get(v) else { continue };
            let Some((ptr, len, Dt::Bf16)) = self.float_operand(val)? else {
                continue;
            };
            let wide = self.gpu.alloc::<f32>(len)?;
            self.gpu.widen_bf16(ptr, wide.ptr(&self.gpu), len)?;
            restore.push((v, std::mem::replace(&mut vals[v], Val::F32(wide))));
        }
        Ok(restore)
    }

    /// Parameter `p`'s f32 buffer (parameters that train are always f32).
    fn f32_param_ptr(&self, p: usize) -> Result<u64, CudaError> {
        match self.params.get(p) {
            Some(PBuf::F32(b)) => Ok(b.ptr(&self.gpu)),
            Some(PBuf::Bf16(_)) => Err(CudaError::Program(format!(
                "parameter {p} is stored in bf16 because it never trains; it cannot be updated"
            ))),
            None => Err(CudaError::Program(format!("no parameter {p}"))),
        }
    }

    /// (device address, length) of the gradient of `p`, made (zeroed) on first use.
    fn grad_ptr(&mut self, p: usize) -> Result<(u64, usize), CudaError> {
        let len = self.param_len(p)?;
        if self.grads[p].is_none() {
            self.grads[p] = Some(self.gpu.zeros::<f32>(len)?);
        }
        match &self.grads[p] {
            Some(b) => Ok((b.ptr(&self.gpu), b.len())),
            None => Err(CudaError::Program(format!("no gradient for parameter {p}"))),
        }
    }

    /// Sets the device gradients of `which` to zero.
    pub fn zero_grads(&mut self, which: &[usize]) -> Result<(), CudaError> {
        for &p in which {
            let (ptr, len) = self.grad_ptr(p)?;
            self.gpu.memset_zero(ptr, len * 4)?;
        }
        Ok(())
    }

    /// The device gradient of parameter `p` (numel; zeros if none was made).
    pub fn download_grad(&mut self, p: usize) -> Result<Vec<f32>, CudaError> {
        self.grad_ptr(p)?;
        match &self.grads[p] {
            Some(b) => self.gpu.download(b),
            None => Ok(Vec::new()),
        }
    }

    /// Gradients of every parameter that trains in some phase, in Plan order
    /// (empty vectors for the others), as the CPU trainer holds them.
    pub fn download_grads(&mut self) -> Result<Vec<Vec<f32>>, CudaError> {
        let mut out: Vec<Vec<f32>> = (0..self.params.len()).map(|_| Vec::new()).collect();
        for p in self.trainable.clone() {
            out[p] = self.download_grad(p)?;
        }
        Ok(out)
    }

    /// Parameter `p` as the device holds it (widened to f32 when stored in bf16).
    pub fn download_param(&self, p: usize) -> Result<Vec<f32>, CudaError> {
        match self.params.get(p) {
            Some(PBuf::F32(b)) => self.gpu.download(b),
            Some(PBuf::Bf16(b)) => Ok(self
                .gpu
                .download(b)?
                .into_iter()
                .map(|h| half::bf16::from_bits(h).to_f32())
                .collect()),
            None => Err(CudaError::Program(format!("no parameter {p}"))),
        }
    }

    /// Overwrites parameter `p` on the device (same length; rounded to bf16 when stored so).
    pub fn upload_param(&mut self, p: usize, data: &[f32]) -> Result<(), CudaError> {
        let gpu = &self.gpu;
        match self.params.get_mut(p) {
            Some(PBuf::F32(b)) => gpu.write(b, data),
            Some(PBuf::Bf16(b)) => gpu.write(b, &host_bf16(data)),
            None => Err(CudaError::Program(format!("no parameter {p}"))),
        }
    }

    /// Zeroes the leading `frozen` columns of the gradient of `p`, a (numel / cols, cols) matrix.
    pub fn zero_frozen_cols(&mut self, p: usize, cols: usize, frozen: usize) -> Result<(), CudaError> {
        let frozen = frozen.min(cols);
        if frozen == 0 {
            return Ok(());
        }
        let (ptr, len) = self.grad_ptr(p)?;
        let rows = len / cols;
        let args = [KArg::Ptr(ptr), long(rows), int(cols, "cols")?, int(frozen, "frozen")?];
        self.gpu.launch_elems(support::ZERO_COLS, rows * frozen, &args)
    }

    /// `sqrt(sum of g^2)` over the gradients of `which`, accumulated in f64.
    pub fn grad_norm(&mut self, which: &[usize]) -> Result<f64, CudaError> {
        let mut total = 0.0f64;
        for &p in which {
            let (ptr, len) = self.grad_ptr(p)?;
            if len == 0 {
                continue;
            }
            let grid = len.div_ceil(256).min(1024);
            let partials = self.gpu.alloc::<f64>(grid)?;
            let args = [KArg::Ptr(ptr), long(len), KArg::Ptr(partials.ptr(&self.gpu))];
            self.gpu.launch(support::SUM_SQ, grid as u32, 256, 0, &args)?;
            total += self.gpu.download(&partials)?.iter().sum::<f64>();
        }
        Ok(total.sqrt())
    }

    /// Multiplies the gradients of `which` by `s` (clipping).
    pub fn scale_grads(&mut self, which: &[usize], s: f32) -> Result<(), CudaError> {
        for &p in which {
            let (ptr, len) = self.grad_ptr(p)?;
            self.gpu
                .launch_elems(support::SCALE_INPLACE, len, &[KArg::Ptr(ptr), KArg::F32(s), long(len)])?;
        }
        Ok(())
    }

    /// One AdamW step on parameter `p` (a (numel / cols, cols) matrix) with its
    /// device gradient and moments, columns `< frozen_cols` frozen: the
    /// semantics and the scalars of [`crate::ops::adamw_step`]. Returns whether
    /// it updated anything.
    pub fn adamw_step(&mut self, p: usize, cfg: &AdamW, cols: usize, frozen_cols: usize) -> Result<bool, CudaError> {
        const OP: &str = "adamw_step";
        let len = self.param_len(p)?;
        if cols == 0 || !len.is_multiple_of(cols) {
            return Err(op_err(OpsError::Config {
                op: OP,
                msg: format!("{len} entries do not form rows of {cols} columns"),
            }));
        }
        if frozen_cols >= cols || len == 0 {
            return Ok(false);
        }
        let (g, _) = self.grad_ptr(p)?;
        let param = self.f32_param_ptr(p)?;
        if self.adam[p].is_none() {
            self.adam[p] = Some(DevAdam {
                m: self.gpu.zeros(len)?,
                v: self.gpu.zeros(len)?,
                step: 0,
            });
        }
        let Some(st) = self.adam[p].as_mut() else {
            return Err(CudaError::Program(format!("no AdamW state for parameter {p}")));
        };
        st.step += 1;
        let k = i32::try_from(st.step).unwrap_or(i32::MAX);
        let decay = (1.0 - cfg.lr * cfg.weight_decay) as f32;
        let step_size = (cfg.lr / (1.0 - cfg.beta1.powi(k))) as f32;
        let bc2 = (1.0 - cfg.beta2.powi(k)).sqrt() as f32;
        let args = [
            KArg::Ptr(param),
            KArg::Ptr(g),
            KArg::Ptr(st.m.ptr(&self.gpu)),
            KArg::Ptr(st.v.ptr(&self.gpu)),
            long(len),
            int(cols, "cols")?,
            int(frozen_cols, "frozen")?,
            KArg::F32(decay),
            KArg::F32(step_size),
            KArg::F32(cfg.beta1 as f32),
            KArg::F32((1.0 - cfg.beta1) as f32),
            KArg::F32(cfg.beta2 as f32),
            KArg::F32((1.0 - cfg.beta2) as f32),
            KArg::F32(bc2),
            KArg::F32(cfg.eps as f32),
            KArg::I32(i32::from(cfg.weight_decay != 0.0)),
        ];
        self.gpu.launch_elems(support::ADAMW, len, &args)?;
        Ok(true)
    }

    /// The AdamW state of `p` (zero moments and step 0 before its first step).
    pub fn adam_state(&self, p: usize) -> Result<AdamState, CudaError> {
        let len = self.param_len(p)?;
        match &self.adam[p] {
            Some(st) => Ok(AdamState {
                exp_avg: self.gpu.download(&st.m)?,
                exp_avg_sq: self.gpu.download(&st.v)?,
                step: st.step,
            }),
            None => Ok(AdamState::new(len)),
        }
    }

    /// Restores the AdamW state of `p` (resume).
    pub fn set_adam_state(&mut self, p: usize, st: &AdamState) -> Result<(), CudaError> {
        let len = self.param_len(p)?;
        if st.exp_avg.len() != len || st.exp_avg_sq.len() != len {
            return Err(CudaError::Program(format!(
                "AdamW state of parameter {p}: moments of {} and {} entries for {len}",
                st.exp_avg.len(),
                st.exp_avg_sq.len()
            )));
        }
        self.adam[p] = Some(DevAdam {
            m: self.gpu.upload(&st.exp_avg)?,
            v: self.gpu.upload(&st.exp_avg_sq)?,
            step: st.step,
        });
        Ok(())
    }

    // ------------------------------------------------------------------ one instruction

    /// Makes what `program` needs before it runs: the gradient buffers its
    /// `ParamGrad`s add into and the RoPE tables of its rotations.
    fn prepare(&mut self, program: &Program) -> Result<(), CudaError> {
        for ins in &program.instrs {
            match &ins.op {
                Op::ParamGrad(p) => {
                    self.grad_ptr(*p).map_err(|e| e.at(&ins.label))?;
                }
                Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
                    let key = (*seq, *head_dim, theta.0.to_bits());
                    if !self.rope.contains_key(&key) {
                        let t = RopeTable::new(*seq, *head_dim, theta.0).map_err(|e| op_err(e).at(&ins.label))?;
                        let pair = (self.gpu.upload(t.cos())?, self.gpu.upload(t.sin())?);
                        self.rope.insert(key, pair);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn step(
        &self,
        ins: &Instr,
        program: &Program,
        vals: &[Val],
        (tokens, labels, grad_scale): (&[i64], &[i64], f32),
        loss: &mut (f32, usize),
    ) -> Result<Vec<Val>, CudaError> {
        let inputs = &ins.inputs;
        let shapes: Vec<&[usize]> = inputs
            .iter()
            .map(|&v| program.values.get(v).map_or(&[][..], |i| i.ty.shape.as_slice()))
            .collect();
        // (device address, length, storage) of float operand i.
        let opnd = |i: usize| -> Result<Operand, CudaError> {
            let v = *inputs
                .get(i)
                .ok_or_else(|| CudaError::Program(format!("missing operand {i}")))?;
            let val = vals.get(v).map(|x| self.float_operand(x)).transpose()?.flatten();
            val.ok_or_else(|| CudaError::Program(format!("operand {i} (value {v}) is not a float buffer")))
        };
        // (device address, length) of f32 operand i.
        let f = |i: usize| -> Result<(u64, usize), CudaError> {
            match opnd(i)? {
                (p, len, Dt::F32) => Ok((p, len)),
                (_, _, Dt::Bf16) => Err(CudaError::Program(format!(
                    "operand {i} is stored in bf16 and this op reads f32"
                ))),
            }
        };
        // Two GEMM operands in one storage: both f32, or both bf16 (an f32
        // one rounded into a fresh buffer, kept alive in the third field).
        let pair = |a: Operand, b: Operand| -> Result<GemmPair, CudaError> {
            if a.2 == Dt::F32 && b.2 == Dt::F32 {
                return Ok((Dt::F32, a.0, b.0, Vec::new()));
            }
            let mut keep = Vec::new();
            let mut narrow = |(p, len, dt): Operand| -> Result<u64, CudaError> {
                if dt == Dt::Bf16 {
                    return Ok(p);
                }
                let h = self.gpu.alloc::<u16>(len)?;
                self.gpu.to_bf16(p, h.ptr(&self.gpu), len)?;
                let ptr = h.ptr(&self.gpu);
                keep.push(h);
                Ok(ptr)
            };
            let (pa, pb) = (narrow(a)?, narrow(b)?);
            Ok((Dt::Bf16, pa, pb, keep))
        };
        // (device address, host mirror) of i64 operand i.
        let ids = |i: usize| -> Result<(u64, &[i64]), CudaError> {
            let v = *inputs
                .get(i)
                .ok_or_else(|| CudaError::Program(format!("missing operand {i}")))?;
            match vals.get(v) {
                Some(Val::I64 { dev, host }) => Ok((dev.ptr(&self.gpu), host.as_slice())),
                _ => Err(CudaError::Program(format!("operand {i} is not an i64 buffer"))),
            }
        };
        let dims2 = |i: usize| -> Result<(usize, usize), CudaError> {
            match shapes.get(i) {
                Some([a, b]) => Ok((*a, *b)),
                other => Err(CudaError::Program(format!("operand {i} is not a matrix: {other:?}"))),
            }
        };
        let gpu = &self.gpu;
        let out = match &ins.op {
            Op::Tokens | Op::Labels => {
                let host = if matches!(ins.op, Op::Tokens) { tokens } else { labels };
                vec![Val::I64 {
                    dev: gpu.upload(host)?,
                    host: host.to_vec(),
                }]
            }
            Op::Param(p) => {
                self.param_len(*p)?;
                vec![Val::Param(*p)]
            }
            Op::ParamSlice { param, start, len } => {
                if start + len > self.param_len(*param)? {
                    return Err(CudaError::Program(format!(
                        "slice {start}..{} past parameter {param}",
                        start + len
                    )));
                }
                vec![Val::ParamSlice(*param, *start, *len)]
            }
            Op::Embedding => {
                const OP: &str = "embedding_forward";
                let ((idp, idv), (table, tlen, tdt)) = (ids(0)?, opnd(1)?);
                let (vocab, d) = dims2(1)?;
                len_check(OP, "table", tlen, vocab * d)?;
                for (row, &id) in idv.iter().enumerate() {
                    if usize::try_from(id).ok().filter(|&t| t < vocab).is_none() {
                        return Err(op_err(OpsError::IdOutOfRange { op: OP, row, id, vocab }));
                    }
                }
                let n = idv.len();
                let y = gpu.alloc::<f32>(n * d)?;
                if d > 0 {
                    let args = [
                        KArg::Ptr(idp),
                        KArg::Ptr(table),
                        KArg::Ptr(y.ptr(gpu)),
                        int(n, "n")?,
                        int(d, "d")?,
                        int(vocab, "vocab")?,
                    ];
                    let kernel = match tdt {
                        Dt::F32 => support::EMBEDDING,
                        Dt::Bf16 => support::EMBEDDING_BF16,
                    };
                    gpu.launch_rows(kernel, n, d, &args)?;
                }
                vec![Val::F32(y)]
            }
            Op::RmsNorm { eps } => {
                const OP: &str = "rmsnorm_forward";
                let ((x, xl), (w, d)) = (f(0)?, f(1)?);
                if d == 0 {
                    return Err(op_err(OpsError::Config {
                        op: OP,
                        msg: "hidden size d must be positive".into(),
                    }));
                }
                let n = xl / d;
                len_check(OP, "x", xl, n * d)?;
                let (y, rstd) = (gpu.alloc::<f32>(xl)?, gpu.alloc::<f32>(n)?);
                let args = [
                    KArg::Ptr(x),
                    KArg::Ptr(w),
                    KArg::Ptr(y.ptr(gpu)),
                    KArg::Ptr(rstd.ptr(gpu)),
                    int(n, "n")?,
                    int(d, "d")?,
                    KArg::F32(eps.0 as f32),
                ];
                gpu.launch_rows(support::RMSNORM, n, d, &args)?;
                vec![Val::F32(y), Val::F32(rstd)]
            }
            Op::Linear | Op::LinearAdd => {
                const OP: &str = "linear_forward";
                let add = matches!(ins.op, Op::LinearAdd);
                let (xi, wi) = if add { (1, 2) } else { (0, 1) };
                let (xo, wo) = (opnd(xi)?, opnd(wi)?);
                let ((n, k), (m, _)) = (dims2(xi)?, dims2(wi)?);
                len_check(OP, "x", xo.1, n * k)?;
                len_check(OP, "w", wo.1, m * k)?;
                let y = gpu.alloc::<f32>(n * m)?;
                if add {
                    let (r, rl) = f(0)?;
                    len_check(OP, "y", rl, n * m)?;
                    gpu.copy(y.ptr(gpu), r, rl * 4)?;
                }
                let (dt, x, w, _keep) = pair(xo, wo)?;
                gpu.linear(dt, x, w, y.ptr(gpu), n, k, m, add)?;
                vec![Val::F32(y)]
            }
            Op::LinearGradInput => {
                const OP: &str = "linear_backward_input";
                let (go, wo) = (opnd(0)?, opnd(1)?);
                let ((n, m), (_, k)) = (dims2(0)?, dims2(1)?);
                len_check(OP, "dy", go.1, n * m)?;
                len_check(OP, "w", wo.1, m * k)?;
                let dx = gpu.alloc::<f32>(n * k)?;
                let (dt, g, w, _keep) = pair(go, wo)?;
                gpu.linear_grad_input(dt, g, w, dx.ptr(gpu), n, k, m)?;
                vec![Val::F32(dx)]
            }
            Op::LinearGradWeight => {
                const OP: &str = "linear_backward_weight";
                let (go, xo) = (opnd(0)?, opnd(1)?);
                let ((n, m), (_, k)) = (dims2(0)?, dims2(1)?);
                len_check(OP, "dy", go.1, n * m)?;
                len_check(OP, "x", xo.1, n * k)?;
                let dw = gpu.alloc::<f32>(m * k)?;
                let (dt, g, x, _keep) = pair(go, xo)?;
                gpu.linear_grad_weight(dt, g, x, dw.ptr(gpu), n, k, m)?;
                vec![Val::F32(dw)]
            }
            Op::Scale { c } => {
                let (x, len) = f(0)?;
                let y = gpu.alloc::<f32>(len)?;
                let args = [KArg::Ptr(x), KArg::Ptr(y.ptr(gpu)), KArg::F32(c.0 as f32), long(len)];
                gpu.launch_elems(support::SCALE, len, &args)?;
                vec![Val::F32(y)]
            }
            Op::Add | Op::Mul | Op::SiluGrad => {
                let (name, kernel) = match ins.op {
                    Op::Add => ("add", support::ADD),
                    Op::Mul => ("mul", support::MUL),
                    _ => ("silu_grad", support::SILU_GRAD),
                };
                let ((a, al), (b, bl)) = (f(0)?, f(1)?);
                len_check(name, "b", bl, al)?;
                let y = gpu.alloc::<f32>(al)?;
                let args = [KArg::Ptr(a), KArg::Ptr(b), KArg::Ptr(y.ptr(gpu)), long(al)];
                gpu.launch_elems(kernel, al, &args)?;
                vec![Val::F32(y)]
            }
            Op::Silu => {
                let (x, len) = f(0)?;
                let y = gpu.alloc::<f32>(len)?;
                gpu.launch_elems(support::SILU, len, &[KArg::Ptr(x), KArg::Ptr(y.ptr(gpu)), long(len)])?;
                vec![Val::F32(y)]
            }
            Op::ColScale => {
                let ((x, xl), (v, k)) = (f(0)?, f(1)?);
                if k == 0 || !xl.is_multiple_of(k) {
                    return Err(op_err(OpsError::Config {
                        op: "col_scale",
                        msg: format!("{xl} entries are not rows of {k}"),
                    }));
                }
                let y = gpu.alloc::<f32>(xl)?;
                let args = [
                    KArg::Ptr(x),
                    KArg::Ptr(v),
                    KArg::Ptr(y.ptr(gpu)),
                    long(xl),
                    int(k, "k")?,
                ];
                gpu.launch_elems(support::COL_SCALE, xl, &args)?;
                vec![Val::F32(y)]
            }
            Op::ColScaleGrad => {
                const OP: &str = "col_scale_grad";
                let ((g, gl), (x, xl)) = (f(0)?, f(1)?);
                let (_, k) = dims2(0)?;
                len_check(OP, "x", xl, gl)?;
                if k == 0 || !gl.is_multiple_of(k) {
                    return Err(op_err(OpsError::Config {
                        op: OP,
                        msg: format!("{gl} entries are not rows of {k}"),
                    }));
                }
                let dv = gpu.alloc::<f32>(k)?;
                let args = [
                    KArg::Ptr(g),
                    KArg::Ptr(x),
                    KArg::Ptr(dv.ptr(gpu)),
                    int(gl / k, "n")?,
                    int(k, "k")?,
                ];
                gpu.launch_elems(support::COL_SCALE_GRAD, k, &args)?;
                vec![Val::F32(dv)]
            }
            Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
                let op: &'static str = if matches!(ins.op, Op::Rope { .. }) {
                    "rope_forward"
                } else {
                    "rope_backward"
                };
                let (x, len) = f(0)?;
                let n = tokens.len();
                let hd = *head_dim;
                let heads = len / n.max(1) / hd.max(1);
                let (cos, sin) = match self.rope.get(&(*seq, hd, theta.0.to_bits())) {
                    Some((c, s)) => (c.ptr(gpu), s.ptr(gpu)),
                    None => return Err(CudaError::Program("the RoPE table was not prepared".into())),
                };
                len_check(op, "x", len, n * heads * hd)?;
                if *seq == 0 || !n.is_multiple_of(*seq) {
                    return Err(op_err(OpsError::Config {
                        op,
                        msg: format!("n = {n} rows is not a whole number of sequences of {seq}"),
                    }));
                }
                let y = gpu.alloc::<f32>(len)?;
                let args = [
                    KArg::Ptr(x),
                    KArg::Ptr(cos),
                    KArg::Ptr(sin),
                    KArg::Ptr(y.ptr(gpu)),
                    int(n, "n")?,
                    int(heads, "heads")?,
                    int(hd, "head_dim")?,
                    int(*seq, "seq")?,
                    KArg::I32(i32::from(matches!(ins.op, Op::RopeGrad { .. }))),
                ];
                gpu.launch_elems(support::ROPE, n * heads * (hd / 2), &args)?;
                vec![Val::F32(y)]
            }
            Op::Attention(d) => {
                const OP: &str = "attention_forward";
                let sz = attn_sizes(OP, d)?;
                let ((q, ql), (k, kl), (v, vl)) = (f(0)?, f(1)?, f(2)?);
                len_check(OP, "q", ql, sz.n * sz.qw)?;
                len_check(OP, "k", kl, sz.n * sz.kvw)?;
                len_check(OP, "v", vl, sz.n * sz.kvw)?;
                let o = gpu.alloc::<f32>(ql)?;
                let lse = gpu.alloc::<f32>(d.batch * d.heads * d.seq)?;
                let mut args = vec![
                    KArg::Ptr(q),
                    KArg::Ptr(k),
                    KArg::Ptr(v),
                    KArg::Ptr(o.ptr(gpu)),
                    KArg::Ptr(lse.ptr(gpu)),
                ];
                args.extend(attn_dims(d, sz.scale)?);
                let tasks = d.batch * d.heads * d.seq;
                let shared = attn_shared(OP, d.seq + 32)?;
                gpu.launch(support::ATTENTION_FWD, tasks.min(1 << 24) as u32, 128, shared, &args)?;
                vec![Val::F32(o), Val::F32(lse)]
            }
            Op::AttentionGrad(d) => {
                const OP: &str = "attention_backward";
                let sz = attn_sizes(OP, d)?;
                let ((g, gl), (q, ql), (k, kl), (v, vl), (lse, ll)) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
                len_check(OP, "q", ql, sz.n * sz.qw)?;
                len_check(OP, "k", kl, sz.n * sz.kvw)?;
                len_check(OP, "v", vl, sz.n * sz.kvw)?;
                len_check(OP, "lse", ll, d.batch * d.heads * d.seq)?;
                len_check(OP, "d_o", gl, ql)?;
                let (dq, dk, dv) = (gpu.alloc::<f32>(ql)?, gpu.alloc::<f32>(kl)?, gpu.alloc::<f32>(vl)?);
                let delta = gpu.alloc::<f32>(ll)?;
                let dims = attn_dims(d, sz.scale)?;
                let mut args = vec![
                    KArg::Ptr(g),
                    KArg::Ptr(q),
                    KArg::Ptr(k),
                    KArg::Ptr(v),
                    KArg::Ptr(lse),
                    KArg::Ptr(dq.ptr(gpu)),
                    KArg::Ptr(delta.ptr(gpu)),
                ];
                args.extend(dims.iter().copied());
                let tasks = d.batch * d.heads * d.seq;
                let shared = attn_shared(OP, 2 * d.seq + 32)?;
                gpu.launch(support::ATTENTION_BWD_DQ, tasks.min(1 << 24) as u32, 128, shared, &args)?;
                let mut args = vec![
                    KArg::Ptr(g),
                    KArg::Ptr(q),
                    KArg::Ptr(k),
                    KArg::Ptr(v),
                    KArg::Ptr(lse),
                    KArg::Ptr(delta.ptr(gpu)),
                    KArg::Ptr(dk.ptr(gpu)),
                    KArg::Ptr(dv.ptr(gpu)),
                ];
                args.extend(dims);
                let tasks = d.batch * d.kv_heads * d.seq;
                let shared = attn_shared(OP, 2 * d.seq)?;
                gpu.launch(
                    support::ATTENTION_BWD_DKV,
                    tasks.min(1 << 24) as u32,
                    128,
                    shared,
                    &args,
                )?;
                vec![Val::F32(dq), Val::F32(dk), Val::F32(dv)]
            }
            Op::RmsNormGrad => {
                const OP: &str = "rmsnorm_backward";
                let ((g, gl), (x, xl), (w, d), (rstd, n)) = (f(0)?, f(1)?, f(2)?, f(3)?);
                if d == 0 {
                    return Err(op_err(OpsError::Config {
                        op: OP,
                        msg: "hidden size d must be positive".into(),
                    }));
                }
                len_check(OP, "x", xl, n * d)?;
                len_check(OP, "dy", gl, n * d)?;
                let dx = gpu.alloc::<f32>(xl)?;
                let args = [
                    KArg::Ptr(g),
                    KArg::Ptr(x),
                    KArg::Ptr(w),
                    KArg::Ptr(rstd),
                    KArg::Ptr(dx.ptr(gpu)),
                    int(n, "n")?,
                    int(d, "d")?,
                ];
                gpu.launch_rows(support::RMSNORM_GRAD, n, d, &args)?;
                vec![Val::F32(dx)]
            }
            Op::CrossEntropy { batch, seq, grad } => {
                const OP: &str = "causal_lm_cross_entropy";
                let ((lg, ll), (lbp, lb)) = (f(0)?, ids(1)?);
                let n = batch * seq;
                let vocab = ll / n.max(1);
                len_check(OP, "labels", lb.len(), n)?;
                len_check(OP, "logits", ll, n * vocab)?;
                if vocab == 0 {
                    return Err(op_err(OpsError::Config {
                        op: OP,
                        msg: "vocab must be positive".into(),
                    }));
                }
                let count = count_targets(lb, *seq, vocab)?;
                let inv_n = if count == 0 { 0.0 } else { 1.0 / count as f32 };
                let rows = gpu.alloc::<f32>(n)?;
                let dl = if *grad { Some(gpu.alloc::<f32>(ll)?) } else { None };
                let args = [
                    KArg::Ptr(lg),
                    KArg::Ptr(lbp),
                    KArg::Ptr(rows.ptr(gpu)),
                    KArg::Ptr(dl.as_ref().map_or(0, |b| b.ptr(gpu))),
                    int(n, "n")?,
                    int(*seq, "seq")?,
                    int(vocab, "vocab")?,
                    KArg::F32(inv_n),
                    KArg::F32(grad_scale),
                ];
                gpu.launch_rows(support::CROSS_ENTROPY, n, vocab, &args)?;
                let total: f64 = gpu.download(&rows)?.iter().map(|&v| f64::from(v)).sum();
                let mean = if count == 0 { 0.0 } else { (total / count as f64) as f32 };
                *loss = (mean, count);
                let mut out = vec![Val::F32(gpu.upload(&[mean])?)];
                if let Some(dl) = dl {
                    out.push(Val::F32(dl));
                }
                out
            }
            Op::ParamGrad(p) => {
                let (g, gl) = f(0)?;
                let dst = self
                    .grads
                    .get(*p)
                    .ok_or_else(|| CudaError::Program(format!("no gradient buffer for parameter {p}")))?;
                let dst = dst
                    .as_ref()
                    .ok_or_else(|| CudaError::Program(format!("no gradient buffer for parameter {p}")))?;
                if dst.len() != gl {
                    return Err(CudaError::Program(format!(
                        "gradient of parameter {p}: {gl} entries into {}",
                        dst.len()
                    )));
                }
                gpu.launch_elems(
                    support::ADD_INTO,
                    gl,
                    &[KArg::Ptr(dst.ptr(gpu)), KArg::Ptr(g), long(gl)],
                )?;
                vec![]
            }
            Op::Split { widths } => {
                let (x, xl) = f(0)?;
                let (n, w) = dims2(0)?;
                len_check("split", "x", xl, n * w)?;
                if widths.iter().sum::<usize>() > w {
                    return Err(CudaError::Program(format!("split of {w} columns into {widths:?}")));
                }
                let mut outs = Vec::with_capacity(widths.len());
                let mut at = 0;
                for &c in widths {
                    let y = gpu.alloc::<f32>(n * c)?;
                    let args = [
                        KArg::Ptr(x),
                        KArg::Ptr(y.ptr(gpu)),
                        int(n, "n")?,
                        int(w, "width")?,
                        int(at, "offset")?,
                        int(c, "width")?,
                        KArg::I32(0),
                        int(c, "width")?,
                    ];
                    gpu.launch_elems(support::COPY_COLS, n * c, &args)?;
                    outs.push(Val::F32(y));
                    at += c;
                }
                outs
            }
            Op::Concat { widths } => {
                let n = shapes.first().and_then(|s| s.first()).copied().unwrap_or(0);
                let xs = (0..widths.len()).map(&f).collect::<Result<Vec<_>, _>>()?;
                vec![Val::F32(concat_device(gpu, &xs, n, widths)?)]
            }
            Op::LinearCrossEntropy => {
                return Err(CudaError::Program(
                    "linear_cross_entropy runs on the CPU backend only: plans for CUDA are compiled without it".into(),
                ));
            }
            Op::LinearSplit { widths } => {
                // One GEMM per block, each reading its row block of the stacked
                // weight and writing its own buffer: no whole product, no copy.
                const OP: &str = "linear_split";
                let (xo, wo) = (opnd(0)?, opnd(1)?);
                let ((n, k), (m, _)) = (dims2(0)?, dims2(1)?);
                len_check(OP, "x", xo.1, n * k)?;
                len_check(OP, "w", wo.1, m * k)?;
                if widths.iter().sum::<usize>() != m {
                    return Err(CudaError::Program(format!("linear_split of {m} rows into {widths:?}")));
                }
                let (dt, x, w, _keep) = pair(xo, wo)?;
                let mut outs = Vec::with_capacity(widths.len());
                let mut row = 0usize;
                for &c in widths {
                    let y = gpu.alloc::<f32>(n * c)?;
                    let wb = w + (row * k * dt.bytes()) as u64;
                    gpu.linear(dt, x, wb, y.ptr(gpu), n, k, c, false)?;
                    outs.push(Val::F32(y));
                    row += c;
                }
                outs
            }
            Op::LinearGradInputCat { widths } => {
                // The blocks side by side, then one GEMM by the whole stack.
                const OP: &str = "linear_grad_input_cat";
                let mb = widths.len();
                let n = shapes.first().and_then(|s| s.first()).copied().unwrap_or(0);
                let gs = (0..mb).map(&f).collect::<Result<Vec<_>, _>>()?;
                let cat = concat_device(gpu, &gs, n, widths)?;
                let total: usize = widths.iter().sum();
                let wo = opnd(mb)?;
                let (m, k) = dims2(mb)?;
                len_check(OP, "w", wo.1, m * k)?;
                len_check(OP, "w", m, total)?;
                let dx = gpu.alloc::<f32>(n * k)?;
                let (dt, g, w, _keep) = pair((cat.ptr(gpu), n * total, Dt::F32), wo)?;
                gpu.linear_grad_input(dt, g, w, dx.ptr(gpu), n, k, m)?;
                vec![Val::F32(dx)]
            }
            Op::ShiftLabels { seq } => {
                let (lp, l) = ids(0)?;
                let n = l.len();
                if *seq == 0 || !n.is_multiple_of(*seq) {
                    return Err(CudaError::Program(format!(
                        "shift_labels: {n} labels are not whole sequences of {seq}"
                    )));
                }
                let host: Vec<i64> = (0..n)
                    .map(|i| {
                        if i % seq == seq - 1 {
                            IGNORE_INDEX
                        } else {
                            l.get(i + 1).copied().unwrap_or(IGNORE_INDEX)
                        }
                    })
                    .collect();
                let dev = gpu.alloc::<i64>(n)?;
                let args = [KArg::Ptr(lp), KArg::Ptr(dev.ptr(gpu)), int(n, "n")?, int(*seq, "seq")?];
                gpu.launch_elems(support::SHIFT_LABELS, n, &args)?;
                vec![Val::I64 { dev, host }]
            }
            Op::Fused(k) => self.fused(k, inputs.len(), &f, &ids, &shapes, tokens.len(), grad_scale, loss)?,
        };
        Ok(out)
    }

    /// Launches a generated kernel: operands are its read arguments in
    /// order, outputs its written ones (zeroed first, as the CPU allocates
    /// them), scalars supplied by name (`grad_scale` per counted target).
    #[allow(clippy::too_many_arguments)]
    fn fused<'a>(
        &self,
        k: &Kernel,
        operands: usize,
        f: &dyn Fn(usize) -> Result<(u64, usize), CudaError>,
        ids: &dyn Fn(usize) -> Result<(u64, &'a [i64]), CudaError>,
        shapes: &[&[usize]],
        n_tokens: usize,
        grad_scale: f32,
        loss: &mut (f32, usize),
    ) -> Result<Vec<Val>, CudaError> {
        let gpu = &self.gpu;
        let reads = k.inputs();
        if reads.len() != operands {
            return Err(CudaError::Program(format!(
                "kernel {} reads {} arguments, the instruction has {operands}",
                k.name,
                reads.len()
            )));
        }
        let rows = shapes
            .iter()
            .find_map(|s| if s.len() == 2 { Some(s[0]) } else { None })
            .unwrap_or(n_tokens);
        let count = (0..reads.len())
            .find(|&i| k.args[reads[i]].ty == ArgTy::PerRowI64)
            .and_then(|i| ids(i).ok())
            .map_or(0, |(_, t)| t.iter().filter(|&&v| v >= 0).count());
        let want = |ty: ArgTy| match ty {
            ArgTy::Rows { cols } => rows * cols,
            ArgTy::Vector { len } => len,
            ArgTy::PerRow | ArgTy::PerRowI64 => rows,
            ArgTy::Periodic { period, cols } => period * cols,
            ArgTy::Scalar => 0,
        };
        let mut outs: Vec<DevBuf<f32>> = Vec::new();
        let mut args: Vec<KArg> = Vec::with_capacity(k.args.len() + 1);
        let mut read_at = 0;
        for a in &k.args {
            let bad = |got: usize| {
                CudaError::Program(format!(
                    "kernel {}: argument `{}` has {got} values, expected {}",
                    k.name,
                    a.name,
                    want(a.ty)
                ))
            };
            match (a.access, a.ty) {
                (_, ArgTy::Scalar) => args.push(KArg::F32(match a.name.as_str() {
                    "grad_scale" => grad_scale / count.max(1) as f32,
                    other => return Err(CudaError::Program(format!("no value for scalar `{other}`"))),
                })),
                (Access::Write, _) => {
                    let b = gpu.zeros::<f32>(want(a.ty))?;
                    args.push(KArg::Ptr(b.ptr(gpu)));
                    outs.push(b);
                }
                (Access::ReadWrite, _) => {
                    return Err(CudaError::Program(format!(
                        "kernel {}: argument `{}` is read-write, which a program cannot bind",
                        k.name, a.name
                    )));
                }
                (Access::Read, ArgTy::PerRowI64) => {
                    let (p, host) = ids(read_at)?;
                    read_at += 1;
                    if host.len() != want(a.ty) {
                        return Err(bad(host.len()));
                    }
                    args.push(KArg::Ptr(p));
                }
                (Access::Read, _) => {
                    let (p, len) = f(read_at)?;
                    read_at += 1;
                    if len != want(a.ty) {
                        return Err(bad(len));
                    }
                    args.push(KArg::Ptr(p));
                }
            }
        }
        args.push(int(rows, "rows")?);
        let grid = rows.min(1 << 16) as u32;
        gpu.launch(
            &lamda_compiler::kernel::symbol(&k.name),
            grid,
            block_threads(k),
            0,
            &args,
        )?;
        // A fused cross-entropy reports per-row losses: the step's loss is their mean.
        if let Some(pos) = k.outputs().iter().position(|&a| k.args[a].name == "loss")
            && let Some(b) = outs.get(pos)
        {
            let total: f64 = gpu.download(b)?.iter().map(|&v| f64::from(v)).sum();
            *loss = ((total / count.max(1) as f64) as f32, count);
        }
        Ok(outs.into_iter().map(Val::F32).collect())
    }
}

/// Which of `count` parameters bf16 mode stores in bf16: those that do not
/// train and that `programs` read only as matrices (vectors such as norm
/// weights stay f32). All false in f32 mode.
fn bf16_storage(programs: &[&Program], count: usize, trainable: &[usize], precision: Precision) -> Vec<bool> {
    let mut narrow = vec![precision == Precision::Bf16; count];
    let not_matrices = programs
        .iter()
        .flat_map(|prog| &prog.values)
        .filter(|v| v.ty.shape.len() != 2)
        .filter_map(|v| v.param);
    for p in trainable.iter().copied().chain(not_matrices) {
        if let Some(n) = narrow.get_mut(p) {
            *n = false;
        }
    }
    narrow
}

/// `(n, sum widths)` on the device from the column blocks `xs[i]` (`(n, widths[i])`).
fn concat_device(gpu: &Gpu, xs: &[(u64, usize)], n: usize, widths: &[usize]) -> Result<DevBuf<f32>, CudaError> {
    let total: usize = widths.iter().sum();
    let y = gpu.alloc::<f32>(n * total)?;
    let mut at = 0;
    for (&(x, xl), &c) in xs.iter().zip(widths) {
        len_check("concat", "x", xl, n * c)?;
        let args = [
            KArg::Ptr(x),
            KArg::Ptr(y.ptr(gpu)),
            int(n, "n")?,
            int(c, "width")?,
            KArg::I32(0),
            int(total, "width")?,
            int(at, "offset")?,
            int(c, "width")?,
        ];
        gpu.launch_elems(support::COPY_COLS, n * c, &args)?;
        at += c;
    }
    Ok(y)
}

/// Whether `op` reads operand `slot` in bf16 itself (the GEMMs, and the
/// embedding table); every other bf16 operand is widened to f32 first.
fn reads_bf16(op: &Op, slot: usize) -> bool {
    match op {
        Op::Linear | Op::LinearSplit { .. } | Op::LinearGradInput | Op::LinearGradWeight => slot < 2,
        Op::LinearGradInputCat { widths } => slot == widths.len(),
        Op::LinearAdd => slot == 1 || slot == 2,
        Op::Embedding => slot == 1,
        _ => false,
    }
}

/// For bf16 mode: after which instruction each saved activation is rounded
/// to bf16 (entry i lists the values to convert once instruction i has run).
/// A value qualifies when the memory plan marks it saved (made by the
/// forward, read by the backward), it is not a parameter, the loss or the
/// logits, and it is an f32 matrix of at least two columns: the feature
/// tensors. Per-row statistics (RMSNorm's `rstd (n)`, attention's
/// `lse (batch, H, seq)`) stay f32, as mixed-precision training keeps them.
/// It is converted right after the instruction that makes it, so the forward
/// and the backward read the same rounded values: attention's backward
/// recomputes its probabilities from q and k against the forward's
/// log-sum-exp, which must come from the same q and k.
pub fn bf16_saved_schedule(program: &Program) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); program.instrs.len()];
    for (i, ins) in program.instrs.iter().enumerate() {
        if ins.backward {
            continue;
        }
        for &v in &ins.outputs {
            let Some(info) = program.values.get(v) else { continue };
            let feature =
                info.ty.dtype == lamda_compiler::ir::Dtype::F32 && info.ty.shape.len() == 2 && info.ty.shape[1] >= 2;
            let special = program.loss == Some(v) || program.logits == Some(v);
            if info.saved && info.param.is_none() && feature && !special {
                out[i].push(v);
            }
        }
    }
    out
}

/// Counted positions of unshifted `labels`, validated as the CPU does.
fn count_targets(labels: &[i64], seq: usize, vocab: usize) -> Result<usize, CudaError> {
    let mut count = 0;
    for row in 0..labels.len() {
        if seq == 0 || row % seq == seq - 1 {
            continue;
        }
        let id = labels.get(row + 1).copied().unwrap_or(IGNORE_INDEX);
        if id == IGNORE_INDEX {
            continue;
        }
        if usize::try_from(id).ok().filter(|&t| t < vocab).is_none() {
            return Err(op_err(OpsError::IdOutOfRange {
                op: "causal_lm_cross_entropy",
                row: row + 1,
                id,
                vocab,
            }));
        }
        count += 1;
    }
    Ok(count)
}

struct AttnSizes {
    n: usize,
    qw: usize,
    kvw: usize,
    scale: f32,
}

fn attn_sizes(op: &'static str, d: &AttnDims) -> Result<AttnSizes, CudaError> {
    if d.heads == 0 || d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) {
        return Err(op_err(OpsError::Config {
            op,
            msg: format!(
                "heads ({}) must be a positive multiple of kv_heads ({})",
                d.heads, d.kv_heads
            ),
        }));
    }
    if d.head_dim == 0 {
        return Err(op_err(OpsError::Config {
            op,
            msg: "head_dim must be positive".into(),
        }));
    }
    Ok(AttnSizes {
        n: d.batch * d.seq,
        qw: d.heads * d.head_dim,
        kvw: d.kv_heads * d.head_dim,
        scale: 1.0 / (d.head_dim as f32).sqrt(),
    })
}

/// `batch, seq, heads, kv_heads, hd, scale` as the attention kernels take them.
fn attn_dims(d: &AttnDims, scale: f32) -> Result<[KArg; 6], CudaError> {
    Ok([
        int(d.batch, "batch")?,
        int(d.seq, "seq")?,
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        KArg::F32(scale),
    ])
}

/// Dynamic shared memory of `floats` f32, within the 48 KB every GPU gives a block.
fn attn_shared(op: &'static str, floats: usize) -> Result<u32, CudaError> {
    let bytes = floats * 4;
    if bytes > 48 * 1024 {
        return Err(op_err(OpsError::Config {
            op,
            msg: format!(
                "sequences of more than ~6000 tokens need a tiled attention kernel ({bytes} bytes of shared memory)"
            ),
        }));
    }
    Ok(bytes as u32)
}
