//! The kernel IR: what the fusion pass produces and the code generators (Cranelift, CUDA C) consume.
//!
//! A [`Kernel`] is a straight-line program run once per row `i` of a launch
//! (`rows` is a launch parameter); rows are independent, so a backend may run
//! them in any order or in parallel (a CPU thread per block of rows, a CUDA
//! block per row). Within a row, statements run in order:
//!
//! - `Let { var, value }`: a row scalar `var = value` (value must not depend on j).
//! - `Reduce { var, op, cols, value }`: `var = op over j in 0..cols of value`
//!   (sum or max); the order of accumulation is unspecified (float rounding).
//! - `Store { arg, cols, value, accumulate }`: for every j in 0..cols,
//!   `arg[i, j] = value` (or `+=`). Every store of a row completes before the
//!   next statement: a later statement that loads `arg[i, j]` sees the new value.
//! - `StoreRow { arg, value }`: `arg[i] = value` for a per-row argument.
//!
//! Expressions are f32. `Load { arg, col }` reads, by the argument's type:
//! `Rows` -> `arg[i, col]`, `Vector` -> `arg[col]`, `PerRow` -> `arg[i]`,
//! `PerRowI64` -> `arg[i]` converted to f32, `Scalar` -> the scalar,
//! `Periodic` -> `arg[i % period, col]`. Column forms ([`Col`]): `J` (the loop
//! column), `RopePartner` (the other half of the same RoPE head),
//! `HalfIndex` (`j % (head_dim / 2)`, the frequency index), `Var(v)` (the
//! column held by row variable v: a gather). `RowDot { a, b, len, bt }` inside
//! a column loop is `sum_{c < len} a[i, c] * b[j, c]` (`b[c, j]` with `bt`): a
//! small matrix product, the adapter epilogue. `Select(cond, x, y)` is `cond ? x : y`.
//!
//! Scalars are launch parameters the runtime supplies by name (`lr`,
//! `grad_scale`, ...). Nothing here allocates: every output is an argument.
//! [`verify`] is the one legality check of a kernel (the IR verifier and both
//! code generators call it) and [`symbol`] the one name mangler for its
//! symbol in generated code; `lib` holds the
//! kernels lamdac fuses (RMSNorm, LayerNorm, RoPE, SwiGLU, GELU, tanh, bias
//! and residual adds, the adapter epilogue, cross-entropy with its softmax,
//! AdamW with the freeze mask, and their backward where they have one).

pub mod lib;

use std::fmt;

use crate::ir::F64;

/// A row-scalar variable of a kernel.
pub type Var = u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgTy {
    /// f32 (rows, cols), row-major.
    Rows { cols: usize },
    /// f32 (len), shared by every row.
    Vector { len: usize },
    /// f32 (rows): one value per row.
    PerRow,
    /// i64 (rows): one value per row (read as f32).
    PerRowI64,
    /// An f32 launch parameter.
    Scalar,
    /// f32 (period, cols): row i reads row i % period.
    Periodic { period: usize, cols: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A kernel argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arg {
    pub name: String,
    pub ty: ArgTy,
    pub access: Access,
}

/// Which column a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    /// The current column j of the enclosing loop (0 for per-row and scalar arguments).
    J,
    /// `(j / hd) * hd + (j % hd + hd / 2) % hd`: the other half of j's RoPE head.
    RopePartner { head_dim: usize },
    /// `j % (hd / 2)`: the RoPE frequency index of column j.
    HalfIndex { head_dim: usize },
    /// The column held by a row variable (rounded toward zero).
    Var(Var),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    /// `j % hd < hd / 2`.
    FirstHalf { head_dim: usize },
    /// `j < floor(scalar arg)`.
    ColBelow { arg: usize },
    /// `j == var`.
    ColIs(Var),
    /// `var >= 0`.
    NonNegative(Var),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    /// The error function, `erf(x) = 2 / sqrt(pi) * integral_0^x exp(-t^2) dt`.
    Erf,
    /// The hyperbolic tangent.
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Max,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    Const(F64),
    Var(Var),
    Load {
        arg: usize,
        col: Col,
    },
    /// `sum_{c < len} a[i, c] * b[j, c]`, or with `bt` `sum_{c < len} a[i, c] * b[c, j]`.
    /// `a` is a `Rows { cols: len }` argument; `b` a `Vector` holding a
    /// row-major matrix shared by every row, (C, len) or with `bt` (len, C),
    /// where C is the column count of the enclosing loop.
    RowDot {
        a: usize,
        b: usize,
        len: usize,
        bt: bool,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Select(Cond, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    Let {
        var: Var,
        value: Expr,
    },
    Reduce {
        var: Var,
        op: Reduce,
        cols: usize,
        value: Expr,
    },
    Store {
        arg: usize,
        cols: usize,
        value: Expr,
        accumulate: bool,
    },
    StoreRow {
        arg: usize,
        value: Expr,
    },
}

/// A fused kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// Unique and stable: the same kernel always has the same name.
    pub name: String,
    pub args: Vec<Arg>,
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// Indices of the arguments the kernel reads from the graph (everything but `Write`).
    pub fn inputs(&self) -> Vec<usize> {
        (0..self.args.len())
            .filter(|&a| self.args[a].access != Access::Write && self.args[a].ty != ArgTy::Scalar)
            .collect()
    }
    /// Indices of the arguments it produces (`Write`).
    pub fn outputs(&self) -> Vec<usize> {
        (0..self.args.len())
            .filter(|&a| self.args[a].access == Access::Write)
            .collect()
    }
    /// Whether output `arg` is written whole on every row before anything
    /// adds to it or reads it back (its first store is a plain `Store` over
    /// all its columns, or a `StoreRow` for a per-row output), so its buffer
    /// need not start zeroed. Vector and periodic outputs (sums over rows)
    /// never are.
    pub fn overwrites(&self, arg: usize) -> bool {
        let Some(a) = self.args.get(arg) else { return false };
        if a.access != Access::Write {
            return false;
        }
        for st in &self.body {
            match (st, a.ty) {
                (
                    Stmt::Store {
                        arg: x,
                        cols,
                        accumulate,
                        value,
                    },
                    ArgTy::Rows { cols: width },
                ) if *x == arg => {
                    return !*accumulate && *cols == width && !value.reads(arg);
                }
                (Stmt::StoreRow { arg: x, value }, ArgTy::PerRow) if *x == arg => return !value.reads(arg),
                (Stmt::Store { arg: x, .. } | Stmt::StoreRow { arg: x, .. }, _) if *x == arg => return false,
                (Stmt::Let { value, .. } | Stmt::Reduce { value, .. }, _) if value.reads(arg) => return false,
                _ => {}
            }
        }
        false
    }
    /// Indices of its scalar launch parameters.
    pub fn scalars(&self) -> Vec<usize> {
        (0..self.args.len())
            .filter(|&a| self.args[a].ty == ArgTy::Scalar)
            .collect()
    }
    /// Row variables used (one past the largest).
    pub fn vars(&self) -> usize {
        self.body
            .iter()
            .filter_map(|s| match s {
                Stmt::Let { var, .. } | Stmt::Reduce { var, .. } => Some(*var as usize + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

// ------------------------------------------------------------------ building expressions

impl Expr {
    /// Whether the expression reads argument `arg` (a load or a `RowDot` operand).
    pub fn reads(&self, arg: usize) -> bool {
        match self {
            Expr::Const(_) | Expr::Var(_) => false,
            Expr::Load { arg: a, .. } => *a == arg,
            Expr::RowDot { a, b, .. } => *a == arg || *b == arg,
            Expr::Unary(_, x) => x.reads(arg),
            Expr::Binary(_, x, y) | Expr::Select(_, x, y) => x.reads(arg) || y.reads(arg),
        }
    }
    pub fn c(x: f64) -> Expr {
        Expr::Const(F64(x))
    }
    pub fn load(arg: usize) -> Expr {
        Expr::Load { arg, col: Col::J }
    }
    pub fn at(arg: usize, col: Col) -> Expr {
        Expr::Load { arg, col }
    }
    pub fn var(v: Var) -> Expr {
        Expr::Var(v)
    }
    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    pub fn un(op: UnOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }
    pub fn select(c: Cond, a: Expr, b: Expr) -> Expr {
        Expr::Select(c, Box::new(a), Box::new(b))
    }
    pub fn max(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Max, self, b)
    }
    pub fn exp(self) -> Expr {
        Expr::un(UnOp::Exp, self)
    }
    pub fn log(self) -> Expr {
        Expr::un(UnOp::Log, self)
    }
    pub fn sqrt(self) -> Expr {
        Expr::un(UnOp::Sqrt, self)
    }
    pub fn rsqrt(self) -> Expr {
        Expr::un(UnOp::Rsqrt, self)
    }
    pub fn recip(self) -> Expr {
        Expr::un(UnOp::Recip, self)
    }
    pub fn erf(self) -> Expr {
        Expr::un(UnOp::Erf, self)
    }
    pub fn tanh(self) -> Expr {
        Expr::un(UnOp::Tanh, self)
    }
}

impl std::ops::Add for Expr {
    type Output = Expr;
    fn add(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Add, self, b)
    }
}
impl std::ops::Sub for Expr {
    type Output = Expr;
    fn sub(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Sub, self, b)
    }
}
impl std::ops::Mul for Expr {
    type Output = Expr;
    fn mul(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Mul, self, b)
    }
}
impl std::ops::Div for Expr {
    type Output = Expr;
    fn div(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Div, self, b)
    }
}
impl std::ops::Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        Expr::un(UnOp::Neg, self)
    }
}

// ------------------------------------------------------------------ verification

/// Why a kernel is not legal: the kernel's name, the statement (none for an
/// argument), what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel {kernel}: {}{msg}", statement(.stmt))]
pub struct KernelError {
    pub kernel: String,
    pub stmt: Option<usize>,
    pub msg: String,
}

fn statement(stmt: &Option<usize>) -> String {
    stmt.map(|s| format!("statement {s}: ")).unwrap_or_default()
}

/// The one legality check of a kernel, which the IR verifier and both code
/// generators (Cranelift, CUDA C) call. A legal kernel is well formed and
/// safe to lower without run-time bounds checks on column reads:
/// - arguments exist and have the right type for each use; stores write
///   writable `Rows` arguments of their loop's width, row stores writable
///   per-row ones; `col_below` reads a scalar; `row_dot` reads a `Rows`
///   argument of its length and a shared `Vector` matrix;
/// - variables are defined before use; column-dependent expressions appear
///   only inside column loops; reductions are not empty;
/// - an i64 argument is read-only; no `head_dim` is 0 (a RoPE frequency
///   index needs at least 2) and no period is 0 (the interpreter divides by
///   them);
/// - no column read goes past its argument's columns (a `Vector`'s length),
///   and a `row_dot` reads at most the values its shared matrix has;
/// - a store does not read its destination at another column (code
///   generators store as they go, so that read would race the writes);
/// - a column loop has at most `i32::MAX` columns.
pub fn verify(k: &Kernel) -> Result<(), KernelError> {
    let fail = |stmt: Option<usize>, msg: String| {
        Err(KernelError {
            kernel: k.name.clone(),
            stmt,
            msg,
        })
    };
    for (a, arg) in k.args.iter().enumerate() {
        if arg.ty == ArgTy::PerRowI64 && arg.access != Access::Read {
            return fail(None, format!("a{a} `{}`: an i64 argument must be read-only", arg.name));
        }
        if let ArgTy::Periodic { period: 0, .. } = arg.ty {
            return fail(None, format!("a{a} `{}` has period 0", arg.name));
        }
    }
    let mut defined = vec![false; k.vars()];
    for (si, s) in k.body.iter().enumerate() {
        let at = |m: String| fail(Some(si), m);
        match s {
            Stmt::Let { var, value } => {
                check_expr(k, value, &defined, None).or_else(at)?;
                defined[*var as usize] = true;
            }
            Stmt::Reduce { var, cols, value, .. } => {
                if *cols == 0 {
                    return at("an empty reduction".into());
                }
                check_expr(k, value, &defined, Some(*cols)).or_else(at)?;
                defined[*var as usize] = true;
            }
            Stmt::Store { arg, cols, value, .. } => {
                match k.args.get(*arg) {
                    Some(Arg {
                        ty: ArgTy::Rows { cols: c },
                        access: Access::Write | Access::ReadWrite,
                        ..
                    }) if c == cols => {}
                    other => return at(format!("store of {cols} columns into {other:?}")),
                }
                check_expr(k, value, &defined, Some(*cols)).or_else(at)?;
                if reads_other_column(value, *arg) {
                    return at(format!(
                        "the store into a{arg} reads a{arg} at another column; split it into two statements"
                    ));
                }
            }
            Stmt::StoreRow { arg, value } => {
                match k.args.get(*arg) {
                    Some(Arg {
                        ty: ArgTy::PerRow,
                        access: Access::Write | Access::ReadWrite,
                        ..
                    }) => {}
                    other => return at(format!("row store into {other:?}")),
                }
                check_expr(k, value, &defined, None).or_else(at)?;
            }
        }
        if let Stmt::Reduce { cols, .. } | Stmt::Store { cols, .. } = s
            && i32::try_from(*cols).is_err()
        {
            return at(format!("{cols} columns is too many"));
        }
    }
    Ok(())
}

impl ArgTy {
    /// The columns a load reads by column: `Rows` and `Periodic` their
    /// columns, `Vector` its length; none for per-row and scalar arguments.
    pub fn columns(self) -> Option<usize> {
        match self {
            ArgTy::Rows { cols } | ArgTy::Periodic { cols, .. } => Some(cols),
            ArgTy::Vector { len } => Some(len),
            ArgTy::PerRow | ArgTy::PerRowI64 | ArgTy::Scalar => None,
        }
    }

    /// Elements a buffer of this type holds in a launch over `rows` rows;
    /// none for a scalar.
    pub fn len(self, rows: usize) -> Option<usize> {
        match self {
            ArgTy::Rows { cols } => Some(rows * cols),
            ArgTy::Vector { len } => Some(len),
            ArgTy::PerRow | ArgTy::PerRowI64 => Some(rows),
            ArgTy::Periodic { period, cols } => Some(period * cols),
            ArgTy::Scalar => None,
        }
    }
}

/// The largest column `col` reads for `j < loop_cols`, if any.
fn max_column(col: Col, loop_cols: usize) -> Option<usize> {
    let last = loop_cols.checked_sub(1)?;
    match col {
        Col::J => Some(last),
        Col::HalfIndex { head_dim } => Some(last.min((head_dim / 2).saturating_sub(1))),
        // partner(j) = (j / hd) hd + (j % hd + hd / 2) % hd; every block before the
        // last reaches its own end, below the last block's start, so the largest is
        // in the last block, whose offsets run 0..=m: without a wrap m + hd/2, else hd - 1.
        Col::RopePartner { head_dim } if head_dim > 0 => {
            let (block, m) = (last / head_dim, last % head_dim);
            Some(block * head_dim + (m + head_dim / 2).min(head_dim - 1))
        }
        Col::RopePartner { .. } | Col::Var(_) => None,
    }
}

/// Whether `e` reads argument `arg` anywhere but at the loop column.
fn reads_other_column(e: &Expr, arg: usize) -> bool {
    match e {
        Expr::Const(_) | Expr::Var(_) => false,
        Expr::Load { arg: a, col } => *a == arg && *col != Col::J,
        Expr::RowDot { a, b, .. } => *a == arg || *b == arg,
        Expr::Unary(_, x) => reads_other_column(x, arg),
        Expr::Binary(_, x, y) | Expr::Select(_, x, y) => reads_other_column(x, arg) || reads_other_column(y, arg),
    }
}

/// Checks an expression; `loop_cols` is the width of the enclosing column loop.
fn check_expr(k: &Kernel, e: &Expr, defined: &[bool], loop_cols: Option<usize>) -> Result<(), String> {
    let in_loop = loop_cols.is_some();
    let var_ok = |v: &Var| {
        if defined.get(*v as usize).copied().unwrap_or(false) {
            Ok(())
        } else {
            Err(format!("v{v} used before it is defined"))
        }
    };
    match e {
        Expr::Const(_) => Ok(()),
        Expr::Var(v) => var_ok(v),
        Expr::Load { arg, col } => {
            let a = k.args.get(*arg).ok_or_else(|| format!("no argument {arg}"))?;
            match *col {
                Col::RopePartner { head_dim: 0 } => return Err("a RoPE partner with head_dim 0".into()),
                Col::HalfIndex { head_dim } if head_dim < 2 => {
                    return Err(format!("a RoPE frequency index with head_dim {head_dim}"));
                }
                _ => {}
            }
            let needs_col = a.ty.columns().is_some();
            match col {
                Col::J | Col::RopePartner { .. } | Col::HalfIndex { .. } if needs_col && !in_loop => {
                    return Err(format!("`{}` is read by column outside a column loop", a.name));
                }
                Col::Var(v) => var_ok(v)?,
                _ => {}
            }
            if let (Some(cols), Some(n)) = (a.ty.columns(), loop_cols)
                && let Some(max) = max_column(*col, n)
                && max >= cols
            {
                return Err(format!(
                    "a{arg} `{}` is read at column {max} but has {cols} columns",
                    a.name
                ));
            }
            Ok(())
        }
        Expr::RowDot { a, b, len, .. } => {
            let n = loop_cols.ok_or("row_dot outside a column loop")?;
            match k.args.get(*a) {
                Some(Arg {
                    ty: ArgTy::Rows { cols },
                    ..
                }) if cols == len => {}
                other => return Err(format!("row_dot over {len} of {other:?}")),
            }
            // b is a matrix shared by all rows: (cols of the loop, len), or (len, cols) with bt.
            let have = match k.args.get(*b) {
                Some(Arg {
                    ty: ArgTy::Vector { len },
                    ..
                }) => *len,
                other => return Err(format!("row_dot needs a shared matrix as b, found {other:?}")),
            };
            match n.checked_mul(*len) {
                Some(need) if need <= have => Ok(()),
                _ => Err(format!("row_dot reads {n} x {len} values of a{b}, which has {have}")),
            }
        }
        Expr::Unary(_, a) => check_expr(k, a, defined, loop_cols),
        Expr::Binary(_, a, b) => {
            check_expr(k, a, defined, loop_cols)?;
            check_expr(k, b, defined, loop_cols)
        }
        Expr::Select(c, a, b) => {
            match c {
                Cond::FirstHalf { .. } | Cond::ColBelow { .. } | Cond::ColIs(_) if !in_loop => {
                    return Err("a column condition outside a column loop".into());
                }
                Cond::ColIs(v) | Cond::NonNegative(v) => var_ok(v)?,
                Cond::ColBelow { arg } => {
                    if k.args.get(*arg).map(|a| a.ty) != Some(ArgTy::Scalar) {
                        return Err(format!("col_below reads argument {arg}, not a scalar"));
                    }
                }
                Cond::FirstHalf { head_dim: 0 } => return Err("a first-half condition with head_dim 0".into()),
                Cond::FirstHalf { .. } => {}
            }
            check_expr(k, a, defined, loop_cols)?;
            check_expr(k, b, defined, loop_cols)
        }
    }
}

// ------------------------------------------------------------------ symbols

/// The one name mangler: the symbol of kernel `name` in generated code (the
/// CUDA C function, the Cranelift function; the JIT prefixes a counter).
/// Letters, digits and `_` are kept, `-` becomes `m`, `.` becomes `p`, `+`
/// becomes `P`, anything else `_`; a leading digit gets a `_` before it.
/// `rmsnorm_d17_eps1e-5` -> `rmsnorm_d17_eps1em5`.
pub fn symbol(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
            '-' => 'm',
            '.' => 'p',
            '+' => 'P',
            _ => '_',
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

// ------------------------------------------------------------------ text form

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(c) => write!(f, "{:?}", c.0),
            Expr::Var(v) => write!(f, "v{v}"),
            Expr::Load { arg, col } => match col {
                Col::J => write!(f, "a{arg}[j]"),
                Col::RopePartner { head_dim } => write!(f, "a{arg}[partner{head_dim}(j)]"),
                Col::HalfIndex { head_dim } => write!(f, "a{arg}[j % {}]", head_dim / 2),
                Col::Var(v) => write!(f, "a{arg}[v{v}]"),
            },
            Expr::RowDot { a, b, len, bt: false } => write!(f, "dot{len}(a{a}[i, :], a{b}[j, :])"),
            Expr::RowDot { a, b, len, bt: true } => write!(f, "dot{len}(a{a}[i, :], a{b}[:, j])"),
            Expr::Unary(op, a) => write!(f, "{}({a})", format!("{op:?}").to_lowercase()),
            Expr::Binary(BinOp::Max, a, b) => write!(f, "max({a}, {b})"),
            Expr::Binary(op, a, b) => {
                let s = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Max => ",",
                };
                write!(f, "({a} {s} {b})")
            }
            Expr::Select(c, a, b) => {
                let c = match c {
                    Cond::FirstHalf { head_dim } => format!("j % {head_dim} < {}", head_dim / 2),
                    Cond::ColBelow { arg } => format!("j < a{arg}"),
                    Cond::ColIs(v) => format!("j == v{v}"),
                    Cond::NonNegative(v) => format!("v{v} >= 0"),
                };
                write!(f, "({c} ? {a} : {b})")
            }
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} {{", self.name)?;
        for (i, a) in self.args.iter().enumerate() {
            writeln!(f, "  a{i} {}: {:?} {:?}", a.name, a.access, a.ty)?;
        }
        for s in &self.body {
            match s {
                Stmt::Let { var, value } => writeln!(f, "  v{var} = {value}")?,
                Stmt::Reduce { var, op, cols, value } => writeln!(
                    f,
                    "  v{var} = {}_{{j<{cols}}} {value}",
                    format!("{op:?}").to_lowercase()
                )?,
                Stmt::Store {
                    arg,
                    cols,
                    value,
                    accumulate,
                } => writeln!(
                    f,
                    "  for j<{cols}: a{arg}[j] {}= {value}",
                    if *accumulate { "+" } else { "" }
                )?,
                Stmt::StoreRow { arg, value } => writeln!(f, "  a{arg} = {value}")?,
            }
        }
        writeln!(f, "}}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! [`verify`] on deliberately illegal kernels (each the smallest that
    //! breaks one rule), and [`symbol`].
    use super::*;

    fn arg(name: &str, ty: ArgTy, access: Access) -> Arg {
        Arg {
            name: name.into(),
            ty,
            access,
        }
    }

    fn rows(name: &str, cols: usize, access: Access) -> Arg {
        arg(name, ArgTy::Rows { cols }, access)
    }

    /// `a0[i, j] = value` for j < cols.
    fn store(cols: usize, args: Vec<Arg>, value: Expr) -> Kernel {
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

    fn rejected(k: &Kernel, says: &str) {
        let e = verify(k).expect_err("an illegal kernel verifies");
        assert_eq!(e.kernel, k.name);
        assert!(e.to_string().contains(says), "`{e}` does not say `{says}`");
    }

    #[test]
    fn a_legal_kernel_verifies() {
        let k = store(
            8,
            vec![rows("y", 8, Access::Write), rows("x", 8, Access::Read)],
            Expr::load(1) * Expr::c(2.0),
        );
        verify(&k).unwrap();
    }

    #[test]
    fn well_formedness() {
        // a store into a read-only argument
        rejected(
            &store(8, vec![rows("y", 8, Access::Read)], Expr::c(1.0)),
            "store of 8 columns",
        );
        // a store of another width than its argument's
        rejected(
            &store(4, vec![rows("y", 8, Access::Write)], Expr::c(1.0)),
            "store of 4 columns",
        );
        // a variable read before it is defined
        rejected(
            &store(8, vec![rows("y", 8, Access::Write)], Expr::var(0)),
            "v0 used before",
        );
        // a load by column outside a column loop
        let k = Kernel {
            name: "t".into(),
            args: vec![arg("y", ArgTy::PerRow, Access::Write), rows("x", 8, Access::Read)],
            body: vec![Stmt::StoreRow {
                arg: 0,
                value: Expr::load(1),
            }],
        };
        rejected(&k, "outside a column loop");
        // an empty reduction
        let k = Kernel {
            name: "t".into(),
            args: vec![rows("x", 8, Access::Read)],
            body: vec![Stmt::Reduce {
                var: 0,
                op: Reduce::Sum,
                cols: 0,
                value: Expr::load(0),
            }],
        };
        rejected(&k, "an empty reduction");
    }

    #[test]
    fn legality_for_code_generators() {
        // a store that reads its destination at another column
        let k = store(
            8,
            vec![rows("y", 8, Access::ReadWrite)],
            Expr::at(0, Col::RopePartner { head_dim: 8 }),
        );
        rejected(&k, "reads a0 at another column");
        // a read past the last column of a vector
        let k = store(
            8,
            vec![
                rows("y", 8, Access::Write),
                arg("w", ArgTy::Vector { len: 5 }, Access::Read),
            ],
            Expr::load(1),
        );
        rejected(&k, "read at column 7 but has 5 columns");
        // head_dim 0, which the interpreter divides by
        let k = store(
            8,
            vec![rows("y", 8, Access::Write), rows("x", 8, Access::Read)],
            Expr::at(1, Col::RopePartner { head_dim: 0 }),
        );
        rejected(&k, "head_dim 0");
        // a period of 0
        let k = store(
            8,
            vec![
                rows("y", 8, Access::Write),
                arg("t", ArgTy::Periodic { period: 0, cols: 8 }, Access::Read),
            ],
            Expr::load(1),
        );
        rejected(&k, "period 0");
        // a writable i64 argument
        let k = store(
            8,
            vec![rows("y", 8, Access::Write), arg("ids", ArgTy::PerRowI64, Access::Write)],
            Expr::c(0.0),
        );
        rejected(&k, "i64 argument must be read-only");
        // a row_dot reading more of its shared matrix than it has
        let k = store(
            8,
            vec![
                rows("y", 8, Access::Write),
                rows("z", 4, Access::Read),
                arg("s", ArgTy::Vector { len: 31 }, Access::Read),
            ],
            Expr::RowDot {
                a: 1,
                b: 2,
                len: 4,
                bt: false,
            },
        );
        rejected(&k, "row_dot reads 8 x 4 values of a2, which has 31");
        // too many columns for a code generator's loop counter
        let wide = i32::MAX as usize + 1;
        rejected(
            &store(wide, vec![rows("y", wide, Access::Write)], Expr::c(0.0)),
            "too many",
        );
    }

    #[test]
    fn every_library_kernel_is_legal() {
        for k in lib::examples() {
            verify(&k).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn the_largest_rope_partner_column() {
        for head_dim in 1..12 {
            for cols in 1..40 {
                let brute = (0..cols)
                    .map(|j| (j / head_dim) * head_dim + (j % head_dim + head_dim / 2) % head_dim)
                    .max();
                assert_eq!(
                    max_column(Col::RopePartner { head_dim }, cols),
                    brute,
                    "head_dim {head_dim}, {cols} columns"
                );
            }
        }
    }

    #[test]
    fn symbols_are_c_identifiers() {
        assert_eq!(symbol("rmsnorm_d17_eps1e-5"), "rmsnorm_d17_eps1em5");
        assert_eq!(symbol("lamda_epilogue_o9_r3_a5e-1"), "lamda_epilogue_o9_r3_a5em1");
        assert_eq!(symbol("9x"), "_9x");
        assert_eq!(symbol("a.b+c d"), "apbPc_d");
        assert_eq!(symbol(""), "_");
    }
}
