//! lamda-runtime: checkpoints, data and the execution of a compiled Plan.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod classify;
pub mod data;
pub mod describe;
pub mod exec;
pub mod export;
pub mod generate;
pub mod init;
pub mod linalg;
pub mod ops;
pub mod session;
pub mod testkit;
pub mod train;
