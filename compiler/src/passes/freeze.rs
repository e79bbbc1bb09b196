//! Freeze phases: which tensors train in which steps, and one program per phase.
//!
//! Expects the IR's parameter table and adapters (with each column-frozen
//! tensor's schedule) and the run length T. Guarantees: the steps 0..T are
//! cut into consecutive phases at every step where some column-frozen tensor
//! becomes fully frozen (`t_i` for `linear` and `at`, step 0 for `now`); in a
//! phase the trainable set is fixed, so each phase gets its own backward
//! program: once every column of a B is frozen its program has no dB, and
//! the forward value u that only dB needed is no longer kept alive. Partial
//! freezing inside a phase (the `linear` schedule's growing f(t)) is not a
//! different program: dB is computed in full and its frozen columns are
//! masked by the optimizer. It does not decide anything for non-adapter
//! parameters (they never train).

use std::collections::BTreeSet;

use crate::ir::{Ir, ParamId, ParamRole};

/// A run of steps with one trainable set.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// First step (0-based, inclusive).
    pub from: u64,
    /// One past the last step.
    pub to: u64,
    /// The parameters that receive gradients.
    pub trainable: BTreeSet<ParamId>,
}

/// Cuts `0..steps` into phases.
pub fn phases(ir: &Ir, steps: u64) -> Vec<Phase> {
    let mut cuts: BTreeSet<u64> = BTreeSet::new();
    cuts.insert(0);
    for a in &ir.adapters {
        if let Some((_, s)) = a.column_frozen
            && let Some(t) = s.all_frozen_from(steps)
            && t < steps
        {
            cuts.insert(t);
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut out = Vec::new();
    for (i, &from) in cuts.iter().enumerate() {
        let to = cuts.get(i + 1).copied().unwrap_or(steps.max(from + 1));
        out.push(Phase {
            from,
            to,
            trainable: trainable_at(ir, from, steps),
        });
    }
    out
}

/// The parameters that train at step `t` of `steps`.
pub fn trainable_at(ir: &Ir, t: u64, steps: u64) -> BTreeSet<ParamId> {
    let mut set = BTreeSet::new();
    for (p, info) in ir.params.iter().enumerate() {
        if matches!(info.role, ParamRole::Head { .. }) {
            set.insert(p); // the task head trains at every step
            continue;
        }
        let ParamRole::Adapter {
            adapter,
            trainable: true,
            column_frozen,
            ..
        } = info.role
        else {
            continue;
        };
        if column_frozen
            && let Some((_, s)) = ir.adapters[adapter].column_frozen
            && s.all_frozen_from(steps).is_some_and(|f| t >= f)
        {
            continue;
        }
        set.insert(p);
    }
    set
}
