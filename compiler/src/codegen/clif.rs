//! Cranelift IR for fused kernels: [`lower`] turns a [`Kernel`] into a Cranelift
//! [`Function`] that the runtime JIT compiles, [`clif_text`] prints it for a fixed target.
//!
//! Design. One function per kernel runs a block of rows; the runtime splits a
//! launch into blocks across threads (rows are independent, kernel/mod.rs).
//! Inside a row the statements are emitted in order, each column loop as its
//! own loop nest, so "every store of a row completes before the next
//! statement" holds by construction. A column loop is vectorised with f32x4
//! when every column-dependent part of its expression reads four neighbouring
//! columns (`j`, and the RoPE forms when `head_dim % 8 == 0`, so the four lanes
//! stay inside one half of a head; `row_dot` with `bt`, whose `b[c, j]` is
//! contiguous in j); other loops (`row_dot` without `bt`, RoPE forms whose
//! half head is not a multiple of four) run one column at a time. The vector loop is unrolled by two
//! (two f32x4 per iteration, two accumulators for reductions) and followed by at
//! most one f32x4 chunk and at most three scalar columns at constant columns:
//! the column count is a compile-time constant, so there is no remainder loop.
//! Parts of an expression that do not depend on the column (row variables,
//! per-row loads, scalars, gathers by a row variable, the `a` row of a small
//! `row_dot`) are computed once per row before the loop and splatted; equal
//! subexpressions are computed once per chunk (the kernel's `Expr` is
//! structurally hashed), so `sigmoid(x)` used twice costs one `exp`.
//!
//! ABI: `extern "C" fn(args: *const *mut u8, row_begin: u64, row_end: u64)` in
//! the target's default calling convention. `args[a]` points to argument a's
//! data: f32 for `Rows` (row-major, `rows x cols`), `Vector`, `PerRow` and
//! `Periodic`; i64 for `PerRowI64`; for a `Scalar`, a pointer to one f32. The
//! function runs rows `row_begin..row_end` (nothing when `row_begin >= row_end`).
//! Buffer lengths are the caller's contract (interp::check_launch); given
//! them, every access is in bounds: column reads are checked statically here
//! (a kernel that would read past a row is rejected), gathers by a row variable
//! are checked at run time.
//!
//! Numerics. `+ - * /`, `sqrt`, `rsqrt` (`1 / sqrt(x)`, two correctly rounded
//! operations) and `recip` are IEEE f32 and match the interpreter bit for bit;
//! `max` follows Rust's `f32::max` (a NaN operand yields the other one). `exp`
//! and `log` have no Cranelift instruction; they are inlined polynomials, the
//! same code for one lane and four, so a value never depends on which chunk
//! computed it: `exp` is Cody-Waite reduction by ln 2 and a degree-7 polynomial
//! (Cephes `expf`), scaled by 2^n in two steps so subnormal results round once;
//! `log` splits off the exponent (subnormal inputs rescaled) and evaluates the
//! Cephes `logf` polynomial on `[sqrt(1/2), sqrt(2)) - 1`. Both were measured
//! within 1 ulp of the correctly rounded result on every fifth f32 of their
//! domains, subnormals included (runtime/tests/jit_exp_log.rs asserts 2 ulp on
//! a sparser sweep against f64), and handle 0, negative, infinite and NaN
//! inputs as the C library does. `erf` and `tanh` are odd and built on that
//! `exp`, with polynomials fitted here (weighted least squares on Chebyshev
//! points refined toward minimax, in 40-digit arithmetic, then rounded to f32):
//! `erf x = x + x Q(x^2)` for `|x| < 1` (relative fit error 1.2e-9) and
//! `sign(x) (1 - exp(P(min(|x|, 4) - 1)))` above, `P` fitting `ln erfc` on
//! `[1, 4]` (relative 1.2e-8; erfc(4) is below half an ulp of 1); `tanh x =
//! x + x^3 R(x^2)` for `|x| < 0.8` and `sign(x) (1 - 2 / (exp(2|x|) + 1))`
//! above. Measured against f64 references on strided sweeps of every f32
//! (denser on `[0.25, 8]`; runtime/tests/bert_kernels.rs asserts 2e-7 and 4
//! ulp for erf, 3 ulp for tanh): erf within 7.1e-8 absolute and 1 ulp, tanh
//! within 1 ulp; both odd (-0 stays -0), infinities give +-1, NaN stays NaN.
//! Sums are accumulated in vector lanes and
//! combined at the end; their order differs from the interpreter's (the kernel
//! IR leaves it unspecified), so results differ by float rounding only.
//!
//! Deliberate deviations from the interpreter, all on malformed kernels or
//! input. A gather `a[v]` with `v` past the argument's columns reads NaN (the
//! interpreter reads `a[i * cols + v]`, another row's value, while that is in
//! the buffer: with rows split across threads it could be racing a write).
//! Rejected by [`crate::kernel::verify`] (so by every code generator, as
//! [`CodegenError::Invalid`]): what the interpreter would panic on (a
//! zero `head_dim` or period); column reads past an argument's columns (it
//! reads another row or NaN); a store whose value reads its own destination at
//! another column (it buffers the whole row first; this lowering stores as it
//! goes); a writable i64 argument (check_launch would accept an f32 buffer for
//! it); more than `i32::MAX` columns.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I8X16, I32, I32X4, I64};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ConstantData, Endianness, Function, InstBuilder, MemFlagsData, Signature, Type, UserFuncName,
    Value,
};
use cranelift_codegen::isa::{self, OwnedTargetIsa, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use crate::kernel::{Access, ArgTy, BinOp, Col, Cond, Expr, Kernel, KernelError, Reduce, Stmt, UnOp};

/// Why a kernel could not be lowered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The kernel is not legal (see [`crate::kernel::verify`]).
    #[error("{0}")]
    Invalid(#[from] KernelError),
    /// The kernel is well formed but this lowering rejects it (see the module doc).
    #[error("kernel {kernel}: {msg}")]
    Unsupported { kernel: String, msg: String },
    /// The target ISA is unavailable or unsuitable.
    #[error("target {target}: {msg}")]
    Target { target: String, msg: String },
    /// The generated function fails Cranelift's verifier (a bug in this file).
    #[error("kernel {kernel}: the generated CLIF does not verify: {msg}")]
    Verify { kernel: String, msg: String },
}

/// The fixed target of [`clif_text`].
const TEXT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// A `row_dot` up to this length is unrolled, with its `a` row loaded once per
/// row (up to 8 f32x4 registers); longer ones loop over `c`.
const DOT_UNROLL: usize = 32;

/// The kernel's Cranelift IR as text, for x86-64 System V (pointer width and
/// calling convention are all the IR depends on; no host feature is involved),
/// checked by Cranelift's verifier. Stable across runs and machines.
pub fn clif_text(k: &Kernel) -> Result<String, CodegenError> {
    let isa = text_isa()?;
    let func = lower(k, isa.frontend_config())?;
    cranelift_codegen::verify_function(&func, isa.as_ref()).map_err(|e| CodegenError::Verify {
        kernel: k.name.clone(),
        msg: e.to_string(),
    })?;
    Ok(func.display().to_string())
}

fn text_isa() -> Result<OwnedTargetIsa, CodegenError> {
    let target = |msg: String| CodegenError::Target {
        target: TEXT_TARGET.into(),
        msg,
    };
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| target(e.to_string()))?;
    let builder = isa::lookup_by_name(TEXT_TARGET).map_err(|e| target(e.to_string()))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| target(e.to_string()))
}

/// Lowers `k` to a Cranelift function with the ABI of the module doc, for a
/// 64-bit target described by `frontend` (pointer type and calling convention).
/// The function is not optimised; the JIT runs Cranelift's pipeline on it.
pub fn lower(k: &Kernel, frontend: TargetFrontendConfig) -> Result<Function, CodegenError> {
    crate::kernel::verify(k)?;
    let ptr = frontend.pointer_type();
    if ptr != I64 {
        return Err(CodegenError::Target {
            target: format!("{:?}", frontend.pointer_width),
            msg: "fused kernels need a 64-bit target".into(),
        });
    }
    let mut sig = Signature::new(frontend.default_call_conv);
    sig.params
        .extend([AbiParam::new(ptr), AbiParam::new(I64), AbiParam::new(I64)]);
    let mut func = Function::with_name_signature(UserFuncName::testcase(crate::kernel::symbol(&k.name)), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut lw = Lower {
        k,
        b: FunctionBuilder::new(&mut func, &mut fctx),
        base: vec![None; k.args.len()],
        scalar: vec![None; k.args.len()],
        floor: vec![None; k.args.len()],
        row: vec![None; k.args.len()],
        vars: vec![None; k.vars()],
    };
    lw.body()?;
    lw.b.seal_all_blocks();
    lw.b.finalize(frontend);
    Ok(func)
}

/// Whether a column argument (`Rows`, `Vector`, `Periodic`) is read by column.
fn is_array(ty: ArgTy) -> bool {
    ty.columns().is_some()
}

/// Whether `e` depends on the loop column j.
fn depends_on_j(k: &Kernel, e: &Expr) -> bool {
    match e {
        Expr::Const(_) | Expr::Var(_) => false,
        Expr::Load { arg, col } => !matches!(col, Col::Var(_)) && k.args.get(*arg).is_some_and(|a| is_array(a.ty)),
        Expr::RowDot { .. } => true,
        Expr::Unary(_, a) => depends_on_j(k, a),
        Expr::Binary(_, a, b) => depends_on_j(k, a) || depends_on_j(k, b),
        Expr::Select(c, a, b) => !matches!(c, Cond::NonNegative(_)) || depends_on_j(k, a) || depends_on_j(k, b),
    }
}

/// Whether four neighbouring columns `j0..j0 + 4` (`j0 % 4 == 0`) of `e` can be
/// computed as one f32x4: every column-dependent read is contiguous.
fn vectorizable(e: &Expr) -> bool {
    let lanes_in_half = |hd: usize| hd > 0 && hd.is_multiple_of(8);
    match e {
        Expr::Const(_) | Expr::Var(_) => true,
        Expr::Load { col, .. } => match *col {
            Col::J | Col::Var(_) => true,
            Col::RopePartner { head_dim } | Col::HalfIndex { head_dim } => lanes_in_half(head_dim),
        },
        Expr::RowDot { .. } => true,
        Expr::Unary(_, a) => vectorizable(a),
        Expr::Binary(_, a, b) => vectorizable(a) && vectorizable(b),
        Expr::Select(c, a, b) => {
            let c_ok = match *c {
                Cond::FirstHalf { head_dim } => lanes_in_half(head_dim),
                Cond::ColBelow { .. } | Cond::ColIs(_) | Cond::NonNegative(_) => true,
            };
            c_ok && vectorizable(a) && vectorizable(b)
        }
    }
}

/// Column-loop work per row (elements times `row_dot` length), for the runtime's block sizes.
pub fn work_per_row(k: &Kernel) -> usize {
    fn dot_len(e: &Expr) -> usize {
        match e {
            Expr::RowDot { len, .. } => *len,
            Expr::Unary(_, a) => dot_len(a),
            Expr::Binary(_, a, b) | Expr::Select(_, a, b) => dot_len(a) + dot_len(b),
            _ => 0,
        }
    }
    k.body
        .iter()
        .map(|s| match s {
            Stmt::Store { cols, value, .. } | Stmt::Reduce { cols, value, .. } => {
                cols.saturating_mul(1 + dot_len(value))
            }
            Stmt::Let { .. } | Stmt::StoreRow { .. } => 1,
        })
        .fold(1usize, usize::saturating_add)
}

// ------------------------------------------------------------------ lowering

/// One f32 lane or four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lanes {
    One,
    Four,
}

impl Lanes {
    fn float(self) -> Type {
        match self {
            Lanes::One => F32,
            Lanes::Four => F32X4,
        }
    }
    fn int(self) -> Type {
        match self {
            Lanes::One => I32,
            Lanes::Four => I32X4,
        }
    }
}

/// A condition: one truth value (i8) for all lanes, or an all-ones/all-zeros i32x4 lane mask.
#[derive(Debug, Clone, Copy)]
enum Mask {
    Scalar(Value),
    Lanes(Value),
}

/// What a column loop computes once per row, before the loop.
#[derive(Default)]
struct Hoisted<'k> {
    /// Column-independent subexpressions, as f32.
    scalar: HashMap<&'k Expr, Value>,
    /// The same, splatted to f32x4 (vector loops only).
    splat: HashMap<&'k Expr, Value>,
    /// The `a` rows of unrolled `row_dot`s with `bt` or shorter than 4, by argument: (len) f32 values.
    dot_rows: HashMap<usize, Vec<Value>>,
    /// The `a` rows of unrolled `row_dot`s without `bt` of length at least 4, by argument.
    dot_quads: HashMap<usize, DotQuads>,
}

/// A row `a[i, 0..len]` (`len >= 4`) as f32x4 registers.
struct DotQuads {
    /// `a[i, 4q..4q + 4]` for `q < len / 4`: (len / 4) f32x4 values.
    quads: Vec<Value>,
    /// `a[i, len - 4..len]` when `len % 4 != 0` (its first `4 - len % 4` lanes are already in `quads`).
    window: Option<Value>,
}

/// One evaluation of a statement's expression: a row (no column), one column or four.
struct Chunk<'k> {
    /// The (first) column, i64; `None` outside column loops.
    j: Option<Value>,
    lanes: Lanes,
    /// The column count of the enclosing loop (`C` of `row_dot` with `bt`).
    loop_cols: usize,
    /// Subexpressions already computed in this chunk.
    memo: HashMap<&'k Expr, Value>,
    /// The lanes' columns as f32, once needed.
    jf: Option<Value>,
    /// `4 j`, once needed.
    jbytes: Option<Value>,
}

impl Chunk<'_> {
    fn row() -> Self {
        Chunk {
            j: None,
            lanes: Lanes::One,
            loop_cols: 0,
            memo: HashMap::new(),
            jf: None,
            jbytes: None,
        }
    }
    fn at(j: Value, lanes: Lanes, loop_cols: usize) -> Self {
        Chunk {
            j: Some(j),
            lanes,
            loop_cols,
            memo: HashMap::new(),
            jf: None,
            jbytes: None,
        }
    }
}

/// What a column loop does with each chunk's value.
#[derive(Debug, Clone, Copy)]
enum LoopKind {
    Store { arg: usize, accumulate: bool },
    Reduce { var: usize, op: Reduce },
}

struct Lower<'k, 'f> {
    k: &'k Kernel,
    b: FunctionBuilder<'f>,
    /// Every argument's data pointer (loaded at entry for the arguments the body uses).
    base: Vec<Option<Value>>,
    /// The f32 of every `Scalar` argument (loaded at entry).
    scalar: Vec<Option<Value>>,
    /// `floor` of the scalars that `ColBelow` compares against (at entry).
    floor: Vec<Option<Value>>,
    /// Row i's pointer into every argument (computed at the start of each row).
    row: Vec<Option<Value>>,
    /// The row variables defined so far in this row.
    vars: Vec<Option<Value>>,
}

fn flags_plain() -> MemFlagsData {
    MemFlagsData::new()
}

impl<'k> Lower<'k, '_> {
    /// What [`crate::kernel::verify`] should have rejected.
    fn invalid(&self, msg: String) -> CodegenError {
        CodegenError::Invalid(KernelError {
            kernel: self.k.name.clone(),
            stmt: None,
            msg,
        })
    }

    fn unsupported(&self, msg: impl Into<String>) -> CodegenError {
        CodegenError::Unsupported {
            kernel: self.k.name.clone(),
            msg: msg.into(),
        }
    }

    fn arg_ty(&self, arg: usize) -> Result<ArgTy, CodegenError> {
        self.k
            .args
            .get(arg)
            .map(|a| a.ty)
            .ok_or_else(|| self.unsupported(format!("no argument {arg}")))
    }

    /// Flags of a load from argument `arg`: in bounds (never traps); read-only
    /// arguments are not written while the function runs.
    fn load_flags(&self, arg: usize) -> MemFlagsData {
        let f = MemFlagsData::new().with_notrap();
        match self.k.args.get(arg) {
            Some(a) if a.access == Access::Read => f.with_readonly(),
            _ => f,
        }
    }

    /// Flags of a load by a `row_dot` without `bt`: [`Lower::load_flags`],
    /// and for a read-only argument `can_move` (every address it computes is
    /// in bounds anywhere in the function), which makes the load pure to
    /// Cranelift: it is emitted next to its use rather than where this
    /// lowering creates it (which would keep a chunk's every `b` quad live at
    /// once), and can become the memory operand of the multiply.
    fn dot_flags(&self, arg: usize) -> MemFlagsData {
        let f = self.load_flags(arg);
        if f.readonly() { f.with_can_move() } else { f }
    }

    fn var(&self, v: u16) -> Result<Value, CodegenError> {
        self.vars
            .get(v as usize)
            .copied()
            .flatten()
            .ok_or_else(|| self.unsupported(format!("v{v} used before it is defined")))
    }

    fn row_ptr(&self, arg: usize) -> Result<Value, CodegenError> {
        self.row
            .get(arg)
            .copied()
            .flatten()
            .ok_or_else(|| self.unsupported(format!("a{arg} has no row pointer")))
    }

    fn imm(&self, x: usize) -> Result<i64, CodegenError> {
        i64::try_from(x).map_err(|_| self.unsupported(format!("{x} does not fit in i64")))
    }

    fn used_args(&self) -> Vec<bool> {
        fn mark(used: &mut [bool], a: usize) {
            if let Some(u) = used.get_mut(a) {
                *u = true;
            }
        }
        fn walk(e: &Expr, used: &mut [bool]) {
            match e {
                Expr::Const(_) | Expr::Var(_) => {}
                Expr::Load { arg, .. } => mark(used, *arg),
                Expr::RowDot { a, b, .. } => {
                    mark(used, *a);
                    mark(used, *b);
                }
                Expr::Unary(_, x) => walk(x, used),
                Expr::Binary(_, x, y) => {
                    walk(x, used);
                    walk(y, used);
                }
                Expr::Select(c, x, y) => {
                    if let Cond::ColBelow { arg } = c {
                        mark(used, *arg);
                    }
                    walk(x, used);
                    walk(y, used);
                }
            }
        }
        let mut used = vec![false; self.k.args.len()];
        for s in &self.k.body {
            match s {
                Stmt::Let { value, .. } | Stmt::Reduce { value, .. } => walk(value, &mut used),
                Stmt::Store { arg, value, .. } | Stmt::StoreRow { arg, value } => {
                    mark(&mut used, *arg);
                    walk(value, &mut used);
                }
            }
        }
        used
    }

    fn col_below_args(&self) -> Vec<usize> {
        fn walk(e: &Expr, out: &mut Vec<usize>) {
            match e {
                Expr::Unary(_, x) => walk(x, out),
                Expr::Binary(_, x, y) => {
                    walk(x, out);
                    walk(y, out);
                }
                Expr::Select(c, x, y) => {
                    if let Cond::ColBelow { arg } = c
                        && !out.contains(arg)
                    {
                        out.push(*arg);
                    }
                    walk(x, out);
                    walk(y, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for s in &self.k.body {
            match s {
                Stmt::Let { value, .. }
                | Stmt::Reduce { value, .. }
                | Stmt::Store { value, .. }
                | Stmt::StoreRow { value, .. } => walk(value, &mut out),
            }
        }
        out
    }

    /// entry: load argument pointers and scalars; then the row loop.
    fn body(&mut self) -> Result<(), CodegenError> {
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        let (args, row_begin, row_end) = match *self.b.block_params(entry) {
            [a, rb, re] => (a, rb, re),
            _ => return Err(self.unsupported("the entry block lacks the ABI's parameters")),
        };
        let used = self.used_args();
        for (a, arg) in self.k.args.iter().enumerate() {
            if !used[a] {
                continue;
            }
            let off = i32::try_from(a * 8).map_err(|_| self.unsupported("too many arguments"))?;
            let p = self
                .b
                .ins()
                .load(I64, MemFlagsData::trusted().with_readonly(), args, off);
            self.base[a] = Some(p);
            if arg.ty == ArgTy::Scalar {
                self.scalar[a] = Some(self.b.ins().load(F32, MemFlagsData::trusted().with_readonly(), p, 0));
            }
        }
        for a in self.col_below_args() {
            let s = self
                .scalar
                .get(a)
                .copied()
                .flatten()
                .ok_or_else(|| self.unsupported(format!("col_below reads a{a}, not a scalar")))?;
            self.floor[a] = Some(self.b.ins().floor(s));
        }

        let head = self.b.create_block();
        let body = self.b.create_block();
        let exit = self.b.create_block();
        let i = self.b.append_block_param(head, I64);
        self.b.ins().jump(head, &[BlockArg::Value(row_begin)]);

        self.b.switch_to_block(head);
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, i, row_end);
        self.b.ins().brif(more, body, &[], exit, &[]);

        self.b.switch_to_block(body);
        self.row_pointers(i, &used)?;
        self.vars.iter_mut().for_each(|v| *v = None);
        let k = self.k;
        for s in &k.body {
            self.stmt(s)?;
        }
        let next = self.b.ins().iadd_imm_u(i, 1);
        self.b.ins().jump(head, &[BlockArg::Value(next)]);

        self.b.switch_to_block(exit);
        self.b.ins().return_(&[]);
        Ok(())
    }

    /// Row i's pointer into every used argument.
    fn row_pointers(&mut self, i: Value, used: &[bool]) -> Result<(), CodegenError> {
        for (a, arg) in self.k.args.iter().enumerate() {
            let Some(base) = self.base[a].filter(|_| used[a]) else {
                continue;
            };
            let (index, stride) = match arg.ty {
                ArgTy::Scalar => continue,
                ArgTy::Vector { .. } => {
                    self.row[a] = Some(base);
                    continue;
                }
                ArgTy::Rows { cols } => (i, cols.checked_mul(4)),
                ArgTy::PerRow => (i, Some(4)),
                ArgTy::PerRowI64 => (i, Some(8)),
                ArgTy::Periodic { period, cols } => {
                    let p = self.imm(period)?;
                    (self.b.ins().urem_imm_u(i, p), cols.checked_mul(4))
                }
            };
            let stride = self.imm(stride.ok_or_else(|| self.unsupported(format!("a{a} has too many columns")))?)?;
            let off = self.b.ins().imul_imm_u(index, stride);
            self.row[a] = Some(self.b.ins().iadd(base, off));
        }
        Ok(())
    }

    fn stmt(&mut self, s: &'k Stmt) -> Result<(), CodegenError> {
        let none = Hoisted::default();
        match s {
            Stmt::Let { var, value } => {
                let v = self.eval(value, &mut Chunk::row(), &none)?;
                self.set_var(*var, v)
            }
            Stmt::StoreRow { arg, value } => {
                let v = self.eval(value, &mut Chunk::row(), &none)?;
                let p = self.row_ptr(*arg)?;
                self.b.ins().store(MemFlagsData::new().with_notrap(), v, p, 0);
                Ok(())
            }
            Stmt::Store {
                arg,
                cols,
                value,
                accumulate,
            } => self.column_loop(
                LoopKind::Store {
                    arg: *arg,
                    accumulate: *accumulate,
                },
                *cols,
                value,
            ),
            Stmt::Reduce { var, op, cols, value } => self.column_loop(
                LoopKind::Reduce {
                    var: *var as usize,
                    op: *op,
                },
                *cols,
                value,
            ),
        }
    }

    fn set_var(&mut self, var: u16, v: Value) -> Result<(), CodegenError> {
        if var as usize >= self.vars.len() {
            return Err(self.invalid(format!("v{var} is out of range")));
        }
        self.vars[var as usize] = Some(v);
        Ok(())
    }

    /// A `Store` or `Reduce` over `cols` columns (see the module doc for the loop shape).
    fn column_loop(&mut self, kind: LoopKind, cols: usize, value: &'k Expr) -> Result<(), CodegenError> {
        if cols == 0 {
            return match kind {
                LoopKind::Store { .. } => Ok(()),
                LoopKind::Reduce { .. } => Err(self.invalid("an empty reduction".into())),
            };
        }
        let vector = vectorizable(value);
        let mut h = Hoisted::default();
        self.hoist(value, if vector { Lanes::Four } else { Lanes::One }, &mut h)?;
        let identity = match kind {
            LoopKind::Reduce { op: Reduce::Sum, .. } => Some(0.0f32),
            LoopKind::Reduce { op: Reduce::Max, .. } => Some(f32::NEG_INFINITY),
            LoopKind::Store { .. } => None,
        };
        let mut acc = None;
        let tail_start = if vector {
            let n8 = cols / 8 * 8;
            let mut acc4 = identity.map(|x| self.fconst(Lanes::Four, x));
            if n8 > 0 {
                // head(j, acc0, acc1): j < n8 ? body : after
                let head = self.b.create_block();
                let body = self.b.create_block();
                let after = self.b.create_block();
                let j = self.b.append_block_param(head, I64);
                let accs = match acc4 {
                    Some(_) => Some((
                        self.b.append_block_param(head, F32X4),
                        self.b.append_block_param(head, F32X4),
                    )),
                    None => None,
                };
                let zero = self.b.ins().iconst(I64, 0);
                let mut args = vec![BlockArg::Value(zero)];
                if let Some(a) = acc4 {
                    args.extend([BlockArg::Value(a), BlockArg::Value(a)]);
                }
                self.b.ins().jump(head, &args);

                self.b.switch_to_block(head);
                let n8_imm = self.imm(n8)?;
                let more = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, j, n8_imm);
                self.b.ins().brif(more, body, &[], after, &[]);

                self.b.switch_to_block(body);
                let a0 = self.chunk(kind, value, j, Lanes::Four, cols, &h, accs.map(|a| a.0))?;
                let j4 = self.b.ins().iadd_imm_u(j, 4);
                let a1 = self.chunk(kind, value, j4, Lanes::Four, cols, &h, accs.map(|a| a.1))?;
                let j8 = self.b.ins().iadd_imm_u(j, 8);
                let mut args = vec![BlockArg::Value(j8)];
                if let (Some(a0), Some(a1)) = (a0, a1) {
                    args.extend([BlockArg::Value(a0), BlockArg::Value(a1)]);
                }
                self.b.ins().jump(head, &args);

                self.b.switch_to_block(after);
                if let (LoopKind::Reduce { op, .. }, Some((a0, a1))) = (kind, accs) {
                    acc4 = Some(self.combine(op, Lanes::Four, a0, a1));
                }
            }
            let mut next = n8;
            if cols - n8 >= 4 {
                let n8_imm = self.imm(n8)?;
                let j = self.b.ins().iconst(I64, n8_imm);
                acc4 = self.chunk(kind, value, j, Lanes::Four, cols, &h, acc4)?;
                next += 4;
            }
            if let (LoopKind::Reduce { op, .. }, Some(v)) = (kind, acc4) {
                acc = Some(if next > 0 {
                    let l: Vec<Value> = (0..4u8).map(|l| self.b.ins().extractlane(v, l)).collect();
                    let lo = self.combine(op, Lanes::One, l[0], l[1]);
                    let hi = self.combine(op, Lanes::One, l[2], l[3]);
                    self.combine(op, Lanes::One, lo, hi)
                } else {
                    self.fconst(Lanes::One, identity.unwrap_or(0.0))
                });
            }
            next
        } else {
            // A column at a time: head(j, acc): j < cols ? body : after
            let head = self.b.create_block();
            let body = self.b.create_block();
            let after = self.b.create_block();
            let j = self.b.append_block_param(head, I64);
            let acc_p = identity.map(|_| self.b.append_block_param(head, F32));
            let zero = self.b.ins().iconst(I64, 0);
            let mut args = vec![BlockArg::Value(zero)];
            if let Some(x) = identity {
                args.push(BlockArg::Value(self.fconst(Lanes::One, x)));
            }
            self.b.ins().jump(head, &args);

            self.b.switch_to_block(head);
            let cols_imm = self.imm(cols)?;
            let more = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, j, cols_imm);
            self.b.ins().brif(more, body, &[], after, &[]);

            self.b.switch_to_block(body);
            let a = self.chunk(kind, value, j, Lanes::One, cols, &h, acc_p)?;
            let j1 = self.b.ins().iadd_imm_u(j, 1);
            let mut args = vec![BlockArg::Value(j1)];
            args.extend(a.map(BlockArg::Value));
            self.b.ins().jump(head, &args);

            self.b.switch_to_block(after);
            acc = acc_p;
            cols
        };
        for t in tail_start..cols {
            let t = self.imm(t)?;
            let j = self.b.ins().iconst(I64, t);
            acc = self.chunk(kind, value, j, Lanes::One, cols, &h, acc)?;
        }
        if let (LoopKind::Reduce { var, .. }, Some(v)) = (kind, acc) {
            let var = u16::try_from(var).map_err(|_| self.invalid(format!("v{var} is out of range")))?;
            self.set_var(var, v)?;
        }
        Ok(())
    }

    /// One chunk of a column loop at column `j`: stores it, or folds it into `acc`.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &mut self,
        kind: LoopKind,
        value: &'k Expr,
        j: Value,
        lanes: Lanes,
        cols: usize,
        h: &Hoisted<'k>,
        acc: Option<Value>,
    ) -> Result<Option<Value>, CodegenError> {
        let mut cx = Chunk::at(j, lanes, cols);
        let v = self.eval(value, &mut cx, h)?;
        match kind {
            LoopKind::Store { arg, accumulate } => {
                let p = self.row_ptr(arg)?;
                let off = self.j_bytes(&mut cx)?;
                let addr = self.b.ins().iadd(p, off);
                let flags = MemFlagsData::new().with_notrap();
                let v = if accumulate {
                    let old = self.b.ins().load(lanes.float(), flags, addr, 0);
                    self.b.ins().fadd(old, v)
                } else {
                    v
                };
                self.b.ins().store(flags, v, addr, 0);
                Ok(None)
            }
            LoopKind::Reduce { op, .. } => {
                let acc = acc.ok_or_else(|| self.unsupported("a reduction without an accumulator"))?;
                Ok(Some(self.combine(op, lanes, acc, v)))
            }
        }
    }

    /// `acc op x`; for max, Rust's `acc.max(x)` given a non-NaN `acc` (a NaN `x` is ignored).
    fn combine(&mut self, op: Reduce, lanes: Lanes, acc: Value, x: Value) -> Value {
        match op {
            Reduce::Sum => self.b.ins().fadd(acc, x),
            Reduce::Max => {
                let gt = self.fcmp(lanes, FloatCC::GreaterThan, x, acc);
                self.fsel(gt, x, acc)
            }
        }
    }

    /// Computes the column-independent parts of a loop's expression before the loop.
    fn hoist(&mut self, e: &'k Expr, lanes: Lanes, h: &mut Hoisted<'k>) -> Result<(), CodegenError> {
        if !depends_on_j(self.k, e) {
            if !h.scalar.contains_key(e) {
                let v = self.eval(e, &mut Chunk::row(), &Hoisted::default())?;
                h.scalar.insert(e, v);
                if lanes == Lanes::Four {
                    let s = self.b.ins().splat(F32X4, v);
                    h.splat.insert(e, s);
                }
            }
            return Ok(());
        }
        match e {
            Expr::RowDot { a, len, bt, .. } => {
                if *len > DOT_UNROLL {
                    return Ok(());
                }
                let p = self.row_ptr(*a)?;
                if !*bt && *len >= 4 {
                    let flags = self.dot_flags(*a);
                    if !h.dot_quads.contains_key(a) {
                        let quads = (0..*len / 4)
                            .map(|q| self.b.ins().load(F32X4, flags, p, (q * 16) as i32))
                            .collect();
                        let window = (!len.is_multiple_of(4))
                            .then(|| self.b.ins().load(F32X4, flags, p, ((len - 4) * 4) as i32));
                        h.dot_quads.insert(*a, DotQuads { quads, window });
                    }
                } else if !h.dot_rows.contains_key(a) {
                    let flags = self.load_flags(*a);
                    let row = (0..*len)
                        .map(|c| self.b.ins().load(F32, flags, p, (c * 4) as i32))
                        .collect();
                    h.dot_rows.insert(*a, row);
                }
                Ok(())
            }
            Expr::Unary(_, x) => self.hoist(x, lanes, h),
            Expr::Binary(_, x, y) | Expr::Select(_, x, y) => {
                self.hoist(x, lanes, h)?;
                self.hoist(y, lanes, h)
            }
            Expr::Const(_) | Expr::Var(_) | Expr::Load { .. } => Ok(()),
        }
    }

    fn eval(&mut self, e: &'k Expr, cx: &mut Chunk<'k>, h: &Hoisted<'k>) -> Result<Value, CodegenError> {
        let hoisted = match cx.lanes {
            Lanes::One => h.scalar.get(e),
            Lanes::Four => h.splat.get(e),
        };
        if let Some(v) = hoisted.or_else(|| cx.memo.get(e)) {
            return Ok(*v);
        }
        let lanes = cx.lanes;
        let v = match e {
            Expr::Const(c) => self.fconst(lanes, c.0 as f32),
            Expr::Var(v) => {
                let x = self.var(*v)?;
                self.widen(x, lanes)
            }
            Expr::Load { arg, col } => self.load(*arg, *col, cx)?,
            Expr::RowDot { a, b, len, bt } => self.row_dot(*a, *b, *len, *bt, cx, h)?,
            Expr::Unary(op, a) => {
                let x = self.eval(a, cx, h)?;
                match op {
                    UnOp::Neg => self.b.ins().fneg(x),
                    UnOp::Exp => self.exp(x, lanes),
                    UnOp::Log => self.log(x, lanes),
                    UnOp::Sqrt => self.b.ins().sqrt(x),
                    UnOp::Rsqrt => {
                        let s = self.b.ins().sqrt(x);
                        let one = self.fconst(lanes, 1.0);
                        self.b.ins().fdiv(one, s)
                    }
                    UnOp::Recip => {
                        let one = self.fconst(lanes, 1.0);
                        self.b.ins().fdiv(one, x)
                    }
                    UnOp::Erf => self.erf(x, lanes),
                    UnOp::Tanh => self.tanh(x, lanes),
                }
            }
            Expr::Binary(op, a, b) => {
                let x = self.eval(a, cx, h)?;
                let y = self.eval(b, cx, h)?;
                match op {
                    BinOp::Add => self.b.ins().fadd(x, y),
                    BinOp::Sub => self.b.ins().fsub(x, y),
                    BinOp::Mul => self.b.ins().fmul(x, y),
                    BinOp::Div => self.b.ins().fdiv(x, y),
                    BinOp::Max => {
                        // Rust's f32::max: x < y ? y : x, and y when x is NaN.
                        let lt = self.fcmp(lanes, FloatCC::LessThan, x, y);
                        let m = self.fsel(lt, y, x);
                        let nan = self.fcmp(lanes, FloatCC::Unordered, x, x);
                        self.fsel(nan, y, m)
                    }
                }
            }
            Expr::Select(c, a, b) => {
                let m = self.cond(*c, cx)?;
                let x = self.eval(a, cx, h)?;
                let y = self.eval(b, cx, h)?;
                self.fsel(m, x, y)
            }
        };
        cx.memo.insert(e, v);
        Ok(v)
    }

    fn load(&mut self, arg: usize, col: Col, cx: &mut Chunk<'k>) -> Result<Value, CodegenError> {
        let ty = self.arg_ty(arg)?;
        let flags = self.load_flags(arg);
        let lanes = cx.lanes;
        let x = match ty {
            ArgTy::Scalar => self
                .scalar
                .get(arg)
                .copied()
                .flatten()
                .ok_or_else(|| self.unsupported(format!("scalar a{arg} was not loaded")))?,
            ArgTy::PerRow => {
                let p = self.row_ptr(arg)?;
                self.b.ins().load(F32, flags, p, 0)
            }
            ArgTy::PerRowI64 => {
                let p = self.row_ptr(arg)?;
                let x = self.b.ins().load(I64, flags, p, 0);
                self.b.ins().fcvt_from_sint(F32, x)
            }
            ArgTy::Rows { cols } | ArgTy::Vector { len: cols } | ArgTy::Periodic { cols, .. } => {
                let p = self.row_ptr(arg)?;
                let Some(j) = cx.j else {
                    return match col {
                        Col::Var(v) => {
                            let x = self.gather(p, cols, v, flags)?;
                            Ok(self.widen(x, lanes))
                        }
                        _ => Err(self.unsupported(format!("a{arg} is read by column outside a column loop"))),
                    };
                };
                if let Col::Var(v) = col {
                    let x = self.gather(p, cols, v, flags)?;
                    return Ok(self.widen(x, lanes));
                }
                let off = match col {
                    Col::J => self.j_bytes(cx)?,
                    _ => {
                        let c = self.column(col, j)?;
                        self.b.ins().ishl_imm_u(c, 2)
                    }
                };
                let addr = self.b.ins().iadd(p, off);
                return Ok(self.b.ins().load(lanes.float(), flags, addr, 0));
            }
        };
        Ok(self.widen(x, lanes))
    }

    /// The column `col` reads for loop column `j` (for four lanes: lane 0's; the others follow).
    fn column(&mut self, col: Col, j: Value) -> Result<Value, CodegenError> {
        Ok(match col {
            Col::J => j,
            Col::RopePartner { head_dim } => {
                let hd = self.imm(head_dim)?;
                let head = self.b.ins().udiv_imm_u(j, hd);
                let start = self.b.ins().imul_imm_u(head, hd);
                let within = self.b.ins().urem_imm_u(j, hd);
                let shifted = self.b.ins().iadd_imm_u(within, hd / 2);
                let partner = self.b.ins().urem_imm_u(shifted, hd);
                self.b.ins().iadd(start, partner)
            }
            Col::HalfIndex { head_dim } => {
                let half = self.imm(head_dim / 2)?;
                self.b.ins().urem_imm_u(j, half)
            }
            Col::Var(v) => return Err(self.unsupported(format!("a gather by v{v} is not a column"))),
        })
    }

    /// `row[v]` for a row pointer with `cols` columns: `v` rounded toward zero
    /// (negative and NaN to 0), NaN past the last column.
    fn gather(&mut self, p: Value, cols: usize, v: u16, flags: MemFlagsData) -> Result<Value, CodegenError> {
        let nan = self.fconst(Lanes::One, f32::NAN);
        if cols == 0 {
            return Ok(nan);
        }
        let x = self.var(v)?;
        let cols = self.imm(cols)?;
        let c = self.b.ins().fcvt_to_uint_sat(I64, x);
        let inside = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, c, cols);
        let zero = self.b.ins().iconst(I64, 0);
        let safe = self.b.ins().select(inside, c, zero);
        let off = self.b.ins().ishl_imm_u(safe, 2);
        let addr = self.b.ins().iadd(p, off);
        let val = self.b.ins().load(F32, flags, addr, 0);
        Ok(self.b.ins().select(inside, val, nan))
    }

    /// `sum_{c < len} a[i, c] * b[j, c]` (`b[c, j]` with `bt`) for the chunk's
    /// column(s). Three forms (see the module doc):
    ///
    /// - with `bt`, or one column of a dot shorter than 4: lane-wise products
    ///   of `a[i, c]` (splatted) and `b`'s values for the chunk's columns,
    ///   accumulated in c order from 0 (`b[c, j0..j0 + 4]` is contiguous);
    /// - without `bt`, four columns of a dot shorter than 4: the same, with
    ///   `b[j0 + l, c]` for the four `l` picked out of `b[j0..j0 + 4, :]` by shuffles
    ///   ([`Lower::row_dot_short4`]);
    /// - without `bt`, at least 4 long: per column an f32x4 of partial sums,
    ///   reduced horizontally ([`Lower::row_dot_quads`]).
    fn row_dot(
        &mut self,
        a: usize,
        b: usize,
        len: usize,
        bt: bool,
        cx: &mut Chunk<'k>,
        h: &Hoisted<'k>,
    ) -> Result<Value, CodegenError> {
        let j = cx.j.ok_or_else(|| self.unsupported("row_dot outside a column loop"))?;
        let lanes = cx.lanes;
        if !bt && len >= 4 {
            return self.row_dot_quads(a, b, len, cx, h);
        }
        if !bt && lanes == Lanes::Four {
            return self.row_dot_short4(a, b, len, cx, h);
        }
        let a_ptr = self.row_ptr(a)?;
        let b_ptr = self.row_ptr(b)?;
        let (a_flags, b_flags) = (self.load_flags(a), self.load_flags(b));
        // b's values for this chunk start at bj and step by `stride` bytes per c.
        let (bj, stride) = if bt {
            let off = self.j_bytes(cx)?;
            let stride = cx.loop_cols.checked_mul(4);
            (self.b.ins().iadd(b_ptr, off), stride)
        } else {
            let row_bytes = self.imm(len.saturating_mul(4))?;
            let off = self.b.ins().imul_imm_u(j, row_bytes);
            (self.b.ins().iadd(b_ptr, off), Some(4))
        };
        let stride = self.imm(stride.ok_or_else(|| self.unsupported("row_dot stride overflows"))?)?;
        let mut acc = self.fconst(lanes, 0.0);
        if len <= DOT_UNROLL {
            for c in 0..len {
                let av = match h.dot_rows.get(&a).and_then(|r| r.get(c)) {
                    Some(v) => *v,
                    None => self.b.ins().load(F32, a_flags, a_ptr, (c * 4) as i32),
                };
                let av = self.widen(av, lanes);
                let off = self.imm(c)?.saturating_mul(stride);
                let addr = self.b.ins().iadd_imm_u(bj, off);
                let bv = self.b.ins().load(lanes.float(), b_flags, addr, 0);
                let prod = self.b.ins().fmul(av, bv);
                acc = self.b.ins().fadd(acc, prod);
            }
            return Ok(acc);
        }
        // head(c, acc): c < len ? body : after
        let head = self.b.create_block();
        let body = self.b.create_block();
        let after = self.b.create_block();
        let c = self.b.append_block_param(head, I64);
        let acc_p = self.b.append_block_param(head, lanes.float());
        let zero = self.b.ins().iconst(I64, 0);
        self.b.ins().jump(head, &[BlockArg::Value(zero), BlockArg::Value(acc)]);

        self.b.switch_to_block(head);
        let len_imm = self.imm(len)?;
        let more = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, c, len_imm);
        self.b.ins().brif(more, body, &[], after, &[]);

        self.b.switch_to_block(body);
        let a_off = self.b.ins().ishl_imm_u(c, 2);
        let a_addr = self.b.ins().iadd(a_ptr, a_off);
        let av = self.b.ins().load(F32, a_flags, a_addr, 0);
        let av = self.widen(av, lanes);
        let b_off = self.b.ins().imul_imm_u(c, stride);
        let b_addr = self.b.ins().iadd(bj, b_off);
        let bv = self.b.ins().load(lanes.float(), b_flags, b_addr, 0);
        let prod = self.b.ins().fmul(av, bv);
        let next_acc = self.b.ins().fadd(acc_p, prod);
        let next_c = self.b.ins().iadd_imm_u(c, 1);
        self.b
            .ins()
            .jump(head, &[BlockArg::Value(next_c), BlockArg::Value(next_acc)]);

        self.b.switch_to_block(after);
        Ok(acc_p)
    }

    /// Four columns `j0..j0 + 4` of a `row_dot` without `bt` and `len < 4`:
    /// `b[j0..j0 + 4, :]` is `4 len` contiguous values, loaded as `len` f32x4;
    /// `b[j0 + l, c]` for the four `l` is picked out of them by at most two
    /// shuffles per c; then, as in the scalar form, `acc += a[i, c] * that` in c order from 0.
    fn row_dot_short4(
        &mut self,
        a: usize,
        b: usize,
        len: usize,
        cx: &mut Chunk<'k>,
        h: &Hoisted<'k>,
    ) -> Result<Value, CodegenError> {
        let j = cx.j.ok_or_else(|| self.unsupported("row_dot outside a column loop"))?;
        let a_ptr = self.row_ptr(a)?;
        let b_ptr = self.row_ptr(b)?;
        let (a_flags, b_flags) = (self.dot_flags(a), self.dot_flags(b));
        let row_bytes = self.imm(len * 4)?;
        let off = self.b.ins().imul_imm_u(j, row_bytes);
        let bj = self.b.ins().iadd(b_ptr, off);
        // (4 len) values b[j0..j0 + 4, 0..len], row-major.
        let rows: Vec<Value> = (0..len)
            .map(|q| self.b.ins().load(F32X4, b_flags, bj, (q * 16) as i32))
            .collect();
        let mut acc = self.fconst(Lanes::Four, 0.0);
        for c in 0..len {
            let av = match h.dot_rows.get(&a).and_then(|r| r.get(c)) {
                Some(v) => *v,
                None => self.b.ins().load(F32, a_flags, a_ptr, (c * 4) as i32),
            };
            let av = self.widen(av, Lanes::Four);
            let bv = self.pick4(&rows, [c, c + len, c + 2 * len, c + 3 * len])?;
            let prod = self.b.ins().fmul(av, bv);
            acc = self.b.ins().fadd(acc, prod);
        }
        Ok(acc)
    }

    /// The f32x4 whose lane l is element `idx[l]` of the concatenated f32x4
    /// values `v` (element e is lane `e % 4` of `v[e / 4]`): each half of the
    /// result comes from one value, or from two merged by a shuffle first.
    fn pick4(&mut self, v: &[Value], idx: [usize; 4]) -> Result<Value, CodegenError> {
        let mut halves = Vec::with_capacity(2);
        for pair in [[idx[0], idx[1]], [idx[2], idx[3]]] {
            let [x, y] = pair.map(|e| v.get(e / 4).copied().map(|val| (val, (e % 4) as u8)));
            let (Some((xv, xl)), Some((yv, yl))) = (x, y) else {
                return Err(self.unsupported("a row_dot lane past its rows"));
            };
            halves.push(if xv == yv {
                (xv, xl, yl)
            } else {
                (self.shuffle32(xv, yv, [xl, xl, 4 + yl, 4 + yl]), 0, 2)
            });
        }
        let [(x, x0, x1), (y, y0, y1)] = [halves[0], halves[1]];
        Ok(if x == y && [x0, x1, y0, y1] == [0, 1, 2, 3] {
            x
        } else {
            self.shuffle32(x, y, [x0, x1, 4 + y0, 4 + y1])
        })
    }

    /// The f32x4 whose lane l is lane `lanes[l]` of `x` (0..4) or `y` (4..8).
    fn shuffle32(&mut self, x: Value, y: Value, lanes: [u8; 4]) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let mask: Vec<u8> = lanes.iter().flat_map(|&l| (0..4).map(move |b| 4 * l + b)).collect();
        let mask = self.b.func.dfg.immediates.push(ConstantData::from(mask));
        let xb = self.b.ins().bitcast(I8X16, le, x);
        let yb = if x == y { xb } else { self.b.ins().bitcast(I8X16, le, y) };
        let r = self.b.ins().shuffle(xb, yb, mask);
        self.b.ins().bitcast(F32X4, le, r)
    }

    /// A `row_dot` without `bt` and `len >= 4`, for the chunk's column or four
    /// columns. Per column j, an f32x4 of partial sums: the product of
    /// `a[i, 4q..4q + 4]` and `b[j, 4q..4q + 4]` for q = 0, then `+=` those for
    /// q = 1, 2, ... (unrolled with the hoisted `a` row up to [`DOT_UNROLL`],
    /// else a loop over q), then `+=` the window `a[i, len - 4..len] *
    /// b[j, len - 4..len]` with the lanes already counted masked to +0 (after
    /// the product, so an infinite `b` there adds nothing); the partial sums
    /// `x` are reduced to `(x0 + x2) + (x1 + x3)`, for four columns at once by
    /// two rounds of interleaving shuffles. The same column gets the same bits
    /// whether it is computed alone or in a chunk of four.
    fn row_dot_quads(
        &mut self,
        a: usize,
        b: usize,
        len: usize,
        cx: &mut Chunk<'k>,
        h: &Hoisted<'k>,
    ) -> Result<Value, CodegenError> {
        let j = cx.j.ok_or_else(|| self.unsupported("row_dot outside a column loop"))?;
        let n: i64 = match cx.lanes {
            Lanes::One => 1,
            Lanes::Four => 4,
        };
        let a_ptr = self.row_ptr(a)?;
        let b_ptr = self.row_ptr(b)?;
        let (a_flags, b_flags) = (self.dot_flags(a), self.dot_flags(b));
        let row_bytes = len
            .checked_mul(4)
            .ok_or_else(|| self.unsupported(format!("a row_dot of length {len} is too long")))?;
        let row_bytes = self.imm(row_bytes)?;
        // bl[l]: b[j + l, 0]
        let off = self.b.ins().imul_imm_u(j, row_bytes);
        let b0 = self.b.ins().iadd(b_ptr, off);
        let mut bl = vec![b0];
        for l in 1..n {
            let next = self.b.ins().iadd_imm_u(b0, row_bytes.saturating_mul(l));
            bl.push(next);
        }
        let quads = len / 4;
        let hoisted = h.dot_quads.get(&a);
        let a_quad = |lw: &mut Self, q: usize| match hoisted.and_then(|d| d.quads.get(q)) {
            Some(v) => *v,
            None => lw.b.ins().load(F32X4, a_flags, a_ptr, (q * 16) as i32),
        };
        // q = 0 starts the partial sums.
        let aq = a_quad(self, 0);
        let mut acc = Vec::with_capacity(bl.len());
        for &p in &bl {
            let bv = self.b.ins().load(F32X4, b_flags, p, 0);
            acc.push(self.b.ins().fmul(aq, bv));
        }
        if len <= DOT_UNROLL {
            for q in 1..quads {
                let aq = a_quad(self, q);
                for (l, &p) in bl.iter().enumerate() {
                    let bv = self.b.ins().load(F32X4, b_flags, p, (q * 16) as i32);
                    let prod = self.b.ins().fmul(aq, bv);
                    acc[l] = self.b.ins().fadd(acc[l], prod);
                }
            }
        } else if quads > 1 {
            // head(off, acc..): off < 16 quads ? body : after
            let head = self.b.create_block();
            let body = self.b.create_block();
            let after = self.b.create_block();
            let off = self.b.append_block_param(head, I64);
            let acc_p: Vec<Value> = (0..n).map(|_| self.b.append_block_param(head, F32X4)).collect();
            let start = self.b.ins().iconst(I64, 16);
            let mut args = vec![BlockArg::Value(start)];
            args.extend(acc.iter().map(|&v| BlockArg::Value(v)));
            self.b.ins().jump(head, &args);

            self.b.switch_to_block(head);
            let end = row_bytes - row_bytes % 16; // 16 quads
            let more = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, off, end);
            self.b.ins().brif(more, body, &[], after, &[]);

            self.b.switch_to_block(body);
            let a_addr = self.b.ins().iadd(a_ptr, off);
            let aq = self.b.ins().load(F32X4, a_flags, a_addr, 0);
            let next_off = self.b.ins().iadd_imm_u(off, 16);
            let mut args = vec![BlockArg::Value(next_off)];
            for (l, &p) in bl.iter().enumerate() {
                let b_addr = self.b.ins().iadd(p, off);
                let bv = self.b.ins().load(F32X4, b_flags, b_addr, 0);
                let prod = self.b.ins().fmul(aq, bv);
                args.push(BlockArg::Value(self.b.ins().fadd(acc_p[l], prod)));
            }
            self.b.ins().jump(head, &args);

            self.b.switch_to_block(after);
            acc = acc_p;
        }
        let rem = len % 4;
        if rem != 0 {
            let w_off = self.imm((len - 4) * 4)?;
            let aw = match hoisted.and_then(|d| d.window) {
                Some(v) => v,
                None => {
                    let addr = self.b.ins().iadd_imm_u(a_ptr, w_off);
                    self.b.ins().load(F32X4, a_flags, addr, 0)
                }
            };
            // Keep the last `rem` lanes: the others are columns the quads counted.
            let mask: Vec<u8> = (0..4).flat_map(|l| [if l >= 4 - rem { 0xFF } else { 0 }; 4]).collect();
            let mask = self.b.func.dfg.constants.insert(ConstantData::from(mask));
            let mask = self.b.ins().vconst(F32X4, mask);
            for (l, &p) in bl.iter().enumerate() {
                let addr = self.b.ins().iadd_imm_u(p, w_off);
                let bv = self.b.ins().load(F32X4, b_flags, addr, 0);
                let prod = self.b.ins().fmul(aw, bv);
                let prod = self.b.ins().band(prod, mask);
                acc[l] = self.b.ins().fadd(acc[l], prod);
            }
        }
        Ok(match acc[..] {
            [x] => {
                let e: Vec<Value> = (0..4u8).map(|l| self.b.ins().extractlane(x, l)).collect();
                let lo = self.b.ins().fadd(e[0], e[2]);
                let hi = self.b.ins().fadd(e[1], e[3]);
                self.b.ins().fadd(lo, hi)
            }
            [x, y, z, w] => {
                // [x0 + x2, y0 + y2, x1 + x3, y1 + y3] and the same for z, w.
                let s = [(x, y), (z, w)].map(|(p, q)| {
                    let lo = self.shuffle32(p, q, [0, 4, 1, 5]);
                    let hi = self.shuffle32(p, q, [2, 6, 3, 7]);
                    self.b.ins().fadd(lo, hi)
                });
                let lo = self.shuffle32(s[0], s[1], [0, 1, 4, 5]);
                let hi = self.shuffle32(s[0], s[1], [2, 3, 6, 7]);
                self.b.ins().fadd(lo, hi)
            }
            _ => return Err(self.unsupported("a row_dot chunk of neither one column nor four")),
        })
    }

    fn cond(&mut self, c: Cond, cx: &mut Chunk<'k>) -> Result<Mask, CodegenError> {
        let lanes = cx.lanes;
        Ok(match c {
            Cond::FirstHalf { head_dim } => {
                let j =
                    cx.j.ok_or_else(|| self.unsupported("a column condition outside a column loop"))?;
                let (hd, half) = (self.imm(head_dim)?, self.imm(head_dim / 2)?);
                let within = self.b.ins().urem_imm_u(j, hd);
                Mask::Scalar(self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, within, half))
            }
            Cond::ColBelow { arg } => {
                let jf = self.lane_columns(cx)?;
                let fl = self
                    .floor
                    .get(arg)
                    .copied()
                    .flatten()
                    .ok_or_else(|| self.unsupported(format!("col_below reads a{arg}, not a scalar")))?;
                let fl = self.widen(fl, lanes);
                self.fcmp(lanes, FloatCC::LessThan, jf, fl)
            }
            Cond::ColIs(v) => {
                let jf = self.lane_columns(cx)?;
                let x = self.var(v)?;
                let x = self.widen(x, lanes);
                self.fcmp(lanes, FloatCC::Equal, jf, x)
            }
            Cond::NonNegative(v) => {
                let x = self.var(v)?;
                let zero = self.fconst(Lanes::One, 0.0);
                Mask::Scalar(self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero))
            }
        })
    }

    /// The chunk's (first) column in bytes, `4 j`.
    fn j_bytes(&mut self, cx: &mut Chunk<'k>) -> Result<Value, CodegenError> {
        if let Some(v) = cx.jbytes {
            return Ok(v);
        }
        let j =
            cx.j.ok_or_else(|| self.unsupported("a column read outside a column loop"))?;
        let v = self.b.ins().ishl_imm_u(j, 2);
        cx.jbytes = Some(v);
        Ok(v)
    }

    /// The chunk's columns as f32 (`j as f32`, per lane).
    fn lane_columns(&mut self, cx: &mut Chunk<'k>) -> Result<Value, CodegenError> {
        if let Some(v) = cx.jf {
            return Ok(v);
        }
        let j =
            cx.j.ok_or_else(|| self.unsupported("a column condition outside a column loop"))?;
        let v = match cx.lanes {
            Lanes::One => self.b.ins().fcvt_from_sint(F32, j),
            Lanes::Four => {
                let j32 = self.b.ins().ireduce(I32, j);
                let js = self.b.ins().splat(I32X4, j32);
                let iota = self.iota();
                let cols = self.b.ins().iadd(js, iota);
                self.b.ins().fcvt_from_sint(F32X4, cols)
            }
        };
        cx.jf = Some(v);
        Ok(v)
    }

    /// The i32x4 constant `[0, 1, 2, 3]` (emitted per use: a use need not be dominated by an earlier one).
    fn iota(&mut self) -> Value {
        let bytes: Vec<u8> = (0i32..4).flat_map(|l| l.to_le_bytes()).collect();
        let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
        self.b.ins().vconst(I32X4, c)
    }

    // -------------------------------------------------------------- lane-generic helpers

    fn widen(&mut self, x: Value, lanes: Lanes) -> Value {
        match lanes {
            Lanes::One => x,
            Lanes::Four => self.b.ins().splat(F32X4, x),
        }
    }

    fn fconst(&mut self, lanes: Lanes, x: f32) -> Value {
        let c = self.b.ins().f32const(x);
        self.widen(c, lanes)
    }

    fn iconst32(&mut self, lanes: Lanes, x: i32) -> Value {
        let c = self.b.ins().iconst(I32, i64::from(x));
        match lanes {
            Lanes::One => c,
            Lanes::Four => self.b.ins().splat(I32X4, c),
        }
    }

    fn fcmp(&mut self, lanes: Lanes, cc: FloatCC, x: Value, y: Value) -> Mask {
        let m = self.b.ins().fcmp(cc, x, y);
        match lanes {
            Lanes::One => Mask::Scalar(m),
            Lanes::Four => Mask::Lanes(m),
        }
    }

    /// `m ? x : y` for f32 or f32x4 values.
    fn fsel(&mut self, m: Mask, x: Value, y: Value) -> Value {
        match m {
            Mask::Scalar(c) => self.b.ins().select(c, x, y),
            Mask::Lanes(c) => {
                let c = self.b.ins().bitcast(F32X4, flags_plain(), c);
                self.b.ins().bitselect(c, x, y)
            }
        }
    }

    /// `m ? x : y` for i32 or i32x4 values.
    fn isel(&mut self, m: Mask, x: Value, y: Value) -> Value {
        match m {
            Mask::Scalar(c) => self.b.ins().select(c, x, y),
            Mask::Lanes(c) => self.b.ins().bitselect(c, x, y),
        }
    }

    fn f2i(&mut self, lanes: Lanes, x: Value) -> Value {
        self.b.ins().bitcast(lanes.int(), flags_plain(), x)
    }

    fn i2f(&mut self, lanes: Lanes, x: Value) -> Value {
        self.b.ins().bitcast(lanes.float(), flags_plain(), x)
    }

    /// `e^x` (see the module doc): Cody-Waite reduction `x = n ln2 + r`,
    /// `|r| <= ln2 / 2`, the Cephes `expf` polynomial for `e^r`, and `2^n` applied
    /// as two normal powers of two so that subnormal results round once.
    fn exp(&mut self, x: Value, l: Lanes) -> Value {
        // Clamp: e^89 overflows and e^-104 underflows to 0 (in f32), NaN passes through.
        let hi = self.fconst(l, 89.0);
        let lo = self.fconst(l, -104.0);
        let over = self.fcmp(l, FloatCC::GreaterThan, x, hi);
        let x = self.fsel(over, hi, x);
        let under = self.fcmp(l, FloatCC::LessThan, x, lo);
        let x = self.fsel(under, lo, x);
        // n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer, which the low bits hold.
        let magic = self.fconst(l, 12_582_912.0);
        let log2e = self.fconst(l, std::f32::consts::LOG2_E);
        let scaled = self.b.ins().fmul(x, log2e);
        let t = self.b.ins().fadd(scaled, magic);
        let nf = self.b.ins().fsub(t, magic);
        let tbits = self.f2i(l, t);
        let magic_bits = self.iconst32(l, 0x4B40_0000);
        let n = self.b.ins().isub(tbits, magic_bits);
        // r = x - n ln2, ln2 split into an exactly multipliable head and a tail.
        let ln2_hi = self.fconst(l, 0.693_359_4);
        let ln2_lo = self.fconst(l, -2.121_944_4e-4);
        let p_hi = self.b.ins().fmul(nf, ln2_hi);
        let r = self.b.ins().fsub(x, p_hi);
        let p_lo = self.b.ins().fmul(nf, ln2_lo);
        let r = self.b.ins().fsub(r, p_lo);
        // e^r = 1 + r + r^2 P(r)
        let coeffs = [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5, // Cephes' 5.0000001201e-1, as an f32
        ];
        let mut p = self.fconst(l, coeffs[0]);
        for c in &coeffs[1..] {
            let k = self.fconst(l, *c);
            let pr = self.b.ins().fmul(p, r);
            p = self.b.ins().fadd(pr, k);
        }
        let r2 = self.b.ins().fmul(r, r);
        let y = self.b.ins().fmul(p, r2);
        let y = self.b.ins().fadd(y, r);
        let one = self.fconst(l, 1.0);
        let y = self.b.ins().fadd(y, one);
        // 2^n = 2^n1 * 2^n2 with n1 = n >> 1, both exponents normal for n in [-150, 128].
        let n1 = self.b.ins().sshr_imm_u(n, 1);
        let n2 = self.b.ins().isub(n, n1);
        let bias = self.iconst32(l, 127);
        let e1 = self.b.ins().iadd(n1, bias);
        let e1 = self.b.ins().ishl_imm_u(e1, 23);
        let s1 = self.i2f(l, e1);
        let e2 = self.b.ins().iadd(n2, bias);
        let e2 = self.b.ins().ishl_imm_u(e2, 23);
        let s2 = self.i2f(l, e2);
        let y = self.b.ins().fmul(y, s1);
        self.b.ins().fmul(y, s2)
    }

    /// `|x|` and the sign bit of `x` (as i32 lanes).
    fn abs_and_sign(&mut self, x: Value, l: Lanes) -> (Value, Value) {
        let bits = self.f2i(l, x);
        let mag = self.iconst32(l, 0x7FFF_FFFF);
        let sign = self.iconst32(l, i32::MIN);
        let a = self.b.ins().band(bits, mag);
        let a = self.i2f(l, a);
        let s = self.b.ins().band(bits, sign);
        (a, s)
    }

    /// `x` (not negative, or NaN) with the sign bit `sign` of [`Self::abs_and_sign`].
    fn with_sign(&mut self, x: Value, sign: Value, l: Lanes) -> Value {
        let bits = self.f2i(l, x);
        let bits = self.b.ins().bor(bits, sign);
        self.i2f(l, bits)
    }

    /// `c[0] t^n + c[1] t^(n-1) + ... + c[n]` by Horner's rule.
    fn poly(&mut self, coeffs: &[f32], t: Value, l: Lanes) -> Value {
        let mut p = self.fconst(l, coeffs[0]);
        for c in &coeffs[1..] {
            let k = self.fconst(l, *c);
            let pt = self.b.ins().fmul(p, t);
            p = self.b.ins().fadd(pt, k);
        }
        p
    }

    /// `erf x` (see the module doc): `x + x Q(x^2)` for `|x| < 1`, else
    /// `sign(x) (1 - exp(P(min(|x|, 4) - 1)))`, `P` approximating `ln erfc`.
    fn erf(&mut self, x: Value, l: Lanes) -> Value {
        // erf(x) / x - 1 in s = x^2 on [0, 1], fitted for relative error (1.2e-9).
        const Q: [f32; 7] = [
            7.853_806e-5,
            -8.010_177e-4,
            5.188_326e-3,
            -2.685_381_1e-2,
            1.128_358_54e-1,
            -3.761_262_6e-1,
            1.283_791_7e-1,
        ];
        // ln erfc(a) in t = a - 1 on [0, 3], fitted for relative error of erfc (1.2e-8).
        const P: [f32; 9] = [
            1.599_847_3e-6,
            -3.249_989_5e-5,
            3.179_133_3e-4,
            -2.048_144_1e-3,
            1.006_869_1e-2,
            -4.156_830_5e-2,
            -8.431_077_6e-1,
            -2.638_967_3,
            -1.849_605_6,
        ];
        // On |x|, with x's sign put back at the end (so erf(-0) = -0).
        let (a, sign) = self.abs_and_sign(x, l);
        let s = self.b.ins().fmul(a, a);
        let q = self.poly(&Q, s, l);
        let aq = self.b.ins().fmul(a, q);
        let small = self.b.ins().fadd(a, aq);
        // Past 4, erfc < 1.6e-8 (under half an ulp of 1): clamp, so infinities give +-1; NaN passes.
        let four = self.fconst(l, 4.0);
        let over = self.fcmp(l, FloatCC::GreaterThan, a, four);
        let ac = self.fsel(over, four, a);
        let one = self.fconst(l, 1.0);
        let t = self.b.ins().fsub(ac, one);
        let p = self.poly(&P, t, l);
        let erfc = self.exp(p, l);
        let big = self.b.ins().fsub(one, erfc);
        let below = self.fcmp(l, FloatCC::LessThan, a, one);
        let r = self.fsel(below, small, big);
        self.with_sign(r, sign, l)
    }

    /// `tanh x` (see the module doc): `x + x^3 R(x^2)` for `|x| < 0.8`, else
    /// `sign(x) (1 - 2 / (exp(2 |x|) + 1))` (`exp` overflows to infinity past 44.5, giving +-1).
    fn tanh(&mut self, x: Value, l: Lanes) -> Value {
        // (tanh x - x) / x^3 in s = x^2 on [0, 0.64], fitted for relative error of tanh (3.7e-9).
        const R: [f32; 6] = [
            1.584_685_2e-3,
            -7.409_420_3e-3,
            2.130_289_2e-2,
            -5.385_229_7e-2,
            1.333_222_1e-1,
            -3.333_33e-1,
        ];
        // On |x|, with x's sign put back at the end (so tanh(-0) = -0).
        let (a, sign) = self.abs_and_sign(x, l);
        let s = self.b.ins().fmul(a, a);
        let r = self.poly(&R, s, l);
        let a3 = self.b.ins().fmul(a, s);
        let a3r = self.b.ins().fmul(a3, r);
        let small = self.b.ins().fadd(a, a3r);
        let two_a = self.b.ins().fadd(a, a);
        let e = self.exp(two_a, l);
        let one = self.fconst(l, 1.0);
        let two = self.fconst(l, 2.0);
        let e1 = self.b.ins().fadd(e, one);
        let frac = self.b.ins().fdiv(two, e1);
        let big = self.b.ins().fsub(one, frac);
        let cut = self.fconst(l, 0.8);
        let below = self.fcmp(l, FloatCC::LessThan, a, cut);
        let r = self.fsel(below, small, big);
        self.with_sign(r, sign, l)
    }

    /// `ln x` (see the module doc): `x = 2^e m`, `m` in `[sqrt(1/2), sqrt(2))`,
    /// `ln x = e ln2 + ln(1 + f)` with `f = m - 1` and the Cephes `logf` polynomial.
    fn log(&mut self, x: Value, l: Lanes) -> Value {
        // Subnormal inputs: scale by 2^23 first.
        let min_normal = self.fconst(l, f32::MIN_POSITIVE);
        let sub = self.fcmp(l, FloatCC::LessThan, x, min_normal);
        let two23 = self.fconst(l, 8_388_608.0);
        let xs = self.b.ins().fmul(x, two23);
        let xs = self.fsel(sub, xs, x);
        let bits = self.f2i(l, xs);
        // e = biased exponent - 126, so that the mantissa is in [0.5, 1).
        let e = self.b.ins().ushr_imm_u(bits, 23);
        let bias = self.iconst32(l, 126);
        let e = self.b.ins().isub(e, bias);
        let adj = self.iconst32(l, -23);
        let zero_i = self.iconst32(l, 0);
        let adj = self.isel(sub, adj, zero_i);
        let e = self.b.ins().iadd(e, adj);
        let mant = self.iconst32(l, 0x007F_FFFF);
        let half = self.iconst32(l, 0x3F00_0000);
        let m = self.b.ins().band(bits, mant);
        let m = self.b.ins().bor(m, half);
        let m = self.i2f(l, m);
        // m < sqrt(1/2): use 2m and e - 1, so f = m - 1 lies in [sqrt(1/2) - 1, sqrt(2) - 1).
        let sqrth = self.fconst(l, std::f32::consts::FRAC_1_SQRT_2);
        let small = self.fcmp(l, FloatCC::LessThan, m, sqrth);
        let one_i = self.iconst32(l, 1);
        let dec = self.isel(small, one_i, zero_i);
        let e = self.b.ins().isub(e, dec);
        let m2 = self.b.ins().fadd(m, m);
        let m = self.fsel(small, m2, m);
        let one = self.fconst(l, 1.0);
        let f = self.b.ins().fsub(m, one);
        let z = self.b.ins().fmul(f, f);
        let coeffs = [
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ];
        let mut y = self.fconst(l, coeffs[0]);
        for c in &coeffs[1..] {
            let k = self.fconst(l, *c);
            let yf = self.b.ins().fmul(y, f);
            y = self.b.ins().fadd(yf, k);
        }
        let y = self.b.ins().fmul(y, f);
        let y = self.b.ins().fmul(y, z);
        let ef = self.b.ins().fcvt_from_sint(l.float(), e);
        let ln2_lo = self.fconst(l, -2.121_944_4e-4);
        let t = self.b.ins().fmul(ef, ln2_lo);
        let y = self.b.ins().fadd(y, t);
        let halfc = self.fconst(l, 0.5);
        let t = self.b.ins().fmul(z, halfc);
        let y = self.b.ins().fsub(y, t);
        let r = self.b.ins().fadd(f, y);
        let ln2_hi = self.fconst(l, 0.693_359_4);
        let t = self.b.ins().fmul(ef, ln2_hi);
        let r = self.b.ins().fadd(r, t);
        // ln(+inf) = +inf, ln(+-0) = -inf, ln(x < 0) = ln(NaN) = NaN.
        let inf = self.fconst(l, f32::INFINITY);
        let is_inf = self.fcmp(l, FloatCC::Equal, x, inf);
        let r = self.fsel(is_inf, inf, r);
        let zero = self.fconst(l, 0.0);
        let ninf = self.fconst(l, f32::NEG_INFINITY);
        let is_zero = self.fcmp(l, FloatCC::Equal, x, zero);
        let r = self.fsel(is_zero, ninf, r);
        let nan = self.fconst(l, f32::NAN);
        let bad = self.fcmp(l, FloatCC::UnorderedOrLessThan, x, zero);
        self.fsel(bad, nan, r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::kernel::{Arg, lib};

    #[test]
    fn every_example_lowers_and_verifies() {
        for k in lib::examples() {
            let a = clif_text(&k).unwrap_or_else(|e| panic!("{e}\n{k}"));
            let b = clif_text(&k).unwrap();
            assert_eq!(a, b, "{}: the text is not deterministic", k.name);
        }
    }

    #[test]
    fn snapshots_of_the_examples() {
        for k in lib::examples() {
            let text = format!("{k}\n{}", clif_text(&k).unwrap());
            insta::assert_snapshot!(crate::kernel::symbol(&k.name), text);
        }
    }

    fn store_kernel(cols: usize, args: Vec<Arg>, value: Expr) -> Kernel {
        Kernel {
            name: "t".into(),
            args,
            body: vec![Stmt::Store {
                arg: 0,
                cols,
                value,
                accumulate: false,
            }],
        }
    }

    fn rows_arg(name: &str, cols: usize, access: Access) -> Arg {
        Arg {
            name: name.into(),
            ty: ArgTy::Rows { cols },
            access,
        }
    }

    #[test]
    fn rejects_what_kernel_verify_rejects() {
        // A store that reads its destination at another column.
        let k = store_kernel(
            8,
            vec![rows_arg("y", 8, Access::ReadWrite)],
            Expr::at(0, Col::RopePartner { head_dim: 8 }),
        );
        assert!(
            matches!(clif_text(&k), Err(CodegenError::Invalid(_))),
            "{:?}",
            clif_text(&k)
        );
        // A read past the last column.
        let k = store_kernel(
            8,
            vec![
                rows_arg("y", 8, Access::Write),
                Arg {
                    name: "w".into(),
                    ty: ArgTy::Vector { len: 5 },
                    access: Access::Read,
                },
            ],
            Expr::load(1),
        );
        assert!(
            matches!(clif_text(&k), Err(CodegenError::Invalid(_))),
            "{:?}",
            clif_text(&k)
        );
        // head_dim 0, which the interpreter divides by.
        let k = store_kernel(
            8,
            vec![rows_arg("y", 8, Access::Write), rows_arg("x", 8, Access::Read)],
            Expr::at(1, Col::RopePartner { head_dim: 0 }),
        );
        assert!(
            matches!(clif_text(&k), Err(CodegenError::Invalid(_))),
            "{:?}",
            clif_text(&k)
        );
        // A kernel that does not verify.
        let k = store_kernel(8, vec![rows_arg("y", 8, Access::Read)], Expr::c(1.0));
        assert!(matches!(clif_text(&k), Err(CodegenError::Invalid(_))));
    }
}
