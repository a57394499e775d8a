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

/// The kind of one decoder layer: whether it attends over a sliding window, whether its
/// MLP is routed experts. The peak is taken over the kinds the model has.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Kind {
    sliding: bool,
    sparse: bool,
}

struct Dims<'a> {
    spec: &'a ModelSpec,
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
    /// The prompt's tokens (a decode step with `cached == prompt` is the first).
    prompt: u64,
}

impl<'a> Dims<'a> {
    fn new(spec: &'a ModelSpec, dtype: DType) -> Self {
        Self {
            spec,
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
            prompt: 0,
        }
    }

    /// Tokens of K/V storage a layer of the cat-grown cache holds when a step of `s` new
    /// tokens after `cached` reaches it (`entry`), and after its update (`after`). A
    /// sliding layer keeps a view of the last `window - 1` tokens of its update's result,
    /// which holds that whole tensor: after the prompt, all of it, until the first decode
    /// step replaces it (at that step the worst moment is its first layer, every later one
    /// still holding the prompt).
    fn storage(&self, sliding: bool, s: u64, cached: u64) -> (u64, u64) {
        match self.spec.sliding_window {
            Some(w) if sliding && s == 1 && cached > self.prompt => {
                ((cached - 1).min(w - 1) + 1, cached.min(w - 1) + 1)
            }
            Some(_) if sliding && s == 1 => (cached, cached),
            _ => (cached, cached + s),
        }
    }

    fn kv(&self, b: u64, t: u64) -> u64 {
        b * self.kv_heads * t * self.head_dim * self.e
    }

    /// The bytes `dtype` -> f32 costs where PyTorch converts before an f32 op (bf16 only:
    /// the fused half-to-float path exists for fp16).
    fn upcast(&self, elems: u64) -> u64 {
        match self.dtype {
            DType::BF16 => elems * 4,
            DType::F16 | DType::F32 => 0,
        }
    }

    /// RMSNorm over `elems` values, leaving its output (model dtype) allocated. Llama's:
    /// `x.to(f32)`, `x.pow(2).mean()`, `x * rsqrt(..)`, `.to(dtype)`, `w * ..`. Gemma's
    /// (`sandwich_norms`): `x.float()`, the same, `* (1 + w.float())` in f32, `.type_as(x)`.
    fn rms_norm(&self, r: &mut Replay, c: Component, elems: u64) {
        let x = elems;
        let f32_copy = if self.dtype == DType::F32 { 0 } else { x * 4 };
        r.alloc(c, f32_copy); // to(float32)
        r.alloc(c, x * 4); // pow(2)
        r.free(c, x * 4); // .mean() consumed it
        r.alloc(c, x * 4); // x * rsqrt(var + eps)
        r.free(c, f32_copy); // rebinding drops the f32 copy
        if self.spec.sandwich_norms {
            r.alloc(c, x * 4); // * (1 + weight) in f32
            r.free(c, x * 4);
            r.alloc(c, x * self.e); // .type_as(x)
            r.free(c, x * 4);
        } else {
            r.alloc(c, x * self.e); // .to(input_dtype)
            r.alloc(c, x * self.e); // weight * ..
            r.free(c, x * self.e + x * 4);
        }
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

    /// A gated MLP of width `i` over `rows` tokens, its output (`rows x hidden`) left
    /// allocated as `out`. Phi-3's fused `gate_up_proj` output (both halves) lives until
    /// the product is made.
    fn gated_mlp(&self, r: &mut Replay, c: Component, out: Component, rows: u64, i: u64) {
        let m = rows * i * self.e;
        if self.spec.fused_projections {
            r.alloc(c, 2 * m); // gate_up_proj, chunked into views
            r.alloc(c, m); // act(gate)
            r.alloc(c, m); // up * act(gate)
            r.free(c, 3 * m);
            r.alloc(out, rows * self.hidden * self.e); // down
            r.free(c, m);
            return;
        }
        r.alloc(c, m); // gate
        r.alloc(c, m); // act
        r.free(c, m);
        r.alloc(c, m); // up
        r.alloc(c, m); // product
        r.free(c, 2 * m);
        r.alloc(out, rows * self.hidden * self.e); // down
        r.free(c, m);
    }

    /// transformers' sparse MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE) over `t` tokens: the
    /// router, its f32 softmax and top-k, the one-hot expert mask, then a loop over the
    /// experts, each gathering its tokens and adding its output into a zeroed result.
    /// The busiest expert is taken to receive every token (the bound: each token picks
    /// `top_k` distinct experts; balanced routing gives each `top_k / experts` of them).
    /// Leaves the block's output (`t x hidden`) allocated and returns the router logits'
    /// bytes, which the decoder layer keeps until it returns.
    fn moe(&self, r: &mut Replay, t: u64) -> u64 {
        let Some(m) = &self.spec.moe else {
            return 0;
        };
        let (e, h, experts, k) = (self.e, self.hidden, m.experts, m.top_k);
        let x = t * h * e;
        let logits = t * experts * e;
        r.alloc(ExpertRouting, logits); // router_logits = gate(x)
        let up = self.upcast(t * experts);
        r.alloc(ExpertRouting, up); // softmax(.., dtype=float): input to f32 first
        r.alloc(ExpertRouting, t * experts * 4);
        r.free(ExpertRouting, up);
        r.alloc(ExpertRouting, t * k * (4 + 8)); // topk: values, int64 indices
        r.free(ExpertRouting, t * experts * 4);
        let weights = if self.dtype == DType::F32 {
            0
        } else {
            t * k * e
        };
        r.alloc(ExpertRouting, weights); // routing_weights.to(dtype)
        if weights > 0 {
            r.free(ExpertRouting, t * k * 4);
        }
        r.alloc(Mlp, x); // final_hidden_states = zeros
        let mask = t * k * experts * 8;
        r.alloc(ExpertRouting, mask); // one_hot(selected, experts), int64
                                      // The busiest expert: torch.where's two index tensors, the gathered rows, the
                                      // expert's MLP, the per-row weights and the weighted output.
        let n = t;
        r.alloc(ExpertRouting, 2 * n * 8);
        r.alloc(Mlp, n * h * e); // hidden_states[top_x]
        self.gated_mlp(r, Mlp, Mlp, n, m.expert_intermediate);
        r.alloc(Mlp, n * e); // routing_weights[top_x, idx, None]
        r.alloc(Mlp, n * h * e); // expert output * weight
        r.free(Mlp, n * e + n * h * e); // the weights and the unweighted output
        r.free(Mlp, n * h * e + n * h * e); // index_add_ done: the product, the rows
        r.free(ExpertRouting, 2 * n * 8);
        if m.shared_intermediate > 0 {
            // shared_expert(x), sigmoid(shared_expert_gate(x)) * it, final + that
            self.gated_mlp(r, Mlp, Mlp, t, m.shared_intermediate);
            r.alloc(Mlp, 2 * t * e); // the gate's one output per token, its sigmoid
            r.free(Mlp, t * e);
            r.alloc(Mlp, x); // product
            r.free(Mlp, x + t * e); // the shared output and the gate
            r.alloc(Mlp, x); // final + shared
            r.free(Mlp, 2 * x); // the zeros-grown result and the product
        }
        r.free(ExpertRouting, mask + weights + t * k * 8);
        if weights == 0 {
            r.free(ExpertRouting, t * k * 4);
        }
        // the block returns (final, router_logits): the final output moves to the stream
        r.free(Mlp, x);
        r.alloc(HiddenStates, x);
        logits
    }

    /// Tokens of K/V a layer of the preallocated cache holds: `min(window, capacity)` in a
    /// sliding layer (transformers' static sliding-window layer).
    fn held(&self, sliding: bool, tokens: u64) -> u64 {
        match self.spec.sliding_window {
            Some(w) if sliding => tokens.min(w),
            _ => tokens,
        }
    }

    /// One decoder layer of `kind` for `s` new tokens with `cached` tokens before them.
    fn layer(&self, r: &mut Replay, attn: Attn, kind: Kind, b: u64, s: u64, cached: u64) {
        let e = self.e;
        let x = b * s * self.hidden * e;
        let q_elems = b * s * self.heads * self.head_dim;
        let kv_elems = b * s * self.kv_heads * self.head_dim;
        // The K/V this layer holds on entry, and the length attended over: a sliding
        // layer's cache has at most window - 1 tokens before these (after a prefill, a
        // view keeps the whole prompt's tensor until the next update replaces it).
        let (before, _) = self.storage(kind.sliding, s, cached);
        let t = match (attn, self.spec.sliding_window) {
            // the update returns the kept window - 1 tokens and the new one
            (Attn::Eager, Some(w)) if kind.sliding && s == 1 => cached.min(w - 1) + 1,
            _ => cached + s,
        };
        // residual = hidden_states; hidden_states = input_layernorm(..)
        self.rms_norm(r, HiddenStates, b * s * self.hidden);
        r.alloc(HiddenStates, x);
        // q, k, v projections (views after transpose)
        r.alloc(QkvProjections, q_elems * e);
        r.alloc(QkvProjections, kv_elems * e);
        r.alloc(QkvProjections, kv_elems * e);
        if self.spec.qk_norm {
            // q_norm(q_proj(x)), k_norm(k_proj(x)): each projection replaced by its norm
            self.rms_norm(r, QkvProjections, q_elems);
            r.free(QkvProjections, q_elems * e);
            self.rms_norm(r, QkvProjections, kv_elems);
            r.free(QkvProjections, kv_elems * e);
        }
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
                r.free(KvCache, self.kv(b, before));
                r.alloc(KvCache, self.kv(b, t));
                r.free(KvCache, self.kv(b, before));
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
                if self.spec.attn_logit_softcapping.is_some() {
                    // / softcap, tanh, * softcap: each a new tensor replacing the last
                    for _ in 0..3 {
                        r.replace(AttentionScores, scores * e);
                    }
                }
                if s > 1 {
                    r.alloc(AttentionScores, scores * e); // + causal_mask
                    r.free(AttentionScores, scores * e);
                }
                // softmax(dim=-1, dtype=float32)
                let convert = self.upcast(scores);
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
        if self.spec.sandwich_norms {
            // post_attention_layernorm(attn_out) replaces the projection's output
            self.rms_norm(r, HiddenStates, b * s * self.hidden);
            r.free(HiddenStates, x);
        }
        // hidden_states = residual + hidden_states
        r.alloc(HiddenStates, x);
        r.free(HiddenStates, 3 * x); // residual, the normed input, o_proj output
                                     // residual = hidden_states; post_attention_layernorm
                                     // (Gemma: pre_feedforward_layernorm)
        self.rms_norm(r, HiddenStates, b * s * self.hidden);
        let router_logits = if kind.sparse {
            self.moe(r, b * s)
        } else {
            // mlp: down(act(gate(x)) * up(x))
            self.gated_mlp(r, Mlp, HiddenStates, b * s, self.inter);
            0
        };
        r.free(HiddenStates, x); // the normed input
        if self.spec.sandwich_norms {
            // post_feedforward_layernorm(mlp_out) replaces the MLP's output
            self.rms_norm(r, HiddenStates, b * s * self.hidden);
            r.free(HiddenStates, x);
        }
        r.alloc(HiddenStates, x); // residual + mlp
        r.free(HiddenStates, 2 * x);
        r.free(ExpertRouting, router_logits); // `hidden_states, _ = self.mlp(..)`
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

    /// The layer kinds the model has.
    fn kinds(&self) -> Vec<(u64, Kind)> {
        let mut kinds: Vec<(u64, Kind)> = Vec::new();
        for l in 0..self.layers {
            let k = Kind {
                sliding: self.spec.is_sliding(l),
                sparse: self
                    .spec
                    .moe
                    .as_ref()
                    .is_some_and(|m| m.sparse_layers[l as usize]),
            };
            if !kinds.iter().any(|(_, x)| *x == k) {
                kinds.push((l, k));
            }
        }
        kinds
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    spec: &ModelSpec,
    dtype: DType,
    attn: Attn,
    b: u64,
    s: u64,
    cached: u64,
    total_tokens: u64,
    prompt: u64,
) -> Breakdown {
    let d = Dims {
        prompt,
        ..Dims::new(spec, dtype)
    };
    let mut best = Breakdown::default();
    // Each kind of layer in turn is the one running, the others' K/V resident.
    for (layer, kind) in d.kinds() {
        let peak = run_layer(&d, attn, layer, kind, b, s, cached, total_tokens);
        if peak.total() > best.total() {
            best = peak;
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
fn run_layer(
    d: &Dims<'_>,
    attn: Attn,
    layer: u64,
    kind: Kind,
    b: u64,
    s: u64,
    cached: u64,
    total_tokens: u64,
) -> Breakdown {
    let e = d.e;
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    r.alloc(HiddenStates, b * s * 8); // input ids (int64)
                                      // K/V of the other layers, and of this one on entry
    let others = (0..d.layers).filter(|&l| l != layer);
    match attn {
        Attn::Eager => {
            // After a prefill every layer holds the whole prompt (a sliding layer's view
            // keeps its tensor); in a decode step the others hold what the update left.
            let other: u64 = others
                .map(|l| 2 * d.kv(b, d.storage(d.spec.is_sliding(l), s, cached).1))
                .sum();
            r.alloc(KvCache, other);
            r.alloc(KvCache, 2 * d.kv(b, d.storage(kind.sliding, s, cached).0));
        }
        Attn::Flash => {
            let all: u64 = (0..d.layers)
                .map(|l| 2 * d.kv(b, d.held(d.spec.is_sliding(l), total_tokens)))
                .sum();
            r.alloc(KvCache, all);
        }
    }
    // position embeddings (cos, sin) in the model dtype
    r.alloc(RopeTables, 2 * b * s * d.head_dim * e);
    if attn == Attn::Eager && s > 1 {
        r.alloc(CausalMask, b * s * (cached + s) * e);
    }
    r.alloc(HiddenStates, b * s * d.hidden * e); // the layer input
    if d.spec.sandwich_norms {
        // Gemma: inputs_embeds * sqrt(hidden); the unscaled embeddings stay referenced
        r.alloc(HiddenStates, b * s * d.hidden * e);
    }
    d.layer(&mut r, attn, kind, b, s, cached);
    // final norm, last-token logits
    d.rms_norm(&mut r, HiddenStates, b * s * d.hidden);
    r.alloc(Logits, b * d.vocab * e);
    if d.spec.final_logit_softcapping.is_some() {
        // logits / cap, tanh, * cap
        for _ in 0..3 {
            r.replace(Logits, b * d.vocab * e);
        }
    }
    r.peak
}

/// `transformers-eager` prefill of `batch x context` with an empty cache.
pub fn eager_prefill(spec: &ModelSpec, dtype: DType, w: Workload) -> Breakdown {
    run(
        spec,
        dtype,
        Attn::Eager,
        w.batch,
        w.context,
        0,
        w.context,
        w.context,
    )
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
        w.context,
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
        w.context,
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
        w.context,
    )
}
