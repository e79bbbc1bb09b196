//! The fusion pass on the stdlib llama: what it rewrites (structure), and
//! insta snapshots of the IR before and after fusion and of the Plan's memory
//! summary. Numerical agreement of fused and unfused plans is tested in
//! tests/golden.rs (golden cases, fused) and runtime tests (random inputs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use lamda_compiler::ir::print::to_text;
use lamda_compiler::ir::{Op, ParamRole};
use lamda_compiler::passes::fusion::fuse;
use lamda_compiler::pipeline::{Options, compile_with, emit_ir};
use lamda_compiler::resolve::check_source;
use lamda_compiler::spec::ResolvedSpec;

fn spec(src: &str) -> ResolvedSpec {
    let c = check_source("t.lamda", src, Path::new("."));
    c.spec.unwrap_or_else(|| panic!("{:?}", c.diags))
}

/// Every trainable parameter of `ir`.
fn trainable_of(ir: &lamda_compiler::ir::Ir) -> BTreeSet<usize> {
    ir.params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trainable())
        .map(|(i, _)| i)
        .collect()
}

const SRC: &str = "adapt tiny.attn.{q,v} rank 2 freeze_b linear(0.5)\ntrain { steps 4 batch 1 seq 4 }";

#[test]
fn lamda_fusion_structure() {
    let s = spec(SRC);
    let mut ir = emit_ir(&s, 1, 4, true).unwrap();
    let before = ir.graph.node_count();
    let trainable = trainable_of(&ir);
    let st = fuse(&mut ir, &trainable, false);
    lamda_compiler::ir::verify::verify(&ir).unwrap();
    assert!(ir.graph.node_count() < before);
    // Per layer: q,k,v (+ the A of q and v) in one GEMM, and gate,up in another.
    assert_eq!(st.stacked_gemms, 4);
    let stacks: Vec<&Vec<usize>> = ir
        .params
        .iter()
        .filter_map(|p| {
            if let ParamRole::Concat { parts } = &p.role {
                Some(parts)
            } else {
                None
            }
        })
        .collect();
    let qkv = stacks
        .iter()
        .find(|parts| parts.len() == 5)
        .expect("a stack of W_q, A_q, W_k, W_v, A_v");
    let names: Vec<&str> = qkv.iter().map(|&p| ir.params[p].name.as_str()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("q_proj.A")) && names.iter().any(|n| n.ends_with("v_proj.A")),
        "{names:?}"
    );
    // Two LaMDA epilogues per layer, no trainable tensor stacked.
    let epilogues = ir
        .graph
        .node_indices()
        .filter(|&i| matches!(&ir.graph[i].op, Op::Fused(k) if k.name.starts_with("lamda_epilogue")))
        .count();
    assert_eq!(epilogues, 4);
    for parts in &stacks {
        assert!(parts.iter().all(|p| !trainable.contains(p)));
    }
    // Row kernels replaced every norm, rope and the loss.
    assert!(ir.graph.node_indices().all(|i| !matches!(
        ir.graph[i].op,
        Op::RmsNorm { .. } | Op::Rope { .. } | Op::CrossEntropy { .. } | Op::Silu
    )));
}

#[test]
fn head_loss_replaces_the_logits_gemm_the_loss_and_its_backward() {
    let s = spec(SRC);
    let mut ir = emit_ir(&s, 1, 4, true).unwrap();
    let trainable = trainable_of(&ir);
    let st = fuse(&mut ir, &trainable, true);
    lamda_compiler::ir::verify::verify(&ir).unwrap();
    assert_eq!(st.head_losses, 1);
    assert!(ir.logits.is_none(), "nothing computes the whole logits any more");
    let count = |f: &dyn Fn(&Op) -> bool| ir.graph.node_indices().filter(|&i| f(&ir.graph[i].op)).count();
    assert_eq!(count(&|op| *op == Op::LinearCrossEntropy), 1);
    assert_eq!(
        count(&|op| matches!(op, Op::Fused(k) if k.name.starts_with("cross_entropy"))),
        0
    );
    let loss = ir.loss.expect("a loss");
    assert_eq!(ir.graph[loss.0].op, Op::LinearCrossEntropy);
    // Forward only (the eval program), there is no gradient to fuse with: unchanged.
    let mut eval = emit_ir(&s, 1, 4, false).unwrap();
    assert_eq!(fuse(&mut eval, &trainable, true).head_losses, 0);
    assert!(eval.logits.is_some());
}

#[test]
fn lora_keeps_its_trainable_a_out_of_stacks() {
    let s = spec("adapt tiny.attn.{q,v} with lora rank 2\ntrain { batch 1 seq 4 }");
    let plan = compile_with(
        &s,
        1,
        4,
        None,
        Options {
            fuse: true,
            head_loss: true,
        },
    )
    .unwrap();
    for p in &plan.params {
        if let ParamRole::Concat { parts } = &p.role {
            assert!(parts.iter().all(|&q| !plan.params[q].trainable()), "{}", p.name);
        }
    }
}

#[test]
fn snapshot_ir_before_and_after_fusion() {
    let s = spec(SRC);
    let before = emit_ir(&s, 1, 4, true).unwrap();
    let mut after = before.clone();
    let trainable = trainable_of(&after);
    fuse(&mut after, &trainable, true);
    let text = format!(
        "{SRC}\n\n===== before fusion =====\n{}\n===== after fusion =====\n{}",
        to_text(&before),
        to_text(&after)
    );
    insta::assert_snapshot!("tiny_lamda_qv_r2_fusion", text);
}

#[test]
fn snapshot_plan_memory_summary() {
    let s = spec(SRC);
    let mut text = format!("{SRC}\n");
    for fuse in [false, true] {
        let plan = compile_with(&s, 1, 4, None, Options { fuse, head_loss: fuse }).unwrap();
        text.push_str(&format!("\nfused: {fuse}\n{:#?}\n", plan.memory));
        for p in &plan.phases {
            text.push_str(&format!(
                "phase {}..{}: {} instructions, peak {} B, saved {} B, adapters {:?}\n",
                p.from,
                p.to,
                p.program.instrs.len(),
                p.program.memory.peak_bytes,
                p.program.memory.saved_bytes,
                p.program.memory.saved_by_adapter
            ));
        }
    }
    insta::assert_snapshot!("tiny_lamda_qv_r2_memory", text);
}
