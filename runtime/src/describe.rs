//! Human-readable descriptions of a compiled Plan (`lamdac plan`).

use std::fmt::Write;

use lamda_compiler::ir::ParamRole;
use lamda_compiler::plan::Plan;
use lamda_compiler::report::bytes;

/// Ranks and energies, phases with their programs, and the memory plan.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for {} ({}), micro-batch {} x {} tokens",
        plan.model_name, plan.family, plan.batch, plan.seq
    );
    let _ = writeln!(out, "\nadapted modules ({}):", plan.adapters.len());
    for a in &plan.adapters {
        let sched = a
            .column_frozen
            .map(|(_, s)| format!("  freeze_b {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<40} {:<6} rank {:>4}  {} x {}{sched}",
            a.hf_name, a.method, a.rank, a.d_out, a.d_in
        );
    }
    // the task head (`head classify`): trained at full rank beside the adapters
    let head: Vec<usize> = (0..plan.params.len())
        .filter(|&i| matches!(plan.params[i].role, ParamRole::Head { .. }))
        .collect();
    if let Some(h) = plan.train.head {
        let n: u64 = head.iter().map(|&i| plan.params[i].numel()).sum();
        let pool = match h.pool {
            lamda_compiler::spec::Pool::Cls => "cls: the first token, through the family's pooler when it has one",
            lamda_compiler::spec::Pool::Mean => "mean: the mean over each sequence's tokens",
        };
        let _ = writeln!(
            out,
            "\ntask head: classify, {} labels, pool {pool}; {n} parameters train at full rank:",
            h.labels
        );
        for &i in &head {
            let p = &plan.params[i];
            let shape: Vec<String> = p.shape.iter().map(usize::to_string).collect();
            let _ = writeln!(out, "  {:<40} {}", p.name, shape.join(" x "));
        }
    }
    for al in &plan.allocation {
        let _ = writeln!(
            out,
            "\nrule {}: rank auto(budget = {}), r0 = {}",
            al.rule, al.budget, al.r0
        );
        if !al.allocated {
            let _ = writeln!(
                out,
                "  no weights: every module is at the uniform r0 (pass --weights DIR or `use` a checkpoint)"
            );
            continue;
        }
        let _ = writeln!(out, "  {:<40} {:>10} {:>6}", "module", "energy", "rank");
        for (name, e, r) in &al.modules {
            let _ = writeln!(out, "  {name:<40} {e:>10.6} {r:>6}");
        }
        let sum: u64 = al.modules.iter().map(|m| m.2).sum();
        let _ = writeln!(out, "  sum of ranks {sum} of budget {}", al.budget);
    }
    let _ = writeln!(out, "\nphases:");
    for p in &plan.phases {
        let trainable: u64 = p.trainable.iter().map(|&i| plan.params[i].numel()).sum();
        let of_head: u64 = p
            .trainable
            .iter()
            .filter(|i| head.contains(i))
            .map(|&i| plan.params[i].numel())
            .sum();
        let m = &p.program.memory;
        let _ = writeln!(
            out,
            "  steps {}..{}: {} tensors train ({} parameters{}); {} instructions; saved for backward {} (adapters {}), activation peak {}",
            p.from,
            p.to,
            p.trainable.len(),
            trainable,
            if of_head > 0 {
                format!(", the head's {of_head} included")
            } else {
                String::new()
            },
            p.program.instrs.len(),
            bytes(m.saved_bytes),
            bytes(m.saved_by_adapter.values().sum()),
            bytes(m.peak_bytes)
        );
        for (&a, &b) in &m.saved_by_adapter {
            let saved: Vec<String> = p
                .program
                .values
                .iter()
                .filter(|v| v.saved && v.adapter == Some(a))
                .map(|v| format!("{} {}", v.label, v.ty))
                .collect();
            let _ = writeln!(
                out,
                "    {:<38} saves {} : {}",
                plan.adapters[a].hf_name,
                bytes(b),
                saved.join(", ")
            );
        }
    }
    let m = &plan.memory;
    let frozen: u64 = plan
        .params
        .iter()
        .filter(|p| !p.owned_by_run())
        .map(|p| p.numel())
        .sum();
    let _ = writeln!(
        out,
        "\nmemory (f32): weights {} ({frozen} parameters) + adapters {} + grads {} + optimizer {} + activations {} = {}",
        bytes(m.weights),
        bytes(m.adapters),
        bytes(m.grads),
        bytes(m.optimizer),
        bytes(m.activations_peak),
        bytes(m.total_peak)
    );
    out
}
