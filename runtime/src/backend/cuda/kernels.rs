//! The runtime's own CUDA C (the masked attention kernels, compiled into every
//! module after the compiler's support source), and fused kernels on host
//! buffers: the interpreter's launch contract, run on the GPU (tests and tools).
//!
//! [`KernelRunner::run`] takes the same arguments as
//! [`crate::backend::cpu::interp::run`], checks them with the same
//! [`check_launch`], uploads every buffer, launches the generated kernel and
//! copies the written buffers back, so a test can run one kernel on both and
//! compare.

use lamda_compiler::codegen::cuda::{block_threads, module_source as compiler_module_source};
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

/// The CUDA C of a module: the compiler's support kernels and `kernels`
/// (`codegen::cuda::module_source`), then [`ATTENTION_SOURCE`].
pub fn module_source(kernels: &[Kernel]) -> Result<String, CudaError> {
    Ok(format!("{}\n{ATTENTION_SOURCE}", compiler_module_source(kernels)?))
}

/// Names and launch shapes of the kernels of [`ATTENTION_SOURCE`]: grouped-query
/// attention, causal or bidirectional, with optional per-sequence key lengths.
///
/// Arguments shared by the three: `lens (batch)` i64 key lengths, each in
/// `1 ..= seq` (checked on the host), or a null pointer for full sequences;
/// `int batch, int seq, int heads, int kv_heads, int hd, float scale, int causal`
/// last. Key j of sequence b is visible to query i iff
/// `(!causal || j <= i) && j < lens[b]`, as in [`crate::ops::attention_forward`].
/// Block of 128 threads (any multiple of 32 works).
pub mod attn {
    /// `(q (n, H hd), k (n, KV hd), v, lens, o (n, H hd), lse (batch, H, seq), dims..., causal)`;
    /// block per (b, h, query i), dynamic shared memory `(seq + 32) * 4` bytes.
    pub const FWD: &str = "lamdac_attn_fwd";
    /// `(g (n, H hd), q, k, v, lens, lse, dq (n, H hd), delta (batch, H, seq), dims..., causal)`; block per
    /// (b, h, query i), dynamic shared memory `(2 seq + 32) * 4` bytes. Writes dq and `delta = rowsum(P dP)`.
    pub const BWD_DQ: &str = "lamdac_attn_bwd_dq";
    /// `(g, q, k, v, lens, lse, delta, dk (n, KV hd), dv (n, KV hd), dims..., causal)`; block per
    /// (b, kv head, key j), dynamic shared memory `2 seq * 4` bytes. No atomics: a block owns its key
    /// row; rows of masked keys (`j >= lens[b]`) are written as zeros.
    pub const BWD_DKV: &str = "lamdac_attn_bwd_dkv";
    /// Every kernel of the source.
    pub const ALL: &[&str] = &[FWD, BWD_DQ, BWD_DKV];
}

/// Hand-written CUDA C of the attention kernels ([`attn`]); it needs the
/// compiler's prelude (`lamdac_block_max`, `lamdac_block_sum`, `LAMDAC_NEG_INF`)
/// before it. Formulas follow runtime/src/ops/attention.rs term by term.
pub const ATTENTION_SOURCE: &str = r#"// Attention, causal or bidirectional, with optional key lengths (see `attn` in runtime kernels.rs).

// Keys 0 .. lamdac_attn_keys(...) of sequence b are visible to query i.
__device__ __forceinline__ int lamdac_attn_keys(const long long* lens, int b, int i, int seq, int causal) {
  const int len = lens ? (int)lens[b] : seq;
  return (causal && i + 1 < len) ? i + 1 : len;
}

// Forward, one block per (b, h, query i): scores of the visible keys in shared memory, softmax with a
// block max and sum, o_i = sum_j p_j v_j (threads over head columns), lse[b, h, i] = max + log(sum).
extern "C" __global__ void lamdac_attn_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                           const float* __restrict__ v, const long long* __restrict__ lens,
                                           float* o, float* lse, int batch, int seq, int heads, int kv_heads,
                                           int hd, float scale, int causal) {
  extern __shared__ float sm[];
  float* s = sm;          // (seq)
  float* red = sm + seq;  // (32)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int i = (int)(task % seq);
    const int h = (int)((task / seq) % heads);
    const int b = (int)(task / ((long long)seq * heads));
    const int g = h / group;
    const int keys = lamdac_attn_keys(lens, b, i, seq, causal);
    const float* qi = q + (long long)(b * seq + i) * qw + (long long)h * hd;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      const float* kj = k + (long long)(b * seq + j) * kvw + (long long)g * hd;
      float acc = 0.0f;
      for (int c = 0; c < hd; ++c) acc += qi[c] * kj[c];
      s[j] = scale * acc;
    }
    float m = LAMDAC_NEG_INF;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) m = fmaxf(m, s[j]);
    m = lamdac_block_max(m, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      const float e = expf(s[j] - m);
      s[j] = e;
      sum += e;
    }
    sum = lamdac_block_sum(sum, red);
    if (threadIdx.x == 0) lse[((long long)b * heads + h) * seq + i] = m + logf(sum);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < keys; ++j) acc += (s[j] / sum) * v[(long long)(b * seq + j) * kvw + (long long)g * hd + c];
      o[(long long)(b * seq + i) * qw + (long long)h * hd + c] = acc;
    }
    __syncthreads();  // s is rewritten by the block's next task
  }
}

// Backward, queries: per (b, h, i) recompute p_j = exp(scale q_i.k_j - lse_i), dp_j = dO_i.v_j over the
// visible keys, D = sum_j p_j dp_j, ds_j = p_j (dp_j - D); dq_i = scale sum_j ds_j k_j. Saves D.
extern "C" __global__ void lamdac_attn_bwd_dq(const float* __restrict__ g, const float* __restrict__ q,
                                              const float* __restrict__ k, const float* __restrict__ v,
                                              const long long* __restrict__ lens, const float* __restrict__ lse,
                                              float* dq, float* delta, int batch, int seq, int heads,
                                              int kv_heads, int hd, float scale, int causal) {
  extern __shared__ float sm[];
  float* p = sm;              // (seq)
  float* ds = sm + seq;       // (seq)
  float* red = sm + 2 * seq;  // (32)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int i = (int)(task % seq);
    const int h = (int)((task / seq) % heads);
    const int b = (int)(task / ((long long)seq * heads));
    const int gh = h / group;
    const int keys = lamdac_attn_keys(lens, b, i, seq, causal);
    const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
    const float* qi = q + row;
    const float* gi = g + row;
    const long long li = ((long long)b * heads + h) * seq + i;
    const float l = lse[li];
    float part = 0.0f;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      const float* kj = k + (long long)(b * seq + j) * kvw + (long long)gh * hd;
      const float* vj = v + (long long)(b * seq + j) * kvw + (long long)gh * hd;
      float acc = 0.0f, dp = 0.0f;
      for (int c = 0; c < hd; ++c) acc += qi[c] * kj[c];
      for (int c = 0; c < hd; ++c) dp += gi[c] * vj[c];
      const float pj = expf(scale * acc - l);
      p[j] = pj;
      ds[j] = dp;
      part += pj * dp;
    }
    const float dsum = lamdac_block_sum(part, red);
    for (int j = threadIdx.x; j < keys; j += blockDim.x) ds[j] = p[j] * (ds[j] - dsum);
    __syncthreads();
    if (threadIdx.x == 0) delta[li] = dsum;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < keys; ++j) acc += ds[j] * k[(long long)(b * seq + j) * kvw + (long long)gh * hd + c];
      dq[row + c] = scale * acc;
    }
    __syncthreads();
  }
}

// Backward, keys: per (b, kv head, key j < len_b), for every query head of the group and every query i
// that sees j (i >= j when causal, all i otherwise): dv_j += sum_i p_ij dO_i, dk_j += scale sum_i ds_ij q_i.
// A block owns its key row: no atomics; each thread owns its head columns across the group's heads.
// A masked key's row (j >= len_b) is zero.
extern "C" __global__ void lamdac_attn_bwd_dkv(const float* __restrict__ g, const float* __restrict__ q,
                                               const float* __restrict__ k, const float* __restrict__ v,
                                               const long long* __restrict__ lens,
                                               const float* __restrict__ lse, const float* __restrict__ delta,
                                               float* dk, float* dv, int batch, int seq, int heads,
                                               int kv_heads, int hd, float scale, int causal) {
  extern __shared__ float sm[];
  float* p = sm;         // (seq)
  float* ds = sm + seq;  // (seq)
  const int group = heads / kv_heads;
  const long long qw = (long long)heads * hd, kvw = (long long)kv_heads * hd;
  const long long tasks = (long long)batch * kv_heads * seq;
  for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int j = (int)(task % seq);
    const int gh = (int)((task / seq) % kv_heads);
    const int b = (int)(task / ((long long)seq * kv_heads));
    const long long krow = (long long)(b * seq + j) * kvw + (long long)gh * hd;
    const float* kj = k + krow;
    const float* vj = v + krow;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
      dk[krow + c] = 0.0f;
      dv[krow + c] = 0.0f;
    }
    const int len = lens ? (int)lens[b] : seq;
    if (j >= len) continue;  // the whole block skips: no barrier is left half-met
    const int i0 = causal ? j : 0;
    for (int h = gh * group; h < (gh + 1) * group; ++h) {
      for (int i = i0 + threadIdx.x; i < seq; i += blockDim.x) {
        const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
        const long long li = ((long long)b * heads + h) * seq + i;
        float acc = 0.0f, dp = 0.0f;
        for (int c = 0; c < hd; ++c) acc += q[row + c] * kj[c];
        for (int c = 0; c < hd; ++c) dp += g[row + c] * vj[c];
        const float pij = expf(scale * acc - lse[li]);
        p[i] = pij;
        ds[i] = pij * (dp - delta[li]);
      }
      __syncthreads();
      for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float av = 0.0f, ak = 0.0f;
        for (int i = i0; i < seq; ++i) {
          const long long row = (long long)(b * seq + i) * qw + (long long)h * hd;
          av += p[i] * g[row + c];
          ak += ds[i] * q[row + c];
        }
        dv[krow + c] += av;
        dk[krow + c] += scale * ak;
      }
      __syncthreads();
    }
  }
}
"#;
