//! Execution backends: the CPU (reference ops, the kernel-IR interpreter, JIT-compiled fused kernels) and CUDA.

pub mod cpu;
pub mod cuda;
