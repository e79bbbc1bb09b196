//! The device-resident training step (issue 8): with parameters, gradients
//! and AdamW moments kept on the backend (`train::device::DeviceState`, what
//! a CUDA run uses), a step moves nothing between host and device but the
//! batch in and the loss and the gradient norm out, and it trains exactly as
//! the host trainer does.
//!
//! The backend here is the CPU one behind a counter of every call that
//! crosses between host and device memory on a real device: copies
//! (`download`, `upload`, `set_ids`) and the calls that return values to the
//! host (`cross_entropy`, `linear_cross_entropy` and `sum` give a loss,
//! `sum_sq` the norm). The same generic step (`device::accumulate`,
//! `device::optimize`) runs on the GPU with `CudaBackend`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lamda_compiler::kernel::Kernel;
use lamda_runtime::exec::{
    Backend, CpuBackend, ExecError, Executor, Gemm, IdsRef, Inputs, KernelArg, LossSum, Pointwise,
};
use lamda_runtime::ops::{AdamW, AttnShape};
use lamda_runtime::session::RunOptions;

mod common;
use common::prepare;
use lamda_runtime::train::device::{self, DeviceState, Micro};
use lamda_runtime::train::{count_targets, lr_at};

/// Host <-> device traffic of a step.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Traffic {
    /// `download` calls (device buffer to host).
    downloads: usize,
    /// `upload` calls (host to device buffer).
    uploads: usize,
    /// `set_ids` calls (token ids and labels in).
    ids: usize,
    /// Scalars returned to the host: losses and the norm.
    scalars: usize,
}

/// The CPU backend, counting [`Traffic`].
#[derive(Default)]
struct Counting {
    inner: CpuBackend,
    traffic: Traffic,
}

fn ids<'a>(t: IdsRef<'a, Counting>) -> IdsRef<'a, CpuBackend> {
    IdsRef {
        host: t.host,
        dev: t.dev,
    }
}

impl Backend for Counting {
    type Buf = Vec<f32>;
    type Ids = Vec<i64>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>, ExecError> {
        self.inner.alloc(len)
    }
    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn view(buf: &Vec<f32>, start: usize, len: usize) -> Result<&[f32], ExecError> {
        CpuBackend::view(buf, start, len)
    }
    fn view_mut(buf: &mut Vec<f32>, len: usize) -> Result<&mut [f32], ExecError> {
        CpuBackend::view_mut(buf, len)
    }
    fn reborrow<'s>(v: &'s mut &mut [f32]) -> &'s mut [f32] {
        v
    }
    fn set_ids(&mut self, host: &[i64], dst: &mut Vec<i64>) -> Result<(), ExecError> {
        self.traffic.ids += 1;
        self.inner.set_ids(host, dst)
    }
    fn download(&mut self, x: &[f32], out: &mut Vec<f32>) -> Result<(), ExecError> {
        self.traffic.downloads += 1;
        self.inner.download(x, out)
    }
    fn upload(&mut self, host: &[f32], y: &mut [f32]) -> Result<(), ExecError> {
        self.traffic.uploads += 1;
        self.inner.upload(host, y)
    }
    fn zero(&mut self, y: &mut [f32]) -> Result<(), ExecError> {
        self.inner.zero(y)
    }
    fn copy(&mut self, x: &[f32], y: &mut [f32]) -> Result<(), ExecError> {
        self.inner.copy(x, y)
    }
    fn embedding(
        &mut self,
        t: IdsRef<'_, Self>,
        table: &[f32],
        vocab: usize,
        d: usize,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.embedding(ids(t), table, vocab, d, y)
    }
    fn rmsnorm(
        &mut self,
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
        y: &mut [f32],
        rstd: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.rmsnorm(x, w, n, d, eps, y, rstd)
    }
    fn rmsnorm_grad(
        &mut self,
        g: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
        dx: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.rmsnorm_grad(g, x, w, rstd, n, d, dx)
    }
    fn gemm(
        &mut self,
        form: Gemm,
        a: &[f32],
        b: &[f32],
        n: usize,
        k: usize,
        m: usize,
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<(), ExecError> {
        self.inner.gemm(form, a, b, n, k, m, c, accumulate)
    }
    fn linear_split(
        &mut self,
        x: &[f32],
        w: &[f32],
        n: usize,
        k: usize,
        widths: &[usize],
        ys: &mut [&mut [f32]],
    ) -> Result<(), ExecError> {
        self.inner.linear_split(x, w, n, k, widths, ys)
    }
    fn linear_grad_input_cat(
        &mut self,
        gs: &[&[f32]],
        w: &[f32],
        n: usize,
        k: usize,
        widths: &[usize],
        dx: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.linear_grad_input_cat(gs, w, n, k, widths, dx)
    }
    fn split_cols(&mut self, x: &[f32], n: usize, widths: &[usize], outs: &mut [&mut [f32]]) -> Result<(), ExecError> {
        self.inner.split_cols(x, n, widths, outs)
    }
    fn concat_cols(&mut self, xs: &[&[f32]], n: usize, widths: &[usize], y: &mut [f32]) -> Result<(), ExecError> {
        self.inner.concat_cols(xs, n, widths, y)
    }
    fn pointwise(&mut self, op: Pointwise, a: &[f32], b: Option<&[f32]>, y: &mut [f32]) -> Result<(), ExecError> {
        self.inner.pointwise(op, a, b, y)
    }
    fn col_scale_grad(&mut self, g: &[f32], x: &[f32], k: usize, dv: &mut [f32]) -> Result<(), ExecError> {
        self.inner.col_scale_grad(g, x, k, dv)
    }
    fn rope(
        &mut self,
        x: &[f32],
        n: usize,
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
        inverse: bool,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.rope(x, n, heads, head_dim, seq, theta, inverse, y)
    }
    fn col_sum(&mut self, g: &[f32], k: usize, db: &mut [f32]) -> Result<(), ExecError> {
        self.inner.col_sum(g, k, db)
    }
    fn pool(
        &mut self,
        h: &[f32],
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        y: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.pool(h, ids(lengths), batch, seq, d, mean, y)
    }
    fn pool_grad(
        &mut self,
        g: &[f32],
        lengths: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        d: usize,
        mean: bool,
        dh: &mut [f32],
    ) -> Result<(), ExecError> {
        self.inner.pool_grad(g, ids(lengths), batch, seq, d, mean, dh)
    }
    fn attention(
        &mut self,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: Option<IdsRef<'_, Self>>,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), ExecError> {
        let lens = lens.map(ids);
        self.inner.attention(shape, q, k, v, lens, o, lse)
    }
    fn attention_grad(
        &mut self,
        shape: &AttnShape,
        g: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: Option<IdsRef<'_, Self>>,
        lse: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) -> Result<(), ExecError> {
        let lens = lens.map(ids);
        self.inner.attention_grad(shape, g, q, k, v, lens, lse, dq, dk, dv)
    }
    fn cross_entropy(
        &mut self,
        logits: &[f32],
        labels: IdsRef<'_, Self>,
        batch: usize,
        seq: usize,
        vocab: usize,
        grad: Option<(&mut [f32], f32)>,
    ) -> Result<LossSum, ExecError> {
        self.traffic.scalars += 1;
        self.inner.cross_entropy(logits, ids(labels), batch, seq, vocab, grad)
    }
    fn linear_cross_entropy(
        &mut self,
        h: &[f32],
        w: &[f32],
        targets: IdsRef<'_, Self>,
        n: usize,
        d: usize,
        vocab: usize,
        scale: f32,
        rows: &mut [f32],
        dh: &mut [f32],
    ) -> Result<LossSum, ExecError> {
        self.traffic.scalars += 1;
        self.inner
            .linear_cross_entropy(h, w, ids(targets), n, d, vocab, scale, rows, dh)
    }
    fn add_into(&mut self, dst: &mut [f32], src: &[f32]) -> Result<(), ExecError> {
        self.inner.add_into(dst, src)
    }
    fn launch(&mut self, k: &Kernel, args: &mut [KernelArg<'_, Self>], rows: usize) -> Result<(), ExecError> {
        let mut inner: Vec<KernelArg<'_, CpuBackend>> = args
            .iter_mut()
            .map(|a| match a {
                KernelArg::Read(x) => KernelArg::Read(*x),
                KernelArg::Write(y) => KernelArg::Write(&mut **y),
                KernelArg::Ids(t) => KernelArg::Ids(ids(*t)),
                KernelArg::Scalar(s) => KernelArg::Scalar(*s),
            })
            .collect();
        self.inner.launch(k, &mut inner, rows)
    }
    fn sum(&mut self, x: &[f32]) -> Result<f64, ExecError> {
        self.traffic.scalars += 1;
        self.inner.sum(x)
    }
    fn sum_sq(&mut self, xs: &[&[f32]]) -> Result<f64, ExecError> {
        self.traffic.scalars += 1;
        self.inner.sum_sq(xs)
    }
    fn scale_inplace(&mut self, x: &mut [f32], s: f32) -> Result<(), ExecError> {
        self.inner.scale_inplace(x, s)
    }
    fn zero_cols(&mut self, x: &mut [f32], cols: usize, frozen: usize) -> Result<(), ExecError> {
        self.inner.zero_cols(x, cols, frozen)
    }
    fn adamw(
        &mut self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        cols: usize,
        scalars: &[f32; 9],
    ) -> Result<(), ExecError> {
        self.inner.adamw(p, g, m, v, cols, scalars)
    }
}

/// Steps of the quickstart spec (fused, one micro-batch a step) on the
/// device-resident state and on the host trainer, from the same start.
#[test]
fn a_device_resident_step_moves_only_the_batch_and_two_scalars_and_trains_as_the_host_does() {
    let dir = std::env::temp_dir().join(format!("lamdac-resident-{}", std::process::id()));
    let opts = RunOptions {
        spec: "examples/quickstart.lamda".into(),
        out: Some(dir.clone()),
        fuse: true,
        ..RunOptions::default()
    };
    let mut s = prepare(&opts).unwrap();
    let tr = &mut s.trainer;
    assert_eq!(
        tr.plan.train.accumulate.max(1),
        1,
        "the quickstart accumulates; adapt the test"
    );
    let plan = tr.plan.clone();
    let trainable_ever: Vec<usize> = (0..plan.params.len()).filter(|&p| !tr.grads[p].is_empty()).collect();
    let mut exec = Executor::on(Counting::default());
    exec.backend_mut().inner.precompile(&plan.kernels()).unwrap();
    let params: Vec<Vec<f32>> = tr.params.clone();
    let mut state = DeviceState::new(exec.backend_mut(), params, &trainable_ever).unwrap();
    // the host trainer draws the batches; the device state trains on the same ones
    let mut data = tr.data.clone();
    const STEPS: u64 = 3;
    for t in 0..STEPS {
        let batch = data.next_batch();
        let tokens: Vec<i64> = batch.input_ids.iter().copied().collect();
        let labels: Vec<i64> = batch.labels.iter().copied().collect();
        let count = count_targets(&labels, plan.seq);
        let micro = [Micro {
            inputs: Inputs {
                tokens: &tokens,
                labels: &labels,
                token_types: &[],
                lengths: &[],
            },
            share: 1.0,
            count,
        }];
        let phase = plan.phase_at(t).unwrap();
        let frozen: Vec<usize> = phase.trainable.iter().map(|&p| tr.frozen_cols(p, t)).collect();
        let tc = &plan.train;
        let cfg = AdamW {
            lr: lr_at(tc.lr, tc.warmup, tc.schedule, t, tc.steps),
            beta1: tc.optimizer.beta1,
            beta2: tc.optimizer.beta2,
            eps: tc.optimizer.eps,
            weight_decay: tc.optimizer.weight_decay,
        };
        exec.backend_mut().traffic = Traffic::default();
        let loss = device::accumulate(&mut exec, &mut state, &phase.program, &phase.trainable, &micro).unwrap();
        let be = exec.backend_mut();
        let norm = device::optimize(be, &mut state, &plan, &phase.trainable, &frozen, &cfg, false).unwrap();
        let traffic = exec.backend().traffic;
        // the batch in (tokens, labels, shifted targets), one loss and the norm out, nothing else
        assert_eq!(traffic.downloads, 0, "step {t}: {traffic:?}");
        assert_eq!(traffic.uploads, 0, "step {t}: {traffic:?}");
        assert!(traffic.ids <= 3, "step {t}: {traffic:?}");
        assert_eq!(traffic.scalars, 2, "step {t}: a loss and the norm, {traffic:?}");
        // the host trainer, on its own
        let stats = tr.train_step().unwrap();
        assert_eq!(stats.loss.to_bits(), loss.to_bits(), "step {t}: loss");
        assert_eq!(stats.grad_norm.to_bits(), norm.to_bits(), "step {t}: gradient norm");
    }
    for &p in &trainable_ever {
        assert_eq!(
            state.params[p], tr.params[p],
            "parameter {} after {STEPS} steps",
            plan.params[p].name
        );
        assert_eq!(
            state.m[p], tr.adam[p].exp_avg,
            "first moment of {}",
            plan.params[p].name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
