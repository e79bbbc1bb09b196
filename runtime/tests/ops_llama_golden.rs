//! The ops kernels composed into a plain Llama forward/backward, against the PyTorch golden vectors.
//!
//! This file is a tiny, hand-written trainer built only from
//! `lamda_runtime::ops`: it proves the kernels compose to Hugging Face's
//! `LlamaForCausalLM` (eager attention) and to the golden training runs. It
//! reads the golden files with the `safetensors` crate directly and takes the
//! per-step freeze counts from `case.json`, so it depends on no other runtime
//! module. Tolerances are those of `tests/golden/README.md`:
//! logits / losses atol 1e-4; grad0 rtol 1e-4; step1 / final params
//! atol 1e-6 + rtol 1e-4; AdamW moments rtol 1e-3 (all relative to `max|want|`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use lamda_runtime::ops::{
    AdamState, AdamW, AdapterShape, AttnShape, RopeTable, Store, adamw_step, add_assign, attention_backward,
    attention_forward, causal_lm_cross_entropy, embedding_forward, lamda_backward, lamda_forward,
    linear_backward_input, linear_forward, lora_backward, lora_forward, rmsnorm_backward, rmsnorm_forward,
    rope_backward, rope_forward, swiglu_backward, swiglu_forward,
};
use safetensors::{Dtype, SafeTensors};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(case)
}

/// The tensors of one safetensors file, owned.
struct Tensors(Vec<u8>);

impl Tensors {
    fn load(path: &Path) -> Self {
        Tensors(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.0).unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// `|got - want| <= atol + rtol * max|want|` for every element.
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = atol + rtol * scale;
    let (i, err) =
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |(bi, be), (i, e)| if e > be || e.is_nan() { (i, e) } else { (bi, be) },
            );
    assert!(
        err <= tol,
        "{what}: max error {err:.3e} at {i} (got {}, want {}), tolerance {tol:.3e}",
        got[i],
        want[i]
    );
}

/// Model hyperparameters from `config.json`.
#[derive(Clone, Copy)]
struct Config {
    vocab: usize,
    d: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ff: usize,
    eps: f32,
    theta: f64,
}

impl Config {
    fn load(case: &Path) -> Self {
        let text = std::fs::read_to_string(case.join("config.json")).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let u = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("config {k}")) as usize;
        Config {
            vocab: u("vocab_size"),
            d: u("hidden_size"),
            layers: u("num_hidden_layers"),
            heads: u("num_attention_heads"),
            kv_heads: u("num_key_value_heads"),
            head_dim: u("head_dim"),
            ff: u("intermediate_size"),
            eps: j["rms_norm_eps"].as_f64().unwrap() as f32,
            theta: j["rope_parameters"]["rope_theta"].as_f64().unwrap(),
        }
    }
}

/// The adapter on one linear, with its optimizer state.
enum Adapter {
    /// LaMDA: the linear's weight is W_res; A frozen; S trains; B trains
    /// until `frozen_cols[t] == r`.
    Lamda {
        alpha: f32,
        a: Vec<f32>,             // (r, d_in)
        s: Vec<f32>,             // (r, r)
        b: Vec<f32>,             // (d_out, r)
        frozen_cols: Vec<usize>, // f(t), t = 0 .. T-1
        s_state: AdamState,
        b_state: AdamState,
    },
    /// LoRA: base W unchanged, A and B train.
    Lora {
        scale: f32,
        a: Vec<f32>, // (r, d_in)
        b: Vec<f32>, // (d_out, r)
        a_state: AdamState,
        b_state: AdamState,
    },
}

/// Activations an adapter saves in the forward.
enum Saved {
    None,
    Lamda { z: Vec<f32>, u: Vec<f32> },
    Lora { x: Vec<f32>, xa: Vec<f32> },
}

/// Gradients of an adapter's trainable tensors at one step.
enum Grads {
    Lamda { ds: Vec<f32>, db: Option<Vec<f32>> },
    Lora { da: Vec<f32>, db: Vec<f32> },
}

struct Linear {
    name: String,
    w: Vec<f32>, // (d_out, d_in): W, or W_res under LaMDA
    d_in: usize,
    d_out: usize,
    rank: usize,
    adapter: Option<Adapter>,
}

impl Linear {
    fn shape(&self, n: usize) -> AdapterShape {
        AdapterShape {
            n,
            d_in: self.d_in,
            d_out: self.d_out,
            r: self.rank,
        }
    }

    /// `y (=|+=) x W^T + adapter branch`; returns what the backward needs.
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32], store: Store) -> Saved {
        linear_forward(x, &self.w, n, self.d_in, self.d_out, y, store).unwrap();
        let sh = self.shape(n);
        match &self.adapter {
            None => Saved::None,
            Some(Adapter::Lamda { alpha, a, s, b, .. }) => {
                let (mut z, mut u) = (vec![0.0; n * sh.r], vec![0.0; n * sh.r]);
                lamda_forward(&sh, *alpha, x, a, s, b, &mut z, &mut u, y).unwrap();
                Saved::Lamda { z, u }
            }
            Some(Adapter::Lora { scale, a, b, .. }) => {
                let mut xa = vec![0.0; n * sh.r];
                lora_forward(&sh, *scale, x, a, b, &mut xa, y).unwrap();
                Saved::Lora { x: x.to_vec(), xa }
            }
        }
    }

    /// `dx (=|+=) g W + adapter dx`; returns the adapter's gradients at step t.
    fn backward(&self, g: &[f32], saved: &Saved, n: usize, t: usize, dx: &mut [f32], store: Store) -> Option<Grads> {
        linear_backward_input(g, &self.w, n, self.d_in, self.d_out, dx, store).unwrap();
        let sh = self.shape(n);
        match (&self.adapter, saved) {
            (None, _) => None,
            (
                Some(Adapter::Lamda {
                    alpha,
                    a,
                    s,
                    b,
                    frozen_cols,
                    ..
                }),
                Saved::Lamda { z, u },
            ) => {
                let mut ds = vec![0.0; sh.r * sh.r];
                // dB only while some column of B trains (SEMANTICS §4)
                let mut db = (frozen_cols[t] < sh.r).then(|| vec![0.0; sh.d_out * sh.r]);
                lamda_backward(&sh, *alpha, g, z, u, a, s, b, &mut ds, db.as_deref_mut(), Some(dx)).unwrap();
                Some(Grads::Lamda { ds, db })
            }
            (Some(Adapter::Lora { scale, a, b, .. }), Saved::Lora { x, xa }) => {
                let mut da = vec![0.0; sh.r * sh.d_in];
                let mut db = vec![0.0; sh.d_out * sh.r];
                lora_backward(&sh, *scale, g, x, xa, a, b, Some(&mut da), Some(&mut db), Some(dx)).unwrap();
                Some(Grads::Lora { da, db })
            }
            _ => unreachable!("saved activations do not match the adapter"),
        }
    }

    fn step(&mut self, opt: &AdamW, grads: &Grads, t: usize) {
        let r = self.rank;
        match (&mut self.adapter, grads) {
            (
                Some(Adapter::Lamda {
                    s,
                    b,
                    frozen_cols,
                    s_state,
                    b_state,
                    ..
                }),
                Grads::Lamda { ds, db },
            ) => {
                adamw_step(opt, s, ds, s_state, r, 0).unwrap();
                if let Some(db) = db {
                    adamw_step(opt, b, db, b_state, r, frozen_cols[t]).unwrap();
                }
            }
            (
                Some(Adapter::Lora {
                    a, b, a_state, b_state, ..
                }),
                Grads::Lora { da, db },
            ) => {
                adamw_step(opt, a, da, a_state, r, 0).unwrap();
                adamw_step(opt, b, db, b_state, r, 0).unwrap();
            }
            _ => unreachable!(),
        }
    }
}

/// Linears of one layer in model order: q, k, v, o, gate, up, down.
const KINDS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

struct Layer {
    ln1: Vec<f32>, // (d)
    ln2: Vec<f32>, // (d)
    lin: Vec<Linear>,
}

struct Model {
    cfg: Config,
    embed: Vec<f32>, // (vocab, d)
    layers: Vec<Layer>,
    norm: Vec<f32>,    // (d)
    lm_head: Vec<f32>, // (vocab, d)
}

/// Per-layer activations kept for the backward.
struct LayerCache {
    h_in: Vec<f32>,    // (n, d)
    rstd1: Vec<f32>,   // (n)
    q: Vec<f32>,       // (n, H hd), after RoPE
    k: Vec<f32>,       // (n, KV hd), after RoPE
    v: Vec<f32>,       // (n, KV hd)
    lse: Vec<f32>,     // (batch, H, seq)
    h_mid: Vec<f32>,   // (n, d)
    rstd2: Vec<f32>,   // (n)
    gate: Vec<f32>,    // (n, ff)
    up: Vec<f32>,      // (n, ff)
    saved: Vec<Saved>, // per linear, KINDS order
}

struct Forward {
    layers: Vec<LayerCache>,
    h_final: Vec<f32>, // (n, d)
    rstd_f: Vec<f32>,  // (n)
    logits: Vec<f32>,  // (n, vocab)
}

impl Model {
    fn load(case: &Path) -> Self {
        let cfg = Config::load(case);
        let w = Tensors::load(&case.join("model.safetensors"));
        let (d, hd) = (cfg.d, cfg.head_dim);
        let dims = |kind: &str| -> (usize, usize) {
            match kind {
                "self_attn.q_proj" => (d, cfg.heads * hd),
                "self_attn.k_proj" | "self_attn.v_proj" => (d, cfg.kv_heads * hd),
                "self_attn.o_proj" => (cfg.heads * hd, d),
                "mlp.gate_proj" | "mlp.up_proj" => (d, cfg.ff),
                "mlp.down_proj" => (cfg.ff, d),
                _ => unreachable!(),
            }
        };
        let layers = (0..cfg.layers)
            .map(|l| Layer {
                ln1: w.f32(&format!("model.layers.{l}.input_layernorm.weight")),
                ln2: w.f32(&format!("model.layers.{l}.post_attention_layernorm.weight")),
                lin: KINDS
                    .iter()
                    .map(|kind| {
                        let name = format!("model.layers.{l}.{kind}");
                        let (d_in, d_out) = dims(kind);
                        let wt = w.f32(&format!("{name}.weight"));
                        assert_eq!(wt.len(), d_in * d_out, "{name}");
                        Linear {
                            name,
                            w: wt,
                            d_in,
                            d_out,
                            rank: 0,
                            adapter: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        Model {
            cfg,
            embed: w.f32("model.embed_tokens.weight"),
            layers,
            norm: w.f32("model.norm.weight"),
            lm_head: w.f32("lm_head.weight"),
        }
    }

    fn linear_mut(&mut self, name: &str) -> &mut Linear {
        self.layers
            .iter_mut()
            .flat_map(|l| l.lin.iter_mut())
            .find(|m| m.name == name)
            .unwrap()
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| l.lin.iter())
    }

    fn forward(&self, ids: &[i64], batch: usize, seq: usize, rope: &RopeTable) -> Forward {
        let c = self.cfg;
        let n = batch * seq;
        let (d, qw, kvw) = (c.d, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let attn = AttnShape {
            batch,
            seq,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            causal: true,
        };
        let mut h = vec![0.0; n * d];
        embedding_forward(&self.embed, c.vocab, d, ids, &mut h).unwrap();
        let mut caches = Vec::new();
        for layer in &self.layers {
            let lin = &layer.lin;
            let h_in = h.clone();
            let (mut x, mut rstd1) = (vec![0.0; n * d], vec![0.0; n]);
            rmsnorm_forward(&h, &layer.ln1, n, d, c.eps, &mut x, &mut rstd1).unwrap();
            let (mut q, mut k, mut v) = (vec![0.0; n * qw], vec![0.0; n * kvw], vec![0.0; n * kvw]);
            let sq = lin[0].forward(&x, n, &mut q, Store::Overwrite);
            let sk = lin[1].forward(&x, n, &mut k, Store::Overwrite);
            let sv = lin[2].forward(&x, n, &mut v, Store::Overwrite);
            rope_forward(rope, &mut q, n, c.heads).unwrap();
            rope_forward(rope, &mut k, n, c.kv_heads).unwrap();
            let (mut o, mut lse) = (vec![0.0; n * qw], vec![0.0; batch * c.heads * seq]);
            attention_forward(&attn, &q, &k, &v, None, &mut o, &mut lse).unwrap();
            // h = h + o_proj(o): the projection accumulates into the residual stream
            let so = lin[3].forward(&o, n, &mut h, Store::Accumulate);
            let h_mid = h.clone();
            let (mut x2, mut rstd2) = (vec![0.0; n * d], vec![0.0; n]);
            rmsnorm_forward(&h, &layer.ln2, n, d, c.eps, &mut x2, &mut rstd2).unwrap();
            let (mut gate, mut up) = (vec![0.0; n * c.ff], vec![0.0; n * c.ff]);
            let sg = lin[4].forward(&x2, n, &mut gate, Store::Overwrite);
            let su = lin[5].forward(&x2, n, &mut up, Store::Overwrite);
            let mut act = vec![0.0; n * c.ff];
            swiglu_forward(&gate, &up, &mut act).unwrap();
            let sd = lin[6].forward(&act, n, &mut h, Store::Accumulate);
            caches.push(LayerCache {
                h_in,
                rstd1,
                q,
                k,
                v,
                lse,
                h_mid,
                rstd2,
                gate,
                up,
                saved: vec![sq, sk, sv, so, sg, su, sd],
            });
        }
        let (mut xf, mut rstd_f) = (vec![0.0; n * d], vec![0.0; n]);
        rmsnorm_forward(&h, &self.norm, n, d, c.eps, &mut xf, &mut rstd_f).unwrap();
        let mut logits = vec![0.0; n * c.vocab];
        linear_forward(&xf, &self.lm_head, n, d, c.vocab, &mut logits, Store::Overwrite).unwrap();
        Forward {
            layers: caches,
            h_final: h,
            rstd_f,
            logits,
        }
    }

    /// Backward from `dlogits`; returns the adapter gradients, one per linear in model order.
    fn backward(
        &self,
        fwd: &Forward,
        dlogits: &[f32],
        batch: usize,
        seq: usize,
        rope: &RopeTable,
        t: usize,
    ) -> Vec<Option<Grads>> {
        let c = self.cfg;
        let n = batch * seq;
        let (d, qw, kvw) = (c.d, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let attn = AttnShape {
            batch,
            seq,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            causal: true,
        };
        let mut dxf = vec![0.0; n * d];
        linear_backward_input(dlogits, &self.lm_head, n, d, c.vocab, &mut dxf, Store::Overwrite).unwrap();
        let mut dh = vec![0.0; n * d];
        rmsnorm_backward(&fwd.h_final, &self.norm, &fwd.rstd_f, &dxf, n, d, &mut dh, None).unwrap();
        let mut grads: Vec<Vec<Option<Grads>>> = Vec::new();
        for (layer, cache) in self.layers.iter().zip(&fwd.layers).rev() {
            let (lin, sv) = (&layer.lin, &cache.saved);
            let mut g = vec![None, None, None, None, None, None, None];
            // MLP: h_out = h_mid + down(silu(gate) * up); dh flows to h_mid unchanged.
            let mut dact = vec![0.0; n * c.ff];
            g[6] = lin[6].backward(&dh, &sv[6], n, t, &mut dact, Store::Overwrite);
            let (mut dgate, mut dup) = (vec![0.0; n * c.ff], vec![0.0; n * c.ff]);
            swiglu_backward(&cache.gate, &cache.up, &dact, &mut dgate, &mut dup).unwrap();
            let mut dx2 = vec![0.0; n * d];
            g[4] = lin[4].backward(&dgate, &sv[4], n, t, &mut dx2, Store::Overwrite);
            g[5] = lin[5].backward(&dup, &sv[5], n, t, &mut dx2, Store::Accumulate);
            let mut dnorm = vec![0.0; n * d];
            rmsnorm_backward(&cache.h_mid, &layer.ln2, &cache.rstd2, &dx2, n, d, &mut dnorm, None).unwrap();
            add_assign(&mut dh, &dnorm).unwrap(); // dh is now dL/dh_mid
            // Attention: h_mid = h_in + o_proj(attn(rope(q), rope(k), v)).
            let mut d_o = vec![0.0; n * qw];
            g[3] = lin[3].backward(&dh, &sv[3], n, t, &mut d_o, Store::Overwrite);
            let (mut dq, mut dk, mut dv) = (vec![0.0; n * qw], vec![0.0; n * kvw], vec![0.0; n * kvw]);
            attention_backward(
                &attn, &cache.q, &cache.k, &cache.v, None, &cache.lse, &d_o, &mut dq, &mut dk, &mut dv,
            )
            .unwrap();
            rope_backward(rope, &mut dq, n, c.heads).unwrap();
            rope_backward(rope, &mut dk, n, c.kv_heads).unwrap();
            let mut dx1 = vec![0.0; n * d];
            g[0] = lin[0].backward(&dq, &sv[0], n, t, &mut dx1, Store::Overwrite);
            g[1] = lin[1].backward(&dk, &sv[1], n, t, &mut dx1, Store::Accumulate);
            g[2] = lin[2].backward(&dv, &sv[2], n, t, &mut dx1, Store::Accumulate);
            rmsnorm_backward(&cache.h_in, &layer.ln1, &cache.rstd1, &dx1, n, d, &mut dnorm, None).unwrap();
            add_assign(&mut dh, &dnorm).unwrap(); // dL/dh_in
            grads.push(g);
        }
        grads.into_iter().rev().flatten().collect()
    }
}

/// Inputs of a training case: ids, labels, batch, seq.
fn inputs(case: &Path) -> (Vec<i64>, Vec<i64>, usize, usize) {
    let t = Tensors::load(&case.join("inputs.safetensors"));
    let st = t.st();
    let shape = st.tensor("input_ids").unwrap().shape().to_vec();
    (t.i64("input_ids"), t.i64("labels"), shape[0], shape[1])
}

#[test]
fn base_forward_matches_hf_logits_and_loss() {
    for case in ["lamda_qv_r4_linear03", "lamda_all7_r2_never", "lora_qv_r4_a8"] {
        let dir = golden(case);
        let model = Model::load(&dir);
        let (ids, labels, batch, seq) = inputs(&dir);
        let rope = RopeTable::new(seq, model.cfg.head_dim, model.cfg.theta).unwrap();
        let fwd = model.forward(&ids, batch, seq, &rope);
        let want = Tensors::load(&dir.join("expected.safetensors"));
        assert_close(
            &format!("{case} base.logits"),
            &fwd.logits,
            &want.f32("base.logits"),
            1e-4,
            0.0,
        );
        let ce = causal_lm_cross_entropy(&fwd.logits, &labels, batch, seq, model.cfg.vocab, None).unwrap();
        assert_close(
            &format!("{case} base.loss"),
            &[ce.loss],
            &want.f32("base.loss"),
            1e-4,
            0.0,
        );
    }
}

/// Attaches the adapters of a training case from `init.*` and `case.json`,
/// trains for `steps` and checks every golden tensor along the way.
fn train_case(case: &str) {
    let dir = golden(case);
    let mut model = Model::load(&dir);
    let (ids, labels, batch, seq) = inputs(&dir);
    let want = Tensors::load(&dir.join("expected.safetensors"));
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let method = spec["method"].as_str().unwrap().to_string();
    let alpha = spec["alpha"].as_f64().unwrap() as f32;
    let steps = spec["steps"].as_u64().unwrap() as usize;
    let o = &spec["optimizer"];
    let opt = AdamW {
        lr: o["lr"].as_f64().unwrap(),
        beta1: o["beta1"].as_f64().unwrap(),
        beta2: o["beta2"].as_f64().unwrap(),
        eps: o["eps"].as_f64().unwrap(),
        weight_decay: o["weight_decay"].as_f64().unwrap(),
    };
    for m in spec["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let r = m["rank"].as_u64().unwrap() as usize;
        let lin = model.linear_mut(name);
        lin.rank = r;
        let a = want.f32(&format!("init.{name}.A"));
        let b = want.f32(&format!("init.{name}.B"));
        lin.adapter = Some(match method.as_str() {
            "lamda" => {
                lin.w = want.f32(&format!("init.{name}.W_res"));
                let frozen_cols = m["frozen_cols_per_step"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                Adapter::Lamda {
                    alpha,
                    s: want.f32(&format!("init.{name}.S")),
                    s_state: AdamState::new(r * r),
                    b_state: AdamState::new(b.len()),
                    a,
                    b,
                    frozen_cols,
                }
            }
            "lora" => Adapter::Lora {
                scale: alpha / r as f32,
                a_state: AdamState::new(a.len()),
                b_state: AdamState::new(b.len()),
                a,
                b,
            },
            other => panic!("method {other} not covered here"),
        });
    }
    // Parameters of every adapter as (golden suffix, values, state).
    fn params(lin: &Linear) -> Vec<(&'static str, &Vec<f32>, &AdamState)> {
        match &lin.adapter {
            Some(Adapter::Lamda {
                s, b, s_state, b_state, ..
            }) => vec![("S", s, s_state), ("B", b, b_state)],
            Some(Adapter::Lora {
                a, b, a_state, b_state, ..
            }) => vec![("A", a, a_state), ("B", b, b_state)],
            None => vec![],
        }
    }

    let vocab = model.cfg.vocab;
    let rope = RopeTable::new(seq, model.cfg.head_dim, model.cfg.theta).unwrap();
    let mut losses = Vec::new();
    for t in 0..steps {
        let fwd = model.forward(&ids, batch, seq, &rope);
        if t == 0 {
            assert_close(
                &format!("{case} init.logits"),
                &fwd.logits,
                &want.f32("init.logits"),
                1e-4,
                0.0,
            );
        }
        let mut dlogits = vec![0.0; fwd.logits.len()];
        let ce = causal_lm_cross_entropy(&fwd.logits, &labels, batch, seq, vocab, Some(&mut dlogits)).unwrap();
        losses.push(ce.loss);
        let grads = model.backward(&fwd, &dlogits, batch, seq, &rope, t);
        if t == 0 {
            for (lin, g) in model.linears().zip(&grads) {
                let name = &lin.name;
                match g {
                    None => {}
                    Some(Grads::Lamda { ds, db }) => {
                        assert_close(
                            &format!("grad0.{name}.S"),
                            ds,
                            &want.f32(&format!("grad0.{name}.S")),
                            0.0,
                            1e-4,
                        );
                        let key = format!("grad0.{name}.B");
                        assert_eq!(db.is_some(), want.has(&key), "{key} presence");
                        if let Some(db) = db {
                            assert_close(&key, db, &want.f32(&key), 0.0, 1e-4);
                        }
                    }
                    Some(Grads::Lora { da, db }) => {
                        assert_close(
                            &format!("grad0.{name}.A"),
                            da,
                            &want.f32(&format!("grad0.{name}.A")),
                            0.0,
                            1e-4,
                        );
                        assert_close(
                            &format!("grad0.{name}.B"),
                            db,
                            &want.f32(&format!("grad0.{name}.B")),
                            0.0,
                            1e-4,
                        );
                    }
                }
            }
        }
        let names: Vec<String> = model.linears().map(|l| l.name.clone()).collect();
        for (name, g) in names.iter().zip(&grads) {
            if let Some(g) = g {
                model.linear_mut(name).step(&opt, g, t);
            }
        }
        if t == 0 {
            for lin in model.linears() {
                for (p, v, _) in params(lin) {
                    let key = format!("step1.{}.{p}", lin.name);
                    assert_close(&key, v, &want.f32(&key), 1e-6, 1e-4);
                }
            }
        }
    }
    let fwd = model.forward(&ids, batch, seq, &rope);
    losses.push(
        causal_lm_cross_entropy(&fwd.logits, &labels, batch, seq, vocab, None)
            .unwrap()
            .loss,
    );
    assert_close(&format!("{case} losses"), &losses, &want.f32("losses"), 1e-4, 0.0);
    assert_close(
        &format!("{case} final.logits"),
        &fwd.logits,
        &want.f32("final.logits"),
        1e-4,
        0.0,
    );
    for lin in model.linears() {
        for (p, v, st) in params(lin) {
            let key = format!("final.{}.{p}", lin.name);
            assert_close(&key, v, &want.f32(&key), 1e-6, 1e-4);
            assert_close(
                &format!("{key}.exp_avg"),
                &st.exp_avg,
                &want.f32(&format!("{key}.exp_avg")),
                0.0,
                1e-3,
            );
            assert_close(
                &format!("{key}.exp_avg_sq"),
                &st.exp_avg_sq,
                &want.f32(&format!("{key}.exp_avg_sq")),
                0.0,
                1e-3,
            );
        }
    }
}

#[test]
fn lamda_qv_linear_freeze_training_matches_golden() {
    train_case("lamda_qv_r4_linear03");
}

#[test]
fn lamda_all_seven_linears_training_matches_golden() {
    train_case("lamda_all7_r2_never");
}

#[test]
fn lora_qv_training_matches_golden() {
    train_case("lora_qv_r4_a8");
}
