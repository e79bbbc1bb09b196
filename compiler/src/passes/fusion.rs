//! Fusion: fewer, larger kernels for the same math.
//!
//! Expects a verified IR after autodiff (or a forward-only one). Rewrites,
//! in this order:
//!
//! 1. **Shared-input GEMMs**: frozen-weight `linear`s of the forward program
//!    that read the same value (q, k, v of a layer; gate and up; the frozen
//!    A of a LaMDA adapter next to its base weight, and the A's of siblings)
//!    become one `linear_split` against the weights stacked by rows (a derived
//!    `Concat` parameter): one logical GEMM over `[W_q; W_k; W_v; A_q; A_v]`
//!    yields every projection and every z = A x, each as its own value (the
//!    backend decides whether that is one GEMM and a copy, or one per block).
//! 2. **Adapter epilogues** (small r): `base + c u B^T` with `u = z S^T`
//!    (LaMDA) becomes one kernel that writes u (kept for dB) and y; LoRA's
//!    `base + c (x A^T) B^T` becomes one kernel after the `x A^T` GEMM; the
//!    backward product `(g B) S` of LaMDA becomes one small kernel.
//! 3. **Row kernels**: RMSNorm and its backward, RoPE and its inverse (with
//!    cos/sin tables as derived parameters), SwiGLU (`silu(gate) * up`, whose
//!    backward then needs gate and up, not silu(gate)) and its backward, the
//!    cross-entropy with its softmax and gradient (on targets shifted once).
//! 4. **Residual adds**: `r + x W^T` becomes a GEMM accumulating into a copy
//!    of r (`linear_add`); chains of adds (gradient sums) become one n-ary add.
//!
//! Stacked weights are the only copy of their parts: every other reader of a
//! part (the backward `g W`) reads its row block of the stack (`param_slice`),
//! so the runtime can drop the parts' own buffers.
//!
//! 5. **Stacked backward GEMMs**: when every part of a stack has one backward
//!    product `g_i W_i` and these are all summed into the same input
//!    gradient, they become one `linear_grad_input_cat`: the gradients taken
//!    as column blocks and multiplied by the stack,
//!    `[g_1, ..., g_m] [W_1; ...; W_m] = sum_i g_i W_i`, instead of m GEMMs
//!    plus their m - 1 adds (the concatenation is the backend's choice, not
//!    a value). (Runs before 4.)
//!
//! 0. **LM head + loss** (when asked: a backend that runs it): the head GEMM
//!    `h W^T`, the cross-entropy with gradient, and the head's backward
//!    `dlogits W` become one `linear_cross_entropy` on targets shifted once,
//!    when nothing else reads the logits or their gradient and W is frozen.
//!    The `(tokens, vocab)` logits then never exist whole. (Runs first.)
//!
//! Guarantees: the result verifies; every rewrite computes the same math up
//! to float rounding (tests run fused and unfused plans on the golden cases
//! and on seeded random inputs); parameters that train are never stacked
//! (their gradients stay where autodiff put them). It does not fuse across
//! GEMMs other than the epilogues above.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ir::{F64, Ir, NodeId, Op, ParamInfo, ParamRole, TableKind, TensorType, Value};
use crate::kernel::{Kernel, lib};

/// The largest rank whose adapter epilogue is fused (r multiply-adds per output).
pub const MAX_EPILOGUE_RANK: usize = 32;

/// What fusion did, for tests and `lamdac plan`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FusionStats {
    pub stacked_gemms: usize,
    pub epilogues: usize,
    pub row_kernels: usize,
    pub linear_adds: usize,
    pub add_chains: usize,
    pub stacked_backward: usize,
    pub head_losses: usize,
}

/// Fuses `ir` in place. `trainable`: every parameter that trains in some
/// phase of the run (never stacked: a stacked copy would go stale).
/// `head_loss`: also rewrite 0 (the chunked LM head + cross-entropy).
pub fn fuse(ir: &mut Ir, trainable: &BTreeSet<usize>, head_loss: bool) -> FusionStats {
    let mut st = FusionStats::default();
    if head_loss {
        head_cross_entropy(ir, trainable, &mut st);
    }
    let stacks = stack_gemms(ir, trainable, &mut st);
    epilogues(ir, &mut st);
    row_kernels(ir, &mut st);
    stacked_backward(ir, &stacks, &mut st);
    residual_adds(ir, &mut st);
    add_chains(ir, &mut st);
    ir.remove_dead();
    ir.canonicalize();
    st
}

fn op_at(ir: &Ir, v: Value) -> Option<&Op> {
    ir.graph.node_weight(v.0).map(|n| &n.op)
}

fn param_of(ir: &Ir, v: Value) -> Option<usize> {
    match op_at(ir, v) {
        Some(Op::Param(p)) => Some(*p),
        _ => None,
    }
}

fn ty(ir: &Ir, v: Value) -> TensorType {
    ir.ty(v).cloned().unwrap_or(TensorType::f32(&[]))
}

fn param_node(ir: &mut Ir, p: usize) -> Value {
    let existing = ir.graph.node_indices().find(|&i| ir.graph[i].op == Op::Param(p));
    match existing {
        Some(id) => (id, 0),
        None => {
            let t = TensorType::f32(&ir.params[p].shape);
            let label = ir.params[p].name.clone();
            (ir.add(Op::Param(p), &[], vec![t], label), 0)
        }
    }
}

/// Turns node `id` into a fused kernel with `inputs`, keeping its identity.
pub(crate) fn become_kernel(ir: &mut Ir, id: NodeId, k: Kernel, inputs: &[Value]) {
    let rows = inputs
        .iter()
        .find_map(|&v| ir.ty(v).filter(|t| t.shape.len() == 2).map(|t| t.shape[0]))
        .unwrap_or(ir.n());
    let outputs: Vec<TensorType> = k
        .outputs()
        .iter()
        .map(|&a| match k.args[a].ty {
            crate::kernel::ArgTy::Rows { cols } => TensorType::f32(&[rows, cols]),
            crate::kernel::ArgTy::PerRow => TensorType::f32(&[rows]),
            crate::kernel::ArgTy::Vector { len } => TensorType::f32(&[len]),
            crate::kernel::ArgTy::Periodic { period, cols } => TensorType::f32(&[period, cols]),
            crate::kernel::ArgTy::PerRowI64 => TensorType::i64(&[rows]),
            crate::kernel::ArgTy::Scalar => TensorType::f32(&[1]),
        })
        .collect();
    ir.set_inputs(id, inputs);
    let node = &mut ir.graph[id];
    node.op = Op::Fused(Arc::new(k));
    node.outputs = outputs;
}

// ------------------------------------------------------------------ 0. LM head + loss

fn head_cross_entropy(ir: &mut Ir, trainable: &BTreeSet<usize>, st: &mut FusionStats) {
    for ce in ir.order() {
        let Some(Op::CrossEntropy { seq, grad: true, .. }) = ir.graph.node_weight(ce).map(|n| n.op.clone()) else {
            continue;
        };
        let ins = ir.inputs(ce);
        let (logits, labels) = (ins[0], ins[1]);
        // The logits: a forward `h W^T` read by this cross-entropy alone.
        if op_at(ir, logits) != Some(&Op::Linear) || ir.graph[logits.0].backward || ir.users(logits).len() != 1 {
            continue;
        }
        let [h, w] = ir.inputs(logits.0)[..] else { continue };
        if param_of(ir, w).is_none_or(|p| trainable.contains(&p)) {
            continue;
        }
        // Their gradient: read by one `dlogits W` and nothing else.
        let readers = ir.users((ce, 1));
        let [(g, 0)] = readers[..] else { continue };
        if ir.graph[g].op != Op::LinearGradInput || ir.inputs(g)[1] != w {
            continue;
        }
        let n = ty(ir, h).shape[0];
        let t = ir.add(
            Op::ShiftLabels { seq },
            &[labels],
            vec![TensorType::i64(&[n])],
            "targets",
        );
        // A backward node: it makes the head's input gradient (and the loss).
        let fused = ir.add_backward(
            Op::LinearCrossEntropy,
            &[h, w, (t, 0)],
            vec![TensorType::f32(&[n]), ty(ir, h)],
            "lm_head + loss",
            None,
        );
        ir.replace_uses((ce, 0), (fused, 0));
        ir.replace_uses((g, 0), (fused, 1));
        if ir.logits == Some(logits) {
            ir.logits = None;
        }
        st.head_losses += 1;
    }
}

// ------------------------------------------------------------------ 1. stacked GEMMs

/// A stacked weight, for the backward merge.
struct Stack {
    /// The `Concat` parameter.
    param: usize,
    /// Per part, in stack order: the `param_slice` node that stands for it
    /// (None when no node read the part) and its rows.
    parts: Vec<(Option<NodeId>, usize)>,
}

fn stack_gemms(ir: &mut Ir, trainable: &BTreeSet<usize>, st: &mut FusionStats) -> Vec<Stack> {
    let mut stacks = Vec::new();
    // Forward linears with a frozen parameter weight, grouped by input.
    let mut groups: BTreeMap<Value, Vec<NodeId>> = BTreeMap::new();
    for id in ir.order() {
        let node = &ir.graph[id];
        if node.op != Op::Linear || node.backward {
            continue;
        }
        let ins = ir.inputs(id);
        let Some(p) = param_of(ir, ins[1]) else { continue };
        if trainable.contains(&p) || matches!(ir.params[p].role, ParamRole::Table(_)) {
            continue;
        }
        groups.entry(ins[0]).or_default().push(id);
    }
    for (x, mut members) in groups {
        if members.len() < 2 {
            continue;
        }
        // Widest first (stable): the adapters' rank-r projections end up side
        // by side at the end of the stack, where the runtime multiplies a run
        // of narrow blocks as one GEMM (one `x A^T` of width 3r for q, k, v,
        // and one read-modify-write of dx for their input gradients).
        members.sort_by_key(|&m| {
            let w = param_of(ir, ir.inputs(m)[1]).map_or(0, |p| ir.params[p].shape[0]);
            std::cmp::Reverse(w)
        });
        let weights: Vec<usize> = members.iter().filter_map(|&m| param_of(ir, ir.inputs(m)[1])).collect();
        let widths: Vec<usize> = weights.iter().map(|&p| ir.params[p].shape[0]).collect();
        let k = ir.params[weights[0]].shape[1];
        let rows: usize = widths.iter().sum();
        let name = format!(
            "stack({})",
            weights
                .iter()
                .map(|&p| ir.params[p].name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let p = match ir.params.iter().position(|q| q.name == name) {
            Some(p) => p,
            None => {
                ir.params.push(ParamInfo {
                    name: name.clone(),
                    shape: vec![rows, k],
                    role: ParamRole::Concat { parts: weights.clone() },
                });
                ir.params.len() - 1
            }
        };
        let w = param_node(ir, p);
        let n = ty(ir, x).shape[0];
        let label = ir.graph[members[0]].label.clone();
        let outs = widths.iter().map(|&c| TensorType::f32(&[n, c])).collect();
        let split = ir.add(
            Op::LinearSplit { widths: widths.clone() },
            &[x, w],
            outs,
            format!("{label} (stacked)"),
        );
        for (i, &m) in members.iter().enumerate() {
            ir.replace_uses((m, 0), (split, i as u8));
        }
        // Every other reader of a stacked weight (the backward `g W`) reads its
        // row block of the stack: the stack is the only copy the run keeps.
        let mut start = 0;
        let mut parts = Vec::new();
        for (&wp, &rows_i) in weights.iter().zip(&widths) {
            let len = rows_i * k;
            let mut view = None;
            if let Some(node) = ir.graph.node_indices().find(|&i| ir.graph[i].op == Op::Param(wp)) {
                let t = TensorType::f32(&ir.params[wp].shape);
                let label = ir.params[wp].name.clone();
                let v = ir.add(Op::ParamSlice { param: p, start, len }, &[], vec![t], label);
                ir.replace_uses((node, 0), (v, 0));
                view = Some(v);
            }
            parts.push((view, rows_i));
            start += len;
        }
        stacks.push(Stack { param: p, parts });
        st.stacked_gemms += 1;
    }
    stacks
}

// ------------------------------------------------------------------ 5. stacked backward GEMMs

/// The add tree that `v` is a leaf of: its root (the topmost add reached
/// through adds whose result only the next add reads) and all its leaves,
/// left to right. None when `v`'s only reader is not an add.
fn add_tree(ir: &Ir, v: Value) -> Option<(NodeId, Vec<Value>)> {
    let users = ir.users(v);
    let [(first, _)] = users.as_slice() else { return None };
    if ir.graph[*first].op != Op::Add {
        return None;
    }
    let mut root = *first;
    loop {
        let up = ir.users((root, 0));
        match up.as_slice() {
            [(u, _)] if ir.graph[*u].op == Op::Add => root = *u,
            _ => break,
        }
    }
    let mut leaves = Vec::new();
    let mut stack = vec![(root, 0u8)];
    while let Some(x) = stack.pop() {
        let inner = x.0 == root || (ir.graph[x.0].op == Op::Add && ir.users(x).len() == 1);
        if inner && ir.graph[x.0].op == Op::Add {
            // operands pushed right to left: popped (and listed) left to right
            stack.extend(ir.inputs(x.0).into_iter().rev());
        } else {
            leaves.push(x);
        }
    }
    Some((root, leaves))
}

fn stacked_backward(ir: &mut Ir, stacks: &[Stack], st: &mut FusionStats) {
    for stack in stacks {
        // Per part, its one backward product g_i W_i: (node, g_i).
        let mut products: Vec<(NodeId, Value)> = Vec::new();
        for &(view, _) in &stack.parts {
            let Some(view) = view else { break };
            let readers: Vec<NodeId> = ir
                .users((view, 0))
                .into_iter()
                .filter(|&(u, arg)| arg == 1 && ir.graph[u].op == Op::LinearGradInput && ir.graph[u].backward)
                .map(|(u, _)| u)
                .collect();
            let [u] = readers.as_slice() else { break };
            products.push((*u, ir.inputs(*u)[0]));
        }
        if products.len() != stack.parts.len() || products.len() < 2 {
            continue;
        }
        // All of them summed by one add tree.
        let Some((root, leaves)) = add_tree(ir, (products[0].0, 0)) else {
            continue;
        };
        let mine: BTreeSet<Value> = products.iter().map(|&(u, _)| (u, 0)).collect();
        if !mine.iter().all(|v| leaves.contains(v)) {
            continue;
        }
        let widths: Vec<usize> = stack.parts.iter().map(|&(_, w)| w).collect();
        let rows: usize = widths.iter().sum();
        let out_ty = ty(ir, (root, 0));
        let label = format!("{} (stacked backward)", ir.params[stack.param].name);
        let mut operands: Vec<Value> = products.iter().map(|&(_, g)| g).collect();
        operands.push(param_node(ir, stack.param));
        debug_assert_eq!(widths.iter().sum::<usize>(), rows);
        let mut acc = (
            ir.add_backward(
                Op::LinearGradInputCat { widths },
                &operands,
                vec![out_ty.clone()],
                label,
                None,
            ),
            0,
        );
        for &other in leaves.iter().filter(|v| !mine.contains(v)) {
            acc = (
                ir.add_backward(Op::Add, &[acc, other], vec![out_ty.clone()], "grad sum", None),
                0,
            );
        }
        ir.replace_uses((root, 0), acc);
        st.stacked_backward += 1;
    }
}

// ------------------------------------------------------------------ 2. epilogues

/// `(v, c)`: v with a scale peeled off (`scale[c](w)` -> `(w, c)`).
fn peel_scale(ir: &Ir, v: Value) -> (Value, f64) {
    match op_at(ir, v) {
        Some(Op::Scale { c }) => (ir.inputs(v.0)[0], c.0),
        _ => (v, 1.0),
    }
}

fn epilogues(ir: &mut Ir, st: &mut FusionStats) {
    for id in ir.order() {
        // Only the adds of adapter subgraphs (a base layer's GEMM stays a GEMM).
        if ir.graph[id].op != Op::Add || ir.graph[id].backward || ir.graph[id].adapter.is_none() {
            continue;
        }
        let ins = ir.inputs(id);
        for side in [1usize, 0] {
            let (base, v) = (ins[1 - side], ins[side]);
            let (v, c) = peel_scale(ir, v);
            if op_at(ir, v) != Some(&Op::Linear) || ir.graph[v.0].backward {
                continue;
            }
            let lin = ir.inputs(v.0);
            let (u, b) = (lin[0], lin[1]);
            let Some(bp) = param_of(ir, b).filter(|&p| matches!(ir.params[p].role, ParamRole::Adapter { .. })) else {
                continue;
            };
            let (d_out, r) = (ir.params[bp].shape[0], ir.params[bp].shape[1]);
            if r > MAX_EPILOGUE_RANK || ty(ir, base).shape.get(1) != Some(&d_out) {
                continue;
            }
            // LaMDA: u = z S^T with S a square parameter.
            let lamda = match op_at(ir, u) {
                Some(Op::Linear) if !ir.graph[u.0].backward => {
                    let ui = ir.inputs(u.0);
                    param_of(ir, ui[1])
                        .filter(|&sp| ir.params[sp].shape == [r, r])
                        .map(|_| (ui[0], ui[1]))
                }
                _ => None,
            };
            match lamda {
                Some((z, s)) => {
                    become_kernel(ir, id, lib::lamda_epilogue(d_out, r, c), &[base, z, s, b]);
                    // The old u (read by dB) is the kernel's output 0 now; y is output 1.
                    let readers = ir.users((id, 0));
                    ir.replace_uses(u, (id, 0));
                    for (node, arg) in readers {
                        let mut ins = ir.inputs(node);
                        ins[arg as usize] = (id, 1);
                        ir.set_inputs(node, &ins);
                    }
                }
                None => {
                    become_kernel(ir, id, lib::lowrank_epilogue(d_out, r, c), &[base, u, b]);
                }
            }
            st.epilogues += 1;
            break;
        }
    }
    // The small backward product of LaMDA: g_z = (g B) S, an r x r product.
    for id in ir.order() {
        let node = &ir.graph[id];
        if node.op != Op::LinearGradInput || !node.backward || node.adapter.is_none() {
            continue;
        }
        let ins = ir.inputs(id);
        let Some(sp) = param_of(ir, ins[1]) else { continue };
        if !matches!(ir.params[sp].role, ParamRole::Adapter { .. }) {
            continue;
        }
        let shape = ir.params[sp].shape.clone();
        if shape.len() == 2
            && shape[0] == shape[1]
            && shape[0] <= MAX_EPILOGUE_RANK
            && ty(ir, ins[0]).shape.get(1) == Some(&shape[0])
        {
            become_kernel(ir, id, lib::small_matmul(shape[0]), &ins);
            st.epilogues += 1;
        }
    }
}

// ------------------------------------------------------------------ 3. row kernels

fn table(ir: &mut Ir, kind: TableKind, seq: usize, half: usize) -> Value {
    let name = format!("{kind:?}");
    let p = match ir.params.iter().position(|p| p.name == name) {
        Some(p) => p,
        None => {
            ir.params.push(ParamInfo {
                name,
                shape: vec![seq, half],
                role: ParamRole::Table(kind),
            });
            ir.params.len() - 1
        }
    };
    param_node(ir, p)
}

fn row_kernels(ir: &mut Ir, st: &mut FusionStats) {
    let mut targets: Option<Value> = None;
    for id in ir.order() {
        let node = ir.graph[id].clone();
        let ins = ir.inputs(id);
        match node.op {
            Op::RmsNorm { eps } => {
                let d = ty(ir, ins[0]).shape[1];
                become_kernel(ir, id, lib::rmsnorm(d, eps.0), &ins);
            }
            Op::RmsNormGrad => {
                let d = ty(ir, ins[0]).shape[1];
                become_kernel(ir, id, lib::rmsnorm_grad(d), &ins);
            }
            Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
                let width = ty(ir, ins[0]).shape[1];
                let cos = table(
                    ir,
                    TableKind::RopeCos {
                        seq,
                        head_dim,
                        theta: theta.0,
                    },
                    seq,
                    head_dim / 2,
                );
                let sin = table(
                    ir,
                    TableKind::RopeSin {
                        seq,
                        head_dim,
                        theta: theta.0,
                    },
                    seq,
                    head_dim / 2,
                );
                let k = if matches!(node.op, Op::Rope { .. }) {
                    lib::rope(width, head_dim, seq)
                } else {
                    lib::rope_grad(width, head_dim, seq)
                };
                become_kernel(ir, id, k, &[ins[0], cos, sin]);
            }
            Op::CrossEntropy { seq, grad, .. } => {
                let vocab = ty(ir, ins[0]).shape[1];
                let t = match targets {
                    Some(t) => t,
                    None => {
                        let n = ty(ir, ins[1]).shape[0];
                        let s = ir.add(
                            Op::ShiftLabels { seq },
                            &[ins[1]],
                            vec![TensorType::i64(&[n])],
                            "targets",
                        );
                        targets = Some((s, 0));
                        (s, 0)
                    }
                };
                become_kernel(ir, id, lib::cross_entropy(vocab, grad), &[ins[0], t]);
            }
            _ => continue,
        }
        st.row_kernels += 1;
    }
    swiglu(ir, st);
}

/// `silu(gate) * up` and its backward.
fn swiglu(ir: &mut Ir, st: &mut FusionStats) {
    for id in ir.order() {
        if ir.graph.node_weight(id).map(|n| &n.op) != Some(&Op::Silu) {
            continue;
        }
        let gate = ir.inputs(id)[0];
        let s = (id, 0);
        let users = ir.users(s);
        let fwd: Vec<NodeId> = users
            .iter()
            .map(|u| u.0)
            .filter(|&u| !ir.graph[u].backward && ir.graph[u].op == Op::Mul)
            .collect();
        let [mul] = fwd.as_slice() else { continue };
        let mins = ir.inputs(*mul);
        let up = if mins[0] == s { mins[1] } else { mins[0] };
        let f = ty(ir, gate).shape[1];
        // Backward: dup = dh * s (a reader of s), dgate = silu_grad(dh * up, gate).
        let bwd_dup: Vec<NodeId> = users
            .iter()
            .map(|u| u.0)
            .filter(|&u| ir.graph[u].backward && ir.graph[u].op == Op::Mul)
            .collect();
        let mut grad_pattern = None;
        if let [dup_node] = bwd_dup.as_slice() {
            let di = ir.inputs(*dup_node);
            let dh = if di[0] == s { di[1] } else { di[0] };
            let sg = ir
                .users(gate)
                .into_iter()
                .map(|u| u.0)
                .find(|&u| ir.graph[u].op == Op::SiluGrad);
            if let Some(sg) = sg {
                let ds = ir.inputs(sg)[0];
                let ok = op_at(ir, ds) == Some(&Op::Mul) && {
                    let x = ir.inputs(ds.0);
                    (x[0] == dh && x[1] == up) || (x[0] == up && x[1] == dh)
                };
                if ok {
                    grad_pattern = Some((sg, *dup_node, dh));
                }
            }
        }
        let all_readers_known = users
            .iter()
            .all(|u| u.0 == *mul || grad_pattern.is_some_and(|g| g.1 == u.0));
        if !all_readers_known {
            continue;
        }
        become_kernel(ir, *mul, lib::swiglu(f), &[gate, up]);
        if let Some((sg, dup_node, dh)) = grad_pattern {
            become_kernel(ir, sg, lib::swiglu_grad(f), &[gate, up, dh]);
            ir.replace_uses((dup_node, 0), (sg, 1));
        }
        st.row_kernels += 1;
    }
}

// ------------------------------------------------------------------ 4. adds

fn residual_adds(ir: &mut Ir, st: &mut FusionStats) {
    for id in ir.order() {
        if ir.graph[id].op != Op::Add {
            continue;
        }
        let ins = ir.inputs(id);
        for side in [1usize, 0] {
            let (r, y) = (ins[1 - side], ins[side]);
            if op_at(ir, y) != Some(&Op::Linear) || ir.users(y).len() != 1 || y == r {
                continue;
            }
            let lin = ir.inputs(y.0);
            ir.set_inputs(id, &[r, lin[0], lin[1]]);
            ir.graph[id].op = Op::LinearAdd;
            st.linear_adds += 1;
            break;
        }
    }
}

fn add_chains(ir: &mut Ir, st: &mut FusionStats) {
    // The root of a chain: an add whose result is not consumed by another add that absorbs it.
    for id in ir.order().into_iter().rev() {
        if ir.graph.node_weight(id).map(|n| &n.op) != Some(&Op::Add) {
            continue;
        }
        let mut leaves = Vec::new();
        let mut stack = ir.inputs(id);
        let mut absorbed = 0;
        while let Some(v) = stack.pop() {
            let inner = op_at(ir, v) == Some(&Op::Add) && ir.users(v).len() == 1 && leaves.len() + stack.len() < 8;
            if inner {
                stack.extend(ir.inputs(v.0));
                absorbed += 1;
            } else {
                leaves.push(v);
            }
        }
        if absorbed == 0 {
            continue;
        }
        leaves.reverse();
        let t = ty(ir, leaves[0]);
        if t.shape.len() != 2 {
            continue;
        }
        become_kernel(ir, id, lib::add_n(t.shape[1], leaves.len()), &leaves);
        st.add_chains += 1;
    }
}

/// A stable name for a float, used in kernel names.
pub fn float_name(x: F64) -> String {
    format!("{:e}", x.0)
}
