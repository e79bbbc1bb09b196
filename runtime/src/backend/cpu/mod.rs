//! The CPU backend: `runtime/src/ops` (faer GEMM, threaded row ops) plus fused kernels by the Cranelift JIT or the interpreter.
//!
//! Buffers are host `Vec<f32>`; views are slices. Fused kernels run
//! compiled by Cranelift at first use ([`KernelMode::Jit`], the default) or
//! through the reference interpreter ([`KernelMode::Interpret`], for tests);
//! with the JIT, the hottest library kernels run natively ([`native`]).
//! RoPE tables are built once per (seq, head dim, theta) and kept; the
//! stacked GEMMs' narrow-block scratch is grown once and reused.

pub mod interp;
pub mod jit;
pub mod native;

use std::collections::HashMap;

use lamda_compiler::kernel::Kernel;

use crate::exec::ExecError;
use crate::exec::backend::{Backend, Gemm, IdsRef, KernelArg, LossSum, Pointwise};
use crate::ops::{self, AttnShape, OpsError, RopeTable, Store};
use interp::KArg;

/// How fused kernels run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelMode {
    /// Compiled with Cranelift at first use (the default).
    #[default]
    Jit,
    /// The reference interpreter (slow; for tests).
    Interpret,
}

/// The CPU as a [`Backend`]. See the module doc.
#[derive(Default)]
pub struct CpuBackend {
    mode: KernelMode,
    jit: Option<jit::Jit>,
    /// RoPE tables by (seq, head_dim, theta bits).
    rope: HashMap<(usize, usize, u64), RopeTable>,
    /// Scratch of the stacked GEMMs (grows to the largest narrow run, then stays).
    scratch: Vec<f32>,
    /// Which kernels run natively, by kernel name (decided at first launch).
    native: HashMap<String, Option<native::Native>>,
    /// Scratch of the native kernels: the epilogue's B^T (r, d_out) and S^T (r, r), the largest so far.
    native_scratch: Vec<f32>,
    /// The generated AdamW kernel by column count.
    adamw: HashMap<usize, Kernel>,
}

/// The JIT, made at first use.
fn jit_of(jit: &mut Option<jit::Jit>) -> Result<&mut jit::Jit, ExecError> {
    if jit.is_none() {
        *jit = Some(jit::Jit::new().map_err(|e| internal(format!("JIT: {e}")))?);
    }
    jit.as_mut().ok_or_else(|| internal("JIT"))
}

/// Runs `k` over `rows` rows on host slices, as `mode` says.
fn run_kernel(
    mode: KernelMode,
    jit: &mut Option<jit::Jit>,
    k: &Kernel,
    args: &mut [KArg<'_>],
    rows: usize,
) -> Result<(), ExecError> {
    match mode {
        KernelMode::Interpret => interp::run(k, args, rows).map_err(|e| internal(e.to_string())),
        KernelMode::Jit => {
            let compiled = jit_of(jit)?.compile(k).map_err(|e| internal(format!("JIT: {e}")))?;
            compiled.launch(args, rows).map_err(|e| internal(e.to_string()))
        }
    }
}

fn op_err(source: OpsError) -> ExecError {
    ExecError::Op {
        label: String::new(),
        source,
    }
}

fn internal(msg: impl Into<String>) -> ExecError {
    ExecError::Internal(msg.into())
}

fn same_len(op: &'static str, name: &'static str, got: usize, expected: usize) -> Result<(), ExecError> {
    ops::check_len(op, name, got, expected).map_err(op_err)
}

impl CpuBackend {
    /// A backend running fused kernels as `mode` says.
    pub fn new(mode: KernelMode) -> Self {
        CpuBackend {
            mode,
            ..Self::default()
        }
    }

    fn jit(&mut self) -> Result<&mut jit::Jit, ExecError> {
        jit_of(&mut self.jit)
    }

    /// Compiles `kernels` now (with the JIT), so errors and compile time come at plan load.
    pub fn precompile(&mut self, kernels: &[Kernel]) -> Result<(), ExecError> {
        if self.mode != KernelMode::Jit || kernels.is_empty() {
            return Ok(());
        }
        let jit = self.jit()?;
        for k in kernels {
            jit.compile(k).map_err(|e| internal(format!("JIT: {e}")))?;
        }
        Ok(())
    }

    /// Runs one fused kernel over `rows` rows on host slices (JIT or interpreter, by mode).
    /// With the JIT, library kernels that have a native form ([`native`]) run that instead.
    fn launch_host(&mut self, k: &Kernel, args: &mut [KArg<'_>], rows: usize) -> Result<(), ExecError> {
        if self.mode == KernelMode::Jit {
            let native = match self.native.get(k.name.as_str()) {
                Some(&n) => n,
                None => *self.native.entry(k.name.clone()).or_insert(native::Native::of(k)),
            };
            if let Some(n) = native {
                return n
                    .run(k, args, rows, &mut self.native_scratch)
                    .map_err(|e| internal(e.to_string()));
            }
        }
        run_kernel(self.mode, &mut self.jit, k, args, rows)
    }

    fn rope_table(&mut self, seq: usize, head_dim: usize, theta: f64) -> Result<&RopeTable, ExecError> {
        use std::collections::hash_map::Entry;
        match self.rope.entry((seq, head_dim, theta.to_bits())) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => Ok(e.insert(RopeTable::new(seq, head_dim, theta).map_err(op_err)?)),
        }
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Ids = Vec<i64>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>, ExecError> {
        Ok(vec![0.0; len])
    }

    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn view(buf: &Vec<f32>, start: usize, len: usize) -> Result<&[f32], ExecError> {
        buf.get(start..start.saturating_add(len))
            .ok_or_else(|| internal(format!("values {start}..{} of a buffer of {}", start + len, buf.len())))
    }

    fn view_mut(buf: &mut Vec<f32>, len: usize) -> Result<&mut [f32], ExecError> {
        let have = buf.len();
        buf.get_mut(..len)
            .ok_or_else(|| internal(format!("{len} values of a buffer of {have}")))
    }

    fn reborrow<'s>(v: &'s mut &mut [f32]) -> &'s mut [f32] {
        v
    }

    fn set_ids(&mut self, host: &[i64], dst: &mut Vec<i64>) -> Result<(), ExecError> {
        dst.clear();
        dst.extend_from_slice(host);
        Ok(())
    }

    fn download(&mut self, x: &[f32], out: &mut Vec<f32>) -> Result<(), ExecError> {
        out.clear();
        out.extend_from_slice(x);
        Ok(())
    }

    fn upload(&mut self, host: &[f32], y: &mut [f32]) -> Result<(), ExecError> {
        same_len("upload", "y", y.len(), host.len())?;
        y.copy_from_slice(host);
        Ok(())
    }

    fn zero(&mut self, y: &mut [f32]) -> Result<(), ExecError> {
        y.fill(0.0);
        Ok(())
    }

    fn copy(&mut self, x: &[f32], y: &mut [f32]) -> Result<(), ExecError> {
        same_len("copy", "y", y.len(), x.len())?;
        y.copy_from_slice(x);
        Ok(())
    }

    fn embedding(
        &mut self,
        ids: IdsRef<'_, Self>,
        table: &[f32],
        vocab: usize,
        d: usize,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::embedding_forward(table, vocab, d, ids.host, y).map_err(op_err)
    }

    fn rmsnorm(
        &mut self,
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
        y: &mut [f32],
        rstd: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::rmsnorm_forward(x, w, n, d, eps, y, rstd).map_err(op_err)
    }

    fn rmsnorm_grad(
        &mut self,
        g: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
        dx: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::rmsnorm_backward(x, w, rstd, g, n, d, dx, None).map_err(op_err)
    }

    fn gemm(
        &mut self,
        form: Gemm,
        a: &[f32],
        b: &[f32],
        n: usize,
        k: usize,
        m: usize,
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<(), ExecError> {
        let store = if accumulate {
            Store::Accumulate
        } else {
            Store::Overwrite
        };
        match form {
            Gemm::Forward => ops::linear_forward(a, b, n, k, m, c, store),
            Gemm::GradInput => ops::linear_backward_input(a, b, n, k, m, c, store),
            Gemm::GradWeight => ops::linear_backward_weight(a, b, n, k, m, c, store),
        }
        .map_err(op_err)
    }

    fn linear_split(
        &mut self,
        x: &[f32],
        w: &[f32],
        n: usize,
        k: usize,
        widths: &[usize],
        ys: &mut [&mut [f32]],
    ) -> Result<(), ExecError> {
        ops::linear::stacked_linear_forward(x, w, n, k, widths, ys, &mut self.scratch).map_err(op_err)
    }

    fn linear_grad_input_cat(
        &mut self,
        gs: &[&[f32]],
        w: &[f32],
        n: usize,
        k: usize,
        widths: &[usize],
        dx: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::linear::stacked_linear_backward_input(gs, w, n, k, widths, dx, &mut self.scratch).map_err(op_err)
    }

    fn split_cols(&mut self, x: &[f32], n: usize, widths: &[usize], outs: &mut [&mut [f32]]) -> Result<(), ExecError> {
        ops::split_cols(x, n, widths, outs).map_err(op_err)
    }

    fn concat_cols(&mut self, xs: &[&[f32]], n: usize, widths: &[usize], y: &mut [f32]) -> Result<(), ExecError> {
        ops::concat_cols(xs, n, widths, y).map_err(op_err)
    }

    fn pointwise(&mut self, op: Pointwise, a: &[f32], b: Option<&[f32]>, y: &mut [f32]) -> Result<(), ExecError> {
        use ops::pointwise as pw;
        let second = || b.ok_or_else(|| internal(format!("{op:?} needs a second operand")));
        match op {
            Pointwise::Scale(c) => pw::scale(a, c, y),
            Pointwise::Silu => pw::silu(a, y),
            Pointwise::Add => pw::add(a, second()?, y),
            Pointwise::Mul => pw::mul(a, second()?, y),
            Pointwise::SiluGrad => pw::silu_grad(a, second()?, y),
            Pointwise::ColScale => pw::col_scale(a, second()?, y),
        }
        .map_err(op_err)
    }

    fn col_scale_grad(&mut self, g: &[f32], x: &[f32], k: usize, dv: &mut [f32]) -> Result<(), ExecError> {
        same_len("col_scale_grad", "dv", dv.len(), k)?;
        ops::pointwise::col_scale_grad(g, x, dv).map_err(op_err)
    }

    fn col_sum(&mut self, g: &[f32], k: usize, db: &mut [f32]) -> Result<(), ExecError> {
        ops::pool::col_sum(g, k, db).map_err(op_err)
    }

    fn pool(
        &mut self,
        h: &[f32],
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::pool::pool(h, lengths.host, batch, seq, d, mean, y).map_err(op_err)
    }

    fn pool_grad(
        &mut self,
        g: &[f32],
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        dh: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::pool::pool_grad(g, lengths.host, batch, seq, d, mean, dh).map_err(op_err)
    }

    fn rope(
        &mut self,
        x: &[f32],
        n: usize,
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
        inverse: bool,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        same_len("rope", "y", y.len(), x.len())?;
        y.copy_from_slice(x);
        let table = self.rope_table(seq, head_dim, theta)?;
        if inverse {
            ops::rope_backward(table, y, n, heads)
        } else {
            ops::rope_forward(table, y, n, heads)
        }
        .map_err(op_err)
    }

    fn attention(
        &mut self,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: Option<IdsRef<'_, Self>>,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::attention_forward(shape, q, k, v, lens.map(|l| l.host), o, lse).map_err(op_err)
    }

    fn attention_grad(
        &mut self,
        shape: &AttnShape,
        g: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: Option<IdsRef<'_, Self>>,
        lse: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) -> Result<(), ExecError> {
        ops::attention_backward(shape, q, k, v, lens.map(|l| l.host), lse, g, dq, dk, dv).map_err(op_err)
    }

    fn cross_entropy(
        &mut self,
        logits: &[f32],
        labels: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        vocab: usize,
        grad: Option<(&mut [f32], f32)>,
    ) -> Result<LossSum, ExecError> {
        let (dl, scale) = match grad {
            Some((d, s)) => (Some(d), s),
            None => (None, 1.0),
        };
        let scaled = scale != 1.0;
        let mut dl = dl;
        let ce =
            ops::causal_lm_cross_entropy(logits, labels.host, batch, seq, vocab, dl.as_deref_mut()).map_err(op_err)?;
        if let Some(d) = dl
            && scaled
        {
            d.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(LossSum {
            sum: f64::from(ce.loss) * ce.count as f64,
            count: ce.count,
        })
    }

    fn linear_cross_entropy(
        &mut self,
        h: &[f32],
        w: &[f32],
        targets: IdsRef<'_, Self>,
        n: usize,
        d: usize,
        vocab: usize,
        scale: f32,
        rows: &mut [f32],
        dh: &mut [f32],
    ) -> Result<LossSum, ExecError> {
        let r =
            ops::head_loss::linear_cross_entropy(h, w, targets.host, n, d, vocab, scale, rows, dh).map_err(op_err)?;
        Ok(LossSum {
            sum: r.sum,
            count: r.count,
        })
    }

    fn add_into(&mut self, dst: &mut [f32], src: &[f32]) -> Result<(), ExecError> {
        ops::add_assign(dst, src).map_err(op_err)
    }

    fn launch(&mut self, k: &Kernel, args: &mut [KernelArg<'_, Self>], rows: usize) -> Result<(), ExecError> {
        let mut host: smallvec::SmallVec<[KArg<'_>; 16]> = args
            .iter_mut()
            .map(|a| match a {
                KernelArg::Read(x) => KArg::F32(x),
                KernelArg::Write(y) => KArg::F32Mut(y),
                KernelArg::Ids(t) => KArg::I64(t.host),
                KernelArg::Scalar(s) => KArg::Scalar(*s),
            })
            .collect();
        self.launch_host(k, &mut host, rows)
    }

    fn sum(&mut self, x: &[f32]) -> Result<f64, ExecError> {
        Ok(x.iter().map(|&v| f64::from(v)).sum())
    }

    fn sum_sq(&mut self, xs: &[&[f32]]) -> Result<f64, ExecError> {
        // per tensor, then over tensors: the order the trainer always summed in
        Ok(xs
            .iter()
            .map(|x| x.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
            .sum())
    }

    fn scale_inplace(&mut self, x: &mut [f32], s: f32) -> Result<(), ExecError> {
        x.iter_mut().for_each(|g| *g *= s);
        Ok(())
    }

    fn zero_cols(&mut self, x: &mut [f32], cols: usize, frozen: usize) -> Result<(), ExecError> {
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(internal(format!("{} values are not rows of {cols}", x.len())));
        }
        let f = frozen.min(cols);
        if f > 0 {
            for row in x.chunks_mut(cols) {
                row[..f].fill(0.0);
            }
        }
        Ok(())
    }

    fn adamw(
        &mut self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        cols: usize,
        scalars: &[f32; 9],
    ) -> Result<(), ExecError> {
        if cols == 0 || !p.len().is_multiple_of(cols) {
            return Err(internal(format!("AdamW: {} values are not rows of {cols}", p.len())));
        }
        let rows = p.len() / cols;
        let kernel = self
            .adamw
            .entry(cols)
            .or_insert_with(|| lamda_compiler::kernel::lib::adamw(cols));
        let mut args: smallvec::SmallVec<[KArg<'_>; 16]> =
            smallvec::smallvec![KArg::F32Mut(p), KArg::F32(g), KArg::F32Mut(m), KArg::F32Mut(v)];
        args.extend(scalars.iter().map(|&x| KArg::Scalar(x)));
        run_kernel(self.mode, &mut self.jit, kernel, &mut args, rows)
    }
}
