//! Adapter methods written in the language: type-checking an `adapter` definition into a [`Method`].
//!
//! An adapter adds `path(x)` to a frozen linear layer `y = x W^T`. The checker
//! verifies, with `x` a column vector of size `in` and the result of size
//! `out`: every tensor in the path is declared; shapes agree along every `@`,
//! `*` and `+`; the path is linear in `x` (x appears once in every term, never
//! inside a non-linear function or a divisor); initialisers can produce the
//! declared shapes; `freeze T by columns` names a trainable `[_, r]` tensor.
//! Shapes are symbolic in `in`, `out`, `r` and the method's parameters; two
//! dimensions are equal when they agree under two unrelated bindings of those
//! names (a cheap, exact-enough test for the polynomial shapes people write).
//! The normal form ([`Term`]s: a scalar coefficient times a chain of tensors
//! ending in x) is what the IR builder attaches to the model graph.

use std::collections::BTreeMap;

use crate::consteval::{Const, Env, eval};
use crate::diag::{Code, Diagnostic, FileId};
use crate::schedule::Schedule;
use crate::syntax::ast::{AdapterDef, AdapterItem, BinOp, Call, Expr, ExprKind, Span};

/// How a tensor of an adapter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `V[:, :r]^T` of `W = U diag(s) V^T` (sign rule of SEMANTICS §2): (r, in).
    SvdRight,
    /// `U[:, :r]`: (out, r).
    SvdLeft,
    /// `sqrt(s[:r]) V[:, :r]^T`: (r, in).
    SvdRightScaled,
    /// `U[:, :r] sqrt(s[:r])`: (out, r).
    SvdLeftScaled,
    /// The identity: square.
    Identity,
    Zeros,
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, fan_in = the second dimension (PEFT's LoRA A).
    KaimingUniform,
    /// `N(0, std^2)`.
    Normal {
        std: f64,
    },
}

impl Init {
    pub const NAMES: &'static [&'static str] = &[
        "svd_right",
        "svd_left",
        "svd_right_scaled",
        "svd_left_scaled",
        "identity",
        "zeros",
        "kaiming_uniform",
        "normal",
    ];
    pub fn name(self) -> &'static str {
        match self {
            Init::SvdRight => "svd_right",
            Init::SvdLeft => "svd_left",
            Init::SvdRightScaled => "svd_right_scaled",
            Init::SvdLeftScaled => "svd_left_scaled",
            Init::Identity => "identity",
            Init::Zeros => "zeros",
            Init::KaimingUniform => "kaiming_uniform",
            Init::Normal { .. } => "normal",
        }
    }
    /// Whether the initialiser needs the singular vectors of W.
    pub fn needs_svd(self) -> bool {
        matches!(
            self,
            Init::SvdRight | Init::SvdLeft | Init::SvdRightScaled | Init::SvdLeftScaled
        )
    }
}

/// A declared adapter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// Dimension expressions over `in`, `out`, `r` and parameters.
    pub shape: Vec<Expr>,
    pub trainable: bool,
    pub init: Init,
    pub span: Span,
}

/// One factor of a path term, applied right to left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// Multiply by tensor `i` (an index into [`Method::tensors`]).
    Tensor(usize),
    /// Multiply by `diag(tensor i)`.
    Diag(usize),
}

/// `coeff * F_1 @ F_2 @ ... @ F_k @ x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Scalar factors: (expression over parameters, divides).
    pub coeff: Vec<(Expr, bool)>,
    pub negated: bool,
    /// Factors as written, left to right; x is implicit at the right end.
    pub chain: Vec<Factor>,
}

impl Term {
    /// The numeric coefficient under a parameter binding.
    pub fn coefficient(&self, env: &Env) -> Option<f64> {
        let mut c = if self.negated { -1.0 } else { 1.0 };
        for (e, div) in &self.coeff {
            let v = eval(e, env).ok()?.as_f64()?;
            if *div { c /= v } else { c *= v }
        }
        Some(c)
    }
}

/// A checked adapter method.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    pub file: FileId,
    pub span: Span,
    /// Parameters in order with defaults; `r` is always among them (set by `rank`).
    pub params: Vec<(String, Option<Const>)>,
    pub tensors: Vec<TensorSpec>,
    /// `base residual`: W is replaced by `W - path(init)` as a matrix.
    pub residual: bool,
    /// `freeze T by columns`: the tensor `freeze_b` acts on and its default schedule.
    pub freeze: Option<(usize, Schedule)>,
    pub path: Expr,
    pub terms: Vec<Term>,
}

impl Method {
    pub fn tensor(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
    /// Evaluates a tensor's shape for a module.
    pub fn shape(&self, i: usize, env: &Env) -> Option<Vec<u64>> {
        self.tensors
            .get(i)?
            .shape
            .iter()
            .map(|e| eval(e, env).ok()?.as_int().map(|v| v.max(0) as u64))
            .collect()
    }
    /// The environment of one module: parameters (given values over defaults) plus in, out, r.
    pub fn env(&self, d_in: u64, d_out: u64, r: u64, given: &BTreeMap<String, Const>) -> Env {
        let mut env = Env::new();
        for (name, default) in &self.params {
            if let Some(v) = given.get(name).copied().or(*default) {
                env.insert(name.clone(), v);
            }
        }
        env.insert("in".into(), Const::Int(d_in as i64));
        env.insert("out".into(), Const::Int(d_out as i64));
        env.insert("r".into(), Const::Int(r as i64));
        env
    }
}

/// Parses a freeze schedule call: `linear(p)`, `at(p)`, `never`, `now`.
pub fn parse_schedule(call: &Call, file: FileId) -> Result<Schedule, Diagnostic> {
    let name = call.name.name.as_str();
    let fraction = |call: &Call| -> Result<f64, Diagnostic> {
        let [arg] = call.args.as_slice() else {
            return Err(Diagnostic::error(
                Code::AdaptBadArg,
                file,
                format!(
                    "`{name}` takes one argument, the fraction of the run, found {}",
                    call.args.len()
                ),
            )
            .label(call.span, "here")
            .help(format!("write `{name}(0.3)`")));
        };
        let p = arg.value.kind.as_f64().ok_or_else(|| {
            Diagnostic::error(
                Code::AdaptBadArg,
                file,
                format!("`{name}` takes a fraction, found {}", arg.value.kind.describe()),
            )
            .label(arg.value.span, "expected a number in (0, 1]")
        })?;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Diagnostic::error(
                Code::ScheduleFraction,
                file,
                format!("the fraction of `{name}` must lie in (0, 1], found {p}"),
            )
            .label(arg.value.span, "outside (0, 1]")
            .help(
                "it is the fraction of the run at which every column of B is frozen; `now` freezes B from the start",
            ));
        }
        Ok(p)
    };
    let no_args = |s: Schedule| -> Result<Schedule, Diagnostic> {
        if call.parens {
            Err(
                Diagnostic::error(Code::AdaptBadArg, file, format!("`{name}` takes no arguments"))
                    .label(call.span, "here")
                    .help(format!("write `{name}`")),
            )
        } else {
            Ok(s)
        }
    };
    match name {
        "linear" => Ok(Schedule::Linear(fraction(call)?)),
        "at" => Ok(Schedule::At(fraction(call)?)),
        "never" => no_args(Schedule::Never),
        "now" => no_args(Schedule::Now),
        _ => {
            let known = ["linear", "at", "never", "now"];
            let mut d = Diagnostic::error(Code::ScheduleUnknown, file, format!("unknown freeze schedule `{name}`"))
                .label(call.name.span, "not a schedule");
            d = d.help(match crate::suggest::closest(name, known) {
                Some(s) => format!("did you mean `{s}`? schedules: linear(p), at(p), never, now"),
                None => "schedules: linear(p), at(p), never, now".to_string(),
            });
            Err(d)
        }
    }
}

// ------------------------------------------------------------------ checking

/// Symbolic shapes: a value under each of two bindings, plus display text.
#[derive(Debug, Clone, PartialEq)]
struct Dim {
    vals: [i64; 2],
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Scalar,
    Vector(Dim),
    Matrix(Dim, Dim),
}

impl Shape {
    fn show(&self) -> String {
        match self {
            Shape::Scalar => "a scalar".to_string(),
            Shape::Vector(d) => format!("[{}]", d.text),
            Shape::Matrix(a, b) => format!("[{}, {}]", a.text, b.text),
        }
    }
}

#[derive(Debug, Clone)]
struct Ty {
    shape: Shape,
    /// Degree in x: 0 (constant) or 1 (linear); 2+ is reported at once.
    degree: u32,
}

/// Checks an adapter definition: the method and its warnings, or every error.
pub fn check_adapter(def: &AdapterDef, file: FileId) -> Result<(Method, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut errs = Vec::new();
    let name = def.name.name.clone();
    // Parameters.
    let mut params = Vec::new();
    for p in &def.params {
        if ["in", "out", "x"].contains(&p.name.name.as_str()) {
            errs.push(
                Diagnostic::error(
                    Code::AdapterBadParam,
                    file,
                    format!("`{}` is reserved in adapters", p.name.name),
                )
                .label(p.name.span, "reserved: in and out are the layer sizes, x is its input"),
            );
            continue;
        }
        if params.iter().any(|(n, _): &(String, Option<Const>)| *n == p.name.name) {
            errs.push(
                Diagnostic::error(
                    Code::AdapterBadParam,
                    file,
                    format!("parameter `{}` is declared twice", p.name.name),
                )
                .label(p.name.span, "again here"),
            );
            continue;
        }
        let default = match &p.default {
            None => None,
            Some(e) => match eval(e, &Env::new()) {
                Ok(v) => Some(v),
                Err(err) => {
                    errs.push(
                        Diagnostic::error(
                            Code::AdapterBadParam,
                            file,
                            format!("a default must be a constant: {}", err.message()),
                        )
                        .label(err.span(), "here"),
                    );
                    None
                }
            },
        };
        params.push((p.name.name.clone(), default));
    }
    if !params.iter().any(|(n, _)| n == "r") {
        errs.push(
            Diagnostic::error(
                Code::AdapterBadParam,
                file,
                format!("adapter `{name}` has no parameter `r`"),
            )
            .label(def.name.span, "every adapter takes its rank as `r`")
            .help(format!("write `adapter {name}(r, ...)`")),
        );
    }
    // Items.
    let mut tensors: Vec<TensorSpec> = Vec::new();
    let mut bases = Vec::new();
    let mut freezes = Vec::new();
    let mut paths = Vec::new();
    // A tensor whose declaration has errors: the path check would only repeat them.
    let mut poisoned = false;
    for item in &def.items {
        match item {
            AdapterItem::Tensor(t) => {
                if let Some(prev) = tensors.iter().find(|p| p.name == t.name.name) {
                    errs.push(
                        Diagnostic::error(
                            Code::AdapterDuplicateTensor,
                            file,
                            format!("tensor `{}` is declared twice", t.name.name),
                        )
                        .label(t.name.span, "second declaration")
                        .label(prev.span, "first declaration"),
                    );
                    continue;
                }
                let init = parse_init(&t.init, file).unwrap_or_else(|d| {
                    errs.push(d);
                    poisoned = true;
                    Init::Zeros
                });
                tensors.push(TensorSpec {
                    name: t.name.name.clone(),
                    shape: t.shape.clone(),
                    trainable: t.trainable,
                    init,
                    span: t.name.span,
                });
            }
            AdapterItem::Base { residual, span } => bases.push((*residual, *span)),
            AdapterItem::Freeze(f) => freezes.push(f),
            AdapterItem::Path(e) => paths.push(e),
        }
    }
    if bases.len() != 1 {
        let mut d = Diagnostic::error(
            Code::AdapterMissingBase,
            file,
            format!("adapter `{name}` must say once what happens to W: `base keep` or `base residual`"),
        );
        d = match bases.get(1) {
            Some((_, s)) => d.label(*s, "second `base`"),
            None => d.label(def.name.span, "no `base` line"),
        };
        errs.push(d.help("`base keep` leaves W as it is; `base residual` replaces it by W - path(init)"));
    }
    let bindings = bindings(&params);
    // Shapes of the tensors.
    let mut tys = BTreeMap::new();
    for t in &tensors {
        match shape_of(t, &bindings, file) {
            Ok(s) => {
                if let Err(d) = check_init_shape(t, &s, file) {
                    errs.push(d);
                }
                tys.insert(t.name.clone(), s);
            }
            Err(d) => {
                errs.push(d);
                poisoned = true;
            }
        }
    }
    // The path.
    let path = match paths.as_slice() {
        [p] => Some(*p),
        [] => {
            errs.push(
                Diagnostic::error(Code::AdapterMissingPath, file, format!("adapter `{name}` has no path"))
                    .label(def.name.span, "no `path` line")
                    .help("add the output it contributes, e.g. `path alpha * B @ A @ x`"),
            );
            None
        }
        [_, second, ..] => {
            errs.push(
                Diagnostic::error(
                    Code::AdapterMissingPath,
                    file,
                    format!("adapter `{name}` has more than one path"),
                )
                .label(second.span, "second path")
                .help("write one path; a sum of terms goes in one expression: `path B @ A @ x + C @ x`"),
            );
            None
        }
    };
    let mut terms = Vec::new();
    if let Some(path) = path.filter(|_| !poisoned) {
        let cx = PathCx {
            tensors: &tensors,
            tys: &tys,
            params: &params,
            file,
        };
        match cx.infer(path) {
            Ok(ty) => {
                let out_dim = Dim {
                    vals: [bindings[0]["out"], bindings[1]["out"]],
                    text: "out".into(),
                };
                if ty.degree != 1 {
                    errs.push(
                        Diagnostic::error(Code::AdapterNotLinear, file, "the path does not depend on x")
                            .label(path.span, "constant in x")
                            .help(
                                "an adapter path is a linear function of the layer input: end the product with `@ x`",
                            ),
                    );
                } else if ty.shape != Shape::Vector(out_dim.clone()) {
                    errs.push(
                        Diagnostic::error(
                            Code::AdapterShapeMismatch,
                            file,
                            format!("the path yields {}, but the layer output is [out]", ty.shape.show()),
                        )
                        .label(path.span, format!("this is {}", ty.shape.show())),
                    );
                } else {
                    match flatten(path, &tensors) {
                        Ok(t) => terms = t,
                        Err(d) => errs.push(d.with_file(file)),
                    }
                }
            }
            Err(d) => errs.push(d),
        }
        // Unused tensors.
        for t in &tensors {
            if !mentions(path, &t.name) {
                errs.push(
                    Diagnostic::warning(
                        Code::AdapterUnusedTensor,
                        file,
                        format!("tensor `{}` is never used by the path", t.name),
                    )
                    .label(t.span, "declared here")
                    .help("remove it, or use it in `path`"),
                );
            }
        }
    }
    // Freeze declarations.
    let mut freeze = None;
    for f in &freezes {
        if freeze.is_some() {
            errs.push(
                Diagnostic::error(
                    Code::AdapterFreezeNotColumns,
                    file,
                    "an adapter has at most one column-frozen tensor",
                )
                .label(f.span, "second `freeze`"),
            );
            continue;
        }
        let Some(i) = tensors.iter().position(|t| t.name == f.tensor.name) else {
            errs.push(undeclared(&f.tensor.name, f.tensor.span, &tensors, file));
            continue;
        };
        let t = &tensors[i];
        let r_dim = Dim {
            vals: [bindings[0]["r"], bindings[1]["r"]],
            text: "r".into(),
        };
        let ok_shape = matches!(tys.get(&t.name), Some(Shape::Matrix(_, c)) if *c == r_dim);
        if !t.trainable || !ok_shape {
            errs.push(
                Diagnostic::error(
                    Code::AdapterFreezeNotColumns,
                    file,
                    format!(
                        "`{}` cannot freeze by columns: it must be trainable with shape [_, r]",
                        t.name
                    ),
                )
                .label(f.tensor.span, "here")
                .label(
                    t.span,
                    if t.trainable {
                        "declared with another shape"
                    } else {
                        "declared frozen"
                    },
                ),
            );
            continue;
        }
        let default = match &f.default {
            None => Schedule::Never,
            Some(c) => match parse_schedule(c, file) {
                Ok(s) => s,
                Err(d) => {
                    errs.push(d);
                    continue;
                }
            },
        };
        freeze = Some((i, default));
    }
    if errs.iter().any(Diagnostic::is_error) {
        return Err(errs);
    }
    let method = Method {
        name,
        file,
        span: def.name.span,
        params,
        tensors,
        residual: bases.first().is_some_and(|b| b.0),
        freeze,
        path: path.cloned().unwrap_or(Expr {
            kind: ExprKind::Bool(false),
            span: def.span,
        }),
        terms: finish_terms(terms),
    };
    // What is left in `errs` are warnings.
    Ok((method, errs))
}

trait WithFile {
    fn with_file(self, file: FileId) -> Diagnostic;
}
impl WithFile for Diagnostic {
    fn with_file(mut self, file: FileId) -> Diagnostic {
        self.file = file;
        self
    }
}

fn undeclared(name: &str, span: Span, tensors: &[TensorSpec], file: FileId) -> Diagnostic {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let help = match crate::suggest::closest(name, names.iter().copied()) {
        Some(s) => format!("did you mean `{s}`? declared tensors: {}", names.join(", ")),
        None if names.is_empty() => format!("declare it: `tensor {name} [r, in] trainable init zeros`"),
        None => format!(
            "declared tensors: {}; or declare `tensor {name} [...] ...`",
            names.join(", ")
        ),
    };
    Diagnostic::error(
        Code::AdapterUndeclaredTensor,
        file,
        format!("tensor `{name}` is not declared"),
    )
    .label(span, "undeclared")
    .help(help)
}

fn parse_init(c: &Call, file: FileId) -> Result<Init, Diagnostic> {
    let init = match c.name.name.as_str() {
        "svd_right" => Init::SvdRight,
        "svd_left" => Init::SvdLeft,
        "svd_right_scaled" => Init::SvdRightScaled,
        "svd_left_scaled" => Init::SvdLeftScaled,
        "identity" => Init::Identity,
        "zeros" => Init::Zeros,
        "kaiming_uniform" => Init::KaimingUniform,
        "normal" => {
            let std = c.args.iter().find(|a| a.name.as_ref().is_none_or(|n| n.name == "std"));
            return match std.and_then(|a| a.value.kind.as_f64()) {
                Some(s) if s > 0.0 && c.args.len() == 1 => Ok(Init::Normal { std: s }),
                _ => Err(Diagnostic::error(
                    Code::AdapterUnknownInit,
                    file,
                    "`normal` takes one argument, a positive std",
                )
                .label(c.span, "here")
                .help("write `init normal(std = 0.02)`")),
            };
        }
        other => {
            let help = match crate::suggest::closest(other, Init::NAMES.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? initialisers: {}", Init::NAMES.join(", ")),
                None => format!("initialisers: {}", Init::NAMES.join(", ")),
            };
            return Err(
                Diagnostic::error(Code::AdapterUnknownInit, file, format!("unknown initialiser `{other}`"))
                    .label(c.name.span, "not an initialiser")
                    .help(help),
            );
        }
    };
    if c.parens && !c.args.is_empty() {
        return Err(Diagnostic::error(
            Code::AdapterUnknownInit,
            file,
            format!("`{}` takes no arguments", c.name.name),
        )
        .label(c.span, "here"));
    }
    Ok(init)
}

/// Two bindings of in/out/r and the parameters, chosen so that unrelated
/// dimensions practically never coincide.
fn bindings(params: &[(String, Option<Const>)]) -> [BTreeMap<String, i64>; 2] {
    let primes = [[1009, 1013, 7], [2003, 1999, 11]];
    let extra = [[13, 17, 19, 23, 29, 31], [37, 41, 43, 47, 53, 59]];
    let mut out = [BTreeMap::new(), BTreeMap::new()];
    for (k, b) in out.iter_mut().enumerate() {
        b.insert("in".to_string(), primes[k][0]);
        b.insert("out".to_string(), primes[k][1]);
        b.insert("r".to_string(), primes[k][2]);
        let mut j = 0;
        for (name, default) in params {
            if name == "r" {
                continue;
            }
            let v = match default {
                Some(Const::Int(i)) => *i,
                _ => {
                    j += 1;
                    extra[k][j % extra[k].len()]
                }
            };
            b.insert(name.clone(), v);
        }
    }
    out
}

fn eval_dim(e: &Expr, bindings: &[BTreeMap<String, i64>; 2], file: FileId) -> Result<Dim, Diagnostic> {
    let mut vals = [0i64; 2];
    for (k, b) in bindings.iter().enumerate() {
        let env: Env = b.iter().map(|(n, v)| (n.clone(), Const::Int(*v))).collect();
        match eval(e, &env) {
            Ok(Const::Int(v)) => vals[k] = v,
            Ok(other) => {
                return Err(Diagnostic::error(
                    Code::AdapterShapeMismatch,
                    file,
                    format!("a dimension must be an integer, found {}", other.describe()),
                )
                .label(e.span, "here"));
            }
            Err(crate::consteval::EvalError::UnknownName { name, span }) => {
                return Err(Diagnostic::error(
                    Code::AdapterUnknownName,
                    file,
                    format!("unknown name `{name}` in a shape"),
                )
                .label(span, "not in, out, r or a parameter")
                .help("shapes are written in terms of `in`, `out`, `r` and the adapter's parameters"));
            }
            Err(err) => {
                return Err(
                    Diagnostic::error(Code::AdapterShapeMismatch, file, err.message()).label(err.span(), "here")
                );
            }
        }
    }
    Ok(Dim {
        vals,
        text: expr_text(e),
    })
}

fn shape_of(t: &TensorSpec, bindings: &[BTreeMap<String, i64>; 2], file: FileId) -> Result<Shape, Diagnostic> {
    let dims: Vec<Dim> = t
        .shape
        .iter()
        .map(|e| eval_dim(e, bindings, file))
        .collect::<Result<_, _>>()?;
    match dims.len() {
        1 => Ok(Shape::Vector(dims[0].clone())),
        2 => Ok(Shape::Matrix(dims[0].clone(), dims[1].clone())),
        n => Err(Diagnostic::error(
            Code::AdapterShapeMismatch,
            file,
            format!(
                "tensor `{}` has {n} dimensions; adapters use vectors and matrices",
                t.name
            ),
        )
        .label(t.span, "here")),
    }
}

fn check_init_shape(t: &TensorSpec, s: &Shape, file: FileId) -> Result<(), Diagnostic> {
    let is = |d: &Dim, name: &str| d.text == name || d.vals == dim_of(name);
    let ok = match (t.init, s) {
        (Init::SvdRight | Init::SvdRightScaled, Shape::Matrix(a, b)) => is(a, "r") && is(b, "in"),
        (Init::SvdLeft | Init::SvdLeftScaled, Shape::Matrix(a, b)) => is(a, "out") && is(b, "r"),
        (Init::Identity, Shape::Matrix(a, b)) => a == b,
        (Init::KaimingUniform, Shape::Matrix(..)) => true,
        (Init::Zeros | Init::Normal { .. }, _) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let want = match t.init {
        Init::SvdRight | Init::SvdRightScaled => "[r, in]",
        Init::SvdLeft | Init::SvdLeftScaled => "[out, r]",
        Init::Identity => "a square matrix",
        _ => "a matrix",
    };
    Err(Diagnostic::error(
        Code::AdapterInitShape,
        file,
        format!(
            "`{}` gives {want}, but `{}` is declared {}",
            t.init.name(),
            t.name,
            s.show()
        ),
    )
    .label(t.span, format!("declared {}", s.show())))
}

/// in/out/r values of the two bindings (as in [`bindings`]).
fn dim_of(name: &str) -> [i64; 2] {
    match name {
        "in" => [1009, 2003],
        "out" => [1013, 1999],
        _ => [7, 11],
    }
}

fn expr_text(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Num { value, is_int: true } => format!("{}", *value as i64),
        ExprKind::Num { value, .. } => format!("{value}"),
        ExprKind::Ref(p) => p.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("."),
        ExprKind::Neg(i) => format!("-{}", expr_text(i)),
        ExprKind::Bin { op, lhs, rhs } => format!("{} {} {}", expr_text(lhs), op.symbol(), expr_text(rhs)),
        ExprKind::Call { callee, args } => format!(
            "{}({})",
            callee.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("."),
            args.iter().map(|a| expr_text(&a.value)).collect::<Vec<_>>().join(", ")
        ),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Bool(b) => b.to_string(),
    }
}

fn mentions(e: &Expr, name: &str) -> bool {
    match &e.kind {
        ExprKind::Ref(p) => p.len() == 1 && p[0].name == name,
        ExprKind::Call { args, .. } => args.iter().any(|a| mentions(&a.value, name)),
        ExprKind::Neg(i) => mentions(i, name),
        ExprKind::Bin { lhs, rhs, .. } => mentions(lhs, name) || mentions(rhs, name),
        _ => false,
    }
}

const NONLINEAR: &[&str] = &[
    "relu", "silu", "gelu", "tanh", "sigmoid", "exp", "log", "sqrt", "softmax", "abs",
];

struct PathCx<'a> {
    tensors: &'a [TensorSpec],
    tys: &'a BTreeMap<String, Shape>,
    params: &'a [(String, Option<Const>)],
    file: FileId,
}

impl PathCx<'_> {
    fn err(&self, code: Code, msg: String, span: Span, label: String) -> Diagnostic {
        Diagnostic::error(code, self.file, msg).label(span, label)
    }

    fn infer(&self, e: &Expr) -> Result<Ty, Diagnostic> {
        match &e.kind {
            ExprKind::Num { .. } => Ok(Ty {
                shape: Shape::Scalar,
                degree: 0,
            }),
            ExprKind::Str(_) | ExprKind::Bool(_) => Err(self.err(
                Code::AdapterShapeMismatch,
                "a path holds numbers, tensors and x".into(),
                e.span,
                "not a number".into(),
            )),
            ExprKind::Ref(p) => {
                let name = p.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
                if name == "x" {
                    let d = Dim {
                        vals: dim_of("in"),
                        text: "in".into(),
                    };
                    return Ok(Ty {
                        shape: Shape::Vector(d),
                        degree: 1,
                    });
                }
                if let Some(s) = self.tys.get(&name) {
                    return Ok(Ty {
                        shape: s.clone(),
                        degree: 0,
                    });
                }
                if self.params.iter().any(|(n, _)| *n == name) || ["in", "out"].contains(&name.as_str()) {
                    return Ok(Ty {
                        shape: Shape::Scalar,
                        degree: 0,
                    });
                }
                Err(undeclared(&name, e.span, self.tensors, self.file))
            }
            ExprKind::Neg(i) => self.infer(i),
            ExprKind::Call { callee, args } => {
                let name = callee.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
                if name == "diag" && args.len() == 1 {
                    let t = self.infer(&args[0].value)?;
                    return match t.shape {
                        Shape::Vector(d) => Ok(Ty {
                            shape: Shape::Matrix(d.clone(), d),
                            degree: t.degree,
                        }),
                        s => Err(self.err(
                            Code::AdapterShapeMismatch,
                            format!("`diag` takes a vector, found {}", s.show()),
                            args[0].value.span,
                            s.show(),
                        )),
                    };
                }
                if NONLINEAR.contains(&name.as_str()) {
                    return Err(self
                        .err(
                            Code::AdapterNotLinear,
                            format!("`{name}` is not linear: an adapter path must be linear in x"),
                            e.span,
                            "non-linear function".into(),
                        )
                        .help("adapter paths are products of tensors and scalars ending in `@ x` (and sums of such)"));
                }
                Err(self
                    .err(
                        Code::AdapterUnknownName,
                        format!("unknown function `{name}`"),
                        e.span,
                        "not a path function".into(),
                    )
                    .help("paths may use `diag(v)`; everything else is `*`, `/`, `@`, `+`, `-`"))
            }
            ExprKind::Bin { op, lhs, rhs } => {
                let a = self.infer(lhs)?;
                let b = self.infer(rhs)?;
                let degree = match op {
                    BinOp::Add | BinOp::Sub => {
                        if a.degree != b.degree {
                            return Err(self
                                .err(
                                    Code::AdapterNotLinear,
                                    "the path adds a term that depends on x to one that does not".into(),
                                    e.span,
                                    "not linear in x (affine at best)".into(),
                                )
                                .help("every term of the sum must end in `@ x`"));
                        }
                        a.degree
                    }
                    BinOp::Div => {
                        if b.degree > 0 {
                            return Err(self.err(
                                Code::AdapterNotLinear,
                                "x appears in a divisor".into(),
                                rhs.span,
                                "depends on x".into(),
                            ));
                        }
                        a.degree
                    }
                    BinOp::Mul | BinOp::MatMul => a.degree + b.degree,
                };
                if degree > 1 {
                    return Err(self.err(
                        Code::AdapterNotLinear,
                        "x appears more than once in a product: the path is not linear in x".into(),
                        e.span,
                        "quadratic in x".into(),
                    ));
                }
                let shape = match op {
                    BinOp::Add | BinOp::Sub => {
                        if a.shape != b.shape {
                            return Err(self.mismatch(e, lhs, rhs, &a, &b, "the two sides of a sum"));
                        }
                        a.shape
                    }
                    BinOp::Div => {
                        if b.shape != Shape::Scalar {
                            return Err(self.err(
                                Code::AdapterShapeMismatch,
                                format!("division by {}", b.shape.show()),
                                rhs.span,
                                "not a scalar".into(),
                            ));
                        }
                        a.shape
                    }
                    BinOp::Mul => match (&a.shape, &b.shape) {
                        (Shape::Scalar, s) | (s, Shape::Scalar) => s.clone(),
                        (s, t) if s == t => s.clone(),
                        _ => return Err(self.mismatch(e, lhs, rhs, &a, &b, "an elementwise product")),
                    },
                    BinOp::MatMul => match (&a.shape, &b.shape) {
                        (Shape::Matrix(m, k), Shape::Matrix(k2, n)) if k == k2 => Shape::Matrix(m.clone(), n.clone()),
                        (Shape::Matrix(m, k), Shape::Vector(k2)) if k == k2 => Shape::Vector(m.clone()),
                        (Shape::Scalar, _) | (_, Shape::Scalar) => {
                            return Err(self.err(
                                Code::AdapterShapeMismatch,
                                "`@` multiplies matrices; scale with `*`".into(),
                                e.span,
                                "a scalar here".into(),
                            ));
                        }
                        _ => return Err(self.mismatch(e, lhs, rhs, &a, &b, "a matrix product")),
                    },
                };
                Ok(Ty { shape, degree })
            }
        }
    }

    fn mismatch(&self, e: &Expr, lhs: &Expr, rhs: &Expr, a: &Ty, b: &Ty, what: &str) -> Diagnostic {
        Diagnostic::error(
            Code::AdapterShapeMismatch,
            self.file,
            format!(
                "shapes do not agree in {what}: {} and {}",
                a.shape.show(),
                b.shape.show()
            ),
        )
        .label(lhs.span, format!("this is {}", a.shape.show()))
        .label(rhs.span, format!("this is {}", b.shape.show()))
        .help(if matches!(e.kind, ExprKind::Bin { op: BinOp::MatMul, .. }) {
            "in `P @ Q` the columns of P must match the rows of Q (x is a column of size in)".to_string()
        } else {
            "both sides must have the same shape".to_string()
        })
    }
}

/// Flattens a checked path into terms `coeff * chain @ x`.
fn flatten(e: &Expr, tensors: &[TensorSpec]) -> Result<Vec<Term>, Diagnostic> {
    let unsupported = |span: Span| {
        Diagnostic::error(
            Code::AdapterNotLinear,
            0,
            "this path is linear but not a sum of matrix chains, which lamdac cannot build yet",
        )
        .label(span, "here")
        .help("write each term as `scalar * T1 @ T2 @ ... @ x`")
    };
    match &e.kind {
        ExprKind::Bin {
            op: BinOp::Add,
            lhs,
            rhs,
        } => {
            let mut t = flatten(lhs, tensors)?;
            t.extend(flatten(rhs, tensors)?);
            Ok(t)
        }
        ExprKind::Bin {
            op: BinOp::Sub,
            lhs,
            rhs,
        } => {
            let mut t = flatten(lhs, tensors)?;
            for mut r in flatten(rhs, tensors)? {
                r.negated = !r.negated;
                t.push(r);
            }
            Ok(t)
        }
        ExprKind::Neg(i) => {
            let mut t = flatten(i, tensors)?;
            for r in &mut t {
                r.negated = !r.negated;
            }
            Ok(t)
        }
        ExprKind::Bin {
            op: BinOp::Div,
            lhs,
            rhs,
        } => {
            let mut t = flatten(lhs, tensors)?;
            for r in &mut t {
                r.coeff.push(((**rhs).clone(), true));
            }
            Ok(t)
        }
        ExprKind::Bin {
            op: BinOp::Mul | BinOp::MatMul,
            lhs,
            rhs,
        } => {
            let a = flatten(lhs, tensors)?;
            let b = flatten(rhs, tensors)?;
            let mut out = Vec::new();
            for x in &a {
                for y in &b {
                    // A tensor chain may not sit right of x: x is the end.
                    if x.chain.last() == Some(&X_MARK) && !y.chain.is_empty() {
                        return Err(unsupported(e.span));
                    }
                    let mut coeff = x.coeff.clone();
                    coeff.extend(y.coeff.iter().cloned());
                    let mut chain = x.chain.clone();
                    chain.extend(y.chain.iter().copied());
                    out.push(Term {
                        coeff,
                        negated: x.negated ^ y.negated,
                        chain,
                    });
                }
            }
            Ok(out)
        }
        ExprKind::Ref(p) if p.len() == 1 && p[0].name == "x" => Ok(vec![Term {
            coeff: vec![],
            negated: false,
            chain: vec![X_MARK],
        }]),
        ExprKind::Ref(p) if p.len() == 1 => match tensors.iter().position(|t| t.name == p[0].name) {
            Some(i) => Ok(vec![Term {
                coeff: vec![],
                negated: false,
                chain: vec![Factor::Tensor(i)],
            }]),
            None => Ok(vec![Term {
                coeff: vec![(e.clone(), false)],
                negated: false,
                chain: vec![],
            }]),
        },
        ExprKind::Num { .. } => Ok(vec![Term {
            coeff: vec![(e.clone(), false)],
            negated: false,
            chain: vec![],
        }]),
        ExprKind::Call { args, .. } => match args.first().map(|a| &a.value.kind) {
            Some(ExprKind::Ref(p)) if p.len() == 1 => match tensors.iter().position(|t| t.name == p[0].name) {
                Some(i) => Ok(vec![Term {
                    coeff: vec![],
                    negated: false,
                    chain: vec![Factor::Diag(i)],
                }]),
                None => Err(unsupported(e.span)),
            },
            _ => Err(unsupported(e.span)),
        },
        _ => Err(unsupported(e.span)),
    }
}

/// Marks x inside a chain while flattening; removed by [`finish_terms`].
const X_MARK: Factor = Factor::Tensor(usize::MAX);

/// Strips the x marker (the checker guarantees it ends every term).
fn finish_terms(terms: Vec<Term>) -> Vec<Term> {
    terms
        .into_iter()
        .map(|mut t| {
            t.chain.retain(|f| *f != X_MARK);
            t
        })
        .collect()
}

#[cfg(test)]
mod tests;
