//! One optimizer step on any backend: micro-batches through the executor, then frozen columns, norm, clipping and AdamW on the backend.
//!
//! The step is written once, generic over [`Backend`] and over where the
//! trainable state lives ([`TrainState`]): on the CPU it is the trainer's
//! host vectors themselves ([`HostState`]); on a GPU it stays on the device
//! for the whole run ([`Resident`]) and only the loss (and the f64 gradient
//! norm) comes back per step; parameters come to the host for checkpoints
//! (`Trainer::sync_host`).

use lamda_compiler::passes::memory_plan::Program;
use lamda_compiler::plan::Plan;

use super::StepError;
use crate::exec::{Backend, ExecError, Executor, Inputs};
use crate::ops::{AdamState, AdamW, OpsError};

/// Parameters, gradients and AdamW moments of a run, wherever they live.
pub trait TrainState<B: Backend> {
    /// Every parameter (Plan order) and every gradient (empty for those that never train).
    fn buffers(&mut self) -> (&[B::Buf], &mut [B::Buf]);
    /// The gradient of `p`.
    fn grad(&mut self, p: usize) -> &mut B::Buf;
    /// Parameter `p`, its gradient, its two moments and its step count.
    fn adam(&mut self, p: usize) -> AdamParts<'_, B>;
    /// AdamW by the reference op instead of the generated kernel (the CPU's
    /// unfused plans); None where the state does not live on the host.
    fn reference_adamw(
        &mut self,
        _p: usize,
        _cfg: &AdamW,
        _cols: usize,
        _frozen: usize,
    ) -> Option<Result<bool, OpsError>> {
        None
    }
}

/// What one AdamW update touches.
pub struct AdamParts<'a, B: Backend> {
    pub param: &'a mut B::Buf,
    pub grad: &'a B::Buf,
    pub m: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub step: &'a mut u64,
}

/// The CPU's state: the trainer's own host vectors.
pub struct HostState<'a> {
    pub params: &'a mut [Vec<f32>],
    pub grads: &'a mut [Vec<f32>],
    pub adam: &'a mut [AdamState],
}

impl<B: Backend<Buf = Vec<f32>>> TrainState<B> for HostState<'_> {
    fn buffers(&mut self) -> (&[Vec<f32>], &mut [Vec<f32>]) {
        (self.params, self.grads)
    }
    fn grad(&mut self, p: usize) -> &mut Vec<f32> {
        &mut self.grads[p]
    }
    fn adam(&mut self, p: usize) -> AdamParts<'_, B> {
        let st = &mut self.adam[p];
        AdamParts {
            param: &mut self.params[p],
            grad: &self.grads[p],
            m: &mut st.exp_avg,
            v: &mut st.exp_avg_sq,
            step: &mut st.step,
        }
    }
    fn reference_adamw(&mut self, p: usize, cfg: &AdamW, cols: usize, frozen: usize) -> Option<Result<bool, OpsError>> {
        Some(crate::ops::adamw_step(
            cfg,
            &mut self.params[p],
            &self.grads[p],
            &mut self.adam[p],
            cols,
            frozen,
        ))
    }
}

/// Parameters, gradients and AdamW moments kept on a device for the whole run.
pub struct DeviceState<B: Backend> {
    /// Every parameter, Plan order: (numel), f32 (bf16 where a frozen weight is stored narrow).
    pub params: Vec<B::Buf>,
    /// Gradients of the parameters that train in some phase (empty buffers for the others): (numel).
    pub grads: Vec<B::Buf>,
    /// AdamW first and second moments: (numel) each, empty for parameters that never train.
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// AdamW steps taken per parameter.
    pub steps: Vec<u64>,
}

impl<B: Backend> DeviceState<B> {
    /// The state for `params` (already on the device): zeroed gradients and
    /// moments for the parameters in `trainable`, nothing for the others.
    pub fn new(be: &mut B, params: Vec<B::Buf>, trainable: &[usize]) -> Result<Self, ExecError> {
        let n = params.len();
        let mut zeros = |p: usize| -> Result<B::Buf, ExecError> {
            if trainable.contains(&p) {
                be.alloc(B::buf_len(&params[p]))
            } else {
                Ok(B::Buf::default())
            }
        };
        let grads = (0..n).map(&mut zeros).collect::<Result<Vec<_>, _>>()?;
        let m = (0..n).map(&mut zeros).collect::<Result<Vec<_>, _>>()?;
        let v = (0..n).map(&mut zeros).collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceState {
            params,
            grads,
            m,
            v,
            steps: vec![0; n],
        })
    }

    /// Copies parameter `p` and its AdamW state to the host (`adam` is left
    /// alone for a parameter that never trains).
    pub fn download(&self, be: &mut B, p: usize, param: &mut Vec<f32>, adam: &mut AdamState) -> Result<(), ExecError> {
        let len = B::buf_len(&self.params[p]);
        be.download(B::view(&self.params[p], 0, len)?, param)?;
        if B::buf_len(&self.m[p]) == len && len > 0 {
            be.download(B::view(&self.m[p], 0, len)?, &mut adam.exp_avg)?;
            be.download(B::view(&self.v[p], 0, len)?, &mut adam.exp_avg_sq)?;
            adam.step = self.steps[p];
        }
        Ok(())
    }

    /// Copies parameter `p` and its AdamW state from the host (after a resume).
    pub fn upload(&mut self, be: &mut B, p: usize, param: &[f32], adam: &AdamState) -> Result<(), ExecError> {
        let len = B::buf_len(&self.params[p]);
        be.upload(param, B::view_mut(&mut self.params[p], len)?)?;
        if B::buf_len(&self.m[p]) == len && len > 0 {
            be.upload(&adam.exp_avg, B::view_mut(&mut self.m[p], len)?)?;
            be.upload(&adam.exp_avg_sq, B::view_mut(&mut self.v[p], len)?)?;
            self.steps[p] = adam.step;
        }
        Ok(())
    }
}

impl<B: Backend> TrainState<B> for DeviceState<B> {
    fn buffers(&mut self) -> (&[B::Buf], &mut [B::Buf]) {
        (&self.params, &mut self.grads)
    }
    fn grad(&mut self, p: usize) -> &mut B::Buf {
        &mut self.grads[p]
    }
    fn adam(&mut self, p: usize) -> AdamParts<'_, B> {
        AdamParts {
            param: &mut self.params[p],
            grad: &self.grads[p],
            m: &mut self.m[p],
            v: &mut self.v[p],
            step: &mut self.steps[p],
        }
    }
}

/// A run whose state stays on a device: the executor that runs there and the state.
pub struct Resident<B: Backend> {
    pub exec: Executor<B>,
    pub state: DeviceState<B>,
}

/// One micro-batch: its integer inputs, and its share of the step's counted targets.
pub struct Micro<'a> {
    pub inputs: Inputs<'a>,
    pub share: f32,
    /// Counted targets of this micro-batch.
    pub count: usize,
}

/// Runs `program` over the micro-batches (gradients accumulate into the
/// state's gradient buffers, zeroed first for `trainable`); returns the
/// mean loss over all counted targets.
pub fn accumulate<B: Backend, S: TrainState<B>>(
    exec: &mut Executor<B>,
    state: &mut S,
    program: &Program,
    trainable: &[usize],
    micro: &[Micro<'_>],
) -> Result<f32, StepError> {
    for &p in trainable {
        let g = state.grad(p);
        let len = B::buf_len(g);
        exec.backend_mut().zero(B::view_mut(g, len)?)?;
    }
    let total: usize = micro.iter().map(|m| m.count).sum();
    let mut loss_sum = 0.0f64;
    for m in micro {
        let (params, grads) = state.buffers();
        let out = exec.run_with(program, params, grads, m.inputs, m.share, false)?;
        loss_sum += f64::from(out.loss) * m.count as f64;
    }
    Ok((loss_sum / total.max(1) as f64) as f32)
}

/// One optimizer step at step `t`: [`accumulate`], a non-finite loss is an
/// error, then [`optimize`]. Returns the loss and the gradient norm.
#[allow(clippy::too_many_arguments)]
pub fn step<B: Backend, S: TrainState<B>>(
    exec: &mut Executor<B>,
    state: &mut S,
    plan: &Plan,
    phase: &lamda_compiler::plan::PhasePlan,
    micro: &[Micro<'_>],
    frozen: &[usize],
    cfg: &AdamW,
    t: u64,
) -> Result<(f32, f64), StepError> {
    let loss = accumulate(exec, state, &phase.program, &phase.trainable, micro)?;
    if !loss.is_finite() {
        return Err(StepError::NonFinite { step: t, loss });
    }
    // Unfused plans are the reference path: AdamW by the reference op too, where the state offers it.
    let reference = !plan.fused;
    let norm = optimize(
        exec.backend_mut(),
        state,
        plan,
        &phase.trainable,
        frozen,
        cfg,
        reference,
    )?;
    Ok((loss, norm))
}

/// After the gradients are in: zero the frozen columns, measure the global
/// norm (f64), clip, and run AdamW on every tensor of `trainable` (the
/// generated kernel, or the reference op where `reference` and the state
/// offers it). `frozen[i]` (frozen leading columns) belongs to
/// `trainable[i]`. Returns the norm before clipping.
#[allow(clippy::too_many_arguments)]
pub fn optimize<B: Backend, S: TrainState<B>>(
    be: &mut B,
    state: &mut S,
    plan: &Plan,
    trainable: &[usize],
    frozen: &[usize],
    cfg: &AdamW,
    reference: bool,
) -> Result<f64, StepError> {
    let cols = |p: usize| plan.params[p].shape.get(1).copied().unwrap_or(1);
    for (&p, &f) in trainable.iter().zip(frozen) {
        let g = state.grad(p);
        let len = B::buf_len(g);
        if f > 0 {
            be.zero_cols(B::view_mut(g, len)?, cols(p), f)?;
        }
    }
    let norm = {
        let (_, grads) = state.buffers();
        let mut views: smallvec::SmallVec<[B::View<'_>; 64]> = smallvec::SmallVec::new();
        for &p in trainable {
            views.push(B::view(&grads[p], 0, B::buf_len(&grads[p]))?);
        }
        be.sum_sq(&views)?.sqrt()
    };
    if let Some(clip) = plan.train.clip
        && norm > clip
    {
        let s = (clip / (norm + 1e-6)) as f32;
        for &p in trainable {
            let g = state.grad(p);
            let len = B::buf_len(g);
            be.scale_inplace(B::view_mut(g, len)?, s)?;
        }
    }
    for (&p, &f) in trainable.iter().zip(frozen) {
        let c = cols(p);
        let name = || plan.params[p].name.clone();
        if reference && let Some(r) = state.reference_adamw(p, cfg, c, f) {
            r.map_err(|source| StepError::Optimizer { name: name(), source })?;
            continue;
        }
        let parts = state.adam(p);
        let len = B::buf_len(parts.param);
        if f >= c || len == 0 {
            continue;
        }
        *parts.step += 1;
        let scalars = crate::ops::adamw::fused_scalars(cfg, *parts.step, f);
        let res = be.adamw(
            B::view_mut(parts.param, len)?,
            B::view(parts.grad, 0, len)?,
            B::view_mut(parts.m, len)?,
            B::view_mut(parts.v, len)?,
            c,
            &scalars,
        );
        res.map_err(|e: ExecError| match e {
            ExecError::Op { source, .. } => StepError::Optimizer { name: name(), source },
            other => StepError::Exec(other),
        })?;
    }
    Ok(norm)
}
