//! The training loop of SEMANTICS §7 over a Plan: freeze, forward, backward, AdamW.
//!
//! Step t: every column-frozen tensor gets `f(t)` frozen leading columns; the
//! phase program for t runs on `accumulate` micro-batches, each weighted by
//! its share of counted positions so the step's gradient is the gradient of
//! the mean loss over all of them; frozen columns of the gradient are zeroed;
//! the global gradient norm is clipped if asked; AdamW updates the
//! trainable entries (frozen ones get no update, no decay, keep their
//! moments). The learning rate follows the schedule: linear warmup over
//! `warmup` steps to `lr` (`lr (t + 1) / warmup`), then constant, cosine
//! (`lr (1 + cos(pi q)) / 2`) or linear (`lr (1 - q)`) decay with
//! `q = (t - warmup) / (T - warmup)`.

pub mod device;
pub mod plot;
pub mod state;

use lamda_compiler::ir::ParamRole;
use lamda_compiler::plan::Plan;
use lamda_compiler::spec::LrSchedule;

use crate::data::{Batch, BatchConfig, Batcher, Dataset, IGNORE_INDEX};
use crate::exec::{CpuBackend, ExecError, Executor, Inputs, RunOutput};
use crate::ops::{AdamState, AdamW, OpsError};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("AdamW on `{name}`: {source}")]
    Optimizer { name: String, source: OpsError },
    #[error("the loss is {loss} at step {step}")]
    NonFinite { step: u64, loss: f32 },
    #[error("step {step}: no position of the batch has a label to predict")]
    NoTargets { step: u64 },
    #[error("the validation data has no position with a label to predict")]
    NoValidationTargets,
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// The validation loss: the mean over every counted position of the held-out data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Steps trained when it was measured.
    pub step: u64,
    pub loss: f32,
    /// Positions that counted.
    pub targets: usize,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub step: u64,
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: usize,
    /// Trainable entries this step (frozen columns excluded).
    pub trainable: u64,
}

/// The learning rate at step `t` of `steps`.
pub fn lr_at(plan_lr: f64, warmup: u64, schedule: LrSchedule, t: u64, steps: u64) -> f64 {
    if t < warmup {
        return plan_lr * (t + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1) as f64;
    let q = ((t - warmup) as f64 / span).clamp(0.0, 1.0);
    match schedule {
        LrSchedule::Constant => plan_lr,
        LrSchedule::Cosine => plan_lr * 0.5 * (1.0 + (std::f64::consts::PI * q).cos()),
        LrSchedule::Linear => plan_lr * (1.0 - q),
    }
}

pub use crate::exec::count_targets;

/// The live state of a run.
pub struct Trainer {
    pub plan: Plan,
    /// Every parameter, in the Plan's order: (numel) each. On the CPU the
    /// state itself; on a GPU a host copy, current after [`Trainer::sync_host`].
    pub params: Vec<Vec<f32>>,
    /// Gradients of the parameters that train in some phase (empty otherwise): (numel) each; CPU only.
    pub grads: Vec<Vec<f32>>,
    /// AdamW moments, (numel) each, and step counts (as `params` on a GPU).
    pub adam: Vec<AdamState>,
    /// The next step to run (0-based).
    pub step: u64,
    pub data: Batcher,
    backend: Backend,
    /// On a GPU: the device has trained past `params` and `adam` (see [`Trainer::sync_host`]).
    host_stale: bool,
}

/// Where programs run: the CPU executor (its state is the trainer's host
/// vectors), or a CUDA run with its state on the device.
pub enum Backend {
    Cpu(Box<Executor<CpuBackend>>),
    Cuda(Box<CudaRun>),
}

/// A CUDA run: parameters, gradients and AdamW moments on the device for
/// the whole run (frozen matrices in bf16 in bf16 mode).
pub type CudaRun = device::Resident<crate::backend::cuda::CudaBackend>;

/// Opens a CUDA run for `plan` on `dev`: compiles the Plan's module, uploads
/// `params` (Plan order) once, allocates gradients and moments on the device.
pub fn cuda_run(
    dev: crate::backend::cuda::CudaDevice,
    plan: &Plan,
    params: &[Vec<f32>],
    opts: crate::backend::cuda::CudaOptions,
) -> Result<CudaRun, crate::backend::cuda::CudaError> {
    use crate::backend::cuda::{CudaBackend, CudaError, plan_bf16_storage};
    if params.len() != plan.params.len() {
        return Err(CudaError::Program(format!(
            "{} parameter buffers for a plan of {}",
            params.len(),
            plan.params.len()
        )));
    }
    let programs: Vec<_> = plan.phases.iter().map(|p| &p.program).chain([&plan.eval]).collect();
    let mut be = CudaBackend::new(dev, &programs, opts)?;
    let narrow = plan_bf16_storage(plan, opts.precision);
    let trainable: Vec<usize> = plan
        .phases
        .iter()
        .flat_map(|p| p.trainable.iter().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let dev_params = params
        .iter()
        .enumerate()
        .map(|(p, host)| be.param_buffer(host, narrow[p]))
        .collect::<Result<Vec<_>, _>>()?;
    let state =
        device::DeviceState::new(&mut be, dev_params, &trainable).map_err(|e| CudaError::Program(e.to_string()))?;
    Ok(device::Resident {
        exec: Executor::on(be),
        state,
    })
}

/// A batch as the executor reads it: flat integer inputs.
struct FlatBatch {
    /// (batch * seq)
    tokens: Vec<i64>,
    /// (batch * seq), or one class per row (batch) for a classification head.
    labels: Vec<i64>,
    /// (batch * seq); empty without a classification head.
    token_types: Vec<i64>,
    /// (batch); empty without a classification head.
    lengths: Vec<i64>,
    classify: bool,
}

impl FlatBatch {
    fn of(b: &Batch) -> Self {
        let tokens = b.input_ids.iter().copied().collect();
        match &b.classes {
            Some(c) => FlatBatch {
                tokens,
                labels: c.labels.clone(),
                token_types: c.token_types.iter().copied().collect(),
                lengths: c.lengths.clone(),
                classify: true,
            },
            None => FlatBatch {
                tokens,
                labels: b.labels.iter().copied().collect(),
                token_types: Vec::new(),
                lengths: Vec::new(),
                classify: false,
            },
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            tokens: &self.tokens,
            labels: &self.labels,
            token_types: &self.token_types,
            lengths: &self.lengths,
        }
    }

    /// Targets that count for the loss: labelled rows, or shifted LM positions.
    fn count(&self, seq: usize) -> usize {
        if self.classify {
            self.labels.iter().filter(|&&l| l >= 0).count()
        } else {
            count_targets(&self.labels, seq)
        }
    }
}

impl Backend {
    /// Runs a forward-only program with the current parameters (the host's
    /// on the CPU, the device's on a GPU).
    fn evaluate(
        &mut self,
        program: &lamda_compiler::passes::memory_plan::Program,
        host_params: &[Vec<f32>],
        inputs: Inputs<'_>,
        want_logits: bool,
    ) -> Result<RunOutput, ExecError> {
        match self {
            Backend::Cpu(e) => e.run_with(program, host_params, &mut [], inputs, 1.0, want_logits),
            Backend::Cuda(r) => r
                .exec
                .run_with(program, &r.state.params, &mut [], inputs, 1.0, want_logits),
        }
    }

    /// For a GPU run: the device, the storage precision and the parameter
    /// bytes it holds, in one line; None on the CPU.
    pub fn gpu_summary(&self) -> Option<String> {
        match self {
            Backend::Cpu(_) => None,
            Backend::Cuda(e) => Some(format!(
                "device: cuda {} ({}), {} storage, parameters {:.1} MiB on the device",
                e.exec.backend().device().name(),
                e.exec.backend().arch(),
                e.exec.backend().precision().name(),
                e.state
                    .params
                    .iter()
                    .map(|b| b.len() * if b.is_bf16() { 2 } else { 4 })
                    .sum::<usize>() as f64
                    / (1u64 << 20) as f64
            )),
        }
    }

    /// The device, in words.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu(_) => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }
}

impl Trainer {
    /// A trainer at step 0 over initialised parameters.
    pub fn new(plan: Plan, params: Vec<Vec<f32>>, data: Batcher) -> Self {
        let ever: std::collections::BTreeSet<usize> =
            plan.phases.iter().flat_map(|p| p.trainable.iter().copied()).collect();
        let grads = (0..plan.params.len())
            .map(|i| {
                if ever.contains(&i) {
                    vec![0.0; params[i].len()]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let adam = (0..plan.params.len())
            .map(|i| {
                if ever.contains(&i) {
                    AdamState::new(params[i].len())
                } else {
                    AdamState::new(0)
                }
            })
            .collect();
        Trainer {
            plan,
            params,
            grads,
            adam,
            step: 0,
            data,
            backend: Backend::Cpu(Box::default()),
            host_stale: false,
        }
    }

    /// The same, running programs on `backend`.
    pub fn with_backend(plan: Plan, params: Vec<Vec<f32>>, data: Batcher, backend: Backend) -> Self {
        Trainer {
            backend,
            ..Trainer::new(plan, params, data)
        }
    }

    /// The values of parameter `p`, wherever they live: its own buffer, or
    /// its row block of a stacked weight (fusion keeps only the stack).
    pub fn param_values(&self, p: usize) -> Option<&[f32]> {
        let own = self.params.get(p)?;
        let want = self.plan.params.get(p)?.numel() as usize;
        if own.len() == want {
            return Some(own);
        }
        self.plan.params.iter().enumerate().find_map(|(s, info)| {
            let ParamRole::Concat { parts } = &info.role else {
                return None;
            };
            let mut start = 0;
            for &q in parts {
                let len = self.plan.params[q].numel() as usize;
                if q == p {
                    return self.params.get(s)?.get(start..start + len);
                }
                start += len;
            }
            None
        })
    }

    /// Where the programs run.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The CPU executor, if programs run on the CPU.
    pub fn cpu_executor(&mut self) -> Option<&mut Executor<CpuBackend>> {
        match &mut self.backend {
            Backend::Cpu(e) => Some(&mut **e),
            Backend::Cuda(_) => None,
        }
    }

    pub fn total_steps(&self) -> u64 {
        self.plan.train.steps
    }

    /// Frozen leading columns of parameter `p` at step `t` (0 for tensors that do not freeze by columns).
    pub fn frozen_cols(&self, p: usize, t: u64) -> usize {
        let info = &self.plan.params[p];
        let ParamRole::Adapter {
            adapter,
            column_frozen: true,
            ..
        } = info.role
        else {
            return 0;
        };
        let Some((_, schedule)) = self.plan.adapters[adapter].column_frozen else {
            return 0;
        };
        let r = info.shape.get(1).copied().unwrap_or(1) as u64;
        schedule.frozen_cols(t, self.total_steps(), r) as usize
    }

    /// Runs one optimizer step (with gradient accumulation).
    pub fn train_step(&mut self) -> Result<StepStats, StepError> {
        let t = self.step;
        let steps = self.total_steps();
        let phase_index = self.plan.phase_index_at(t).ok_or(StepError::NoTargets { step: t })?;
        let accumulate = self.plan.train.accumulate.max(1) as usize;
        let batches: Vec<Batch> = (0..accumulate).map(|_| self.data.next_batch()).collect();
        let seq = self.plan.seq;
        let flat: Vec<FlatBatch> = batches.iter().map(FlatBatch::of).collect();
        let counts: Vec<usize> = flat.iter().map(|f| f.count(seq)).collect();
        let total: usize = counts.iter().sum();
        if total == 0 {
            return Err(StepError::NoTargets { step: t });
        }
        let micro: Vec<device::Micro<'_>> = flat
            .iter()
            .zip(&counts)
            .map(|(f, &count)| device::Micro {
                inputs: f.inputs(),
                share: count as f32 / total as f32,
                count,
            })
            .collect();
        let tokens = flat.iter().map(|f| f.tokens.len()).sum();
        let trainable = &self.plan.phases[phase_index].trainable;
        let frozen: Vec<usize> = trainable.iter().map(|&p| self.frozen_cols(p, t)).collect();
        let tc = &self.plan.train;
        let lr = lr_at(tc.lr, tc.warmup, tc.schedule, t, steps);
        let cfg = AdamW {
            lr,
            beta1: tc.optimizer.beta1,
            beta2: tc.optimizer.beta2,
            eps: tc.optimizer.eps,
            weight_decay: tc.optimizer.weight_decay,
        };
        let phase = &self.plan.phases[phase_index];
        let (loss, norm) = match &mut self.backend {
            Backend::Cpu(exec) => {
                let mut state = device::HostState {
                    params: &mut self.params,
                    grads: &mut self.grads,
                    adam: &mut self.adam,
                };
                device::step(exec, &mut state, &self.plan, phase, &micro, &frozen, &cfg, t)?
            }
            Backend::Cuda(r) => {
                self.host_stale = true;
                device::step(&mut r.exec, &mut r.state, &self.plan, phase, &micro, &frozen, &cfg, t)?
            }
        };
        let trainable_entries = trainable
            .iter()
            .zip(&frozen)
            .map(|(&p, &f)| {
                let info = &self.plan.params[p];
                let cols = info.shape.get(1).copied().unwrap_or(1).max(1);
                let numel = info.numel() as usize;
                (numel - numel / cols * f.min(cols)) as u64
            })
            .sum();
        self.step += 1;
        Ok(StepStats {
            step: t,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            trainable: trainable_entries,
        })
    }

    /// The loss of the current parameters over all of `data`, forward only:
    /// its items in file order, `batch` at a time, the last batch filled with
    /// rows that carry no loss; batches weighted by their counted positions.
    pub fn validation_loss(&mut self, data: &Dataset) -> Result<Validation, StepError> {
        let cfg = BatchConfig {
            seq: self.plan.seq,
            batch: self.plan.batch,
            seed: 0,
            shuffle: Some(false),
        };
        let mut batcher = Batcher::new(data.clone(), cfg)?;
        let items = batcher.items_per_epoch();
        let (mut sum, mut targets) = (0.0f64, 0usize);
        for j in 0..batcher.batches_per_epoch() {
            let mut b = batcher.next_batch();
            // rows past the last item wrap into the next epoch: no loss there
            let real = items - j * self.plan.batch;
            for r in real..b.labels.nrows() {
                b.labels.row_mut(r).fill(IGNORE_INDEX);
                if let Some(c) = &mut b.classes {
                    c.labels[r] = IGNORE_INDEX;
                }
            }
            let c = FlatBatch::of(&b).count(self.plan.seq);
            if c == 0 {
                continue;
            }
            sum += f64::from(self.evaluate(&b, false)?.loss) * c as f64;
            targets += c;
        }
        if targets == 0 {
            return Err(StepError::NoValidationTargets);
        }
        Ok(Validation {
            step: self.step,
            loss: (sum / targets as f64) as f32,
            targets,
        })
    }

    /// The loss (and logits) of the current parameters on `batch`, forward only.
    pub fn evaluate(&mut self, batch: &Batch, logits: bool) -> Result<RunOutput, StepError> {
        let flat = FlatBatch::of(batch);
        Ok(self
            .backend
            .evaluate(&self.plan.eval, &self.params, flat.inputs(), logits)?)
    }

    /// Brings `params` and `adam` up to date with the device after GPU steps
    /// (parameters that train, and their AdamW state; frozen ones never
    /// change). A no-op on the CPU, where they are the state itself. Call it
    /// before anything reads them: a checkpoint, an export, a merge.
    pub fn sync_host(&mut self) -> Result<(), ExecError> {
        let Backend::Cuda(r) = &mut self.backend else {
            return Ok(());
        };
        if !self.host_stale {
            return Ok(());
        }
        for p in 0..self.params.len() {
            if !self.grads[p].is_empty() {
                r.state
                    .download(r.exec.backend_mut(), p, &mut self.params[p], &mut self.adam[p])?;
            }
        }
        self.host_stale = false;
        Ok(())
    }

    /// Copies `params` and `adam` to the device (after a resume wrote them on the host).
    pub fn sync_device(&mut self) -> Result<(), ExecError> {
        let Backend::Cuda(r) = &mut self.backend else {
            return Ok(());
        };
        for p in 0..self.params.len() {
            if !self.grads[p].is_empty() {
                r.state
                    .upload(r.exec.backend_mut(), p, &self.params[p], &self.adam[p])?;
            }
        }
        self.host_stale = false;
        Ok(())
    }
}
