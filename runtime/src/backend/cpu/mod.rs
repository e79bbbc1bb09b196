//! The CPU backend: the reference interpreter of fused kernels and the Cranelift JIT.

pub mod interp;
pub mod jit;
