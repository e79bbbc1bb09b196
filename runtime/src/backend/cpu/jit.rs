//! The Cranelift JIT for fused kernels (being written).
