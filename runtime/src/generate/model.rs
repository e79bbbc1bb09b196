//! A plain inference forward of a Llama checkpoint with a KV cache.
//!
//! Design: the same kernels as training (`crate::ops`: embedding, RMSNorm,
//! bias-free linears through faer, rotate-half RoPE from the config's theta,
//! SwiGLU), composed as `LlamaForCausalLM` composes them (the composition
//! `runtime/tests/ops_llama_golden.rs` checks against PyTorch), so a model
//! generates from exactly the weights it trained against. Adapters are merged
//! into the weights once at load (`W + Delta W`, float64, rounded once, as
//! `lamdac merge` writes them), so decoding pays nothing for them.
//!
//! Attention: a forward from position 0 (the prompt's prefill, or a full
//! recompute) runs the training kernel [`attention_forward`] on the new rows;
//! rows appended after cached positions (one token at a time while decoding)
//! run [`attend_cached`], which reads the cached keys and values of every
//! earlier position. The two are independent implementations of the same
//! causal softmax; a test checks that decoding with the cache picks the same
//! tokens as recomputing the whole sequence at every step.
//!
//! Not done here: batching several sequences, RoPE scaling (configs that ask
//! for it are refused when config.json is parsed), quantized weights.

use rayon::prelude::*;

use super::GenerateError;
use crate::checkpoint::{Checkpoint, CheckpointError, LlamaConfig};
use crate::export::LoraFactors;
use crate::ops::{
    AttnShape, OpsError, RopeTable, Store, attention_forward, embedding_forward, linear_forward, rmsnorm_forward,
    rope_forward_at, swiglu_forward,
};

/// The weights of one decoder layer, row-major, Hugging Face shapes.
struct Layer {
    // (d)
    attn_norm: Vec<f32>,
    // (H hd, d)
    q: Vec<f32>,
    // (KV hd, d)
    k: Vec<f32>,
    // (KV hd, d)
    v: Vec<f32>,
    // (d, H hd)
    o: Vec<f32>,
    // (d)
    mlp_norm: Vec<f32>,
    // (ff, d)
    gate: Vec<f32>,
    // (ff, d)
    up: Vec<f32>,
    // (d, ff)
    down: Vec<f32>,
}

/// A Llama model held in memory for inference (float32).
pub struct Model {
    config: LlamaConfig,
    // (vocab, d)
    embed: Vec<f32>,
    layers: Vec<Layer>,
    // (d)
    norm: Vec<f32>,
    /// The output projection when it is not the embedding: (vocab, d).
    lm_head: Option<Vec<f32>>,
}

/// Keys and values of the positions a sequence has run through, per layer.
pub struct KvCache {
    /// Positions held.
    len: usize,
    /// Positions the cache (and its RoPE table) has room for.
    capacity: usize,
    /// Per layer: (capacity, KV hd), rows `0 .. len` valid (after RoPE).
    k: Vec<Vec<f32>>,
    /// Per layer: (capacity, KV hd), rows `0 .. len` valid.
    v: Vec<Vec<f32>>,
    /// cos / sin for positions `0 .. capacity`: (capacity, hd / 2) each.
    rope: RopeTable,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the cache has room for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn vec_of(ckpt: &Checkpoint, name: &str) -> Result<Vec<f32>, CheckpointError> {
    Ok(ckpt.tensor(name)?.iter().copied().collect())
}

impl Model {
    /// Loads every weight of `ckpt` (checked against its config) and adds the
    /// update of every adapted module (`W + Delta W`). An adapter naming a
    /// module the model does not have, or of another shape, is an error.
    pub fn load(ckpt: &Checkpoint, adapters: &[LoraFactors]) -> Result<Self, GenerateError> {
        let config = ckpt.llama()?.clone();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vec_of(ckpt, &p("input_layernorm"))?,
                q: vec_of(ckpt, &p("self_attn.q_proj"))?,
                k: vec_of(ckpt, &p("self_attn.k_proj"))?,
                v: vec_of(ckpt, &p("self_attn.v_proj"))?,
                o: vec_of(ckpt, &p("self_attn.o_proj"))?,
                mlp_norm: vec_of(ckpt, &p("post_attention_layernorm"))?,
                gate: vec_of(ckpt, &p("mlp.gate_proj"))?,
                up: vec_of(ckpt, &p("mlp.up_proj"))?,
                down: vec_of(ckpt, &p("mlp.down_proj"))?,
            });
        }
        let embed = vec_of(ckpt, "model.embed_tokens.weight")?;
        let tied = config.tie_word_embeddings && !ckpt.weights.contains("lm_head.weight");
        let lm_head = if tied {
            None
        } else {
            Some(ckpt.lm_head()?.iter().copied().collect())
        };
        let mut model = Model {
            norm: vec_of(ckpt, "model.norm.weight")?,
            config,
            embed,
            layers,
            lm_head,
        };
        for f in adapters {
            let key = format!("{}.weight", f.module);
            let shape = model.config.expected_shape(&key);
            let Some(w) = model.linear_mut(&f.module) else {
                return Err(CheckpointError::MissingTensor {
                    path: ckpt.dir().to_path_buf(),
                    name: key,
                    close: Vec::new(),
                }
                .into());
            };
            if w.len() != f.d_out * f.d_in || shape.as_deref().is_some_and(|s| s != [f.d_out, f.d_in]) {
                return Err(CheckpointError::WrongShape {
                    path: ckpt.dir().to_path_buf(),
                    name: key,
                    expected: vec![f.d_out, f.d_in],
                    found: shape.unwrap_or_default(),
                }
                .into());
            }
            f.add_to(w);
        }
        Ok(model)
    }

    /// The weight of a linear module by its Hugging Face name
    /// (`model.layers.3.self_attn.q_proj`, `lm_head`).
    fn linear_mut(&mut self, module: &str) -> Option<&mut Vec<f32>> {
        if module == "lm_head" {
            return self.lm_head.as_mut();
        }
        let rest = module.strip_prefix("model.layers.")?;
        let (index, name) = rest.split_once('.')?;
        let layer = self.layers.get_mut(index.parse::<usize>().ok()?)?;
        Some(match name {
            "self_attn.q_proj" => &mut layer.q,
            "self_attn.k_proj" => &mut layer.k,
            "self_attn.v_proj" => &mut layer.v,
            "self_attn.o_proj" => &mut layer.o,
            "mlp.gate_proj" => &mut layer.gate,
            "mlp.up_proj" => &mut layer.up,
            "mlp.down_proj" => &mut layer.down,
            _ => return None,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Vocabulary size (rows of the logits).
    pub fn vocab(&self) -> usize {
        self.config.vocab_size
    }

    /// Longest sequence the model takes (`max_position_embeddings`).
    pub fn context(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// An empty cache with room for `capacity` positions (at most the context).
    pub fn cache(&self, capacity: usize) -> Result<KvCache, GenerateError> {
        let c = &self.config;
        let capacity = capacity.min(self.context()).max(1);
        let kvw = c.num_key_value_heads * c.head_dim;
        Ok(KvCache {
            len: 0,
            capacity,
            k: (0..c.num_hidden_layers).map(|_| vec![0.0; capacity * kvw]).collect(),
            v: (0..c.num_hidden_layers).map(|_| vec![0.0; capacity * kvw]).collect(),
            rope: RopeTable::new(capacity, c.head_dim, c.rope_theta)?,
        })
    }

    /// Runs `ids` at the positions after those in `cache`, appends their keys
    /// and values to it, and returns their hidden states after the final
    /// RMSNorm: (ids.len(), d). [`Model::logits`] turns rows of it into logits.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, GenerateError> {
        let c = &self.config;
        let n = ids.len();
        let start = cache.len;
        if start + n > cache.capacity {
            return Err(GenerateError::Internal(OpsError::Config {
                op: "Model::forward",
                msg: format!(
                    "{start} cached + {n} new positions exceed the cache's {}",
                    cache.capacity
                ),
            }));
        }
        let (d, hd, heads, kvh) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let (qw, kvw) = (heads * hd, kvh * hd);
        let eps = c.rms_norm_eps as f32;
        let mut st = Stream::new(self, ids)?;
        for (li, layer) in self.layers.iter().enumerate() {
            rmsnorm_forward(&st.h, &layer.attn_norm, n, d, eps, &mut st.x, &mut st.rstd)?;
            linear_forward(&st.x, &layer.q, n, d, qw, &mut st.q, Store::Overwrite)?;
            rope_forward_at(&cache.rope, &mut st.q, n, heads, start)?;
            // new keys and values go straight into the cache rows start .. start + n
            let (kc, vc) = (&mut cache.k[li], &mut cache.v[li]);
            let knew = &mut kc[start * kvw..(start + n) * kvw];
            linear_forward(&st.x, &layer.k, n, d, kvw, knew, Store::Overwrite)?;
            rope_forward_at(&cache.rope, knew, n, kvh, start)?;
            linear_forward(
                &st.x,
                &layer.v,
                n,
                d,
                kvw,
                &mut vc[start * kvw..(start + n) * kvw],
                Store::Overwrite,
            )?;
            if start == 0 {
                let shape = AttnShape {
                    batch: 1,
                    seq: n,
                    heads,
                    kv_heads: kvh,
                    head_dim: hd,
                    causal: true,
                };
                let mut lse = vec![0.0; heads * n];
                attention_forward(&shape, &st.q, &kc[..n * kvw], &vc[..n * kvw], None, &mut st.o, &mut lse)?;
            } else {
                attend_cached(
                    &st.q,
                    n,
                    start,
                    &kc[..(start + n) * kvw],
                    &vc[..(start + n) * kvw],
                    heads,
                    kvh,
                    hd,
                    &mut st.o,
                )?;
            }
            st.finish_block(self, layer)?;
        }
        cache.len = start + n;
        st.final_norm(self)
    }

    /// One new token for each of several sequences at once (batched
    /// decoding): `ids[b]` goes at position `caches[b].len()` of sequence b,
    /// whose keys and values are appended to `caches[b]`. The linear layers
    /// run as one GEMM over the `B` rows (the weights are read once for all
    /// of them); RoPE and attention run per row against its own cache.
    /// Returns the hidden states after the final RMSNorm: (B, d), row b
    /// equal to what [`Model::forward`] gives for `&[ids[b]]` on `caches[b]`.
    pub fn forward_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<f32>, GenerateError> {
        let c = &self.config;
        let n = ids.len();
        if caches.len() != n {
            return Err(GenerateError::Internal(OpsError::Config {
                op: "Model::forward_batch",
                msg: format!("{n} tokens for {} caches", caches.len()),
            }));
        }
        if let Some(full) = caches.iter().find(|k| k.len >= k.capacity) {
            return Err(GenerateError::Internal(OpsError::Config {
                op: "Model::forward_batch",
                msg: format!("a cache is full ({} positions)", full.capacity),
            }));
        }
        let (d, hd, heads, kvh) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let (qw, kvw) = (heads * hd, kvh * hd);
        let eps = c.rms_norm_eps as f32;
        // the residual stream has a row per sequence
        let mut st = Stream::new(self, ids)?;
        let (mut knew, mut vnew) = (vec![0.0; n * kvw], vec![0.0; n * kvw]);
        for (li, layer) in self.layers.iter().enumerate() {
            rmsnorm_forward(&st.h, &layer.attn_norm, n, d, eps, &mut st.x, &mut st.rstd)?;
            linear_forward(&st.x, &layer.q, n, d, qw, &mut st.q, Store::Overwrite)?;
            linear_forward(&st.x, &layer.k, n, d, kvw, &mut knew, Store::Overwrite)?;
            linear_forward(&st.x, &layer.v, n, d, kvw, &mut vnew, Store::Overwrite)?;
            for (b, cache) in caches.iter_mut().enumerate() {
                let pos = cache.len;
                let (qb, ob) = (&mut st.q[b * qw..(b + 1) * qw], &mut st.o[b * qw..(b + 1) * qw]);
                rope_forward_at(&cache.rope, qb, 1, heads, pos)?;
                let (kc, vc) = (&mut cache.k[li], &mut cache.v[li]);
                let krow = &mut kc[pos * kvw..(pos + 1) * kvw];
                krow.copy_from_slice(&knew[b * kvw..(b + 1) * kvw]);
                rope_forward_at(&cache.rope, krow, 1, kvh, pos)?;
                vc[pos * kvw..(pos + 1) * kvw].copy_from_slice(&vnew[b * kvw..(b + 1) * kvw]);
                let (ks, vs) = (&kc[..(pos + 1) * kvw], &vc[..(pos + 1) * kvw]);
                attend_cached(qb, 1, pos, ks, vs, heads, kvh, hd, ob)?;
            }
            st.finish_block(self, layer)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        st.final_norm(self)
    }

    /// Logits of `n` rows of final hidden states `(n, d)`: `(n, vocab)`.
    pub fn logits(&self, hidden: &[f32], n: usize) -> Result<Vec<f32>, GenerateError> {
        let (d, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let head = self.lm_head.as_deref().unwrap_or(&self.embed);
        let mut logits = vec![0.0; n * vocab];
        linear_forward(hidden, head, n, d, vocab, &mut logits, Store::Overwrite)?;
        Ok(logits)
    }

    /// Logits of the last of `ids` after running them all from an empty
    /// cache: the full recompute that [`super::generate`] avoids (the
    /// reference its cached decoding is tested against).
    pub fn last_logits_uncached(&self, ids: &[u32]) -> Result<Vec<f32>, GenerateError> {
        let mut cache = self.cache(ids.len())?;
        let hidden = self.forward(ids, &mut cache)?;
        let d = self.config.hidden_size;
        self.logits(&hidden[hidden.len().saturating_sub(d)..], 1)
    }
}

/// The activations of one forward pass over `n` rows: the residual stream
/// and the buffers every block reuses.
struct Stream {
    n: usize,
    /// The residual stream: (n, d).
    h: Vec<f32>,
    /// Normalised input of a sub-block: (n, d); RMSNorm's 1/rms: (n).
    x: Vec<f32>,
    rstd: Vec<f32>,
    /// Queries and attention output: (n, H hd).
    q: Vec<f32>,
    o: Vec<f32>,
    /// MLP gate, up and silu(gate) * up: (n, ff).
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

impl Stream {
    /// The embeddings of `ids`, and buffers for `ids.len()` rows.
    fn new(m: &Model, ids: &[u32]) -> Result<Stream, GenerateError> {
        let c = &m.config;
        let (n, d, ff) = (ids.len(), c.hidden_size, c.intermediate_size);
        let qw = c.num_attention_heads * c.head_dim;
        let ids64: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let mut h = vec![0.0; n * d];
        embedding_forward(&m.embed, c.vocab_size, d, &ids64, &mut h)?;
        Ok(Stream {
            n,
            h,
            x: vec![0.0; n * d],
            rstd: vec![0.0; n],
            q: vec![0.0; n * qw],
            o: vec![0.0; n * qw],
            gate: vec![0.0; n * ff],
            up: vec![0.0; n * ff],
            act: vec![0.0; n * ff],
        })
    }

    /// The rest of a block once `o` holds the attention output:
    /// `h += o_proj(o)`, then `h += down_proj(silu(gate) * up)` of the MLP.
    fn finish_block(&mut self, m: &Model, layer: &Layer) -> Result<(), GenerateError> {
        let c = &m.config;
        let (n, d, ff) = (self.n, c.hidden_size, c.intermediate_size);
        let qw = c.num_attention_heads * c.head_dim;
        linear_forward(&self.o, &layer.o, n, qw, d, &mut self.h, Store::Accumulate)?;
        let eps = c.rms_norm_eps as f32;
        rmsnorm_forward(&self.h, &layer.mlp_norm, n, d, eps, &mut self.x, &mut self.rstd)?;
        linear_forward(&self.x, &layer.gate, n, d, ff, &mut self.gate, Store::Overwrite)?;
        linear_forward(&self.x, &layer.up, n, d, ff, &mut self.up, Store::Overwrite)?;
        swiglu_forward(&self.gate, &self.up, &mut self.act)?;
        linear_forward(&self.act, &layer.down, n, ff, d, &mut self.h, Store::Accumulate)?;
        Ok(())
    }

    /// The final RMSNorm of the stream: (n, d).
    fn final_norm(mut self, m: &Model) -> Result<Vec<f32>, GenerateError> {
        let c = &m.config;
        let eps = c.rms_norm_eps as f32;
        rmsnorm_forward(
            &self.h,
            &m.norm,
            self.n,
            c.hidden_size,
            eps,
            &mut self.x,
            &mut self.rstd,
        )?;
        Ok(self.x)
    }
}

/// Causal attention of `n` new query rows at positions `start .. start + n`
/// against the cached keys and values of positions `0 .. start + n` (the new
/// rows' own included): per query head h (key/value head `h / (H / KV)`) and
/// row i, `s_j = q . k_j / sqrt(hd)` for `j <= start + i`, `p = softmax(s)`
/// (maximum subtracted, divided by the sum, in f32 as the eager reference),
/// `o = sum_j p_j v_j`.
///
/// q, o: `(n, H hd)`; k, v: `(start + n, KV hd)`, after RoPE.
#[allow(clippy::too_many_arguments)]
fn attend_cached(
    q: &[f32],
    n: usize,
    start: usize,
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    hd: usize,
    o: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "attend_cached";
    if kv_heads == 0 || hd == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(OpsError::Config {
            op: OP,
            msg: format!("heads {heads}, kv_heads {kv_heads}, head_dim {hd}"),
        });
    }
    let (qw, kvw, group) = (heads * hd, kv_heads * hd, heads / kv_heads);
    let total = start + n;
    if q.len() != n * qw || o.len() != n * qw || k.len() != total * kvw || v.len() != total * kvw {
        return Err(OpsError::Config {
            op: OP,
            msg: format!("buffer lengths do not match {n} rows after {start} cached positions"),
        });
    }
    let scale = 1.0 / (hd as f32).sqrt();
    o.par_chunks_mut(hd).enumerate().for_each(|(task, out)| {
        let (row, h) = (task / heads, task % heads);
        let g = h / group;
        let qh = &q[row * qw + h * hd..row * qw + (h + 1) * hd];
        let live = start + row + 1;
        // scores over the live keys, then probabilities in place
        let mut s: Vec<f32> = (0..live)
            .map(|j| {
                let kj = &k[j * kvw + g * hd..j * kvw + (g + 1) * hd];
                scale * qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect();
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in &mut s {
            *x = (*x - max).exp();
            sum += *x;
        }
        out.fill(0.0);
        for (j, p) in s.iter().enumerate() {
            let p = p / sum;
            let vj = &v[j * kvw + g * hd..j * kvw + (g + 1) * hd];
            for (acc, x) in out.iter_mut().zip(vj) {
                *acc += p * x;
            }
        }
    });
    Ok(())
}
