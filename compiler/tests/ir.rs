//! The IR and its passes on the stdlib methods: verified graphs, gradients only
//! for what trains, phases from the schedules, and the memory plan's account of
//! what each method saves for backward (LaMDA: r-dimensional z and u; LoRA: its
//! d-dimensional input; a frozen path: nothing of its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lamda_compiler::ir::verify::verify;
use lamda_compiler::ir::{Op, TensorType};
use lamda_compiler::pipeline::{compile, emit_ir};
use lamda_compiler::resolve::check_source;
use lamda_compiler::spec::ResolvedSpec;

fn spec(src: &str) -> ResolvedSpec {
    let c = check_source("t.lamda", src, Path::new("."));
    c.spec.unwrap_or_else(|| panic!("{:?}", c.diags))
}

const N: u64 = 2 * 16;

#[test]
fn lamda_saves_z_and_u_then_only_z() {
    let s = spec("adapt tiny.attn.{q,v} rank 4 freeze_b linear(0.3)\ntrain { steps 10 batch 2 seq 16 }");
    let plan = compile(&s, 2, 16, None).unwrap();
    assert_eq!(
        plan.phases.iter().map(|p| (p.from, p.to)).collect::<Vec<_>>(),
        vec![(0, 3), (3, 10)]
    );
    let r = 4u64;
    for (a, _) in plan.adapters.iter().enumerate() {
        assert_eq!(
            plan.phases[0].program.memory.saved_by_adapter[&a],
            2 * N * r * 4,
            "z and u while B trains"
        );
        assert_eq!(
            plan.phases[1].program.memory.saved_by_adapter[&a],
            N * r * 4,
            "only z once B is frozen"
        );
    }
    // Once B is frozen its program computes no dB.
    let grads = |p: usize| {
        plan.phases[p]
            .program
            .instrs
            .iter()
            .filter(|i| matches!(i.op, Op::ParamGrad(_)))
            .count()
    };
    assert_eq!(grads(0), 8);
    assert_eq!(grads(1), 4);
}

#[test]
fn lora_saves_its_input_and_lora_fa_does_not() {
    let d_in = 64u64;
    let r = 4u64;
    let s = spec("adapt tiny.attn.{q,v} with lora rank 4\ntrain { batch 2 seq 16 }");
    let plan = compile(&s, 2, 16, None).unwrap();
    // Per layer, q and v share their input x (kept once, for dA of both) and
    // each keeps x A^T (for dB).
    let layers = 2;
    let total: u64 = plan.phases[0].program.memory.saved_by_adapter.values().sum();
    assert_eq!(total, layers * N * d_in * 4 + 4 * N * r * 4);
    let s = spec("adapt tiny.attn.{q,v} with lora_fa rank 4\ntrain { batch 2 seq 16 }");
    let plan = compile(&s, 2, 16, None).unwrap();
    for a in 0..plan.adapters.len() {
        assert_eq!(
            plan.phases[0].program.memory.saved_by_adapter[&a],
            N * r * 4,
            "only x A^T"
        );
    }
}

#[test]
fn now_freezes_b_from_the_start() {
    let s = spec("adapt tiny.attn.q rank 4 freeze_b now\ntrain { steps 5 batch 2 seq 16 }");
    let plan = compile(&s, 2, 16, None).unwrap();
    assert_eq!(plan.phases.len(), 1);
    assert_eq!(plan.phases[0].trainable.len(), 2, "S of both layers");
}

#[test]
fn every_method_and_preset_verifies() {
    for m in ["lamda", "lora", "lora_fa", "pissa"] {
        let s = spec(&format!("adapt tiny.** with {m} rank 3\ntrain {{ batch 1 seq 5 }}"));
        let ir = emit_ir(&s, 1, 5, true).unwrap();
        verify(&ir).unwrap();
        // One gradient sink per trainable tensor, none for frozen ones.
        let sinks = ir
            .graph
            .node_indices()
            .filter(|&i| matches!(ir.graph[i].op, Op::ParamGrad(_)))
            .count();
        let trainable = ir.params.iter().filter(|p| p.trainable()).count();
        assert_eq!(sinks, trainable, "{m}");
    }
    for p in ["smollm2_135m", "tinyllama_1b"] {
        let s = spec(&format!("adapt {p}.attn.{{q,v}} rank 8\ntrain {{ batch 1 seq 8 }}"));
        verify(&emit_ir(&s, 1, 8, true).unwrap()).unwrap();
    }
}

#[test]
fn verifier_rejects_a_wrong_shape() {
    let s = spec("adapt tiny.attn.q rank 2\ntrain { batch 1 seq 4 }");
    let mut ir = emit_ir(&s, 1, 4, false).unwrap();
    let id = ir.graph.node_indices().find(|&i| ir.graph[i].op == Op::Linear).unwrap();
    ir.graph[id].outputs = vec![TensorType::f32(&[4, 3])];
    let err = verify(&ir).unwrap_err();
    assert!(err.msg.contains("declares outputs"), "{err}");
}

#[test]
fn frozen_layers_get_no_backward_below_the_lowest_adapter() {
    // Only the last layer adapted: nothing in layer 0 needs a gradient.
    let s = spec("adapt tiny.layers[1].attn.q rank 2\ntrain { batch 1 seq 4 }");
    let ir = emit_ir(&s, 1, 4, true).unwrap();
    let layer0_grads = ir
        .graph
        .node_indices()
        .filter(|&i| ir.graph[i].backward && ir.graph[i].label.contains("layers[0]"))
        .count();
    assert_eq!(layer0_grads, 0);
}
