//! `CudaBackend`: the GPU as a [`Backend`] of the one executor (device buffers, cuBLAS GEMMs, NVRTC kernels).
//!
//! # Design
//!
//! [`crate::exec::Executor`]`<CudaBackend>` runs a program on the GPU: the
//! executor owns the run loop, the value table, the pool of slot buffers
//! laid out by the memory plan, fused-kernel binding, loss reduction and
//! target counting; this file only stores and computes. Buffers
//! ([`CudaBuf`]) are device allocations of f32 values or of bf16 bits;
//! views are `Copy` handles (device address, length, storage) borrowed from
//! them, so an op reads several buffers and writes others without Rust
//! borrows of cudarc slices (one stream, event tracking off: the address is
//! all cudarc would pass). Integer values keep their host copy in the
//! executor; ids are validated on it with the CPU's errors before any kernel
//! reads them.
//!
//! Every op checks the lengths of its views against the dimensions it is
//! given before it launches, so a kernel never indexes past a buffer, and
//! writes into the views the executor gives (it allocates no output).
//! Temporaries (the shifted targets and per-row losses of a cross-entropy,
//! attention's `delta`, the stacked GEMM's concatenated gradient, bf16
//! narrowing and widening copies, `sum_sq` partials) are carved out of one
//! scratch device buffer, grown to the largest need and then reused. What
//! still allocates on the device: the pool and parameter buffers
//! themselves (the executor's and the caller's, once), the scratch when an
//! op needs more than it ever did, an id buffer that grows, and a RoPE table
//! the first time a (seq, head_dim, theta) is seen. Host-side, `sum` and
//! `sum_sq` read back through a reused staging vector.
//!
//! bf16 mode ([`Precision::Bf16`]): a parameter that never trains may be
//! stored as bf16 bits ([`CudaBackend::param_buffer`], chosen by
//! [`bf16_storage`] / [`plan_bf16_storage`]). GEMMs read a bf16 operand
//! directly (`cublasGemmEx`, f32 accumulation) and round the other operand
//! into the scratch; the embedding reads a bf16 table directly; every other
//! op widens a bf16 operand into the scratch first. Saved activations: the
//! executor's pool is f32, so [`Backend::saved`] rounds each saved feature
//! matrix to bf16 in place, right after the instruction that made it
//! ([`rounds_saved`]) — the values, and so the numerics, of bf16 storage,
//! but not its memory: activation memory is not halved yet (a known gap).
//! Where the old executor ran a GEMM of a rounded activation and an f32
//! (trainable) weight in bf16, this one runs it in f32 on the rounded values.

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;

use lamda_compiler::codegen::cuda::{adamw_kernel, module_kernels, support};
use lamda_compiler::ir::Op;
use lamda_compiler::kernel::{Access, Kernel, lib};
use lamda_compiler::passes::memory_plan::Program;
use lamda_compiler::plan::Plan;
use smallvec::SmallVec;

use super::gpu::{DevBuf, Dt, Gpu, KArg, int, long};
use super::kernels::attn;
use super::{CudaDevice, CudaError};
use crate::data::IGNORE_INDEX;
use crate::exec::ExecError;
use crate::exec::backend::{Backend, Gemm, IdsRef, KernelArg, LossSum, Pointwise};
use crate::ops::{AttnShape, OpsError, RopeTable};

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
    /// Frozen weight matrices stored in bf16 and saved activations rounded
    /// to bf16; trainable parameters, their gradients and AdamW moments in
    /// f32; GEMMs that read a bf16 tensor run with bf16 inputs and f32 accumulation.
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

/// A device buffer: f32 values, bf16 bits, or nothing (the default, which allocates nothing).
#[derive(Default)]
pub enum CudaBuf {
    /// No buffer (length 0).
    #[default]
    None,
    /// (len) f32
    F32(DevBuf<f32>),
    /// (len) bf16 bits
    Bf16(DevBuf<u16>),
}

impl CudaBuf {
    /// Values it holds.
    pub fn len(&self) -> usize {
        match self {
            CudaBuf::None => 0,
            CudaBuf::F32(b) => b.len(),
            CudaBuf::Bf16(b) => b.len(),
        }
    }

    /// Holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it stores bf16 bits.
    pub fn is_bf16(&self) -> bool {
        matches!(self, CudaBuf::Bf16(_))
    }

    /// Device bytes it takes (2 per bf16 value, 4 per f32 one).
    pub fn bytes(&self) -> usize {
        self.len() * self.dt().bytes()
    }

    fn dt(&self) -> Dt {
        match self {
            CudaBuf::Bf16(_) => Dt::Bf16,
            _ => Dt::F32,
        }
    }

    fn addr(&self) -> u64 {
        match self {
            CudaBuf::None => 0,
            CudaBuf::F32(b) => b.addr(),
            CudaBuf::Bf16(b) => b.addr(),
        }
    }
}

/// Read access to `len` values of a [`CudaBuf`] at a device address.
#[derive(Debug, Clone, Copy)]
pub struct CudaView<'a> {
    /// Device address of the first value: (len) values of storage `dt`.
    ptr: u64,
    len: usize,
    dt: Dt,
    _buf: PhantomData<&'a CudaBuf>,
}

/// Exclusive write access to `len` values of a [`CudaBuf`].
#[derive(Debug)]
pub struct CudaViewMut<'a> {
    /// Device address of the first value: (len) values of storage `dt`.
    ptr: u64,
    len: usize,
    dt: Dt,
    _buf: PhantomData<&'a mut CudaBuf>,
}

impl CudaView<'_> {
    /// Values it covers.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Covers no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Key of a cached kernel-IR instance (the module holds it by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KKey {
    /// (d, eps as f32 bits)
    RmsNorm(usize, u32),
    RmsNormGrad(usize),
    /// (width, head_dim, seq, inverse)
    Rope(usize, usize, usize, bool),
    /// (vocab, grad)
    CrossEntropy(usize, bool),
    Silu(usize),
    SiluGrad(usize),
    /// Columns of a row of the AdamW instance.
    AdamW(usize),
}

/// (seq, head_dim, theta bits) of a RoPE table.
type RopeKey = (usize, usize, u64);

/// Device addresses of an op's staged operands or scratch regions.
type Ptrs = SmallVec<[u64; 8]>;

/// Bytes each scratch region is aligned to.
const ALIGN: usize = 256;

/// The GPU as a [`Backend`]. See the module doc.
pub struct CudaBackend {
    gpu: Gpu,
    /// RoPE (cos, sin) tables by (seq, head_dim, theta bits): (seq, head_dim / 2) each.
    rope: HashMap<RopeKey, (DevBuf<f32>, DevBuf<f32>)>,
    precision: Precision,
    /// Temporaries of one op (bytes), grown to the largest need and reused.
    scratch: DevBuf<u8>,
    /// Kernel-IR instances by key (each compiled into the module under its name).
    kernels: HashMap<KKey, Kernel>,
    /// Row widths of the `silu` / `silu_grad` instances in the module.
    silu_widths: (BTreeSet<usize>, BTreeSet<usize>),
    /// Host staging of `sum` (values read back).
    host_f32: Vec<f32>,
    /// Host staging of `sum_sq` (f64 partials).
    host_f64: Vec<f64>,
}

fn op_err(source: OpsError) -> CudaError {
    CudaError::Op {
        label: String::new(),
        source,
    }
}

fn len_check(op: &'static str, name: &'static str, got: usize, expected: usize) -> Result<(), CudaError> {
    crate::ops::check_len(op, name, got, expected).map_err(op_err)
}

fn config(op: &'static str, msg: String) -> CudaError {
    op_err(OpsError::Config { op, msg })
}

/// `x` rounded to bf16 (nearest even; NaN stays NaN), as `lamdac_f32_to_bf16` does.
fn host_bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

/// The address of a written view, which must be f32.
fn out32(op: &str, y: &CudaViewMut<'_>) -> Result<u64, CudaError> {
    match y.dt {
        Dt::F32 => Ok(y.ptr),
        Dt::Bf16 => Err(CudaError::Program(format!(
            "{op}: the output is stored in bf16 (a parameter that never trains); ops write f32"
        ))),
    }
}

/// Which of `count` parameters bf16 mode stores in bf16: those that do not
/// train and that `programs` read only as matrices (vectors such as norm
/// weights stay f32). All false in f32 mode.
pub fn bf16_storage(programs: &[&Program], count: usize, trainable: &[usize], precision: Precision) -> Vec<bool> {
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

/// [`bf16_storage`] for a Plan: its phases' and evaluation programs, the
/// parameters that train in any phase, and RoPE tables (matrices, but small
/// and precision-sensitive) kept f32.
pub fn plan_bf16_storage(plan: &Plan, precision: Precision) -> Vec<bool> {
    let programs: Vec<&Program> = plan.phases.iter().map(|p| &p.program).chain([&plan.eval]).collect();
    let trainable: Vec<usize> = plan
        .phases
        .iter()
        .flat_map(|p| p.trainable.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut narrow = bf16_storage(&programs, plan.params.len(), &trainable, precision);
    for (n, info) in narrow.iter_mut().zip(&plan.params) {
        if matches!(info.role, lamda_compiler::ir::ParamRole::Table(_)) {
            *n = false;
        }
    }
    narrow
}

/// Whether bf16 mode rounds a saved activation of `shape` (the executor
/// passes only saved forward values, never the loss, the logits or a
/// parameter): feature matrices of at least two columns. Per-row
/// statistics (RMSNorm's `rstd (n)`, attention's `lse (batch, H, seq)`)
/// stay f32, as mixed-precision training keeps them.
pub fn rounds_saved(shape: &[usize]) -> bool {
    shape.len() == 2 && shape[1] >= 2
}

/// For bf16 mode: after which instruction each saved activation is rounded
/// to bf16 (entry i lists the values rounded once instruction i has run), as
/// the executor's [`Backend::saved`] calls and [`rounds_saved`] decide: saved
/// f32 values (made by the forward, read by the backward) with a pool slot,
/// not the loss or the logits, that are feature matrices. Rounded right
/// after the instruction that makes them, so the forward and the backward
/// read the same values: attention's backward recomputes its probabilities
/// from q and k against the forward's log-sum-exp, which must come from the
/// same q and k.
pub fn bf16_saved_schedule(program: &Program) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); program.instrs.len()];
    for (i, ins) in program.instrs.iter().enumerate() {
        for &v in &ins.outputs {
            let Some(info) = program.values.get(v) else { continue };
            let special = program.loss == Some(v) || program.logits == Some(v);
            let f32 = info.ty.dtype == lamda_compiler::ir::Dtype::F32;
            if info.saved
                && !special
                && f32
                && info.slot.is_some()
                && info.param.is_none()
                && rounds_saved(&info.ty.shape)
            {
                out[i].push(v);
            }
        }
    }
    out
}

/// Counted positions of unshifted `labels`, validated as the CPU does.
/// The targets of a causal-LM label block that count for the loss
/// ([`crate::exec::count_targets`]), after checking that each of them is in
/// `0 .. vocab` (the CPU op's error for one that is not).
fn count_targets(labels: &[i64], seq: usize, vocab: usize) -> Result<usize, CudaError> {
    let counted = labels
        .iter()
        .enumerate()
        .filter(|&(i, &id)| seq > 0 && i % seq != 0 && id != IGNORE_INDEX);
    for (row, &id) in counted {
        if usize::try_from(id).ok().filter(|&t| t < vocab).is_none() {
            return Err(op_err(OpsError::IdOutOfRange {
                op: "causal_lm_cross_entropy",
                row,
                id,
                vocab,
            }));
        }
    }
    Ok(crate::exec::count_targets(labels, seq))
}

struct AttnSizes {
    n: usize,
    qw: usize,
    kvw: usize,
    scale: f32,
}

fn attn_sizes(op: &'static str, d: &AttnShape) -> Result<AttnSizes, CudaError> {
    if d.heads == 0 || d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) {
        return Err(config(
            op,
            format!(
                "heads ({}) must be a positive multiple of kv_heads ({})",
                d.heads, d.kv_heads
            ),
        ));
    }
    if d.head_dim == 0 {
        return Err(config(op, "head_dim must be positive".into()));
    }
    Ok(AttnSizes {
        n: d.batch * d.seq,
        qw: d.heads * d.head_dim,
        kvw: d.kv_heads * d.head_dim,
        scale: 1.0 / (d.head_dim as f32).sqrt(),
    })
}

/// `batch, seq, heads, kv_heads, hd, scale, causal` as the attention kernels take them.
fn attn_dims(d: &AttnShape, scale: f32) -> Result<[KArg; 7], CudaError> {
    Ok([
        int(d.batch, "batch")?,
        int(d.seq, "seq")?,
        int(d.heads, "heads")?,
        int(d.kv_heads, "kv_heads")?,
        int(d.head_dim, "head_dim")?,
        KArg::F32(scale),
        KArg::I32(i32::from(d.causal)),
    ])
}

/// The device address of the key lengths `lens (batch)` for the attention
/// kernels (0, a null pointer, for full sequences), after checking their host
/// copy as the CPU does ([`AttnShape::check_lens`]).
fn attn_lens(op: &'static str, d: &AttnShape, lens: Option<IdsRef<'_, CudaBackend>>) -> Result<u64, CudaError> {
    d.check_lens(op, lens.map(|l| l.host)).map_err(op_err)?;
    match lens {
        None => Ok(0),
        Some(l) if l.dev.len() >= l.host.len() => Ok(l.dev.addr()),
        Some(l) => Err(CudaError::Program(format!(
            "{op}: the device copy of lens has {} values, the host copy {}",
            l.dev.len(),
            l.host.len()
        ))),
    }
}

/// Dynamic shared memory of `floats` f32, within the 48 KB every GPU gives a block.
fn attn_shared(op: &'static str, floats: usize) -> Result<u32, CudaError> {
    let bytes = floats * 4;
    if bytes > 48 * 1024 {
        return Err(config(
            op,
            format!(
                "sequences of more than ~6000 tokens need a tiled attention kernel ({bytes} bytes of shared memory)"
            ),
        ));
    }
    Ok(bytes as u32)
}

/// The kernel of `key`, made once.
fn kernel_of(cache: &mut HashMap<KKey, Kernel>, key: KKey) -> &Kernel {
    cache.entry(key).or_insert_with(|| match key {
        KKey::RmsNorm(d, eps) => lib::rmsnorm(d, f64::from(f32::from_bits(eps))),
        KKey::RmsNormGrad(d) => lib::rmsnorm_grad(d),
        KKey::Rope(w, hd, seq, false) => lib::rope(w, hd, seq),
        KKey::Rope(w, hd, seq, true) => lib::rope_grad(w, hd, seq),
        KKey::CrossEntropy(v, grad) => lib::cross_entropy(v, grad),
        KKey::Silu(d) => lib::silu(d),
        KKey::SiluGrad(d) => lib::silu_grad(d),
        KKey::AdamW(cols) => adamw_kernel(cols, cols),
    })
}

impl CudaBackend {
    /// A backend on `dev` for `programs`: compiles the module (support
    /// kernels, every fused kernel of the programs and the kernel-IR
    /// instances their unfused ops and AdamW steps run:
    /// `codegen::cuda::module_kernels`) with NVRTC and loads it.
    pub fn new(dev: CudaDevice, programs: &[&Program], opts: CudaOptions) -> Result<CudaBackend, CudaError> {
        let gpu = Gpu::new(dev, &module_kernels(programs.iter().copied()), opts.tf32)?;
        // RMSNorm instances carry their epsilon (f64) in the name: keep the
        // programs' own, keyed by the f32 the executor passes.
        let mut kernels = HashMap::new();
        let mut silu_widths = (BTreeSet::new(), BTreeSet::new());
        for prog in programs {
            for ins in &prog.instrs {
                let last = |i: usize| {
                    ins.inputs
                        .get(i)
                        .and_then(|&v| prog.values.get(v))
                        .and_then(|info| info.ty.shape.last().copied())
                        .filter(|&c| c > 0)
                };
                match &ins.op {
                    Op::RmsNorm { eps } => {
                        if let Some(d) = last(1) {
                            let key = KKey::RmsNorm(d, (eps.0 as f32).to_bits());
                            kernels.entry(key).or_insert_with(|| lib::rmsnorm(d, eps.0));
                        }
                    }
                    Op::Silu => silu_widths.0.extend(last(0)),
                    Op::SiluGrad => silu_widths.1.extend(last(1)),
                    _ => {}
                }
            }
        }
        Ok(CudaBackend {
            gpu,
            rope: HashMap::new(),
            precision: opts.precision,
            scratch: DevBuf::default(),
            kernels,
            silu_widths,
            host_f32: Vec::new(),
            host_f64: Vec::new(),
        })
    }

    /// The GPU it runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.gpu.dev
    }

    /// The NVRTC architecture of its module (`compute_90`).
    pub fn arch(&self) -> &'static str {
        self.gpu.arch()
    }

    /// The storage precision it runs with.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.dev.synchronize()
    }

    /// A parameter buffer holding `host`: bf16 bits (rounded to nearest even)
    /// when `bf16` (see [`bf16_storage`]), f32 otherwise.
    pub fn param_buffer(&mut self, host: &[f32], bf16: bool) -> Result<CudaBuf, CudaError> {
        if bf16 {
            self.gpu.upload(&host_bf16(host)).map(CudaBuf::Bf16)
        } else {
            self.gpu.upload(host).map(CudaBuf::F32)
        }
    }

    /// The values of `b` on the host (widened to f32 when stored in bf16).
    pub fn download_buf(&self, b: &CudaBuf) -> Result<Vec<f32>, CudaError> {
        match b {
            CudaBuf::None => Ok(Vec::new()),
            CudaBuf::F32(d) => self.gpu.download(d),
            CudaBuf::Bf16(d) => Ok(self
                .gpu
                .download(d)?
                .into_iter()
                .map(|h| half::bf16::from_bits(h).to_f32())
                .collect()),
        }
    }

    // ------------------------------------------------------------------ scratch

    /// Regions of `sizes` bytes each in the scratch buffer (grown if it is
    /// too small: the addresses of earlier calls are then stale, so an op
    /// takes all its regions in one call).
    fn scratch(&mut self, sizes: &[usize]) -> Result<Ptrs, CudaError> {
        let mut offsets: SmallVec<[usize; 8]> = SmallVec::new();
        let mut total = 0usize;
        for &s in sizes {
            offsets.push(total);
            total += s.div_ceil(ALIGN) * ALIGN;
        }
        if self.scratch.len() < total {
            // Drop the old one first (stream-ordered free), then allocate.
            self.scratch = DevBuf::default();
            self.scratch = self.gpu.alloc::<u8>(total)?;
        }
        let base = self.scratch.addr();
        Ok(offsets.into_iter().map(|o| base + o as u64).collect())
    }

    /// f32 addresses of `reads` (bf16 ones widened into the scratch) and
    /// `extra` further scratch regions (bytes), from one scratch call.
    fn stage(&mut self, reads: &[CudaView<'_>], extra: &[usize]) -> Result<(Ptrs, Ptrs), CudaError> {
        let mut sizes: SmallVec<[usize; 12]> = reads
            .iter()
            .map(|v| if v.dt == Dt::Bf16 { v.len * 4 } else { 0 })
            .collect();
        sizes.extend_from_slice(extra);
        let regions = self.scratch(&sizes)?;
        let mut ptrs = Ptrs::new();
        for (v, &r) in reads.iter().zip(&regions) {
            if v.dt == Dt::Bf16 {
                self.gpu.widen_bf16(v.ptr, r, v.len)?;
                ptrs.push(r);
            } else {
                ptrs.push(v.ptr);
            }
        }
        Ok((ptrs, regions[reads.len()..].iter().copied().collect()))
    }

    /// Both GEMM operands in one storage: both f32, or both bf16 (an f32
    /// one rounded into the scratch). Returns (storage, a, b).
    fn pair(&mut self, a: CudaView<'_>, b: CudaView<'_>) -> Result<(Dt, u64, u64), CudaError> {
        if a.dt == Dt::F32 && b.dt == Dt::F32 {
            return Ok((Dt::F32, a.ptr, b.ptr));
        }
        let size = |v: &CudaView<'_>| if v.dt == Dt::F32 { v.len * 2 } else { 0 };
        let r = self.scratch(&[size(&a), size(&b)])?;
        let narrow = |v: &CudaView<'_>, at: u64| -> Result<u64, CudaError> {
            if v.dt == Dt::Bf16 {
                return Ok(v.ptr);
            }
            self.gpu.to_bf16(v.ptr, at, v.len)?;
            Ok(at)
        };
        let (pa, pb) = (narrow(&a, r[0])?, narrow(&b, r[1])?);
        Ok((Dt::Bf16, pa, pb))
    }

    /// The largest row width of a `silu` (`grad`: `silu_grad`) instance in the module that divides `len`.
    fn silu_width(&self, grad: bool, len: usize) -> Result<usize, CudaError> {
        let set = if grad { &self.silu_widths.1 } else { &self.silu_widths.0 };
        set.iter()
            .rev()
            .copied()
            .find(|&d| len.is_multiple_of(d))
            .ok_or_else(|| CudaError::Program(format!("no silu kernel in the module for {len} values")))
    }

    fn rope_tables(&mut self, seq: usize, head_dim: usize, theta: f64) -> Result<(u64, u64), CudaError> {
        let key = (seq, head_dim, theta.to_bits());
        if !self.rope.contains_key(&key) {
            let t = RopeTable::new(seq, head_dim, theta).map_err(op_err)?;
            let pair = (self.gpu.upload(t.cos())?, self.gpu.upload(t.sin())?);
            self.rope.insert(key, pair);
        }
        match self.rope.get(&key) {
            Some((c, s)) => Ok((c.addr(), s.addr())),
            None => Err(CudaError::Program("no RoPE table".into())),
        }
    }

    /// `(n, sum widths)` at `y` from the f32 column blocks `xs[i]` (`(n, widths[i])`).
    fn concat_into(&self, xs: &[(u64, usize)], n: usize, widths: &[usize], y: u64) -> Result<(), CudaError> {
        let total: usize = widths.iter().sum();
        let mut at = 0;
        for (&(x, xl), &c) in xs.iter().zip(widths) {
            len_check("concat", "x", xl, n * c)?;
            self.copy_cols(n, c, (x, c, 0), (y, total, at))?;
            at += c;
        }
        Ok(())
    }

    /// `w` columns of `n` rows: from `src` (a `(n, src width)` matrix, from
    /// column `src offset`) to `dst` (likewise): `(address, width, offset)` each.
    fn copy_cols(
        &self,
        n: usize,
        w: usize,
        src: (u64, usize, usize),
        dst: (u64, usize, usize),
    ) -> Result<(), CudaError> {
        let args = [
            KArg::Ptr(src.0),
            KArg::Ptr(dst.0),
            int(n, "n")?,
            int(src.1, "width")?,
            int(src.2, "offset")?,
            int(dst.1, "width")?,
            int(dst.2, "offset")?,
            int(w, "width")?,
        ];
        self.gpu.launch_elems(support::COPY_COLS, n * w, &args)
    }

    // ------------------------------------------------------------------ ops (CudaError)

    fn embedding_impl(
        &mut self,
        ids: IdsRef<'_, Self>,
        table: CudaView<'_>,
        vocab: usize,
        d: usize,
        y: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "embedding_forward";
        len_check(OP, "table", table.len, vocab * d)?;
        for (row, &id) in ids.host.iter().enumerate() {
            if usize::try_from(id).ok().filter(|&t| t < vocab).is_none() {
                return Err(op_err(OpsError::IdOutOfRange { op: OP, row, id, vocab }));
            }
        }
        let n = ids.host.len();
        len_check(OP, "y", y.len, n * d)?;
        let yp = out32(OP, &y)?;
        if d == 0 || n == 0 {
            return Ok(());
        }
        let args = [
            KArg::Ptr(ids.dev.addr()),
            KArg::Ptr(table.ptr),
            KArg::Ptr(yp),
            int(n, "n")?,
            int(d, "d")?,
            int(vocab, "vocab")?,
        ];
        let kernel = match table.dt {
            Dt::F32 => support::EMBEDDING,
            Dt::Bf16 => support::EMBEDDING_BF16,
        };
        self.gpu.launch_rows(kernel, n, d, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_impl(
        &mut self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        n: usize,
        d: usize,
        eps: f32,
        y: CudaViewMut<'_>,
        rstd: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "rmsnorm_forward";
        if d == 0 {
            return Err(config(OP, "hidden size d must be positive".into()));
        }
        len_check(OP, "x", x.len, n * d)?;
        len_check(OP, "w", w.len, d)?;
        len_check(OP, "y", y.len, n * d)?;
        len_check(OP, "rstd", rstd.len, n)?;
        let (yp, rp) = (out32(OP, &y)?, out32(OP, &rstd)?);
        let (p, _) = self.stage(&[x, w], &[])?;
        let k = kernel_of(&mut self.kernels, KKey::RmsNorm(d, eps.to_bits()));
        let args = [
            (KArg::Ptr(p[0]), x.len),
            (KArg::Ptr(p[1]), d),
            (KArg::Ptr(yp), y.len),
            (KArg::Ptr(rp), n),
        ];
        self.gpu.launch_kernel(k, &args, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_grad_impl(
        &mut self,
        g: CudaView<'_>,
        x: CudaView<'_>,
        w: CudaView<'_>,
        rstd: CudaView<'_>,
        n: usize,
        d: usize,
        dx: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "rmsnorm_backward";
        if d == 0 {
            return Err(config(OP, "hidden size d must be positive".into()));
        }
        len_check(OP, "x", x.len, n * d)?;
        len_check(OP, "dy", g.len, n * d)?;
        len_check(OP, "w", w.len, d)?;
        len_check(OP, "rstd", rstd.len, n)?;
        len_check(OP, "dx", dx.len, n * d)?;
        let dp = out32(OP, &dx)?;
        let (p, _) = self.stage(&[g, x, w, rstd], &[])?;
        let k = kernel_of(&mut self.kernels, KKey::RmsNormGrad(d));
        let args = [
            (KArg::Ptr(p[0]), g.len),
            (KArg::Ptr(p[1]), x.len),
            (KArg::Ptr(p[2]), d),
            (KArg::Ptr(p[3]), n),
            (KArg::Ptr(dp), dx.len),
        ];
        self.gpu.launch_kernel(k, &args, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_impl(
        &mut self,
        form: Gemm,
        a: CudaView<'_>,
        b: CudaView<'_>,
        n: usize,
        k: usize,
        m: usize,
        c: CudaViewMut<'_>,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let op = match form {
            Gemm::Forward => {
                len_check("linear_forward", "x", a.len, n * k)?;
                len_check("linear_forward", "w", b.len, m * k)?;
                len_check("linear_forward", "y", c.len, n * m)?;
                "linear_forward"
            }
            Gemm::GradInput => {
                len_check("linear_backward_input", "dy", a.len, n * m)?;
                len_check("linear_backward_input", "w", b.len, m * k)?;
                len_check("linear_backward_input", "dx", c.len, n * k)?;
                "linear_backward_input"
            }
            Gemm::GradWeight => {
                len_check("linear_backward_weight", "dy", a.len, n * m)?;
                len_check("linear_backward_weight", "x", b.len, n * k)?;
                len_check("linear_backward_weight", "dw", c.len, m * k)?;
                "linear_backward_weight"
            }
        };
        let cp = out32(op, &c)?;
        let (dt, pa, pb) = self.pair(a, b)?;
        match form {
            Gemm::Forward => self.gpu.linear(dt, pa, pb, cp, n, k, m, accumulate),
            Gemm::GradInput => self.gpu.linear_grad_input(dt, pa, pb, cp, n, k, m, accumulate),
            Gemm::GradWeight => self.gpu.linear_grad_weight(dt, pa, pb, cp, n, k, m, accumulate),
        }
    }

    fn linear_split_impl(
        &mut self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        ys: &mut [CudaViewMut<'_>],
    ) -> Result<(), CudaError> {
        // One GEMM per block, each reading its row block of the stacked
        // weight and writing its own output: no whole product, no copy.
        const OP: &str = "linear_split";
        let m: usize = widths.iter().sum();
        len_check(OP, "x", x.len, n * k)?;
        len_check(OP, "w", w.len, m * k)?;
        len_check(OP, "outputs", ys.len(), widths.len())?;
        for (y, &c) in ys.iter().zip(widths) {
            len_check(OP, "y", y.len, n * c)?;
            out32(OP, y)?;
        }
        let (dt, xp, wp) = self.pair(x, w)?;
        let mut row = 0usize;
        for (y, &c) in ys.iter().zip(widths) {
            let wb = wp + (row * k * dt.bytes()) as u64;
            self.gpu.linear(dt, xp, wb, y.ptr, n, k, c, false)?;
            row += c;
        }
        Ok(())
    }

    fn linear_grad_input_cat_impl(
        &mut self,
        gs: &[CudaView<'_>],
        w: CudaView<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        dx: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        // The blocks side by side (in the scratch), then one GEMM by the whole stack.
        const OP: &str = "linear_grad_input_cat";
        let total: usize = widths.iter().sum();
        len_check(OP, "w", w.len, total * k)?;
        len_check(OP, "gradients", gs.len(), widths.len())?;
        len_check(OP, "dx", dx.len, n * k)?;
        let dp = out32(OP, &dx)?;
        let mut xs: SmallVec<[(u64, usize); 8]> = SmallVec::new();
        for g in gs {
            if g.dt != Dt::F32 {
                return Err(CudaError::Program(format!("{OP}: a gradient block is stored in bf16")));
            }
            xs.push((g.ptr, g.len));
        }
        let narrow = if w.dt == Dt::Bf16 { n * total * 2 } else { 0 };
        let r = self.scratch(&[n * total * 4, narrow])?;
        self.concat_into(&xs, n, widths, r[0])?;
        let (dt, gp) = if w.dt == Dt::Bf16 {
            self.gpu.to_bf16(r[0], r[1], n * total)?;
            (Dt::Bf16, r[1])
        } else {
            (Dt::F32, r[0])
        };
        self.gpu.linear_grad_input(dt, gp, w.ptr, dp, n, k, total, false)
    }

    fn split_cols_impl(
        &mut self,
        x: CudaView<'_>,
        n: usize,
        widths: &[usize],
        outs: &mut [CudaViewMut<'_>],
    ) -> Result<(), CudaError> {
        const OP: &str = "split";
        let w: usize = widths.iter().sum();
        len_check(OP, "x", x.len, n * w)?;
        len_check(OP, "outputs", outs.len(), widths.len())?;
        for (y, &c) in outs.iter().zip(widths) {
            len_check(OP, "y", y.len, n * c)?;
            out32(OP, y)?;
        }
        let (p, _) = self.stage(&[x], &[])?;
        let mut at = 0;
        for (y, &c) in outs.iter().zip(widths) {
            self.copy_cols(n, c, (p[0], w, at), (y.ptr, c, 0))?;
            at += c;
        }
        Ok(())
    }

    fn concat_cols_impl(
        &mut self,
        xs: &[CudaView<'_>],
        n: usize,
        widths: &[usize],
        y: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "concat";
        let total: usize = widths.iter().sum();
        len_check(OP, "inputs", xs.len(), widths.len())?;
        len_check(OP, "y", y.len, n * total)?;
        let yp = out32(OP, &y)?;
        let (p, _) = self.stage(xs, &[])?;
        let blocks: SmallVec<[(u64, usize); 8]> = p.iter().zip(xs).map(|(&p, x)| (p, x.len)).collect();
        self.concat_into(&blocks, n, widths, yp)
    }

    fn pointwise_impl(
        &mut self,
        op: Pointwise,
        a: CudaView<'_>,
        b: Option<CudaView<'_>>,
        y: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        let name = match op {
            Pointwise::Scale(_) => "scale",
            Pointwise::Add => "add",
            Pointwise::Mul => "mul",
            Pointwise::Silu => "silu",
            Pointwise::SiluGrad => "silu_grad",
            Pointwise::ColScale => "col_scale",
        };
        let len = a.len;
        len_check(name, "y", y.len, len)?;
        let yp = out32(name, &y)?;
        let second = || b.ok_or_else(|| CudaError::Program(format!("{name} needs a second operand")));
        match op {
            Pointwise::Scale(c) => {
                let (p, _) = self.stage(&[a], &[])?;
                let args = [KArg::Ptr(p[0]), KArg::Ptr(yp), KArg::F32(c), long(len)];
                self.gpu.launch_elems(support::SCALE, len, &args)
            }
            Pointwise::Add | Pointwise::Mul => {
                let b = second()?;
                len_check(name, "b", b.len, len)?;
                let kernel = if op == Pointwise::Add {
                    support::ADD
                } else {
                    support::MUL
                };
                let (p, _) = self.stage(&[a, b], &[])?;
                let args = [KArg::Ptr(p[0]), KArg::Ptr(p[1]), KArg::Ptr(yp), long(len)];
                self.gpu.launch_elems(kernel, len, &args)
            }
            Pointwise::ColScale => {
                let v = second()?;
                let k = v.len;
                if k == 0 || !len.is_multiple_of(k) {
                    return Err(config("col_scale", format!("{len} entries are not rows of {k}")));
                }
                let (p, _) = self.stage(&[a, v], &[])?;
                let args = [KArg::Ptr(p[0]), KArg::Ptr(p[1]), KArg::Ptr(yp), long(len), int(k, "k")?];
                self.gpu.launch_elems(support::COL_SCALE, len, &args)
            }
            Pointwise::Silu | Pointwise::SiluGrad => {
                // Elementwise: any instance whose row width divides the length computes the same.
                if len == 0 {
                    return Ok(());
                }
                let grad = op == Pointwise::SiluGrad;
                let cols = self.silu_width(grad, len)?;
                let key = if grad { KKey::SiluGrad(cols) } else { KKey::Silu(cols) };
                let mut reads: SmallVec<[CudaView<'_>; 2]> = SmallVec::new();
                reads.push(a);
                if grad {
                    let x = second()?;
                    len_check(name, "x", x.len, len)?;
                    reads.push(x);
                }
                let (p, _) = self.stage(&reads, &[])?;
                let mut args: SmallVec<[(KArg, usize); 3]> = p.iter().map(|&p| (KArg::Ptr(p), len)).collect();
                args.push((KArg::Ptr(yp), len));
                let k = kernel_of(&mut self.kernels, key);
                self.gpu.launch_kernel(k, &args, len / cols)
            }
        }
    }

    fn col_scale_grad_impl(
        &mut self,
        g: CudaView<'_>,
        x: CudaView<'_>,
        k: usize,
        dv: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "col_scale_grad";
        len_check(OP, "x", x.len, g.len)?;
        len_check(OP, "dv", dv.len, k)?;
        if k == 0 || !g.len.is_multiple_of(k) {
            return Err(config(OP, format!("{} entries are not rows of {k}", g.len)));
        }
        let dp = out32(OP, &dv)?;
        let (p, _) = self.stage(&[g, x], &[])?;
        let args = [
            KArg::Ptr(p[0]),
            KArg::Ptr(p[1]),
            KArg::Ptr(dp),
            int(g.len / k, "n")?,
            int(k, "k")?,
        ];
        self.gpu.launch_elems(support::COL_SCALE_GRAD, k, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_impl(
        &mut self,
        x: CudaView<'_>,
        n: usize,
        heads: usize,
        hd: usize,
        seq: usize,
        theta: f64,
        inverse: bool,
        y: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        let op: &'static str = if inverse { "rope_backward" } else { "rope_forward" };
        len_check(op, "x", x.len, n * heads * hd)?;
        len_check(op, "y", y.len, x.len)?;
        if seq == 0 || !n.is_multiple_of(seq) {
            return Err(config(
                op,
                format!("n = {n} rows is not a whole number of sequences of {seq}"),
            ));
        }
        let yp = out32(op, &y)?;
        let (cos, sin) = self.rope_tables(seq, hd, theta)?;
        let (p, _) = self.stage(&[x], &[])?;
        let table = seq * (hd / 2);
        let args = [
            (KArg::Ptr(p[0]), x.len),
            (KArg::Ptr(cos), table),
            (KArg::Ptr(sin), table),
            (KArg::Ptr(yp), y.len),
        ];
        let k = kernel_of(&mut self.kernels, KKey::Rope(heads * hd, hd, seq, inverse));
        self.gpu.launch_kernel(k, &args, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_impl(
        &mut self,
        d: &AttnShape,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        lens: Option<IdsRef<'_, Self>>,
        o: CudaViewMut<'_>,
        lse: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "attention_forward";
        let sz = attn_sizes(OP, d)?;
        len_check(OP, "q", q.len, sz.n * sz.qw)?;
        len_check(OP, "k", k.len, sz.n * sz.kvw)?;
        len_check(OP, "v", v.len, sz.n * sz.kvw)?;
        len_check(OP, "o", o.len, q.len)?;
        len_check(OP, "lse", lse.len, d.batch * d.heads * d.seq)?;
        let lens = attn_lens(OP, d, lens)?;
        let (op, lp) = (out32(OP, &o)?, out32(OP, &lse)?);
        let shared = attn_shared(OP, d.seq + 32)?;
        let (p, _) = self.stage(&[q, k, v], &[])?;
        let mut args: SmallVec<[KArg; 13]> = SmallVec::new();
        args.extend([
            KArg::Ptr(p[0]),
            KArg::Ptr(p[1]),
            KArg::Ptr(p[2]),
            KArg::Ptr(lens),
            KArg::Ptr(op),
            KArg::Ptr(lp),
        ]);
        args.extend(attn_dims(d, sz.scale)?);
        let tasks = d.batch * d.heads * d.seq;
        self.gpu
            .launch(attn::FWD, tasks.min(1 << 24) as u32, 128, shared, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_grad_impl(
        &mut self,
        d: &AttnShape,
        g: CudaView<'_>,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        lens: Option<IdsRef<'_, Self>>,
        lse: CudaView<'_>,
        dq: CudaViewMut<'_>,
        dk: CudaViewMut<'_>,
        dv: CudaViewMut<'_>,
    ) -> Result<(), CudaError> {
        const OP: &str = "attention_backward";
        let sz = attn_sizes(OP, d)?;
        let ll = d.batch * d.heads * d.seq;
        len_check(OP, "q", q.len, sz.n * sz.qw)?;
        len_check(OP, "k", k.len, sz.n * sz.kvw)?;
        len_check(OP, "v", v.len, sz.n * sz.kvw)?;
        len_check(OP, "lse", lse.len, ll)?;
        len_check(OP, "d_o", g.len, q.len)?;
        len_check(OP, "dq", dq.len, q.len)?;
        len_check(OP, "dk", dk.len, k.len)?;
        len_check(OP, "dv", dv.len, v.len)?;
        let lp = attn_lens(OP, d, lens)?;
        let (dqp, dkp, dvp) = (out32(OP, &dq)?, out32(OP, &dk)?, out32(OP, &dv)?);
        let shared_dq = attn_shared(OP, 2 * d.seq + 32)?;
        let shared_dkv = attn_shared(OP, 2 * d.seq)?;
        let (p, r) = self.stage(&[g, q, k, v, lse], &[ll * 4])?;
        let delta = r[0];
        let dims = attn_dims(d, sz.scale)?;
        let mut args: SmallVec<[KArg; 16]> = SmallVec::new();
        args.extend([
            KArg::Ptr(p[0]),
            KArg::Ptr(p[1]),
            KArg::Ptr(p[2]),
            KArg::Ptr(p[3]),
            KArg::Ptr(lp),
            KArg::Ptr(p[4]),
            KArg::Ptr(dqp),
            KArg::Ptr(delta),
        ]);
        args.extend(dims.iter().copied());
        let tasks = d.batch * d.heads * d.seq;
        self.gpu
            .launch(attn::BWD_DQ, tasks.min(1 << 24) as u32, 128, shared_dq, &args)?;
        let mut args: SmallVec<[KArg; 16]> = SmallVec::new();
        args.extend([
            KArg::Ptr(p[0]),
            KArg::Ptr(p[1]),
            KArg::Ptr(p[2]),
            KArg::Ptr(p[3]),
            KArg::Ptr(lp),
            KArg::Ptr(p[4]),
            KArg::Ptr(delta),
            KArg::Ptr(dkp),
            KArg::Ptr(dvp),
        ]);
        args.extend(dims);
        let tasks = d.batch * d.kv_heads * d.seq;
        self.gpu
            .launch(attn::BWD_DKV, tasks.min(1 << 24) as u32, 128, shared_dkv, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_impl(
        &mut self,
        logits: CudaView<'_>,
        labels: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        vocab: usize,
        grad: Option<(CudaViewMut<'_>, f32)>,
    ) -> Result<LossSum, CudaError> {
        const OP: &str = "causal_lm_cross_entropy";
        let n = batch * seq;
        len_check(OP, "labels", labels.host.len(), n)?;
        len_check(OP, "logits", logits.len, n * vocab)?;
        if vocab == 0 {
            return Err(config(OP, "vocab must be positive".into()));
        }
        if let Some((dl, _)) = &grad {
            len_check(OP, "dlogits", dl.len, logits.len)?;
            out32(OP, dl)?;
        }
        let count = count_targets(labels.host, seq, vocab)?;
        // The kernel-IR cross-entropy reads targets already shifted (-100 at a
        // sequence end) and the scale of its gradient per counted target.
        let (p, r) = self.stage(&[logits], &[n * 8, n * 4])?;
        let (targets, rows) = (r[0], r[1]);
        let shift = [
            KArg::Ptr(labels.dev.addr()),
            KArg::Ptr(targets),
            int(n, "n")?,
            int(seq, "seq")?,
        ];
        self.gpu.launch_elems(support::SHIFT_LABELS, n, &shift)?;
        let mut args: SmallVec<[(KArg, usize); 5]> = SmallVec::new();
        args.extend([
            (KArg::Ptr(p[0]), logits.len),
            (KArg::Ptr(targets), n),
            (KArg::Ptr(rows), n),
        ]);
        if let Some((dl, scale)) = &grad {
            args.push((KArg::F32(scale / count.max(1) as f32), 0));
            args.push((KArg::Ptr(dl.ptr), dl.len));
        }
        let k = kernel_of(&mut self.kernels, KKey::CrossEntropy(vocab, grad.is_some()));
        self.gpu.launch_kernel(k, &args, n)?;
        let sum = self.sum_at(rows, n)?;
        Ok(LossSum { sum, count })
    }

    /// Sum of `len` f32 values at `ptr`, in f64 on the host.
    fn sum_at(&mut self, ptr: u64, len: usize) -> Result<f64, CudaError> {
        let mut host = std::mem::take(&mut self.host_f32);
        host.clear();
        host.resize(len, 0.0);
        let res = self.gpu.read_at(ptr, &mut host);
        let total = host.iter().map(|&v| f64::from(v)).sum();
        self.host_f32 = host;
        res.map(|()| total)
    }

    fn launch_impl(&mut self, k: &Kernel, args: &mut [KernelArg<'_, Self>], rows: usize) -> Result<(), CudaError> {
        if args.len() != k.args.len() {
            return Err(CudaError::Program(format!(
                "kernel {} takes {} arguments, got {}",
                k.name,
                k.args.len(),
                args.len()
            )));
        }
        let mut reads: SmallVec<[CudaView<'_>; 16]> = SmallVec::new();
        for (a, arg) in k.args.iter().zip(args.iter()) {
            if let KernelArg::Read(v) = arg {
                if a.access == Access::ReadWrite {
                    return Err(CudaError::Program(format!(
                        "kernel {}: argument `{}` is read-write, which a program cannot bind",
                        k.name, a.name
                    )));
                }
                reads.push(*v);
            }
        }
        let (p, _) = self.stage(&reads, &[])?;
        let mut read_at = 0;
        let mut dargs: SmallVec<[(KArg, usize); 16]> = SmallVec::new();
        for arg in args.iter() {
            dargs.push(match arg {
                KernelArg::Read(v) => {
                    read_at += 1;
                    (KArg::Ptr(p[read_at - 1]), v.len)
                }
                KernelArg::Write(y) => (KArg::Ptr(out32(&k.name, y)?), y.len),
                KernelArg::Ids(t) => (KArg::Ptr(t.dev.addr()), t.host.len()),
                KernelArg::Scalar(s) => (KArg::F32(*s), 0),
            });
        }
        self.gpu.launch_kernel(k, &dargs, rows)
    }

    fn sum_sq_impl(&mut self, x: CudaView<'_>) -> Result<f64, CudaError> {
        if x.len == 0 {
            return Ok(0.0);
        }
        let grid = x.len.div_ceil(256).min(1024);
        let (p, r) = self.stage(&[x], &[grid * 8])?;
        let args = [KArg::Ptr(p[0]), long(x.len), KArg::Ptr(r[0])];
        self.gpu.launch(support::SUM_SQ, grid as u32, 256, 0, &args)?;
        let mut host = std::mem::take(&mut self.host_f64);
        host.clear();
        host.resize(grid, 0.0);
        let res = self.gpu.read_at(r[0], &mut host);
        let total = host.iter().sum::<f64>();
        self.host_f64 = host;
        res.map(|()| total)
    }

    /// `sum of x^2` over all of `xs` with one read to the host: every
    /// tensor's block partials (f64) go to one scratch region, read at once.
    /// A bf16 tensor (never a gradient) goes through [`Self::sum_sq_impl`].
    fn sum_sq_many(&mut self, xs: &[CudaView<'_>]) -> Result<f64, CudaError> {
        let grid = |len: usize| len.div_ceil(256).min(1024);
        let mut total = 0.0;
        let mut blocks = 0usize;
        for x in xs {
            if x.dt == Dt::Bf16 {
                total += self.sum_sq_impl(*x)?;
            } else if x.len > 0 {
                blocks += grid(x.len);
            }
        }
        if blocks == 0 {
            return Ok(total);
        }
        let (_, r) = self.stage(&[], &[blocks * 8])?;
        let mut at = 0usize;
        for x in xs.iter().filter(|x| x.dt == Dt::F32 && x.len > 0) {
            let g = grid(x.len);
            let args = [KArg::Ptr(x.ptr), long(x.len), KArg::Ptr(r[0] + (at * 8) as u64)];
            self.gpu.launch(support::SUM_SQ, g as u32, 256, 0, &args)?;
            at += g;
        }
        let mut host = std::mem::take(&mut self.host_f64);
        host.clear();
        host.resize(blocks, 0.0);
        let res = self.gpu.read_at(r[0], &mut host);
        // per tensor, then over tensors, as the CPU sums
        let mut at = 0usize;
        for x in xs.iter().filter(|x| x.dt == Dt::F32 && x.len > 0) {
            let g = grid(x.len);
            total += host[at..at + g].iter().sum::<f64>();
            at += g;
        }
        self.host_f64 = host;
        res.map(|()| total)
    }

    fn adamw_impl(
        &mut self,
        p: CudaViewMut<'_>,
        g: CudaView<'_>,
        m: CudaViewMut<'_>,
        v: CudaViewMut<'_>,
        cols: usize,
        scalars: &[f32; 9],
    ) -> Result<(), CudaError> {
        const OP: &str = "adamw_step";
        let len = p.len;
        if cols == 0 || !len.is_multiple_of(cols) {
            return Err(config(OP, format!("{len} entries do not form rows of {cols} columns")));
        }
        len_check(OP, "grad", g.len, len)?;
        len_check(OP, "exp_avg", m.len, len)?;
        len_check(OP, "exp_avg_sq", v.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let pp = match p.dt {
            Dt::F32 => p.ptr,
            Dt::Bf16 => {
                return Err(CudaError::Program(
                    "the parameter is stored in bf16 because it never trains; it cannot be updated".into(),
                ));
            }
        };
        let (mp, vp) = (out32(OP, &m)?, out32(OP, &v)?);
        let (gp, _) = self.stage(&[g], &[])?;
        // The module's instance: rows of `cols`, or one row of `len` for a vector.
        let kcols = if cols > 1 { cols } else { len };
        let mut args: SmallVec<[(KArg, usize); 13]> = SmallVec::new();
        args.extend([
            (KArg::Ptr(pp), len),
            (KArg::Ptr(gp[0]), len),
            (KArg::Ptr(mp), len),
            (KArg::Ptr(vp), len),
        ]);
        args.extend(scalars.iter().map(|&x| (KArg::F32(x), 0)));
        let k = kernel_of(&mut self.kernels, KKey::AdamW(kcols));
        self.gpu.launch_kernel(k, &args, len / kcols)
    }

    fn copy_impl(&mut self, x: CudaView<'_>, y: CudaViewMut<'_>) -> Result<(), CudaError> {
        len_check("copy", "y", y.len, x.len)?;
        match (x.dt, y.dt) {
            (a, b) if a == b => self.gpu.copy(y.ptr, x.ptr, x.len * a.bytes()),
            (Dt::F32, _) => self.gpu.to_bf16(x.ptr, y.ptr, x.len),
            (Dt::Bf16, _) => self.gpu.widen_bf16(x.ptr, y.ptr, x.len),
        }
    }

    fn upload_impl(&mut self, host: &[f32], y: CudaViewMut<'_>) -> Result<(), CudaError> {
        len_check("upload", "y", y.len, host.len())?;
        match y.dt {
            Dt::F32 => self.gpu.write_at(y.ptr, host),
            Dt::Bf16 => self.gpu.write_at(y.ptr, &host_bf16(host)),
        }
    }

    fn download_impl(&mut self, x: CudaView<'_>, out: &mut Vec<f32>) -> Result<(), CudaError> {
        out.clear();
        match x.dt {
            Dt::F32 => {
                out.resize(x.len, 0.0);
                self.gpu.read_at(x.ptr, out)
            }
            Dt::Bf16 => {
                let mut bits = vec![0u16; x.len];
                self.gpu.read_at(x.ptr, &mut bits)?;
                out.extend(bits.into_iter().map(|h| half::bf16::from_bits(h).to_f32()));
                Ok(())
            }
        }
    }

    fn saved_impl(&mut self, y: CudaViewMut<'_>, shape: &[usize]) -> Result<(), CudaError> {
        if self.precision != Precision::Bf16 || y.dt != Dt::F32 || !rounds_saved(shape) || y.len == 0 {
            return Ok(());
        }
        // Round in place: to bf16 bits in the scratch, then widened back (exact).
        let r = self.scratch(&[y.len * 2])?;
        self.gpu.to_bf16(y.ptr, r[0], y.len)?;
        self.gpu.widen_bf16(r[0], y.ptr, y.len)
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Ids = DevBuf<i64>;
    type View<'a> = CudaView<'a>;
    type ViewMut<'a> = CudaViewMut<'a>;

    fn alloc(&mut self, len: usize) -> Result<CudaBuf, ExecError> {
        Ok(CudaBuf::F32(self.gpu.zeros::<f32>(len)?))
    }

    fn buf_len(buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn view(buf: &CudaBuf, start: usize, len: usize) -> Result<CudaView<'_>, ExecError> {
        if start.saturating_add(len) > buf.len() {
            return Err(ExecError::Internal(format!(
                "values {start}..{} of a buffer of {}",
                start.saturating_add(len),
                buf.len()
            )));
        }
        let dt = buf.dt();
        Ok(CudaView {
            ptr: buf.addr() + (start * dt.bytes()) as u64,
            len,
            dt,
            _buf: PhantomData,
        })
    }

    fn view_mut(buf: &mut CudaBuf, len: usize) -> Result<CudaViewMut<'_>, ExecError> {
        if len > buf.len() {
            return Err(ExecError::Internal(format!(
                "{len} values of a buffer of {}",
                buf.len()
            )));
        }
        Ok(CudaViewMut {
            ptr: buf.addr(),
            len,
            dt: buf.dt(),
            _buf: PhantomData,
        })
    }

    fn reborrow<'s>(v: &'s mut CudaViewMut<'_>) -> CudaViewMut<'s> {
        CudaViewMut {
            ptr: v.ptr,
            len: v.len,
            dt: v.dt,
            _buf: PhantomData,
        }
    }

    fn set_ids(&mut self, host: &[i64], dst: &mut DevBuf<i64>) -> Result<(), ExecError> {
        if dst.len() < host.len() {
            *dst = DevBuf::default();
            *dst = self.gpu.alloc::<i64>(host.len())?;
        }
        Ok(self.gpu.write_at(dst.addr(), host)?)
    }

    fn download(&mut self, x: CudaView<'_>, out: &mut Vec<f32>) -> Result<(), ExecError> {
        Ok(self.download_impl(x, out)?)
    }

    fn upload(&mut self, host: &[f32], y: CudaViewMut<'_>) -> Result<(), ExecError> {
        Ok(self.upload_impl(host, y)?)
    }

    fn zero(&mut self, y: CudaViewMut<'_>) -> Result<(), ExecError> {
        Ok(self.gpu.memset_zero(y.ptr, y.len * y.dt.bytes())?)
    }

    fn copy(&mut self, x: CudaView<'_>, y: CudaViewMut<'_>) -> Result<(), ExecError> {
        Ok(self.copy_impl(x, y)?)
    }

    fn saved(&mut self, y: CudaViewMut<'_>, shape: &[usize]) -> Result<(), ExecError> {
        Ok(self.saved_impl(y, shape)?)
    }

    fn embedding(
        &mut self,
        ids: IdsRef<'_, Self>,
        table: CudaView<'_>,
        vocab: usize,
        d: usize,
        y: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.embedding_impl(ids, table, vocab, d, y)?)
    }

    fn rmsnorm(
        &mut self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        n: usize,
        d: usize,
        eps: f32,
        y: CudaViewMut<'_>,
        rstd: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.rmsnorm_impl(x, w, n, d, eps, y, rstd)?)
    }

    fn rmsnorm_grad(
        &mut self,
        g: CudaView<'_>,
        x: CudaView<'_>,
        w: CudaView<'_>,
        rstd: CudaView<'_>,
        n: usize,
        d: usize,
        dx: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.rmsnorm_grad_impl(g, x, w, rstd, n, d, dx)?)
    }

    fn gemm(
        &mut self,
        form: Gemm,
        a: CudaView<'_>,
        b: CudaView<'_>,
        n: usize,
        k: usize,
        m: usize,
        c: CudaViewMut<'_>,
        accumulate: bool,
    ) -> Result<(), ExecError> {
        Ok(self.gemm_impl(form, a, b, n, k, m, c, accumulate)?)
    }

    fn linear_split(
        &mut self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        ys: &mut [CudaViewMut<'_>],
    ) -> Result<(), ExecError> {
        Ok(self.linear_split_impl(x, w, n, k, widths, ys)?)
    }

    fn linear_grad_input_cat(
        &mut self,
        gs: &[CudaView<'_>],
        w: CudaView<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        dx: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.linear_grad_input_cat_impl(gs, w, n, k, widths, dx)?)
    }

    fn split_cols(
        &mut self,
        x: CudaView<'_>,
        n: usize,
        widths: &[usize],
        outs: &mut [CudaViewMut<'_>],
    ) -> Result<(), ExecError> {
        Ok(self.split_cols_impl(x, n, widths, outs)?)
    }

    fn concat_cols(
        &mut self,
        xs: &[CudaView<'_>],
        n: usize,
        widths: &[usize],
        y: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.concat_cols_impl(xs, n, widths, y)?)
    }

    fn pointwise(
        &mut self,
        op: Pointwise,
        a: CudaView<'_>,
        b: Option<CudaView<'_>>,
        y: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.pointwise_impl(op, a, b, y)?)
    }

    fn col_scale_grad(
        &mut self,
        g: CudaView<'_>,
        x: CudaView<'_>,
        k: usize,
        dv: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.col_scale_grad_impl(g, x, k, dv)?)
    }

    fn col_sum(&mut self, _g: CudaView<'_>, _k: usize, _db: CudaViewMut<'_>) -> Result<(), ExecError> {
        Err(CudaError::Unsupported("col_sum").into())
    }

    fn pool(
        &mut self,
        _h: CudaView<'_>,
        _lengths: IdsRef<'_, Self>,
        _batch: usize,
        _seq: usize,
        _d: usize,
        _mean: bool,
        _y: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Err(CudaError::Unsupported("pool").into())
    }

    fn pool_grad(
        &mut self,
        _g: CudaView<'_>,
        _lengths: IdsRef<'_, Self>,
        _batch: usize,
        _seq: usize,
        _d: usize,
        _mean: bool,
        _dh: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Err(CudaError::Unsupported("pool_grad").into())
    }

    fn rope(
        &mut self,
        x: CudaView<'_>,
        n: usize,
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
        inverse: bool,
        y: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.rope_impl(x, n, heads, head_dim, seq, theta, inverse, y)?)
    }

    fn attention(
        &mut self,
        shape: &AttnShape,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        lens: Option<IdsRef<'_, Self>>,
        o: CudaViewMut<'_>,
        lse: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.attention_impl(shape, q, k, v, lens, o, lse)?)
    }

    fn attention_grad(
        &mut self,
        shape: &AttnShape,
        g: CudaView<'_>,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        lens: Option<IdsRef<'_, Self>>,
        lse: CudaView<'_>,
        dq: CudaViewMut<'_>,
        dk: CudaViewMut<'_>,
        dv: CudaViewMut<'_>,
    ) -> Result<(), ExecError> {
        Ok(self.attention_grad_impl(shape, g, q, k, v, lens, lse, dq, dk, dv)?)
    }

    fn cross_entropy(
        &mut self,
        logits: CudaView<'_>,
        labels: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        vocab: usize,
        grad: Option<(CudaViewMut<'_>, f32)>,
    ) -> Result<LossSum, ExecError> {
        Ok(self.cross_entropy_impl(logits, labels, batch, seq, vocab, grad)?)
    }

    fn linear_cross_entropy(
        &mut self,
        _h: CudaView<'_>,
        _w: CudaView<'_>,
        _targets: IdsRef<'_, Self>,
        _n: usize,
        _d: usize,
        _vocab: usize,
        _scale: f32,
        _rows: CudaViewMut<'_>,
        _dh: CudaViewMut<'_>,
    ) -> Result<LossSum, ExecError> {
        Err(CudaError::Program(
            "linear_cross_entropy runs on the CPU backend only: plans for CUDA are compiled without it".into(),
        )
        .into())
    }

    fn add_into(&mut self, dst: CudaViewMut<'_>, src: CudaView<'_>) -> Result<(), ExecError> {
        len_check("add_into", "src", src.len, dst.len)?;
        let dp = out32("add_into", &dst)?;
        let (p, _) = self.stage(&[src], &[])?;
        let args = [KArg::Ptr(dp), KArg::Ptr(p[0]), long(src.len)];
        Ok(self.gpu.launch_elems(support::ADD_INTO, src.len, &args)?)
    }

    fn launch(&mut self, k: &Kernel, args: &mut [KernelArg<'_, Self>], rows: usize) -> Result<(), ExecError> {
        Ok(self.launch_impl(k, args, rows)?)
    }

    fn sum(&mut self, x: CudaView<'_>) -> Result<f64, ExecError> {
        let (p, _) = self.stage(&[x], &[])?;
        Ok(self.sum_at(p[0], x.len)?)
    }

    fn sum_sq(&mut self, xs: &[CudaView<'_>]) -> Result<f64, ExecError> {
        Ok(self.sum_sq_many(xs)?)
    }

    fn scale_inplace(&mut self, x: CudaViewMut<'_>, s: f32) -> Result<(), ExecError> {
        let p = out32("scale_inplace", &x)?;
        let args = [KArg::Ptr(p), KArg::F32(s), long(x.len)];
        Ok(self.gpu.launch_elems(support::SCALE_INPLACE, x.len, &args)?)
    }

    fn zero_cols(&mut self, x: CudaViewMut<'_>, cols: usize, frozen: usize) -> Result<(), ExecError> {
        if cols == 0 || !x.len.is_multiple_of(cols) {
            return Err(ExecError::Internal(format!("{} values are not rows of {cols}", x.len)));
        }
        let frozen = frozen.min(cols);
        if frozen == 0 {
            return Ok(());
        }
        let p = out32("zero_cols", &x)?;
        let rows = x.len / cols;
        let args = [KArg::Ptr(p), long(rows), int(cols, "cols")?, int(frozen, "frozen")?];
        Ok(self.gpu.launch_elems(support::ZERO_COLS, rows * frozen, &args)?)
    }

    fn adamw(
        &mut self,
        p: CudaViewMut<'_>,
        g: CudaView<'_>,
        m: CudaViewMut<'_>,
        v: CudaViewMut<'_>,
        cols: usize,
        scalars: &[f32; 9],
    ) -> Result<(), ExecError> {
        Ok(self.adamw_impl(p, g, m, v, cols, scalars)?)
    }
}
