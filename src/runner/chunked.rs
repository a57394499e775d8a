//! The `candle-chunked` engine: a serving-shaped Llama inference forward in candle.
//!
//! - KV cache preallocated per layer for the whole sequence, written in place
//!   (`slice_set`); grouped-query attention by viewing the query heads of each KV head
//!   together, so K and V are never copied.
//! - Chunked prefill: forwards of at most `prefill_chunk` tokens over the batch.
//! - Attention in blocks of at most `attention_block` f32 score elements; candle's fused
//!   `rms_norm`, `rope` and `softmax_last_dim` kernels.
//! - Logits of the last position only.
//!
//! Every intermediate is dropped as soon as it is used (no shadowing that keeps it alive):
//! `estimate::candle_chunked` replays these allocations in this order, so keep the two
//! in step.

use crate::estimate::candle_chunked::{attention_blocks, prefill_chunks, Block, Knobs};
use crate::spec::ModelSpec;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use candle_transformers::models::llama::Llama3RopeConfig;

struct Layer {
    norm1: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm2: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The model: the same tensors as candle-transformers' Llama, loaded from the same names.
pub struct ChunkedLlama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    inv_freq: Vec<f32>,
    dtype: DType,
    device: Device,
    pub knobs: Knobs,
    /// `candle-flash`: the attention through FlashAttention-2, the cache `(b, capacity,
    /// kv_heads, head_dim)`.
    pub flash: bool,
}

/// One point's state: every layer's K and V for `capacity` positions, and the rotary
/// tables for those positions.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    cos: Tensor,
    sin: Tensor,
    capacity: usize,
}

/// The rotary frequencies, with Llama 3's long-context scaling when the config has it
/// (as candle-transformers' `Cache::new` computes them).
fn inv_freq(spec: &ModelSpec) -> Vec<f32> {
    let hd = spec.head_dim as usize;
    let theta = spec.rope_theta as f32;
    let base: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f32 / hd as f32))
        .collect();
    let scaling = spec
        .rope_scaling
        .clone()
        .and_then(|v| serde_json::from_value::<Llama3RopeConfig>(v).ok());
    let Some(s) = scaling else {
        return base;
    };
    let orig = s.original_max_position_embeddings as f32;
    let low_wavelen = orig / s.low_freq_factor;
    let high_wavelen = orig / s.high_freq_factor;
    base.into_iter()
        .map(|freq| {
            let wavelen = 2. * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / s.factor
            } else {
                let smooth =
                    (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1. - smooth) * freq / s.factor + smooth * freq
            }
        })
        .collect()
}

/// FlashAttention-2, causal, over `(b, n, heads, d)` queries and `(b, t, kv_heads, d)` keys
/// and values (views with strides are read as they are).
#[cfg(feature = "flash-attn")]
fn flash_attn(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    candle_flash_attn::flash_attn(q, k, v, scale, true)
}

/// Without the `flash-attn` build there is no kernel (`runner::check_flash` refuses first).
#[cfg(not(feature = "flash-attn"))]
fn flash_attn(_q: &Tensor, _k: &Tensor, _v: &Tensor, _scale: f32) -> Result<Tensor> {
    candle_core::bail!(
        "candle-flash needs the flash-attn build (scripts/build-cuda.sh --flash-attn)"
    )
}

/// `(b, n, h, d)` to `(b, h, n, d)`, contiguous; the input is dropped after the copy.
fn heads_first(x: Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    x.reshape((b, n, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// `x` in `dtype`, the input dropped after the cast.
fn cast(x: Tensor, dtype: DType) -> Result<Tensor> {
    x.to_dtype(dtype)
}

impl ChunkedLlama {
    /// Build the model from `vb` (the checkpoint's tensor names).
    pub fn load(vb: VarBuilder, spec: &ModelSpec, knobs: Knobs) -> Result<Self> {
        let (h, i, v) = (
            spec.hidden_size as usize,
            spec.intermediate_size as usize,
            spec.vocab_size as usize,
        );
        let q_w = (spec.num_heads * spec.head_dim) as usize;
        let kv_w = (spec.num_kv_heads * spec.head_dim) as usize;
        let m = vb.pp("model");
        let embed = candle_nn::embedding(v, h, m.pp("embed_tokens"))?;
        let lm_head = if spec.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(h, v, vb.pp("lm_head"))?
        };
        let mut layers = Vec::new();
        for l in 0..spec.num_layers as usize {
            let p = m.pp(format!("layers.{l}"));
            let a = p.pp("self_attn");
            let f = p.pp("mlp");
            layers.push(Layer {
                norm1: p.pp("input_layernorm").get(h, "weight")?,
                q: candle_nn::linear_no_bias(h, q_w, a.pp("q_proj"))?,
                k: candle_nn::linear_no_bias(h, kv_w, a.pp("k_proj"))?,
                v: candle_nn::linear_no_bias(h, kv_w, a.pp("v_proj"))?,
                o: candle_nn::linear_no_bias(q_w, h, a.pp("o_proj"))?,
                norm2: p.pp("post_attention_layernorm").get(h, "weight")?,
                gate: candle_nn::linear_no_bias(h, i, f.pp("gate_proj"))?,
                up: candle_nn::linear_no_bias(h, i, f.pp("up_proj"))?,
                down: candle_nn::linear_no_bias(i, h, f.pp("down_proj"))?,
            });
        }
        Ok(Self {
            embed,
            layers,
            norm: m.pp("norm").get(h, "weight")?,
            lm_head,
            heads: spec.num_heads as usize,
            kv_heads: spec.num_kv_heads as usize,
            head_dim: spec.head_dim as usize,
            eps: spec.rms_norm_eps as f32,
            inv_freq: inv_freq(spec),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            knobs,
            flash: false,
        })
    }

    /// A zeroed cache of `capacity` positions for `batch` sequences, and the rotary
    /// tables for those positions (built in f32 on the host, then cast).
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let half = self.head_dim / 2;
        let table = |f: fn(f32) -> f32| -> Result<Tensor> {
            let values: Vec<f32> = (0..capacity * half)
                .map(|i| f((i / half) as f32 * self.inv_freq[i % half]))
                .collect();
            cast(
                Tensor::from_vec(values, (capacity, half), &self.device)?,
                self.dtype,
            )
        };
        let cos = table(f32::cos)?;
        let sin = table(f32::sin)?;
        let shape = if self.flash {
            (batch, capacity, self.kv_heads, self.head_dim)
        } else {
            (batch, self.kv_heads, capacity, self.head_dim)
        };
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for _ in &self.layers {
            k.push(Tensor::zeros(shape, self.dtype, &self.device)?);
            v.push(Tensor::zeros(shape, self.dtype, &self.device)?);
        }
        Ok(KvCache {
            k,
            v,
            cos,
            sin,
            capacity,
        })
    }

    /// The prefill of `batch` prompts of `context` tokens, chunk by chunk; `tokens(b, n,
    /// offset)` makes each chunk's ids. Returns the last position's logits (f32).
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        batch: usize,
        context: usize,
        tokens: impl Fn(usize, usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let chunks = prefill_chunks(context as u64, self.knobs.chunk_len(batch as u64));
        let mut logits = None;
        let last = chunks.len().saturating_sub(1);
        for (i, (pos, n)) in chunks.into_iter().enumerate() {
            let ids = tokens(batch, n as usize, pos as usize)?;
            logits = self.forward(&ids, pos as usize, cache, i == last)?;
        }
        logits.ok_or_else(|| candle_core::Error::Msg("empty prompt".into()))
    }

    /// One forward of `ids` (batch, n) at position `pos`; the last position's logits (f32)
    /// when `logits`.
    pub fn forward(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: &mut KvCache,
        logits: bool,
    ) -> Result<Option<Tensor>> {
        let (_, n) = ids.dims2()?;
        if pos + n > cache.capacity {
            candle_core::bail!(
                "positions {pos}..{} exceed the KV cache's capacity {}",
                pos + n,
                cache.capacity
            );
        }
        // Key positions, for the causal masks of this chunk's attention blocks.
        let keys = if n > 1 && !self.flash {
            let k: Vec<u32> = (0..(pos + n) as u32).collect();
            Some(Tensor::from_vec(k, pos + n, &self.device)?)
        } else {
            None
        };
        let mut x = self.embed.forward(ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            x = self.layer(
                layer,
                x,
                pos,
                &cache.k[l],
                &cache.v[l],
                cache,
                keys.as_ref(),
            )?;
        }
        if !logits {
            return Ok(None);
        }
        let normed = {
            let last = x.narrow(1, n - 1, 1)?.contiguous()?;
            candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?
        };
        let out = self.lm_head.forward(&normed)?;
        drop(normed);
        Ok(Some(cast(out, DType::F32)?.squeeze(1)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: &Layer,
        x: Tensor,
        pos: usize,
        ck: &Tensor,
        cv: &Tensor,
        cache: &KvCache,
        keys: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = x.dim(1)?;
        let eps = self.eps;
        let h = candle_nn::ops::rms_norm(&x, &l.norm1, eps)?;
        let q = l.q.forward(&h)?;
        let k = l.k.forward(&h)?;
        let v = l.v.forward(&h)?;
        drop(h);
        let cos = cache.cos.narrow(0, pos, n)?;
        let sin = cache.sin.narrow(0, pos, n)?;
        let y = if self.flash {
            self.flash_attention(q, k, v, &cos, &sin, ck, cv, pos)?
        } else {
            self.chunked_attention(q, k, v, &cos, &sin, ck, cv, pos, keys)?
        };
        let o = l.o.forward(&y)?;
        drop(y);
        let x = (x + o)?;
        let h = candle_nn::ops::rms_norm(&x, &l.norm2, eps)?;
        let g = l.gate.forward(&h)?.silu()?;
        let u = l.up.forward(&h)?;
        drop(h);
        let m = (g * u)?;
        let d = l.down.forward(&m)?;
        drop(m);
        x + d
    }

    /// `candle-flash`: q, k, v stay `(b, n, heads, head_dim)` (views of the projections),
    /// `rope_thd` rotates q and k, k and v are written into the `(b, capacity, kv_heads,
    /// head_dim)` cache, and FlashAttention-2 reads its first `pos + n` positions as a
    /// narrowed view, causal aligned bottom-right (so a chunk attends to all earlier
    /// positions and its own past); `(b, n, heads * head_dim)`.
    #[allow(clippy::too_many_arguments)]
    fn flash_attention(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ck: &Tensor,
        cv: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let (b, n, _) = q.dims3()?;
        let hd = self.head_dim;
        let q = candle_nn::rotary_emb::rope_thd(&q.reshape((b, n, self.heads, hd))?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_thd(&k.reshape((b, n, self.kv_heads, hd))?, cos, sin)?;
        ck.slice_set(&k, 1, pos)?;
        drop(k);
        cv.slice_set(&v.reshape((b, n, self.kv_heads, hd))?, 1, pos)?;
        drop(v);
        let keys = ck.narrow(1, 0, pos + n)?;
        let values = cv.narrow(1, 0, pos + n)?;
        let y = flash_attn(&q, &keys, &values, 1. / (hd as f32).sqrt())?;
        drop(q);
        y.reshape((b, n, self.heads * hd))
    }

    /// `candle-chunked`: heads first, rotary, scale, the cache written, then the attention
    /// block by block; `(b, n, heads * head_dim)`.
    #[allow(clippy::too_many_arguments)]
    fn chunked_attention(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ck: &Tensor,
        cv: &Tensor,
        pos: usize,
        keys: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (cos, sin) = (cos.clone(), sin.clone());
        let hd = self.head_dim;
        let mut q = heads_first(q, self.heads, hd)?;
        q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
        q = q.affine(1. / (hd as f64).sqrt(), 0.)?;
        let mut k = heads_first(k, self.kv_heads, hd)?;
        k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        ck.slice_set(&k, 2, pos)?;
        drop(k);
        let v = heads_first(v, self.kv_heads, hd)?;
        cv.slice_set(&v, 2, pos)?;
        drop(v);
        self.attention(q, ck, cv, pos, keys)
    }

    /// Attention of `q` (b, heads, n, hd), scaled and rotated, against the cache's first
    /// `pos + n` positions, block by block; (b, n, heads * hd).
    fn attention(
        &self,
        q: Tensor,
        ck: &Tensor,
        cv: &Tensor,
        pos: usize,
        keys: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, n, hd) = q.dims4()?;
        let n_rep = self.heads / self.kv_heads;
        let blocks = attention_blocks(
            b as u64,
            self.heads as u64,
            n as u64,
            pos as u64,
            self.knobs.attention_block,
        );
        let qg = q.reshape((b, self.kv_heads, n_rep, n, hd))?;
        if let [only] = blocks[..] {
            let y = self.block(&qg, ck, cv, pos, only, keys)?;
            drop(qg);
            drop(q);
            return Ok(y);
        }
        let y = Tensor::zeros((b, n, self.heads * hd), self.dtype, &self.device)?;
        for blk in blocks {
            let o = self.block(&qg, ck, cv, pos, blk, keys)?;
            y.narrow(0, blk.batch_start as usize, blk.batch as usize)?
                .slice_set(&o, 1, blk.query_start as usize)?;
        }
        Ok(y)
    }

    /// One block: scores, causal mask (when it has more than one query), softmax in f32,
    /// times V; (batch, queries, heads * hd).
    fn block(
        &self,
        qg: &Tensor,
        ck: &Tensor,
        cv: &Tensor,
        pos: usize,
        blk: Block,
        keys: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b0, bb) = (blk.batch_start as usize, blk.batch as usize);
        let (q0, qb, kv) = (
            blk.query_start as usize,
            blk.queries as usize,
            blk.keys as usize,
        );
        let (hd, kvh, n_rep) = (self.head_dim, self.kv_heads, self.heads / self.kv_heads);
        let scores = {
            let qb_t = qg
                .narrow(0, b0, bb)?
                .narrow(3, q0, qb)?
                .contiguous()?
                .reshape((bb, kvh, n_rep * qb, hd))?;
            let k = ck.narrow(0, b0, bb)?.narrow(2, 0, kv)?;
            qb_t.matmul(&k.t()?)?
        };
        let scores = cast(scores, DType::F32)?.reshape((bb, kvh, n_rep, qb, kv))?;
        let scores = match keys {
            Some(keys) if qb > 1 => self.causal(scores, keys, (pos + q0) as u32, kv)?,
            _ => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        drop(scores);
        let probs = cast(probs, self.dtype)?.reshape((bb, kvh, n_rep * qb, kv))?;
        let o = {
            let v = cv.narrow(0, b0, bb)?.narrow(2, 0, kv)?;
            probs.matmul(&v)?
        };
        drop(probs);
        o.reshape((bb, self.heads, qb, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((bb, qb, self.heads * hd))
    }

    /// `scores` (.., queries, kv) with every key after its query's position set to -inf;
    /// the unmasked scores are dropped on return.
    fn causal(&self, scores: Tensor, keys: &Tensor, first: u32, kv: usize) -> Result<Tensor> {
        let qb = scores.dim(3)?;
        let rows: Vec<u32> = (first..first + qb as u32).collect();
        let rows = Tensor::from_vec(rows, (qb, 1), &self.device)?;
        let future = keys.narrow(0, 0, kv)?.unsqueeze(0)?.broadcast_gt(&rows)?;
        drop(rows);
        let shape = scores.shape().clone();
        let neg = Tensor::new(f32::NEG_INFINITY, &self.device)?.broadcast_as(&shape)?;
        future.broadcast_as(&shape)?.where_cond(&neg, &scores)
    }
}
