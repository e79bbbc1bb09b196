//! The program verifier: checks a lowered, planned [`Program`] before the runtime runs it.
//!
//! The pipeline runs it on every program of the Plan (each phase's and the
//! evaluation's), in release builds too. Invariants, each a
//! [`ProgramErrorKind`]:
//! 1. Every value index an instruction names exists; every slot index a value
//!    names exists.
//! 2. Every value is defined exactly once, by one instruction's outputs.
//! 3. Every input of an instruction was defined by an earlier instruction and
//!    has not been released yet (a value released by instruction i is dead
//!    after i; i itself may still read it).
//! 4. Every released value was defined at or before the releasing
//!    instruction and is released once; every non-parameter value is
//!    released (the loss and the logits at the last instruction).
//! 5. An instruction has `op.arity()` operands and as many outputs as its op
//!    makes, of the types the op's shape rule gives its operands
//!    ([`crate::ir::verify::infer_with`], the rule the IR verifier checks and
//!    the executors' contract: `linear` x (n, k), w (m, k) -> (n, m); a fused
//!    kernel's operands are its read arguments, `Rows { cols }` ones 2-D with
//!    those columns and one row count, ...). A `param_slice` declares any shape
//!    of its `len` values.
//! 6. `param` and `param_slice` outputs are the parameter values (bound by the
//!    runtime, no slot); every other value is not, and has a slot.
//! 7. A `param_grad` targets a parameter that trains in the program's phase.
//! 8. A slot's capacity (`memory.slots[s]`) is at least its values' bytes, and
//!    two values live at the same time (from the instruction that defines one
//!    to the one that releases it, both included) never share a slot.
//! 9. `loss` and `logits`, if set, are existing non-parameter f32 values,
//!    released by the last instruction (the runtime reads them after the run).

use crate::ir::verify::infer_with;
use crate::ir::{Dtype, Op, ParamInfo, TensorType};
use crate::passes::memory_plan::Program;

/// A broken invariant: where (the instruction's index and label; none for
/// the program's loss and logits) and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("program verifier: {}: {kind}", place(.instr, .label))]
pub struct ProgramError {
    pub instr: Option<usize>,
    pub label: String,
    pub kind: Box<ProgramErrorKind>,
}

fn place(instr: &Option<usize>, label: &str) -> String {
    match instr {
        Some(i) => format!("instruction {i} ({label})"),
        None => label.to_string(),
    }
}

/// What is broken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgramErrorKind {
    #[error("names value {value}, and the program has {count}")]
    NoSuchValue { value: usize, count: usize },
    #[error("value {value} names slot {slot}, and the plan has {count}")]
    NoSuchSlot { value: usize, slot: usize, count: usize },
    #[error("defines value {value} `{name}`, already defined by instruction {first}")]
    Redefined { value: usize, name: String, first: usize },
    #[error("value {value} `{name}` is never defined")]
    NeverDefined { value: usize, name: String },
    #[error("operand {operand} reads value {value} `{name}`, which no earlier instruction defines")]
    Undefined { operand: usize, value: usize, name: String },
    #[error("operand {operand} reads value {value} `{name}`, released by instruction {released}")]
    Released {
        operand: usize,
        value: usize,
        name: String,
        released: usize,
    },
    #[error("releases value {value} `{name}`, which is not defined yet")]
    ReleaseUndefined { value: usize, name: String },
    #[error("releases value {value} `{name}`, already released by instruction {first}")]
    ReleasedTwice { value: usize, name: String, first: usize },
    #[error("value {value} `{name}` is never released")]
    NeverReleased { value: usize, name: String },
    #[error("{op} takes {expected} operands, found {found}")]
    Operands {
        op: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{op} makes {expected} outputs, found {found}")]
    Outputs {
        op: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{0}")]
    Shape(String),
    #[error("output {output} `{name}` is {found}, its operands give {expected}")]
    OutputType {
        output: usize,
        name: String,
        found: TensorType,
        expected: TensorType,
    },
    #[error("value {value} `{name}`: {msg}")]
    Param { value: usize, name: String, msg: String },
    #[error("value {value} `{name}` has no slot")]
    NoSlot { value: usize, name: String },
    #[error("value {value} `{name}` of {bytes} bytes is in slot {slot} of {capacity}")]
    SlotTooSmall {
        value: usize,
        name: String,
        slot: usize,
        bytes: u64,
        capacity: u64,
    },
    #[error("value {value} `{name}` shares slot {slot} with value {other} `{other_name}`, live at the same time")]
    SlotShared {
        value: usize,
        name: String,
        other: usize,
        other_name: String,
        slot: usize,
    },
    #[error("the gradient of `{name}`, which does not train in this phase")]
    GradNotTrainable { name: String },
    #[error("{what} is value {value}: {msg}")]
    Result {
        what: &'static str,
        value: usize,
        msg: String,
    },
}

/// What a program is checked against: the Plan's rows (`batch * seq`), its
/// parameter table, and the parameters that train in the program's phase
/// (empty for the evaluation program).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub rows: usize,
    /// Sequences per micro-batch (the rows of per-sequence values).
    pub batch: usize,
    pub params: &'a [ParamInfo],
    pub trainable: &'a [usize],
}

/// Checks every invariant of the module doc; returns the first broken one.
pub fn verify_program(prog: &Program, cx: Context<'_>) -> Result<(), ProgramError> {
    let count = prog.values.len();
    let name = |v: usize| prog.values.get(v).map(|i| i.label.clone()).unwrap_or_default();
    let mut def: Vec<Option<usize>> = vec![None; count];
    let mut released: Vec<Option<usize>> = vec![None; count];
    for (i, ins) in prog.instrs.iter().enumerate() {
        let fail = |kind: ProgramErrorKind| ProgramError {
            instr: Some(i),
            label: ins.label.clone(),
            kind: Box::new(kind),
        };
        let exists = |value: usize| {
            if value < count {
                Ok(())
            } else {
                Err(fail(ProgramErrorKind::NoSuchValue { value, count }))
            }
        };
        // 3. operands: defined earlier, not released before this instruction.
        for (operand, &value) in ins.inputs.iter().enumerate() {
            exists(value)?;
            if def[value].is_none() {
                return Err(fail(ProgramErrorKind::Undefined {
                    operand,
                    value,
                    name: name(value),
                }));
            }
            if let Some(r) = released[value] {
                return Err(fail(ProgramErrorKind::Released {
                    operand,
                    value,
                    name: name(value),
                    released: r,
                }));
            }
        }
        // 2. outputs: defined once.
        for &value in &ins.outputs {
            exists(value)?;
            if let Some(first) = def[value] {
                return Err(fail(ProgramErrorKind::Redefined {
                    value,
                    name: name(value),
                    first,
                }));
            }
            def[value] = Some(i);
        }
        // 5-7. the op's contract.
        check_op(prog, cx, ins).map_err(fail)?;
        // 4. releases.
        for &value in &ins.release {
            exists(value)?;
            if def[value].is_none() {
                return Err(fail(ProgramErrorKind::ReleaseUndefined {
                    value,
                    name: name(value),
                }));
            }
            if let Some(first) = released[value] {
                return Err(fail(ProgramErrorKind::ReleasedTwice {
                    value,
                    name: name(value),
                    first,
                }));
            }
            released[value] = Some(i);
        }
    }
    let whole = |kind: ProgramErrorKind| ProgramError {
        instr: None,
        label: "program".into(),
        kind: Box::new(kind),
    };
    for (value, info) in prog.values.iter().enumerate() {
        if def[value].is_none() {
            return Err(whole(ProgramErrorKind::NeverDefined {
                value,
                name: name(value),
            }));
        }
        if info.param.is_none() && released[value].is_none() {
            return Err(whole(ProgramErrorKind::NeverReleased {
                value,
                name: name(value),
            }));
        }
    }
    check_slots(prog, &def, &released)?;
    // 9. loss and logits.
    for (what, v) in [("the loss", prog.loss), ("the logits", prog.logits)] {
        let Some(value) = v else { continue };
        let fail = |msg: &str| {
            Err(ProgramError {
                instr: None,
                label: what.into(),
                kind: Box::new(ProgramErrorKind::Result {
                    what,
                    value,
                    msg: msg.into(),
                }),
            })
        };
        match prog.values.get(value) {
            None => return fail("no such value"),
            Some(info) if info.param.is_some() => return fail("a parameter"),
            Some(info) if info.ty.dtype != Dtype::F32 => return fail("not f32"),
            Some(_) => {}
        }
        // The runtime reads it after the run: its buffer must live to the end.
        if released[value] != prog.instrs.len().checked_sub(1) {
            return fail("released before the last instruction");
        }
    }
    Ok(())
}

/// Operand and output counts, output types, parameter bindings, gradients.
fn check_op(prog: &Program, cx: Context<'_>, ins: &crate::passes::memory_plan::Instr) -> Result<(), ProgramErrorKind> {
    let op = &ins.op;
    let expected = op.arity();
    if ins.inputs.len() != expected {
        return Err(ProgramErrorKind::Operands {
            op: op.name(),
            expected,
            found: ins.inputs.len(),
        });
    }
    let operands: Vec<TensorType> = ins.inputs.iter().map(|&v| prog.values[v].ty.clone()).collect();
    let mut want = infer_with(cx.rows, cx.batch, cx.params, op, &operands).map_err(ProgramErrorKind::Shape)?;
    let bound = match *op {
        Op::Param(p) | Op::ParamSlice { param: p, .. } => Some(p),
        _ => None,
    };
    if let Op::ParamSlice { len, .. } = *op {
        // The slice's shape is its own; only its size and type are fixed.
        want = match ins.outputs.as_slice() {
            [v] if prog.values[*v].ty.numel() == len as u64 && prog.values[*v].ty.dtype == Dtype::F32 => {
                vec![prog.values[*v].ty.clone()]
            }
            _ => vec![TensorType::f32(&[len])],
        };
    }
    if ins.outputs.len() != want.len() {
        return Err(ProgramErrorKind::Outputs {
            op: op.name(),
            expected: want.len(),
            found: ins.outputs.len(),
        });
    }
    for (output, (&v, expected)) in ins.outputs.iter().zip(want).enumerate() {
        let info = &prog.values[v];
        if info.ty != expected {
            return Err(ProgramErrorKind::OutputType {
                output,
                name: info.label.clone(),
                found: info.ty.clone(),
                expected,
            });
        }
        if info.param != bound {
            let msg = match bound {
                Some(p) => format!("the value of parameter {p} is bound to {:?}", info.param),
                None => format!("made by {}, yet bound to parameter {:?}", op.name(), info.param),
            };
            return Err(ProgramErrorKind::Param {
                value: v,
                name: info.label.clone(),
                msg,
            });
        }
        match (info.param, info.slot) {
            (Some(_), Some(s)) => {
                return Err(ProgramErrorKind::Param {
                    value: v,
                    name: info.label.clone(),
                    msg: format!("a parameter in slot {s}"),
                });
            }
            (None, None) => {
                return Err(ProgramErrorKind::NoSlot {
                    value: v,
                    name: info.label.clone(),
                });
            }
            _ => {}
        }
    }
    if let Op::ParamGrad(p) = *op
        && !cx.trainable.contains(&p)
    {
        return Err(ProgramErrorKind::GradNotTrainable {
            name: cx.params.get(p).map(|i| i.name.clone()).unwrap_or_default(),
        });
    }
    Ok(())
}

/// Slot indices, capacities, and that values sharing a slot are never live together.
fn check_slots(prog: &Program, def: &[Option<usize>], released: &[Option<usize>]) -> Result<(), ProgramError> {
    let at = |value: usize, kind: ProgramErrorKind| {
        let i = def[value].unwrap_or(0);
        ProgramError {
            instr: Some(i),
            label: prog.instrs.get(i).map(|x| x.label.clone()).unwrap_or_default(),
            kind: Box::new(kind),
        }
    };
    let slots = &prog.memory.slots;
    // per slot: (defined at, released at, value)
    let mut users: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); slots.len()];
    for (value, info) in prog.values.iter().enumerate() {
        let Some(slot) = info.slot else { continue };
        let name = info.label.clone();
        let Some(&capacity) = slots.get(slot) else {
            return Err(at(
                value,
                ProgramErrorKind::NoSuchSlot {
                    value,
                    slot,
                    count: slots.len(),
                },
            ));
        };
        let bytes = info.ty.bytes();
        if bytes > capacity {
            return Err(at(
                value,
                ProgramErrorKind::SlotTooSmall {
                    value,
                    name,
                    slot,
                    bytes,
                    capacity,
                },
            ));
        }
        let from = def[value].unwrap_or(0);
        let to = released[value].unwrap_or(usize::MAX);
        users[slot].push((from, to, value));
    }
    for (slot, mut u) in users.into_iter().enumerate() {
        u.sort_unstable();
        // By start: a value overlaps an earlier one iff it starts before the latest end so far.
        let mut latest: Option<(usize, usize)> = None;
        for &(from, to, b) in &u {
            if let Some((end, a)) = latest
                && from <= end
            {
                return Err(at(
                    b,
                    ProgramErrorKind::SlotShared {
                        value: b,
                        name: prog.values[b].label.clone(),
                        other: a,
                        other_name: prog.values[a].label.clone(),
                        slot,
                    },
                ));
            }
            if latest.is_none_or(|(end, _)| to > end) {
                latest = Some((to, b));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Each error kind, on a program the pipeline made (and verified) and then
    //! broke on purpose.
    use std::path::Path;

    use super::*;
    use crate::passes::memory_plan::Program;
    use crate::pipeline::{Options, compile_with};
    use crate::plan::Plan;

    fn plan(fuse: bool) -> Plan {
        let src = "adapt tiny.attn.{q,v} rank 4 freeze_b linear(0.3)\ntrain { steps 10 batch 2 seq 16 }";
        let c = crate::resolve::check_source("t.lamda", src, Path::new("."));
        let spec = c.spec.unwrap_or_else(|| panic!("{:?}", c.diags));
        compile_with(&spec, 2, 16, None, Options { fuse, head_loss: fuse }).unwrap()
    }

    /// The first phase's program (forward and backward), and a check of a
    /// modified copy against the plan.
    fn broken(fuse: bool, edit: impl FnOnce(&mut Program)) -> ProgramError {
        broken_in(fuse, |_, p| edit(p))
    }

    fn broken_in(fuse: bool, edit: impl FnOnce(&Plan, &mut Program)) -> ProgramError {
        let plan = plan(fuse);
        let mut prog = plan.phases[0].program.clone();
        edit(&plan, &mut prog);
        let cx = Context {
            rows: plan.batch * plan.seq,
            batch: plan.batch,
            params: &plan.params,
            trainable: &plan.phases[0].trainable,
        };
        verify_program(&prog, cx).expect_err("the broken program verifies")
    }

    fn first(prog: &Program, f: impl Fn(&Op) -> bool) -> usize {
        prog.instrs.iter().position(|i| f(&i.op)).expect("no such instruction")
    }

    #[test]
    fn the_pipelines_programs_verify() {
        for fuse in [false, true] {
            let plan = plan(fuse);
            assert!(plan.verify.program_runs as usize == plan.phases.len() + 1);
            assert!(plan.verify.ir_runs > 0);
            for (i, ph) in plan.phases.iter().enumerate() {
                let cx = Context {
                    rows: plan.batch * plan.seq,
                    batch: plan.batch,
                    params: &plan.params,
                    trainable: &ph.trainable,
                };
                verify_program(&ph.program, cx).unwrap_or_else(|e| panic!("phase {i} (fuse {fuse}): {e}"));
            }
            let cx = Context {
                rows: plan.batch * plan.seq,
                batch: plan.batch,
                params: &plan.params,
                trainable: &[],
            };
            verify_program(&plan.eval, cx).unwrap();
        }
    }

    #[test]
    fn an_input_defined_later() {
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Embedding);
            let later = p.instrs[i + 1].outputs[0];
            p.instrs[i].inputs[0] = later;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Undefined { operand: 0, .. }), "{e}");
        assert_eq!(e.label, plan(false).phases[0].program.instrs[e.instr.unwrap()].label);
    }

    #[test]
    fn an_input_already_released() {
        let e = broken(false, |p| {
            // release the embedding's output right where it is made
            let i = first(p, |op| *op == Op::Embedding);
            let v = p.instrs[i].outputs[0];
            for ins in &mut p.instrs {
                ins.release.retain(|&r| r != v);
            }
            p.instrs[i].release.push(v);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Released { .. }), "{e}");
    }

    #[test]
    fn a_value_defined_twice() {
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Linear);
            let v = p.instrs[i].outputs[0];
            p.instrs[i + 1].outputs.push(v);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Redefined { .. }), "{e}");
    }

    #[test]
    fn a_value_never_defined() {
        let e = broken(false, |p| {
            let mut v = p.values[0].clone();
            v.label = "orphan".into();
            p.values.push(v);
        });
        assert!(
            matches!(&*e.kind, ProgramErrorKind::NeverDefined { name, .. } if name == "orphan"),
            "{e}"
        );
    }

    #[test]
    fn a_value_out_of_range() {
        let e = broken(false, |p| {
            let n = p.values.len();
            p.instrs[3].inputs.push(n);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::NoSuchValue { .. }), "{e}");
        assert_eq!(e.instr, Some(3));
    }

    #[test]
    fn releases_out_of_order_twice_or_never() {
        let e = broken(false, |p| {
            let last = *p.instrs.last().unwrap().outputs.first().unwrap_or(&0);
            p.instrs[0].release.push(last.max(p.values.len() - 1));
        });
        assert!(matches!(*e.kind, ProgramErrorKind::ReleaseUndefined { .. }), "{e}");
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Embedding);
            let v = p.instrs[i].outputs[0];
            p.instrs.last_mut().unwrap().release.push(v);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::ReleasedTwice { .. }), "{e}");
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Embedding);
            let v = p.instrs[i].outputs[0];
            for ins in &mut p.instrs {
                ins.release.retain(|&r| r != v);
            }
        });
        assert!(matches!(*e.kind, ProgramErrorKind::NeverReleased { .. }), "{e}");
    }

    #[test]
    fn operand_and_output_counts() {
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Linear);
            p.instrs[i].inputs.pop();
        });
        assert!(
            matches!(
                *e.kind,
                ProgramErrorKind::Operands {
                    op: "linear",
                    expected: 2,
                    found: 1
                }
            ),
            "{e}"
        );
        let e = broken(false, |p| {
            let i = first(p, |op| matches!(op, Op::RmsNorm { .. }));
            p.instrs[i].outputs.pop();
        });
        assert!(
            matches!(
                *e.kind,
                ProgramErrorKind::Outputs {
                    op: "rmsnorm",
                    expected: 2,
                    found: 1
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn shapes_follow_the_op() {
        // linear: the output must be (n, m)
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Linear);
            let y = p.instrs[i].outputs[0];
            p.values[y].ty.shape[1] += 1;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::OutputType { output: 0, .. }), "{e}");
        // embedding of (table, ids): ids must be i64 and the table a matrix
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Embedding);
            p.instrs[i].inputs.swap(0, 1);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Shape(_)), "{e}");
        // linear_grad_weight of g (n, m) and x (n, k): g read for x
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::LinearGradWeight);
            let g = p.instrs[i].inputs[0];
            p.instrs[i].inputs[1] = g;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::OutputType { .. }), "{e}");
    }

    #[test]
    fn fused_kernels_take_their_arguments() {
        let e = broken(true, |p| {
            let i = first(p, |op| matches!(op, Op::Fused(_)));
            p.instrs[i].inputs.pop();
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Operands { op: "fused", .. }), "{e}");
        // a `Rows` argument (not the first, which gives the row count) fed a parameter of another shape
        let rows_operands = |k: &crate::kernel::Kernel| -> Vec<usize> {
            (k.inputs().iter().enumerate())
                .filter(|(_, a)| matches!(k.args[**a].ty, crate::kernel::ArgTy::Rows { .. }))
                .map(|(o, _)| o)
                .collect()
        };
        let e = broken_in(true, |plan, p| {
            let i = first(p, |op| matches!(op, Op::Fused(k) if rows_operands(k).len() >= 2));
            let Op::Fused(k) = p.instrs[i].op.clone() else {
                unreachable!()
            };
            let operand = *rows_operands(&k).last().unwrap();
            let have = p.values[p.instrs[i].inputs[operand]].ty.clone();
            let q = plan
                .params
                .iter()
                .position(|x| x.shape.len() == 2 && TensorType::f32(&x.shape) != have)
                .unwrap();
            let v = p.values.len();
            p.values.push(crate::passes::memory_plan::ValueInfo {
                ty: TensorType::f32(&plan.params[q].shape),
                label: "w".into(),
                param: Some(q),
                saved: false,
                adapter: None,
                slot: None,
            });
            p.instrs.insert(
                0,
                crate::passes::memory_plan::Instr {
                    op: Op::Param(q),
                    inputs: vec![],
                    outputs: vec![v],
                    release: vec![],
                    label: "w".into(),
                    backward: false,
                },
            );
            p.instrs[i + 1].inputs[operand] = v;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Shape(_)), "{e}");
        assert!(e.to_string().contains("expected f32["), "{e}");
    }

    #[test]
    fn parameters_and_slots() {
        let e = broken(false, |p| {
            let v = p.values.iter().position(|v| v.param.is_some()).unwrap();
            p.values[v].slot = Some(0);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Param { .. }), "{e}");
        let e = broken(false, |p| {
            let v = p.values.iter().position(|v| v.param.is_some()).unwrap();
            p.values[v].param = p.values[v].param.map(|q| q + 1);
        });
        assert!(matches!(*e.kind, ProgramErrorKind::Param { .. }), "{e}");
        let e = broken(false, |p| {
            let v = p.values.iter().position(|v| v.param.is_none()).unwrap();
            p.values[v].slot = None;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::NoSlot { .. }), "{e}");
        let e = broken(false, |p| {
            let v = p.values.iter().position(|v| v.param.is_none()).unwrap();
            p.values[v].slot = Some(p.memory.slots.len());
        });
        assert!(matches!(*e.kind, ProgramErrorKind::NoSuchSlot { .. }), "{e}");
        let e = broken(false, |p| {
            let i = first(p, |op| *op == Op::Linear);
            let s = p.values[p.instrs[i].outputs[0]].slot.unwrap();
            p.memory.slots[s] = 4;
        });
        assert!(
            matches!(*e.kind, ProgramErrorKind::SlotTooSmall { capacity: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn values_live_together_never_share_a_slot() {
        let e = broken(false, |p| {
            // y and rstd of an rmsnorm are made by one instruction
            let i = first(p, |op| matches!(op, Op::RmsNorm { .. }));
            let (y, rstd) = (p.instrs[i].outputs[0], p.instrs[i].outputs[1]);
            p.values[rstd].slot = p.values[y].slot;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::SlotShared { .. }), "{e}");
        // the loss lives from its instruction to the end: a value made later in its slot
        let e = broken(false, |p| {
            let loss = p.loss.unwrap();
            let d = p.instrs.iter().position(|ins| ins.outputs.contains(&loss)).unwrap();
            assert!(p.instrs.last().unwrap().release.contains(&loss));
            let later = p.instrs[d + 1..]
                .iter()
                .flat_map(|ins| ins.outputs.iter().copied())
                .find(|&v| p.values[v].param.is_none())
                .unwrap();
            p.values[loss].slot = p.values[later].slot;
        });
        assert!(matches!(*e.kind, ProgramErrorKind::SlotShared { .. }), "{e}");
    }

    #[test]
    fn gradients_only_of_what_trains() {
        let plan = plan(false);
        let cx = Context {
            rows: plan.batch * plan.seq,
            batch: plan.batch,
            params: &plan.params,
            trainable: &plan.phases[1].trainable,
        };
        // phase 0 computes dB, which no longer trains in phase 1
        let e = verify_program(&plan.phases[0].program, cx).unwrap_err();
        assert!(
            matches!(&*e.kind, ProgramErrorKind::GradNotTrainable { name } if name.ends_with(".B")),
            "{e}"
        );
    }

    #[test]
    fn loss_and_logits_exist() {
        let e = broken(false, |p| p.loss = Some(p.values.len()));
        assert!(
            matches!(*e.kind, ProgramErrorKind::Result { what: "the loss", .. }) && e.instr.is_none(),
            "{e}"
        );
        let e = broken(false, |p| {
            p.logits = p.values.iter().position(|v| v.param.is_some());
        });
        assert!(
            matches!(*e.kind, ProgramErrorKind::Result { what: "the logits", .. }),
            "{e}"
        );
        // the loss released where it is made: its slot could be reused before the runtime reads it
        let e = broken(false, |p| {
            let loss = p.loss.unwrap();
            let d = p.instrs.iter().position(|ins| ins.outputs.contains(&loss)).unwrap();
            p.instrs.last_mut().unwrap().release.retain(|&r| r != loss);
            p.instrs[d].release.push(loss);
        });
        assert!(
            matches!(&*e.kind, ProgramErrorKind::Result { what: "the loss", msg, .. } if msg.contains("before the last")),
            "{e}"
        );
    }
}
