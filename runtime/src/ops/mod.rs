//! CPU kernels of the llama dataflow: forward and backward of every op, and the GEMM.
//!
//! # Layout convention
//!
//! Every kernel takes plain row-major `f32` slices with explicit dimensions.
//! A matrix of shape `(rows, cols)` stores element `(i, j)` at `i * cols + j`;
//! a "vector" `(d)` is a slice of length `d`. Activations are `(n, d)` with one
//! row per token, `n = batch * seq`, and token `t` of sequence `b` at row
//! `b * seq + t`; its RoPE position is `t` (every row is a full sequence,
//! positions `0 .. seq-1`). Attention activations keep the Hugging Face layout
//! before the view/transpose: `q` is `(n, heads * head_dim)`, head `h` in
//! columns `h * head_dim .. (h + 1) * head_dim`. Weights follow SEMANTICS §1:
//! a linear `W` is `(d_out, d_in)` and computes `y = x W^T`.
//!
//! Slices rather than `ndarray` views, because the executor owns flat buffers,
//! the kernels want contiguous rows to hand to rayon (`par_chunks_mut`), and a
//! length check is all the shape validation a row-major buffer needs. Every
//! kernel checks each slice length against its dimensions first and returns
//! [`OpsError`] on a mismatch (or on an out-of-range token id), never panics.
//!
//! # Outputs
//!
//! Outputs are `&mut` slices. Where a kernel is a natural place to fuse an
//! accumulation (a linear writing into the residual stream, a gradient that
//! several consumers add into) it takes a [`Store`] saying whether to
//! overwrite or add; adapter kernels (`y += ...`, `dx += ...`) always add, as
//! their names say. Everything else overwrites.
//!
//! # Precision
//!
//! `f32` storage and `f32` accumulation, as the PyTorch reference does, with
//! two exceptions noted where they occur: the scalar loss is summed in `f64`
//! (n terms, free), and AdamW's bias corrections are formed in `f64` like
//! PyTorch's Python floats. Reductions that feed a weight gradient across rows
//! (RMSNorm `dw`) are summed in a fixed order of fixed chunks, so results do
//! not depend on the thread count.

pub mod adamw;
pub mod adapters;
pub mod attention;
pub mod columns;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod head_loss;
pub mod linear;
pub mod pointwise;
pub mod pool;
pub mod rmsnorm;
pub mod rope;
pub(crate) mod simd;
pub mod vector_state;

#[cfg(test)]
pub(crate) mod testutil;

/// Scratch buffers of finished tasks, for the next tasks (of this call or a
/// later one): a task takes one, grows it to its shapes if needed, and gives
/// it back, so a steady-state training step allocates no scratch. A lock per
/// task (attention: `batch x kv heads` of them per call) costs nothing next
/// to its GEMMs.
pub(crate) struct ScratchPool<T>(std::sync::Mutex<Vec<T>>);

impl<T: Default> ScratchPool<T> {
    pub(crate) const fn new() -> Self {
        ScratchPool(std::sync::Mutex::new(Vec::new()))
    }
    pub(crate) fn take(&self) -> T {
        self.0.lock().ok().and_then(|mut v| v.pop()).unwrap_or_default()
    }
    pub(crate) fn give(&self, t: T) {
        if let Ok(mut v) = self.0.lock() {
            v.push(t);
        }
    }
}

/// Grows `v` to at least `len` values.
pub(crate) fn at_least(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

pub use adamw::{AdamState, AdamW, adamw_step};
pub use adapters::{AdapterShape, lamda_backward, lamda_forward, lora_backward, lora_forward};
pub use attention::{AttnShape, attention_backward, attention_forward};
pub use columns::{concat_cols, split_cols};
pub use cross_entropy::{CrossEntropy, IGNORE_INDEX, causal_lm_cross_entropy};
pub use elementwise::{add_assign, swiglu_backward, swiglu_forward};
pub use embedding::{embedding_backward, embedding_forward};
pub use gemm::{Trans, gemm};
pub use linear::{linear_backward_input, linear_backward_weight, linear_forward};
pub use rmsnorm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{RopeTable, rope_backward, rope_forward, rope_forward_at};

/// Whether a kernel overwrites its output or adds into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// `out = result` (the previous contents are not read; NaNs there vanish).
    Overwrite,
    /// `out += result`.
    Accumulate,
}

/// What a kernel rejects: inconsistent buffer lengths, a bad configuration,
/// or data outside its domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpsError {
    /// A slice does not have the length its dimensions imply.
    #[error("{op}: `{name}` has {got} elements, expected {expected}")]
    Len {
        /// The kernel.
        op: &'static str,
        /// The argument.
        name: &'static str,
        /// Length implied by the dimensions.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Dimensions or hyperparameters that the kernel cannot work with.
    #[error("{op}: {msg}")]
    Config {
        /// The kernel.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A token id or label outside `0 .. vocab` (labels may also be -100).
    #[error("{op}: id {id} at row {row} is outside 0..{vocab}")]
    IdOutOfRange {
        /// The kernel.
        op: &'static str,
        /// Row (token index) of the offending id.
        row: usize,
        /// The id.
        id: i64,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Checks `got == expected` for argument `name` of kernel `op`.
pub(crate) fn check_len(op: &'static str, name: &'static str, got: usize, expected: usize) -> Result<(), OpsError> {
    if got == expected {
        Ok(())
    } else {
        Err(OpsError::Len {
            op,
            name,
            expected,
            got,
        })
    }
}

/// `a * b`, or a [`OpsError::Config`] if the product overflows `usize`.
pub(crate) fn dims(op: &'static str, parts: &[usize]) -> Result<usize, OpsError> {
    parts
        .iter()
        .try_fold(1usize, |acc, &p| acc.checked_mul(p))
        .ok_or_else(|| OpsError::Config {
            op,
            msg: format!("dimensions {parts:?} overflow usize"),
        })
}

/// Rows per rayon task for a row-wise kernel over rows of `d` elements:
/// enough rows that a task touches at least ~16K elements, at least 1.
pub(crate) fn rows_per_task(d: usize) -> usize {
    const MIN_ELEMS: usize = 1 << 14;
    MIN_ELEMS.div_ceil(d.max(1)).max(1)
}
