//! Builds the forward graph of a training step from a resolved spec.
//!
//! The family's `forward` block is interpreted over the instantiated module
//! tree: `for` loops unroll over the repeated group, module calls become ops
//! on the module's parameters, builtins become their ops. Every adapted
//! linear layer gets its adapter subgraph: the base product with the (frozen,
//! possibly residual) weight plus, for every path term, the chain of tensors
//! applied to x from the right and the term's coefficient. The loss is the
//! causal-LM cross-entropy of the returned logits against the labels.

use std::collections::BTreeMap;

use crate::adapter::Factor;
use crate::consteval::Const;
use crate::ir::{
    AdapterInfo, AttnDims, F64, Ir, NodeId, Op, ParamId, ParamInfo, ParamRole, PathFactor, PathTerm, TensorType, Value,
};
use crate::model::{ModelInstance, ModuleKind};
use crate::spec::ResolvedSpec;
use crate::syntax::ast::{BinOp, Expr, ExprKind, Stmt};

/// A problem building the graph (a model definition the builder cannot lower).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

type R<T> = Result<T, BuildError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(BuildError(msg.into()))
}

/// What a name in the forward block stands for.
#[derive(Debug, Clone)]
enum Binding {
    Tensor(Value),
    /// A loop variable bound to one instance of a repeated group: `layers[3]`.
    Group(String),
}

struct Builder<'a> {
    spec: &'a ResolvedSpec,
    ir: Ir,
    /// Module path -> index into the model's modules.
    by_path: BTreeMap<String, usize>,
    /// Module index -> adapted module index (into spec.modules).
    adapted: BTreeMap<usize, usize>,
    /// Checkpoint tensor name -> parameter.
    base_params: BTreeMap<String, ParamId>,
    param_nodes: BTreeMap<ParamId, NodeId>,
    params: BTreeMap<String, Const>,
    tokens: Value,
}

/// Builds the forward graph for micro-batches of `batch` sequences of `seq` tokens.
pub fn build_forward(spec: &ResolvedSpec, batch: usize, seq: usize, with_grad: bool) -> R<Ir> {
    let model = &spec.model;
    let vocab = param_int(model, "vocab").unwrap_or(0);
    let mut ir = Ir::new(batch, seq, vocab);
    let n = ir.n();
    let tokens = ir.add(Op::Tokens, &[], vec![TensorType::i64(&[n])], "tokens");
    let mut b = Builder {
        spec,
        ir,
        by_path: model
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.path_string(), i))
            .collect(),
        adapted: spec.modules.iter().enumerate().map(|(i, m)| (m.module, i)).collect(),
        base_params: BTreeMap::new(),
        param_nodes: BTreeMap::new(),
        params: model.params.iter().cloned().collect(),
        tokens: (tokens, 0),
    };
    b.declare_adapters()?;
    let Some((_, fwd)) = &model.forward else {
        return err(format!("model family `{}` has no forward block", model.family));
    };
    let mut env: BTreeMap<String, Binding> = BTreeMap::new();
    env.insert(fwd.input.name.clone(), Binding::Tensor(b.tokens));
    let logits = b
        .block(&fwd.body, &mut env)?
        .ok_or_else(|| BuildError("the forward block returns nothing".into()))?;
    let lt =
        b.ir.ty(logits)
            .cloned()
            .ok_or_else(|| BuildError("logits have no type".into()))?;
    if lt.shape != [n, vocab] {
        return err(format!(
            "the forward block returns {lt}, expected logits f32[{n}, {vocab}]"
        ));
    }
    let labels = b.ir.add(Op::Labels, &[], vec![TensorType::i64(&[n])], "labels");
    let mut outs = vec![TensorType::f32(&[1])];
    if with_grad {
        outs.push(TensorType::f32(&[n, vocab]));
    }
    let ce = b.ir.add(
        Op::CrossEntropy {
            batch,
            seq,
            grad: with_grad,
        },
        &[logits, (labels, 0)],
        outs,
        "loss",
    );
    b.ir.loss = Some((ce, 0));
    b.ir.logits = Some(logits);
    Ok(b.ir)
}

fn param_int(model: &ModelInstance, name: &str) -> Option<usize> {
    model.param(name).and_then(Const::as_int).map(|v| v.max(0) as usize)
}

impl Builder<'_> {
    /// Creates the parameters of every adapted module, in model order.
    fn declare_adapters(&mut self) -> R<()> {
        for (ai, m) in self.spec.modules.iter().enumerate() {
            let rule = &self.spec.rules[m.rule];
            let method = &rule.method;
            let env = method.env(m.d_in, m.d_out, m.rank, &rule.args);
            let weight = format!("{}.weight", self.spec.model.modules[m.module].hf_name);
            let base = self.ir.params.len();
            let role = if method.residual {
                ParamRole::Residual {
                    tensor: weight.clone(),
                    adapter: ai,
                }
            } else {
                ParamRole::Base { tensor: weight.clone() }
            };
            self.ir.params.push(ParamInfo {
                name: weight.clone(),
                shape: vec![m.d_out as usize, m.d_in as usize],
                role,
            });
            self.base_params.insert(weight, base);
            let mut tensors = Vec::new();
            for (ti, t) in method.tensors.iter().enumerate() {
                let shape = method.shape(ti, &env).ok_or_else(|| {
                    BuildError(format!(
                        "cannot evaluate the shape of `{}` of `{}`",
                        t.name, method.name
                    ))
                })?;
                let column_frozen = method.freeze.map(|(f, _)| f) == Some(ti);
                tensors.push(self.ir.params.len());
                self.ir.params.push(ParamInfo {
                    name: format!("{}.{}", m.hf_name, t.name),
                    shape: shape.iter().map(|&d| d as usize).collect(),
                    role: ParamRole::Adapter {
                        adapter: ai,
                        tensor: t.name.clone(),
                        init: t.init,
                        trainable: t.trainable,
                        column_frozen,
                    },
                });
            }
            let terms = method
                .terms
                .iter()
                .map(|term| {
                    let coeff = term
                        .coefficient(&env)
                        .ok_or_else(|| BuildError(format!("cannot evaluate a coefficient of `{}`", method.name)))?;
                    let chain = term
                        .chain
                        .iter()
                        .map(|f| match f {
                            Factor::Tensor(i) => PathFactor::Matrix(tensors[*i]),
                            Factor::Diag(i) => PathFactor::Diag(tensors[*i]),
                        })
                        .collect();
                    Ok(PathTerm { coeff, chain })
                })
                .collect::<R<Vec<_>>>()?;
            self.ir.adapters.push(AdapterInfo {
                hf_name: m.hf_name.clone(),
                path: m.path.clone(),
                method: method.name.clone(),
                rank: m.rank as usize,
                d_in: m.d_in as usize,
                d_out: m.d_out as usize,
                alpha: rule.args.get("alpha").and_then(|a| a.as_f64()),
                base,
                tensors: tensors.clone(),
                terms,
                residual: method.residual,
                column_frozen: method
                    .freeze
                    .map(|(f, default)| (tensors[f], rule.schedule.unwrap_or(default))),
            });
        }
        Ok(())
    }

    fn param(&mut self, p: ParamId) -> Value {
        if let Some(&id) = self.param_nodes.get(&p) {
            return (id, 0);
        }
        let ty = TensorType::f32(&self.ir.params[p].shape);
        let label = self.ir.params[p].name.clone();
        let id = self.ir.add(Op::Param(p), &[], vec![ty], label);
        self.param_nodes.insert(p, id);
        (id, 0)
    }

    /// The parameter holding a module's own weight (following ties).
    fn weight(&mut self, module: usize) -> ParamId {
        let model = &self.spec.model;
        let owner = model.modules[module].tied_to.unwrap_or(module);
        let name = format!("{}.weight", model.modules[owner].hf_name);
        if let Some(&p) = self.base_params.get(&name) {
            return p;
        }
        let shape: Vec<usize> = model.modules[owner]
            .kind
            .weight_shape()
            .iter()
            .map(|&d| d as usize)
            .collect();
        let p = self.ir.params.len();
        self.ir.params.push(ParamInfo {
            name: name.clone(),
            shape,
            role: ParamRole::Base { tensor: name.clone() },
        });
        self.base_params.insert(name, p);
        p
    }

    fn ty(&self, v: Value) -> R<TensorType> {
        self.ir
            .ty(v)
            .cloned()
            .ok_or_else(|| BuildError("a value without a type".into()))
    }

    fn block(&mut self, stmts: &[Stmt], env: &mut BTreeMap<String, Binding>) -> R<Option<Value>> {
        for s in stmts {
            match s {
                Stmt::Assign { name, value, .. } => {
                    let v = self.expr(value, env)?;
                    env.insert(name.name.clone(), Binding::Tensor(v));
                }
                Stmt::Return { value, .. } => return self.expr(value, env).map(Some),
                Stmt::For { var, iter, body, .. } => {
                    let group = iter.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
                    let count = self
                        .spec
                        .model
                        .modules
                        .iter()
                        .filter_map(|m| m.path.first())
                        .filter(|s| s.name == group)
                        .filter_map(|s| s.index)
                        .max()
                        .map_or(0, |m| m + 1);
                    for i in 0..count {
                        env.insert(var.name.clone(), Binding::Group(format!("{group}[{i}]")));
                        if let Some(v) = self.block(body, env)? {
                            return Ok(Some(v));
                        }
                    }
                    env.remove(&var.name);
                }
            }
        }
        Ok(None)
    }

    fn scalar(&self, e: &Expr) -> R<Const> {
        match &e.kind {
            ExprKind::Ref(p) if p.len() == 1 => self
                .params
                .get(&p[0].name)
                .copied()
                .ok_or_else(|| BuildError(format!("`{}` is not a parameter", p[0].name))),
            _ => crate::consteval::eval(e, &self.params).map_err(|e| BuildError(e.message())),
        }
    }

    fn int(&self, e: &Expr) -> R<usize> {
        match self.scalar(e)? {
            Const::Int(i) if i > 0 => Ok(i as usize),
            other => err(format!("expected a positive integer, found {other}")),
        }
    }

    fn expr(&mut self, e: &Expr, env: &BTreeMap<String, Binding>) -> R<Value> {
        match &e.kind {
            ExprKind::Ref(p) if p.len() == 1 => match env.get(&p[0].name) {
                Some(Binding::Tensor(v)) => Ok(*v),
                _ => err(format!("`{}` is not a tensor here", p[0].name)),
            },
            ExprKind::Bin { op, lhs, rhs } => {
                let a = self.expr(lhs, env)?;
                let b = self.expr(rhs, env)?;
                let (ta, tb) = (self.ty(a)?, self.ty(b)?);
                if ta != tb {
                    return err(format!("`{}` of {ta} and {tb}", op.symbol()));
                }
                let op = match op {
                    BinOp::Add => Op::Add,
                    BinOp::Mul => Op::Mul,
                    other => return err(format!("the forward block has no `{}` on tensors", other.symbol())),
                };
                Ok((self.ir.add(op, &[a, b], vec![ta], ""), 0))
            }
            ExprKind::Call { callee, args } => {
                let names: Vec<&str> = callee.iter().map(|i| i.name.as_str()).collect();
                // A module call: `layer.attn.q(x)` or `embed(tokens)`.
                let path = match env.get(names[0]) {
                    Some(Binding::Group(prefix)) => Some(
                        std::iter::once(prefix.as_str())
                            .chain(names[1..].iter().copied())
                            .collect::<Vec<_>>()
                            .join("."),
                    ),
                    _ if self.by_path.contains_key(&names.join(".")) => Some(names.join(".")),
                    _ => None,
                };
                if let Some(path) = path {
                    let [arg] = args.as_slice() else {
                        return err(format!("module `{path}` takes one input"));
                    };
                    let x = self.expr(&arg.value, env)?;
                    let Some(&m) = self.by_path.get(&path) else {
                        return err(format!("no module `{path}`"));
                    };
                    return self.module(m, x);
                }
                match (names.as_slice(), args.as_slice()) {
                    (["silu"], [x]) => {
                        let x = self.expr(&x.value, env)?;
                        let t = self.ty(x)?;
                        Ok((self.ir.add(Op::Silu, &[x], vec![t], "silu"), 0))
                    }
                    (["rope"], [x, hd, theta]) => {
                        let x = self.expr(&x.value, env)?;
                        let t = self.ty(x)?;
                        let head_dim = self.int(&hd.value)?;
                        let theta = self
                            .scalar(&theta.value)?
                            .as_f64()
                            .ok_or_else(|| BuildError("rope theta must be a number".into()))?;
                        if t.shape.len() != 2 || !head_dim.is_multiple_of(2) || !t.shape[1].is_multiple_of(head_dim) {
                            return err(format!("rope on {t} with head_dim {head_dim}"));
                        }
                        let label = self.ir.graph[x.0].label.clone();
                        let op = Op::Rope {
                            head_dim,
                            seq: self.ir.seq,
                            theta: F64(theta),
                        };
                        Ok((self.ir.add(op, &[x], vec![t], format!("{label}.rope")), 0))
                    }
                    (["causal_attention"], [q, k, v, h, kvh, hd]) => {
                        let (q, k, v) = (
                            self.expr(&q.value, env)?,
                            self.expr(&k.value, env)?,
                            self.expr(&v.value, env)?,
                        );
                        let dims = AttnDims {
                            batch: self.ir.batch,
                            seq: self.ir.seq,
                            heads: self.int(&h.value)?,
                            kv_heads: self.int(&kvh.value)?,
                            head_dim: self.int(&hd.value)?,
                        };
                        let n = self.ir.n();
                        let (tq, tk, tv) = (self.ty(q)?, self.ty(k)?, self.ty(v)?);
                        let qw = dims.heads * dims.head_dim;
                        let kvw = dims.kv_heads * dims.head_dim;
                        if tq.shape != [n, qw]
                            || tk.shape != [n, kvw]
                            || tv.shape != [n, kvw]
                            || !dims.heads.is_multiple_of(dims.kv_heads)
                        {
                            return err(format!(
                                "attention of {tq}, {tk}, {tv} with {} heads, {} kv heads of {}",
                                dims.heads, dims.kv_heads, dims.head_dim
                            ));
                        }
                        let label = self.ir.graph[q.0]
                            .label
                            .replace(".q.rope", ".attention")
                            .replace(".q", ".attention");
                        let outs = vec![
                            TensorType::f32(&[n, qw]),
                            TensorType::f32(&[dims.batch, dims.heads, dims.seq]),
                        ];
                        Ok((self.ir.add(Op::Attention(dims), &[q, k, v], outs, label), 0))
                    }
                    _ => err(format!(
                        "cannot lower the call `{}` with {} arguments",
                        names.join("."),
                        args.len()
                    )),
                }
            }
            _ => err("unsupported expression in the forward block"),
        }
    }

    /// Applies module `m` to `x`.
    fn module(&mut self, m: usize, x: Value) -> R<Value> {
        let module = self.spec.model.modules[m].clone();
        let label = module.path_string();
        let tx = self.ty(x)?;
        let n = self.ir.n();
        match module.kind {
            ModuleKind::Embedding { vocab, dim } => {
                if tx != TensorType::i64(&[n]) {
                    return err(format!("embedding `{label}` of {tx}, expected token ids"));
                }
                let w = self.weight(m);
                let w = self.param(w);
                let _ = vocab;
                Ok((
                    self.ir
                        .add(Op::Embedding, &[x, w], vec![TensorType::f32(&[n, dim as usize])], label),
                    0,
                ))
            }
            ModuleKind::RmsNorm { dim, eps } => {
                if tx.shape != [n, dim as usize] {
                    return err(format!("rmsnorm `{label}` of {tx}, expected f32[{n}, {dim}]"));
                }
                let w = self.weight(m);
                let w = self.param(w);
                let outs = vec![tx.clone(), TensorType::f32(&[n])];
                Ok((self.ir.add(Op::RmsNorm { eps: F64(eps) }, &[x, w], outs, label), 0))
            }
            ModuleKind::Linear { d_in, d_out } => {
                if tx.shape != [n, d_in as usize] {
                    return err(format!("linear `{label}` of {tx}, expected f32[{n}, {d_in}]"));
                }
                let out_ty = TensorType::f32(&[n, d_out as usize]);
                let Some(&ai) = self.adapted.get(&m) else {
                    let w = self.weight(m);
                    let w = self.param(w);
                    return Ok((self.ir.add(Op::Linear, &[x, w], vec![out_ty], label), 0));
                };
                let info = self.ir.adapters[ai].clone();
                let w = self.param(info.base);
                let mut y = (
                    self.ir
                        .add_tagged(Op::Linear, &[x, w], vec![out_ty.clone()], label.clone(), Some(ai)),
                    0,
                );
                for (ti, term) in info.terms.iter().enumerate() {
                    let mut cur = x;
                    for f in term.chain.iter().rev() {
                        let ct = self.ty(cur)?;
                        cur = match *f {
                            PathFactor::Matrix(p) => {
                                let rows = self.ir.params[p].shape[0];
                                let name = self.ir.params[p].name.rsplit('.').next().unwrap_or("").to_string();
                                let pv = self.param(p);
                                let t = TensorType::f32(&[n, rows]);
                                (
                                    self.ir.add_tagged(
                                        Op::Linear,
                                        &[cur, pv],
                                        vec![t],
                                        format!("{label}.{name}"),
                                        Some(ai),
                                    ),
                                    0,
                                )
                            }
                            PathFactor::Diag(p) => {
                                let pv = self.param(p);
                                (
                                    self.ir.add_tagged(
                                        Op::ColScale,
                                        &[cur, pv],
                                        vec![ct],
                                        format!("{label}.diag"),
                                        Some(ai),
                                    ),
                                    0,
                                )
                            }
                        };
                    }
                    if term.coeff != 1.0 {
                        let t = self.ty(cur)?;
                        cur = (
                            self.ir.add_tagged(
                                Op::Scale { c: F64(term.coeff) },
                                &[cur],
                                vec![t],
                                format!("{label}.scale"),
                                Some(ai),
                            ),
                            0,
                        );
                    }
                    let _ = ti;
                    y = (
                        self.ir.add_tagged(
                            Op::Add,
                            &[y, cur],
                            vec![out_ty.clone()],
                            format!("{label}.out"),
                            Some(ai),
                        ),
                        0,
                    );
                }
                Ok(y)
            }
        }
    }
}
