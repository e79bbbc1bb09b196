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
//! 9. `loss` and `logits`, if set, are existing non-parameter f32 values.

use crate::ir::verify::infer_with;
use crate::ir::{Dtype, Op, ParamInfo, TensorType};
use crate::passes::memory_plan::Program;

/// A broken invariant: where (the instruction's index and label; none for
/// the program's loss and logits) and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("program verifier: {}: {kind}", match instr { Some(i) => format!("instruction {i} ({label})"), None => label.clone() })]
pub struct ProgramError {
    pub instr: Option<usize>,
    pub label: String,
    pub kind: ProgramErrorKind,
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
    Operands { op: &'static str, expected: usize, found: usize },
    #[error("{op} makes {expected} outputs, found {found}")]
    Outputs { op: &'static str, expected: usize, found: usize },
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
    Result { what: &'static str, value: usize, msg: String },
}

/// What a program is checked against: the Plan's rows (`batch * seq`), its
/// parameter table, and the parameters that train in the program's phase
/// (empty for the evaluation program).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub rows: usize,
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
            kind,
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
        kind,
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
                kind: ProgramErrorKind::Result {
                    what,
                    value,
                    msg: msg.into(),
                },
            })
        };
        match prog.values.get(value) {
            None => return fail("no such value"),
            Some(info) if info.param.is_some() => return fail("a parameter"),
            Some(info) if info.ty.dtype != Dtype::F32 => return fail("not f32"),
            Some(_) => {}
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
    let mut want = infer_with(cx.rows, cx.params, op, &operands).map_err(ProgramErrorKind::Shape)?;
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
            kind,
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
