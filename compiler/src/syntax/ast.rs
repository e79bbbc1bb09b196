//! The abstract syntax tree of a .lamda file: every node carries its byte span.

use std::fmt;

/// A byte range `start..end` into one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A name as written, with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole file: its items in source order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Use(UseStmt),
    Adapt(AdaptStmt),
    Exclude(ExcludeStmt),
    Train(TrainBlock),
    Adapter(AdapterDef),
    Model(ModelDef),
    Preset(PresetDef),
}

// ------------------------------------------------------------------ use

#[derive(Debug, Clone, PartialEq)]
pub struct UseStmt {
    pub target: UseTarget,
    pub alias: Option<Ident>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UseTarget {
    /// `use llama2_13b`: a preset or family alias of the stdlib (or of this file).
    Named(Ident),
    /// `use "models/smol" as s`: a Hugging Face checkpoint folder.
    Path { path: String, span: Span },
}

// ------------------------------------------------------------------ patterns

/// A module pattern such as `llama2.layers[0..15].attn.{q,v}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
    pub span: Span,
}

impl Pattern {
    /// The root segment names the model (an alias from `use`, or a stdlib preset).
    pub fn root(&self) -> Option<&Segment> {
        self.segments.first()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub kind: SegKind,
    pub index: Option<Vec<IndexItem>>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SegKind {
    Name(String),
    /// `*`: any one segment.
    Any,
    /// `**`: any number of segments, zero included.
    Deep,
    /// `{q,v}`: any of these names (each with its span, for diagnostics).
    Alts(Vec<Ident>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IndexItem {
    One(u64, Span),
    /// Inclusive at both ends: `[0..15]` is sixteen layers.
    Range(u64, u64, Span),
    All(Span),
}

impl IndexItem {
    pub fn contains(&self, i: u64) -> bool {
        match *self {
            IndexItem::One(j, _) => i == j,
            IndexItem::Range(a, b, _) => a <= i && i <= b,
            IndexItem::All(_) => true,
        }
    }
    pub fn span(&self) -> Span {
        match *self {
            IndexItem::One(_, s) | IndexItem::Range(_, _, s) | IndexItem::All(s) => s,
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SegKind::Name(n) => write!(f, "{n}")?,
            SegKind::Any => write!(f, "*")?,
            SegKind::Deep => write!(f, "**")?,
            SegKind::Alts(a) => {
                let names: Vec<&str> = a.iter().map(|n| n.name.as_str()).collect();
                write!(f, "{{{}}}", names.join(","))?;
            }
        }
        if let Some(items) = &self.index {
            let parts: Vec<String> = items
                .iter()
                .map(|it| match *it {
                    IndexItem::One(i, _) => i.to_string(),
                    IndexItem::Range(a, b, _) => format!("{a}..{b}"),
                    IndexItem::All(_) => "*".to_string(),
                })
                .collect();
            write!(f, "[{}]", parts.join(","))?;
        }
        Ok(())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                write!(f, ".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ adapt / exclude

#[derive(Debug, Clone, PartialEq)]
pub struct AdaptStmt {
    pub pattern: Pattern,
    pub clauses: Vec<Clause>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub kind: ClauseKind,
    /// The clause keyword (`rank`, `with`, ...).
    pub keyword: Span,
    /// The whole clause.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClauseKind {
    /// `with lora` or `with lora(alpha = 16)`.
    With(Call),
    Rank(RankSpec),
    Alpha(Value),
    /// `freeze_b linear(0.3)`, `freeze_b never`.
    FreezeB(Call),
}

impl ClauseKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            ClauseKind::With(_) => "with",
            ClauseKind::Rank(_) => "rank",
            ClauseKind::Alpha(_) => "alpha",
            ClauseKind::FreezeB(_) => "freeze_b",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RankSpec {
    Fixed(Value),
    /// `auto(budget = P, min = .., max = ..)`; `span` covers `auto(...)`.
    Auto {
        args: Vec<Arg>,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExcludeStmt {
    pub pattern: Pattern,
    pub span: Span,
}

// ------------------------------------------------------------------ values

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Ident(String),
    Tuple(Vec<Value>),
    Call(Call),
}

impl ValueKind {
    /// What a user calls this kind of value, for type errors.
    pub fn describe(&self) -> &'static str {
        match self {
            ValueKind::Int(_) => "an integer",
            ValueKind::Float(_) => "a number with a fraction",
            ValueKind::Str(_) => "a string",
            ValueKind::Bool(_) => "a boolean",
            ValueKind::Ident(_) => "a name",
            ValueKind::Tuple(_) => "a tuple",
            ValueKind::Call(_) => "a call",
        }
    }
    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            ValueKind::Int(i) => Some(i as f64),
            ValueKind::Float(x) => Some(x),
            _ => None,
        }
    }
}

/// `name` or `name(args)`; `parens` says whether the parentheses were written.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: Ident,
    pub args: Vec<Arg>,
    pub parens: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Value,
    pub span: Span,
}

// ------------------------------------------------------------------ train

#[derive(Debug, Clone, PartialEq)]
pub struct TrainBlock {
    pub entries: Vec<TrainEntry>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainEntry {
    pub key: Ident,
    pub value: Value,
    /// Whether the value was written `every N`.
    pub every: bool,
    pub span: Span,
}

// ------------------------------------------------------------------ expressions

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `@`: matrix product.
    MatMul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A number; `is_int` when written without fraction or exponent.
    Num {
        value: f64,
        is_int: bool,
    },
    Str(String),
    Bool(bool),
    /// A (dotted) name: `x`, `layer.attn.q`.
    Ref(Vec<Ident>),
    Call {
        callee: Vec<Ident>,
        args: Vec<ExprArg>,
    },
    Neg(Box<Expr>),
    Bin {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExprArg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// `name` or `name = default` in a parameter list.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub default: Option<Expr>,
}

// ------------------------------------------------------------------ adapters

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub items: Vec<AdapterItem>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AdapterItem {
    Tensor(TensorDecl),
    Base { residual: bool, span: Span },
    Freeze(FreezeDecl),
    Path(Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorDecl {
    pub name: Ident,
    /// Dimension expressions in terms of `in`, `out`, `r` and parameters.
    pub shape: Vec<Expr>,
    pub trainable: bool,
    pub init: Call,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FreezeDecl {
    pub tensor: Ident,
    pub default: Option<Call>,
    pub span: Span,
}

// ------------------------------------------------------------------ models

#[derive(Debug, Clone, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub items: Vec<ModelItem>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelItem {
    Module(ModuleDecl),
    Group(GroupDecl),
    Forward(ForwardDef),
}

/// `q: linear(hidden, heads * head_dim) "model.layers.{i}.self_attn.q_proj"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleDecl {
    pub name: Ident,
    pub kind: Ident,
    pub args: Vec<Expr>,
    pub hf_name: String,
    pub hf_span: Span,
    /// `tied embed when tie_embeddings`: shares the weight of another module.
    pub tied: Option<(Ident, Option<Ident>)>,
    pub span: Span,
}

/// `attn { ... }` or the repeated `layers[layers] { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDecl {
    pub name: Ident,
    pub count: Option<Expr>,
    pub items: Vec<ModelItem>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardDef {
    pub input: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Assign {
        name: Ident,
        value: Expr,
        span: Span,
    },
    For {
        var: Ident,
        iter: Vec<Ident>,
        body: Vec<Stmt>,
        span: Span,
    },
    Return {
        value: Expr,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PresetDef {
    pub name: Ident,
    /// `llama(vocab = 32000, ...)` or another preset's name.
    pub value: Call,
    pub span: Span,
}
