//! Model families: checking a `model` definition and instantiating it into a module tree.
//!
//! A family (`model llama(...) { ... }`) is instantiated with argument values
//! (from a `preset` or a checkpoint's config.json) into a [`ModelInstance`]:
//! the flat list of modules in model order, each with its path in the tree,
//! its kind and shape, and its Hugging Face name. The forward block is kept as
//! syntax; the IR builder reads it.

pub mod hf_config;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::consteval::{Const, Env, eval};
use crate::diag::{Code, Diagnostic, FileId};
use crate::syntax::ast::{Expr, ExprKind, ForwardDef, ModelDef, ModelItem, ParamDecl, Span, Stmt};

/// One segment of a module path: `attn`, or `layers[3]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathSeg {
    pub name: String,
    pub index: Option<u64>,
}

impl fmt::Display for PathSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Formats a path as `layers[3].attn.q`.
pub fn path_string(path: &[PathSeg]) -> String {
    path.iter().map(ToString::to_string).collect::<Vec<_>>().join(".")
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModuleKind {
    /// `y = x W^T (+ b)`, W: (d_out, d_in), b: (d_out) when `bias`.
    Linear { d_in: u64, d_out: u64, bias: bool },
    /// weight: (dim)
    RmsNorm { dim: u64, eps: f64 },
    /// weight, bias: (dim); `(x - mean) / sqrt(var + eps) * weight + bias` over the last dim.
    LayerNorm { dim: u64, eps: f64 },
    /// weight: (vocab, dim)
    Embedding { vocab: u64, dim: u64 },
}

impl ModuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            ModuleKind::Linear { .. } => "linear",
            ModuleKind::RmsNorm { .. } => "rmsnorm",
            ModuleKind::LayerNorm { .. } => "layernorm",
            ModuleKind::Embedding { .. } => "embedding",
        }
    }
    /// Parameters of the module's own weight and bias (saturating; see [`crate::limits`]).
    pub fn params(&self) -> u64 {
        match *self {
            ModuleKind::Linear { d_in, d_out, bias } => {
                d_in.saturating_mul(d_out).saturating_add(if bias { d_out } else { 0 })
            }
            ModuleKind::RmsNorm { dim, .. } => dim,
            ModuleKind::LayerNorm { dim, .. } => dim.saturating_mul(2),
            ModuleKind::Embedding { vocab, dim } => vocab.saturating_mul(dim),
        }
    }
    /// The weight's shape as stored in a checkpoint.
    pub fn weight_shape(&self) -> Vec<u64> {
        match *self {
            ModuleKind::Linear { d_in, d_out, .. } => vec![d_out, d_in],
            ModuleKind::RmsNorm { dim, .. } | ModuleKind::LayerNorm { dim, .. } => vec![dim],
            ModuleKind::Embedding { vocab, dim } => vec![vocab, dim],
        }
    }
    /// The bias's shape, for kinds that have one (`<hf_name>.bias`).
    pub fn bias_shape(&self) -> Option<Vec<u64>> {
        match *self {
            ModuleKind::Linear { d_out, bias: true, .. } => Some(vec![d_out]),
            ModuleKind::LayerNorm { dim, .. } => Some(vec![dim]),
            _ => None,
        }
    }
}

/// One module of an instantiated model.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// Path below the model root: `layers[3].attn.q`.
    pub path: Vec<PathSeg>,
    pub kind: ModuleKind,
    /// Hugging Face module name: `model.layers.3.self_attn.q_proj`; the
    /// weight is `<hf_name>.weight`.
    pub hf_name: String,
    /// Index (in [`ModelInstance::modules`]) of the module whose weight this one shares.
    pub tied_to: Option<usize>,
    /// [`Module::path`] without its indexed segments (patterns match either).
    pub short: Vec<PathSeg>,
}

impl Module {
    pub fn path_string(&self) -> String {
        path_string(&self.path)
    }
    /// The path without its indexed segments: `attn.q` for `layers[3].attn.q`.
    pub fn short_path(&self) -> Vec<PathSeg> {
        self.short.clone()
    }
    /// The index of the repeated group this module sits in (the layer).
    pub fn layer(&self) -> Option<u64> {
        self.path.iter().find_map(|s| s.index)
    }
}

/// Where a model instance comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A preset of the stdlib or of the file.
    Preset(String),
    /// A Hugging Face checkpoint folder (its config.json was read).
    Checkpoint(std::path::PathBuf),
}

/// A family instantiated with concrete arguments.
#[derive(Debug, Clone)]
pub struct ModelInstance {
    pub family: String,
    pub source: ModelSource,
    /// Every family parameter with its value, defaults included, in declaration order.
    pub params: Vec<(String, Const)>,
    /// Every module, in model order (declaration order; layer by layer).
    pub modules: Vec<Module>,
    /// The family's forward block and the file it is written in.
    pub forward: Option<(FileId, Arc<ForwardDef>)>,
}

impl ModelInstance {
    pub fn param(&self, name: &str) -> Option<Const> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    /// Whether the instance gives module shapes only: its family parameter
    /// `shapes_only` is true (a preset of another architecture with the
    /// family's shapes, such as `deberta_v3_base`). `check` and `plan` take
    /// it; `train` refuses it.
    pub fn shapes_only(&self) -> bool {
        self.param("shapes_only") == Some(Const::Bool(true))
    }
    /// Total parameters of the base model (tied weights counted once).
    pub fn base_params(&self) -> u64 {
        self.modules
            .iter()
            .filter(|m| m.tied_to.is_none())
            .map(|m| m.kind.params())
            .fold(0u64, u64::saturating_add)
    }
}

/// Checks a family definition on its own (before any instantiation): module
/// kinds, argument counts, names in the forward block.
pub fn check_family(def: &ModelDef, file: FileId) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let params: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
    check_items(&def.items, &params, file, &mut out, true);
    let forwards: Vec<&ForwardDef> = def
        .items
        .iter()
        .filter_map(|i| if let ModelItem::Forward(f) = i { Some(f) } else { None })
        .collect();
    match forwards.as_slice() {
        [] => out.push(
            Diagnostic::error(
                Code::ModelBadDecl,
                file,
                format!("model `{}` has no forward block", def.name.name),
            )
            .label(def.name.span, "defined here")
            .help("add `forward(tokens) { ... return logits }`"),
        ),
        [f] => check_forward(def, f, file, &mut out),
        [_, second, ..] => out.push(
            Diagnostic::error(Code::ModelBadDecl, file, "a model has one forward block")
                .label(second.span, "second forward block"),
        ),
    }
    out
}

fn check_items(items: &[ModelItem], params: &[&str], file: FileId, out: &mut Vec<Diagnostic>, top: bool) {
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for item in items {
        let name = match item {
            ModelItem::Module(m) => {
                let arity = match m.kind.name.as_str() {
                    "linear" => 2..=3,
                    "rmsnorm" | "layernorm" | "embedding" => 2..=2,
                    other => {
                        out.push(
                            Diagnostic::error(Code::ModelBadDecl, file, format!("unknown module kind `{other}`"))
                                .label(m.kind.span, "not a module kind")
                                .help(
                                    "module kinds: linear(in, out[, bias]), rmsnorm(dim, eps), \
                                     layernorm(dim, eps), embedding(vocab, dim)",
                                ),
                        );
                        continue;
                    }
                };
                if !arity.contains(&m.args.len()) {
                    let takes = if arity.start() == arity.end() {
                        arity.start().to_string()
                    } else {
                        format!("{} or {}", arity.start(), arity.end())
                    };
                    out.push(
                        Diagnostic::error(
                            Code::ModelBadDecl,
                            file,
                            format!("`{}` takes {takes} arguments, found {}", m.kind.name, m.args.len()),
                        )
                        .label(m.span, "here"),
                    );
                }
                if let Some((target, cond)) = &m.tied {
                    if !top {
                        out.push(
                            Diagnostic::error(Code::ModelBadDecl, file, "only top-level modules can be tied")
                                .label(target.span, "here"),
                        );
                    }
                    if let Some(c) = cond
                        && !params.contains(&c.name.as_str())
                    {
                        out.push(
                            Diagnostic::error(Code::ModelBadDecl, file, format!("unknown parameter `{}`", c.name))
                                .label(c.span, "not a parameter of this family"),
                        );
                    }
                }
                Some(&m.name)
            }
            ModelItem::Group(g) => {
                check_items(&g.items, params, file, out, false);
                Some(&g.name)
            }
            ModelItem::Forward(_) => None,
        };
        if let Some(n) = name
            && let Some(prev) = seen.insert(n.name.as_str(), n.span)
        {
            out.push(
                Diagnostic::error(Code::ModelBadDecl, file, format!("`{}` is declared twice", n.name))
                    .label(n.span, "second declaration")
                    .label(prev, "first declaration"),
            );
        }
    }
}

/// Builtins of the forward block and their argument counts.
pub const BUILTINS: &[(&str, usize)] = &[
    ("rope", 3),
    ("causal_attention", 6),
    ("attention", 5),
    ("silu", 1),
    ("gelu", 1),
    ("positions", 1),
    ("token_types", 1),
];

fn check_forward(def: &ModelDef, f: &ForwardDef, file: FileId, out: &mut Vec<Diagnostic>) {
    let mut scope: Vec<String> = def.params.iter().map(|p| p.name.name.clone()).collect();
    scope.push(f.input.name.clone());
    let mut groups: BTreeMap<String, ()> = BTreeMap::new();
    let mut loop_vars: Vec<String> = Vec::new();
    for item in &def.items {
        match item {
            ModelItem::Module(m) => scope.push(m.name.name.clone()),
            ModelItem::Group(g) => {
                groups.insert(g.name.name.clone(), ());
            }
            ModelItem::Forward(_) => {}
        }
    }
    let mut returned = false;
    check_stmts(&f.body, &mut scope, &groups, &mut loop_vars, file, out, &mut returned);
    if !returned {
        out.push(
            Diagnostic::error(Code::ModelBadDataflow, file, "the forward block never returns")
                .label(f.span, "add `return logits`"),
        );
    }
}

fn check_stmts(
    stmts: &[Stmt],
    scope: &mut Vec<String>,
    groups: &BTreeMap<String, ()>,
    loop_vars: &mut Vec<String>,
    file: FileId,
    out: &mut Vec<Diagnostic>,
    returned: &mut bool,
) {
    for s in stmts {
        match s {
            Stmt::Assign { name, value, .. } => {
                check_expr(value, scope, loop_vars, file, out);
                scope.push(name.name.clone());
            }
            Stmt::Return { value, .. } => {
                check_expr(value, scope, loop_vars, file, out);
                *returned = true;
            }
            Stmt::For { var, iter, body, .. } => {
                let gname = iter.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
                if !groups.contains_key(&gname) {
                    let span = iter.first().map_or(var.span, |i| i.span);
                    out.push(
                        Diagnostic::error(
                            Code::ModelBadDataflow,
                            file,
                            format!("`{gname}` is not a repeated group"),
                        )
                        .label(span, "cannot iterate over this"),
                    );
                }
                loop_vars.push(var.name.clone());
                check_stmts(body, scope, groups, loop_vars, file, out, returned);
                loop_vars.pop();
            }
        }
    }
}

fn check_expr(e: &Expr, scope: &[String], loop_vars: &[String], file: FileId, out: &mut Vec<Diagnostic>) {
    match &e.kind {
        ExprKind::Ref(path) => {
            if let Some(first) = path.first()
                && !scope.contains(&first.name)
                && !loop_vars.contains(&first.name)
            {
                out.push(
                    Diagnostic::error(Code::ModelBadDataflow, file, format!("unknown name `{}`", first.name))
                        .label(first.span, "not defined before this point"),
                );
            }
        }
        ExprKind::Call { callee, args } => {
            for a in args {
                check_expr(&a.value, scope, loop_vars, file, out);
            }
            let Some(first) = callee.first() else { return };
            if callee.len() == 1 && !scope.contains(&first.name) {
                match BUILTINS.iter().find(|(n, _)| *n == first.name) {
                    Some((_, arity)) if *arity != args.len() => out.push(
                        Diagnostic::error(
                            Code::ModelBadDataflow,
                            file,
                            format!("`{}` takes {arity} arguments, found {}", first.name, args.len()),
                        )
                        .label(e.span, "here"),
                    ),
                    Some(_) => {}
                    None => out.push(
                        Diagnostic::error(
                            Code::ModelBadDataflow,
                            file,
                            format!("unknown builtin `{}`", first.name),
                        )
                        .label(first.span, "not a module or builtin")
                        .help(format!(
                            "builtins: {}",
                            BUILTINS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        )),
                    ),
                }
            } else if callee.len() > 1 && !loop_vars.contains(&first.name) && !scope.contains(&first.name) {
                out.push(
                    Diagnostic::error(Code::ModelBadDataflow, file, format!("unknown name `{}`", first.name))
                        .label(first.span, "not a loop variable or module"),
                );
            }
        }
        ExprKind::Neg(inner) => check_expr(inner, scope, loop_vars, file, out),
        ExprKind::Bin { lhs, rhs, .. } => {
            check_expr(lhs, scope, loop_vars, file, out);
            check_expr(rhs, scope, loop_vars, file, out);
        }
        ExprKind::Num { .. } | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}

/// An argument handed to a family: its name, value and where it was written.
#[derive(Debug, Clone)]
pub struct FamilyArg {
    pub name: String,
    pub value: Const,
    pub span: Span,
}

/// Evaluates the family's parameters: given arguments first, then defaults in
/// declaration order (a default may use earlier parameters).
pub fn bind_params(
    params: &[ParamDecl],
    args: &[FamilyArg],
    family: &str,
    call_span: Span,
    call_file: FileId,
    def_file: FileId,
) -> Result<Vec<(String, Const)>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let names: Vec<&str> = params.iter().map(|p| p.name.name.as_str()).collect();
    for a in args {
        if !names.contains(&a.name.as_str()) {
            let mut d = Diagnostic::error(
                Code::PresetBadArgs,
                call_file,
                format!("model family `{family}` has no parameter `{}`", a.name),
            )
            .label(a.span, "unknown parameter");
            d = d.help(match crate::suggest::closest(&a.name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? parameters: {}", names.join(", ")),
                None => format!("parameters: {}", names.join(", ")),
            });
            errors.push(d);
        }
    }
    let mut env = Env::new();
    let mut out = Vec::new();
    for p in params {
        let given = args.iter().find(|a| a.name == p.name.name);
        let value = match (given, &p.default) {
            (Some(a), _) => Some(a.value),
            (None, Some(def)) => match eval(def, &env) {
                Ok(v) => Some(v),
                // A default that uses a missing parameter: that one is reported.
                Err(crate::consteval::EvalError::UnknownName { name, .. })
                    if names.contains(&name.as_str()) && !env.contains_key(&name) =>
                {
                    None
                }
                Err(e) => {
                    errors.push(
                        Diagnostic::error(
                            Code::PresetBadArgs,
                            def_file,
                            format!("the default of `{}` cannot be computed: {}", p.name.name, e.message()),
                        )
                        .label(e.span(), "here"),
                    );
                    None
                }
            },
            (None, None) => {
                errors.push(
                    Diagnostic::error(
                        Code::PresetBadArgs,
                        call_file,
                        format!("model family `{family}` needs `{}`", p.name.name),
                    )
                    .label(call_span, format!("`{}` is missing", p.name.name)),
                );
                None
            }
        };
        if let Some(v) = value {
            env.insert(p.name.name.clone(), v);
            out.push((p.name.name.clone(), v));
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Instantiates a checked family with bound parameters.
pub fn instantiate(
    def: &ModelDef,
    def_file: FileId,
    params: Vec<(String, Const)>,
    source: ModelSource,
    blame: (FileId, Span),
) -> Result<ModelInstance, Vec<Diagnostic>> {
    let env: Env = params.iter().cloned().collect();
    let mut modules = Vec::new();
    let mut errors = Vec::new();
    let mut cx = InstCx {
        env: &env,
        def_file,
        blame,
        errors: &mut errors,
        too_large: false,
    };
    cx.expand(&def.items, &mut Vec::new(), &mut Vec::new(), &mut modules);
    if cx.too_large {
        return Err(errors);
    }
    let params_total = modules.iter().map(|m| m.kind.params()).fold(0u64, u64::saturating_add);
    if params_total > crate::limits::MAX_PARAMS {
        let (bf, bs) = blame;
        errors.push(
            Diagnostic::error(
                Code::ModelTooLarge,
                bf,
                format!(
                    "this model has {params_total} parameters, beyond any real model (at most 2^42 = {})",
                    crate::limits::MAX_PARAMS
                ),
            )
            .label(bs, "instantiated here")
            .help("check the sizes: vocabulary, width, FFN size and layer count"),
        );
        return Err(errors);
    }
    // Resolve ties among top-level modules.
    let mut ties = Vec::new();
    for item in &def.items {
        if let ModelItem::Module(m) = item
            && let Some((target, cond)) = &m.tied
        {
            let active = match cond {
                None => true,
                Some(c) => matches!(env.get(&c.name), Some(Const::Bool(true))),
            };
            if active {
                ties.push((m.name.name.clone(), target.clone()));
            }
        }
    }
    for (name, target) in ties {
        let idx = modules
            .iter()
            .position(|m: &Module| m.path.len() == 1 && m.path[0].name == target.name);
        let me = modules
            .iter()
            .position(|m: &Module| m.path.len() == 1 && m.path[0].name == name);
        match (me, idx) {
            (Some(me), Some(t)) => {
                if modules[me].kind.params() != modules[t].kind.params() {
                    errors.push(
                        Diagnostic::error(
                            Code::ModelBadDecl,
                            def_file,
                            format!(
                                "`{name}` cannot share the weight of `{}`: the shapes differ",
                                target.name
                            ),
                        )
                        .label(target.span, "tied here"),
                    );
                }
                modules[me].tied_to = Some(t);
            }
            _ => errors.push(
                Diagnostic::error(
                    Code::ModelBadDecl,
                    def_file,
                    format!("unknown module `{}`", target.name),
                )
                .label(target.span, "not a top-level module"),
            ),
        }
    }
    let forward = def.items.iter().find_map(|i| match i {
        ModelItem::Forward(f) => Some((def_file, Arc::new(f.clone()))),
        _ => None,
    });
    if errors.is_empty() {
        Ok(ModelInstance {
            family: def.name.name.clone(),
            source,
            params,
            modules,
            forward,
        })
    } else {
        Err(errors)
    }
}

struct InstCx<'a> {
    env: &'a Env,
    def_file: FileId,
    blame: (FileId, Span),
    errors: &'a mut Vec<Diagnostic>,
    /// Set once a size past [`crate::limits`] is met: expansion stops there.
    too_large: bool,
}

impl InstCx<'_> {
    /// A size: a positive integer of at most `max`.
    fn size(&mut self, e: &Expr, what: &str, max: u64) -> Option<u64> {
        let n = self.positive(e, what)?;
        if n > max {
            self.too_large(
                format!("{what} of {n} is beyond any real model (at most {max})"),
                e.span,
            );
            return None;
        }
        Some(n)
    }
    fn too_large(&mut self, msg: String, span: Span) {
        self.too_large = true;
        let (bf, bs) = self.blame;
        let mut d = Diagnostic::error(Code::ModelTooLarge, bf, msg)
            .label(bs, "instantiated here")
            .help("check the sizes: vocabulary, width, FFN size and layer count");
        if bf != self.def_file {
            d = d
                .related(Diagnostic::advice(Code::ModelTooLarge, self.def_file, "in this declaration").label(span, ""));
        }
        self.errors.push(d);
    }
    fn positive(&mut self, e: &Expr, what: &str) -> Option<u64> {
        match eval(e, self.env) {
            Ok(Const::Int(i)) if i > 0 => Some(i as u64),
            Ok(v) => {
                self.err(format!("{what} must be a positive integer, found {v}"), e.span);
                None
            }
            Err(err) => {
                self.err(format!("{what}: {}", err.message()), err.span());
                None
            }
        }
    }
    fn err(&mut self, msg: String, span: Span) {
        let (bf, bs) = self.blame;
        let mut d = Diagnostic::error(Code::PresetBadArgs, bf, msg.clone()).label(bs, "instantiated here");
        if bf != self.def_file {
            d = d
                .related(Diagnostic::advice(Code::PresetBadArgs, self.def_file, "in this declaration").label(span, ""));
        }
        self.errors.push(d);
    }

    fn expand(&mut self, items: &[ModelItem], path: &mut Vec<PathSeg>, idx: &mut Vec<u64>, out: &mut Vec<Module>) {
        use crate::limits::{MAX_DIM, MAX_GROUP, MAX_MODULES};
        for item in items {
            if self.too_large {
                return;
            }
            if out.len() >= MAX_MODULES {
                let span = match item {
                    ModelItem::Module(m) => m.name.span,
                    ModelItem::Group(g) => g.name.span,
                    ModelItem::Forward(f) => f.span,
                };
                self.too_large(format!("the model has more than {MAX_MODULES} modules"), span);
                return;
            }
            match item {
                ModelItem::Module(m) => {
                    let kind = match (m.kind.name.as_str(), m.args.as_slice()) {
                        ("linear", [a, b, bias @ ..]) if bias.len() <= 1 => {
                            let (Some(d_in), Some(d_out)) = (
                                self.size(a, "a linear input size", MAX_DIM),
                                self.size(b, "a linear output size", MAX_DIM),
                            ) else {
                                continue;
                            };
                            let bias = match bias.first().map(|e| eval(e, self.env)) {
                                None => false,
                                Some(Ok(Const::Bool(b))) => b,
                                Some(_) => {
                                    self.err("a linear's bias flag must be true or false".into(), bias[0].span);
                                    continue;
                                }
                            };
                            ModuleKind::Linear { d_in, d_out, bias }
                        }
                        ("embedding", [a, b]) => {
                            let (Some(vocab), Some(dim)) = (
                                self.size(a, "a vocabulary size", MAX_DIM),
                                self.size(b, "an embedding size", MAX_DIM),
                            ) else {
                                continue;
                            };
                            ModuleKind::Embedding { vocab, dim }
                        }
                        ("rmsnorm" | "layernorm", [a, b]) => {
                            let Some(dim) = self.size(a, "a norm size", MAX_DIM) else {
                                continue;
                            };
                            let eps = match eval(b, self.env).ok().and_then(Const::as_f64) {
                                Some(x) if x > 0.0 => x,
                                _ => {
                                    self.err("a norm epsilon must be a positive number".into(), b.span);
                                    continue;
                                }
                            };
                            if m.kind.name == "layernorm" {
                                ModuleKind::LayerNorm { dim, eps }
                            } else {
                                ModuleKind::RmsNorm { dim, eps }
                            }
                        }
                        _ => continue, // reported by check_family
                    };
                    let mut hf_name = m.hf_name.clone();
                    if let Some(i) = idx.last() {
                        hf_name = hf_name.replace("{i}", &i.to_string());
                    }
                    let mut p = path.clone();
                    p.push(PathSeg {
                        name: m.name.name.clone(),
                        index: None,
                    });
                    let short = p.iter().filter(|s| s.index.is_none()).cloned().collect();
                    out.push(Module {
                        path: p,
                        kind,
                        hf_name,
                        tied_to: None,
                        short,
                    });
                }
                ModelItem::Group(g) => match &g.count {
                    None => {
                        path.push(PathSeg {
                            name: g.name.name.clone(),
                            index: None,
                        });
                        self.expand(&g.items, path, idx, out);
                        path.pop();
                    }
                    Some(c) => {
                        let Some(n) = self.size(c, "a group count", MAX_GROUP) else {
                            continue;
                        };
                        for i in 0..n {
                            path.push(PathSeg {
                                name: g.name.name.clone(),
                                index: Some(i),
                            });
                            idx.push(i);
                            self.expand(&g.items, path, idx, out);
                            idx.pop();
                            path.pop();
                        }
                    }
                },
                ModelItem::Forward(_) => {}
            }
        }
    }
}
