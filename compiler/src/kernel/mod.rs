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
//! [`verify_kernel`] checks that a kernel is well formed; `lib` holds the
//! kernels lamdac fuses (RMSNorm, RoPE, SwiGLU, residual adds, the adapter
//! epilogue, cross-entropy with its softmax, AdamW with the freeze mask, and
//! their backward where they have one).

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

/// Checks that a kernel is well formed: arguments exist and have the right
/// type for each use, variables are defined before use, column-dependent
/// expressions appear only inside column loops, stores write writable rows.
pub fn verify_kernel(k: &Kernel) -> Result<(), String> {
    let mut defined = vec![false; k.vars()];
    let fail = |msg: String| Err(format!("kernel {}: {msg}", k.name));
    for (si, s) in k.body.iter().enumerate() {
        match s {
            Stmt::Let { var, value } => {
                check_expr(k, value, &defined, false).or_else(|m| fail(format!("statement {si}: {m}")))?;
                defined[*var as usize] = true;
            }
            Stmt::Reduce { var, cols, value, .. } => {
                if *cols == 0 {
                    return fail(format!("statement {si}: an empty reduction"));
                }
                check_expr(k, value, &defined, true).or_else(|m| fail(format!("statement {si}: {m}")))?;
                defined[*var as usize] = true;
            }
            Stmt::Store { arg, cols, value, .. } => {
                match k.args.get(*arg) {
                    Some(Arg {
                        ty: ArgTy::Rows { cols: c },
                        access: Access::Write | Access::ReadWrite,
                        ..
                    }) if c == cols => {}
                    other => return fail(format!("statement {si}: store of {cols} columns into {other:?}")),
                }
                check_expr(k, value, &defined, true).or_else(|m| fail(format!("statement {si}: {m}")))?;
            }
            Stmt::StoreRow { arg, value } => {
                match k.args.get(*arg) {
                    Some(Arg {
                        ty: ArgTy::PerRow,
                        access: Access::Write | Access::ReadWrite,
                        ..
                    }) => {}
                    other => return fail(format!("statement {si}: row store into {other:?}")),
                }
                check_expr(k, value, &defined, false).or_else(|m| fail(format!("statement {si}: {m}")))?;
            }
        }
    }
    Ok(())
}

fn check_expr(k: &Kernel, e: &Expr, defined: &[bool], in_loop: bool) -> Result<(), String> {
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
            let needs_col = matches!(a.ty, ArgTy::Rows { .. } | ArgTy::Vector { .. } | ArgTy::Periodic { .. });
            match col {
                Col::J | Col::RopePartner { .. } | Col::HalfIndex { .. } if needs_col && !in_loop => {
                    Err(format!("`{}` is read by column outside a column loop", a.name))
                }
                Col::Var(v) => var_ok(v),
                _ => Ok(()),
            }
        }
        Expr::RowDot { a, b, len, .. } => {
            if !in_loop {
                return Err("row_dot outside a column loop".into());
            }
            match k.args.get(*a) {
                Some(Arg {
                    ty: ArgTy::Rows { cols },
                    ..
                }) if cols == len => {}
                other => return Err(format!("row_dot over {len} of {other:?}")),
            }
            // b is a matrix shared by all rows: (cols of the loop, len), or (len, cols) with bt.
            match k.args.get(*b) {
                Some(Arg {
                    ty: ArgTy::Vector { .. },
                    ..
                }) => Ok(()),
                other => Err(format!("row_dot needs a shared matrix as b, found {other:?}")),
            }
        }
        Expr::Unary(_, a) => check_expr(k, a, defined, in_loop),
        Expr::Binary(_, a, b) => {
            check_expr(k, a, defined, in_loop)?;
            check_expr(k, b, defined, in_loop)
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
                Cond::FirstHalf { .. } => {}
            }
            check_expr(k, a, defined, in_loop)?;
            check_expr(k, b, defined, in_loop)
        }
    }
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
