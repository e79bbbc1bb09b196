//! lamda-compiler: the .lamda front end, the training-step IR, its passes and the Plan.

pub mod adapter;
pub mod codegen;
pub mod consteval;
pub mod diag;
pub mod ir;
pub mod kernel;
pub mod limits;
pub mod model;
pub mod passes;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod resolve;
pub mod schedule;
pub mod spec;
pub mod stdlib;
pub mod suggest;
pub mod syntax;
