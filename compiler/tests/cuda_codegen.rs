//! Codegen snapshots: each `kernel::lib::examples()` kernel as kernel IR text
//! followed by the CUDA C the emitter makes of it, so a reviewer sees cause
//! and effect together. (NVRTC compiles these in runtime/tests/cuda_nvrtc.rs.)
//! Also the kernel-IR instances the unfused ops of a real Plan (the stdlib
//! `tiny` llama) need, against the shapes of its preset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use lamda_compiler::codegen::cuda::{
    adamw_kernel, cuda_source, module_source, support, support_source, unfused_kernel, unfused_kernels,
};
use lamda_compiler::ir::{F64, Op};
use lamda_compiler::kernel::{Kernel, lib, symbol};
use lamda_compiler::passes::memory_plan::Program;
use lamda_compiler::pipeline::{Options, compile_with};
use lamda_compiler::plan::Plan;
use lamda_compiler::resolve::check_source;

#[test]
fn every_example_kernel_ir_then_cuda() {
    for k in lib::examples() {
        let src = cuda_source(&k).unwrap_or_else(|e| panic!("{}: {e}", k.name));
        insta::assert_snapshot!(symbol(&k.name), format!("{k}\n{src}"));
    }
}

#[test]
fn the_text_is_stable() {
    for k in lib::examples() {
        assert_eq!(cuda_source(&k).unwrap(), cuda_source(&k.clone()).unwrap());
    }
    assert_eq!(
        module_source(&lib::examples()).unwrap(),
        module_source(&lib::examples()).unwrap()
    );
}

#[test]
fn the_support_source_defines_every_support_kernel() {
    let src = support_source();
    for name in support::ALL {
        assert_eq!(
            src.matches(&format!("extern \"C\" __global__ void {name}(")).count(),
            1,
            "{name}"
        );
    }
    assert_eq!(src.matches("__global__").count(), support::ALL.len());
}

/// `tiny`: vocab 256, hidden 64, 4 heads (head_dim 16) of which 2 for k and v, ffn 172.
fn tiny_plan(fuse: bool) -> Plan {
    let src = "adapt tiny.attn.{q,v} rank 2 freeze_b linear(0.5)\ntrain { steps 4 batch 1 seq 4 }";
    let c = check_source("t.lamda", src, Path::new("."));
    let spec = c.spec.unwrap_or_else(|| panic!("{:?}", c.diags));
    let opts = Options { fuse, head_loss: false };
    compile_with(&spec, 1, 4, None, opts).unwrap()
}

fn programs(plan: &Plan) -> Vec<&Program> {
    plan.phases.iter().map(|p| &p.program).chain([&plan.eval]).collect()
}

#[test]
fn unfused_ops_pick_their_instance_from_shapes_and_attributes() {
    let rms = Op::RmsNorm { eps: F64(1e-6) };
    assert_eq!(unfused_kernel(&rms, &[&[8, 64], &[64]]), Some(lib::rmsnorm(64, 1e-6)));
    assert_eq!(
        unfused_kernel(&Op::RmsNormGrad, &[&[8, 64], &[8, 64], &[64], &[8]]),
        Some(lib::rmsnorm_grad(64))
    );
    let rope = |grad: bool, head_dim: usize| {
        let (seq, theta) = (4, F64(1e4));
        if grad {
            Op::RopeGrad { head_dim, seq, theta }
        } else {
            Op::Rope { head_dim, seq, theta }
        }
    };
    assert_eq!(
        unfused_kernel(&rope(false, 16), &[&[8, 32]]),
        Some(lib::rope(32, 16, 4))
    );
    assert_eq!(
        unfused_kernel(&rope(true, 16), &[&[8, 32]]),
        Some(lib::rope_grad(32, 16, 4))
    );
    // Not whole heads, an odd head: no instance (the executor reports the shapes).
    assert_eq!(unfused_kernel(&rope(false, 12), &[&[8, 32]]), None);
    assert_eq!(unfused_kernel(&rope(false, 5), &[&[8, 30]]), None);
    let ce = |grad| Op::CrossEntropy { batch: 2, seq: 4, grad };
    assert_eq!(
        unfused_kernel(&ce(true), &[&[8, 256], &[8]]),
        Some(lib::cross_entropy(256, true))
    );
    assert_eq!(
        unfused_kernel(&ce(false), &[&[8, 256], &[8]]),
        Some(lib::cross_entropy(256, false))
    );
    assert_eq!(unfused_kernel(&Op::Silu, &[&[8, 172]]), Some(lib::silu(172)));
    assert_eq!(
        unfused_kernel(&Op::SiluGrad, &[&[8, 172], &[8, 172]]),
        Some(lib::silu_grad(172))
    );
    assert_eq!(unfused_kernel(&Op::RmsNorm { eps: F64(1e-6) }, &[&[8, 0], &[0]]), None);
    // Ops with hand-written kernels or cuBLAS.
    for op in [Op::Add, Op::Mul, Op::Linear, Op::ColScale, Op::Embedding] {
        assert_eq!(unfused_kernel(&op, &[&[8, 4], &[8, 4]]), None, "{op:?}");
    }
    // AdamW: rows of the given columns; a vector is one row.
    assert_eq!(adamw_kernel(12, 4), lib::adamw(4));
    assert_eq!(adamw_kernel(12, 1), lib::adamw(12));
}

#[test]
fn an_unfused_plan_lists_the_instances_its_ops_run() {
    let plan = tiny_plan(false);
    let progs = programs(&plan);
    let ks = unfused_kernels(progs.iter().copied());
    let names: BTreeSet<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), ks.len(), "listed twice: {names:?}");
    // From the preset: hidden 64, head_dim 16 (q 4 heads, k 2), seq 4, vocab 256, ffn 172.
    let mut want: Vec<Kernel> = vec![
        lib::rmsnorm_grad(64),
        lib::rope(64, 16, 4),
        lib::rope(32, 16, 4),
        lib::rope_grad(64, 16, 4),
        lib::cross_entropy(256, true),
        lib::cross_entropy(256, false),
        lib::silu(172),
        lib::silu_grad(172),
    ];
    // AdamW of every parameter that trains, at the columns the trainer steps it with.
    for ph in &plan.phases {
        for &p in &ph.trainable {
            let info = &plan.params[p];
            want.push(adamw_kernel(
                info.numel() as usize,
                info.shape.get(1).copied().unwrap_or(1),
            ));
        }
    }
    for k in &want {
        assert!(names.contains(k.name.as_str()), "{} missing from {names:?}", k.name);
    }
    assert!(names.iter().any(|n| n.starts_with("rmsnorm_d64_eps")), "{names:?}");
    // Every unfused op of every program finds its instance in the list.
    let mut covered = 0;
    for prog in &progs {
        for ins in &prog.instrs {
            let shapes: Vec<&[usize]> = ins.inputs.iter().map(|&v| prog.values[v].ty.shape.as_slice()).collect();
            if let Some(k) = unfused_kernel(&ins.op, &shapes) {
                assert!(ks.contains(&k), "{}: {} not listed", ins.label, k.name);
                covered += 1;
            }
        }
    }
    assert!(covered > want.len(), "{covered}");
    // One module: support kernels and each instance once.
    let src = module_source(&ks).unwrap();
    for k in &ks {
        let decl = format!("extern \"C\" __global__ void {}(", symbol(&k.name));
        assert_eq!(src.matches(&decl).count(), 1, "{decl}");
    }
}

#[test]
fn a_fused_plan_shares_instances_with_its_fused_kernels() {
    let plan = tiny_plan(true);
    let progs = programs(&plan);
    let mut ks: Vec<Kernel> = progs
        .iter()
        .flat_map(|p| &p.instrs)
        .filter_map(|i| {
            if let Op::Fused(k) = &i.op {
                Some((**k).clone())
            } else {
                None
            }
        })
        .collect();
    assert!(!ks.is_empty());
    let unfused = unfused_kernels(progs.iter().copied());
    assert!(unfused.iter().any(|k| k.name.starts_with("adamw_c")), "{unfused:?}");
    ks.extend(unfused);
    // Equal instances under one name compile once; nothing clashes.
    let src = module_source(&ks).unwrap();
    let names: BTreeSet<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    for n in names {
        let decl = format!("extern \"C\" __global__ void {}(", symbol(n));
        assert_eq!(src.matches(&decl).count(), 1, "{decl}");
    }
}
