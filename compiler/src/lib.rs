//! lamda-compiler: the .lamda front end, the training-step IR, its passes and the Plan.

pub mod passes;
