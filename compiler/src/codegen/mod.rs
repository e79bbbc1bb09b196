//! Code generators for fused kernels (compiler/src/kernel): Cranelift IR for the CPU, CUDA C for NVRTC.

pub mod clif;
pub mod cuda;
