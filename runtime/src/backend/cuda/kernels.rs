//! Fused kernels on host buffers: the interpreter's launch contract, run on the GPU (tests and tools).
//!
//! [`KernelRunner::run`] takes the same arguments as
//! [`crate::backend::cpu::interp::run`], checks them with the same
//! [`check_launch`], uploads every buffer, launches the generated kernel and
//! copies the written buffers back, so a test can run one kernel on both and
//! compare.

use lamda_compiler::codegen::cuda::block_threads;
use lamda_compiler::kernel::Kernel;

use super::gpu::{DevBuf, Gpu, KArg as DArg, int};
use super::{CudaDevice, CudaError};
use crate::backend::cpu::interp::{KArg, check_launch};

/// A module of fused kernels loaded on a device.
pub struct KernelRunner {
    gpu: Gpu,
}

impl KernelRunner {
    /// Compiles `kernels` (with the support kernels) for `dev`.
    pub fn new(dev: CudaDevice, kernels: &[Kernel]) -> Result<KernelRunner, CudaError> {
        Ok(KernelRunner {
            gpu: Gpu::new(dev, kernels, false)?,
        })
    }

    /// Runs `k` over `rows` rows on the GPU, as the interpreter would on the CPU:
    /// written arguments (`F32Mut`) are uploaded with their contents and copied back.
    pub fn run(&self, k: &Kernel, args: &mut [KArg<'_>], rows: usize) -> Result<(), CudaError> {
        check_launch(k, args, rows).map_err(|e| CudaError::Program(e.to_string()))?;
        let gpu = &self.gpu;
        let mut f32_bufs: Vec<(usize, DevBuf<f32>)> = Vec::new();
        let mut i64_bufs: Vec<DevBuf<i64>> = Vec::new();
        let mut dargs = Vec::with_capacity(args.len() + 1);
        for (i, a) in args.iter().enumerate() {
            match a {
                KArg::F32(b) => {
                    let d = gpu.upload(b)?;
                    dargs.push(DArg::Ptr(d.ptr(gpu)));
                    f32_bufs.push((usize::MAX, d));
                }
                KArg::F32Mut(b) => {
                    let d = gpu.upload(b)?;
                    dargs.push(DArg::Ptr(d.ptr(gpu)));
                    f32_bufs.push((i, d));
                }
                KArg::I64(b) => {
                    let d = gpu.upload(b)?;
                    dargs.push(DArg::Ptr(d.ptr(gpu)));
                    i64_bufs.push(d);
                }
                KArg::Scalar(s) => dargs.push(DArg::F32(*s)),
            }
        }
        dargs.push(int(rows, "rows")?);
        gpu.launch(
            &lamda_compiler::kernel::symbol(&k.name),
            rows.min(1 << 16) as u32,
            block_threads(k),
            0,
            &dargs,
        )?;
        for (i, d) in &f32_bufs {
            if let Some(KArg::F32Mut(host)) = args.get_mut(*i) {
                let v = gpu.download(d)?;
                host.iter_mut().zip(v).for_each(|(h, x)| *h = x);
            }
        }
        gpu.dev.synchronize()
    }
}
