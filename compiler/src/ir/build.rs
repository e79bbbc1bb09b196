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
    /// The integer inputs other than tokens, made on first use.
    positions: Option<Value>,
    token_types: Option<Value>,
    lengths: Option<Value>,
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
        positions: None,
        token_types: None,
        lengths: None,
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
    if let Some(head) = spec.train.head {
        if lt.shape == [n, vocab] && param_int(model, "hidden") != Some(vocab) {
            return err(format!(
                "`head classify` is for encoders; `{}` is a causal language model (its forward returns logits)",
                model.family
            ));
        }
        return b.classify(logits, head, with_grad);
    }
    if lt.shape != [n, vocab] {
        if lt.shape.len() == 2 && lt.shape[0] == n && param_int(model, "hidden") == Some(lt.shape[1]) {
            return err(format!(
                "`{}` is an encoder (its forward returns hidden states {lt}): add a task head to the train \
                 block, e.g. `head classify(labels = 2, pool = cls)`",
                model.family
            ));
        }
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
        self.module_tensor(module, false)
    }

    /// The parameter holding a module's bias (linear with a bias, layernorm).
    fn bias(&mut self, module: usize) -> ParamId {
        self.module_tensor(module, true)
    }

    fn module_tensor(&mut self, module: usize, bias: bool) -> ParamId {
        let model = &self.spec.model;
        let owner = model.modules[module].tied_to.unwrap_or(module);
        let kind = &model.modules[owner].kind;
        let suffix = if bias { "bias" } else { "weight" };
        let name = format!("{}.{suffix}", model.modules[owner].hf_name);
        if let Some(&p) = self.base_params.get(&name) {
            return p;
        }
        let shape: Vec<usize> = if bias {
            kind.bias_shape().unwrap_or_default()
        } else {
            kind.weight_shape()
        }
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
                    (["gelu"], [x]) => {
                        let x = self.expr(&x.value, env)?;
                        let t = self.ty(x)?;
                        Ok((self.ir.add(Op::Gelu, &[x], vec![t], "gelu"), 0))
                    }
                    (["positions"], [t]) | (["token_types"], [t]) => {
                        if self.expr(&t.value, env)? != self.tokens {
                            return err(format!("`{}` takes the forward block's token ids", names[0]));
                        }
                        let seq = self.ir.seq;
                        Ok(if names[0] == "positions" {
                            self.input(Op::Positions { seq })
                        } else {
                            self.input(Op::TokenTypes)
                        })
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
                        let kv_heads = self.int(&kvh.value)?;
                        self.attention(env, [q, k, v], h, Some(kv_heads), hd)
                    }
                    (["attention"], [q, k, v, h, hd]) => self.attention(env, [q, k, v], h, None, hd),
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

    /// Attention of `q, k, v` (grouped-query and causal when `kv_heads` is
    /// given; else bidirectional over the non-padding keys).
    fn attention(
        &mut self,
        env: &BTreeMap<String, Binding>,
        [q, k, v]: [&crate::syntax::ast::ExprArg; 3],
        h: &crate::syntax::ast::ExprArg,
        kv_heads: Option<usize>,
        hd: &crate::syntax::ast::ExprArg,
    ) -> R<Value> {
        let causal = kv_heads.is_some();
        let (q, k, v) = (
            self.expr(&q.value, env)?,
            self.expr(&k.value, env)?,
            self.expr(&v.value, env)?,
        );
        let heads = self.int(&h.value)?;
        let dims = AttnDims {
            batch: self.ir.batch,
            seq: self.ir.seq,
            heads,
            kv_heads: kv_heads.unwrap_or(heads),
            head_dim: self.int(&hd.value)?,
            causal,
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
        let mut ins = vec![q, k, v];
        if !causal {
            ins.push(self.input(Op::Lengths { seq: self.ir.seq }));
        }
        Ok((self.ir.add(Op::Attention(dims), &ins, outs, label), 0))
    }

    /// The integer input `op` (positions, token types, lengths), made once.
    fn input(&mut self, op: Op) -> Value {
        let (n, batch) = (self.ir.n(), self.ir.batch);
        let slot = match op {
            Op::Positions { .. } => &mut self.positions,
            Op::TokenTypes => &mut self.token_types,
            _ => &mut self.lengths,
        };
        if let Some(v) = *slot {
            return v;
        }
        let len = if matches!(op, Op::Lengths { .. }) { batch } else { n };
        let name = op.name();
        let v = (self.ir.add(op, &[], vec![TensorType::i64(&[len])], name), 0);
        match self.ir.graph[v.0].op {
            Op::Positions { .. } => self.positions = Some(v),
            Op::TokenTypes => self.token_types = Some(v),
            _ => self.lengths = Some(v),
        }
        v
    }

    /// The classification head on hidden states `h (n, d)`: pooling (through
    /// the family's `pooler` and tanh for `cls`, when it has one), the
    /// trainable classifier `(labels, d)` with its bias, and the loss.
    fn classify(mut self, h: Value, head: crate::spec::Head, with_grad: bool) -> R<Ir> {
        use crate::ir::HeadInit;
        let (n, batch, seq) = (self.ir.n(), self.ir.batch, self.ir.seq);
        let th = self.ty(h)?;
        let [rows, d] = th.shape[..] else {
            return err(format!(
                "the forward block returns {th}, expected hidden states f32[{n}, d]"
            ));
        };
        if rows != n {
            return err(format!(
                "the forward block returns {th}, expected hidden states f32[{n}, d]"
            ));
        }
        let mean = head.pool == crate::spec::Pool::Mean;
        let lengths = self.input(Op::Lengths { seq });
        let pooled_ty = TensorType::f32(&[batch, d]);
        let mut x = (
            self.ir
                .add(Op::Pool { seq, mean }, &[h, lengths], vec![pooled_ty.clone()], "pool"),
            0,
        );
        if !mean && let Some(&pm) = self.by_path.get("pooler") {
            x = self.module(pm, x)?;
            x = (self.ir.add(Op::Tanh, &[x], vec![pooled_ty], "pooler.tanh"), 0);
        }
        let labels = head.labels;
        let tensor = |b: &mut Self, name: &str, shape: Vec<usize>, init: HeadInit| {
            let p = b.ir.params.len();
            b.ir.params.push(ParamInfo {
                name: name.to_string(),
                shape,
                role: ParamRole::Head {
                    tensor: name.to_string(),
                    init,
                },
            });
            b.param(p)
        };
        let w = tensor(
            &mut self,
            "classifier.weight",
            vec![labels, d],
            HeadInit::Normal { std: 0.02 },
        );
        let bias = tensor(&mut self, "classifier.bias", vec![labels], HeadInit::Zeros);
        let lt = TensorType::f32(&[batch, labels]);
        let y = (self.ir.add(Op::Linear, &[x, w], vec![lt.clone()], "classifier"), 0);
        let logits = (
            self.ir
                .add(Op::BiasAdd, &[y, bias], vec![lt.clone()], "classifier.bias"),
            0,
        );
        let targets = self
            .ir
            .add(Op::ClassLabels, &[], vec![TensorType::i64(&[batch])], "labels");
        let mut outs = vec![TensorType::f32(&[1])];
        if with_grad {
            outs.push(lt);
        }
        let loss = self.ir.add(
            Op::ClassifyLoss { grad: with_grad },
            &[logits, (targets, 0)],
            outs,
            "loss",
        );
        self.ir.loss = Some((loss, 0));
        self.ir.logits = Some(logits);
        self.ir.head = Some(head);
        Ok(self.ir)
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
            ModuleKind::LayerNorm { dim, eps } => {
                if tx.shape != [n, dim as usize] {
                    return err(format!("layernorm `{label}` of {tx}, expected f32[{n}, {dim}]"));
                }
                let (w, b) = (self.weight(m), self.bias(m));
                let (w, b) = (self.param(w), self.param(b));
                let outs = vec![tx.clone(), TensorType::f32(&[n]), TensorType::f32(&[n])];
                Ok((self.ir.add(Op::LayerNorm { eps: F64(eps) }, &[x, w, b], outs, label), 0))
            }
            ModuleKind::Linear { d_in, d_out, bias } => {
                let y = self.linear(m, x, d_in, d_out)?;
                if !bias {
                    return Ok(y);
                }
                let b = self.bias(m);
                let b = self.param(b);
                let t = self.ty(y)?;
                Ok((self.ir.add(Op::BiasAdd, &[y, b], vec![t], format!("{label}.bias")), 0))
            }
        }
    }

    /// `x W^T` of linear module `m`, with its adapter's path when it has one.
    fn linear(&mut self, m: usize, x: Value, d_in: u64, d_out: u64) -> R<Value> {
        let label = self.spec.model.modules[m].path_string();
        let tx = self.ty(x)?;
        let n = tx.shape.first().copied().unwrap_or(0);
        {
            {
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
