//! The CUDA backend: runs a Plan's programs on an NVIDIA GPU through the one executor, op for op as on the CPU.
//!
//! # Design
//!
//! The GPU stays optional. Nothing here links against CUDA: cudarc loads
//! `libcuda`, `libnvrtc` and `libcublas` at run time, and panics when a
//! library is missing, so every entry point first asks whether the library
//! can be loaded ([`driver_available`], [`nvrtc_available`],
//! [`cublas_available`]) and returns a [`CudaError`] instead.
//!
//! - [`device`]: detection ([`CudaDevice::detect`]), one context and one
//!   stream per device; event tracking is off (a single stream orders
//!   everything), so buffers are plain stream-ordered allocations.
//! - [`gpu`]: device buffers, kernel launches (support kernels by name,
//!   kernel-IR kernels with their launch contract), cuBLAS SGEMM with the
//!   row-major transposition trick, and the NVRTC module of a Plan (the
//!   support kernels plus every fused kernel of its programs and the
//!   kernel-IR instances its unfused ops and AdamW run, compiled once per
//!   process for a given set of kernel names and architecture).
//! - [`backend`]: [`CudaBackend`], the GPU as a [`crate::exec::Backend`]:
//!   [`crate::exec::Executor`]`<CudaBackend>` runs programs on the device
//!   (the one executor owns the run loop, the value table, the slot pool,
//!   fused binding, loss reduction and target counting; the backend stores
//!   and computes). Pool, parameters, gradients and AdamW moments are device
//!   buffers ([`CudaBuf`]); op temporaries come from one reused scratch
//!   buffer; losses are read back and summed in f64 as the CPU does.
//! - [`kernels`]: [`KernelRunner`], one fused kernel on host buffers with the
//!   interpreter's launch contract (for tests against the interpreter).
//!
//! Precision ([`Precision`]): `F32` keeps f32 storage and f32 arithmetic
//! everywhere (the parity mode); cuBLAS runs in its default math mode (no
//! TF32) unless [`CudaOptions::tf32`] asks for it. `Bf16` stores the
//! weight matrices that never train in bf16 ([`CudaBackend::param_buffer`],
//! [`plan_bf16_storage`]) and rounds the saved feature activations to bf16
//! (in place, in their f32 pool slots) as soon as they are made
//! ([`backend::bf16_saved_schedule`]); trainable parameters, gradients and
//! AdamW moments stay f32. GEMMs reading a bf16 operand run in bf16 with f32
//! accumulation (`cublasGemmEx`); every other op widens its bf16 operands to
//! f32 into the scratch buffer, except the embedding, which reads a bf16
//! table itself.

pub mod backend;
pub mod device;
pub mod gpu;
pub mod kernels;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use backend::{
    CudaBackend, CudaBuf, CudaOptions, CudaView, CudaViewMut, Precision, bf16_storage, plan_bf16_storage,
};
pub use device::CudaDevice;
pub use kernels::KernelRunner;

use crate::exec::ExecError;
use crate::ops::OpsError;

/// Why the CUDA backend cannot run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` cannot be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver: libcuda cannot be loaded (is an NVIDIA driver installed?)")]
    NoDriver,
    /// The driver loads but reports no usable device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// `libnvrtc` cannot be loaded.
    #[error(
        "NVRTC is missing: libnvrtc cannot be loaded (pip install nvidia-cuda-nvrtc-cu12 and add its lib folder to LD_LIBRARY_PATH)"
    )]
    NoNvrtc,
    /// `libcublas` cannot be loaded.
    #[error("cuBLAS is missing: libcublas cannot be loaded (add the CUDA toolkit's lib folder to LD_LIBRARY_PATH)")]
    NoCublas,
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// An op the CUDA backend does not implement yet.
    #[error(
        "`{0}` is not implemented on CUDA yet (encoders with a classification head train on the CPU: `device cpu`)"
    )]
    Unsupported(&'static str),
    /// NVRTC rejected the module (with its log).
    #[error("NVRTC ({arch}): {msg}")]
    Compile { arch: String, msg: String },
    /// The generated CUDA C could not be produced.
    #[error(transparent)]
    Codegen(#[from] lamda_compiler::codegen::cuda::CodegenError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(String),
    /// An op rejected its inputs (the same error the CPU executor reports).
    #[error("{label}: {source}")]
    Op { label: String, source: OpsError },
    /// The program or its arguments are inconsistent.
    #[error("{0}")]
    Program(String),
}

impl CudaError {
    /// The error with the instruction's label in front (for errors raised inside one instruction).
    pub fn at(self, label: &str) -> CudaError {
        match self {
            CudaError::Op { source, .. } => CudaError::Op {
                label: label.to_string(),
                source,
            },
            CudaError::Program(m) => CudaError::Program(format!("{label}: {m}")),
            CudaError::Driver(m) => CudaError::Driver(format!("{label}: {m}")),
            CudaError::Blas(m) => CudaError::Blas(format!("{label}: {m}")),
            other => other,
        }
    }
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

impl From<CudaError> for ExecError {
    /// For callers that speak the CPU executor's error type (the trainer).
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Op { label, source } => ExecError::Op { label, source },
            other => ExecError::Internal(other.to_string()),
        }
    }
}

/// Whether `libcuda` (the driver) can be loaded. Never panics.
pub fn driver_available() -> bool {
    // SAFETY: loads the driver library by name (running its initialisers), as any CUDA program does.
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether `libnvrtc` can be loaded (no GPU needed). Never panics.
pub fn nvrtc_available() -> bool {
    // SAFETY: as in `driver_available`.
    catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether `libcublas` can be loaded. Never panics.
pub fn cublas_available() -> bool {
    // SAFETY: as in `driver_available`.
    catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false)
}

/// Compiles CUDA C to PTX with NVRTC for a virtual architecture (`compute_90`),
/// with `--fmad=false` (no contraction of `a * b + c`, so elementwise formulas
/// round as on the CPU) and NVRTC's default IEEE division and square root.
/// Errors carry NVRTC's log.
pub fn compile_ptx(src: &str, arch: &'static str) -> Result<String, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let fail = |msg: String| CudaError::Compile {
        arch: arch.to_string(),
        msg,
    };
    if src.contains('\0') {
        return Err(fail("the source contains a NUL byte".into()));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        arch: Some(arch),
        name: Some("lamdac.cu".into()),
        ..Default::default()
    };
    // cudarc unwraps a few NVRTC calls internally (the log of a failed
    // compile, a missing symbol): turn such a panic into an error.
    let res = catch_unwind(AssertUnwindSafe(|| {
        cudarc::nvrtc::compile_ptx_with_opts(src, opts).map(|ptx| ptx.to_src())
    }))
    .map_err(|_| fail("NVRTC panicked (a symbol missing from this libnvrtc?)".into()))?;
    match res {
        Ok(ptx) => Ok(ptx),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(fail(log.to_string_lossy().into_owned())),
        Err(e) => Err(fail(e.to_string())),
    }
}
