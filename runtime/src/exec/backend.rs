//! The `Backend` trait: what a device provides to the one executor (buffers, GEMM, row ops, kernels, AdamW).
//!
//! The executor ([`super::Executor`]) owns everything that does not depend
//! on the device: the run loop over a Program, the value table, shapes (read
//! from the Program, never from buffer lengths), fused-kernel argument
//! binding, loss reduction and target counting. A backend owns storage and
//! arithmetic. Every op gets its operands as views of exactly the length the
//! Program's shapes give, and its dimensions explicitly; an op checks
//! lengths against dimensions before it touches memory, so a backend never
//! reads past a buffer whatever the Program says.
//!
//! Views are `Copy` handles into a buffer (a slice on the CPU, a device
//! address and length on a GPU); a write view is exclusive. Integer values
//! (token ids, labels, shifted targets) keep a host copy in the executor,
//! because target counting and id validation run on the host on every
//! backend, and a backend copy ([`Backend::Ids`]) for kernels to read.

use lamda_compiler::kernel::Kernel;

use super::ExecError;
use crate::ops::AttnShape;

/// The three GEMM forms of a linear layer `y = x W^T` and its gradients
/// (row-major; `n` rows of activations, `w` is `(m, k)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gemm {
    /// `y (n, m) = x (n, k) W^T`.
    Forward,
    /// `dx (n, k) = g (n, m) W`.
    GradInput,
    /// `dW (m, k) = g (n, m)^T x (n, k)`.
    GradWeight,
}

/// Elementwise ops over equal-length operands (`ColScale`: `x (n, k)` times a `(k)` vector per row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pointwise {
    /// `y = c x`.
    Scale(f32),
    /// `y = a + b`.
    Add,
    /// `y = a b`.
    Mul,
    /// `y = x sigmoid(x)`.
    Silu,
    /// `y = g d/dx silu(x)` (a = g, b = x).
    SiluGrad,
    /// `y[i, j] = x[i, j] v[j]`.
    ColScale,
}

/// An integer operand: the host copy (for checks) and the backend copy (for kernels).
pub struct IdsRef<'a, B: Backend + ?Sized> {
    /// (len)
    pub host: &'a [i64],
    /// The same values on the backend.
    pub dev: &'a B::Ids,
}

impl<B: Backend + ?Sized> Clone for IdsRef<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for IdsRef<'_, B> {}

/// One argument of a fused-kernel launch, in kernel argument order.
pub enum KernelArg<'a, B: Backend + ?Sized + 'a> {
    /// A read buffer.
    Read(B::View<'a>),
    /// A written (or read-written) buffer.
    Write(B::ViewMut<'a>),
    /// Per-row integer targets.
    Ids(IdsRef<'a, B>),
    /// A scalar launch parameter.
    Scalar(f32),
}

/// The loss of a cross-entropy op: the sum over counted positions (f64) and their number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSum {
    pub sum: f64,
    pub count: usize,
}

/// A device: storage and arithmetic for the executor. See the module doc.
pub trait Backend: 'static {
    /// An owned f32 buffer (a pool slot, a parameter, a gradient, an optimizer moment).
    type Buf: Default;
    /// An owned i64 buffer.
    type Ids: Default;
    /// Read access to `len` values of a buffer.
    type View<'a>: Copy
    where
        Self: 'a;
    /// Exclusive write access to `len` values of a buffer.
    type ViewMut<'a>
    where
        Self: 'a;

    // ------------------------------------------------------------- storage

    /// `len` zeros.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf, ExecError>;
    /// Values a buffer holds.
    fn buf_len(buf: &Self::Buf) -> usize;
    /// Values `start .. start + len` of `buf`.
    fn view<'a>(buf: &'a Self::Buf, start: usize, len: usize) -> Result<Self::View<'a>, ExecError>;
    /// The first `len` values of `buf`, to write.
    fn view_mut<'a>(buf: &'a mut Self::Buf, len: usize) -> Result<Self::ViewMut<'a>, ExecError>;
    /// A shorter-lived write view of the same values.
    fn reborrow<'s>(v: &'s mut Self::ViewMut<'_>) -> Self::ViewMut<'s>;
    /// Copies `host` into `dst` (grown if it is shorter).
    fn set_ids(&mut self, host: &[i64], dst: &mut Self::Ids) -> Result<(), ExecError>;
    /// Copies `x` to the host (replacing what `out` held).
    fn download(&mut self, x: Self::View<'_>, out: &mut Vec<f32>) -> Result<(), ExecError>;
    /// Copies `host` into `y` (same length).
    fn upload(&mut self, host: &[f32], y: Self::ViewMut<'_>) -> Result<(), ExecError>;
    /// Sets `y` to zeros.
    fn zero(&mut self, y: Self::ViewMut<'_>) -> Result<(), ExecError>;
    /// `y = x` (same length).
    fn copy(&mut self, x: Self::View<'_>, y: Self::ViewMut<'_>) -> Result<(), ExecError>;

    /// Called with every saved activation (a forward value the backward
    /// reads; not the loss or the logits) of shape `shape` right after the
    /// instruction that made it: a backend may round it to its storage
    /// precision there. The default keeps it as it is.
    fn saved(&mut self, _y: Self::ViewMut<'_>, _shape: &[usize]) -> Result<(), ExecError> {
        Ok(())
    }

    // ------------------------------------------------------------- ops

    /// `y (n, d)`: rows `ids[i]` of `table (vocab, d)`.
    fn embedding(
        &mut self,
        ids: IdsRef<'_, Self>,
        table: Self::View<'_>,
        vocab: usize,
        d: usize,
        y: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// RMSNorm of `x (n, d)` with weight `w (d)`: `y (n, d)` and the reciprocal RMS `rstd (n)`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &mut self,
        x: Self::View<'_>,
        w: Self::View<'_>,
        n: usize,
        d: usize,
        eps: f32,
        y: Self::ViewMut<'_>,
        rstd: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// The input gradient of RMSNorm: `dx (n, d)` from `g`, `x`, `w`, `rstd`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_grad(
        &mut self,
        g: Self::View<'_>,
        x: Self::View<'_>,
        w: Self::View<'_>,
        rstd: Self::View<'_>,
        n: usize,
        d: usize,
        dx: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// One GEMM of a linear layer (see [`Gemm`]); `accumulate` adds into `c` instead of overwriting it.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        form: Gemm,
        a: Self::View<'_>,
        b: Self::View<'_>,
        n: usize,
        k: usize,
        m: usize,
        c: Self::ViewMut<'_>,
        accumulate: bool,
    ) -> Result<(), ExecError>;

    /// `ys[i] (n, widths[i])` = the column blocks of `x (n, k) W^T` for a stacked `w (sum widths, k)`.
    fn linear_split(
        &mut self,
        x: Self::View<'_>,
        w: Self::View<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        ys: &mut [Self::ViewMut<'_>],
    ) -> Result<(), ExecError>;

    /// `dx (n, k) = [g_0 .. g_m] W` for a stacked `w (sum widths, k)`.
    fn linear_grad_input_cat(
        &mut self,
        gs: &[Self::View<'_>],
        w: Self::View<'_>,
        n: usize,
        k: usize,
        widths: &[usize],
        dx: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// `outs[i] (n, widths[i])`: the column blocks of `x (n, sum widths)`.
    fn split_cols(
        &mut self,
        x: Self::View<'_>,
        n: usize,
        widths: &[usize],
        outs: &mut [Self::ViewMut<'_>],
    ) -> Result<(), ExecError>;

    /// `y (n, sum widths)` from the column blocks `xs[i] (n, widths[i])`.
    fn concat_cols(
        &mut self,
        xs: &[Self::View<'_>],
        n: usize,
        widths: &[usize],
        y: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// An elementwise op (see [`Pointwise`]); `b` is the second operand where it has one.
    fn pointwise(
        &mut self,
        op: Pointwise,
        a: Self::View<'_>,
        b: Option<Self::View<'_>>,
        y: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// `dv (k) = sum over rows of g (n, k) * x (n, k)`.
    fn col_scale_grad(
        &mut self,
        g: Self::View<'_>,
        x: Self::View<'_>,
        k: usize,
        dv: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// `db (k)` = the sum of the rows of `g (n, k)`: the gradient of a bias.
    fn col_sum(&mut self, g: Self::View<'_>, k: usize, db: Self::ViewMut<'_>) -> Result<(), ExecError>;

    /// `y (batch, d)`: per sequence of `h (batch * seq, d)` its first row, or
    /// with `mean` the mean of its first `lengths[b]` rows.
    #[allow(clippy::too_many_arguments)]
    fn pool(
        &mut self,
        h: Self::View<'_>,
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        y: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// The gradient of [`Backend::pool`]: `dh (batch * seq, d)` from `g (batch, d)`.
    #[allow(clippy::too_many_arguments)]
    fn pool_grad(
        &mut self,
        g: Self::View<'_>,
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        dh: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// `y (n, heads * head_dim)` = RoPE of `x` at positions `i % seq` (its inverse when `inverse`).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &mut self,
        x: Self::View<'_>,
        n: usize,
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
        inverse: bool,
        y: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// Attention, causal or bidirectional as `shape.causal` says, of
    /// `q (n, heads * head_dim)` against `k, v (n, kv_heads * head_dim)`;
    /// `lens (batch)`, when given, are the sequences' key lengths (each in
    /// `1 ..= seq`; keys past them are masked, see [`crate::ops::attention_forward`]).
    /// Writes `o` like `q`, and the log-sum-exp `lse (batch, heads, seq)` for the backward.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        shape: &AttnShape,
        q: Self::View<'_>,
        k: Self::View<'_>,
        v: Self::View<'_>,
        lens: Option<IdsRef<'_, Self>>,
        o: Self::ViewMut<'_>,
        lse: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// Gradients of [`Backend::attention`] (same `shape` and `lens (batch)`):
    /// `dq`, `dk`, `dv` from `g` (like `o`) and the forward's `lse (batch, heads, seq)`.
    #[allow(clippy::too_many_arguments)]
    fn attention_grad(
        &mut self,
        shape: &AttnShape,
        g: Self::View<'_>,
        q: Self::View<'_>,
        k: Self::View<'_>,
        v: Self::View<'_>,
        lens: Option<IdsRef<'_, Self>>,
        lse: Self::View<'_>,
        dq: Self::ViewMut<'_>,
        dk: Self::ViewMut<'_>,
        dv: Self::ViewMut<'_>,
    ) -> Result<(), ExecError>;

    /// Causal-LM cross-entropy of `logits (batch * seq, vocab)` against `labels`
    /// (position i predicts label i + 1 of its row). With `grad`, writes the
    /// gradient of the mean loss times `grad_scale` (`(batch * seq, vocab)`).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &mut self,
        logits: Self::View<'_>,
        labels: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        vocab: usize,
        grad: Option<(Self::ViewMut<'_>, f32)>,
    ) -> Result<LossSum, ExecError>;

    /// The LM head and its cross-entropy in one chunked pass: per-row losses
    /// `rows (n)` and the head's input gradient `dh (n, d)` times `scale`, for
    /// hidden states `h (n, d)`, head `w (vocab, d)` and targets `t (n)`.
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy(
        &mut self,
        h: Self::View<'_>,
        w: Self::View<'_>,
        targets: IdsRef<'_, Self>,
        n: usize,
        d: usize,
        vocab: usize,
        scale: f32,
        rows: Self::ViewMut<'_>,
        dh: Self::ViewMut<'_>,
    ) -> Result<LossSum, ExecError>;

    /// `dst += src` (a gradient contribution).
    fn add_into(&mut self, dst: Self::ViewMut<'_>, src: Self::View<'_>) -> Result<(), ExecError>;

    /// Runs a generated kernel over `rows` rows, its arguments in kernel order.
    fn launch(&mut self, k: &Kernel, args: &mut [KernelArg<'_, Self>], rows: usize) -> Result<(), ExecError>;

    /// Sum of the values of `x`, in f64 (per-row losses).
    fn sum(&mut self, x: Self::View<'_>) -> Result<f64, ExecError>;

    // ------------------------------------------------------------- optimizer

    /// `sum of x^2` over all of `xs`, accumulated in f64: one value for the
    /// host per call (the step's gradient norm), however many tensors.
    fn sum_sq(&mut self, xs: &[Self::View<'_>]) -> Result<f64, ExecError>;
    /// `x *= s`.
    fn scale_inplace(&mut self, x: Self::ViewMut<'_>, s: f32) -> Result<(), ExecError>;
    /// Zeroes the leading `frozen` columns of `x (len / cols, cols)`.
    fn zero_cols(&mut self, x: Self::ViewMut<'_>, cols: usize, frozen: usize) -> Result<(), ExecError>;
    /// One AdamW step on `p (len / cols, cols)` with gradient `g` and moments
    /// `m`, `v`; `scalars` as [`crate::ops::adamw::fused_scalars`] makes them.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &mut self,
        p: Self::ViewMut<'_>,
        g: Self::View<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
        cols: usize,
        scalars: &[f32; 9],
    ) -> Result<(), ExecError>;
}
