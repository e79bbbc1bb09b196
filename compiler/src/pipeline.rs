//! The compiler pipeline: from a checked spec to a Plan, one line per pass.
//!
//! The IR is verified after every pass, and every program of the Plan before
//! it is returned, in release builds too; the time both verifiers took is in
//! [`Plan::verify`].

use std::collections::BTreeSet;

use crate::ir::build::build_forward;
use crate::ir::verify::verify;
use crate::ir::verify_program::{self, ProgramError};
use crate::ir::{Ir, ParamInfo, ParamRole};
use crate::passes::{adapter_init, autodiff, encoder_kernels, freeze, fusion, memory_plan, rank_alloc};
use crate::plan::{MemorySummary, PhasePlan, Plan, RuleAllocation, VerifyTimes};
use crate::spec::{RankChoice, ResolvedSpec};

/// Energy scores of weights, for `rank auto` (the runtime reads the weights).
pub trait Spectra {
    /// `E = sum_{i<r0} s_i^2 / ||W||_F^2` of the checkpoint tensor `weight`.
    fn energy(&mut self, weight: &str, r0: u64) -> Result<f64, String>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("building the IR: {0}")]
    Build(#[from] crate::ir::build::BuildError),
    #[error("{0}")]
    Verify(#[from] crate::ir::verify::VerifyError),
    #[error("{0}")]
    Autodiff(#[from] autodiff::AutodiffError),
    #[error("{0}")]
    Init(#[from] adapter_init::InitError),
    #[error("rank auto of rule {rule}: {msg}")]
    Alloc { rule: usize, msg: String },
    /// A lowered program breaks an invariant (a compiler bug).
    #[error("{program}: {source}")]
    Program { program: String, source: ProgramError },
}

/// Runs the IR verifier (in every build) and keeps count of its time.
fn checked(ir: Ir, times: &mut VerifyTimes) -> Result<Ir, CompileError> {
    let t = std::time::Instant::now();
    let r = verify(&ir);
    times.ir += t.elapsed();
    times.ir_runs += 1;
    r?;
    Ok(ir)
}

/// Runs the program verifier on every program of `plan` and records its time.
fn verify_programs(plan: &mut Plan) -> Result<(), CompileError> {
    let t = std::time::Instant::now();
    let rows = plan.batch * plan.seq;
    let programs = plan
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("phase {i}"), &p.program, p.trainable.as_slice()))
        .chain(std::iter::once(("eval".to_string(), &plan.eval, &[][..])));
    let mut result = Ok(());
    let mut runs = 0;
    for (name, prog, trainable) in programs {
        let cx = verify_program::Context {
            rows,
            batch: plan.batch,
            params: &plan.params,
            trainable,
        };
        runs += 1;
        if let Err(source) = verify_program::verify_program(prog, cx) {
            result = Err(CompileError::Program { program: name, source });
            break;
        }
    }
    plan.verify.program_runs += runs;
    plan.verify.programs += t.elapsed();
    result
}

/// How to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Run the fusion pass (generated kernels; needs a backend that runs them).
    pub fuse: bool,
    /// With `fuse`, also merge the LM head GEMM, the cross-entropy and the
    /// head's input gradient into one chunked `linear_cross_entropy` (the CPU
    /// backend runs it; the CUDA backend keeps the three ops for now).
    pub head_loss: bool,
}

/// Compiles a spec for micro-batches of `batch` x `seq` tokens, unfused. With
/// `spectra`, `rank auto` rules get their LaMDA++ ranks; without, they stay
/// at the uniform r0 (and the plan says so).
pub fn compile(
    spec: &ResolvedSpec,
    batch: usize,
    seq: usize,
    spectra: Option<&mut dyn Spectra>,
) -> Result<Plan, CompileError> {
    compile_with(spec, batch, seq, spectra, Options::default())
}

/// [`compile`] with options.
pub fn compile_with(
    spec: &ResolvedSpec,
    batch: usize,
    seq: usize,
    spectra: Option<&mut dyn Spectra>,
    options: Options,
) -> Result<Plan, CompileError> {
    let mut spec = spec.clone();
    let mut times = VerifyTimes::default();
    // 1. rank_alloc: ranks first, since they fix every adapter shape.
    let allocation = allocate_ranks(&mut spec, spectra)?;
    // 2. build: the forward graph with the adapters attached, loss with its gradient.
    let forward = checked(build_forward(&spec, batch, seq, true)?, &mut times)?;
    // 3. adapter_init: how the runtime fills adapter tensors and residual weights.
    let init = adapter_init::init_recipes(&forward, spec.train.seed)?;
    // 4. freeze: the phases of the run, each with its trainable set.
    let phases = freeze::phases(&forward, spec.train.steps);
    // 5. autodiff + memory_plan per phase: backward for what trains, then buffers.
    let ever_trainable: BTreeSet<usize> = phases.iter().flat_map(|p| p.trainable.iter().copied()).collect();
    let mut planned = Vec::new();
    // Fusion adds derived parameters (stacked weights, tables): the plan's table is their union.
    let mut params = forward.params.clone();
    for ph in &phases {
        let mut ir = autodiff::autodiff(forward.clone(), &ph.trainable)?;
        encoder_kernels::lower(&mut ir);
        let mut ir = checked(ir, &mut times)?;
        // fusion: after autodiff, so backward kernels fuse too; before the memory plan.
        // Derived parameters are found by name, so programs share them.
        if options.fuse {
            ir.params = params.clone();
            fusion::fuse(&mut ir, &ever_trainable, options.head_loss);
            ir = checked(ir, &mut times)?;
            params = ir.params.clone();
        }
        planned.push(PhasePlan {
            from: ph.from,
            to: ph.to,
            trainable: ph.trainable.iter().copied().collect(),
            program: memory_plan::plan_memory(&ir),
        });
    }
    // 6. eval: forward only (loss and logits), planned the same way.
    let mut eval_ir = build_forward(&spec, batch, seq, false)?;
    encoder_kernels::lower(&mut eval_ir);
    let mut eval_ir = checked(eval_ir, &mut times)?;
    if options.fuse {
        eval_ir.params = params.clone();
        fusion::fuse(&mut eval_ir, &ever_trainable, options.head_loss);
        eval_ir = checked(eval_ir, &mut times)?;
        params = eval_ir.params.clone();
    }
    let eval = memory_plan::plan_memory(&eval_ir);
    let memory = summarize(&params, &planned, &eval);
    let mut plan = Plan {
        model_name: spec.model_name.clone(),
        family: spec.model.family.clone(),
        source: spec.model.source.clone(),
        model_params: spec.model.params.clone(),
        batch,
        seq,
        vocab: forward.vocab,
        params,
        adapters: forward.adapters.clone(),
        init,
        phases: planned,
        eval,
        train: spec.train.clone(),
        allocation,
        memory,
        fused: options.fuse,
        verify: times,
    };
    // 7. the program verifier, on what the runtime gets.
    verify_programs(&mut plan)?;
    Ok(plan)
}

/// The IR of the first phase (for `lamdac emit`): the forward graph, with
/// `backward` also its backward, with `fuse` after the fusion pass.
pub fn emit_ir(spec: &ResolvedSpec, batch: usize, seq: usize, backward: bool) -> Result<Ir, CompileError> {
    emit_ir_with(spec, batch, seq, backward, Options::default())
}

/// [`emit_ir`] with options.
pub fn emit_ir_with(
    spec: &ResolvedSpec,
    batch: usize,
    seq: usize,
    backward: bool,
    options: Options,
) -> Result<Ir, CompileError> {
    let mut times = VerifyTimes::default();
    let forward = checked(build_forward(spec, batch, seq, backward)?, &mut times)?;
    let phases = freeze::phases(&forward, spec.train.steps);
    let ever: BTreeSet<usize> = phases.iter().flat_map(|p| p.trainable.iter().copied()).collect();
    let mut ir = if backward {
        let trainable = phases.first().map(|p| p.trainable.clone()).unwrap_or_default();
        checked(autodiff::autodiff(forward, &trainable)?, &mut times)?
    } else {
        forward
    };
    if options.fuse {
        encoder_kernels::lower(&mut ir);
        fusion::fuse(&mut ir, &ever, options.head_loss);
        ir = checked(ir, &mut times)?;
    }
    Ok(ir)
}

fn allocate_ranks(
    spec: &mut ResolvedSpec,
    mut spectra: Option<&mut dyn Spectra>,
) -> Result<Vec<RuleAllocation>, CompileError> {
    let mut out = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        let RankChoice::Auto { budget, min, max, r0 } = rule.rank else {
            continue;
        };
        let mods: Vec<usize> = rule.modules.clone();
        let Some(sp) = spectra.as_deref_mut() else {
            out.push(RuleAllocation {
                rule: rule.number,
                budget,
                r0,
                modules: mods
                    .iter()
                    .map(|&m| (spec.modules[m].hf_name.clone(), f64::NAN, r0))
                    .collect(),
                allocated: false,
            });
            continue;
        };
        let mut inputs = Vec::new();
        for &m in &mods {
            let am = &spec.modules[m];
            let weight = format!("{}.weight", am.hf_name);
            let energy = sp
                .energy(&weight, r0)
                .map_err(|msg| CompileError::Alloc { rule: rule.number, msg })?;
            inputs.push(rank_alloc::AllocModule {
                energy,
                d_in: am.d_in,
                d_out: am.d_out,
            });
        }
        let alloc = rank_alloc::allocate(
            &inputs,
            rank_alloc::AllocBudget {
                budget,
                r_min: min,
                r_max: max,
            },
        )
        .map_err(|e| CompileError::Alloc {
            rule: rule.number,
            msg: e.to_string(),
        })?;
        out.push(RuleAllocation {
            rule: rule.number,
            budget,
            r0: alloc.r0,
            modules: mods
                .iter()
                .zip(inputs.iter().zip(&alloc.ranks))
                .map(|(&m, (i, &r))| (spec.modules[m].hf_name.clone(), i.energy, r))
                .collect(),
            allocated: true,
        });
        let _ = ri;
        for (&m, &r) in mods.iter().zip(&alloc.ranks) {
            spec.modules[m].rank = r;
        }
    }
    Ok(out)
}

/// Bytes of the executor's buffer pool for `programs`: one buffer per slot
/// index, as large as the largest slot of that index in any of them (one
/// program runs at a time, so they share the pool).
pub fn pool_bytes<'p>(programs: impl IntoIterator<Item = &'p memory_plan::Program>) -> u64 {
    let mut slots: Vec<u64> = Vec::new();
    for prog in programs {
        for (s, &b) in prog.memory.slots.iter().enumerate() {
            if slots.len() <= s {
                slots.push(0);
            }
            // the executor holds f32 values: a slot is rounded up to whole floats
            slots[s] = slots[s].max(b.div_ceil(4).saturating_mul(4));
        }
    }
    slots.into_iter().fold(0u64, u64::saturating_add)
}

fn summarize(params: &[ParamInfo], phases: &[PhasePlan], eval: &memory_plan::Program) -> MemorySummary {
    let mut m = MemorySummary::default();
    // Weights the programs read; parts of a stacked weight live only in the stack.
    let used: BTreeSet<usize> = phases
        .iter()
        .map(|p| &p.program)
        .chain(std::iter::once(eval))
        .flat_map(|prog| prog.instrs.iter())
        .filter_map(|ins| match ins.op {
            crate::ir::Op::Param(p) | crate::ir::Op::ParamSlice { param: p, .. } => Some(p),
            _ => None,
        })
        .collect();
    // Sizes are bounded (crate::limits); the sums saturate all the same.
    let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
    let bytes = |i: usize| params[i].numel().saturating_mul(4);
    for (i, p) in params.iter().enumerate() {
        let b = bytes(i);
        if !used.contains(&i) && !matches!(p.role, ParamRole::Adapter { .. } | ParamRole::Head { .. }) {
            continue;
        }
        match p.role {
            ParamRole::Base { .. } | ParamRole::Residual { .. } | ParamRole::Concat { .. } | ParamRole::Table(_) => {
                add(&mut m.weights, b)
            }
            ParamRole::Adapter { .. } | ParamRole::Head { .. } => add(&mut m.adapters, b),
        }
    }
    let ever: BTreeSet<usize> = phases.iter().flat_map(|p| p.trainable.iter().copied()).collect();
    let first: u64 = phases.first().map_or(0, |p| {
        p.trainable.iter().map(|&i| bytes(i)).fold(0u64, u64::saturating_add)
    });
    m.grads = first;
    m.optimizer = ever
        .iter()
        .map(|&i| bytes(i))
        .fold(0u64, u64::saturating_add)
        .saturating_mul(2);
    m.activations_live = phases.iter().map(|p| p.program.memory.peak_bytes).max().unwrap_or(0);
    m.activations_peak = pool_bytes(phases.iter().map(|p| &p.program).chain(std::iter::once(eval)));
    // (saved bytes, of which adapters') of a phase
    let saved = |p: &PhasePlan| {
        let mem = &p.program.memory;
        let adapters = mem.saved_by_adapter.values().fold(0u64, |a, &b| a.saturating_add(b));
        (mem.saved_bytes, adapters)
    };
    if let Some(p) = phases.first() {
        (m.saved, m.saved_by_adapters) = saved(p);
    }
    if let Some(p) = phases.last() {
        (m.saved_last_phase, m.saved_by_adapters_last_phase) = saved(p);
    }
    m.total_peak = [m.weights, m.adapters, m.grads, m.optimizer, m.activations_peak]
        .into_iter()
        .fold(0u64, u64::saturating_add);
    m
}
