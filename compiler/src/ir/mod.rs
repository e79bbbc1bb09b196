//! The training-step IR: a petgraph `StableGraph` of ops over tensors with shapes on every value.
//!
//! A node is one op; it produces one or more values (`outputs`, each with a
//! [`TensorType`]). An edge `src -> dst` carries output `out` of `src` into
//! operand `arg` of `dst`. Node indices grow in creation order and every
//! builder creates a node after its operands, so index order is a
//! topological order; passes that remove nodes keep it (that is why the IR
//! uses `StableGraph`: `Graph::remove_node` would renumber).
//!
//! Parameters (base weights, residual weights, adapter tensors) live in a
//! side table ([`ParamInfo`]) and enter the graph through `Op::Param`.
//! `verify.rs` lists the invariants every pass must keep.

pub mod build;
pub mod edit;
pub mod print;
pub mod verify;
pub mod verify_program;

use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use crate::adapter::Init;
use crate::schedule::Schedule;

/// A node of the graph.
pub type NodeId = NodeIndex<u32>;

/// Index into [`Ir::params`].
pub type ParamId = usize;

/// A float attribute that can be hashed and compared exactly (by bits).
#[derive(Clone, Copy)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}
impl fmt::Debug for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Shapes of attention: `n = batch * seq` rows, heads of `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttnDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Query i sees keys j <= i; else every key of its sequence below the
    /// sequence's length (a `lengths (batch)` operand: the padding mask).
    pub causal: bool,
}

/// The closed set of operations. Adding one is a compile error in every
/// match that must handle it (shape rules, autodiff, the executor, the printer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    // ---- inputs
    /// Token ids of the micro-batch: i64 (n).
    Tokens,
    /// Labels (-100 = ignored): i64 (n).
    Labels,
    /// A parameter: its shape from the table.
    Param(ParamId),
    /// Position ids: i64 (n), row i holds `i % seq`.
    Positions { seq: usize },
    /// Token type (segment) ids of the micro-batch: i64 (n).
    TokenTypes,
    /// Tokens of each sequence that are not padding: i64 (batch); without
    /// padding every sequence has all `seq`.
    Lengths { seq: usize },
    /// The class of each sequence (-100 = ignored): i64 (batch).
    ClassLabels,
    // ---- forward
    /// (ids (n), table (vocab, d)) -> (n, d).
    Embedding,
    /// (x (n, d), w (d)) -> (y (n, d), rstd (n)).
    RmsNorm { eps: F64 },
    /// (x (n, d), w (d), b (d)) -> (y (n, d), mean (n), rstd (n)).
    LayerNorm { eps: F64 },
    /// (x (n, k), w (m, k)) -> x w^T (n, m).
    Linear,
    /// (x (n, k), b (k)) -> x + b, b added to every row.
    BiasAdd,
    /// (x) -> 0.5 x (1 + erf(x / sqrt 2)): the exact GELU.
    Gelu,
    /// (x) -> tanh x.
    Tanh,
    /// (h (batch * seq, d), lengths (batch)) -> (batch, d): the first row of
    /// each sequence, or with `mean` the mean of its first `lengths[b]` rows.
    Pool { seq: usize, mean: bool },
    /// (x) -> c x.
    Scale { c: F64 },
    /// (a, b) -> a + b, same shapes.
    Add,
    /// (a, b) -> a * b elementwise, same shapes.
    Mul,
    /// (x (n, k), v (k)) -> x diag(v) (n, k).
    ColScale,
    /// (x) -> x sigmoid(x).
    Silu,
    /// Rotate-half RoPE on heads of `head_dim`, positions `row % seq`: (x (n, h hd)) -> same.
    Rope { head_dim: usize, seq: usize, theta: F64 },
    /// Grouped-query attention: (q (n, H hd), k (n, KV hd), v (n, KV hd)
    /// [, lengths (batch) when not causal]) -> (o (n, H hd), lse (batch, H, seq)).
    Attention(AttnDims),
    /// Causal-LM cross-entropy: (logits (n, vocab), labels (n)) -> (loss (1)) and, with `grad`, dlogits (n, vocab).
    CrossEntropy { batch: usize, seq: usize, grad: bool },
    /// Cross-entropy against targets as given (negative = ignored), the
    /// classification loss: (logits (m, c), targets i64 (m)) -> (loss (1))
    /// and, with `grad`, dlogits (m, c) of the mean over counted rows.
    ClassifyLoss { grad: bool },
    // ---- backward
    /// (g (n, m), w (m, k)) -> g w (n, k).
    LinearGradInput,
    /// (g (n, m), x (n, k)) -> g^T x (m, k).
    LinearGradWeight,
    /// (g, x) -> g silu'(x).
    SiluGrad,
    /// (g, x) -> g gelu'(x).
    GeluGrad,
    /// (g, y) -> g (1 - y^2), y the output of `tanh`.
    TanhGrad,
    /// (g (n, d), x (n, d), w (d), mean (n), rstd (n)) -> dx (n, d).
    LayerNormGrad,
    /// (g (n, k)) -> the sum of its rows (k): the gradient of a bias.
    ColSum,
    /// (g (batch, d), lengths (batch)) -> (batch * seq, d): the gradient of `pool`.
    PoolGrad { seq: usize, mean: bool },
    /// (g (n, d), x (n, d), w (d), rstd (n)) -> dx (n, d).
    RmsNormGrad,
    /// (g (n, h hd)) -> the inverse rotation.
    RopeGrad { head_dim: usize, seq: usize, theta: F64 },
    /// (g (n, H hd), q, k, v, lse [, lengths when not causal]) -> (dq, dk, dv).
    AttentionGrad(AttnDims),
    /// (g (n, k), x (n, k)) -> sum over rows of g * x (k).
    ColScaleGrad,
    // ---- sinks
    /// Accumulates its operand into the gradient of a parameter.
    ParamGrad(ParamId),
    // ---- made by the fusion pass
    /// A generated kernel: operands are the kernel's read arguments
    /// ([`crate::kernel::Kernel::inputs`]) in order, outputs its written ones;
    /// scalar arguments are launch parameters the runtime supplies by name.
    Fused(std::sync::Arc<crate::kernel::Kernel>),
    /// (x (n, sum w)) -> column blocks (n, w_0), (n, w_1), ...
    Split { widths: Vec<usize> },
    /// (x_0 (n, w_0), x_1 (n, w_1), ...) -> (n, sum w).
    Concat { widths: Vec<usize> },
    /// (r (n, m), x (n, k), w (m, k)) -> r + x w^T: a residual add folded into the GEMM.
    LinearAdd,
    /// (labels (n)) -> i64 targets (n): `labels[i + 1]`, or -100 at the last position of a sequence.
    ShiftLabels { seq: usize },
    /// A view of `len` values of a parameter from value `start` on (a row block
    /// of a stacked weight: the stack is the only copy), shaped by the node.
    ParamSlice { param: ParamId, start: usize, len: usize },
    /// (x (n, k), w (sum w_i, k)) -> the column blocks of x w^T: (n, w_0),
    /// (n, w_1), ... A GEMM against a stacked weight whose product is only
    /// read by blocks (`split` of a `linear`, merged): a backend writes each
    /// block where it belongs instead of the whole product and a copy.
    LinearSplit { widths: Vec<usize> },
    /// (g_0 (n, w_0), ..., g_{m-1} (n, w_{m-1}), w (sum w_i, k)) ->
    /// [g_0, ..., g_{m-1}] w = sum_i g_i w_i (n, k), w_i the row blocks of w:
    /// the stacked backward GEMM without materialising the `concat`.
    LinearGradInputCat { widths: Vec<usize> },
    /// (h (n, d), w (vocab, d), targets i64 (n)) -> (loss (n), dh (n, d)):
    /// the LM head `h w^T` and the cross-entropy on targets already shifted,
    /// with the gradient of `grad_scale / count * sum loss` w.r.t. h, computed
    /// in chunks of rows so that the logits never exist whole. `w` is frozen.
    LinearCrossEntropy,
}

impl Op {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Tokens => "tokens",
            Op::Labels => "labels",
            Op::Param(_) => "param",
            Op::Positions { .. } => "positions",
            Op::TokenTypes => "token_types",
            Op::Lengths { .. } => "lengths",
            Op::ClassLabels => "class_labels",
            Op::LayerNorm { .. } => "layernorm",
            Op::BiasAdd => "bias_add",
            Op::Gelu => "gelu",
            Op::Tanh => "tanh",
            Op::Pool { .. } => "pool",
            Op::ClassifyLoss { .. } => "classify_loss",
            Op::GeluGrad => "gelu_grad",
            Op::TanhGrad => "tanh_grad",
            Op::LayerNormGrad => "layernorm_grad",
            Op::ColSum => "col_sum",
            Op::PoolGrad { .. } => "pool_grad",
            Op::Embedding => "embedding",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::Linear => "linear",
            Op::Scale { .. } => "scale",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::ColScale => "col_scale",
            Op::Silu => "silu",
            Op::Rope { .. } => "rope",
            Op::Attention(_) => "attention",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::LinearGradInput => "linear_grad_input",
            Op::LinearGradWeight => "linear_grad_weight",
            Op::SiluGrad => "silu_grad",
            Op::RmsNormGrad => "rmsnorm_grad",
            Op::RopeGrad { .. } => "rope_grad",
            Op::AttentionGrad(_) => "attention_grad",
            Op::ColScaleGrad => "col_scale_grad",
            Op::ParamGrad(_) => "param_grad",
            Op::Fused(_) => "fused",
            Op::Split { .. } => "split",
            Op::Concat { .. } => "concat",
            Op::LinearAdd => "linear_add",
            Op::ShiftLabels { .. } => "shift_labels",
            Op::ParamSlice { .. } => "param_slice",
            Op::LinearSplit { .. } => "linear_split",
            Op::LinearGradInputCat { .. } => "linear_grad_input_cat",
            Op::LinearCrossEntropy => "linear_cross_entropy",
        }
    }
    /// Number of operands.
    pub fn arity(&self) -> usize {
        match self {
            Op::Tokens
            | Op::Labels
            | Op::Positions { .. }
            | Op::TokenTypes
            | Op::Lengths { .. }
            | Op::ClassLabels
            | Op::Param(_)
            | Op::ParamSlice { .. } => 0,
            Op::Scale { .. }
            | Op::Gelu
            | Op::Tanh
            | Op::ColSum
            | Op::Silu
            | Op::Rope { .. }
            | Op::RopeGrad { .. }
            | Op::ParamGrad(_)
            | Op::Split { .. }
            | Op::ShiftLabels { .. } => 1,
            Op::Fused(k) => k.inputs().len(),
            Op::Concat { widths } => widths.len(),
            Op::LinearGradInputCat { widths } => widths.len() + 1,
            Op::LinearAdd => 3,
            Op::Embedding
            | Op::RmsNorm { .. }
            | Op::Linear
            | Op::LinearSplit { .. }
            | Op::Add
            | Op::Mul
            | Op::ColScale
            | Op::CrossEntropy { .. }
            | Op::LinearGradInput
            | Op::LinearGradWeight
            | Op::SiluGrad
            | Op::GeluGrad
            | Op::TanhGrad
            | Op::BiasAdd
            | Op::Pool { .. }
            | Op::PoolGrad { .. }
            | Op::ClassifyLoss { .. }
            | Op::ColScaleGrad => 2,
            Op::LinearCrossEntropy | Op::LayerNorm { .. } => 3,
            Op::Attention(d) => 3 + usize::from(!d.causal),
            Op::RmsNormGrad => 4,
            Op::AttentionGrad(d) => 5 + usize::from(!d.causal),
            Op::LayerNormGrad => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    I64,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::I64 => 8,
        }
    }
}

/// The type of a value: element type and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorType {
    pub fn f32(shape: &[usize]) -> Self {
        TensorType {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
        }
    }
    pub fn i64(shape: &[usize]) -> Self {
        TensorType {
            dtype: Dtype::I64,
            shape: shape.to_vec(),
        }
    }
    /// Elements (saturating: sizes are bounded long before this could
    /// overflow, see [`crate::limits`], and a saturated count still says
    /// "too large" downstream instead of wrapping to a small one).
    pub fn numel(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }
    pub fn bytes(&self) -> u64 {
        self.numel().saturating_mul(self.dtype.bytes())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = match self.dtype {
            Dtype::F32 => "f32",
            Dtype::I64 => "i64",
        };
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        write!(f, "{dt}[{}]", dims.join(", "))
    }
}

/// One node: an op, the types of its outputs, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub outputs: Vec<TensorType>,
    /// What the node computes, for the text form: `layers[0].attn.q`, `loss`.
    pub label: String,
    /// The adapted module (index into [`Ir::adapters`]) whose subgraph this node
    /// belongs to, for the memory plan's attribution of saved activations.
    pub adapter: Option<usize>,
    /// Made by autodiff: part of the backward program.
    pub backward: bool,
}

/// Output `out` of the source node feeds operand `arg` of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub out: u8,
    pub arg: u8,
}

/// A value: output `.1` of node `.0`.
pub type Value = (NodeId, u8);

/// What a parameter is, and where its values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamRole {
    /// A frozen base weight, read from the checkpoint tensor of this name.
    Base { tensor: String },
    /// A frozen base weight replaced by `W - path(init)` of adapter `adapter`.
    Residual { tensor: String, adapter: usize },
    /// An adapter tensor.
    Adapter {
        adapter: usize,
        tensor: String,
        init: Init,
        trainable: bool,
        column_frozen: bool,
    },
    /// A trainable tensor of the task head (full rank): the classifier's
    /// weight or bias, read from the checkpoint tensor of this name when it
    /// has one, else initialised as `init` says.
    Head { tensor: String, init: HeadInit },
    /// Frozen parameters stacked by rows (made by fusion: one GEMM for several).
    Concat { parts: Vec<ParamId> },
    /// A constant table the runtime computes.
    Table(TableKind),
}

/// How a head tensor starts when the checkpoint does not have it (as
/// transformers' `_init_weights`: normal weights, zero biases).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadInit {
    /// Normal(0, std), from the run's seed.
    Normal {
        std: f64,
    },
    Zeros,
}

/// Constant tables of fused kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TableKind {
    /// cos of RoPE angles: (seq, head_dim / 2).
    RopeCos { seq: usize, head_dim: usize, theta: f64 },
    /// sin of RoPE angles: (seq, head_dim / 2).
    RopeSin { seq: usize, head_dim: usize, theta: f64 },
}

/// A parameter of the step: name (unique), shape, role.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// `model.layers.0.self_attn.q_proj.S` for adapter tensors, the checkpoint
    /// name for base weights.
    pub name: String,
    pub shape: Vec<usize>,
    pub role: ParamRole,
}

impl ParamInfo {
    pub fn trainable(&self) -> bool {
        matches!(
            self.role,
            ParamRole::Adapter { trainable: true, .. } | ParamRole::Head { .. }
        )
    }
    pub fn numel(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }
    /// A tensor the run owns, not the base model: an adapter tensor or the
    /// task head (checkpoints and adapter.safetensors hold these).
    pub fn owned_by_run(&self) -> bool {
        matches!(self.role, ParamRole::Adapter { .. } | ParamRole::Head { .. })
    }
}

/// One factor of a path term (see [`crate::adapter::Factor`]), with its parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathFactor {
    Matrix(ParamId),
    Diag(ParamId),
}

/// `coeff * F_1 @ ... @ F_k @ x`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathTerm {
    pub coeff: f64,
    pub chain: Vec<PathFactor>,
}

/// An adapted module as the runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// Hugging Face module name, `model.layers.0.self_attn.q_proj`.
    pub hf_name: String,
    /// Path below the model root, `layers[0].attn.q`.
    pub path: String,
    pub method: String,
    pub rank: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub alpha: Option<f64>,
    /// The base weight (frozen; residual or original).
    pub base: ParamId,
    /// The adapter's tensors, in declaration order.
    pub tensors: Vec<ParamId>,
    pub terms: Vec<PathTerm>,
    /// Whether the base weight is replaced by `W - path(init)`.
    pub residual: bool,
    /// The column-frozen tensor and its schedule.
    pub column_frozen: Option<(ParamId, Schedule)>,
}

/// The graph with its side tables.
#[derive(Debug, Clone)]
pub struct Ir {
    pub graph: StableGraph<Node, Edge>,
    pub params: Vec<ParamInfo>,
    pub adapters: Vec<AdapterInfo>,
    /// Sequences per micro-batch and tokens per sequence; n = batch * seq rows.
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    /// The loss (1) of the step.
    pub loss: Option<Value>,
    /// The logits (n, vocab), or a classifier's (batch, labels).
    pub logits: Option<Value>,
    /// The task head of an encoder (`None`: causal LM).
    pub head: Option<crate::spec::Head>,
}

impl Ir {
    pub fn new(batch: usize, seq: usize, vocab: usize) -> Self {
        Ir {
            graph: StableGraph::new(),
            params: Vec::new(),
            adapters: Vec::new(),
            batch,
            seq,
            vocab,
            loss: None,
            logits: None,
            head: None,
        }
    }
    pub fn n(&self) -> usize {
        self.batch * self.seq
    }
    /// Adds a node with its operands (in operand order).
    pub fn add(&mut self, op: Op, inputs: &[Value], outputs: Vec<TensorType>, label: impl Into<String>) -> NodeId {
        self.add_tagged(op, inputs, outputs, label, None)
    }
    pub fn add_tagged(
        &mut self,
        op: Op,
        inputs: &[Value],
        outputs: Vec<TensorType>,
        label: impl Into<String>,
        adapter: Option<usize>,
    ) -> NodeId {
        let id = self.graph.add_node(Node {
            op,
            outputs,
            label: label.into(),
            adapter,
            backward: false,
        });
        for (arg, &(src, out)) in inputs.iter().enumerate() {
            self.graph.add_edge(src, id, Edge { out, arg: arg as u8 });
        }
        id
    }
    /// Adds a node of the backward program (see [`Ir::add_tagged`]).
    pub fn add_backward(
        &mut self,
        op: Op,
        inputs: &[Value],
        outputs: Vec<TensorType>,
        label: impl Into<String>,
        adapter: Option<usize>,
    ) -> NodeId {
        let id = self.add_tagged(op, inputs, outputs, label, adapter);
        self.graph[id].backward = true;
        id
    }
    /// The operands of a node, in operand order.
    pub fn inputs(&self, id: NodeId) -> Vec<Value> {
        let mut v: Vec<(u8, Value)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (e.weight().arg, (e.source(), e.weight().out)))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v.into_iter().map(|(_, val)| val).collect()
    }
    /// The type of a value.
    pub fn ty(&self, v: Value) -> Option<&TensorType> {
        self.graph.node_weight(v.0)?.outputs.get(v.1 as usize)
    }
    /// Node ids in index order, which is a topological order (see the module doc).
    pub fn order(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.graph.node_indices().collect();
        ids.sort();
        ids
    }
    /// The node that loads a parameter, creating it on first use.
    pub fn param_node(&mut self, p: ParamId) -> NodeId {
        if let Some(id) = self.graph.node_indices().find(|&i| self.graph[i].op == Op::Param(p)) {
            return id;
        }
        let ty = TensorType::f32(&self.params[p].shape);
        let label = self.params[p].name.clone();
        self.add(Op::Param(p), &[], vec![ty], label)
    }
}
