//! Export a trained adapter as a standard PEFT LoRA adapter, or merge it into the weights (SEMANTICS §9).
//!
//! LaMDA never changes A, so a trained module computes `x (W + alpha (B S - B0 S0) A)^T`:
//! exactly a rank-r LoRA update on the original checkpoint with
//! `lora_A = A`, `lora_B = alpha (B S - B0 S0)` (float64, rounded once) and a
//! PEFT scaling of 1 (`lora_alpha = r`). LoRA and LoRA-FA export as they
//! are (`lora_alpha = alpha`). Other methods (PiSSA changes both factors, so
//! its update has rank up to 2r) are refused with a pointer to `merge`.
//! `merge` writes a Hugging Face folder whose adapted weights are
//! `W + Delta W` (float64, rounded once); everything else is copied.
//!
//! A classifier run (`head classify`, an encoder) also owns its head: the
//! export is a PEFT `SEQ_CLS` adapter with the classifier in
//! `modules_to_save` (BertForSequenceClassification pools the CLS token
//! through its pooler, so a `pool = mean` head has no such form and is
//! refused), and `merge` writes a BertForSequenceClassification folder
//! (`bert.`-prefixed names, the trained `classifier.*`, `id2label` for its
//! labels in config.json).

use lamda_compiler::diag::Code;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::checkpoint::{CheckpointError, Dtype, SafetensorsFile, TensorRef, Weights, write_safetensors};
use crate::linalg::{LinalgError, MatF32, MatF32Ref, lora_export_b};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("`{path}` is not a lamdac adapter file: {msg}")]
    NotAnAdapter { path: PathBuf, msg: String },
    #[error("module `{module}` uses method `{method}`, which has no exact LoRA form (its update has rank above r)")]
    NotLora { module: String, method: String },
    #[error("`{module}`: {source}")]
    Linalg { module: String, source: LinalgError },
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A classifier with `pool = mean`: BertForSequenceClassification reads
    /// the CLS token through its pooler, so the head has no equivalent there.
    #[error(
        "the run's head pools the mean of the tokens (`pool = mean`); BertForSequenceClassification reads the \
         first token through its pooler, so it cannot hold this head"
    )]
    MeanPool,
    /// A head-only run has no adapted module: nothing for a PEFT LoRA adapter.
    #[error("the run trained its head only: it has no adapted module to export as a PEFT LoRA adapter")]
    HeadOnly,
}

impl ExportError {
    pub fn code(&self) -> Code {
        match self {
            ExportError::Checkpoint(e) => e.code(),
            ExportError::NotAnAdapter { .. } => Code::ExportNotAnAdapter,
            ExportError::NotLora { .. } => Code::ExportNotLora,
            ExportError::Linalg { .. } => Code::ExportLinalg,
            ExportError::Io { .. } => Code::Io,
            ExportError::MeanPool => Code::ExportMeanPool,
            ExportError::HeadOnly => Code::ExportHeadOnly,
        }
    }
    pub fn hint(&self) -> String {
        match self {
            ExportError::NotAnAdapter { .. } => {
                "pass the output folder of `lamdac train` (it holds adapter.safetensors)".into()
            }
            ExportError::NotLora { .. } => "use `lamdac merge` to write merged weights instead".into(),
            ExportError::MeanPool => "train with `head classify(labels = N, pool = cls)` to export for transformers; \
                 `lamdac eval` evaluates the mean-pool run as it is"
                .into(),
            ExportError::HeadOnly => "`lamdac merge` writes the model with its trained classifier \
                 (a BertForSequenceClassification folder)"
                .into(),
            ExportError::Checkpoint(e) => e.hint(),
            _ => String::new(),
        }
    }
}

/// One adapted module as `adapter.safetensors` describes it.
#[derive(Debug, Clone)]
struct Module {
    name: String,
    method: String,
    rank: usize,
    alpha: f64,
    d_in: usize,
    d_out: usize,
}

/// An exported module: `Delta W = scale * lora_B lora_A`.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// Hugging Face module name.
    pub module: String,
    /// (r, d_in)
    pub a: Vec<f32>,
    /// (d_out, r)
    pub b: Vec<f32>,
    pub rank: usize,
    pub d_in: usize,
    pub d_out: usize,
    /// PEFT's `lora_alpha`; the update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
}

impl LoraFactors {
    /// `w += (lora_alpha / r) B A` in float64, rounded once: the merged weight
    /// `W + Delta W` of this module. w: (d_out, d_in); a `w` of another length
    /// is left as it is (the caller checks shapes against the checkpoint).
    pub fn add_to(&self, w: &mut [f32]) {
        if w.len() != self.d_out * self.d_in {
            return;
        }
        let scale = self.lora_alpha / self.rank as f64;
        for i in 0..self.d_out {
            for j in 0..self.d_in {
                let mut acc = 0.0f64;
                for c in 0..self.rank {
                    acc += f64::from(self.b[i * self.rank + c]) * f64::from(self.a[c * self.d_in + j]);
                }
                let k = i * self.d_in + j;
                w[k] = (f64::from(w[k]) + scale * acc) as f32;
            }
        }
    }
}

fn modules(file: &SafetensorsFile, path: &Path) -> Result<Vec<Module>, ExportError> {
    let bad = |msg: &str| ExportError::NotAnAdapter {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let text = file
        .metadata()
        .get("lamdac.modules")
        .cloned()
        .ok_or_else(|| bad("no lamdac.modules metadata"))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let arr = json.as_array().ok_or_else(|| bad("lamdac.modules is not a list"))?;
    arr.iter()
        .map(|m| {
            let s = |k: &str| {
                m.get(k)
                    .and_then(Json::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(&format!("a module has no `{k}`")))
            };
            let n = |k: &str| {
                m.get(k)
                    .and_then(Json::as_u64)
                    .map(|v| v as usize)
                    .ok_or_else(|| bad(&format!("a module has no `{k}`")))
            };
            Ok(Module {
                name: s("module")?,
                method: s("method")?,
                rank: n("rank")?,
                alpha: m.get("alpha").and_then(Json::as_f64).unwrap_or(1.0),
                d_in: n("d_in")?,
                d_out: n("d_out")?,
            })
        })
        .collect()
}

/// The task head a classifier run trained (`head classify`), as its
/// `adapter.safetensors` holds it (metadata `lamdac.head` and the tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedHead {
    pub labels: usize,
    /// `cls` or `mean`.
    pub pool: String,
    /// The classifier's input width (the model's hidden size).
    pub d_in: usize,
    /// `classifier.weight`. // (labels, d_in)
    pub weight: Vec<f32>,
    /// `classifier.bias`. // (labels)
    pub bias: Vec<f32>,
}

/// The head of a run's `adapter.safetensors`; `None` for a run without one
/// (a causal LM's).
pub fn trained_head(adapter: &Path) -> Result<Option<TrainedHead>, ExportError> {
    let file = SafetensorsFile::open(adapter)?;
    read_head(&file, adapter)
}

fn read_head(file: &SafetensorsFile, path: &Path) -> Result<Option<TrainedHead>, ExportError> {
    let bad = |msg: String| ExportError::NotAnAdapter {
        path: path.to_path_buf(),
        msg,
    };
    let Some(text) = file.metadata().get("lamdac.head") else {
        if file.meta("classifier.weight").is_some() {
            return Err(bad(
                "it holds a classifier but no `lamdac.head` metadata (written before lamdac recorded the head; train again)".into(),
            ));
        }
        return Ok(None);
    };
    let json: Json = serde_json::from_str(text).map_err(|e| bad(format!("lamdac.head: {e}")))?;
    let labels = json
        .get("labels")
        .and_then(Json::as_u64)
        .ok_or_else(|| bad("lamdac.head has no `labels`".into()))? as usize;
    let pool = json
        .get("pool")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("lamdac.head has no `pool`".into()))?
        .to_string();
    let weight = file.f32("classifier.weight")?;
    let bias = file.f32("classifier.bias")?;
    let (ws, bs) = (weight.shape().to_vec(), bias.shape().to_vec());
    if ws.len() != 2 || ws[0] != labels || bs != [labels] {
        return Err(bad(format!(
            "the classifier is {ws:?} with bias {bs:?}, and lamdac.head says {labels} labels"
        )));
    }
    Ok(Some(TrainedHead {
        labels,
        pool,
        d_in: ws[1],
        weight: weight.iter().copied().collect(),
        bias: bias.iter().copied().collect(),
    }))
}

fn tensor(file: &SafetensorsFile, name: &str) -> Result<Vec<f32>, ExportError> {
    Ok(file.f32(name)?.iter().copied().collect())
}

/// The LoRA factors of every module of `adapter.safetensors`.
pub fn lora_factors(adapter: &Path) -> Result<Vec<LoraFactors>, ExportError> {
    let file = SafetensorsFile::open(adapter)?;
    let mut out = Vec::new();
    for m in modules(&file, adapter)? {
        let t = |x: &str| tensor(&file, &format!("{}.{x}", m.name));
        let lin = |source| ExportError::Linalg {
            module: m.name.clone(),
            source,
        };
        let (b, lora_alpha) = match m.method.as_str() {
            "lamda" => {
                let (b, s, b0) = (t("B")?, t("S")?, t("B.init")?);
                let bv = MatF32Ref::new("B", &b, m.d_out, m.rank).map_err(lin)?;
                let sv = MatF32Ref::new("S", &s, m.rank, m.rank).map_err(lin)?;
                let b0v = MatF32Ref::new("B0", &b0, m.d_out, m.rank).map_err(lin)?;
                let delta: MatF32 = lora_export_b(bv, sv, b0v, m.alpha).map_err(lin)?;
                (delta.into_data(), m.rank as f64)
            }
            "lora" | "lora_fa" => (t("B")?, m.alpha),
            other => {
                return Err(ExportError::NotLora {
                    module: m.name.clone(),
                    method: other.to_string(),
                });
            }
        };
        out.push(LoraFactors {
            module: m.name.clone(),
            a: t("A")?,
            b,
            rank: m.rank,
            d_in: m.d_in,
            d_out: m.d_out,
            lora_alpha,
        });
    }
    Ok(out)
}

/// Writes a PEFT LoRA adapter folder (`adapter_model.safetensors`,
/// `adapter_config.json`): `CAUSAL_LM`, or for a classifier run `SEQ_CLS`
/// with its head as `modules_to_save` (`base_model.model.classifier.weight`
/// and `.bias`, the names PEFT 0.21 saves and loads).
pub fn export_peft(adapter: &Path, base_model: &str, out: &Path) -> Result<Vec<LoraFactors>, ExportError> {
    let head = trained_head(adapter)?;
    let factors = lora_factors(adapter)?;
    if let Some(h) = &head {
        if h.pool != "cls" {
            return Err(ExportError::MeanPool);
        }
        if factors.is_empty() {
            return Err(ExportError::HeadOnly);
        }
    }
    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut tensors: BTreeMap<String, TensorRef<'_>> = BTreeMap::new();
    let shapes: Vec<([usize; 2], [usize; 2])> = factors.iter().map(|f| ([f.rank, f.d_in], [f.d_out, f.rank])).collect();
    for (f, (sa, sb)) in factors.iter().zip(&shapes) {
        tensors.insert(
            format!("base_model.model.{}.lora_A.weight", f.module),
            TensorRef::f32(sa, &f.a),
        );
        tensors.insert(
            format!("base_model.model.{}.lora_B.weight", f.module),
            TensorRef::f32(sb, &f.b),
        );
    }
    let head_shapes = head.as_ref().map(|h| ([h.labels, h.d_in], [h.labels]));
    if let (Some(h), Some((sw, sb))) = (&head, &head_shapes) {
        tensors.insert(
            "base_model.model.classifier.weight".into(),
            TensorRef::f32(sw, &h.weight),
        );
        tensors.insert("base_model.model.classifier.bias".into(), TensorRef::f32(sb, &h.bias));
    }
    write_safetensors(&out.join("adapter_model.safetensors"), &tensors, &BTreeMap::new())?;
    let r = factors.iter().map(|f| f.rank).max().unwrap_or(0);
    let alpha = factors.first().map_or(r as f64, |f| f.lora_alpha);
    let rank_pattern: BTreeMap<&str, usize> = factors
        .iter()
        .filter(|f| f.rank != r)
        .map(|f| (f.module.as_str(), f.rank))
        .collect();
    let alpha_pattern: BTreeMap<&str, f64> = factors
        .iter()
        .filter(|f| f.lora_alpha != alpha)
        .map(|f| (f.module.as_str(), f.lora_alpha))
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": if head.is_some() { "SEQ_CLS" } else { "CAUSAL_LM" },
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": factors.iter().map(|f| f.module.clone()).collect::<Vec<_>>(),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": if head.is_some() { json!(["classifier"]) } else { Json::Null },
        "layers_to_transform": null,
        "revision": null,
    });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    crate::train::state::write_atomic(&out.join("adapter_config.json"), text.as_bytes()).map_err(|e| {
        ExportError::Io {
            path: out.join("adapter_config.json"),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    Ok(factors)
}

/// Writes a Hugging Face folder with `W + Delta W` for every adapted module
/// (float64, rounded once) and every other tensor of `model_dir` as is. A
/// classifier run's folder is a BertForSequenceClassification: the
/// encoder's tensors under `bert.` (a bare BertModel's gain the prefix; its
/// integer `position_ids` buffer, which transformers recomputes, is left
/// out), the trained `classifier.weight` and `.bias`, and config.json with
/// that architecture and `id2label` / `label2id` for the head's labels.
pub fn merge(adapter: &Path, model_dir: &Path, out: &Path) -> Result<(), ExportError> {
    let head = trained_head(adapter)?;
    if head.as_ref().is_some_and(|h| h.pool != "cls") {
        return Err(ExportError::MeanPool);
    }
    let factors = lora_factors(adapter)?;
    let weights = Weights::open(model_dir)?;
    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    // a classifier over a bare BertModel (sentence-transformers) takes the prefix
    let prefix = if head.is_some() && !weights.names().any(|n| n.starts_with("bert.")) {
        "bert."
    } else {
        ""
    };
    let mut owned: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for name in weights.names().map(str::to_string).collect::<Vec<_>>() {
        let float = matches!(weights.meta(&name)?.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16);
        if head.is_some() && !float && name.ends_with("position_ids") {
            continue;
        }
        let t = weights.f32(&name)?;
        owned.insert(
            format!("{prefix}{name}"),
            (t.shape().to_vec(), t.iter().copied().collect()),
        );
    }
    if let Some(h) = &head {
        owned.insert("classifier.weight".into(), (vec![h.labels, h.d_in], h.weight.clone()));
        owned.insert("classifier.bias".into(), (vec![h.labels], h.bias.clone()));
    }
    for f in &factors {
        let key = format!("{}.weight", f.module);
        let Some((shape, w)) = owned.get_mut(&key) else {
            return Err(ExportError::Checkpoint(CheckpointError::MissingTensor {
                path: model_dir.to_path_buf(),
                name: key,
                close: Vec::new(),
            }));
        };
        if *shape != [f.d_out, f.d_in] {
            return Err(ExportError::Checkpoint(CheckpointError::WrongShape {
                path: model_dir.to_path_buf(),
                name: key,
                expected: vec![f.d_out, f.d_in],
                found: shape.clone(),
            }));
        }
        f.add_to(w);
    }
    let refs: BTreeMap<String, TensorRef<'_>> = owned
        .iter()
        .map(|(k, (s, v))| (k.clone(), TensorRef::f32(s, v)))
        .collect();
    write_safetensors(&out.join("model.safetensors"), &refs, &BTreeMap::new())?;
    if let Some(h) = &head {
        let src = model_dir.join("config.json");
        let text = std::fs::read_to_string(&src).map_err(|source| ExportError::Io {
            path: src.clone(),
            source,
        })?;
        let mut config: Json = serde_json::from_str(&text).map_err(|e| ExportError::Io {
            path: src.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if let Some(obj) = config.as_object_mut() {
            obj.insert("architectures".into(), json!(["BertForSequenceClassification"]));
            obj.insert(
                "id2label".into(),
                (0..h.labels)
                    .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                    .collect(),
            );
            obj.insert(
                "label2id".into(),
                (0..h.labels).map(|i| (format!("LABEL_{i}"), json!(i))).collect(),
            );
            obj.remove("num_labels");
        }
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        std::fs::write(out.join("config.json"), text).map_err(|source| ExportError::Io {
            path: out.join("config.json"),
            source,
        })?;
    }
    for extra in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "vocab.txt",
    ] {
        let src = model_dir.join(extra);
        if src.is_file() && !(head.is_some() && extra == "config.json") {
            std::fs::copy(&src, out.join(extra)).map_err(|source| ExportError::Io { path: src, source })?;
        }
    }
    Ok(())
}
