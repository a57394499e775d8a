//! Engines modelled on Hugging Face transformers' Llama (5.x) in PyTorch, as `torch.cuda.
//! max_memory_allocated` sees them (tensor bytes; PyTorch's caching allocator reserves more,
//! which the process figure does not model for these engines).
//!
//! - `transformers-eager` (alias `hf-eager`): `eager_attention_forward`. `repeat_kv` copies K and V to every query head;
//!   the scores `b x H x s x t` are computed in the model dtype, scaled and masked (new
//!   tensors each time), then `softmax(dim=-1, dtype=float32)`: for bf16 PyTorch first
//!   converts the input to f32 (the fused half-to-float path exists only for fp16), so at
//!   the softmax the masked scores (2 B), the f32 copy (4 B) and the f32 result (4 B) are
//!   alive together: 10 bytes per score element. `.to(bf16)` then adds 2 B while the f32
//!   result lives. The returned weights are kept by the decoder layer (`hidden_states, _ =
//!   self_attn(..)`) through the MLP. The causal mask is a `(b, 1, s, t)` tensor in the model
//!   dtype. The KV cache (`DynamicCache`) grows by `torch.cat`, old and new coexisting for
//!   one layer.
//! - `flash`: a fused attention (FlashAttention, PyTorch SDPA): no score buffer, no mask, GQA
//!   without K/V copies; the KV cache preallocated for `context + decode_steps` tokens (a
//!   static or paged cache, as serving engines have). Compared with PyTorch SDPA, whose
//!   cache is cat-grown, it lacks one layer's K and V during a decode step.
//!
//! Common to both: RMSNorm converts the residual stream to f32 and squares it (two `b x s x
//! h x 4` temporaries), rotary embeddings build `q*cos`, `rotate_half(q)`, `*sin` before the
//! sum, the MLP keeps `act(gate)`, `up` and their product, and only the last token's logits
//! are computed (`logits_to_keep=1`, model dtype).

use super::{Breakdown, Component, Replay, Workload};
use crate::spec::{DType, ModelSpec};

use Component::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attn {
    Eager,
    Flash,
}

struct Dims {
    e: u64,
    layers: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    inter: u64,
    vocab: u64,
    weights: u64,
    dtype: DType,
}

impl Dims {
    fn new(spec: &ModelSpec, dtype: DType) -> Self {
        Self {
            e: dtype.size_in_bytes(),
            layers: spec.num_layers,
            hidden: spec.hidden_size,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            inter: spec.intermediate_size,
            vocab: spec.vocab_size,
            weights: spec.param_count() * dtype.size_in_bytes(),
            dtype,
        }
    }

    fn kv(&self, b: u64, t: u64) -> u64 {
        b * self.kv_heads * t * self.head_dim * self.e
    }

    /// RMSNorm: `x.to(f32)`, `x.pow(2).mean()`, `x * rsqrt(..)`, `.to(dtype)`, `w * ..`.
    /// Leaves its output (model dtype) allocated.
    fn rms_norm(&self, r: &mut Replay, rows: u64) {
        let x = rows * self.hidden;
        let f32_copy = if self.dtype == DType::F32 { 0 } else { x * 4 };
        r.alloc(HiddenStates, f32_copy); // to(float32)
        r.alloc(HiddenStates, x * 4); // pow(2)
        r.free(HiddenStates, x * 4); // .mean() consumed it
        r.alloc(HiddenStates, x * 4); // x * rsqrt(var + eps)
        r.free(HiddenStates, f32_copy); // rebinding drops the f32 copy
        r.alloc(HiddenStates, x * self.e); // .to(input_dtype)
        r.alloc(HiddenStates, x * self.e); // weight * ..
        r.free(HiddenStates, x * self.e + x * 4);
    }

    /// Rotary embeddings of one projection of `elems` elements: `x*cos + rotate_half(x)*sin`.
    fn rope(&self, r: &mut Replay, elems: u64) {
        let t = elems * self.e;
        r.alloc(QkvProjections, t); // x * cos
        r.alloc(QkvProjections, t / 2); // -x2
        r.alloc(QkvProjections, t); // cat(-x2, x1)
        r.free(QkvProjections, t / 2);
        r.alloc(QkvProjections, t); // * sin
        r.free(QkvProjections, t); // rotate_half result
        r.alloc(QkvProjections, t); // sum
        r.free(QkvProjections, 2 * t); // the two products
    }

    /// One decoder layer (the last one) for `s` new tokens with `cached` tokens of this
    /// layer's K/V resident on entry (cat-grown cache) or preallocated (flash).
    fn layer(&self, r: &mut Replay, attn: Attn, b: u64, s: u64, cached: u64) {
        let e = self.e;
        let t = cached + s;
        let x = b * s * self.hidden * e;
        let q_elems = b * s * self.heads * self.head_dim;
        let kv_elems = b * s * self.kv_heads * self.head_dim;
        // residual = hidden_states; hidden_states = input_layernorm(..)
        self.rms_norm(r, b * s);
        r.alloc(HiddenStates, x);
        // q, k, v projections (views after transpose)
        r.alloc(QkvProjections, q_elems * e);
        r.alloc(QkvProjections, kv_elems * e);
        r.alloc(QkvProjections, kv_elems * e);
        self.rope(r, q_elems);
        self.rope(r, kv_elems);
        // query_states, key_states = apply_rotary_pos_emb(..): the unrotated q, k go.
        r.free(QkvProjections, q_elems * e + kv_elems * e);
        // past_key_values.update(k, v)
        match attn {
            Attn::Eager => {
                // DynamicLayer: keys = cat(keys, k); values = cat(values, v): the new
                // tensors are allocated while the old ones live, then the old ones go.
                r.alloc(KvCache, self.kv(b, t));
                r.free(KvCache, self.kv(b, cached));
                r.alloc(KvCache, self.kv(b, t));
                r.free(KvCache, self.kv(b, cached));
            }
            Attn::Flash => {
                // Preallocated: the new K/V are written into place.
            }
        }
        // the rotated k and the v projection are dropped for the cache's tensors
        r.free(QkvProjections, 2 * kv_elems * e);
        let scores = b * self.heads * s * t;
        let q_out = q_elems * e;
        match attn {
            Attn::Eager => {
                let n_rep = self.heads / self.kv_heads.max(1);
                let rep = if n_rep > 1 {
                    b * self.heads * t * self.head_dim * e
                } else {
                    0
                };
                r.alloc(RepeatKv, 2 * rep);
                r.alloc(AttentionScores, scores * e); // q @ k^T
                r.alloc(AttentionScores, scores * e); // * scaling
                r.free(AttentionScores, scores * e);
                if s > 1 {
                    r.alloc(AttentionScores, scores * e); // + causal_mask
                    r.free(AttentionScores, scores * e);
                }
                // softmax(dim=-1, dtype=float32)
                let convert = match self.dtype {
                    DType::BF16 => scores * 4, // input.to(float32) first
                    DType::F16 | DType::F32 => 0,
                };
                r.alloc(F32Upcast, convert);
                r.alloc(AttentionScores, scores * 4);
                r.free(F32Upcast, convert);
                if self.dtype != DType::F32 {
                    r.alloc(AttentionScores, scores * e); // .to(query.dtype)
                }
                // the masked scores and the f32 result go; the weights survive
                r.free(AttentionScores, scores * e);
                if self.dtype != DType::F32 {
                    r.free(AttentionScores, scores * 4);
                }
                r.alloc(AttentionOutput, q_out); // weights @ v
                r.alloc(AttentionOutput, q_out); // transpose(1, 2).contiguous()
                r.free(AttentionOutput, q_out);
                r.free(RepeatKv, 2 * rep);
            }
            Attn::Flash => {
                r.alloc(AttentionOutput, q_out); // the fused kernel's output
                r.alloc(AttentionScores, b * self.heads * s * 4); // its log-sum-exp
                r.alloc(AttentionOutput, q_out); // transpose(1, 2).contiguous()
                r.free(AttentionOutput, q_out);
                r.free(AttentionScores, b * self.heads * s * 4);
            }
        }
        r.free(QkvProjections, q_elems * e); // rotated q
        r.alloc(HiddenStates, x); // o_proj
        r.free(AttentionOutput, q_out);
        // hidden_states = residual + hidden_states
        r.alloc(HiddenStates, x);
        r.free(HiddenStates, 3 * x); // residual, the normed input, o_proj output
                                     // residual = hidden_states; post_attention_layernorm
        self.rms_norm(r, b * s);
        r.alloc(HiddenStates, x);
        // mlp: down(act(gate(x)) * up(x))
        let m = b * s * self.inter * e;
        r.alloc(Mlp, m); // gate
        r.alloc(Mlp, m); // act
        r.free(Mlp, m);
        r.alloc(Mlp, m); // up
        r.alloc(Mlp, m); // product
        r.free(Mlp, 2 * m);
        r.alloc(HiddenStates, x); // down
        r.free(Mlp, m);
        r.free(HiddenStates, x); // the normed input
        r.alloc(HiddenStates, x); // residual + mlp
        r.free(HiddenStates, 2 * x);
        if attn == Attn::Eager {
            // the attention weights the layer kept (`hidden_states, _ = ..`)
            let kept = if self.dtype == DType::F32 {
                scores * 4
            } else {
                scores * e
            };
            r.free(AttentionScores, kept);
        }
    }
}

fn run(
    spec: &ModelSpec,
    dtype: DType,
    attn: Attn,
    b: u64,
    s: u64,
    cached: u64,
    total_tokens: u64,
) -> Breakdown {
    let d = Dims::new(spec, dtype);
    let e = d.e;
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    r.alloc(HiddenStates, b * s * 8); // input ids (int64)
                                      // K/V of the other layers, and of this one on entry
    match attn {
        Attn::Eager => {
            r.alloc(KvCache, (d.layers - 1) * 2 * d.kv(b, cached + s));
            r.alloc(KvCache, 2 * d.kv(b, cached));
        }
        Attn::Flash => r.alloc(KvCache, d.layers * 2 * d.kv(b, total_tokens)),
    }
    // position embeddings (cos, sin) in the model dtype
    r.alloc(RopeTables, 2 * b * s * d.head_dim * e);
    if attn == Attn::Eager && s > 1 {
        r.alloc(CausalMask, b * s * (cached + s) * e);
    }
    r.alloc(HiddenStates, b * s * d.hidden * e); // the layer input
    d.layer(&mut r, attn, b, s, cached);
    // final norm, last-token logits
    d.rms_norm(&mut r, b * s);
    r.alloc(Logits, b * d.vocab * e);
    r.peak
}

/// `transformers-eager` prefill of `batch x context` with an empty cache.
pub fn eager_prefill(spec: &ModelSpec, dtype: DType, w: Workload) -> Breakdown {
    run(spec, dtype, Attn::Eager, w.batch, w.context, 0, w.context)
}

/// `transformers-eager` decode: the last of `decode_steps` steps (the longest cache).
pub fn eager_decode(spec: &ModelSpec, dtype: DType, w: Workload) -> Breakdown {
    let steps = w.decode_steps.max(1);
    run(
        spec,
        dtype,
        Attn::Eager,
        w.batch,
        1,
        w.context + steps - 1,
        w.context + steps,
    )
}

/// `flash` prefill: the cache preallocated for `context + decode_steps` tokens.
pub fn flash_prefill(spec: &ModelSpec, dtype: DType, w: Workload) -> Breakdown {
    run(
        spec,
        dtype,
        Attn::Flash,
        w.batch,
        w.context,
        0,
        w.context + w.decode_steps,
    )
}

/// `flash` decode step.
pub fn flash_decode(spec: &ModelSpec, dtype: DType, w: Workload) -> Breakdown {
    let steps = w.decode_steps.max(1);
    run(
        spec,
        dtype,
        Attn::Flash,
        w.batch,
        1,
        w.context + steps - 1,
        w.context + steps,
    )
}
