//! The IR's text form (`lamdac emit --target ir`) and Graphviz form (`--target dot`).
//!
//! One line per node in index (= topological) order:
//! `%12 = linear %10, %3  : f32[32, 64]  # layers[0].attn.q`; multi-output
//! nodes write `%12.0`, `%12.1` for their outputs. Parameters are listed
//! first with their role. The text is stable: it depends only on the spec.

use std::fmt::Write;

use crate::ir::{Ir, Op, ParamRole};

fn value(v: (crate::ir::NodeId, u8), multi: bool) -> String {
    if multi {
        format!("%{}.{}", v.0.index(), v.1)
    } else {
        format!("%{}", v.0.index())
    }
}

fn attrs(op: &Op) -> String {
    match op {
        Op::Param(p) => format!(" @{p}"),
        Op::ParamGrad(p) => format!(" @{p}"),
        Op::RmsNorm { eps } => format!("[eps={:?}]", eps.0),
        Op::Scale { c } => format!("[c={:?}]", c.0),
        Op::Rope { head_dim, seq, theta } | Op::RopeGrad { head_dim, seq, theta } => {
            format!("[head_dim={head_dim}, seq={seq}, theta={:?}]", theta.0)
        }
        Op::Attention(d) | Op::AttentionGrad(d) => format!(
            "[batch={}, seq={}, heads={}, kv_heads={}, head_dim={}]",
            d.batch, d.seq, d.heads, d.kv_heads, d.head_dim
        ),
        Op::CrossEntropy { batch, seq, grad } => format!("[batch={batch}, seq={seq}, grad={grad}]"),
        Op::Fused(k) => format!("[{}]", k.name),
        Op::Split { widths }
        | Op::Concat { widths }
        | Op::LinearSplit { widths }
        | Op::LinearGradInputCat { widths } => format!("{widths:?}"),
        Op::ShiftLabels { seq } => format!("[seq={seq}]"),
        Op::ParamSlice { param, start, len } => format!(" @{param}[{start}..{}]", start + len),
        _ => String::new(),
    }
}

/// The text form.
pub fn to_text(ir: &Ir) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# batch {} x seq {} = {} rows, vocab {}",
        ir.batch,
        ir.seq,
        ir.n(),
        ir.vocab
    );
    for (i, p) in ir.params.iter().enumerate() {
        let role = match &p.role {
            ParamRole::Base { .. } => "base".to_string(),
            ParamRole::Residual { adapter, .. } => format!("residual of adapter {adapter}"),
            ParamRole::Concat { parts } => {
                format!(
                    "rows of {}",
                    parts.iter().map(|p| format!("@{p}")).collect::<Vec<_>>().join(", ")
                )
            }
            ParamRole::Table(t) => format!("table {t:?}"),
            ParamRole::Head { init, .. } => format!("head, trainable, init {init:?} unless the checkpoint has it"),
            ParamRole::Adapter {
                adapter,
                init,
                trainable,
                column_frozen,
                ..
            } => format!(
                "adapter {adapter}, {}, init {}{}",
                if *trainable { "trainable" } else { "frozen" },
                init.name(),
                if *column_frozen { ", column-frozen" } else { "" }
            ),
        };
        let dims: Vec<String> = p.shape.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "@{i} {} : f32[{}]  # {role}", p.name, dims.join(", "));
    }
    for id in ir.order() {
        let node = &ir.graph[id];
        let ins: Vec<String> = ir
            .inputs(id)
            .iter()
            .map(|&v| value(v, ir.graph.node_weight(v.0).is_some_and(|n| n.outputs.len() > 1)))
            .collect();
        let outs: Vec<String> = node.outputs.iter().map(ToString::to_string).collect();
        let lhs = if node.outputs.is_empty() {
            String::new()
        } else {
            format!("%{} = ", id.index())
        };
        let mut line = format!("{lhs}{}{}", node.op.name(), attrs(&node.op));
        if !ins.is_empty() {
            let _ = write!(line, " {}", ins.join(", "));
        }
        if !outs.is_empty() {
            let _ = write!(line, " : {}", outs.join(", "));
        }
        if !node.label.is_empty() {
            let _ = write!(line, "  # {}", node.label);
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(l) = ir.loss {
        let _ = writeln!(out, "loss = %{}.{}", l.0.index(), l.1);
    }
    out
}

/// The Graphviz form.
pub fn to_dot(ir: &Ir) -> String {
    let mut out = String::from("digraph step {\n  node [shape=box, fontname=monospace];\n");
    for id in ir.order() {
        let node = &ir.graph[id];
        let color = if node.backward {
            ", color=firebrick"
        } else if node.adapter.is_some() {
            ", color=royalblue"
        } else {
            ""
        };
        let label = format!("%{} {}{}\\n{}", id.index(), node.op.name(), attrs(&node.op), node.label).replace('"', "'");
        let _ = writeln!(out, "  n{} [label=\"{label}\"{color}];", id.index());
    }
    for id in ir.order() {
        for v in ir.inputs(id) {
            let ty = ir.ty(v).map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(out, "  n{} -> n{} [label=\"{ty}\"];", v.0.index(), id.index());
        }
    }
    out.push_str("}\n");
    out
}
