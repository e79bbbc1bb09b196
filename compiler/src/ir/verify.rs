//! The IR verifier, run after every pass (in release builds too; see `crate::pipeline`).
//!
//! Invariants:
//! 1. Every edge names an existing output of its source (`out < outputs.len()`).
//! 2. Every node has exactly `op.arity()` operands, one per operand index.
//! 3. Every edge goes from a lower node index to a higher one (index order is
//!    a topological order; in particular the graph is acyclic).
//! 4. Shapes obey the op's rule (see [`infer`]); the declared outputs equal
//!    the inferred ones.
//! 5. `Param(p)` names an existing parameter whose shape is the node's output;
//!    `ParamGrad(p)` takes a value of `p`'s shape and `p` is trainable.
//! 6. The loss, if set, is output 0 of a `CrossEntropy` node (or of its fused
//!    kernel, or of a `LinearCrossEntropy`, as per-row losses).
//! 7. A `Fused` node's kernel is legal ([`crate::kernel::verify`]).
//!
//! [`infer_with`] is also the program verifier's shape rule
//! (`crate::ir::verify_program`).

use petgraph::Direction;
use petgraph::visit::EdgeRef;

use crate::ir::{Dtype, Ir, NodeId, Op, ParamInfo, TensorType};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("IR verifier: node {node:?} ({op}): {msg}")]
pub struct VerifyError {
    pub node: NodeId,
    pub op: &'static str,
    pub msg: String,
}

/// Checks every invariant; returns the first broken one.
pub fn verify(ir: &Ir) -> Result<(), VerifyError> {
    for id in ir.order() {
        let node = &ir.graph[id];
        let fail = |msg: String| VerifyError {
            node: id,
            op: node.op.name(),
            msg,
        };
        let mut args: Vec<u8> = Vec::new();
        for e in ir.graph.edges_directed(id, Direction::Incoming) {
            let src = &ir.graph[e.source()];
            if e.weight().out as usize >= src.outputs.len() {
                return Err(fail(format!(
                    "operand {} reads output {} of a node with {}",
                    e.weight().arg,
                    e.weight().out,
                    src.outputs.len()
                )));
            }
            if e.source() >= id {
                return Err(fail(format!(
                    "operand {} comes from a later node {:?}",
                    e.weight().arg,
                    e.source()
                )));
            }
            args.push(e.weight().arg);
        }
        args.sort_unstable();
        let want: Vec<u8> = (0..node.op.arity() as u8).collect();
        if args != want {
            return Err(fail(format!("operands {args:?}, expected {want:?}")));
        }
        let ins: Vec<TensorType> = ir.inputs(id).iter().filter_map(|&v| ir.ty(v).cloned()).collect();
        let mut inferred = infer(ir, &node.op, &ins).map_err(&fail)?;
        if let Op::ParamSlice { len, .. } = node.op {
            match node.outputs.as_slice() {
                [t] if t.numel() == len as u64 && t.dtype == Dtype::F32 => inferred = node.outputs.clone(),
                _ => {
                    return Err(fail(format!(
                        "a slice of {len} values declares {}",
                        show(&node.outputs)
                    )));
                }
            }
        }
        if inferred != node.outputs {
            return Err(fail(format!(
                "declares outputs {}, its operands give {}",
                show(&node.outputs),
                show(&inferred)
            )));
        }
    }
    if let Some((id, out)) = ir.loss {
        let ok = ir.graph.node_weight(id).is_some_and(|n| match &n.op {
            Op::CrossEntropy { .. } | Op::ClassifyLoss { .. } => out == 0,
            Op::Fused(k) => k.name.starts_with("cross_entropy") && out == 0,
            Op::LinearCrossEntropy => out == 0,
            _ => false,
        });
        if !ok {
            return Err(VerifyError {
                node: id,
                op: "loss",
                msg: "the loss is not output 0 of a cross_entropy (or linear_cross_entropy, classify_loss)".into(),
            });
        }
    }
    Ok(())
}

/// The tensor type of a kernel argument with `rows` rows.
fn arg_type(ty: crate::kernel::ArgTy, rows: usize) -> TensorType {
    use crate::kernel::ArgTy;
    match ty {
        ArgTy::Rows { cols } => TensorType::f32(&[rows, cols]),
        ArgTy::Vector { len } => TensorType::f32(&[len]),
        ArgTy::PerRow => TensorType::f32(&[rows]),
        ArgTy::PerRowI64 => TensorType::i64(&[rows]),
        ArgTy::Scalar => TensorType::f32(&[1]),
        ArgTy::Periodic { period, cols } => TensorType::f32(&[period, cols]),
    }
}

fn show(ts: &[TensorType]) -> String {
    ts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The output types of `op` applied to operands of types `ins`.
pub fn infer(ir: &Ir, op: &Op, ins: &[TensorType]) -> Result<Vec<TensorType>, String> {
    infer_with(ir.n(), ir.batch, &ir.params, op, ins)
}

/// [`infer`] for `n` rows (`batch * seq` of `batch` sequences) and the parameter table `params`,
/// without a graph: the program verifier checks lowered instructions by the
/// same rules.
pub fn infer_with(
    n: usize,
    batch: usize,
    params: &[ParamInfo],
    op: &Op,
    ins: &[TensorType],
) -> Result<Vec<TensorType>, String> {
    let f32s = |t: &TensorType| t.dtype == Dtype::F32;
    let mat = |t: &TensorType| -> Result<(usize, usize), String> {
        match (f32s(t), t.shape.as_slice()) {
            (true, [a, b]) => Ok((*a, *b)),
            _ => Err(format!("expected an f32 matrix, found {t}")),
        }
    };
    let same = |a: &TensorType, b: &TensorType| -> Result<(), String> {
        if a == b {
            Ok(())
        } else {
            Err(format!("operand types differ: {a} and {b}"))
        }
    };
    Ok(match (op, ins) {
        (Op::Tokens | Op::Labels, []) => vec![TensorType::i64(&[n])],
        (Op::Param(p), []) => {
            let info = params.get(*p).ok_or_else(|| format!("no parameter {p}"))?;
            vec![TensorType::f32(&info.shape)]
        }
        (Op::Embedding, [ids, table]) => {
            let (_, d) = mat(table)?;
            if ids.dtype != Dtype::I64 || ids.shape.len() != 1 {
                return Err(format!("embedding ids must be i64 (n), found {ids}"));
            }
            vec![TensorType::f32(&[ids.shape[0], d])]
        }
        (Op::RmsNorm { .. }, [x, w]) => {
            let (rows, d) = mat(x)?;
            if w.shape != [d] {
                return Err(format!("rmsnorm weight {w} for rows of {d}"));
            }
            vec![x.clone(), TensorType::f32(&[rows])]
        }
        (Op::Linear, [x, w]) => {
            let (rows, k) = mat(x)?;
            let (m, k2) = mat(w)?;
            if k != k2 {
                return Err(format!("linear of {x} by a weight {w}"));
            }
            vec![TensorType::f32(&[rows, m])]
        }
        (Op::Scale { .. } | Op::Silu, [x]) => vec![x.clone()],
        (Op::Add | Op::Mul | Op::SiluGrad, [a, b]) => {
            same(a, b)?;
            vec![a.clone()]
        }
        (Op::ColScale, [x, v]) => {
            let (_, k) = mat(x)?;
            if v.shape != [k] {
                return Err(format!("col_scale of {x} by {v}"));
            }
            vec![x.clone()]
        }
        (Op::Rope { head_dim, .. } | Op::RopeGrad { head_dim, .. }, [x]) => {
            let (_, w) = mat(x)?;
            if *head_dim == 0 || w % head_dim != 0 || head_dim % 2 != 0 {
                return Err(format!("rope with head_dim {head_dim} on {x}"));
            }
            vec![x.clone()]
        }
        (Op::Positions { .. } | Op::TokenTypes, []) => vec![TensorType::i64(&[n])],
        (Op::Lengths { .. } | Op::ClassLabels, []) => vec![TensorType::i64(&[batch])],
        (Op::LayerNorm { .. }, [x, w, b]) => {
            let (rows, d) = mat(x)?;
            if w.shape != [d] || b.shape != [d] {
                return Err(format!("layernorm weight {w} and bias {b} for rows of {d}"));
            }
            vec![x.clone(), TensorType::f32(&[rows]), TensorType::f32(&[rows])]
        }
        (Op::LayerNormGrad, [g, x, w, mean, rstd]) => {
            same(g, x)?;
            let (rows, d) = mat(x)?;
            if w.shape != [d] || mean.shape != [rows] || rstd.shape != [rows] {
                return Err(format!("layernorm_grad of {x} with {w}, {mean}, {rstd}"));
            }
            vec![x.clone()]
        }
        (Op::BiasAdd, [x, b]) => {
            let (_, k) = mat(x)?;
            if b.shape != [k] {
                return Err(format!("bias_add of {x} and {b}"));
            }
            vec![x.clone()]
        }
        (Op::ColSum, [g]) => {
            let (_, k) = mat(g)?;
            vec![TensorType::f32(&[k])]
        }
        (Op::Gelu | Op::Tanh, [x]) => vec![x.clone()],
        (Op::GeluGrad | Op::TanhGrad, [g, x]) => {
            same(g, x)?;
            vec![x.clone()]
        }
        (Op::Pool { seq, .. }, [h, lengths]) => {
            let (rows, d) = mat(h)?;
            if rows != batch * seq || *lengths != TensorType::i64(&[batch]) {
                return Err(format!("pool of {h} with lengths {lengths}"));
            }
            vec![TensorType::f32(&[batch, d])]
        }
        (Op::PoolGrad { seq, .. }, [g, lengths]) => {
            let (b, d) = mat(g)?;
            if b != batch || *lengths != TensorType::i64(&[batch]) {
                return Err(format!("pool_grad of {g} with lengths {lengths}"));
            }
            vec![TensorType::f32(&[batch * seq, d])]
        }
        (Op::ClassifyLoss { grad }, [logits, targets]) => {
            let (rows, c) = mat(logits)?;
            if *targets != TensorType::i64(&[rows]) {
                return Err(format!("classify_loss of {logits} and {targets}"));
            }
            let mut out = vec![TensorType::f32(&[1])];
            if *grad {
                out.push(TensorType::f32(&[rows, c]));
            }
            out
        }
        (Op::Attention(d), [q, k, v, lengths]) if !d.causal => {
            let rows = d.batch * d.seq;
            let qw = d.heads * d.head_dim;
            let kvw = d.kv_heads * d.head_dim;
            if q.shape != [rows, qw]
                || k.shape != [rows, kvw]
                || v.shape != [rows, kvw]
                || *lengths != TensorType::i64(&[d.batch])
            {
                return Err(format!("attention of {q}, {k}, {v} with lengths {lengths}"));
            }
            vec![q.clone(), TensorType::f32(&[d.batch, d.heads, d.seq])]
        }
        (Op::AttentionGrad(d), [g, q, k, v, lse, lengths]) if !d.causal => {
            same(g, q)?;
            if lse.shape != [d.batch, d.heads, d.seq] || *lengths != TensorType::i64(&[d.batch]) {
                return Err(format!("attention_grad lse {lse}, lengths {lengths}"));
            }
            vec![q.clone(), k.clone(), v.clone()]
        }
        (Op::Attention(d), [q, k, v]) if d.causal => {
            let rows = d.batch * d.seq;
            let qw = d.heads * d.head_dim;
            let kvw = d.kv_heads * d.head_dim;
            if q.shape != [rows, qw] || k.shape != [rows, kvw] || v.shape != [rows, kvw] {
                return Err(format!("attention of {q}, {k}, {v}"));
            }
            vec![q.clone(), TensorType::f32(&[d.batch, d.heads, d.seq])]
        }
        (Op::AttentionGrad(d), [g, q, k, v, lse]) if d.causal => {
            same(g, q)?;
            if lse.shape != [d.batch, d.heads, d.seq] {
                return Err(format!("attention_grad lse {lse}"));
            }
            vec![q.clone(), k.clone(), v.clone()]
        }
        (Op::CrossEntropy { batch, seq, grad }, [logits, labels]) => {
            let (rows, vocab) = mat(logits)?;
            if rows != batch * seq || labels.shape != [rows] || labels.dtype != Dtype::I64 {
                return Err(format!("cross_entropy of {logits} and {labels}"));
            }
            let mut out = vec![TensorType::f32(&[1])];
            if *grad {
                out.push(TensorType::f32(&[rows, vocab]));
            }
            out
        }
        (Op::LinearGradInput, [g, w]) => {
            let (rows, m) = mat(g)?;
            let (m2, k) = mat(w)?;
            if m != m2 {
                return Err(format!("linear_grad_input of {g} by {w}"));
            }
            vec![TensorType::f32(&[rows, k])]
        }
        (Op::LinearGradWeight, [g, x]) => {
            let (rows, m) = mat(g)?;
            let (rows2, k) = mat(x)?;
            if rows != rows2 {
                return Err(format!("linear_grad_weight of {g} and {x}"));
            }
            vec![TensorType::f32(&[m, k])]
        }
        (Op::RmsNormGrad, [g, x, w, rstd]) => {
            same(g, x)?;
            let (rows, d) = mat(x)?;
            if w.shape != [d] || rstd.shape != [rows] {
                return Err(format!("rmsnorm_grad of {x} with {w}, {rstd}"));
            }
            vec![x.clone()]
        }
        (Op::ColScaleGrad, [g, x]) => {
            same(g, x)?;
            let (_, k) = mat(x)?;
            vec![TensorType::f32(&[k])]
        }
        (Op::ParamGrad(p), [g]) => {
            let info = params.get(*p).ok_or_else(|| format!("no parameter {p}"))?;
            if !info.trainable() {
                return Err(format!("gradient of the frozen parameter {}", info.name));
            }
            if g.shape != info.shape {
                return Err(format!("gradient {g} for {} of shape {:?}", info.name, info.shape));
            }
            vec![]
        }
        (Op::Fused(k), ins) => {
            crate::kernel::verify(k).map_err(|e| e.to_string())?;
            let reads = k.inputs();
            if reads.len() != ins.len() {
                return Err(format!(
                    "{} takes {} operands, found {}",
                    k.name,
                    reads.len(),
                    ins.len()
                ));
            }
            let rows = ins
                .iter()
                .find_map(|t| if t.shape.len() == 2 { Some(t.shape[0]) } else { None })
                .unwrap_or(n);
            for (&a, t) in reads.iter().zip(ins) {
                let want = arg_type(k.args[a].ty, rows);
                // A vector argument may be any tensor with that many values (a shared matrix, flattened).
                let flat = matches!(k.args[a].ty, crate::kernel::ArgTy::Vector { .. })
                    && t.dtype == want.dtype
                    && t.numel() == want.numel();
                if *t != want && !flat {
                    return Err(format!("{}: `{}` is {t}, expected {want}", k.name, k.args[a].name));
                }
            }
            k.outputs().iter().map(|&a| arg_type(k.args[a].ty, rows)).collect()
        }
        (Op::ParamSlice { param, start, len }, []) => {
            let info = params.get(*param).ok_or_else(|| format!("no parameter {param}"))?;
            if start + len > info.numel() as usize {
                return Err(format!(
                    "slice {start}..{} of {} with {} values",
                    start + len,
                    info.name,
                    info.numel()
                ));
            }
            // The node's declared shape is the view's; only its size is checked here.
            return Ok(vec![]);
        }
        (Op::Split { widths }, [x]) => {
            let (rows, w) = mat(x)?;
            if widths.iter().sum::<usize>() != w {
                return Err(format!("split of {x} into {widths:?}"));
            }
            widths.iter().map(|&c| TensorType::f32(&[rows, c])).collect()
        }
        (Op::Concat { widths }, ins) => {
            let rows = ins.first().map(|t| t.shape.first().copied().unwrap_or(0)).unwrap_or(0);
            if ins.len() != widths.len() {
                return Err(format!("concat of {} operands as {widths:?}", ins.len()));
            }
            for (t, &w) in ins.iter().zip(widths) {
                if *t != TensorType::f32(&[rows, w]) {
                    return Err(format!("concat of {t} as a block of {w}"));
                }
            }
            vec![TensorType::f32(&[rows, widths.iter().sum()])]
        }
        (Op::LinearSplit { widths }, [x, w]) => {
            let (rows, k) = mat(x)?;
            let (m, k2) = mat(w)?;
            if k != k2 || widths.iter().sum::<usize>() != m || widths.is_empty() {
                return Err(format!("linear_split of {x} by {w} into {widths:?}"));
            }
            widths.iter().map(|&c| TensorType::f32(&[rows, c])).collect()
        }
        (Op::LinearGradInputCat { widths }, ins) if ins.len() == widths.len() + 1 && !widths.is_empty() => {
            let (gs, w) = ins.split_at(widths.len());
            let (m, k) = mat(&w[0])?;
            let rows = gs[0].shape.first().copied().unwrap_or(0);
            if widths.iter().sum::<usize>() != m {
                return Err(format!("linear_grad_input_cat of blocks {widths:?} by {}", w[0]));
            }
            for (t, &c) in gs.iter().zip(widths) {
                if *t != TensorType::f32(&[rows, c]) {
                    return Err(format!("linear_grad_input_cat of {t} as a block of {c}"));
                }
            }
            vec![TensorType::f32(&[rows, k])]
        }
        (Op::LinearCrossEntropy, [h, w, t]) => {
            let (rows, d) = mat(h)?;
            let (_, d2) = mat(w)?;
            if d != d2 || t.dtype != Dtype::I64 || t.shape != [rows] {
                return Err(format!("linear_cross_entropy of {h} by {w} on {t}"));
            }
            vec![TensorType::f32(&[rows]), h.clone()]
        }
        (Op::LinearAdd, [r, x, w]) => {
            let (rows, k) = mat(x)?;
            let (m, k2) = mat(w)?;
            if k != k2 || r.shape != [rows, m] {
                return Err(format!("linear_add of {r} + {x} by {w}"));
            }
            vec![r.clone()]
        }
        (Op::ShiftLabels { .. }, [l]) => {
            if l.dtype != Dtype::I64 {
                return Err(format!("shift_labels of {l}"));
            }
            vec![l.clone()]
        }
        (op, ins) => {
            return Err(format!(
                "{} takes {} operands, found {}",
                op.name(),
                op.arity(),
                ins.len()
            ));
        }
    })
}
