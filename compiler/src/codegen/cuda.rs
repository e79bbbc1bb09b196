//! CUDA C for fused kernels (being written).
