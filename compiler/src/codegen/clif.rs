//! Cranelift IR for fused kernels (being written).
