//! Dense linear algebra in float64: the SVD with the sign convention, LaMDA initialisation, spectra for LaMDA++.
//!
//! Every routine takes float32 row-major matrices ([`MatF32Ref`]), does its
//! arithmetic in float64 and rounds to float32 once at the end, as
//! SEMANTICS §1 defines "float64". The submodules:
//!
//! - [`svd`]: thin SVD with the sign convention of SEMANTICS §2;
//! - [`init`]: LaMDA (§3), PiSSA-style and kaiming-uniform LoRA-A initialisation;
//! - [`export`]: LoRA export and merge of a trained LaMDA module (§9);
//! - [`spectrum`]: squared singular values and the LaMDA++ energy score (§8 step 2);
//! - [`top_eigen`]: the r largest eigenpairs of a symmetric matrix (tridiagonalisation, bisection, inverse iteration);
//! - [`rng`]: a small seeded PRNG (splitmix64 / xoshiro256**).

mod dense;
pub mod export;
pub mod init;
pub mod rng;
pub mod spectrum;
pub mod svd;
mod top_eigen;

pub use dense::{MatF32, MatF32Ref};
pub use export::{lora_export_b, merge};
pub use init::{
    LamdaInit, PissaInit, kaiming_uniform, lamda_init, lamda_init_from_svd, lamda_residual, pissa_init,
    pissa_init_from_svd,
};
pub use rng::{SplitMix64, Xoshiro256StarStar};
pub use spectrum::{energy, energy_from_singular_values, energy_from_squared, squared_singular_values};
pub use svd::{EXACT_SVD_MAX_DIM, ThinSvd, thin_svd, top_svd};

/// Errors of the dense linear algebra routines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinalgError {
    /// A buffer does not hold `rows * cols` values.
    #[error("{what}: expected {rows} x {cols} = {expected} values, got {got}")]
    ShapeMismatch {
        /// Which operand.
        what: &'static str,
        /// Rows the caller declared.
        rows: usize,
        /// Columns the caller declared.
        cols: usize,
        /// `rows * cols`.
        expected: usize,
        /// Length of the buffer.
        got: usize,
    },
    /// `rows * cols` overflows `usize`.
    #[error("{what}: {rows} x {cols} overflows the address space")]
    ShapeOverflow {
        /// Which operand.
        what: &'static str,
        /// Rows the caller declared.
        rows: usize,
        /// Columns the caller declared.
        cols: usize,
    },
    /// Two operands disagree on a shared dimension.
    #[error("{what}: expected {expected_rows} x {expected_cols}, got {rows} x {cols}")]
    DimMismatch {
        /// Which operand.
        what: &'static str,
        /// Rows the operation needs.
        expected_rows: usize,
        /// Columns the operation needs.
        expected_cols: usize,
        /// Rows of the operand.
        rows: usize,
        /// Columns of the operand.
        cols: usize,
    },
    /// A matrix with no rows or no columns where one with entries is needed.
    #[error("{what}: empty matrix ({rows} x {cols})")]
    Empty {
        /// Which operand.
        what: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// A NaN or infinite entry.
    #[error("{what}: entry ({row}, {col}) is not finite ({value})")]
    NonFinite {
        /// Which operand.
        what: &'static str,
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
        /// Its value.
        value: f32,
    },
    /// A rank outside `1 ..= min(d_out, d_in)`.
    #[error("rank {rank} is outside 1..={max} (min(d_out, d_in))")]
    RankOutOfRange {
        /// The requested rank.
        rank: usize,
        /// `min(d_out, d_in)`.
        max: usize,
    },
    /// An all-zero weight has no energy score (SEMANTICS §8 step 2).
    #[error("the weight is all zeros: it has no energy score")]
    ZeroWeight,
    /// faer's SVD did not converge.
    #[error("the SVD of a {rows} x {cols} matrix did not converge")]
    SvdNoConvergence {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// faer's self-adjoint eigensolver did not converge.
    #[error("the eigendecomposition of a {n} x {n} Gram matrix did not converge")]
    EvdNoConvergence {
        /// Order of the Gram matrix.
        n: usize,
    },
}
