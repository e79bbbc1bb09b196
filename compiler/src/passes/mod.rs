//! Compiler passes, one per file; `crate::pipeline` runs them in order.

pub mod adapter_init;
pub mod autodiff;
pub mod encoder_kernels;
pub mod freeze;
pub mod fusion;
pub mod memory_plan;
pub mod rank_alloc;
