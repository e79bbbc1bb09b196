//! CUDA C for fused kernels (compiler/src/kernel) and for the ops a Plan runs unfused, compiled by NVRTC.
//!
//! # Design
//!
//! One thread block per row, grid-stride over rows (`i = blockIdx.x; i < rows;
//! i += gridDim.x`), threads striding over the columns of every column loop
//! (`j = threadIdx.x; j < cols; j += blockDim.x`). Because every loop maps
//! column j to thread `j % blockDim.x`, an element `(i, j)` of a `Rows`
//! argument read or written at column `J` is private to one thread across all
//! statements of the row: such accesses never need a barrier. Everything else
//! (gathers, RoPE partners, the rows a `RowDot` reads, per-row outputs written
//! by thread 0) is shared, and the emitter puts a `__syncthreads()` between two
//! statements exactly when one writes what the other touches through a shared
//! access (read after write, write after read, write after write). A
//! `Reduce` ends in barriers of its own (warp shuffles, one partial per warp
//! in shared memory, then every thread sums the partials in warp order, so
//! every thread holds the same value without a broadcast). Row scalars live in
//! registers, computed redundantly by every thread.
//!
//! Arguments are pointers in kernel-IR order (`const float* __restrict__` for
//! read arguments, `float*` for written ones, `const long long*` for
//! per-row i64, `float` by value for scalars), then `int rows`; the C name of
//! a kernel is [`symbol`] of its IR name (the one mangler, in
//! `crate::kernel`). A gather (`Col::Var`) converts the way the interpreter
//! does (`max(v, 0)` truncated, NaN to 0) and reads NaN past the end of the
//! row instead of out of bounds. A store statement that reads the argument it
//! writes across columns would need all reads before any write; no library
//! kernel does that and [`crate::kernel::verify`], which the emitter calls
//! first, refuses it.
//!
//! Numerics: f32 throughout; `Rsqrt` is emitted as `1.0f / sqrtf(x)` and
//! `Recip` as `1.0f / x` (not the approximate `rsqrtf`/`__frcp`), and the
//! module is meant to be compiled with `--fmad=false` and NVRTC's default IEEE
//! division and square root, so every elementwise formula rounds exactly as
//! the CPU interpreter's. What differs: `expf`, `logf`, `erff` and `tanhf`
//! (CUDA's are within 2 ulp, the interpreter's within 1) and the order of sums
//! in reductions (the IR leaves it unspecified). Fused-vs-CPU differences therefore stay at float
//! rounding, a few ulp per element and `O(sqrt(cols))` ulp for sums.
//!
//! Unfused ops run kernel-IR instances too wherever the kernel IR expresses
//! their per-row math: RMSNorm and its grad, RoPE and its inverse,
//! cross-entropy (on labels shifted by `lamdac_shift_labels`), SiLU and its
//! grad, and the device AdamW step. [`unfused_kernel`] picks the instance of
//! an op from its operand shapes and attributes, [`adamw_kernel`] the AdamW
//! instance of a parameter, and [`unfused_kernels`] lists every instance a
//! set of programs needs; [`module_kernels`] adds them to the fused kernels
//! for the runtime's module (an instance and a fused kernel of the same
//! kernel and shape are the same kernel under the same name, compiled once).
//!
//! [`support_source`] is hand-written CUDA C for the rest, what the kernel IR
//! cannot express: embedding (a row gather), attention, elementwise scale,
//! add and multiply, column scaling and its grad, column copies, label
//! shifting, gradient accumulation, the clipping and freezing helpers (sum
//! of squares, in-place scale, zeroing frozen columns) and bf16 conversion;
//! its kernels and their launch shapes are listed in [`support`]. GEMMs go
//! to cuBLAS. [`module_source`] is one translation unit: the shared helpers,
//! the support kernels and each kernel-IR kernel once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::ir::Op;
use crate::kernel::{Access, ArgTy, BinOp, Col, Cond, Expr, Kernel, KernelError, Reduce, Stmt, UnOp, lib, symbol};
use crate::passes::memory_plan::Program;

/// Why a kernel has no CUDA C.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodegenError {
    /// The kernel is not legal (see [`crate::kernel::verify`]).
    #[error("{0}")]
    Invalid(#[from] KernelError),
    /// Well formed, but outside what this emitter handles.
    #[error("kernel {kernel}: {msg}")]
    Unsupported { kernel: String, msg: String },
    /// Two different kernel names map to one C identifier.
    #[error("kernels `{a}` and `{b}` would both be named `{ident}` in CUDA C")]
    NameClash { a: String, b: String, ident: String },
}

/// Threads per block of a fused kernel: the widest column loop rounded up to
/// a warp, at least 32 and at most 256 (so several rows' blocks share an SM).
pub fn block_threads(k: &Kernel) -> u32 {
    let widest = k
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Reduce { cols, .. } | Stmt::Store { cols, .. } => Some(*cols),
            Stmt::Let { .. } | Stmt::StoreRow { .. } => None,
        })
        .max()
        .unwrap_or(1);
    (widest.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// An f32 constant as a C literal that parses to the same f32 the
/// interpreter uses (`c as f32`): Rust's shortest round-trip form plus `f`.
fn f32_lit(x: f64) -> String {
    let v = x as f32;
    if v.is_nan() {
        "__int_as_float(0x7fffffff)".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "__int_as_float(0x7f800000)".into()
        } else {
            "__int_as_float(0xff800000)".into()
        }
    } else {
        let s = format!("{v:?}");
        if v.is_sign_negative() {
            format!("({s}f)")
        } else {
            format!("{s}f")
        }
    }
}

/// One access of a statement to an argument, for barrier placement.
#[derive(Clone, Copy, Debug)]
struct Touch {
    arg: usize,
    write: bool,
    /// Element (i, j) touched by the thread that owns column j (a `Rows`
    /// argument at `Col::J` inside a column loop).
    private: bool,
}

fn conflicts(a: &Touch, b: &Touch) -> bool {
    a.arg == b.arg && (a.write || b.write) && !(a.private && b.private)
}

fn touches_expr(k: &Kernel, e: &Expr, in_loop: bool, out: &mut Vec<Touch>) {
    match e {
        Expr::Const(_) | Expr::Var(_) => {}
        Expr::Load { arg, col } => {
            let ty = k.args.get(*arg).map(|a| a.ty);
            if ty == Some(ArgTy::Scalar) {
                return;
            }
            let private = in_loop && matches!(col, Col::J) && matches!(ty, Some(ArgTy::Rows { .. }));
            out.push(Touch {
                arg: *arg,
                write: false,
                private,
            });
        }
        Expr::RowDot { a, b, .. } => {
            for arg in [*a, *b] {
                out.push(Touch {
                    arg,
                    write: false,
                    private: false,
                });
            }
        }
        Expr::Unary(_, a) => touches_expr(k, a, in_loop, out),
        Expr::Binary(_, a, b) => {
            touches_expr(k, a, in_loop, out);
            touches_expr(k, b, in_loop, out);
        }
        Expr::Select(c, a, b) => {
            if let Cond::ColBelow { arg } = c
                && k.args.get(*arg).map(|a| a.ty) != Some(ArgTy::Scalar)
            {
                out.push(Touch {
                    arg: *arg,
                    write: false,
                    private: false,
                });
            }
            touches_expr(k, a, in_loop, out);
            touches_expr(k, b, in_loop, out);
        }
    }
}

fn touches(k: &Kernel, s: &Stmt) -> Vec<Touch> {
    let mut out = Vec::new();
    match s {
        Stmt::Let { value, .. } => touches_expr(k, value, false, &mut out),
        Stmt::Reduce { value, .. } => touches_expr(k, value, true, &mut out),
        Stmt::Store { arg, value, .. } => {
            touches_expr(k, value, true, &mut out);
            out.push(Touch {
                arg: *arg,
                write: true,
                private: true,
            });
        }
        Stmt::StoreRow { arg, value } => {
            touches_expr(k, value, false, &mut out);
            out.push(Touch {
                arg: *arg,
                write: true,
                private: false,
            });
        }
    }
    out
}

/// Emits one kernel's expressions; `temps` collects the statements a
/// `RowDot` needs before the expression that uses it.
struct Emitter<'k> {
    k: &'k Kernel,
    temps: Vec<String>,
    next_temp: usize,
}

impl Emitter<'_> {
    fn col(&self, col: Col) -> String {
        match col {
            Col::J => "j".into(),
            Col::RopePartner { head_dim: hd } => format!("((j / {hd}) * {hd} + (j % {hd} + {}) % {hd})", hd / 2),
            Col::HalfIndex { head_dim: hd } => format!("(j % {})", (hd / 2).max(1)),
            // Gathers go through lamdac_gather (see `load`).
            Col::Var(v) => format!("v{v}"),
        }
    }

    fn load(&self, arg: usize, col: Col) -> Result<String, CodegenError> {
        let a = self.k.args.get(arg).ok_or_else(|| {
            CodegenError::Invalid(KernelError {
                kernel: self.k.name.clone(),
                stmt: None,
                msg: format!("no argument {arg}"),
            })
        })?;
        let p = format!("a{arg}");
        // (base offset of the row the argument is read in, columns of that row)
        let (base, cols) = match a.ty {
            ArgTy::Scalar => return Ok(p),
            ArgTy::PerRow => return Ok(format!("{p}[i]")),
            ArgTy::PerRowI64 => return Ok(format!("(float){p}[i]")),
            ArgTy::Rows { cols } => (format!("(long long)i * {cols}"), cols),
            ArgTy::Vector { len } => ("0LL".to_string(), len),
            ArgTy::Periodic { period, cols } => (format!("(long long)(i % {period}) * {cols}"), cols),
        };
        Ok(match col {
            Col::Var(v) => format!("lamdac_gather({p}, {base}, v{v}, {cols})"),
            _ => {
                let c = self.col(col);
                if base == "0LL" {
                    format!("{p}[{c}]")
                } else {
                    format!("{p}[{base} + {c}]")
                }
            }
        })
    }

    fn cond(&self, c: &Cond) -> Result<String, CodegenError> {
        Ok(match *c {
            Cond::FirstHalf { head_dim: hd } => format!("(j % {hd} < {})", hd / 2),
            Cond::ColBelow { arg } => format!("((float)j < floorf({}))", self.load(arg, Col::J)?),
            Cond::ColIs(v) => format!("((float)j == v{v})"),
            Cond::NonNegative(v) => format!("(v{v} >= 0.0f)"),
        })
    }

    fn expr(&mut self, e: &Expr, loop_cols: usize) -> Result<String, CodegenError> {
        Ok(match e {
            Expr::Const(c) => f32_lit(c.0),
            Expr::Var(v) => format!("v{v}"),
            Expr::Load { arg, col } => self.load(*arg, *col)?,
            Expr::RowDot { a, b, len, bt } => {
                let t = format!("t{}", self.next_temp);
                self.next_temp += 1;
                let bi = if *bt {
                    format!("c * {loop_cols} + j")
                } else {
                    format!("j * {len} + c")
                };
                self.temps.push(format!(
                    "float {t} = 0.0f;\nfor (int c = 0; c < {len}; ++c) {t} += a{a}[(long long)i * {len} + c] * a{b}[{bi}];"
                ));
                t
            }
            Expr::Unary(op, a) => {
                let x = self.expr(a, loop_cols)?;
                match op {
                    UnOp::Neg => format!("(-{x})"),
                    UnOp::Exp => format!("expf({x})"),
                    UnOp::Log => format!("logf({x})"),
                    UnOp::Sqrt => format!("sqrtf({x})"),
                    UnOp::Rsqrt => format!("(1.0f / sqrtf({x}))"),
                    UnOp::Recip => format!("(1.0f / {x})"),
                    UnOp::Erf => format!("erff({x})"),
                    UnOp::Tanh => format!("tanhf({x})"),
                }
            }
            Expr::Binary(op, a, b) => {
                let (x, y) = (self.expr(a, loop_cols)?, self.expr(b, loop_cols)?);
                match op {
                    BinOp::Add => format!("({x} + {y})"),
                    BinOp::Sub => format!("({x} - {y})"),
                    BinOp::Mul => format!("({x} * {y})"),
                    BinOp::Div => format!("({x} / {y})"),
                    BinOp::Max => format!("fmaxf({x}, {y})"),
                }
            }
            Expr::Select(c, a, b) => {
                let c = self.cond(c)?;
                let (x, y) = (self.expr(a, loop_cols)?, self.expr(b, loop_cols)?);
                format!("({c} ? {x} : {y})")
            }
        })
    }

    /// The expression with its temporaries, indented by `ind`.
    fn value(&mut self, e: &Expr, loop_cols: usize, ind: &str) -> Result<(String, String), CodegenError> {
        self.temps.clear();
        let x = self.expr(e, loop_cols)?;
        let mut pre = String::new();
        for t in &self.temps {
            for line in t.lines() {
                let _ = writeln!(pre, "{ind}{line}");
            }
        }
        Ok((pre, x))
    }
}

/// The IR text of one statement (as in the kernel's `Display`), for comments.
fn stmt_text(s: &Stmt) -> String {
    match s {
        Stmt::Let { var, value } => format!("v{var} = {value}"),
        Stmt::Reduce { var, op, cols, value } => {
            format!("v{var} = {}_{{j<{cols}}} {value}", format!("{op:?}").to_lowercase())
        }
        Stmt::Store {
            arg,
            cols,
            value,
            accumulate,
        } => format!(
            "for j<{cols}: a{arg}[j] {}= {value}",
            if *accumulate { "+" } else { "" }
        ),
        Stmt::StoreRow { arg, value } => format!("a{arg} = {value}"),
    }
}

fn arg_decl(k: &Kernel, idx: usize) -> String {
    let a = &k.args[idx];
    let shape = match a.ty {
        ArgTy::Rows { cols } => format!("(rows, {cols})"),
        ArgTy::Vector { len } => format!("({len})"),
        ArgTy::PerRow | ArgTy::PerRowI64 => "(rows)".into(),
        ArgTy::Scalar => "scalar".into(),
        ArgTy::Periodic { period, cols } => format!("({period}, {cols}), row i reads i % {period}"),
    };
    let ty = match (a.ty, a.access) {
        (ArgTy::Scalar, _) => "float",
        (ArgTy::PerRowI64, _) => "const long long* __restrict__",
        (_, Access::Read) => "const float* __restrict__",
        (_, Access::Write | Access::ReadWrite) => "float*",
    };
    format!("{ty} a{idx} /* {} {shape} */", a.name)
}

/// The CUDA C of one fused kernel: `extern "C" __global__ void <symbol(name)>(args..., int rows)`,
/// launched with a grid of up to `rows` blocks of [`block_threads`] threads. It
/// uses the helpers of [`prelude`]. Stable text: the same kernel always gives
/// the same source.
pub fn cuda_source(k: &Kernel) -> Result<String, CodegenError> {
    crate::kernel::verify(k)?;
    let name = symbol(&k.name);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// fused kernel `{}`: one block per row, threads over columns",
        k.name
    );
    let _ = writeln!(out, "extern \"C\" __global__ void {name}(");
    for i in 0..k.args.len() {
        let _ = writeln!(out, "    {},", arg_decl(k, i));
    }
    let _ = writeln!(out, "    int rows) {{");
    if k.body.iter().any(|s| matches!(s, Stmt::Reduce { .. })) {
        let _ = writeln!(out, "  __shared__ float red[32];");
    }
    let vars = k.vars();
    if vars > 0 {
        let decl: Vec<String> = (0..vars).map(|v| format!("v{v} = 0.0f")).collect();
        let _ = writeln!(out, "  float {};", decl.join(", "));
    }
    let _ = writeln!(out, "  for (int i = blockIdx.x; i < rows; i += gridDim.x) {{");
    let mut em = Emitter {
        k,
        temps: Vec::new(),
        next_temp: 0,
    };
    // Accesses since the last barrier of the row.
    let mut pending: Vec<Touch> = Vec::new();
    for s in &k.body {
        let t = touches(k, s);
        if pending.iter().any(|p| t.iter().any(|x| conflicts(p, x))) {
            let _ = writeln!(out, "    __syncthreads();");
            pending.clear();
        }
        let _ = writeln!(out, "    // {}", stmt_text(s));
        match s {
            Stmt::Let { var, value } => {
                let (pre, x) = em.value(value, 0, "    ")?;
                let _ = writeln!(out, "{pre}    v{var} = {x};");
            }
            Stmt::Reduce { var, op, cols, value } => {
                let (init, comb, block) = match op {
                    Reduce::Sum => ("0.0f", "acc + x", "lamdac_block_sum"),
                    Reduce::Max => ("__int_as_float(0xff800000)", "fmaxf(acc, x)", "lamdac_block_max"),
                };
                let (pre, x) = em.value(value, *cols, "        ")?;
                let _ = writeln!(out, "    {{");
                let _ = writeln!(out, "      float acc = {init};");
                let _ = writeln!(out, "      for (int j = threadIdx.x; j < {cols}; j += blockDim.x) {{");
                let _ = writeln!(out, "{pre}        float x = {x};");
                let _ = writeln!(out, "        acc = {comb};");
                let _ = writeln!(out, "      }}");
                let _ = writeln!(out, "      v{var} = {block}(acc, red);");
                let _ = writeln!(out, "    }}");
            }
            Stmt::Store {
                arg,
                cols,
                value,
                accumulate,
            } => {
                let (pre, x) = em.value(value, *cols, "      ")?;
                let opr = if *accumulate { "+=" } else { "=" };
                let _ = writeln!(out, "    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) {{");
                let _ = writeln!(out, "{pre}      a{arg}[(long long)i * {cols} + j] {opr} {x};");
                let _ = writeln!(out, "    }}");
            }
            Stmt::StoreRow { arg, value } => {
                let (pre, x) = em.value(value, 0, "      ")?;
                let _ = writeln!(out, "    if (threadIdx.x == 0) {{");
                let _ = writeln!(out, "{pre}      a{arg}[i] = {x};");
                let _ = writeln!(out, "    }}");
            }
        }
        pending.extend(t);
        // A reduction ends with barriers: everything before it is complete.
        if matches!(s, Stmt::Reduce { .. }) {
            pending.clear();
        }
    }
    // The next row of this block reuses `red` and may read what this row's
    // thread 0 wrote only through other rows' memory, which no kernel does.
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    Ok(out)
}

/// The kernel-IR instance the CUDA backend runs for the unfused `op` whose
/// operands have the (program value) shapes `shapes`, or None for an op that
/// runs a support kernel or cuBLAS, and for shapes no instance fits (a zero
/// size, a RoPE width that is not whole heads of even `head_dim`): the
/// executor reports those as it checks its operands.
///
/// | op | instance | launch arguments (then `rows`) |
/// |---|---|---|
/// | `RmsNorm { eps }` (x (n, d), w (d)) | [`lib::rmsnorm`]`(d, eps)` | x, w, y, rstd; n rows |
/// | `RmsNormGrad` (g, x, w (d), rstd) | [`lib::rmsnorm_grad`]`(d)` | g, x, w, rstd, dx; n rows |
/// | `Rope`/`RopeGrad { head_dim, seq }` (x (n, width)) | [`lib::rope`]/[`lib::rope_grad`]`(width, head_dim, seq)` | x, cos, sin, y; n rows |
/// | `CrossEntropy { grad }` (logits (n, V), labels) | [`lib::cross_entropy`]`(V, grad)` | logits, shifted targets, per-row loss, (`grad_scale / count`, dlogits); n rows |
/// | `Silu` (x (.., d)) | [`lib::silu`]`(d)` | x, y; len / d rows |
/// | `SiluGrad` (g, x (.., d)) | [`lib::silu_grad`]`(d)` | g, x, dx; len / d rows |
pub fn unfused_kernel(op: &Op, shapes: &[&[usize]]) -> Option<Kernel> {
    let last = |i: usize| shapes.get(i).and_then(|s| s.last()).copied().filter(|&c| c > 0);
    match op {
        Op::RmsNorm { eps } => Some(lib::rmsnorm(last(1)?, eps.0)),
        Op::RmsNormGrad => Some(lib::rmsnorm_grad(last(2)?)),
        Op::Rope { head_dim, seq, .. } | Op::RopeGrad { head_dim, seq, .. } => {
            let (width, hd) = (last(0)?, *head_dim);
            if hd == 0 || !hd.is_multiple_of(2) || !width.is_multiple_of(hd) || *seq == 0 {
                return None;
            }
            Some(if matches!(op, Op::Rope { .. }) {
                lib::rope(width, hd, *seq)
            } else {
                lib::rope_grad(width, hd, *seq)
            })
        }
        Op::CrossEntropy { grad, .. } => Some(lib::cross_entropy(last(0)?, *grad)),
        Op::Silu => Some(lib::silu(last(0)?)),
        Op::SiluGrad => Some(lib::silu_grad(last(1)?)),
        _ => None,
    }
}

/// The AdamW instance the CUDA backend runs for a parameter of `len` values
/// updated as rows of `cols` (the columns below `frozen` stay): [`lib::adamw`]`(cols)`
/// over `len / cols` rows, or, when `cols` is 1 (nothing can be frozen), one
/// row of `len` columns.
pub fn adamw_kernel(len: usize, cols: usize) -> Kernel {
    lib::adamw(if cols > 1 { cols } else { len.max(1) })
}

/// Every kernel-IR instance the unfused ops of `programs` need
/// ([`unfused_kernel`] of each instruction, from its operands' value
/// shapes), and the AdamW instance ([`adamw_kernel`]) of each parameter
/// whose gradient they accumulate, as the trainer updates it: rows of its
/// second dimension (`cols` 1 for a vector). Each once, by name, in first-use
/// order; instances that would not verify are left out.
pub fn unfused_kernels<'p>(programs: impl IntoIterator<Item = &'p Program>) -> Vec<Kernel> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for prog in programs {
        for ins in &prog.instrs {
            let shapes: Vec<&[usize]> = ins
                .inputs
                .iter()
                .map(|&v| prog.values.get(v).map_or(&[][..], |i| i.ty.shape.as_slice()))
                .collect();
            let k = match &ins.op {
                Op::ParamGrad(_) => shapes.first().and_then(|s| {
                    let len: usize = s.iter().product();
                    (len > 0 && !s.is_empty()).then(|| adamw_kernel(len, s.get(1).copied().unwrap_or(1)))
                }),
                op => unfused_kernel(op, &shapes),
            };
            if let Some(k) = k
                && crate::kernel::verify(&k).is_ok()
                && seen.insert(k.name.clone())
            {
                out.push(k);
            }
        }
    }
    out
}

/// Every kernel-IR kernel the CUDA backend compiles for `programs`: their
/// fused kernels (first-use order, once by name), then [`unfused_kernels`].
/// An instance equal to a fused kernel keeps its place once in the module
/// ([`module_source`] deduplicates equal kernels by name).
pub fn module_kernels<'p>(programs: impl IntoIterator<Item = &'p Program> + Clone) -> Vec<Kernel> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for prog in programs.clone() {
        for ins in &prog.instrs {
            if let Op::Fused(k) = &ins.op
                && seen.insert(k.name.clone())
            {
                out.push((**k).clone());
            }
        }
    }
    out.extend(
        unfused_kernels(programs)
            .into_iter()
            .filter(|k| !seen.contains(&k.name)),
    );
    out
}

/// Device helpers shared by fused and support kernels: warp and block
/// reductions (every thread receives the result) and the bounded gather.
/// Block reductions need `blockDim.x` to be a multiple of 32 (at most 1024)
/// and a `float[32]` (`double[32]`) scratch in shared memory.
pub fn prelude() -> &'static str {
    PRELUDE
}

const PRELUDE: &str = r#"// lamdac CUDA module (generated; see compiler/src/codegen/cuda.rs). No headers: NVRTC builtins only.
#define LAMDAC_NAN __int_as_float(0x7fffffff)
#define LAMDAC_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float lamdac_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float lamdac_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread returns the same value (partials added in warp order).
__device__ float lamdac_block_sum(float v, float* red) {
  v = lamdac_warp_sum(v);
  __syncthreads();  // the previous use of red is over
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.0f;
  const int warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < warps; ++w) s += red[w];
  return s;
}

__device__ float lamdac_block_max(float v, float* red) {
  v = lamdac_warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = LAMDAC_NEG_INF;
  const int warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, red[w]);
  return m;
}

__device__ double lamdac_block_sum_d(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0.0;
  const int warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < warps; ++w) s += red[w];
  return s;
}

// p[base + c] with c = (column held by v) as the interpreter converts it
// (max(v, 0) truncated, NaN -> 0); NaN past the end of the row.
__device__ __forceinline__ float lamdac_gather(const float* p, long long base, float v, int cols) {
  const long long c = (long long)fmaxf(v, 0.0f);
  return c < cols ? p[base + c] : LAMDAC_NAN;
}
"#;

/// Names and launch shapes of the support kernels (see [`support_source`]).
///
/// "Grid-stride" kernels take any grid of `blockDim.x`-thread blocks and
/// loop over their elements; "block per row" kernels need a block size that
/// is a multiple of 32 (at most 1024) and loop over rows with the grid.
pub mod support {
    /// `(ids (n) i64, table (vocab, d), out (n, d), int n, int d, int vocab)`; block per row.
    /// Ids outside `0..vocab` write NaN rows (the runtime validates them first).
    pub const EMBEDDING: &str = "lamdac_embedding";
    /// `(ids (n) i64, table (vocab, d) bf16 bits, out (n, d) f32, int n, int d, int vocab)`: [`EMBEDDING`]
    /// from a bf16 table, widened exactly; block per row.
    pub const EMBEDDING_BF16: &str = "lamdac_embedding_bf16";
    /// `(x, y, float c, long long len)`: `y = c x`; grid-stride.
    pub const SCALE: &str = "lamdac_scale";
    /// `(a, b, y, long long len)`: `y = a + b`; grid-stride.
    pub const ADD: &str = "lamdac_add";
    /// `(a, b, y, long long len)`: `y = a * b`; grid-stride.
    pub const MUL: &str = "lamdac_mul";
    /// `(x (n, k), v (k), y (n, k), long long len, int k)`: `y = x diag(v)`; grid-stride.
    pub const COL_SCALE: &str = "lamdac_col_scale";
    /// `(g (n, k), x (n, k), dv (k), int n, int k)`: `dv = sum_rows g x`, rows in order; one thread per column.
    pub const COL_SCALE_GRAD: &str = "lamdac_col_scale_grad";
    /// `(q (n, H hd), k (n, KV hd), v, o (n, H hd), lse (batch, H, seq), int batch, int seq, int heads,
    /// int kv_heads, int hd, float scale)`; block per (b, h, query i), dynamic shared memory
    /// `(seq + 32) * 4` bytes.
    pub const ATTENTION_FWD: &str = "lamdac_attention_fwd";
    /// `(g (n, H hd), q, k, v, lse, dq (n, H hd), delta (batch, H, seq), dims..., float scale)`; block per
    /// (b, h, query i), dynamic shared memory `(2 seq + 32) * 4` bytes. Writes dq and `delta = rowsum(P dP)`.
    pub const ATTENTION_BWD_DQ: &str = "lamdac_attention_bwd_dq";
    /// `(g, q, k, v, lse, delta, dk (n, KV hd), dv (n, KV hd), dims..., float scale)`; block per
    /// (b, kv head, key j), dynamic shared memory `2 seq * 4` bytes. No atomics: a block owns its key row.
    pub const ATTENTION_BWD_DKV: &str = "lamdac_attention_bwd_dkv";
    /// `(src (n, src_w), dst (n, dst_w), int n, int src_w, int src_off, int dst_w, int dst_off, int w)`:
    /// `dst[:, dst_off..+w] = src[:, src_off..+w]` (split and concat); grid-stride.
    pub const COPY_COLS: &str = "lamdac_copy_cols";
    /// `(labels (n) i64, targets (n) i64, int n, int seq)`: `labels[i + 1]`, -100 at a sequence end; grid-stride.
    pub const SHIFT_LABELS: &str = "lamdac_shift_labels";
    /// `(dst, src, long long len)`: `dst += src`; grid-stride.
    pub const ADD_INTO: &str = "lamdac_add_into";
    /// `(x, float c, long long len)`: `x *= c`; grid-stride.
    pub const SCALE_INPLACE: &str = "lamdac_scale_inplace";
    /// `(x (rows, cols), long long rows, int cols, int frozen)`: zeroes columns `< frozen`; grid-stride.
    pub const ZERO_COLS: &str = "lamdac_zero_cols";
    /// `(x, long long len, double* partials)`: `partials[blockIdx.x] = sum of x^2` over the block's
    /// grid-stride share, in f64; the host adds the partials. Block of 256 threads.
    pub const SUM_SQ: &str = "lamdac_sum_sq";
    /// `(x f32, y bf16 bits (unsigned short), long long len)`: round to nearest even, NaN stays NaN; grid-stride.
    pub const F32_TO_BF16: &str = "lamdac_f32_to_bf16";
    /// `(x bf16 bits, y f32, long long len)`: exact widening; grid-stride.
    pub const BF16_TO_F32: &str = "lamdac_bf16_to_f32";

    /// Every support kernel.
    pub const ALL: &[&str] = &[
        EMBEDDING,
        EMBEDDING_BF16,
        SCALE,
        ADD,
        MUL,
        COL_SCALE,
        COL_SCALE_GRAD,
        ATTENTION_FWD,
        ATTENTION_BWD_DQ,
        ATTENTION_BWD_DKV,
        COPY_COLS,
        SHIFT_LABELS,
        ADD_INTO,
        SCALE_INPLACE,
        ZERO_COLS,
        SUM_SQ,
        F32_TO_BF16,
        BF16_TO_F32,
    ];
}

/// Hand-written CUDA C for the non-GEMM ops of an unfused Plan, after [`prelude`]
/// (which it includes). Kernel names and signatures: [`support`].
pub fn support_source() -> String {
    format!("{PRELUDE}\n{SUPPORT}")
}

const SUPPORT: &str = r#"// Hand-written kernels for the unfused ops (see `support` in cuda.rs for launch shapes).
// Formulas follow runtime/src/ops term by term, in the same order of operations.

extern "C" __global__ void lamdac_embedding(const long long* __restrict__ ids, const float* __restrict__ table,
                                            float* out, int n, int d, int vocab) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {
    const long long id = ids[i];
    const bool ok = id >= 0 && id < vocab;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
      out[(long long)i * d + c] = ok ? table[id * d + c] : LAMDAC_NAN;
  }
}

extern "C" __global__ void lamdac_embedding_bf16(const long long* __restrict__ ids,
                                                 const unsigned short* __restrict__ table, float* out, int n, int d,
                                                 int vocab) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {
    const long long id = ids[i];
    const bool ok = id >= 0 && id < vocab;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
      out[(long long)i * d + c] = ok ? __uint_as_float(((unsigned int)table[id * d + c]) << 16) : LAMDAC_NAN;
  }
}

#define LAMDAC_GRID_STRIDE(e, len) \
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < (len); \
       e += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void lamdac_scale(const float* __restrict__ x, float* y, float c, long long len) {
  LAMDAC_GRID_STRIDE(e, len) y[e] = c * x[e];
}

extern "C" __global__ void lamdac_add(const float* __restrict__ a, const float* __restrict__ b, float* y,
                                      long long len) {
  LAMDAC_GRID_STRIDE(e, len) y[e] = a[e] + b[e];
}

extern "C" __global__ void lamdac_mul(const float* __restrict__ a, const float* __restrict__ b, float* y,
                                      long long len) {
  LAMDAC_GRID_STRIDE(e, len) y[e] = a[e] * b[e];
}

extern "C" __global__ void lamdac_col_scale(const float* __restrict__ x, const float* __restrict__ v, float* y,
                                            long long len, int k) {
  LAMDAC_GRID_STRIDE(e, len) y[e] = x[e] * v[e % k];
}

// dv[c] = sum over rows (in order) of g * x: one thread per column, coalesced across the warp.
extern "C" __global__ void lamdac_col_scale_grad(const float* __restrict__ g, const float* __restrict__ x,
                                                 float* dv, int n, int k) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < k; c += gridDim.x * blockDim.x) {
    float acc = 0.0f;
    for (int r = 0; r < n; ++r) acc += g[(long long)r * k + c] * x[(long long)r * k + c];
    dv[c] = acc;
  }
}

// Causal grouped-query attention forward, one block per (b, h, query i): scores of keys 0..i in shared
// memory, softmax with a block max and sum, o_i = sum_j p_j v_j (threads over head columns),
// lse[b, h, i] = max + log(sum) saved for the backward.
extern "C" __global__ void lamdac_attention_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                                const float* __restrict__ v, float* o, float* lse, int batch,
                                                int seq, int heads, int kv_heads, int hd, float scale) {
  extern __shared__ float sm[];
  float* s = sm;          // (seq)
  float* red = sm + seq;  // (32)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int i = (int)(task % seq);
    const int h = (int)((task / seq) % heads);
    const int b = (int)(task / ((long long)seq * heads));
    const int g = h / group;
    const float* qi = q + (long long)(b * seq + i) * qw + (long long)h * hd;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
      const float* kj = k + (long long)(b * seq + j) * kvw + (long long)g * hd;
      float acc = 0.0f;
      for (int c = 0; c < hd; ++c) acc += qi[c] * kj[c];
      s[j] = scale * acc;
    }
    float m = LAMDAC_NEG_INF;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j]);
    m = lamdac_block_max(m, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
      const float e = expf(s[j] - m);
      s[j] = e;
      sum += e;
    }
    sum = lamdac_block_sum(sum, red);
    if (threadIdx.x == 0) lse[((long long)b * heads + h) * seq + i] = m + logf(sum);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j <= i; ++j) acc += (s[j] / sum) * v[(long long)(b * seq + j) * kvw + (long long)g * hd + c];
      o[(long long)(b * seq + i) * qw + (long long)h * hd + c] = acc;
    }
    __syncthreads();  // s is rewritten by the block's next task
  }
}

// Attention backward, queries: per (b, h, i) recompute p_j = exp(scale q_i.k_j - lse_i), dp_j = dO_i.v_j,
// D = sum_j p_j dp_j, ds_j = p_j (dp_j - D); dq_i = scale sum_j ds_j k_j. Saves D for the key pass.
extern "C" __global__ void lamdac_attention_bwd_dq(const float* __restrict__ g, const float* __restrict__ q,
                                                   const float* __restrict__ k, const float* __restrict__ v,
                                                   const float* __restrict__ lse, float* dq, float* delta,
                                                   int batch, int seq, int heads, int kv_heads, int hd,
                                                   float scale) {
  extern __shared__ float sm[];
  float* p = sm;              // (seq)
  float* ds = sm + seq;       // (seq)
  float* red = sm + 2 * seq;  // (32)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int i = (int)(task % seq);
    const int h = (int)((task / seq) % heads);
    const int b = (int)(task / ((long long)seq * heads));
    const int gh = h / group;
    const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
    const float* qi = q + row;
    const float* gi = g + row;
    const long long li = ((long long)b * heads + h) * seq + i;
    const float l = lse[li];
    float part = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
      const float* kj = k + (long long)(b * seq + j) * kvw + (long long)gh * hd;
      const float* vj = v + (long long)(b * seq + j) * kvw + (long long)gh * hd;
      float acc = 0.0f, dp = 0.0f;
      for (int c = 0; c < hd; ++c) acc += qi[c] * kj[c];
      for (int c = 0; c < hd; ++c) dp += gi[c] * vj[c];
      const float pj = expf(scale * acc - l);
      p[j] = pj;
      ds[j] = dp;
      part += pj * dp;
    }
    const float dsum = lamdac_block_sum(part, red);
    for (int j = threadIdx.x; j <= i; j += blockDim.x) ds[j] = p[j] * (ds[j] - dsum);
    __syncthreads();
    if (threadIdx.x == 0) delta[li] = dsum;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j <= i; ++j) acc += ds[j] * k[(long long)(b * seq + j) * kvw + (long long)gh * hd + c];
      dq[row + c] = scale * acc;
    }
    __syncthreads();
  }
}

// Attention backward, keys: per (b, kv head, key j), for every query head of the group and every query
// i >= j: dv_j += sum_i p_ij dO_i, dk_j += scale sum_i ds_ij q_i. A block owns its key row: no atomics,
// and each thread owns its head columns across the group's heads.
extern "C" __global__ void lamdac_attention_bwd_dkv(const float* __restrict__ g, const float* __restrict__ q,
                                                    const float* __restrict__ k, const float* __restrict__ v,
                                                    const float* __restrict__ lse,
                                                    const float* __restrict__ delta, float* dk, float* dv,
                                                    int batch, int seq, int heads, int kv_heads, int hd,
                                                    float scale) {
  extern __shared__ float sm[];
  float* p = sm;         // (seq)
  float* ds = sm + seq;  // (seq)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * kv_heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int j = (int)(task % seq);
    const int gh = (int)((task / seq) % kv_heads);
    const int b = (int)(task / ((long long)seq * kv_heads));
    const long long krow = (long long)(b * seq + j) * kvw + (long long)gh * hd;
    const float* kj = k + krow;
    const float* vj = v + krow;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      dk[krow + c] = 0.0f;
      dv[krow + c] = 0.0f;
    }
    for (int h = gh * group; h < (gh + 1) * group; ++h) {
      for (int i = j + threadIdx.x; i < seq; i += blockDim.x) {
        const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
        const long long li = ((long long)b * heads + h) * seq + i;
        float acc = 0.0f, dp = 0.0f;
        for (int c = 0; c < hd; ++c) acc += q[row + c] * kj[c];
        for (int c = 0; c < hd; ++c) dp += g[row + c] * vj[c];
        const float pij = expf(scale * acc - lse[li]);
        p[i] = pij;
        ds[i] = pij * (dp - delta[li]);
      }
      __syncthreads();
      for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float av = 0.0f, ak = 0.0f;
        for (int i = j; i < seq; ++i) {
          const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
          av += p[i] * g[row + c];
          ak += ds[i] * q[row + c];
        }
        dv[krow + c] += av;
        dk[krow + c] += scale * ak;
      }
      __syncthreads();
    }
  }
}

// dst[:, dst_off .. dst_off + w] = src[:, src_off .. src_off + w] (split and concat).
extern "C" __global__ void lamdac_copy_cols(const float* __restrict__ src, float* dst, int n, int src_w,
                                            int src_off, int dst_w, int dst_off, int w) {
  const long long len = (long long)n * w;
  LAMDAC_GRID_STRIDE(e, len) {
    const long long r = e / w;
    const int c = (int)(e % w);
    dst[r * dst_w + dst_off + c] = src[r * src_w + src_off + c];
  }
}

extern "C" __global__ void lamdac_shift_labels(const long long* __restrict__ labels, long long* targets, int n,
                                               int seq) {
  LAMDAC_GRID_STRIDE(e, (long long)n) targets[e] = (e % seq == seq - 1) ? -100LL : labels[e + 1];
}

extern "C" __global__ void lamdac_add_into(float* dst, const float* __restrict__ src, long long len) {
  LAMDAC_GRID_STRIDE(e, len) dst[e] += src[e];
}

extern "C" __global__ void lamdac_scale_inplace(float* x, float c, long long len) {
  LAMDAC_GRID_STRIDE(e, len) x[e] *= c;
}

extern "C" __global__ void lamdac_zero_cols(float* x, long long rows, int cols, int frozen) {
  const long long len = rows * frozen;
  LAMDAC_GRID_STRIDE(e, len) x[(e / frozen) * cols + e % frozen] = 0.0f;
}

extern "C" __global__ void lamdac_sum_sq(const float* __restrict__ x, long long len, double* partials) {
  __shared__ double red[32];
  double acc = 0.0;
  LAMDAC_GRID_STRIDE(e, len) {
    const double v = (double)x[e];
    acc += v * v;
  }
  acc = lamdac_block_sum_d(acc, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
extern "C" __global__ void lamdac_f32_to_bf16(const float* __restrict__ x, unsigned short* y, long long len) {
  LAMDAC_GRID_STRIDE(e, len) {
    const unsigned int u = __float_as_uint(x[e]);
    if ((u & 0x7fffffffu) > 0x7f800000u)
      y[e] = (unsigned short)((u >> 16) | 0x40u);
    else
      y[e] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

extern "C" __global__ void lamdac_bf16_to_f32(const unsigned short* __restrict__ x, float* y, long long len) {
  LAMDAC_GRID_STRIDE(e, len) y[e] = __uint_as_float(((unsigned int)x[e]) << 16);
}
"#;

/// One NVRTC translation unit: the helpers, the support kernels, and every
/// kernel of `kernels` once (by name; the first of equal names is kept, and
/// two different kernels under one name are an error).
pub fn module_source(kernels: &[Kernel]) -> Result<String, CodegenError> {
    let mut out = support_source();
    let mut seen: BTreeMap<String, &Kernel> = BTreeMap::new();
    let mut idents: BTreeMap<String, String> = support::ALL.iter().map(|s| (s.to_string(), s.to_string())).collect();
    for k in kernels {
        if let Some(prev) = seen.get(&k.name) {
            if *prev != k {
                return Err(CodegenError::NameClash {
                    a: k.name.clone(),
                    b: prev.name.clone(),
                    ident: symbol(&k.name),
                });
            }
            continue;
        }
        let ident = symbol(&k.name);
        if let Some(other) = idents.get(&ident) {
            return Err(CodegenError::NameClash {
                a: k.name.clone(),
                b: other.clone(),
                ident,
            });
        }
        idents.insert(ident, k.name.clone());
        seen.insert(k.name.clone(), k);
        out.push('\n');
        out.push_str(&cuda_source(k)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::lib;

    #[test]
    fn illegal_kernels_have_no_source() {
        // a store that reads its destination at another column: kernel::verify refuses it
        let mut k = lib::swiglu(13);
        k.body.push(Stmt::Store {
            arg: 2,
            cols: 13,
            value: Expr::at(2, Col::RopePartner { head_dim: 13 }),
            accumulate: false,
        });
        let err = cuda_source(&k);
        assert!(
            matches!(&err, Err(CodegenError::Invalid(e)) if e.stmt == Some(1) && e.msg.contains("another column")),
            "{err:?}"
        );
    }

    #[test]
    fn constants_round_trip_through_c_literals() {
        assert_eq!(f32_lit(1.0), "1.0f");
        assert_eq!(f32_lit(1e-5), "1e-5f");
        assert_eq!(f32_lit(-0.5), "(-0.5f)");
        assert_eq!(f32_lit(f64::INFINITY), "__int_as_float(0x7f800000)");
        for x in [1.0 / 17.0, 0.1, 3.0e38, 1e-40] {
            let s = f32_lit(x);
            let parsed: f32 = s.trim_end_matches('f').parse().unwrap_or(f32::NAN);
            assert_eq!(parsed.to_bits(), (x as f32).to_bits(), "{s}");
        }
    }

    #[test]
    fn every_library_kernel_has_source_and_barriers_where_needed() {
        for k in lib::examples() {
            let src = cuda_source(&k).unwrap_or_else(|e| panic!("{e}"));
            assert!(src.contains(&format!("void {}(", symbol(&k.name))), "{src}");
        }
        // u is written then read across columns by the second row dot: one barrier.
        let src = cuda_source(&lib::lamda_epilogue(9, 3, 0.5)).unwrap_or_default();
        assert_eq!(src.matches("__syncthreads").count(), 1, "{src}");
        // AdamW touches only its own columns: none.
        let src = cuda_source(&lib::adamw(5)).unwrap_or_default();
        assert_eq!(src.matches("__syncthreads").count(), 0, "{src}");
    }

    #[test]
    fn module_deduplicates_and_rejects_clashes() {
        let ks = vec![lib::swiglu(13), lib::swiglu(13), lib::rmsnorm(17, 1e-5)];
        let src = module_source(&ks).unwrap_or_default();
        assert_eq!(src.matches("void swiglu_f13(").count(), 1);
        let mut other = lib::swiglu(13);
        other.body.clear();
        let err = module_source(&[lib::swiglu(13), other]);
        assert!(matches!(err, Err(CodegenError::NameClash { .. })), "{err:?}");
    }
}
