//! Classifiers evaluated (`lamdac eval` on a spec with `head classify`): each run's predictions on labelled data, and their metrics.
//!
//! A run is evaluated as the model it trained: its adapters merged into the
//! checkpoint's weights (`W + Delta W` as `lamdac merge` writes it: LaMDA
//! `alpha (B S - B0 S0) A`, LoRA `(alpha / r) B A`, float64, rounded once)
//! and its trained head (`classifier.weight`, `.bias` of its
//! `adapter.safetensors`), run through the spec's model with no adapter: one
//! compiled forward program serves every run, whichever spec trained it (a
//! head-only baseline, LaMDA, LoRA), as long as it trained this model with a
//! head of the same labels and pooling.
//!
//! Metrics ([`metrics`]), from the confusion matrix `C[true][predicted]`:
//! accuracy; F1 per class `2 tp / (2 tp + fp + fn)` (0 where that is 0 / 0);
//! macro F1, their mean over the classes that occur among the labels or the
//! predictions (scikit-learn's default); binary F1, label 1's F1, for two
//! labels; Matthews correlation in Gorodkin's multiclass form
//! `(c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))`
//! (`s` examples, `c` correct, `t_k` true and `p_k` predicted counts of k;
//! the usual MCC for two labels; 0 when a factor under the root is 0); and
//! the mean cross-entropy of the labels under the logits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lamda_compiler::diag::Code;
use lamda_compiler::ir::ParamRole;
use lamda_compiler::pipeline::{CompileError, Options, compile_with};
use lamda_compiler::plan::Plan;
use lamda_compiler::spec::{Pool, ResolvedSpec};
use serde::Serialize;

use crate::checkpoint::{CheckpointError, Weights};
use crate::data::{BatchConfig, Batcher, DataError, Dataset, Source};
use crate::export::{ExportError, LoraFactors, TrainedHead, lora_factors, trained_head};
use crate::init::{InitError, WeightSource, initialize};
use crate::train::{StepError, Trainer};

/// What can stop the evaluation of a classifier, each with a code and a hint.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("compiling the evaluation: {0}")]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The folder has no `adapter.safetensors`.
    #[error("`{}` does not exist: `{}` is not the output folder of a training run", .run.join("adapter.safetensors").display(), .run.display())]
    NoAdapter { run: PathBuf },
    /// The run does not fit the spec's model and head.
    #[error("run `{}` {problem}", .run.display())]
    RunMismatch { run: PathBuf, problem: String },
}

impl EvalError {
    /// The stable code.
    pub fn code(&self) -> Code {
        match self {
            EvalError::Checkpoint(e) => e.code(),
            EvalError::Data(e) => e.code(),
            EvalError::Compile(_) => Code::Compile,
            EvalError::Init(_) => Code::TrainInit,
            EvalError::Step(StepError::Data(e)) => e.code(),
            EvalError::Step(_) => Code::TrainStep,
            EvalError::Export(e) => e.code(),
            EvalError::NoAdapter { .. } => Code::ExportNoAdapter,
            EvalError::RunMismatch { .. } => Code::EvalRunMismatch,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            EvalError::Checkpoint(e) => e.hint(),
            EvalError::Data(e) => e.hint(),
            EvalError::Export(e) => e.hint(),
            EvalError::NoAdapter { .. } => "train first (`lamdac train FILE`), or pass the folder `train` wrote \
                 (its adapter.safetensors is written at every checkpoint)"
                .into(),
            EvalError::RunMismatch { .. } => "evaluate a run with a spec of the same model and the same \
                 `head classify(labels, pool)`; the runs compared side by side must all fit it"
                .into(),
            _ => String::new(),
        }
    }

    /// Exit code: 2 for I/O (`lamda::io`), 1 for everything about the input.
    pub fn exit_code(&self) -> u8 {
        if self.code() == Code::Io { 2 } else { 1 }
    }
}

/// Classification metrics of one model on one data set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Mean F1 over the classes that occur among labels or predictions.
    pub macro_f1: f64,
    /// F1 of label 1, for two labels; `None` otherwise.
    pub binary_f1: Option<f64>,
    /// Matthews correlation (Gorodkin's R_K).
    pub mcc: f64,
    /// `confusion[t][p]`: examples of label t predicted as p. // (labels, labels)
    pub confusion: Vec<Vec<u64>>,
}

/// The metrics of `(label, prediction)` pairs over `labels` classes (pairs
/// outside `0..labels` are not counted).
pub fn metrics(labels: usize, pairs: impl IntoIterator<Item = (usize, usize)>) -> Metrics {
    let mut c = vec![vec![0u64; labels]; labels];
    for (t, p) in pairs {
        if t < labels && p < labels {
            c[t][p] += 1;
        }
    }
    let s: u64 = c.iter().flatten().sum();
    let correct: u64 = (0..labels).map(|k| c[k][k]).sum();
    let t_k: Vec<u64> = c.iter().map(|row| row.iter().sum()).collect();
    let p_k: Vec<u64> = (0..labels).map(|k| c.iter().map(|row| row[k]).sum()).collect();
    let f1 = |k: usize| {
        let tp = c[k][k] as f64;
        let (fp, fn_) = ((p_k[k] - c[k][k]) as f64, (t_k[k] - c[k][k]) as f64);
        let d = 2.0 * tp + fp + fn_;
        if d == 0.0 { 0.0 } else { 2.0 * tp / d }
    };
    let present: Vec<usize> = (0..labels).filter(|&k| t_k[k] + p_k[k] > 0).collect();
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|&k| f1(k)).sum::<f64>() / present.len() as f64
    };
    let (sf, cf) = (s as f64, correct as f64);
    let pt: f64 = (0..labels).map(|k| p_k[k] as f64 * t_k[k] as f64).sum();
    let pp: f64 = p_k.iter().map(|&p| (p as f64).powi(2)).sum();
    let tt: f64 = t_k.iter().map(|&t| (t as f64).powi(2)).sum();
    let den = ((sf * sf - pp) * (sf * sf - tt)).sqrt();
    Metrics {
        examples: s as usize,
        correct: correct as usize,
        accuracy: if s == 0 { 0.0 } else { cf / sf },
        macro_f1,
        binary_f1: (labels == 2).then(|| f1(1)),
        mcc: if den == 0.0 { 0.0 } else { (cf * sf - pt) / den },
        confusion: c,
    }
}

/// One example as a run classified it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Position among the evaluated examples (0-based).
    pub index: usize,
    /// Its line in the data file (1-based).
    pub line: usize,
    pub label: usize,
    /// The most likely class (the first of equal logits).
    pub prediction: usize,
    pub correct: bool,
    /// Cross-entropy of the label, nats.
    pub nll: f64,
    /// (labels)
    pub logits: Vec<f32>,
}

/// One run evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEval {
    /// The run folder's name (its path where two share a name).
    pub model: String,
    pub run: PathBuf,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Mean cross-entropy of the labels, nats.
    pub mean_nll: f64,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// The evaluation model of a classifier spec: its model with no adapter and
/// its head, compiled once for the train block's batch and seq.
pub struct Classifier {
    plan: Plan,
    weights: Weights,
}

/// The base weights with a run's adapters merged in and its head: what
/// [`initialize`] reads for one run.
struct Merged<'a> {
    base: &'a Weights,
    /// By base tensor name (`<module>.weight`).
    deltas: BTreeMap<String, &'a LoraFactors>,
    head: &'a TrainedHead,
}

impl WeightSource for Merged<'_> {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        match name {
            "classifier.weight" => return Ok(self.head.weight.clone()),
            "classifier.bias" => return Ok(self.head.bias.clone()),
            _ => {}
        }
        let mut w = self.base.load(name, shape)?;
        if let Some(f) = self.deltas.get(name) {
            f.add_to(&mut w);
        }
        Ok(w)
    }

    fn contains(&self, name: &str) -> bool {
        matches!(name, "classifier.weight" | "classifier.bias") || self.base.contains(name)
    }
}

fn pool_name(p: Pool) -> &'static str {
    match p {
        Pool::Cls => "cls",
        Pool::Mean => "mean",
    }
}

impl Classifier {
    /// Compiles the evaluation of `spec` (which has a head) on the weights of
    /// the checkpoint folder `dir`.
    pub fn new(spec: &ResolvedSpec, dir: &Path) -> Result<Self, EvalError> {
        let mut bare = spec.clone();
        bare.rules.clear();
        bare.modules.clear();
        let plan = compile_with(
            &bare,
            spec.train.batch as usize,
            spec.train.seq as usize,
            None,
            Options {
                fuse: true,
                head_loss: true,
            },
        )?;
        Ok(Classifier {
            plan,
            weights: Weights::open(dir)?,
        })
    }

    /// The head the spec trains.
    fn head(&self) -> (usize, Pool) {
        self.plan.train.head.map_or((0, Pool::Cls), |h| (h.labels, h.pool))
    }

    /// Classifies the first `limit` examples of `data` (all without a
    /// limit) with the model the run in folder `run` trained.
    pub fn evaluate(&self, run: &Path, data: &Dataset, limit: Option<usize>) -> Result<RunEval, EvalError> {
        let adapter = run.join("adapter.safetensors");
        if !adapter.is_file() {
            return Err(EvalError::NoAdapter { run: run.to_path_buf() });
        }
        let mismatch = |problem: String| EvalError::RunMismatch {
            run: run.to_path_buf(),
            problem,
        };
        let (labels, pool) = self.head();
        let head = trained_head(&adapter)?
            .ok_or_else(|| mismatch("trained no head (`head classify`): it is not a classifier's run".into()))?;
        if head.labels != labels || head.pool != pool_name(pool) {
            return Err(mismatch(format!(
                "trained `head classify(labels = {}, pool = {})`, and the spec has `head classify(labels = {labels}, pool = {})`",
                head.labels,
                head.pool,
                pool_name(pool)
            )));
        }
        let factors = lora_factors(&adapter)?;
        let mut deltas = BTreeMap::new();
        for f in &factors {
            let name = format!("{}.weight", f.module);
            let fits = self.plan.params.iter().any(|p| {
                matches!(&p.role, ParamRole::Base { tensor } if *tensor == name) && p.shape == [f.d_out, f.d_in]
            });
            if !fits {
                return Err(mismatch(format!(
                    "adapted `{}` ({} x {}), which is not a linear layer of this spec's model",
                    f.module, f.d_out, f.d_in
                )));
            }
            deltas.insert(name, f);
        }
        for p in &self.plan.params {
            if matches!(p.role, ParamRole::Head { .. })
                && p.name == "classifier.weight"
                && p.shape != [labels, head.d_in]
            {
                return Err(mismatch(format!(
                    "trained a classifier of width {}, and this model's hidden size is {}",
                    head.d_in,
                    p.shape.get(1).copied().unwrap_or(0)
                )));
            }
        }
        let source = Merged {
            base: &self.weights,
            deltas,
            head: &head,
        };
        let params = initialize(&self.plan, &source, &BTreeMap::new())?;
        let Source::Classes { examples, .. } = &data.source else {
            return Err(EvalError::Data(DataError::ClassExample {
                path: data.path().to_path_buf(),
                line: 0,
                problem: "not classification data".into(),
            }));
        };
        let n = limit.unwrap_or(usize::MAX).min(examples.len());
        let batch = self.plan.batch;
        let cfg = BatchConfig {
            seq: self.plan.seq,
            batch,
            seed: 0,
            shuffle: Some(false),
        };
        let mut tr = Trainer::new(self.plan.clone(), params, Batcher::new(data.clone(), cfg)?);
        let mut predictions = Vec::with_capacity(n);
        for start in (0..n).step_by(batch) {
            let b = tr.data.next_batch();
            let logits = tr.evaluate(&b, true)?.logits.unwrap_or_default();
            for (r, &item) in b.items.iter().enumerate().take(n - start) {
                let row = logits.get(r * labels..(r + 1) * labels).unwrap_or_default().to_vec();
                let ex = &examples[item];
                let label = ex.label.max(0) as usize;
                let prediction = argmax(&row);
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                let lse = max + row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
                predictions.push(Prediction {
                    index: start + r,
                    line: ex.line,
                    label,
                    prediction,
                    correct: prediction == label,
                    nll: lse - row.get(label).map_or(f64::NAN, |&v| f64::from(v)),
                    logits: row,
                });
            }
        }
        let m = metrics(labels, predictions.iter().map(|p| (p.label, p.prediction)));
        let mean_nll = predictions.iter().map(|p| p.nll).sum::<f64>() / predictions.len().max(1) as f64;
        Ok(RunEval {
            model: run
                .file_name()
                .map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned()),
            run: run.to_path_buf(),
            metrics: m,
            mean_nll,
            predictions,
        })
    }
}

/// The index of the largest value (the first of equal ones).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The side-by-side table of `lamdac eval` for classifiers.
pub fn render_table(data: &str, evaluated: usize, labels: usize, runs: &[RunEval]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once(String::new())
            .chain(runs.iter().map(|r| r.model.clone()))
            .collect(),
    ];
    let mut row = |name: &str, f: &dyn Fn(&RunEval) -> String| {
        rows.push(std::iter::once(name.to_string()).chain(runs.iter().map(f)).collect());
    };
    row("accuracy", &|r| {
        format!(
            "{:.4} ({}/{})",
            r.metrics.accuracy, r.metrics.correct, r.metrics.examples
        )
    });
    row("macro F1", &|r| format!("{:.4}", r.metrics.macro_f1));
    if labels == 2 {
        row("binary F1 (label 1)", &|r| {
            format!("{:.4}", r.metrics.binary_f1.unwrap_or(0.0))
        });
    }
    row("MCC", &|r| format!("{:.4}", r.metrics.mcc));
    row("mean NLL", &|r| format!("{:.4}", r.mean_nll));
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{data}: {evaluated} examples, {labels} labels\n");
    for r in &rows {
        let mut line = format!("{:<w$}", r[0], w = widths[0]);
        for (c, cell) in r.iter().enumerate().skip(1) {
            line.push_str(&format!("  {cell:>w$}", w = widths[c]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Two labels, worked by hand: C = [[3, 1], [2, 4]] (rows true, columns
    /// predicted). Accuracy 7/10; label 1: tp 4, fp 1, fn 2, F1 8/11; label 0:
    /// tp 3, fp 2, fn 1, F1 6/9; MCC (3*4 - 1*2) / sqrt(4 * 6 * 5 * 5) = 10 / sqrt(600).
    #[test]
    fn binary_confusion_by_hand() {
        let pairs = [
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 0),
            (1, 1),
            (1, 1),
            (1, 1),
            (1, 1),
        ];
        let m = metrics(2, pairs);
        assert_eq!(m.confusion, vec![vec![3, 1], vec![2, 4]]);
        assert_eq!((m.examples, m.correct), (10, 7));
        assert!(close(m.accuracy, 0.7));
        assert!(close(m.binary_f1.unwrap(), 8.0 / 11.0));
        assert!(close(m.macro_f1, (8.0 / 11.0 + 6.0 / 9.0) / 2.0));
        assert!(close(m.mcc, 10.0 / 600f64.sqrt()), "{}", m.mcc);
    }

    /// Three labels, by hand: C = [[2, 1, 0], [0, 1, 1], [1, 0, 2]]: s = 8,
    /// c = 5, t = (3, 2, 3), p = (3, 2, 3); F1 = 2/3, 1/2, 2/3; R_K =
    /// (5*8 - (9 + 4 + 9)) / sqrt((64 - 22) (64 - 22)) = 18 / 42.
    #[test]
    fn multiclass_confusion_by_hand() {
        let pairs = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2), (2, 2)];
        let m = metrics(3, pairs);
        assert!(close(m.accuracy, 5.0 / 8.0));
        assert!(close(m.macro_f1, (2.0 / 3.0 + 0.5 + 2.0 / 3.0) / 3.0));
        assert_eq!(m.binary_f1, None);
        assert!(close(m.mcc, 18.0 / 42.0), "{}", m.mcc);
    }

    /// Degenerate cases: every prediction one class (MCC 0, not NaN), all
    /// correct (MCC 1), all wrong on two labels (MCC -1), a class absent
    /// from labels and predictions (left out of the macro F1), nothing.
    #[test]
    fn degenerate_confusions() {
        let m = metrics(2, [(0, 1), (1, 1), (1, 1)]);
        assert_eq!(m.mcc, 0.0);
        assert!(close(m.binary_f1.unwrap(), 0.8));
        assert!(close(m.macro_f1, 0.4), "label 0 has F1 0: {}", m.macro_f1);
        assert!(close(metrics(2, [(0, 0), (1, 1)]).mcc, 1.0));
        assert!(close(metrics(2, [(0, 1), (1, 0)]).mcc, -1.0));
        let m = metrics(3, [(0, 0), (1, 1)]);
        assert!(close(m.macro_f1, 1.0), "class 2 occurs nowhere: {}", m.macro_f1);
        let m = metrics(2, []);
        assert_eq!((m.examples, m.accuracy, m.mcc, m.macro_f1), (0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0]), 1);
        assert_eq!(argmax(&[1.0]), 0);
    }
}
