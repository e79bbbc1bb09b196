//! Execution backends: the CPU (reference ops, the kernel-IR interpreter, JIT-compiled fused kernels).

pub mod cpu;
