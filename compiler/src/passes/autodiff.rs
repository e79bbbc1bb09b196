//! Reverse-mode autodiff: adds the backward graph for the parameters that train.
//!
//! Expects a forward-only IR whose loss is a `CrossEntropy { grad: true }`
//! (its second output is dL/dlogits, the seed) and the set of parameters that
//! train in this phase. Guarantees: a gradient is built only for values that
//! depend on a trainable parameter (`requires_grad`), so frozen paths get no
//! backward work and keep no activations alive for it; every trainable
//! parameter reached gets exactly one `ParamGrad` sink; contributions of a
//! value used several times are summed with `Add`. Backward nodes inherit the
//! adapter tag of the forward node they differentiate, which the memory plan
//! uses to attribute saved activations. It does not differentiate norm or
//! embedding weights (lamdac never trains them) and reports an error if asked to.
//!
//! The rules, one arm per op in [`backward_rule`]:
//! - `linear(x, W)`:  dx = g W;  dW = g^T x
//! - `add(a, b)`:     da = g;  db = g
//! - `scale_c(x)`:    dx = c g
//! - `mul(a, b)`:     da = g * b;  db = g * a
//! - `col_scale(x, v)`: dx = g diag(v);  dv = sum_rows(g * x)
//! - `silu(x)`:       dx = g * silu'(x),  silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
//! - `rmsnorm(x, w)`: dx = rstd (w g - y_hat mean(y_hat * w g)), y_hat = x rstd
//! - `rope(x)`:       dx = R^T g (the inverse rotation)
//! - `attention(q, k, v)`: the standard softmax backward, recomputing P from lse
//! - `bias_add(x, b)`: dx = g;  db = sum_rows(g)
//! - `layernorm(x, w, b)`: dx = rstd (w g - mean(w g) - x_hat mean(x_hat w g)), x_hat = (x - mean) rstd
//! - `gelu(x)`:       dx = g (Phi(x) + x phi(x))
//! - `tanh(x)`:       dx = g (1 - y^2)
//! - `pool(h)`:       dh = the pooled gradient put back on the rows it read
//! - `cross_entropy`, `classify_loss`: the seed, dlogits = (softmax - onehot) / count

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{Ir, Op, ParamId, TensorType, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("autodiff: {0}")]
pub struct AutodiffError(pub String);

/// Adds the backward graph for `trainable` to a forward IR.
pub fn autodiff(mut ir: Ir, trainable: &BTreeSet<ParamId>) -> Result<Ir, AutodiffError> {
    let loss = ir.loss.ok_or_else(|| AutodiffError("the IR has no loss".into()))?;
    let ce = loss.0;
    if !matches!(
        ir.graph[ce].op,
        Op::CrossEntropy { grad: true, .. } | Op::ClassifyLoss { grad: true }
    ) {
        return Err(AutodiffError(
            "the loss must be a cross_entropy with its gradient output".into(),
        ));
    }
    let order = ir.order();
    // Which values depend on a trainable parameter.
    let mut requires: BTreeSet<crate::ir::NodeId> = BTreeSet::new();
    for &id in &order {
        let node = &ir.graph[id];
        let rg = match node.op {
            Op::Param(p) => trainable.contains(&p),
            _ => ir.inputs(id).iter().any(|(src, _)| requires.contains(src)),
        };
        if rg {
            requires.insert(id);
        }
    }
    for &p in trainable {
        let info = ir
            .params
            .get(p)
            .ok_or_else(|| AutodiffError(format!("no parameter {p}")))?;
        if !info.trainable() {
            return Err(AutodiffError(format!(
                "`{}` is not a trainable adapter tensor",
                info.name
            )));
        }
    }
    // Gradient contributions per value, summed on first read.
    let mut grads: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    grads.insert(
        ir.logits.ok_or_else(|| AutodiffError("the IR has no logits".into()))?,
        vec![(ce, 1)],
    );
    for &id in order.iter().rev() {
        if !requires.contains(&id) || id == ce {
            continue;
        }
        let outs = ir.graph[id].outputs.len();
        let mut g: Vec<Option<Value>> = Vec::with_capacity(outs);
        for o in 0..outs {
            g.push(take_sum(&mut ir, &mut grads, (id, o as u8)));
        }
        if g.iter().all(Option::is_none) {
            continue;
        }
        let contributions = backward_rule(&mut ir, id, &g, &requires, trainable)?;
        for (v, gv) in contributions {
            grads.entry(v).or_default().push(gv);
        }
    }
    Ok(ir)
}

/// Sums the contributions to `v`'s gradient (tagging the adds like `v`).
fn take_sum(ir: &mut Ir, grads: &mut BTreeMap<Value, Vec<Value>>, v: Value) -> Option<Value> {
    let parts = grads.remove(&v)?;
    let tag = ir.graph[v.0].adapter;
    let label = format!("d({})", ir.graph[v.0].label);
    let mut it = parts.into_iter();
    let mut acc = it.next()?;
    for p in it {
        let ty = ir.ty(acc).cloned()?;
        acc = (ir.add_backward(Op::Add, &[acc, p], vec![ty], label.clone(), tag), 0);
    }
    Some(acc)
}

/// The backward rule of node `id`, given the gradients of its outputs:
/// returns (operand value, its gradient contribution) pairs.
fn backward_rule(
    ir: &mut Ir,
    id: crate::ir::NodeId,
    g: &[Option<Value>],
    requires: &BTreeSet<crate::ir::NodeId>,
    trainable: &BTreeSet<ParamId>,
) -> Result<Vec<(Value, Value)>, AutodiffError> {
    let node = ir.graph[id].clone();
    let ins = ir.inputs(id);
    let rg = |v: &Value| requires.contains(&v.0);
    let tag = node.adapter;
    let label = format!("d({})", node.label);
    let ty = |ir: &Ir, v: Value| ir.ty(v).cloned().ok_or_else(|| AutodiffError("untyped value".into()));
    let mut out = Vec::new();
    let g0 = g.first().copied().flatten();
    let add = |ir: &mut Ir, op: Op, args: &[Value], t: TensorType| -> Value {
        (ir.add_backward(op, args, vec![t], label.clone(), tag), 0)
    };
    match node.op {
        // d(param) accumulates into the parameter's gradient.
        Op::Param(p) => {
            if let Some(gv) = g0
                && trainable.contains(&p)
            {
                ir.add_backward(
                    Op::ParamGrad(p),
                    &[gv],
                    vec![],
                    format!("grad {}", ir.params[p].name),
                    tag,
                );
            }
        }
        Op::Tokens | Op::Labels | Op::ClassLabels | Op::Positions { .. } | Op::TokenTypes | Op::Lengths { .. } => {}
        Op::Embedding => {
            if rg(&ins[1]) {
                return Err(AutodiffError(format!(
                    "`{}`: embedding tables do not train",
                    node.label
                )));
            }
        }
        // dx = rstd (w g - y_hat mean(y_hat w g)); the weight never trains.
        Op::RmsNorm { .. } => {
            if rg(&ins[1]) {
                return Err(AutodiffError(format!("`{}`: norm weights do not train", node.label)));
            }
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::RmsNormGrad, &[gv, ins[0], ins[1], (id, 1)], t);
                out.push((ins[0], dx));
            }
        }
        // y = (x - mean) rstd w + b: dx by the rule above; w and b never train.
        Op::LayerNorm { .. } => {
            if rg(&ins[1]) || rg(&ins[2]) {
                return Err(AutodiffError(format!("`{}`: norm weights do not train", node.label)));
            }
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::LayerNormGrad, &[gv, ins[0], ins[1], (id, 1), (id, 2)], t);
                out.push((ins[0], dx));
            }
        }
        // y = x + b:  dx = g,  db = sum_rows(g).
        Op::BiasAdd => {
            let Some(gv) = g0 else { return Ok(out) };
            if rg(&ins[0]) {
                out.push((ins[0], gv));
            }
            if rg(&ins[1]) {
                let t = ty(ir, ins[1])?;
                let db = add(ir, Op::ColSum, &[gv], t);
                out.push((ins[1], db));
            }
        }
        // y = gelu(x):  dx = g gelu'(x).
        Op::Gelu => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::GeluGrad, &[gv, ins[0]], t);
                out.push((ins[0], dx));
            }
        }
        // y = tanh(x):  dx = g (1 - y^2).
        Op::Tanh => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::TanhGrad, &[gv, (id, 0)], t);
                out.push((ins[0], dx));
            }
        }
        // y = pool(h):  dh = the rows' share of g.
        Op::Pool { seq, mean } => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dh = add(ir, Op::PoolGrad { seq, mean }, &[gv, ins[1]], t);
                out.push((ins[0], dh));
            }
        }
        // y = x W^T:  dx = g W,  dW = g^T x.
        Op::Linear => {
            let Some(gv) = g0 else { return Ok(out) };
            if rg(&ins[0]) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::LinearGradInput, &[gv, ins[1]], t);
                out.push((ins[0], dx));
            }
            if rg(&ins[1]) {
                let t = ty(ir, ins[1])?;
                let dw = add(ir, Op::LinearGradWeight, &[gv, ins[0]], t);
                out.push((ins[1], dw));
            }
        }
        // y = a + b:  da = g,  db = g.
        Op::Add => {
            if let Some(gv) = g0 {
                for v in &ins {
                    if rg(v) {
                        out.push((*v, gv));
                    }
                }
            }
        }
        // y = c x:  dx = c g.
        Op::Scale { c } => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::Scale { c }, &[gv], t);
                out.push((ins[0], dx));
            }
        }
        // y = a * b:  da = g * b,  db = g * a.
        Op::Mul => {
            if let Some(gv) = g0 {
                if rg(&ins[0]) {
                    let t = ty(ir, ins[0])?;
                    let da = add(ir, Op::Mul, &[gv, ins[1]], t);
                    out.push((ins[0], da));
                }
                if rg(&ins[1]) {
                    let t = ty(ir, ins[1])?;
                    let db = add(ir, Op::Mul, &[gv, ins[0]], t);
                    out.push((ins[1], db));
                }
            }
        }
        // y = x diag(v):  dx = g diag(v),  dv = sum_rows(g * x).
        Op::ColScale => {
            if let Some(gv) = g0 {
                if rg(&ins[0]) {
                    let t = ty(ir, ins[0])?;
                    let dx = add(ir, Op::ColScale, &[gv, ins[1]], t);
                    out.push((ins[0], dx));
                }
                if rg(&ins[1]) {
                    let t = ty(ir, ins[1])?;
                    let dv = add(ir, Op::ColScaleGrad, &[gv, ins[0]], t);
                    out.push((ins[1], dv));
                }
            }
        }
        // y = silu(x):  dx = g silu'(x).
        Op::Silu => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::SiluGrad, &[gv, ins[0]], t);
                out.push((ins[0], dx));
            }
        }
        // y = R x:  dx = R^T g.
        Op::Rope { head_dim, seq, theta } => {
            if let (Some(gv), true) = (g0, rg(&ins[0])) {
                let t = ty(ir, ins[0])?;
                let dx = add(ir, Op::RopeGrad { head_dim, seq, theta }, &[gv], t);
                out.push((ins[0], dx));
            }
        }
        // o = softmax(q k^T / sqrt(hd) + mask) v: one node gives dq, dk, dv.
        Op::Attention(dims) => {
            if let Some(gv) = g0
                && ins.iter().any(rg)
            {
                let outs = vec![ty(ir, ins[0])?, ty(ir, ins[1])?, ty(ir, ins[2])?];
                let mut args = vec![gv, ins[0], ins[1], ins[2], (id, 1)];
                args.extend(ins.get(3).copied()); // the lengths of bidirectional attention
                let ag = ir.add_backward(Op::AttentionGrad(dims), &args, outs, label.clone(), tag);
                for (i, v) in ins.iter().take(3).enumerate() {
                    if rg(v) {
                        out.push((*v, (ag, i as u8)));
                    }
                }
            }
        }
        Op::CrossEntropy { .. } | Op::ClassifyLoss { .. } => {}
        Op::LinearGradInput
        | Op::GeluGrad
        | Op::TanhGrad
        | Op::LayerNormGrad
        | Op::ColSum
        | Op::PoolGrad { .. }
        | Op::LinearGradWeight
        | Op::SiluGrad
        | Op::RmsNormGrad
        | Op::RopeGrad { .. }
        | Op::AttentionGrad(_)
        | Op::ColScaleGrad
        | Op::ParamGrad(_) => {
            return Err(AutodiffError(format!("`{}` is already a backward op", node.op.name())));
        }
        Op::Fused(_)
        | Op::Split { .. }
        | Op::Concat { .. }
        | Op::LinearSplit { .. }
        | Op::LinearGradInputCat { .. }
        | Op::LinearCrossEntropy
        | Op::LinearAdd
        | Op::ShiftLabels { .. }
        | Op::ParamSlice { .. } => {
            return Err(AutodiffError(format!(
                "`{}` is made by fusion, which runs after autodiff",
                node.op.name()
            )));
        }
    }
    Ok(out)
}
