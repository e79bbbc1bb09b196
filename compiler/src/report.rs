//! The `check` summary: what trains, what it costs, and the same for LoRA at the same ranks.
//!
//! Counts come from the method definitions (tensor shapes in `in`, `out`,
//! `r`), the freeze schedule and the train block's step count. Memory is for
//! float32 storage: base weights, every adapter tensor, and AdamW's two
//! moments for every tensor that trains at some point. A rule with
//! `rank auto(...)` is counted at its uniform rank r0 until the allocation,
//! which needs the weights, has run (`lamdac plan`).

use serde::Serialize;

use crate::schedule::Schedule;
use crate::spec::{RankChoice, ResolvedSpec};

/// Bytes per stored value (float32).
pub const BYTES_F32: u64 = 4;

/// Parameter counts of one module.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModuleReport {
    pub path: String,
    pub hf_name: String,
    pub method: String,
    pub rule: usize,
    pub rank: u64,
    pub d_in: u64,
    pub d_out: u64,
    /// Every adapter tensor, frozen ones included.
    pub adapter_params: u64,
    /// Entries that train at step 0.
    pub trainable_params: u64,
    /// Entries that train once the column-frozen tensor is fully frozen.
    pub trainable_params_after_freeze: u64,
    /// Sum over the run of trainable entries per step.
    pub param_updates: u64,
    /// LoRA at the same rank: r (d_in + d_out).
    pub lora_params: u64,
}

/// One rule's totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleReport {
    pub rule: usize,
    pub pattern: String,
    pub method: String,
    pub modules: usize,
    pub matched: usize,
    pub overridden: usize,
    pub excluded: usize,
    /// "64", "4..8", or "auto: r0 = 64 (budget 8192)".
    pub rank: String,
    pub rank_auto: Option<AutoReport>,
    pub alpha: Option<f64>,
    pub freeze_b: Option<String>,
    /// First step at which B is fully frozen.
    pub frozen_from_step: Option<u64>,
    pub trainable_params: u64,
    pub trainable_params_after_freeze: u64,
    pub param_updates: u64,
    pub lora_params: u64,
    pub lora_param_updates: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AutoReport {
    pub budget: u64,
    pub r0: u64,
    pub r_min: u64,
    /// The r_max term that replaces 4 r0, if given.
    pub r_max: Option<u64>,
    /// Always false in `check`: allocation needs the checkpoint's weights.
    pub allocated: bool,
}

/// The task head a classifier spec trains beside its adapters (`head classify`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeadReport {
    /// `classify`.
    pub kind: &'static str,
    pub labels: usize,
    /// `cls` (through the family's pooler when it has one) or `mean`.
    pub pool: &'static str,
    /// The classifier's input width (the model's hidden size).
    pub d_in: u64,
    /// Its weight `(labels, d_in)` and bias `(labels)`: every entry trains, every step.
    pub trainable_params: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    pub modules: usize,
    pub adapter_params: u64,
    /// The task head's parameters (0 without one); included in the trainable
    /// counts and updates below, for this spec and for LoRA alike.
    pub head_params: u64,
    pub trainable_params: u64,
    pub trainable_params_after_freeze: u64,
    pub param_updates: u64,
    pub lora_params: u64,
    pub lora_param_updates: u64,
    /// LoRA trainable / this spec's trainable at step 0.
    pub ratio_vs_lora: f64,
    /// ... once B is frozen.
    pub ratio_vs_lora_after_freeze: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryReport {
    pub dtype: &'static str,
    pub weights_bytes: u64,
    pub adapter_bytes: u64,
    /// The task head's tensors (0 without one).
    pub head_bytes: u64,
    pub optimizer_bytes: u64,
    pub total_bytes: u64,
    /// The same with LoRA at the same ranks.
    pub lora_adapter_bytes: u64,
    pub lora_optimizer_bytes: u64,
    pub lora_total_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelReport {
    pub name: String,
    pub family: String,
    pub source: String,
    pub base_params: u64,
    pub linear_modules: usize,
    /// Whether `train` runs this model (false for a shapes-only preset).
    pub trainable: bool,
    /// What training does with it, in words.
    pub trains: String,
}

/// Everything `lamdac check` prints (and `--format json` emits).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub model: ModelReport,
    pub steps: u64,
    /// The held-out data and when its loss is measured, in words (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    pub rules: Vec<RuleReport>,
    pub modules: Vec<ModuleReport>,
    /// The task head (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadReport>,
    pub totals: Totals,
    pub memory: MemoryReport,
}

/// Computes the report of a resolved spec.
pub fn report(spec: &ResolvedSpec) -> Report {
    let steps = spec.train.steps;
    let mut modules = Vec::new();
    for m in &spec.modules {
        let rule = &spec.rules[m.rule];
        let method = &rule.method;
        let env = method.env(m.d_in, m.d_out, m.rank, &rule.args);
        let mut adapter = 0;
        let mut always = 0; // trainable tensors other than the column-frozen one
        let mut col_tensor = None; // (rows, cols) of the column-frozen tensor
        for (i, t) in method.tensors.iter().enumerate() {
            let shape = method.shape(i, &env).unwrap_or_default();
            // sizes are bounded (crate::limits); saturate all the same
            let n: u64 = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
            adapter = n.saturating_add(adapter);
            if !t.trainable {
                continue;
            }
            match method.freeze {
                Some((f, _)) if f == i => col_tensor = Some((shape.first().copied().unwrap_or(0), m.rank)),
                _ => always = n.saturating_add(always),
            }
        }
        let schedule = rule.schedule.unwrap_or(Schedule::Never);
        let (rows, cols) = col_tensor.unwrap_or((0, 0));
        let step0 = always.saturating_add(rows.saturating_mul(cols - schedule.frozen_cols(0, steps, cols)));
        let after = if schedule == Schedule::Never { step0 } else { always };
        let updates = always
            .saturating_mul(steps)
            .saturating_add(rows.saturating_mul(schedule.trainable_column_steps(steps, cols)));
        modules.push(ModuleReport {
            path: m.path.clone(),
            hf_name: m.hf_name.clone(),
            method: method.name.clone(),
            rule: rule.number,
            rank: m.rank,
            d_in: m.d_in,
            d_out: m.d_out,
            adapter_params: adapter,
            trainable_params: step0,
            trainable_params_after_freeze: after,
            param_updates: updates,
            lora_params: m.rank.saturating_mul(m.d_in.saturating_add(m.d_out)),
        });
    }
    let rules: Vec<RuleReport> = spec
        .rules
        .iter()
        .map(|r| {
            let mine: Vec<&ModuleReport> = r.modules.iter().map(|&i| &modules[i]).collect();
            let sum = |f: fn(&ModuleReport) -> u64| mine.iter().map(|m| f(m)).fold(0u64, u64::saturating_add);
            let ranks: Vec<u64> = mine.iter().map(|m| m.rank).collect();
            let (lo, hi) = (
                ranks.iter().min().copied().unwrap_or(0),
                ranks.iter().max().copied().unwrap_or(0),
            );
            let (rank, rank_auto) = match r.rank {
                RankChoice::Fixed(_) if lo == hi => (lo.to_string(), None),
                RankChoice::Fixed(_) => (format!("{lo}..{hi}"), None),
                RankChoice::Auto { budget, min, max, r0 } => (
                    format!("auto: r0 = {r0} (budget {budget})"),
                    Some(AutoReport {
                        budget,
                        r0,
                        r_min: min.unwrap_or(1),
                        r_max: max,
                        allocated: false,
                    }),
                ),
            };
            let lora = sum(|m| m.lora_params);
            RuleReport {
                rule: r.number,
                pattern: r.pattern.clone(),
                method: r.method.name.clone(),
                modules: mine.len(),
                matched: r.matched,
                overridden: r.overridden,
                excluded: r.excluded,
                rank,
                rank_auto,
                alpha: r.args.get("alpha").and_then(|a| a.as_f64()),
                freeze_b: r.schedule.map(|s| s.to_string()),
                frozen_from_step: r.schedule.and_then(|s| s.all_frozen_from(steps)),
                trainable_params: sum(|m| m.trainable_params),
                trainable_params_after_freeze: sum(|m| m.trainable_params_after_freeze),
                param_updates: sum(|m| m.param_updates),
                lora_params: lora,
                lora_param_updates: lora.saturating_mul(steps),
            }
        })
        .collect();
    // The task head: a classifier (labels, hidden) with its bias, every entry
    // trained at every step (LoRA's twin trains the same head).
    let head = spec.train.head.map(|h| {
        let d_in = spec.model.param("hidden").and_then(|c| c.as_int()).unwrap_or(0).max(0) as u64;
        let labels = h.labels as u64;
        HeadReport {
            kind: "classify",
            labels: h.labels,
            pool: match h.pool {
                crate::spec::Pool::Cls => "cls",
                crate::spec::Pool::Mean => "mean",
            },
            d_in,
            trainable_params: labels.saturating_mul(d_in).saturating_add(labels),
        }
    });
    let head_params = head.as_ref().map_or(0, |h| h.trainable_params);
    let sum = |f: fn(&ModuleReport) -> u64| modules.iter().map(f).fold(0u64, u64::saturating_add);
    let trainable = sum(|m| m.trainable_params).saturating_add(head_params);
    let after = sum(|m| m.trainable_params_after_freeze).saturating_add(head_params);
    let lora = sum(|m| m.lora_params).saturating_add(head_params);
    let ratio = |x: u64| if x == 0 { 0.0 } else { lora as f64 / x as f64 };
    let totals = Totals {
        modules: modules.len(),
        adapter_params: sum(|m| m.adapter_params),
        head_params,
        trainable_params: trainable,
        trainable_params_after_freeze: after,
        param_updates: sum(|m| m.param_updates).saturating_add(head_params.saturating_mul(steps)),
        lora_params: lora,
        lora_param_updates: lora.saturating_mul(steps),
        ratio_vs_lora: ratio(trainable),
        ratio_vs_lora_after_freeze: ratio(after),
    };
    let base = spec.model.base_params();
    let weights_bytes = base.saturating_mul(BYTES_F32);
    let adapter_bytes = totals.adapter_params.saturating_mul(BYTES_F32);
    let head_bytes = head_params.saturating_mul(BYTES_F32);
    // AdamW keeps two moments for every entry of a tensor that trains at step 0.
    let optimizer_bytes = trainable.saturating_mul(2 * BYTES_F32);
    let lora_adapter_bytes = lora.saturating_sub(head_params).saturating_mul(BYTES_F32);
    let lora_optimizer_bytes = lora.saturating_mul(2 * BYTES_F32);
    let memory = MemoryReport {
        dtype: "f32",
        weights_bytes,
        adapter_bytes,
        head_bytes,
        optimizer_bytes,
        total_bytes: weights_bytes
            .saturating_add(adapter_bytes)
            .saturating_add(head_bytes)
            .saturating_add(optimizer_bytes),
        lora_adapter_bytes,
        lora_optimizer_bytes,
        lora_total_bytes: weights_bytes
            .saturating_add(lora_adapter_bytes)
            .saturating_add(head_bytes)
            .saturating_add(lora_optimizer_bytes),
    };
    let model = ModelReport {
        name: spec.model_name.clone(),
        family: spec.model.family.clone(),
        source: match &spec.model.source {
            crate::model::ModelSource::Preset(p) => format!("preset {p}"),
            crate::model::ModelSource::Checkpoint(p) => format!("checkpoint {}", p.display()),
        },
        base_params: base,
        linear_modules: spec
            .model
            .modules
            .iter()
            .filter(|m| matches!(m.kind, crate::model::ModuleKind::Linear { .. }))
            .count(),
        trainable: !spec.model.shapes_only(),
        trains: if spec.model.shapes_only() {
            format!(
                "no: shapes only (`shapes_only = true`): the {} family gives this model's module shapes, not its \
                 forward pass; `check` and `plan` work, `train` refuses it",
                spec.model.family
            )
        } else if let Some(h) = head.as_ref().filter(|_| modules.is_empty()) {
            format!(
                "an encoder: the task head `classify(labels = {}, pool = {})` alone, on the frozen encoder (no \
                 `adapt` rule: the baseline), on the cross-entropy of the labels",
                h.labels, h.pool
            )
        } else if let Some(h) = &head {
            format!(
                "an encoder: its adapters and the task head `classify(labels = {}, pool = {})` on the \
                 cross-entropy of the labels",
                h.labels, h.pool
            )
        } else {
            "a causal language model: its adapters on the next-token loss".into()
        },
    };
    let t = &spec.train;
    let when = match t.eval_every {
        Some(n) => format!("every {n} steps"),
        None => match t.checkpoint_every {
            Some(n) => format!("every {n} steps (at each checkpoint)"),
            None => "before the first step and after the last".into(),
        },
    };
    let validation = match (t.split, &t.eval_data) {
        (Some(f), _) => Some(format!(
            "split {f}: that share of the data is held out (never trained on); validation loss {when}"
        )),
        (None, Some(p)) => Some(format!("{}; validation loss {when}", p.display())),
        (None, None) => None,
    };
    Report {
        model,
        steps,
        validation,
        rules,
        modules,
        head,
        totals,
        memory,
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `6738415616` as `6.74B`.
pub fn short(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}K", x / 1e3)
    } else {
        n.to_string()
    }
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    let x = n as f64;
    const K: f64 = 1024.0;
    if x >= K * K * K {
        format!("{:.2} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.2} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{n} B")
    }
}

fn table(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c > 0 {
                line.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human-readable summary.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "model   {} = {} ({}): {} parameters, {} linear modules\n",
        r.model.name,
        r.model.source,
        r.model.family,
        short(r.model.base_params),
        r.model.linear_modules
    ));
    out.push_str(&format!("trains  {}\n", r.model.trains));
    out.push_str(&format!("run     {} optimizer steps\n", r.steps));
    if let Some(v) = &r.validation {
        out.push_str(&format!("valid   {v}\n"));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "rule".to_string(),
        "pattern".into(),
        "method".into(),
        "modules".into(),
        "rank".into(),
        "freeze_b".into(),
        "trainable@0".into(),
        "B frozen".into(),
        "updates".into(),
        "LoRA same r".into(),
        "LoRA/this".into(),
    ]];
    for rule in &r.rules {
        let frozen = match (rule.freeze_b.as_deref(), rule.frozen_from_step) {
            (None, _) => "-".to_string(),
            (Some(s), Some(t)) => format!("{s}, step {t}"),
            (Some(s), None) => s.to_string(),
        };
        rows.push(vec![
            rule.rule.to_string(),
            rule.pattern.clone(),
            rule.method.clone(),
            rule.modules.to_string(),
            rule.rank.clone(),
            frozen,
            thousands(rule.trainable_params),
            thousands(rule.trainable_params_after_freeze),
            short(rule.param_updates),
            thousands(rule.lora_params),
            ratio(rule.lora_params, rule.trainable_params_after_freeze),
        ]);
    }
    if let Some(h) = &r.head {
        let updates = h.trainable_params.saturating_mul(r.steps);
        rows.push(vec![
            "head".into(),
            "classifier".into(),
            h.kind.into(),
            "1".into(),
            "full".into(),
            "-".into(),
            thousands(h.trainable_params),
            thousands(h.trainable_params),
            short(updates),
            thousands(h.trainable_params),
            "-".into(),
        ]);
    }
    let t = &r.totals;
    rows.push(vec![
        "total".into(),
        String::new(),
        String::new(),
        t.modules.to_string(),
        String::new(),
        String::new(),
        thousands(t.trainable_params),
        thousands(t.trainable_params_after_freeze),
        short(t.param_updates),
        thousands(t.lora_params),
        ratio(t.lora_params, t.trainable_params_after_freeze),
    ]);
    let right = [false, false, false, true, false, false, true, true, true, true, true];
    out.push_str(&table(&rows, &right));
    out.push('\n');
    out.push_str(&format!(
        "trainable parameters: {} at step 0, {} once B is frozen (LoRA at the same ranks: {}, {} / {} more){}\n",
        thousands(t.trainable_params),
        thousands(t.trainable_params_after_freeze),
        thousands(t.lora_params),
        fmt_ratio(t.ratio_vs_lora),
        fmt_ratio(t.ratio_vs_lora_after_freeze),
        if t.head_params > 0 {
            format!("; each includes the head's {}", thousands(t.head_params))
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "parameter updates over {} steps: {} (LoRA: {})\n",
        r.steps,
        short(t.param_updates),
        short(t.lora_param_updates)
    ));
    let m = &r.memory;
    let (head, lora_head) = if m.head_bytes > 0 {
        (
            format!(" + head {}", bytes(m.head_bytes)),
            format!(" + {}", bytes(m.head_bytes)),
        )
    } else {
        (String::new(), String::new())
    };
    out.push_str(&format!(
        "memory ({}): weights {} + adapters {}{head} + optimizer state {} = {}   (LoRA: {} + {}{lora_head} + {} = {})\n",
        m.dtype,
        bytes(m.weights_bytes),
        bytes(m.adapter_bytes),
        bytes(m.optimizer_bytes),
        bytes(m.total_bytes),
        bytes(m.weights_bytes),
        bytes(m.lora_adapter_bytes),
        bytes(m.lora_optimizer_bytes),
        bytes(m.lora_total_bytes)
    ));
    for rule in &r.rules {
        if let Some(a) = &rule.rank_auto {
            out.push_str(&format!(
                "rule {}: rank auto(budget = {}) over {} modules; counted at the uniform r0 = {}. \
                 LaMDA++ allocation from the singular values needs the checkpoint's weights: `lamdac plan`.\n",
                rule.rule, a.budget, rule.modules, a.r0
            ));
        }
    }
    out
}

fn ratio(lora: u64, this: u64) -> String {
    if this == 0 {
        "-".to_string()
    } else {
        fmt_ratio(lora as f64 / this as f64)
    }
}

fn fmt_ratio(x: f64) -> String {
    if x == 0.0 { "-".to_string() } else { format!("{x:.1}x") }
}

/// Peak memory of one training step, from the compiled plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepMemory {
    pub batch: usize,
    pub seq: usize,
    pub weights_bytes: u64,
    pub adapter_bytes: u64,
    pub grad_bytes: u64,
    pub optimizer_bytes: u64,
    /// Largest sum of live activations.
    pub activation_peak_bytes: u64,
    /// Activations kept for backward in the first phase, and the adapters' share.
    pub saved_bytes: u64,
    pub saved_by_adapters_bytes: u64,
    /// ... once every B that freezes is frozen.
    pub saved_bytes_after_freeze: u64,
    pub saved_by_adapters_bytes_after_freeze: u64,
    pub total_bytes: u64,
}

/// Peak step memory of this spec and of the same spec with LoRA at the same ranks.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeakReport {
    pub this: StepMemory,
    pub lora: StepMemory,
}

fn step_memory(spec: &ResolvedSpec) -> Option<StepMemory> {
    let (batch, seq) = (spec.train.batch as usize, spec.train.seq as usize);
    let plan = crate::pipeline::compile(spec, batch, seq, None).ok()?;
    let m = plan.memory;
    Some(StepMemory {
        batch,
        seq,
        weights_bytes: m.weights,
        adapter_bytes: m.adapters,
        grad_bytes: m.grads,
        optimizer_bytes: m.optimizer,
        activation_peak_bytes: m.activations_peak,
        saved_bytes: m.saved,
        saved_by_adapters_bytes: m.saved_by_adapters,
        saved_bytes_after_freeze: m.saved_last_phase,
        saved_by_adapters_bytes_after_freeze: m.saved_by_adapters_last_phase,
        total_bytes: m.total_peak,
    })
}

/// The stdlib's LoRA method.
fn stdlib_lora() -> Option<std::sync::Arc<crate::adapter::Method>> {
    let (_, src) = crate::stdlib::FILES
        .iter()
        .find(|(n, _)| n.ends_with("adapters/lora.lamda"))?;
    let file = crate::syntax::parse_file(src).ok()?;
    file.items.iter().find_map(|i| match i {
        crate::syntax::ast::Item::Adapter(def) => crate::adapter::check_adapter(def, 0)
            .ok()
            .map(|(m, _)| std::sync::Arc::new(m)),
        _ => None,
    })
}

/// The same spec with every rule using LoRA (default alpha) at the same ranks.
pub fn lora_twin(spec: &ResolvedSpec) -> Option<ResolvedSpec> {
    let lora = stdlib_lora()?;
    let mut twin = spec.clone();
    for r in &mut twin.rules {
        r.method = lora.clone();
        r.args = lora
            .params
            .iter()
            .filter(|(n, _)| n != "r")
            .filter_map(|(n, d)| d.map(|d| (n.clone(), d)))
            .collect();
        r.schedule = None;
    }
    Some(twin)
}

/// Compiles the spec and its LoRA twin for the train block's batch and seq.
pub fn peak_memory(spec: &ResolvedSpec) -> Option<PeakReport> {
    Some(PeakReport {
        this: step_memory(spec)?,
        lora: step_memory(&lora_twin(spec)?)?,
    })
}

/// The peak-memory lines of the text summary.
pub fn render_peak(p: &PeakReport) -> String {
    let line = |name: &str, m: &StepMemory| {
        format!(
            "  {name:<5} weights {} + adapters {} + grads {} + optimizer {} + activations {} = {}\n        saved for backward {} (adapters {}){}\n",
            bytes(m.weights_bytes),
            bytes(m.adapter_bytes),
            bytes(m.grad_bytes),
            bytes(m.optimizer_bytes),
            bytes(m.activation_peak_bytes),
            bytes(m.total_bytes),
            bytes(m.saved_bytes),
            bytes(m.saved_by_adapters_bytes),
            if m.saved_by_adapters_bytes_after_freeze != m.saved_by_adapters_bytes {
                format!(
                    "; once B is frozen {} (adapters {})",
                    bytes(m.saved_bytes_after_freeze),
                    bytes(m.saved_by_adapters_bytes_after_freeze)
                )
            } else {
                String::new()
            }
        )
    };
    let mut out = format!(
        "estimated peak memory of a training step (batch {} x seq {}, f32, CPU plan):\n",
        p.this.batch, p.this.seq
    );
    out.push_str(&line("this", &p.this));
    out.push_str(&line("LoRA", &p.lora));
    out
}
