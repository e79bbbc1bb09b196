//! CPU kernels of the llama dataflow: forward and backward of every op, and the GEMM.
