//! The CPU backend: the reference interpreter of fused kernels (and, with the JIT, compiled ones).

pub mod interp;
