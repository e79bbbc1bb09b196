//! The resolved spec: what `check` establishes and every later phase consumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::adapter::Method;
use crate::consteval::Const;
use crate::model::ModelInstance;
use crate::schedule::Schedule;
use crate::syntax::ast::Span;

/// How a rule chooses ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankChoice {
    Fixed(u64),
    /// LaMDA++ (SEMANTICS §8): a rank budget over the rule's modules.
    /// `r0 = floor(budget / N)`; `min`/`max` replace r_min = 1 and the 4 r0 term.
    Auto {
        budget: u64,
        min: Option<u64>,
        max: Option<u64>,
        r0: u64,
    },
}

/// One `adapt` rule after resolution.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based position among the file's adapt rules.
    pub number: usize,
    pub pattern: String,
    pub span: Span,
    pub method: Arc<Method>,
    /// Method arguments other than `r` (alpha included), defaults applied.
    pub args: BTreeMap<String, Const>,
    pub rank: RankChoice,
    /// The effective freeze schedule of the method's column-frozen tensor, if it has one.
    pub schedule: Option<Schedule>,
    /// Modules the pattern matched (linear ones).
    pub matched: usize,
    /// ... of which a later rule took over.
    pub overridden: usize,
    /// ... of which an `exclude` removed.
    pub excluded: usize,
    /// Indices into [`ResolvedSpec::modules`] of the modules this rule adapts.
    pub modules: Vec<usize>,
}

/// A module that will carry an adapter.
#[derive(Debug, Clone)]
pub struct AdaptedModule {
    /// Index into [`ModelInstance::modules`].
    pub module: usize,
    /// Path below the model root, `layers[3].attn.q`.
    pub path: String,
    pub hf_name: String,
    pub d_in: u64,
    pub d_out: u64,
    /// Index into [`ResolvedSpec::rules`].
    pub rule: usize,
    /// The rank: fixed, or the uniform r0 of `rank auto` until allocation runs.
    pub rank: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedule {
    Constant,
    Cosine,
    Linear,
}

/// How a classification head reads a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The first token's hidden state, through the family's `pooler` when it
    /// has one (BERT: dense + tanh, as `BertForSequenceClassification`).
    Cls,
    /// The mean of the hidden states of the sequence's non-padding tokens.
    Mean,
}

/// The task head of an encoder: `head classify(labels = N, pool = cls)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Head {
    /// Classes of the classifier (its output size), >= 2.
    pub labels: usize,
    pub pool: Pool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

/// AdamW hyper-parameters (PyTorch semantics, SEMANTICS §6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The `train { ... }` block with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Data file, resolved against the spec's folder.
    pub data: Option<PathBuf>,
    /// Held-out data file for the validation loss, resolved against the spec's folder.
    pub eval_data: Option<PathBuf>,
    /// Share of the training data held out for the validation loss (0 < x < 1).
    pub split: Option<f64>,
    /// Validation loss every N steps (and before the first and after the
    /// last); `None`: at every checkpoint, before the first step and after the last.
    pub eval_every: Option<u64>,
    pub steps: u64,
    pub batch: u64,
    pub seq: u64,
    pub lr: f64,
    pub warmup: u64,
    pub schedule: LrSchedule,
    pub optimizer: AdamW,
    /// Max global gradient norm; `None`: no clipping.
    pub clip: Option<f64>,
    pub accumulate: u64,
    pub seed: u64,
    /// Checkpoint every N steps; `None`: only at the end.
    pub checkpoint_every: Option<u64>,
    /// Output folder, resolved against the spec's folder.
    pub out: Option<PathBuf>,
    pub device: Device,
    /// Stop after this many consecutive steps whose gradient is exactly zero
    /// (a collapsed model no longer learns); 0: never stop.
    pub stop_on_collapse: u64,
    /// The task head (`head classify(...)`): encoders train through it.
    pub head: Option<Head>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            eval_data: None,
            split: None,
            eval_every: None,
            steps: 1000,
            batch: 8,
            seq: 256,
            lr: 2e-4,
            warmup: 0,
            schedule: LrSchedule::Constant,
            optimizer: AdamW::default(),
            clip: None,
            accumulate: 1,
            seed: 0,
            checkpoint_every: None,
            out: None,
            device: Device::Auto,
            stop_on_collapse: 3,
            head: None,
        }
    }
}

/// A checked program: one model, its adapted modules, the training setup.
#[derive(Debug, Clone)]
pub struct ResolvedSpec {
    /// The name the rules use for the model (`llama2`, or a `use ... as` alias).
    pub model_name: String,
    pub model: ModelInstance,
    pub rules: Vec<Rule>,
    /// Adapted modules in model order.
    pub modules: Vec<AdaptedModule>,
    pub train: TrainConfig,
    /// Whether the file has a train block (else `train` holds defaults).
    pub has_train_block: bool,
}
