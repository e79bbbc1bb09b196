//! Compiler passes, one per file.
pub mod rank_alloc;
