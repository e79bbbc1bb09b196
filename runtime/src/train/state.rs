//! Checkpoints of a run (written atomically, resumed bit for bit) and the adapter file.
//!
//! A checkpoint is a folder `checkpoints/step-NNNNNN/` with `state.safetensors`
//! (every adapter tensor, and for trainable ones their AdamW moments) and
//! `state.json` (the step, per-tensor AdamW step counters, the data position,
//! the losses so far, a hash of the spec, and a checksum of
//! `state.safetensors`). It is written into a hidden
//! temporary folder and renamed into place, then `checkpoints/latest` (one
//! line: the folder name) is replaced atomically; the two newest checkpoints
//! are kept. Base and residual weights are not stored: they are recomputed
//! from the model checkpoint, deterministically, when a run resumes.
//!
//! [`load`] trusts nothing it reads: the step must lie within the run and
//! agree with the saved losses and the folder's name, every trainable tensor
//! needs its AdamW counter (at most the step), the tensors must match the
//! checksum, and `checkpoints/latest` must name a checkpoint folder inside
//! `checkpoints/` ([`locate`]); anything else is `lamda::resume::invalid`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Trainer;
use crate::checkpoint::{CheckpointError, SafetensorsFile, TensorRef, write_safetensors};
use crate::data::BatcherState;

/// Version of the checkpoint layout (2: `state.json` holds `state_checksum`).
pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not a lamdac checkpoint: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("`{path}` was written for another spec or model ({msg}); resume with the same .lamda file and checkpoint")]
    Mismatch { path: PathBuf, msg: String },
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMeta {
    pub format: u32,
    /// The next step to run.
    pub step: u64,
    pub total_steps: u64,
    /// Hash of the spec and model this run was started with.
    pub spec_hash: String,
    /// AdamW step counter of every trainable tensor.
    pub adam_steps: BTreeMap<String, u64>,
    pub batcher: BatcherState,
    /// Loss of every step run so far.
    pub losses: Vec<f32>,
    /// FNV-1a (64-bit, hex) of the bytes of `state.safetensors`.
    pub state_checksum: String,
}

/// FNV-1a, 64 bit, of `bytes`, as 16 hex digits.
pub fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, text: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Saves the trainer's state under `root` (the run's `checkpoints/` folder).
pub fn save(tr: &Trainer, root: &Path, spec_hash: &str, losses: &[f32]) -> Result<PathBuf, StateError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let name = format!("step-{:06}", tr.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut tensors: BTreeMap<String, TensorRef<'_>> = BTreeMap::new();
    let mut adam_steps = BTreeMap::new();
    for (i, p) in tr.plan.params.iter().enumerate() {
        if !p.owned_by_run() {
            continue;
        }
        tensors.insert(p.name.clone(), TensorRef::f32(&p.shape, &tr.params[i]));
        if !tr.grads[i].is_empty() {
            tensors.insert(
                format!("{}.exp_avg", p.name),
                TensorRef::f32(&p.shape, &tr.adam[i].exp_avg),
            );
            tensors.insert(
                format!("{}.exp_avg_sq", p.name),
                TensorRef::f32(&p.shape, &tr.adam[i].exp_avg_sq),
            );
            adam_steps.insert(p.name.clone(), tr.adam[i].step);
        }
    }
    let state_file = tmp.join("state.safetensors");
    write_safetensors(&state_file, &tensors, &BTreeMap::new())?;
    let state_checksum = checksum(&std::fs::read(&state_file).map_err(io(&state_file))?);
    let meta = StateMeta {
        format: FORMAT,
        step: tr.step,
        total_steps: tr.total_steps(),
        spec_hash: spec_hash.to_string(),
        adam_steps,
        batcher: tr.data.state(),
        losses: losses.to_vec(),
        state_checksum,
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| StateError::Invalid {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    write_atomic(&tmp.join("state.json"), &json)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    write_atomic(&root.join("latest"), format!("{name}\n").as_bytes())?;
    prune(root, 2);
    Ok(dir)
}

/// Removes all but the newest `keep` checkpoints (best effort).
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    dirs.sort();
    let n = dirs.len().saturating_sub(keep);
    for d in dirs.into_iter().take(n) {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The checkpoint folder `path` names: a checkpoint itself, a `checkpoints/`
/// folder, or a run's output folder (its `checkpoints/latest`). `latest` must
/// name a `step-N` folder next to it: not a path, not `..`.
pub fn locate(path: &Path) -> Result<PathBuf, StateError> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        let latest = root.join("latest");
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(io(&latest))?;
            let name = name.trim();
            let plain = name.starts_with("step-")
                && !name.contains(['/', '\\'])
                && matches!(
                    Path::new(name).components().collect::<Vec<_>>().as_slice(),
                    [std::path::Component::Normal(_)]
                );
            if !plain {
                return Err(StateError::Invalid {
                    path: latest,
                    msg: format!("it names `{name}`, not a checkpoint folder `step-NNNNNN` inside `checkpoints/`"),
                });
            }
            let dir = root.join(name);
            if dir.join("state.json").is_file() {
                return Ok(dir);
            }
            return Err(StateError::Invalid {
                path: latest,
                msg: format!("it names `{name}`, which holds no state.json"),
            });
        }
    }
    Err(StateError::Invalid {
        path: path.to_path_buf(),
        msg: "no state.json here and no checkpoints/latest (pass the run's output folder or a checkpoint folder)"
            .into(),
    })
}

/// The run folder a checkpoint folder belongs to (`<run>/checkpoints/step-N`),
/// if it sits in one.
pub fn run_folder(checkpoint: &Path) -> Option<PathBuf> {
    let root = checkpoint.parent()?;
    (root.file_name()? == "checkpoints").then(|| root.parent().map(Path::to_path_buf))?
}

/// Restores a trainer from checkpoint folder `dir`; returns the losses so far.
pub fn load(tr: &mut Trainer, dir: &Path, spec_hash: &str) -> Result<Vec<f32>, StateError> {
    let meta_path = dir.join("state.json");
    let text = std::fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
    let meta: StateMeta = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
        path: meta_path.clone(),
        msg: e.to_string(),
    })?;
    if meta.format != FORMAT {
        return Err(StateError::Invalid {
            path: meta_path,
            msg: format!("format {} (this lamdac reads {FORMAT})", meta.format),
        });
    }
    if meta.spec_hash != spec_hash {
        return Err(StateError::Mismatch {
            path: meta_path,
            msg: "the spec or the model differs".into(),
        });
    }
    if meta.total_steps != tr.total_steps() {
        return Err(StateError::Mismatch {
            path: meta_path,
            msg: format!("it runs {} steps, this run {}", meta.total_steps, tr.total_steps()),
        });
    }
    let invalid = |msg: String| StateError::Invalid {
        path: meta_path.clone(),
        msg,
    };
    if meta.step > meta.total_steps {
        return Err(invalid(format!(
            "step {} is past the end of the run ({} steps)",
            meta.step, meta.total_steps
        )));
    }
    if meta.losses.len() as u64 != meta.step {
        return Err(invalid(format!(
            "step {} disagrees with the {} losses saved",
            meta.step,
            meta.losses.len()
        )));
    }
    if let Some(n) = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok())
        && n != meta.step
    {
        return Err(invalid(format!(
            "step {} disagrees with the folder's name (step {n})",
            meta.step
        )));
    }
    for (i, p) in tr.plan.params.iter().enumerate() {
        if p.owned_by_run() && !tr.grads[i].is_empty() {
            match meta.adam_steps.get(&p.name) {
                None => return Err(invalid(format!("`adam_steps` has no counter for `{}`", p.name))),
                Some(&c) if c > meta.step => {
                    return Err(invalid(format!(
                        "the AdamW counter of `{}` ({c}) is past the step ({})",
                        p.name, meta.step
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let state_path = dir.join("state.safetensors");
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    let sum = checksum(&bytes);
    if sum != meta.state_checksum {
        return Err(StateError::Invalid {
            path: state_path,
            msg: format!(
                "its checksum is {sum}, state.json recorded {} (the file was changed or damaged)",
                meta.state_checksum
            ),
        });
    }
    let file = SafetensorsFile::from_bytes(&state_path, bytes)?;
    for i in 0..tr.plan.params.len() {
        let p = tr.plan.params[i].clone();
        if !p.owned_by_run() {
            continue;
        }
        tr.params[i] = read(&file, &p.name, tr.params[i].len())?;
        if !tr.grads[i].is_empty() {
            tr.adam[i].exp_avg = read(&file, &format!("{}.exp_avg", p.name), tr.params[i].len())?;
            tr.adam[i].exp_avg_sq = read(&file, &format!("{}.exp_avg_sq", p.name), tr.params[i].len())?;
            tr.adam[i].step = meta.adam_steps.get(&p.name).copied().unwrap_or_default();
        }
    }
    tr.data.restore(&meta.batcher).map_err(|e| StateError::Mismatch {
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    tr.step = meta.step;
    Ok(meta.losses)
}

fn read(file: &SafetensorsFile, name: &str, len: usize) -> Result<Vec<f32>, StateError> {
    let v: Vec<f32> = file.f32(name)?.iter().copied().collect();
    if v.len() != len {
        return Err(StateError::Invalid {
            path: file.path().to_path_buf(),
            msg: format!("`{name}` has {} values, the plan {len}", v.len()),
        });
    }
    Ok(v)
}

/// Writes `adapter.safetensors`: every adapter tensor as `<module>.<tensor>`,
/// the initial value of every trainable one as `<module>.<tensor>.init` (what
/// export needs: `lora_B = alpha (B S - B0 S0)`), per-module metadata
/// (`lamdac.modules`) and, for a classifier, its task head's tensors
/// (`classifier.weight`, `.bias`) with `lamdac.head` (labels, pool).
pub fn write_adapter(
    tr: &Trainer,
    init: &BTreeMap<usize, Vec<f32>>,
    path: &Path,
    spec: &str,
) -> Result<(), StateError> {
    let mut tensors: BTreeMap<String, TensorRef<'_>> = BTreeMap::new();
    for (i, p) in tr.plan.params.iter().enumerate() {
        if p.owned_by_run() {
            tensors.insert(p.name.clone(), TensorRef::f32(&p.shape, &tr.params[i]));
            if let Some(v) = init.get(&i) {
                tensors.insert(format!("{}.init", p.name), TensorRef::f32(&p.shape, v));
            }
        }
    }
    let modules: Vec<serde_json::Value> = tr
        .plan
        .adapters
        .iter()
        .map(|a| {
            serde_json::json!({
                "module": a.hf_name,
                "method": a.method,
                "rank": a.rank,
                "alpha": a.alpha,
                "d_in": a.d_in,
                "d_out": a.d_out,
                "residual": a.residual,
                "tensors": a.tensors.iter().map(|&t| tr.plan.params[t].name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert(
        "lamdac.modules".to_string(),
        serde_json::Value::Array(modules).to_string(),
    );
    meta.insert("lamdac.step".to_string(), tr.step.to_string());
    meta.insert("lamdac.spec".to_string(), spec.to_string());
    // a classifier's head: what export, merge and eval need to know of it
    if let Some(h) = tr.plan.train.head {
        let head = serde_json::json!({
            "kind": "classify",
            "labels": h.labels,
            "pool": match h.pool {
                lamda_compiler::spec::Pool::Cls => "cls",
                lamda_compiler::spec::Pool::Mean => "mean",
            },
            "tensors": tr
                .plan
                .params
                .iter()
                .filter(|p| matches!(p.role, lamda_compiler::ir::ParamRole::Head { .. }))
                .map(|p| p.name.clone())
                .collect::<Vec<_>>(),
        });
        meta.insert("lamdac.head".to_string(), head.to_string());
    }
    write_safetensors(path, &tensors, &meta)?;
    Ok(())
}
