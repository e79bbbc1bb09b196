//! Constant evaluation of expressions over named parameters (model and adapter parameters, shapes).

use std::collections::BTreeMap;
use std::fmt;

use crate::syntax::ast::{BinOp, Expr, ExprKind, Span, Value, ValueKind};

/// A compile-time value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Const {
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Const::Int(i) => Some(i as f64),
            Const::Float(x) => Some(x),
            Const::Bool(_) => None,
        }
    }
    pub fn as_int(self) -> Option<i64> {
        match self {
            Const::Int(i) => Some(i),
            _ => None,
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Const::Int(_) => "an integer",
            Const::Float(_) => "a number with a fraction",
            Const::Bool(_) => "a boolean",
        }
    }
    /// Converts a literal value of the surface syntax, if it is a constant.
    pub fn from_value(v: &Value) -> Option<Const> {
        match v.kind {
            ValueKind::Int(i) => Some(Const::Int(i)),
            ValueKind::Float(x) => Some(Const::Float(x)),
            ValueKind::Bool(b) => Some(Const::Bool(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::Int(i) => write!(f, "{i}"),
            Const::Float(x) => write!(f, "{x:?}"),
            Const::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Why an expression has no constant value.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    UnknownName {
        name: String,
        span: Span,
    },
    NotConstant {
        span: Span,
    },
    Type {
        span: Span,
        message: String,
    },
    /// Integer division with a remainder, or by zero.
    Division {
        span: Span,
        message: String,
    },
    Overflow {
        span: Span,
    },
}

impl EvalError {
    pub fn span(&self) -> Span {
        match self {
            EvalError::UnknownName { span, .. }
            | EvalError::NotConstant { span }
            | EvalError::Type { span, .. }
            | EvalError::Division { span, .. }
            | EvalError::Overflow { span } => *span,
        }
    }
    pub fn message(&self) -> String {
        match self {
            EvalError::UnknownName { name, .. } => format!("unknown name `{name}`"),
            EvalError::NotConstant { .. } => "this is not a constant expression".to_string(),
            EvalError::Type { message, .. } | EvalError::Division { message, .. } => message.clone(),
            EvalError::Overflow { .. } => "integer overflow".to_string(),
        }
    }
}

/// Names in scope for [`eval`].
pub type Env = BTreeMap<String, Const>;

/// Evaluates `e` with integer arithmetic where both sides are integers
/// (division must then be exact) and float arithmetic otherwise.
pub fn eval(e: &Expr, env: &Env) -> Result<Const, EvalError> {
    match &e.kind {
        ExprKind::Num { value, is_int: true } => Ok(Const::Int(*value as i64)),
        ExprKind::Num { value, .. } => Ok(Const::Float(*value)),
        ExprKind::Bool(b) => Ok(Const::Bool(*b)),
        ExprKind::Ref(path) if path.len() == 1 => {
            env.get(&path[0].name).copied().ok_or_else(|| EvalError::UnknownName {
                name: path[0].name.clone(),
                span: e.span,
            })
        }
        ExprKind::Neg(inner) => match eval(inner, env)? {
            Const::Int(i) => i
                .checked_neg()
                .map(Const::Int)
                .ok_or(EvalError::Overflow { span: e.span }),
            Const::Float(x) => Ok(Const::Float(-x)),
            Const::Bool(_) => Err(EvalError::Type {
                span: e.span,
                message: "cannot negate a boolean".into(),
            }),
        },
        ExprKind::Bin { op, lhs, rhs } => {
            let a = eval(lhs, env)?;
            let b = eval(rhs, env)?;
            binop(*op, a, b, e.span)
        }
        _ => Err(EvalError::NotConstant { span: e.span }),
    }
}

fn binop(op: BinOp, a: Const, b: Const, span: Span) -> Result<Const, EvalError> {
    let type_err = || EvalError::Type {
        span,
        message: format!(
            "`{}` needs numbers, found {} and {}",
            op.symbol(),
            a.describe(),
            b.describe()
        ),
    };
    match (a, b) {
        (Const::Int(x), Const::Int(y)) => {
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul | BinOp::MatMul => x.checked_mul(y),
                BinOp::Div => {
                    if y == 0 {
                        return Err(EvalError::Division {
                            span,
                            message: "division by zero".into(),
                        });
                    }
                    if x % y != 0 {
                        return Err(EvalError::Division {
                            span,
                            message: format!("{x} / {y} is not a whole number"),
                        });
                    }
                    Some(x / y)
                }
            };
            r.map(Const::Int).ok_or(EvalError::Overflow { span })
        }
        _ => {
            let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
                return Err(type_err());
            };
            Ok(Const::Float(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul | BinOp::MatMul => x * y,
                BinOp::Div => x / y,
            }))
        }
    }
}
