//! The CUDA C, run on the CPU: the hand-written support kernels and the
//! generated kernel-IR kernels (the instances the unfused ops and AdamW run,
//! and fused ones) executed by a small CUDA emulator (one OS thread per CUDA
//! thread of a block, `__syncthreads` a barrier, warp shuffles through
//! memory) and compared with naive f64 references written here in C++:
//! attention forward and backward with grouped heads at awkward sizes
//! (support), RMSNorm and its grad at d 37 (two warps) and 17, label shifting
//! (support) then cross-entropy and its gradient on the shifted targets, the
//! LaMDA epilogue, RoPE and its inverse, SiLU and its grad, LayerNorm and its
//! grad at d 37 (one row offset from 0), GELU, tanh, their grads and the bias
//! add at d 45 on wide inputs (+-12, +-30, 0), AdamW with frozen
//! columns (parameter and both moments), bf16 rounding and widening, the
//! embedding from a bf16 table, column copies, zeroing frozen columns, the
//! f64 sum of squares (support). Generated kernels are launched with their
//! contract: arguments in kernel order, then `rows`, a grid smaller than
//! `rows` (so the grid-stride loop runs) of `block_threads` threads. It checks the kernels' arithmetic and their use of
//! barriers and shared memory without a GPU (real races may still need one
//! to show). Needs a C++20 compiler (`$CXX`, else g++ or clang++); skips
//! with a message without one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use lamda_compiler::codegen::cuda::module_source;
use lamda_compiler::kernel::lib;

/// A C++ compiler that has `<barrier>`, or None.
fn cxx(dir: &Path) -> Option<String> {
    let probe = dir.join("probe.cpp");
    std::fs::write(
        &probe,
        "#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); }\n",
    )
    .ok()?;
    let candidates = std::env::var("CXX")
        .into_iter()
        .chain(["g++".to_string(), "clang++".to_string()]);
    for c in candidates {
        let ok = Command::new(&c)
            .args(["-std=c++20", "-pthread", "-o"])
            .arg(dir.join("probe"))
            .arg(&probe)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(c);
        }
    }
    None
}

#[test]
fn kernels_run_in_the_emulator_and_match_the_references() {
    let dir = std::env::temp_dir().join(format!("lamdac-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(cxx) = cxx(&dir) else {
        lamda_runtime::testkit::skip("no C++20 compiler with <barrier> (set CXX)");
        return;
    };
    // The emulator gives every block one static `sm` for dynamic shared memory.
    let mut kernels = lib::examples();
    // The instances unfused ops run at shapes the examples lack (the others are examples).
    kernels.extend([
        lib::rmsnorm(37, 1e-5),
        lib::rmsnorm_grad(37),
        lib::silu(45),
        lib::silu_grad(45),
        // BERT's row-wise kernels at shapes the examples lack.
        lib::layernorm(37, 1e-12),
        lib::layernorm_grad(37),
        lib::gelu(45),
        lib::gelu_grad(45),
        lib::tanh(45),
        lib::tanh_grad(45),
        lib::bias_add(45),
    ]);
    let module = module_source(&kernels)
        .unwrap()
        .replace("extern __shared__ float sm[];", "");
    std::fs::write(dir.join("module_emu.cu"), module).unwrap();
    std::fs::write(dir.join("emu.h"), EMU).unwrap();
    std::fs::write(dir.join("test.cpp"), TEST).unwrap();
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-w", "-pthread", "-o"])
        .arg(dir.join("test"))
        .arg(dir.join("test.cpp"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{cxx}:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(dir.join("test")).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    eprintln!("{text}");
    assert!(run.status.success(), "{text}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("0 failures"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The emulator: CUDA's built-ins over std::thread and std::barrier.
const EMU: &str = r##"// A tiny CUDA emulator: one OS thread per CUDA thread of a block, blocks in sequence.
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#include <cstdio>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* g_bar = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
float sm[1 << 16];
inline void __syncthreads() { g_bar->arrive_and_wait(); }
static double g_slots[1024];
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
  g_slots[threadIdx.x] = (double)v;
  __syncthreads();
  T r = (T)g_slots[threadIdx.x ^ o];
  __syncthreads();
  return r;
}
inline float __int_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __uint_as_float(unsigned u) { return __int_as_float(u); }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
template <class F, class... A> void launch(F f, unsigned grid, unsigned block, A... args) {
  gridDim.x = grid; blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> bar(block);
    g_bar = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
      ts.emplace_back([=] { blockIdx.x = b; threadIdx.x = t; f(args...); });
    for (auto& t : ts) t.join();
  }
}
"##;

/// The checks, each against a naive f64 reference.
const TEST: &str = r##"#include "emu.h"
#include "module_emu.cu"
#include <random>
static std::mt19937 rng(7);
std::vector<float> rnd(size_t n, float s = 1.f) { std::uniform_real_distribution<float> u(-s, s); std::vector<float> v(n); for (auto& x : v) x = u(rng); return v; }
static int fails = 0;
void check(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) { err = std::max(err, std::fabs(got[i] - want[i])); scale = std::max(scale, std::fabs(want[i])); }
  bool ok = err <= tol * (1 + scale) && got.size() == want.size();
  printf("%-28s %s  max err %.2e (scale %.2e)\n", what, ok ? "ok  " : "FAIL", err, scale);
  if (!ok) ++fails;
}
int main() {
  // ---- attention
  int B = 2, S = 7, H = 6, KV = 2, HD = 10, G = H / KV, n = B * S, qw = H * HD, kvw = KV * HD;
  float scale = 1.f / std::sqrt((float)HD);
  auto q = rnd(n * qw), k = rnd(n * kvw), v = rnd(n * kvw), go = rnd(n * qw);
  std::vector<float> o(n * qw), lse(B * H * S), dq(n * qw), dk(n * kvw), dv(n * kvw), delta(B * H * S);
  launch(lamdac_attention_fwd, 9, 128, q.data(), k.data(), v.data(), o.data(), lse.data(), B, S, H, KV, HD, scale);
  launch(lamdac_attention_bwd_dq, 13, 128, go.data(), q.data(), k.data(), v.data(), lse.data(), dq.data(), delta.data(), B, S, H, KV, HD, scale);
  launch(lamdac_attention_bwd_dkv, 5, 128, go.data(), q.data(), k.data(), v.data(), lse.data(), delta.data(), dk.data(), dv.data(), B, S, H, KV, HD, scale);
  std::vector<double> ro(n * qw), rl(B * H * S), rdq(n * qw, 0), rdk(n * kvw, 0), rdv(n * kvw, 0);
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) {
    int g = h / G;
    for (int i = 0; i < S; ++i) {
      std::vector<double> s(i + 1), p(i + 1), dp(i + 1);
      double m = -1e300;
      for (int j = 0; j <= i; ++j) { double a = 0; for (int c = 0; c < HD; ++c) a += (double)q[(b*S+i)*qw + h*HD + c] * k[(b*S+j)*kvw + g*HD + c]; s[j] = a * scale; m = std::max(m, s[j]); }
      double sum = 0; for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - m);
      rl[(b*H+h)*S + i] = m + std::log(sum);
      for (int j = 0; j <= i; ++j) p[j] = std::exp(s[j] - m) / sum;
      for (int c = 0; c < HD; ++c) { double a = 0; for (int j = 0; j <= i; ++j) a += p[j] * v[(b*S+j)*kvw + g*HD + c]; ro[(b*S+i)*qw + h*HD + c] = a; }
      double D = 0;
      for (int j = 0; j <= i; ++j) { double a = 0; for (int c = 0; c < HD; ++c) a += (double)go[(b*S+i)*qw + h*HD + c] * v[(b*S+j)*kvw + g*HD + c]; dp[j] = a; D += p[j] * a; }
      for (int j = 0; j <= i; ++j) {
        double ds = p[j] * (dp[j] - D);
        for (int c = 0; c < HD; ++c) {
          rdq[(b*S+i)*qw + h*HD + c] += scale * ds * k[(b*S+j)*kvw + g*HD + c];
          rdk[(b*S+j)*kvw + g*HD + c] += scale * ds * q[(b*S+i)*qw + h*HD + c];
          rdv[(b*S+j)*kvw + g*HD + c] += p[j] * go[(b*S+i)*qw + h*HD + c];
        }
      }
    }
  }
  check("attention o", o, ro, 1e-5); check("attention lse", lse, rl, 1e-5);
  check("attention dq", dq, rdq, 1e-5); check("attention dk", dk, rdk, 1e-5); check("attention dv", dv, rdv, 1e-5);
  // ---- rmsnorm + grad, d = 37
  { int N = 5, D = 37; auto x = rnd(N*D), w = rnd(D), g = rnd(N*D); std::vector<float> y(N*D), r(N), dx(N*D);
    launch(rmsnorm_d37_eps1em5, 3, 64, (const float*)x.data(), (const float*)w.data(), y.data(), r.data(), N);
    launch(rmsnorm_grad_d37, 2, 64, (const float*)g.data(), (const float*)x.data(), (const float*)w.data(), (const float*)r.data(), dx.data(), N);
    std::vector<double> ry(N*D), rr(N), rdx(N*D);
    for (int i = 0; i < N; ++i) { double ss = 0; for (int c = 0; c < D; ++c) ss += (double)x[i*D+c]*x[i*D+c];
      double rs = 1/std::sqrt(ss/D + 1e-5); rr[i] = rs; double cc = 0;
      for (int c = 0; c < D; ++c) { ry[i*D+c] = w[c]*x[i*D+c]*rs; cc += (double)g[i*D+c]*w[c]*x[i*D+c]; }
      for (int c = 0; c < D; ++c) rdx[i*D+c] = rs*w[c]*g[i*D+c] - rs*rs*rs/D*cc*x[i*D+c]; }
    check("rmsnorm y", y, ry, 1e-5); check("rmsnorm rstd", r, rr, 1e-5); check("rmsnorm dx", dx, rdx, 1e-5);
    // fused rmsnorm_d17 on the first 17 columns layout: use its own buffers
    int F = 17; auto xf = rnd(N*F), wf = rnd(F); std::vector<float> yf(N*F), rf(N);
    launch(rmsnorm_d17_eps1em5, 2, 32, (const float*)xf.data(), (const float*)wf.data(), yf.data(), rf.data(), N);
    std::vector<double> ryf(N*F), rrf(N);
    for (int i = 0; i < N; ++i) { double ss = 0; for (int c = 0; c < F; ++c) ss += (double)xf[i*F+c]*xf[i*F+c];
      double rs = 1/std::sqrt(ss/F + 1e-5); rrf[i] = rs; for (int c = 0; c < F; ++c) ryf[i*F+c] = wf[c]*xf[i*F+c]*rs; }
    check("fused rmsnorm y", yf, ryf, 1e-5); check("fused rmsnorm rstd", rf, rrf, 1e-5); }
  // ---- cross entropy: labels shifted on the device, then per-row loss (and gradient) on the targets
  { int Bc = 2, Sc = 5, V = 11, N = Bc*Sc; auto z = rnd(N*V, 3);
    std::vector<long long> lab(N); for (int i = 0; i < N; ++i) lab[i] = (i == 3) ? -100 : (i*7) % V;
    int count = 0; std::vector<long long> tgt(N);
    for (int i = 0; i < N; ++i) { tgt[i] = (i % Sc == Sc-1) ? -100 : lab[i+1]; if (tgt[i] >= 0) ++count; }
    std::vector<long long> dt(N, 12345);
    launch(lamdac_shift_labels, 1, 32, (const long long*)lab.data(), dt.data(), N, Sc);
    std::vector<float> same(N); for (int i = 0; i < N; ++i) same[i] = (float)(dt[i] == tgt[i]);
    check("shift_labels", same, std::vector<double>(N, 1.0), 0);
    float inv = 1.f/count, gs = 0.5f;
    std::vector<double> rloss(N, 0), rdl(N*V, 0);
    for (int i = 0; i < N; ++i) { if (tgt[i] < 0) continue; double m = -1e300; for (int c = 0; c < V; ++c) m = std::max(m, (double)z[i*V+c]);
      double s = 0; for (int c = 0; c < V; ++c) s += std::exp(z[i*V+c]-m); rloss[i] = std::log(s) + m - z[i*V+tgt[i]];
      for (int c = 0; c < V; ++c) rdl[i*V+c] = (std::exp(z[i*V+c]-m)/s - (c == tgt[i])) * inv * gs; }
    std::vector<float> loss(N, 7.f), floss(N, 7.f), fdl(N*V, 7.f);
    launch(cross_entropy_v11, 4, 32, (const float*)z.data(), (const long long*)dt.data(), loss.data(), N);
    check("cross_entropy loss", loss, rloss, 1e-5);
    launch(cross_entropy_grad_v11, 3, 32, (const float*)z.data(), (const long long*)dt.data(), floss.data(), inv * gs, fdl.data(), N);
    check("cross_entropy_grad loss", floss, rloss, 1e-5); check("cross_entropy_grad dlogits", fdl, rdl, 1e-6); }
  // ---- fused lamda epilogue o9 r3 alpha .5
  { int N = 4, O = 9, R = 3; auto base = rnd(N*O), z = rnd(N*R), S = rnd(R*R), Bm = rnd(O*R); std::vector<float> u(N*R), y(N*O);
    launch(lamda_epilogue_o9_r3_a5em1, 3, 32, (const float*)base.data(), (const float*)z.data(), (const float*)S.data(), (const float*)Bm.data(), u.data(), y.data(), N);
    std::vector<double> ru(N*R), ry(N*O);
    for (int i = 0; i < N; ++i) { for (int j = 0; j < R; ++j) { double a = 0; for (int c = 0; c < R; ++c) a += (double)z[i*R+c]*S[j*R+c]; ru[i*R+j] = a; }
      for (int j = 0; j < O; ++j) { double a = 0; for (int c = 0; c < R; ++c) a += ru[i*R+c]*Bm[j*R+c]; ry[i*O+j] = base[i*O+j] + 0.5*a; } }
    check("fused epilogue u", u, ru, 1e-5); check("fused epilogue y", y, ry, 1e-5); }
  // ---- rope forward and inverse, hd 6, heads 4, seq 5
  { int Sr = 5, HDr = 6, Hr = 4, Nr = 10, half = 3, W = Hr*HDr; auto x = rnd(Nr*W), cs = rnd(Sr*half), sn = rnd(Sr*half);
    std::vector<float> y(Nr*W), yi(Nr*W), yf(Nr*W);
    launch(rope_w24_hd6_s5, 3, 32, (const float*)x.data(), (const float*)cs.data(), (const float*)sn.data(), y.data(), Nr);
    launch(rope_grad_w24_hd6_s5, 4, 32, (const float*)x.data(), (const float*)cs.data(), (const float*)sn.data(), yi.data(), Nr);
    launch(rope_w24_hd6_s5, 10, 32, (const float*)x.data(), (const float*)cs.data(), (const float*)sn.data(), yf.data(), Nr);
    std::vector<double> ry(Nr*W), ri(Nr*W);
    for (int r = 0; r < Nr; ++r) for (int h = 0; h < Hr; ++h) for (int j = 0; j < half; ++j) {
      int b0 = r*W + h*HDr; double c = cs[(r%Sr)*half+j], s = sn[(r%Sr)*half+j], x1 = x[b0+j], x2 = x[b0+j+half];
      ry[b0+j] = x1*c - x2*s; ry[b0+j+half] = x2*c + x1*s; ri[b0+j] = x1*c + x2*s; ri[b0+j+half] = x2*c - x1*s; }
    check("rope", y, ry, 1e-6); check("rope inverse", yi, ri, 1e-6); check("rope, a block per row", yf, ry, 1e-6); }
  // ---- silu and its grad, d 45 (two warps, a partial one)
  { int N = 3, D = 45; auto x = rnd(N*D, 6), g = rnd(N*D); std::vector<float> y(N*D), dx(N*D);
    launch(silu_d45, 2, 64, (const float*)x.data(), y.data(), N);
    launch(silu_grad_d45, 2, 64, (const float*)g.data(), (const float*)x.data(), dx.data(), N);
    std::vector<double> ry(N*D), rdx(N*D);
    for (int e = 0; e < N*D; ++e) { double v = x[e], s = 1/(1+std::exp(-v)); ry[e] = v*s; rdx[e] = g[e]*s*(1 + v*(1-s)); }
    check("silu", y, ry, 1e-6); check("silu_grad", dx, rdx, 1e-6); }
  // ---- layernorm + grad, d 37 (row 2 offset by 5: a mean far from 0)
  { int N = 5, D = 37; auto x = rnd(N*D, 3), w = rnd(D), b = rnd(D), g = rnd(N*D); for (int c = 0; c < D; ++c) x[2*D+c] += 5.f;
    std::vector<float> y(N*D), mu(N), rs(N), dx(N*D);
    launch(layernorm_d37_eps1em12, 3, 64, (const float*)x.data(), (const float*)w.data(), (const float*)b.data(), y.data(), mu.data(), rs.data(), N);
    launch(layernorm_grad_d37, 2, 64, (const float*)g.data(), (const float*)x.data(), (const float*)w.data(), (const float*)mu.data(), (const float*)rs.data(), dx.data(), N);
    std::vector<double> ry(N*D), rmu(N), rrs(N), rdx(N*D);
    for (int i = 0; i < N; ++i) { double m = 0; for (int c = 0; c < D; ++c) m += x[i*D+c]; m /= D;
      double v = 0; for (int c = 0; c < D; ++c) v += (x[i*D+c]-m)*(x[i*D+c]-m); v /= D;
      double s = 1/std::sqrt(v + 1e-12), a = 0, bb = 0; rmu[i] = m; rrs[i] = s;
      for (int c = 0; c < D; ++c) { double xh = (x[i*D+c]-m)*s; ry[i*D+c] = xh*w[c] + b[c]; a += (double)g[i*D+c]*w[c]; bb += g[i*D+c]*w[c]*xh; }
      for (int c = 0; c < D; ++c) { double xh = (x[i*D+c]-m)*s; rdx[i*D+c] = s*(g[i*D+c]*w[c] - a/D - xh*bb/D); } }
    check("layernorm y", y, ry, 1e-5); check("layernorm mean", mu, rmu, 1e-6); check("layernorm rstd", rs, rrs, 1e-5);
    check("layernorm dx", dx, rdx, 1e-5); }
  // ---- gelu, tanh, their grads and bias_add, d 45, |x| up to 12 and +-30, 0
  { int N = 3, D = 45; auto x = rnd(N*D, 12), g = rnd(N*D), b = rnd(D); x[0] = 30.f; x[1] = -30.f; x[2] = 0.f;
    std::vector<float> y(N*D), dx(N*D), t(N*D), dt(N*D), yb(N*D);
    launch(gelu_d45, 2, 64, (const float*)x.data(), y.data(), N);
    launch(gelu_grad_d45, 2, 64, (const float*)g.data(), (const float*)x.data(), dx.data(), N);
    launch(tanh_d45, 2, 64, (const float*)x.data(), t.data(), N);
    launch(tanh_grad_d45, 2, 64, (const float*)g.data(), (const float*)t.data(), dt.data(), N);
    launch(bias_add_d45, 2, 64, (const float*)x.data(), (const float*)b.data(), yb.data(), N);
    std::vector<double> ry(N*D), rdx(N*D), rt(N*D), rdt(N*D), rb(N*D);
    for (int e = 0; e < N*D; ++e) { double v = x[e], cdf = 0.5*(1 + std::erf(v/std::sqrt(2.0))), pdf = std::exp(-v*v/2)/std::sqrt(2*M_PI);
      ry[e] = v*cdf; rdx[e] = g[e]*(cdf + v*pdf); rt[e] = std::tanh(v); rdt[e] = g[e]*(1 - (double)t[e]*t[e]); rb[e] = v + b[e % D]; }
    check("gelu", y, ry, 1e-6); check("gelu_grad", dx, rdx, 1e-6); check("tanh", t, rt, 1e-6); check("tanh_grad", dt, rdt, 1e-6);
    check("bias_add", yb, rb, 1e-7); }
  // ---- adamw with 2 frozen columns, bf16, copy_cols, zero_cols, sum_sq
  { int R = 3, C = 5, L = R*C; auto p = rnd(L), g = rnd(L), m = rnd(L), vv = rnd(L); for (auto& x : vv) x = std::fabs(x);
    auto p0 = p, m0 = m, v0 = vv;
    // decay, step, b1, c1, b2, c2, bc2, eps, frozen
    launch(adamw_c5, 2, 32, p.data(), (const float*)g.data(), m.data(), vv.data(), 0.999f, 0.01f, 0.9f, 0.1f, 0.999f, 0.001f, 0.05f, 1e-8f, 2.0f, R);
    std::vector<double> rp(L), rm(L), rv(L);
    for (int e = 0; e < L; ++e) { if (e % C < 2) { rp[e] = p0[e]; rm[e] = m0[e]; rv[e] = v0[e]; continue; }
      double pe = p0[e]*0.999; double me = 0.9*m0[e] + 0.1*g[e]; double ve = 0.999*v0[e] + 0.001*g[e]*g[e];
      rp[e] = pe - 0.01 * me / (std::sqrt(ve)/0.05 + 1e-8); rm[e] = me; rv[e] = ve; }
    check("adamw p", p, rp, 1e-5); check("adamw m", m, rm, 1e-6); check("adamw v", vv, rv, 1e-6);
    std::vector<float> xs = {1.f, -2.5f, 3.14159f, 1e-3f, NAN, 65504.f}; std::vector<unsigned short> hb(6); std::vector<float> back(6);
    launch(lamdac_f32_to_bf16, 1, 32, (const float*)xs.data(), hb.data(), 6LL); launch(lamdac_bf16_to_f32, 1, 32, (const unsigned short*)hb.data(), back.data(), 6LL);
    printf("bf16 round trip: "); for (int i = 0; i < 6; ++i) printf("%g->%g(0x%04x) ", xs[i], back[i], hb[i]); printf("\n");
    { // f32 -> bf16 against the nearer of the two bf16 neighbours in double (ties to the even one), and NaN
      std::vector<float> xr = rnd(997, 40.f); xr.push_back(1.00390625f); xr.push_back(1.01171875f); xr.push_back(-0.f);
      const long long Lr = (long long)xr.size(); std::vector<unsigned short> hr(Lr); std::vector<float> wr(Lr);
      launch(lamdac_f32_to_bf16, 2, 64, (const float*)xr.data(), hr.data(), Lr);
      launch(lamdac_bf16_to_f32, 2, 64, (const unsigned short*)hr.data(), wr.data(), Lr);
      auto val = [](unsigned short h) { int e = (h >> 7) & 0xff, m = h & 0x7f; double v = e ? std::ldexp(1.0 + m / 128.0, e - 127) : std::ldexp(m / 128.0, -126); return (h & 0x8000) ? -v : v; };
      std::vector<float> gotr(Lr); std::vector<double> wantr(Lr);
      for (long long i = 0; i < Lr; ++i) {
        unsigned u; memcpy(&u, &xr[i], 4); unsigned short lo = (unsigned short)(u >> 16), hi = (unsigned short)(lo + 1);
        double dl = std::fabs(val(lo) - xr[i]), dh = std::fabs(val(hi) - xr[i]);
        unsigned short want = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
        gotr[i] = (float)(hr[i] == want); wantr[i] = 1.0;
        if (gotr[i] == 1.f) gotr[i] = (float)(wr[i] == (float)val(want));
      }
      check("bf16 rounding and widening", gotr, wantr, 0);
      std::vector<float> nanv = {NAN}; std::vector<unsigned short> nh(1); std::vector<float> nb(1);
      launch(lamdac_f32_to_bf16, 1, 32, (const float*)nanv.data(), nh.data(), 1LL);
      launch(lamdac_bf16_to_f32, 1, 32, (const unsigned short*)nh.data(), nb.data(), 1LL);
      check("bf16 keeps NaN", {(float)std::isnan(nb[0])}, {1.0}, 0);
      // embedding from a bf16 table: rows widened exactly; an id out of range gives NaN
      const int V = 7, D = 45, N = 5; std::vector<float> tf = rnd(V * D, 3.f); std::vector<unsigned short> tb(V * D);
      launch(lamdac_f32_to_bf16, 1, 64, (const float*)tf.data(), tb.data(), (long long)(V * D));
      std::vector<long long> ids = {3, 0, 6, 3, 9}; std::vector<float> out(N * D);
      launch(lamdac_embedding_bf16, 2, 64, (const long long*)ids.data(), (const unsigned short*)tb.data(), out.data(), N, D, V);
      std::vector<float> ok4(4 * D); std::vector<double> ref4(4 * D);
      for (int r = 0; r < 4; ++r) for (int c = 0; c < D; ++c) { ok4[r*D+c] = out[r*D+c]; ref4[r*D+c] = val(tb[ids[r]*D+c]); }
      check("embedding bf16", ok4, ref4, 0);
      check("embedding bf16 bad id", {(float)std::isnan(out[4*D])}, {1.0}, 0);
    }
    auto src = rnd(4*13); std::vector<float> dst(4*9, 0);
    launch(lamdac_copy_cols, 2, 32, (const float*)src.data(), dst.data(), 4, 13, 3, 9, 0, 9);
    std::vector<double> rd(4*9); for (int r = 0; r < 4; ++r) for (int c = 0; c < 9; ++c) rd[r*9+c] = src[r*13+3+c];
    check("copy_cols", dst, rd, 0);
    auto zc = rnd(L); auto zc0 = zc; launch(lamdac_zero_cols, 1, 32, zc.data(), (long long)R, C, 2);
    std::vector<double> rz(L); for (int e = 0; e < L; ++e) rz[e] = (e % C < 2) ? 0 : zc0[e]; check("zero_cols", zc, rz, 0);
    auto big = rnd(1000); std::vector<double> part(3);
    launch(lamdac_sum_sq, 3, 64, (const float*)big.data(), 1000LL, part.data());
    double ss = 0; for (float x : big) ss += (double)x*x; std::vector<float> got = {(float)(part[0]+part[1]+part[2])};
    check("sum_sq", got, {ss}, 1e-6); }
  printf("%d failures\n", fails);
  return fails != 0;
}
"##;
