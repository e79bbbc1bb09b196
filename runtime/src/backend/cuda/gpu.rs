//! Device buffers, kernel launches, cuBLAS GEMMs (f32, and bf16 in with f32 out) and the NVRTC module of a Plan.
//!
//! # Design
//!
//! Buffers are handed to kernels as raw device addresses (`u64`), not as
//! borrowed cudarc slices: an instruction reads several values of one table
//! and writes fresh ones, which Rust's borrows of a `Vec` of slices would not
//! allow, and with one stream and event tracking off the addresses are all
//! cudarc would pass anyway. Every launch goes through [`Gpu::launch`], which
//! finds the function by name in the Plan's module and checks the grid.
//!
//! GEMMs are row-major on our side and column-major in cuBLAS. A row-major
//! `(r, c)` buffer is the column-major `(c, r)` matrix, its transpose, so
//! `Y = X W^T` (row-major) is `Y^T = W X^T` (column-major) with W read
//! transposed: `sgemm(T, N, m, n, k, W, ld k, X, ld k, Y, ld m)`. The other
//! two products follow the same way (see [`Gpu::linear`] and friends).
//!
//! The module is compiled once per process for a given architecture and set
//! of fused kernels (a cache keyed by the sorted kernel names); the PTX is
//! then loaded into the context, where the driver compiles it for the GPU.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cublasStatus_t, cudaDataType,
};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use lamda_compiler::codegen::cuda::{block_threads, support};
use lamda_compiler::kernel::Kernel;

use super::kernels::{attn, module_source};
use super::{CudaDevice, CudaError, compile_ptx, cublas_available};

/// A device buffer of `len` elements (no allocation when empty).
pub struct DevBuf<T> {
    slice: Option<CudaSlice<T>>,
    len: usize,
    /// The device address of `slice` (0 when empty), read once when it is made.
    addr: u64,
}

impl<T> Default for DevBuf<T> {
    /// An empty buffer (allocates nothing).
    fn default() -> Self {
        DevBuf {
            slice: None,
            len: 0,
            addr: 0,
        }
    }
}

impl<T> DevBuf<T> {
    /// A buffer over `slice`, its address read on `stream` (event tracking is
    /// off, so the address is all a later `device_ptr` would give).
    fn new(slice: CudaSlice<T>, len: usize, stream: &cudarc::driver::CudaStream) -> Self {
        let addr = slice.device_ptr(stream).0;
        DevBuf {
            slice: Some(slice),
            len,
            addr,
        }
    }
    /// The device address (0 when empty), without the stream.
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address (0 when empty).
    pub(crate) fn ptr(&self, gpu: &Gpu) -> u64 {
        match &self.slice {
            Some(s) => s.device_ptr(&gpu.dev.stream).0,
            None => 0,
        }
    }
}

/// A kernel argument by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KArg {
    Ptr(u64),
    F32(f32),
    I32(i32),
    I64(i64),
}

/// Threads of a grid-stride elementwise launch.
const ELEM_THREADS: u32 = 256;

/// `x` as a kernel's `int`.
pub(crate) fn int(x: usize, what: &str) -> Result<KArg, CudaError> {
    i32::try_from(x)
        .map(KArg::I32)
        .map_err(|_| CudaError::Program(format!("{what} = {x} does not fit a 32-bit int")))
}

/// `x` as a kernel's `long long`.
pub(crate) fn long(x: usize) -> KArg {
    KArg::I64(x as i64)
}

/// Threads per block for a kernel that gives a block one row of `cols`.
pub(crate) fn row_threads(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// The device, its module of kernels and its cuBLAS handle.
pub struct Gpu {
    pub(crate) dev: CudaDevice,
    blas: CudaBlas,
    funcs: HashMap<String, CudaFunction>,
    _module: Arc<CudaModule>,
    arch: &'static str,
}

type PtxCache = Mutex<HashMap<(&'static str, Vec<String>), String>>;

fn ptx_cache() -> &'static PtxCache {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// PTX of the support and attention kernels plus the kernel-IR `kernels`, for the first of `archs` NVRTC accepts.
fn module_ptx(kernels: &[Kernel], archs: &[&'static str]) -> Result<(String, &'static str), CudaError> {
    let names: Vec<String> = kernels
        .iter()
        .map(|k| k.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let src = module_source(kernels)?;
    let mut first_err = None;
    for &arch in archs {
        let key = (arch, names.clone());
        if let Some(ptx) = ptx_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok((ptx.clone(), arch));
        }
        match compile_ptx(&src, arch) {
            Ok(ptx) => {
                ptx_cache()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, ptx.clone());
                return Ok((ptx, arch));
            }
            // An NVRTC older than the GPU: try an older virtual architecture.
            Err(CudaError::Compile { msg, .. }) if msg.contains("architecture") => {
                first_err.get_or_insert(CudaError::Compile {
                    arch: arch.to_string(),
                    msg,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_err.unwrap_or_else(|| CudaError::Program("no NVRTC architecture to compile for".into())))
}

impl Gpu {
    /// Compiles and loads the module (support kernels and the kernel-IR `kernels`) on `dev`
    /// and opens cuBLAS; `tf32` lets cuBLAS use TF32 tensor cores for SGEMM.
    pub fn new(dev: CudaDevice, kernels: &[Kernel], tf32: bool) -> Result<Gpu, CudaError> {
        if !cublas_available() {
            return Err(CudaError::NoCublas);
        }
        let (ptx, arch) = module_ptx(kernels, &dev.archs())?;
        let module = dev.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        let mut funcs = HashMap::new();
        let names = support::ALL
            .iter()
            .chain(attn::ALL)
            .map(|s| s.to_string())
            .chain(kernels.iter().map(|k| lamda_compiler::kernel::symbol(&k.name)));
        for name in names {
            if let std::collections::hash_map::Entry::Vacant(e) = funcs.entry(name) {
                let f = module.load_function(e.key())?;
                e.insert(f);
            }
        }
        let blas = CudaBlas::new(dev.stream.clone()).map_err(|e| CudaError::Blas(e.to_string()))?;
        if tf32 {
            // SAFETY: a valid handle and a mode of the enum.
            let st = unsafe {
                cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH)
            };
            if st != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(CudaError::Blas(format!("cublasSetMathMode: {st:?}")));
            }
        }
        Ok(Gpu {
            dev,
            blas,
            funcs,
            _module: module,
            arch,
        })
    }

    /// The NVRTC architecture the module was compiled for.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// An uninitialised buffer of `len` elements.
    pub(crate) fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<DevBuf<T>, CudaError> {
        if len == 0 {
            return Ok(DevBuf::default());
        }
        // SAFETY: every caller writes the whole buffer before reading it.
        let slice = unsafe { self.dev.stream.alloc::<T>(len) }?;
        Ok(DevBuf::new(slice, len, &self.dev.stream))
    }

    /// A zeroed buffer.
    pub(crate) fn zeros<T: DeviceRepr>(&self, len: usize) -> Result<DevBuf<T>, CudaError> {
        let b = self.alloc::<T>(len)?;
        self.memset_zero(b.ptr(self), len * std::mem::size_of::<T>())?;
        Ok(b)
    }

    /// A buffer holding `data`.
    pub(crate) fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<DevBuf<T>, CudaError> {
        if data.is_empty() {
            return Ok(DevBuf::default());
        }
        let slice = self.dev.stream.clone_htod(data)?;
        Ok(DevBuf::new(slice, data.len(), &self.dev.stream))
    }

    /// The contents of `b` (waits for the stream).
    pub(crate) fn download<T: DeviceRepr>(&self, b: &DevBuf<T>) -> Result<Vec<T>, CudaError> {
        match &b.slice {
            Some(s) => Ok(self.dev.stream.clone_dtoh(s)?),
            None => Ok(Vec::new()),
        }
    }

    /// Copies `data` to the device address `dst` (a live buffer of at least `data.len()` values).
    pub(crate) fn write_at<T: DeviceRepr>(&self, dst: u64, data: &[T]) -> Result<(), CudaError> {
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` starts a live buffer of at least `data.len()` values
        // (the callers check lengths); the stream is synchronized before
        // `data` can be dropped.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, self.dev.stream.cu_stream()) }?;
        self.dev.stream.synchronize()?;
        Ok(())
    }

    /// Copies `out.len()` values from the device address `src` into `out` (waits for the stream).
    pub(crate) fn read_at<T: DeviceRepr>(&self, src: u64, out: &mut [T]) -> Result<(), CudaError> {
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` starts a live buffer of at least `out.len()` values;
        // the stream is synchronized before `out` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, src, self.dev.stream.cu_stream()) }?;
        self.dev.stream.synchronize()?;
        Ok(())
    }

    /// `bytes` zero bytes at `ptr`.
    pub(crate) fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `ptr` is the start of a live buffer of at least `bytes` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, self.dev.stream.cu_stream()) }?;
        Ok(())
    }

    /// Copies `bytes` bytes from `src` to `dst` on the device.
    pub(crate) fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both are live buffers of at least `bytes` bytes, and do not overlap.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.dev.stream.cu_stream()) }?;
        Ok(())
    }

    /// Launches kernel `name` on a grid of `grid` blocks of `block` threads.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        shared: u32,
        args: &[KArg],
    ) -> Result<(), CudaError> {
        if grid == 0 {
            return Ok(());
        }
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| CudaError::Program(format!("kernel `{name}` is not in the module")))?;
        let mut b = self.dev.stream.launch_builder(f);
        for a in args {
            match a {
                KArg::Ptr(p) => b.arg(p),
                KArg::F32(x) => b.arg(x),
                KArg::I32(x) => b.arg(x),
                KArg::I64(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: the arguments follow the kernel's signature (`support` in
        // codegen/cuda.rs, or the fused kernel's argument list), every pointer
        // is a live buffer of the length the kernel indexes (the callers check
        // lengths against the program's shapes), and the grid loops cover
        // exactly the launch's elements.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// A grid-stride launch over `len` elements.
    pub(crate) fn launch_elems(&self, name: &str, len: usize, args: &[KArg]) -> Result<(), CudaError> {
        let grid = len.div_ceil(ELEM_THREADS as usize).min(4096) as u32;
        self.launch(name, grid, ELEM_THREADS, 0, args)
    }

    /// A block-per-row launch over `rows` rows of `cols` columns.
    pub(crate) fn launch_rows(&self, name: &str, rows: usize, cols: usize, args: &[KArg]) -> Result<(), CudaError> {
        let grid = rows.min(1 << 16) as u32;
        self.launch(name, grid, row_threads(cols), 0, args)
    }

    /// Launches the kernel-IR kernel `k` with its launch contract over `rows`
    /// rows: `args` in the kernel's argument order, each with the number of
    /// elements of its buffer (ignored for scalars), then `rows`; a grid of up
    /// to `rows` blocks (the kernel strides over the rest) of
    /// [`block_threads`] threads. Every buffer must hold exactly what the
    /// argument's type needs for `rows` rows, and every scalar argument be a
    /// [`KArg::F32`], so the kernel never indexes past a buffer.
    pub(crate) fn launch_kernel(&self, k: &Kernel, args: &[(KArg, usize)], rows: usize) -> Result<(), CudaError> {
        if args.len() != k.args.len() {
            return Err(CudaError::Program(format!(
                "kernel {} takes {} arguments, got {}",
                k.name,
                k.args.len(),
                args.len()
            )));
        }
        let mut kargs = Vec::with_capacity(args.len() + 1);
        for (a, &(v, len)) in k.args.iter().zip(args) {
            let want = a.ty.len(rows);
            match (want, v) {
                (None, KArg::F32(_)) => {}
                (Some(w), KArg::Ptr(_)) if w == len => {}
                _ => {
                    return Err(CudaError::Program(format!(
                        "kernel {}: argument `{}` ({:?}) given {v:?} of {len} values for {rows} rows",
                        k.name, a.name, a.ty
                    )));
                }
            }
            kargs.push(v);
        }
        kargs.push(int(rows, "rows")?);
        self.launch(
            &lamda_compiler::kernel::symbol(&k.name),
            rows.min(1 << 16) as u32,
            block_threads(k),
            0,
            &kargs,
        )
    }

    /// Column-major GEMM `C = op(A) op(B) + beta C`, `C` (m, n) f32. A and B
    /// are both f32 (SGEMM) or both bf16 ([`Dt::Bf16`]: `cublasGemmEx` with
    /// bf16 inputs, f32 output and f32 accumulation, `CUBLAS_COMPUTE_32F`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dt: Dt,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        beta: f32,
        (c, ldc): (u64, usize),
    ) -> Result<(), CudaError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            if beta == 0.0 {
                self.memset_zero(c, m * n * 4)?;
            }
            return Ok(());
        }
        let i = |x: usize| {
            i32::try_from(x).map_err(|_| CudaError::Program(format!("GEMM dimension {x} does not fit cuBLAS's int")))
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // cuBLAS uses the calling thread's current context (cudarc binds it for its own calls only).
        self.dev.ctx.bind_to_thread()?;
        let alpha = 1.0f32;
        match dt {
            // SAFETY: a, b, c are live device buffers holding the (lda x ..),
            // (ldb x ..) and (ldc x n) column-major matrices the dimensions imply
            // (checked by the callers); alpha and beta are host scalars.
            Dt::F32 => unsafe {
                cudarc::cublas::result::sgemm(
                    *self.blas.handle(),
                    op(ta),
                    op(tb),
                    i(m)?,
                    i(n)?,
                    i(k)?,
                    &alpha,
                    a as *const f32,
                    i(lda)?,
                    b as *const f32,
                    i(ldb)?,
                    &beta,
                    c as *mut f32,
                    i(ldc)?,
                )
            },
            // SAFETY: as above, with a and b holding bf16 values (2 bytes
            // each) and c f32; alpha and beta are f32 as CUBLAS_COMPUTE_32F wants.
            Dt::Bf16 => unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    op(ta),
                    op(tb),
                    i(m)?,
                    i(n)?,
                    i(k)?,
                    (&alpha as *const f32).cast(),
                    a as *const std::ffi::c_void,
                    cudaDataType::CUDA_R_16BF,
                    i(lda)?,
                    b as *const std::ffi::c_void,
                    cudaDataType::CUDA_R_16BF,
                    i(ldb)?,
                    (&beta as *const f32).cast(),
                    c as *mut std::ffi::c_void,
                    cudaDataType::CUDA_R_32F,
                    i(ldc)?,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
        }
        .map_err(|e| CudaError::Blas(format!("{e:?}")))
    }

    /// `y (n, m) = x (n, k) w^T` (+ y when `accumulate`), row-major; w is (m,
    /// k); x and w both of storage `dt`, y f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        dt: Dt,
        x: u64,
        w: u64,
        y: u64,
        n: usize,
        k: usize,
        m: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let c = gemm_call(RowMajor::Linear, n, k, m);
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.gemm(dt, c.trans, c.dims, (w, c.lda), (x, c.ldb), beta, (y, c.ldc))
    }

    /// `dx (n, k) = g (n, m) w (m, k)` (+ dx when `accumulate`), row-major; g and w of storage `dt`, dx f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_grad_input(
        &self,
        dt: Dt,
        g: u64,
        w: u64,
        dx: u64,
        n: usize,
        k: usize,
        m: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let c = gemm_call(RowMajor::GradInput, n, k, m);
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.gemm(dt, c.trans, c.dims, (w, c.lda), (g, c.ldb), beta, (dx, c.ldc))
    }

    /// `dw (m, k) = g^T (m, n) x (n, k)` (+ dw when `accumulate`), row-major; g and x of storage `dt`, dw f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_grad_weight(
        &self,
        dt: Dt,
        g: u64,
        x: u64,
        dw: u64,
        n: usize,
        k: usize,
        m: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let c = gemm_call(RowMajor::GradWeight, n, k, m);
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.gemm(dt, c.trans, c.dims, (x, c.lda), (g, c.ldb), beta, (dw, c.ldc))
    }

    /// `y (bf16 bits) = x (f32)` rounded to nearest even, `len` values.
    pub(crate) fn to_bf16(&self, x: u64, y: u64, len: usize) -> Result<(), CudaError> {
        self.launch_elems(support::F32_TO_BF16, len, &[KArg::Ptr(x), KArg::Ptr(y), long(len)])
    }

    /// `y (f32) = x (bf16 bits)`, exactly, `len` values.
    pub(crate) fn widen_bf16(&self, x: u64, y: u64, len: usize) -> Result<(), CudaError> {
        self.launch_elems(support::BF16_TO_F32, len, &[KArg::Ptr(x), KArg::Ptr(y), long(len)])
    }
}

/// Storage of a device tensor: f32, or bf16 (its bits as `u16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    F32,
    Bf16,
}

impl Dt {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Dt::F32 => 4,
            Dt::Bf16 => 2,
        }
    }
}

/// The three row-major products of a linear layer (x (n, k), w (m, k), g (n, m)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowMajor {
    /// `y = x w^T`: A = w, B = x.
    Linear,
    /// `dx = g w`: A = w, B = g.
    GradInput,
    /// `dw = g^T x`: A = x, B = g.
    GradWeight,
}

/// A column-major SGEMM `C (m', n') = op(A) op(B)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GemmCall {
    /// (transpose A, transpose B)
    trans: (bool, bool),
    /// (m', n', k')
    dims: (usize, usize, usize),
    lda: usize,
    ldb: usize,
    ldc: usize,
}

/// The cuBLAS call computing a row-major product: a row-major (r, c) buffer
/// is the column-major (c, r) matrix, so each product is computed transposed.
fn gemm_call(kind: RowMajor, n: usize, k: usize, m: usize) -> GemmCall {
    match kind {
        // Y^T (m, n) = W (m, k) X^T (k, n): w's buffer is W^T, read transposed.
        RowMajor::Linear => GemmCall {
            trans: (true, false),
            dims: (m, n, k),
            lda: k,
            ldb: k,
            ldc: m,
        },
        // dX^T (k, n) = W^T (k, m) G^T (m, n): both buffers as they are.
        RowMajor::GradInput => GemmCall {
            trans: (false, false),
            dims: (k, n, m),
            lda: k,
            ldb: m,
            ldc: k,
        },
        // dW^T (k, m) = X^T (k, n) G (n, m): g's buffer is G^T, read transposed.
        RowMajor::GradWeight => GemmCall {
            trans: (false, true),
            dims: (k, m, n),
            lda: k,
            ldb: m,
            ldc: k,
        },
    }
}

#[cfg(test)]
mod tests {
    //! The cuBLAS argument mapping, checked with a column-major reference SGEMM on the CPU.
    use super::*;

    /// BLAS semantics: C = op(A) op(B), column-major with leading dimensions.
    fn col_major_sgemm(c: &GemmCall, a: &[f64], b: &[f64]) -> Vec<f64> {
        let (m, n, k) = c.dims;
        let at = |i: usize, l: usize| if c.trans.0 { a[i * c.lda + l] } else { a[l * c.lda + i] };
        let bt = |l: usize, j: usize| if c.trans.1 { b[l * c.ldb + j] } else { b[j * c.ldb + l] };
        let mut out = vec![0.0; c.ldc * n];
        for j in 0..n {
            for i in 0..m {
                out[j * c.ldc + i] = (0..k).map(|l| at(i, l) * bt(l, j)).sum();
            }
        }
        out
    }

    #[test]
    fn row_major_products_map_to_column_major_calls() {
        let (n, k, m) = (5, 7, 3);
        let val = |s: usize, i: usize| ((i * 37 + s * 11) % 17) as f64 - 8.0;
        let x: Vec<f64> = (0..n * k).map(|i| val(1, i)).collect();
        let w: Vec<f64> = (0..m * k).map(|i| val(2, i)).collect();
        let g: Vec<f64> = (0..n * m).map(|i| val(3, i)).collect();
        // y[i, j] = sum_l x[i, l] w[j, l]
        let y: Vec<f64> = (0..n * m)
            .map(|e| (0..k).map(|l| x[(e / m) * k + l] * w[(e % m) * k + l]).sum())
            .collect();
        assert_eq!(col_major_sgemm(&gemm_call(RowMajor::Linear, n, k, m), &w, &x), y);
        // dx[i, l] = sum_j g[i, j] w[j, l]
        let dx: Vec<f64> = (0..n * k)
            .map(|e| (0..m).map(|j| g[(e / k) * m + j] * w[j * k + e % k]).sum())
            .collect();
        assert_eq!(col_major_sgemm(&gemm_call(RowMajor::GradInput, n, k, m), &w, &g), dx);
        // dw[j, l] = sum_i g[i, j] x[i, l]
        let dw: Vec<f64> = (0..m * k)
            .map(|e| (0..n).map(|i| g[i * m + e / k] * x[i * k + e % k]).sum())
            .collect();
        assert_eq!(col_major_sgemm(&gemm_call(RowMajor::GradWeight, n, k, m), &x, &g), dw);
    }
}
