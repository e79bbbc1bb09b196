//! The Plan: the compiled artifact, and the only thing the runtime takes from the compiler.
//!
//! It holds the parameter table (checkpoint names, shapes, roles), the
//! adapted modules with their initialisation recipes, one planned program per
//! freeze phase (forward + backward for that phase's trainable set), a
//! forward-only evaluation program, the training configuration, the rank
//! allocation, and the memory summary.

use crate::consteval::Const;
use crate::ir::{AdapterInfo, ParamInfo};
use crate::model::ModelSource;
use crate::passes::adapter_init::InitRecipe;
use crate::passes::memory_plan::Program;
use crate::spec::TrainConfig;

/// One freeze phase and its program.
#[derive(Debug, Clone, PartialEq)]
pub struct PhasePlan {
    pub from: u64,
    pub to: u64,
    /// Indices into [`Plan::params`] that train in this phase.
    pub trainable: Vec<usize>,
    pub program: Program,
}

/// LaMDA++ allocation of one `rank auto` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleAllocation {
    pub rule: usize,
    pub budget: u64,
    pub r0: u64,
    /// Per module of the rule: (HF module name, energy, rank).
    pub modules: Vec<(String, f64, u64)>,
    /// False when no weights were available: every module is at r0.
    pub allocated: bool,
}

/// Memory of a training step, in bytes (float32 storage).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemorySummary {
    pub weights: u64,
    pub adapters: u64,
    pub grads: u64,
    pub optimizer: u64,
    /// Activations as the runtime holds them: the buffer pool the executor
    /// allocates from the memory plans' slots (phases and evaluation share
    /// it; see [`crate::pipeline::pool_bytes`]). At least `activations_live`.
    pub activations_peak: u64,
    /// Largest sum of live activation bytes at any instruction of a phase
    /// (the lower bound a perfect packing of the buffers would reach).
    pub activations_live: u64,
    /// Saved activations (for backward) in the first phase: all, and the adapters' share.
    pub saved: u64,
    pub saved_by_adapters: u64,
    /// ... and in the last phase (B frozen where it freezes).
    pub saved_last_phase: u64,
    pub saved_by_adapters_last_phase: u64,
    pub total_peak: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub model_name: String,
    pub family: String,
    pub source: ModelSource,
    /// The family's parameters (vocab, hidden, heads, ...).
    pub model_params: Vec<(String, Const)>,
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    pub params: Vec<ParamInfo>,
    pub adapters: Vec<AdapterInfo>,
    pub init: Vec<InitRecipe>,
    pub phases: Vec<PhasePlan>,
    /// Forward only: loss and logits.
    pub eval: Program,
    pub train: TrainConfig,
    pub allocation: Vec<RuleAllocation>,
    pub memory: MemorySummary,
    /// Whether the programs were fused (they contain generated kernels).
    pub fused: bool,
    /// Time the verifiers took while compiling this plan.
    pub verify: VerifyTimes,
}

/// Time spent in the IR verifier (after every pass) and the program verifier
/// (on every program of the Plan) while compiling, with how often each ran.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VerifyTimes {
    pub ir: std::time::Duration,
    pub ir_runs: u32,
    pub programs: std::time::Duration,
    pub program_runs: u32,
}

impl Plan {
    /// Every generated kernel the plan runs (all phases, the evaluation, and
    /// AdamW for each trainable width when fused), in first-use order,
    /// deduplicated by name.
    pub fn kernels(&self) -> Vec<crate::kernel::Kernel> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let programs = self
            .phases
            .iter()
            .map(|p| &p.program)
            .chain(std::iter::once(&self.eval));
        for prog in programs {
            for ins in &prog.instrs {
                if let crate::ir::Op::Fused(k) = &ins.op
                    && seen.insert(k.name.clone())
                {
                    out.push((**k).clone());
                }
            }
        }
        if self.fused {
            for p in self.phases.iter().flat_map(|p| p.trainable.iter()) {
                let cols = self.params[*p].shape.get(1).copied().unwrap_or(1);
                let k = crate::kernel::lib::adamw(cols);
                if seen.insert(k.name.clone()) {
                    out.push(k);
                }
            }
        }
        out
    }

    /// The phase that covers step `t`.
    pub fn phase_at(&self, t: u64) -> Option<&PhasePlan> {
        self.phases.get(self.phase_index_at(t)?)
    }

    /// The index of the phase that covers step `t` (the last one past the end).
    pub fn phase_index_at(&self, t: u64) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| p.from <= t && t < p.to)
            .or(self.phases.len().checked_sub(1))
    }
}
