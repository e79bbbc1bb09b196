//! A training session end to end: the path `lamdac train` takes, and the one tests drive.
//!
//! [`check_spec`] runs the front end (parse, resolve, check) once per command;
//! [`prepare`] takes its result, opens the model checkpoint it binds, runs the
//! compiler pipeline (with the checkpoint's spectra for `rank auto`), fills
//! the parameters, loads the data, and restores a checkpoint when resuming.
//! [`run`] trains to the end (or until asked to stop), writing
//! `metrics.jsonl`, checkpoints and `adapter.safetensors` into the output folder.

use lamda_compiler::diag::Code;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use lamda_compiler::diag::{Style, render};
use lamda_compiler::ir::ParamRole;
use lamda_compiler::model::ModelSource;
use lamda_compiler::pipeline::{CompileError, Options, Spectra, compile_with};
use lamda_compiler::resolve::{Checked, check_path};
use lamda_compiler::spec::Device;

use crate::backend::cuda::{CudaDevice, CudaOptions, Precision};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::{Batch, BatchConfig, Batcher, DataError, Dataset, Tokenizer};
use crate::init::{InitError, initialize};
use crate::linalg::{LinalgError, MatF32Ref};
use crate::train::state::{self, StateError};
use crate::train::{Backend, StepError, StepStats, Trainer, Validation};

/// Everything that can stop a session, each with a code and a hint.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The spec has errors: the rendered diagnostics.
    #[error("{rendered}")]
    Spec { rendered: String, errors: usize },
    #[error("`lamdac train` needs weights, and `{model}` is a stdlib preset without a checkpoint")]
    NoWeights { model: String },
    /// The model gives module shapes only (`shapes_only = true`): its forward
    /// pass is not the family's, so it cannot train.
    #[error(
        "`{model}` gives module shapes only (`shapes_only = true` in its preset): lamdac does not implement \
         its forward pass, so it cannot train it"
    )]
    ShapesOnly { model: String },
    /// The chosen device has no kernels for some op of the plan.
    #[error("{0}")]
    DeviceUnsupported(String),
    #[error("the train block names no data")]
    NoData,
    /// The step's estimated memory exceeds the machine's.
    #[error(
        "a training step needs about {} GiB (weights, adapters, gradients, optimizer state, activations), and this machine has {} GiB",
        need / (1 << 30),
        have / (1 << 30)
    )]
    Memory { need: u64, have: u64 },
    /// `--steps 0` (a run is at least one step).
    #[error("--steps 0: a run is at least one step")]
    Steps,
    #[error("{0}")]
    Device(String),
    /// A storage precision the chosen device does not run.
    #[error("{0}")]
    Precision(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("compiling: {0}")]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The loss became NaN or infinite; `checkpoint` is the last one saved
    /// before (none when the run had not saved one yet).
    #[error("the loss is {loss} at step {step}")]
    NonFinite {
        step: u64,
        loss: f32,
        checkpoint: Option<PathBuf>,
        lr: f64,
    },
    /// `stop_on_collapse` steps in a row had an exactly zero gradient.
    #[error(
        "training collapsed: from step {first} on the gradient is exactly zero ({count} steps in a row) and the loss stays at {loss:.4}{}",
        if *at_uniform { " = ln(vocab), the loss of a uniform guess" } else { "" }
    )]
    Collapsed {
        first: u64,
        count: u64,
        loss: f32,
        at_uniform: bool,
        checkpoint: Option<PathBuf>,
        lr: f64,
    },
    #[error("`{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl SessionError {
    /// The stable code.
    pub fn code(&self) -> Code {
        match self {
            SessionError::Read { .. } | SessionError::Write { .. } => Code::Io,
            SessionError::Spec { .. } => Code::Spec,
            SessionError::NoWeights { .. } => Code::TrainNoWeights,
            SessionError::ShapesOnly { .. } => Code::TrainShapesOnly,
            SessionError::DeviceUnsupported(_) => Code::TrainDeviceUnsupported,
            SessionError::NoData => Code::TrainNoData,
            SessionError::Steps => Code::TrainBadValue,
            SessionError::Memory { .. } => Code::TrainOutOfMemory,
            SessionError::Device(_) => Code::TrainDevice,
            SessionError::Precision(_) => Code::TrainPrecision,
            SessionError::Checkpoint(e) => e.code(),
            SessionError::Data(e) => e.code(),
            SessionError::Compile(_) => Code::Compile,
            SessionError::Init(_) => Code::TrainInit,
            SessionError::Step(StepError::NonFinite { .. }) | SessionError::NonFinite { .. } => Code::TrainNonFinite,
            SessionError::Step(StepError::Data(e)) => e.code(),
            SessionError::Collapsed { .. } => Code::TrainCollapsed,
            SessionError::Step(_) => Code::TrainStep,
            SessionError::State(StateError::Mismatch { .. }) => Code::ResumeMismatch,
            // reading or writing a run's files failed (a full disk, say): I/O
            SessionError::State(StateError::Io { .. }) => Code::Io,
            SessionError::State(StateError::Checkpoint(e)) if e.code() == Code::Io => Code::Io,
            SessionError::State(_) => Code::ResumeInvalid,
        }
    }
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            SessionError::NoWeights { model } => format!(
                "bind a Hugging Face checkpoint folder: `use \"path/to/folder\" as {model}` (see examples/quickstart.lamda)"
            ),
            SessionError::ShapesOnly { .. } => "`lamdac check` and `lamdac plan` work on it; train a model lamdac \
                 implements, e.g. a BERT checkpoint folder (`use \"models/all-MiniLM-L6-v2\" as m`)"
                .into(),
            SessionError::DeviceUnsupported(_) => {
                "run with `--device cpu` (`auto` picks the CPU for encoders by itself)".into()
            }
            SessionError::NoData => "add `data \"file.txt\"` (or .jsonl, .safetensors) to the train block".into(),
            SessionError::Steps => "pass --steps 1 or more, or leave it out to run the train block's `steps`".into(),
            SessionError::Memory { .. } => "lower batch or seq (`accumulate N` keeps the tokens per step), adapt a \
                 smaller model, or train on a GPU; `lamdac check` prints the estimate"
                .into(),
            SessionError::Device(_) => {
                "run with `--device cpu` (or `auto`, which uses a GPU only when one is present)".into()
            }
            SessionError::Precision(_) => {
                "drop `--precision` on the CPU, or run on a GPU with `--device cuda` (bf16 is its default there)".into()
            }
            SessionError::Checkpoint(e) => e.hint(),
            SessionError::Data(e) => e.hint(),
            SessionError::Step(StepError::NonFinite { .. }) => "lower the learning rate or add `clip 1.0`".into(),
            SessionError::Step(StepError::Data(e)) => e.hint(),
            SessionError::Step(StepError::NoValidationTargets) => "every held-out example lost its loss positions: \
                 raise `seq` so that completions (assistant turns) fit, or hold out other data"
                .into(),
            SessionError::NonFinite { checkpoint, lr, .. } => {
                format!(
                    "lower the learning rate (lr {lr:e}) or add `clip 1.0`; {}",
                    before(checkpoint.as_deref())
                )
            }
            SessionError::Collapsed { checkpoint, lr, .. } => format!(
                "lower the learning rate (lr {lr:e}) or add `clip 1.0`; {}; `stop_on_collapse 0` in the train block trains on regardless",
                before(checkpoint.as_deref())
            ),
            SessionError::State(StateError::Mismatch { .. }) => {
                "resume with the same .lamda file, model and --steps".into()
            }
            SessionError::State(StateError::Io { .. }) | SessionError::Write { .. } => {
                "check free disk space and that the output folder is writable".into()
            }
            SessionError::State(StateError::Checkpoint(e)) => e.hint(),
            SessionError::State(StateError::Invalid { .. }) => "the checkpoint was edited or damaged: resume from \
                 the other kept checkpoint (`--resume <run>/checkpoints/step-N`) or start the run again"
                .into(),
            _ => String::new(),
        }
    }
    /// Exit code: 2 for I/O (`lamda::io`), 1 for everything about the input.
    pub fn exit_code(&self) -> u8 {
        if self.code() == Code::Io { 2 } else { 1 }
    }
}

/// The machine's physical memory in bytes (`MemTotal` of /proc/meminfo);
/// `None` where that cannot be read.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// What a failed run left behind, for the hint: the checkpoint from before
/// the failure, if the run had saved one.
fn before(checkpoint: Option<&Path>) -> String {
    match checkpoint {
        Some(c) => format!(
            "the last checkpoint from before, {}, is kept (and adapter.safetensors from it)",
            c.display()
        ),
        None => "no checkpoint was saved before it (`checkpoint every N` in the train block saves some)".into(),
    }
}

/// The folder a run of the spec at `spec_path` writes to without `--out`:
/// the train block's `out`, else `runs/<file name>`.
pub fn default_run_folder(spec_path: &Path, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = spec_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(stem)
    })
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub spec: PathBuf,
    /// Overrides the train block's `steps`.
    pub steps: Option<u64>,
    /// Overrides the output folder.
    pub out: Option<PathBuf>,
    /// A run folder or checkpoint folder to continue from.
    pub resume: Option<PathBuf>,
    /// Overrides the train block's `device`.
    pub device: Option<Device>,
    /// Initial values of adapter tensors, by name (instead of their initialisers).
    pub init_overrides: BTreeMap<String, Vec<f32>>,
    /// Compile with the fusion pass (generated kernels).
    pub fuse: bool,
    /// Train the same spec with LoRA (stdlib defaults) at the same ranks instead (for benchmarks).
    pub lora_twin: bool,
    /// How fused kernels run on the CPU.
    pub kernels: crate::exec::KernelMode,
    /// Storage precision on the GPU (default bf16 there; the CPU is f32 only).
    pub precision: Option<Precision>,
}

/// Hooks for progress display and tests. Every method has a default.
pub trait Observer {
    /// Called once before the first step (after a resume, at the resumed step).
    fn start(&mut self, _tr: &Trainer) {}
    /// Called after every optimizer step; on the CPU `tr.grads` holds that
    /// step's gradients (on a GPU they stay on the device, and `tr.params` is
    /// brought up to date only at checkpoints: see `Trainer::sync_host`).
    fn step(&mut self, _tr: &Trainer, _stats: &StepStats, _tokens_per_s: f64) {}
    /// Called after each validation loss (before the first step, every `eval every N`, after the last).
    fn validation(&mut self, _tr: &Trainer, _v: &Validation) {}
    /// Called once after the last step with the final evaluation.
    fn finish(&mut self, _tr: &Trainer, _loss: f32, _logits: &[f32]) {}
    /// A problem that does not stop the run (yet): its code and the message.
    fn warning(&mut self, _code: Code, _text: &str) {}
}

/// A prepared run.
pub struct Session {
    pub trainer: Trainer,
    /// Initial values of every trainable adapter tensor (for export).
    pub init: BTreeMap<usize, Vec<f32>>,
    /// Losses of the steps already run (non-empty after a resume).
    pub losses: Vec<f32>,
    pub out: PathBuf,
    /// The batch the final evaluation uses (the first batch of the run).
    pub eval_batch: Batch,
    /// The held-out data of the validation loss (`split` or `eval_data`).
    pub validation: Option<Dataset>,
    /// Validation losses measured so far (read back from metrics.jsonl after a resume).
    pub validations: Vec<Validation>,
    pub spec_text: String,
    pub spec_hash: String,
    pub resumed_from: Option<u64>,
    /// Where the time before the first step went, in order (see [`Startup`]).
    pub startup: Startup,
    /// The checkpoint folder the run resumed from.
    pub resumed_checkpoint: Option<PathBuf>,
    /// Choices made for the user that they should hear about (the CPU picked
    /// by `auto` for an encoder, say), one line each.
    pub notes: Vec<String>,
}

/// Wall-clock time of each phase of [`prepare`], in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Startup {
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

impl Startup {
    /// Ends the phase that started at `*since` under `name`, and starts the next.
    fn lap(&mut self, name: &'static str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - *since));
        *since = now;
    }

    /// The whole of it.
    pub fn total(&self) -> std::time::Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }
}

struct CheckpointSpectra<'a> {
    ckpt: &'a Checkpoint,
}

impl Spectra for CheckpointSpectra<'_> {
    fn energy(&mut self, weight: &str, r0: u64) -> Result<f64, String> {
        let w = self.ckpt.matrix(weight).map_err(|e| e.to_string())?;
        let (rows, cols) = w.dim();
        let data: Vec<f32> = w.iter().copied().collect();
        let m = MatF32Ref::new("weight", &data, rows, cols).map_err(|e: LinalgError| e.to_string())?;
        crate::linalg::energy(m, r0 as usize).map_err(|e| format!("`{weight}`: {e}"))
    }
}

fn fnv(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The front end (parse, resolve, check) on the spec file `path`, for
/// [`prepare`]: a command runs it once. A spec with errors comes back as it
/// is (with its diagnostics); [`prepare`] refuses it.
pub fn check_spec(path: &Path) -> Result<Checked, SessionError> {
    check_path(path).map_err(|source| SessionError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Compiles and initialises a run of `checked`, the spec of `opts.spec` as
/// [`check_spec`] (or the caller's own check) left it: the front end does
/// not run again. The startup's `check` phase is what remains of it here
/// (the overrides of `opts`, the device).
pub fn prepare(opts: &RunOptions, checked: &Checked) -> Result<Session, SessionError> {
    let mut startup = Startup::default();
    let mut since = std::time::Instant::now();
    let Some(mut spec) = checked.spec.clone() else {
        let errors = checked.diags.iter().filter(|d| d.is_error()).count();
        return Err(SessionError::Spec {
            rendered: render(&checked.sources, &checked.diags, Style::Plain),
            errors,
        });
    };
    // The text the spec was checked from (the spec's part of the run's hash).
    let spec_text = checked
        .sources
        .get(checked.file)
        .map(|f| f.text.to_string())
        .unwrap_or_default();
    if let Some(steps) = opts.steps {
        if steps == 0 {
            return Err(SessionError::Steps);
        }
        spec.train.steps = steps;
    }
    if opts.lora_twin {
        spec = lamda_compiler::report::lora_twin(&spec)
            .ok_or_else(|| SessionError::Device("the stdlib LoRA method does not check".into()))?;
    }
    // A preset that gives shapes only has no forward pass to train, whatever the weights.
    if spec.model.shapes_only() {
        return Err(SessionError::ShapesOnly {
            model: spec.model_name.clone(),
        });
    }
    // The device: a GPU only when asked for one, or on `auto` when one is
    // present. The CUDA backend has no kernels for an encoder's head yet
    // (pooling, bias gradients): such a plan runs on the CPU, refused on
    // `cuda` before anything loads, never failing mid-run.
    let mut notes = Vec::new();
    let encoder = spec.train.head.is_some();
    let device = match opts.device.unwrap_or(spec.train.device) {
        Device::Cpu => Device::Cpu,
        Device::Cuda if encoder => {
            return Err(SessionError::DeviceUnsupported(format!(
                "--device cuda: the CUDA backend does not run encoders yet (`{}` trains through `head classify`: \
                 its pooling and bias-gradient ops have CPU kernels only)",
                spec.model_name
            )));
        }
        Device::Cuda => {
            CudaDevice::detect().map_err(|e| SessionError::Device(format!("--device cuda: {e}")))?;
            Device::Cuda
        }
        Device::Auto if encoder => {
            if CudaDevice::detect().is_ok() {
                notes.push(
                    "device: cpu (`auto` with a GPU present: the CUDA backend does not run encoders yet)".to_string(),
                );
            }
            Device::Cpu
        }
        Device::Auto if CudaDevice::detect().is_ok() => Device::Cuda,
        Device::Auto => Device::Cpu,
    };
    let precision = match (device, opts.precision) {
        (Device::Cuda, p) => p.unwrap_or(Precision::Bf16),
        (_, Some(Precision::Bf16)) => {
            return Err(SessionError::Precision(
                "--precision bf16: bf16 storage is implemented on the CUDA backend only, and this run is on the CPU, which trains in f32".into(),
            ));
        }
        (_, _) => Precision::F32,
    };
    let ModelSource::Checkpoint(dir) = &spec.model.source else {
        return Err(SessionError::NoWeights {
            model: spec.model_name.clone(),
        });
    };
    startup.lap("check", &mut since);
    let ckpt = Checkpoint::open(dir)?;
    startup.lap("load", &mut since);
    let data_path = spec.train.data.clone().ok_or(SessionError::NoData)?;
    let plan = compile_with(
        &spec,
        spec.train.batch as usize,
        spec.train.seq as usize,
        Some(&mut CheckpointSpectra { ckpt: &ckpt }),
        Options {
            fuse: opts.fuse,
            // the chunked head loss is a CPU op (the CUDA backend keeps the three ops)
            head_loss: opts.fuse && device != Device::Cuda,
        },
    )?;
    startup.lap("compile", &mut since);
    // A step that needs more memory than the machine has would only end in
    // the OOM killer: refuse it before any buffer is allocated.
    if device == Device::Cpu
        && let Some(have) = physical_memory()
        && plan.memory.total_peak > have
    {
        return Err(SessionError::Memory {
            need: plan.memory.total_peak,
            have,
        });
    }
    let params = initialize(&plan, &ckpt.weights, &opts.init_overrides)?;
    startup.lap("init", &mut since);
    let init: BTreeMap<usize, Vec<f32>> = plan
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.role, ParamRole::Adapter { trainable: true, .. }))
        .map(|(i, _)| (i, params[i].clone()))
        .collect();
    let tokenizer = Tokenizer::for_checkpoint(&ckpt)?;
    // a broken tokenizer_config.json only matters to `messages` lines, which then say there is no template
    let chat = crate::generate::ChatTemplate::for_folder(ckpt.dir()).ok().flatten();
    let (dataset, validation) = match (spec.train.head, spec.train.split, &spec.train.eval_data) {
        // a classification head reads labelled sequences (TSV, CSV, JSONL)
        (Some(h), split, eval) => {
            let seq = plan.seq;
            let (train, held) = Dataset::classes(&data_path, &tokenizer, seq, h.labels, split)?;
            let held = match (held, eval) {
                (Some(v), _) => Some(v),
                (None, Some(p)) => Some(Dataset::classes(p, &tokenizer, seq, h.labels, None)?.0),
                (None, None) => None,
            };
            (train, held)
        }
        (None, Some(f), _) => {
            let (train, held) = Dataset::load_split(&data_path, &tokenizer, chat.as_ref(), f)?;
            (train, Some(held))
        }
        (None, None, Some(p)) => (
            Dataset::load_with_chat(&data_path, &tokenizer, chat.as_ref())?,
            Some(Dataset::load_with_chat(p, &tokenizer, chat.as_ref())?),
        ),
        (None, None, None) => (Dataset::load_with_chat(&data_path, &tokenizer, chat.as_ref())?, None),
    };
    dataset.check_vocab(plan.vocab)?;
    let cfg = BatchConfig {
        seq: plan.seq,
        batch: plan.batch,
        seed: plan.train.seed,
        shuffle: None,
    };
    if let Some(v) = &validation {
        v.check_vocab(plan.vocab)?;
        // a held-out text shorter than one window fails here, not after the first steps
        Batcher::new(v.clone(), cfg)?;
    }
    let eval_batch = Batcher::new(dataset.clone(), cfg)?.next_batch();
    let batcher = Batcher::new(dataset, cfg)?;
    startup.lap("data", &mut since);
    let config_text = std::fs::read(dir.join("config.json")).unwrap_or_default();
    let steps = spec.train.steps.to_le_bytes();
    let spec_hash = fnv(&[spec_text.as_bytes(), &config_text, &steps]);
    // The checkpoint to resume from, found before anything is trained: a
    // resumed run continues in the run folder it came from unless `--out` says
    // otherwise (not in the spec's `out`, which may be another run).
    let resume_dir = opts.resume.as_deref().map(state::locate).transpose()?;
    let resumed_run = resume_dir.as_deref().and_then(state::run_folder);
    let out = opts
        .out
        .clone()
        .or(resumed_run)
        .unwrap_or_else(|| default_run_folder(&opts.spec, spec.train.out.as_deref()));
    let backend = match device {
        Device::Cuda => Backend::Cuda(Box::new(
            CudaDevice::open(0)
                .and_then(|dev| {
                    let opts = CudaOptions {
                        precision,
                        ..Default::default()
                    };
                    crate::train::cuda_run(dev, &plan, &params, opts)
                })
                .map_err(|e| SessionError::Device(e.to_string()))?,
        )),
        _ => {
            let mut exec = crate::exec::Executor::with_mode(opts.kernels);
            exec.precompile(&plan.kernels())
                .map_err(|e| SessionError::Step(StepError::Exec(e)))?;
            Backend::Cpu(Box::new(exec))
        }
    };
    startup.lap("kernels", &mut since);
    let mut trainer = Trainer::with_backend(plan, params, batcher, backend);
    let mut losses = Vec::new();
    let mut resumed_from = None;
    if let Some(dir) = &resume_dir {
        losses = state::load(&mut trainer, dir, &spec_hash)?;
        trainer.sync_device().map_err(StepError::from)?;
        resumed_from = Some(trainer.step);
    }
    startup.lap("resume", &mut since);
    Ok(Session {
        trainer,
        init,
        losses,
        out,
        eval_batch,
        validation,
        validations: Vec::new(),
        spec_text,
        spec_hash,
        startup,
        resumed_from,
        resumed_checkpoint: resume_dir,
        notes,
    })
}

/// What a run ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Loss of every step, then the final evaluation: T + 1 values when complete.
    pub losses: Vec<f32>,
    /// Validation losses, in step order (empty without held-out data).
    pub validations: Vec<Validation>,
    /// Steps run in total (resumed ones included).
    pub steps: u64,
    /// Set when the run stopped early on request; a checkpoint was saved.
    pub interrupted: bool,
    pub out: PathBuf,
    pub checkpoint: Option<PathBuf>,
}

fn append_metrics(path: &Path, line: &serde_json::Value) -> Result<(), SessionError> {
    let werr = |source| SessionError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(werr)?;
    writeln!(f, "{line}").map_err(werr)
}

/// Keeps the lines of `metrics.jsonl` for steps before `step` (after a
/// resume), and returns the validation losses among them.
fn truncate_metrics(path: &Path, step: u64) -> Result<Vec<Validation>, SessionError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut kept = String::new();
    let mut validations = Vec::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(s) = v.get("step").and_then(serde_json::Value::as_u64).filter(|&s| s < step) else {
            continue;
        };
        kept.push_str(l);
        kept.push('\n');
        if let (Some(loss), Some(targets)) = (
            v.get("val_loss").and_then(serde_json::Value::as_f64),
            v.get("val_targets").and_then(serde_json::Value::as_u64),
        ) {
            validations.push(Validation {
                step: s,
                loss: loss as f32,
                targets: targets as usize,
            });
        }
    }
    state::write_atomic(path, kept.as_bytes())?;
    Ok(validations)
}

/// Measures the validation loss (when the run has held-out data), records it
/// in metrics.jsonl and tells the observer.
fn validate(session: &mut Session, metrics: &Path, observer: &mut dyn Observer) -> Result<(), SessionError> {
    let Some(data) = &session.validation else {
        return Ok(());
    };
    let v = session.trainer.validation_loss(data)?;
    append_metrics(
        metrics,
        &serde_json::json!({ "step": v.step, "val_loss": v.loss, "val_targets": v.targets }),
    )?;
    observer.validation(&session.trainer, &v);
    session.validations.push(v);
    Ok(())
}

/// Writes a checkpoint of the run under `out/checkpoints`, the adapter
/// (`out/adapter.safetensors`) and the picture, after bringing the host copy
/// of the parameters up to date (a GPU run trains on the device). Returns
/// the checkpoint's folder.
fn write_checkpoint(session: &mut Session, out: &Path) -> Result<PathBuf, SessionError> {
    let tr = &mut session.trainer;
    tr.sync_host().map_err(StepError::from)?;
    let ckpt = state::save(tr, &out.join("checkpoints"), &session.spec_hash, &session.losses)?;
    state::write_adapter(tr, &session.init, &out.join("adapter.safetensors"), &session.spec_text)?;
    write_plot(session, out)?;
    Ok(ckpt)
}

/// Writes the run's picture, `loss.svg` (train and validation loss against step).
fn write_plot(session: &Session, out: &Path) -> Result<(), SessionError> {
    let svg = crate::train::plot::loss_svg(&session.losses, &session.validations);
    state::write_atomic(&out.join("loss.svg"), svg.as_bytes())?;
    Ok(())
}

/// Trains to the end, or until `stop` is set (then saves a checkpoint).
pub fn run(session: &mut Session, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<Summary, SessionError> {
    let out = session.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| SessionError::Write {
        path: out.clone(),
        source,
    })?;
    let metrics = out.join("metrics.jsonl");
    match session.resumed_from {
        Some(step) => session.validations = truncate_metrics(&metrics, step)?,
        None => state::write_atomic(&metrics, b"")?,
    }
    let total = session.trainer.total_steps();
    let every = session.trainer.plan.train.checkpoint_every;
    let eval_every = session.trainer.plan.train.eval_every.or(every);
    observer.start(&session.trainer);
    // before the first step; after a resume only where the uninterrupted run
    // measured one (its line went with the truncated metrics)
    let due_now = match session.resumed_from {
        None => true,
        Some(s) => eval_every.is_some_and(|n| s.is_multiple_of(n)),
    };
    if due_now && session.trainer.step < total {
        validate(session, &metrics, observer)?;
    }
    let mut last_ckpt = session.resumed_checkpoint.clone();
    let patience = session.trainer.plan.train.stop_on_collapse;
    let lr = session.trainer.plan.train.lr;
    let uniform_loss = (session.trainer.plan.vocab.max(1) as f64).ln();
    // (first step, steps so far) of the current run of zero-gradient steps
    let mut collapse: Option<(u64, u64)> = None;
    while session.trainer.step < total {
        let tr = &mut session.trainer;
        let started = std::time::Instant::now();
        let stats = match tr.train_step() {
            Ok(s) => s,
            Err(StepError::NonFinite { step, loss }) => {
                return Err(SessionError::NonFinite {
                    step,
                    loss,
                    checkpoint: last_ckpt,
                    lr,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let tps = stats.tokens as f64 / secs;
        session.losses.push(stats.loss);
        append_metrics(
            &metrics,
            &serde_json::json!({
                "step": stats.step,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "tokens_per_s": tps,
                "trainable_params": stats.trainable,
            }),
        )?;
        observer.step(tr, &stats, tps);
        // A zero gradient with entries left to train: the model has collapsed
        // (at a high learning rate, typically onto a uniform guess) and no
        // step can bring it back. Warn at once, stop after `patience` such
        // steps, and never checkpoint the collapsed model over a good one.
        if stats.grad_norm == 0.0 && stats.trainable > 0 {
            let (first, count) = collapse.map_or((stats.step, 1), |(f, n)| (f, n + 1));
            collapse = Some((first, count));
            let at_uniform = (f64::from(stats.loss) - uniform_loss).abs() < 1e-3;
            if count == 1 {
                observer.warning(
                    Code::TrainCollapsed,
                    &format!(
                        "step {}: the gradient is exactly zero and the loss is {:.4}{}: the model has collapsed and stopped learning{}",
                        stats.step,
                        stats.loss,
                        if at_uniform { " = ln(vocab)" } else { "" },
                        if patience > 0 {
                            format!(" (the run stops after {patience} such steps in a row)")
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            if patience > 0 && count >= patience {
                return Err(SessionError::Collapsed {
                    first,
                    count,
                    loss: stats.loss,
                    at_uniform,
                    checkpoint: last_ckpt,
                    lr,
                });
            }
        } else {
            collapse = None;
        }
        let due = every.is_some_and(|n| tr.step.is_multiple_of(n)) && tr.step < total && collapse.is_none();
        let step = tr.step;
        if eval_every.is_some_and(|n| step.is_multiple_of(n)) && step < total && !stop.load(Ordering::SeqCst) {
            validate(session, &metrics, observer)?;
        }
        if due || stop.load(Ordering::SeqCst) {
            last_ckpt = Some(write_checkpoint(session, &out)?);
        }
        let tr = &mut session.trainer;
        if stop.load(Ordering::SeqCst) && tr.step < total {
            return Ok(Summary {
                validations: session.validations.clone(),
                losses: session.losses.clone(),
                steps: tr.step,
                interrupted: true,
                out,
                checkpoint: last_ckpt,
            });
        }
    }
    validate(session, &metrics, observer)?;
    let tr = &mut session.trainer;
    let final_eval = tr.evaluate(&session.eval_batch, true)?;
    let logits = final_eval.logits.unwrap_or_default();
    let mut losses = session.losses.clone();
    losses.push(final_eval.loss);
    append_metrics(
        &metrics,
        &serde_json::json!({ "step": total, "loss": final_eval.loss, "final": true }),
    )?;
    // what the observer sees of the parameters is current on a GPU too
    tr.sync_host().map_err(StepError::from)?;
    observer.finish(tr, final_eval.loss, &logits);
    let ckpt = write_checkpoint(session, &out)?;
    let tr = &session.trainer;
    Ok(Summary {
        validations: session.validations.clone(),
        losses,
        steps: tr.step,
        interrupted: false,
        out,
        checkpoint: Some(ckpt),
    })
}
