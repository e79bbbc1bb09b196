//! Memory plan: lowers a phase's graph to a linear program and plans its buffers.
//!
//! Expects a verified IR (forward, and backward if it trains). Guarantees:
//! instructions in node-index order (a topological order); every value gets
//! its last use, and is released right after it (a value nobody reads is
//! released after the instruction that makes it, except the loss and the
//! logits, which live to the end); values made by the forward part and read
//! by the backward part are the *saved activations*, each attributed to the
//! adapter module whose backward reads it (or to the base model); the peak
//! is the largest sum of live activation bytes at any instruction, and
//! buffers are assigned to reusable slots (the smallest free slot that holds
//! the value and is at most a quarter larger, the lowest-numbered of equal
//! size; a new slot otherwise: a value keeps its slot until its last use, so
//! a saved activation in a much larger slot would waste the difference for
//! the whole backward; free slots are kept ordered by size, so planning takes
//! O(n log n), not O(n^2), in the number of values). The runtime's pool
//! allocates one buffer per slot number, shared by the programs of a plan,
//! so slots are numbered largest first. Parameters, gradients and optimizer state are not
//! activations: the runtime owns them and the [`crate::plan`] summary adds
//! them. It does not reorder instructions to lower the peak (a later pass
//! could; the forward-then-backward order of the builder is kept).
//! `crate::ir::verify_program` checks the lowered program's invariants
//! (definitions, releases, op contracts, slots) on every program of the Plan.

use std::collections::BTreeMap;

use crate::ir::{Ir, NodeId, Op, TensorType, Value};

/// A value of a lowered program.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub ty: TensorType,
    pub label: String,
    /// A parameter (bound by the runtime, never allocated).
    pub param: Option<usize>,
    /// Made by the forward part, read by the backward part.
    pub saved: bool,
    /// The adapter module whose backward reads it (for saved values; the first
    /// of several that share it; none when the base model's backward reads it too).
    pub adapter: Option<usize>,
    /// Buffer slot (none for parameters).
    pub slot: Option<usize>,
}

/// One instruction: an op on values.
#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// Values whose last use is this instruction: release them after it.
    pub release: Vec<usize>,
    pub label: String,
    /// Part of the backward program.
    pub backward: bool,
}

/// Bytes of the activations of one program.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryPlan {
    /// Largest sum of live activation bytes.
    pub peak_bytes: u64,
    /// Bytes of all saved activations.
    pub saved_bytes: u64,
    /// Saved bytes per adapter module (index into the IR's adapters).
    pub saved_by_adapter: BTreeMap<usize, u64>,
    /// Saved bytes the base model keeps for its own backward.
    pub saved_base_bytes: u64,
    /// Capacities of the reusable buffer slots.
    pub slots: Vec<u64>,
}

/// A lowered, planned program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub values: Vec<ValueInfo>,
    pub instrs: Vec<Instr>,
    pub loss: Option<usize>,
    pub logits: Option<usize>,
    pub memory: MemoryPlan,
}

/// Lowers and plans `ir`.
pub fn plan_memory(ir: &Ir) -> Program {
    let order = ir.order();
    let mut index: BTreeMap<Value, usize> = BTreeMap::new();
    let mut values: Vec<ValueInfo> = Vec::new();
    let mut instrs: Vec<Instr> = Vec::new();
    let mut pos: BTreeMap<NodeId, usize> = BTreeMap::new();
    for &id in &order {
        let node = &ir.graph[id];
        let inputs: Vec<usize> = ir.inputs(id).iter().filter_map(|v| index.get(v).copied()).collect();
        let mut outputs = Vec::new();
        for (o, ty) in node.outputs.iter().enumerate() {
            let param = match node.op {
                Op::Param(p) | Op::ParamSlice { param: p, .. } => Some(p),
                _ => None,
            };
            index.insert((id, o as u8), values.len());
            outputs.push(values.len());
            let label = if node.outputs.len() > 1 {
                format!("{}#{o}", node.label)
            } else {
                node.label.clone()
            };
            values.push(ValueInfo {
                ty: ty.clone(),
                label,
                param,
                saved: false,
                adapter: None,
                slot: None,
            });
        }
        pos.insert(id, instrs.len());
        instrs.push(Instr {
            op: node.op.clone(),
            inputs,
            outputs,
            release: Vec::new(),
            label: node.label.clone(),
            backward: node.backward,
        });
    }
    let loss = ir.loss.and_then(|v| index.get(&v).copied());
    let logits = ir.logits.and_then(|v| index.get(&v).copied());
    // Producer and last use of every value.
    let mut def = vec![0usize; values.len()];
    let mut last = vec![None::<usize>; values.len()];
    for (i, ins) in instrs.iter().enumerate() {
        for &o in &ins.outputs {
            def[o] = i;
        }
        for &v in &ins.inputs {
            last[v] = Some(i);
        }
    }
    let end = instrs.len().saturating_sub(1);
    // Saved activations and their attribution.
    let mut base_reads = vec![false; values.len()];
    for (i, ins) in instrs.iter().enumerate() {
        if !ins.backward {
            continue;
        }
        let tag = ir.graph[order[i]].adapter;
        for &v in &ins.inputs {
            let producer = &instrs[def[v]];
            if values[v].param.is_none() && !producer.backward {
                let first = !values[v].saved;
                values[v].saved = true;
                match tag {
                    // Read by the base model's backward: the base keeps it anyway.
                    None => base_reads[v] = true,
                    // The first adapter to read it owns it (several adapters may share an input).
                    Some(_) if first || values[v].adapter.is_none() => values[v].adapter = tag,
                    Some(_) => {}
                }
            }
        }
    }
    for (v, info) in values.iter_mut().enumerate() {
        if base_reads[v] {
            info.adapter = None;
        }
    }
    let mut memory = MemoryPlan::default();
    for v in &values {
        if v.saved {
            let b = v.ty.bytes();
            memory.saved_bytes = memory.saved_bytes.saturating_add(b);
            match v.adapter {
                Some(a) => {
                    let e = memory.saved_by_adapter.entry(a).or_default();
                    *e = e.saturating_add(b);
                }
                None => memory.saved_base_bytes = memory.saved_base_bytes.saturating_add(b),
            }
        }
    }
    // Release points, peak and slots.
    for (v, info) in values.iter().enumerate() {
        if info.param.is_some() {
            continue;
        }
        let keep = Some(v) == loss || Some(v) == logits;
        let at = if keep { end } else { last[v].unwrap_or(def[v]) };
        instrs[at].release.push(v);
    }
    let mut live = 0u64;
    // free slots as (bytes, slot): the best fit is the first at or above a size
    let mut free_slots: std::collections::BTreeSet<(u64, usize)> = std::collections::BTreeSet::new();
    for ins in &instrs {
        for &o in &ins.outputs {
            if values[o].param.is_some() {
                continue;
            }
            let bytes = values[o].ty.bytes();
            live = live.saturating_add(bytes);
            // the smallest free slot that holds it without wasting more than a
            // quarter of itself (a value keeps its slot until its last use,
            // for a saved activation the whole backward): else a new slot
            let best = free_slots
                .range((bytes, 0)..)
                .next()
                .copied()
                .filter(|&(cap, _)| cap <= bytes.saturating_add(bytes / 4));
            let slot = match best {
                Some(k) => {
                    free_slots.remove(&k);
                    memory.slots[k.1] = memory.slots[k.1].max(bytes);
                    k.1
                }
                None => {
                    memory.slots.push(bytes);
                    memory.slots.len() - 1
                }
            };
            values[o].slot = Some(slot);
        }
        memory.peak_bytes = memory.peak_bytes.max(live);
        for &v in &ins.release {
            live = live.saturating_sub(values[v].ty.bytes());
            if let Some(s) = values[v].slot {
                free_slots.insert((memory.slots[s], s));
            }
        }
    }
    // Number the slots largest first: programs run one at a time share one
    // pool with a buffer per slot number, so their large slots line up.
    let mut order: Vec<usize> = (0..memory.slots.len()).collect();
    order.sort_by_key(|&s| (std::cmp::Reverse(memory.slots[s]), s));
    let mut renumber = vec![0usize; order.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = new;
    }
    memory.slots = order.iter().map(|&s| memory.slots[s]).collect();
    for v in &mut values {
        v.slot = v.slot.map(|s| renumber[s]);
    }
    Program {
        values,
        instrs,
        loss,
        logits,
        memory,
    }
}
