//! Lowers the encoder's row ops to kernel-IR instances, in fused and unfused plans alike.
//!
//! LayerNorm, GELU, tanh and the bias add (and their gradients), and the
//! classification loss, have one definition: the kernel-IR instances of
//! `kernel::lib`, which the CPU backend runs through Cranelift (or its
//! interpreter) and the CUDA backend through NVRTC. There is no separate
//! hand-written reference op to keep in step, so this pass runs whether or
//! not the plan fuses; the executor never sees these ops. The loss becomes
//! the generic cross-entropy kernel reading each sequence's class as its
//! target (no shift): per-row losses and the gradient of their mean.

use crate::ir::{Ir, Op};
use crate::kernel::lib;
use crate::passes::fusion::become_kernel;

/// Rewrites every encoder row op of `ir` into a fused kernel; returns how many.
pub fn lower(ir: &mut Ir) -> usize {
    let mut count = 0;
    for id in ir.order() {
        let ins = ir.inputs(id);
        let cols = |ir: &Ir, i: usize| ir.ty(ins[i]).and_then(|t| t.shape.get(1).copied()).unwrap_or(0);
        let k = match ir.graph[id].op {
            Op::LayerNorm { eps } => lib::layernorm(cols(ir, 0), eps.0),
            Op::LayerNormGrad => lib::layernorm_grad(cols(ir, 1)),
            Op::Gelu => lib::gelu(cols(ir, 0)),
            Op::GeluGrad => lib::gelu_grad(cols(ir, 1)),
            Op::Tanh => lib::tanh(cols(ir, 0)),
            Op::TanhGrad => lib::tanh_grad(cols(ir, 1)),
            Op::BiasAdd => lib::bias_add(cols(ir, 0)),
            Op::ClassifyLoss { grad } => lib::cross_entropy(cols(ir, 0), grad),
            _ => continue,
        };
        become_kernel(ir, id, k, &ins);
        count += 1;
    }
    count
}
