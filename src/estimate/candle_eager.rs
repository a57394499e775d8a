//! The `candle-eager` profile: candle-transformers 0.11 `models/llama.rs` without flash-attn.
//!
//! Each function replays the allocations of one forward pass in the order the code makes
//! them, with the lifetimes Rust gives them, and keeps the high-water mark. Facts from the
//! source that decide the peak (see ../shared/FINDINGS.md and the comments below):
//!
//! - `CausalSelfAttention::forward` shadows `q`, `k`, `v`, `att` and `y` instead of
//!   reassigning them, so every intermediate stays alive until the function returns:
//!   at `softmax(att) @ v` three score tensors (scaled, masked, softmaxed) and the output
//!   coexist, on top of the q/k/v projections and their contiguous and rotated copies.
//! - `repeat_kv` expands K and V with `Tensor::cat`: K (contiguous) costs one copy; V, a
//!   transposed view, goes through `cat0` and a strided `reshape`, two copies of which one
//!   survives.
//! - The KV cache grows by `Tensor::cat` every decode step; old and new tensors of a layer
//!   coexist until the cache entry is replaced. After a prefill the cached V is the
//!   transposed view of the `v_proj` output, so the first decode step copies it twice.
//! - Because layers are identical and the cache only grows, every phase peaks in the last
//!   layer: we replay that layer with the other layers' cache already resident.
//! - candle's CPU matmul widens bf16/f16 operands to f32 (whole storages) and narrows the
//!   result; on CUDA the matmul runs in the model dtype.

use super::{Backend, Breakdown, Component, Replay, Workload};
use crate::spec::{DType, ModelSpec};

use Component::*;

/// gemm's reduction blocking for the sizes vramprobe's CPU models use (see `Dims::linear`).
const GEMM_KC: u64 = 256;
/// Rows per gemm micro-kernel tile: packed buffers are rounded up to it.
const GEMM_MR: u64 = 16;
/// Largest output width whose weight gemm prepacks per call (two cache blocks of rows).
const GEMM_PREPACK_MAX: u64 = 4096;
/// gemm's row block for large problems (`8 x MR`).
const GEMM_ROW_BLOCK: u64 = 128;

/// Sizes of one model in one dtype, in bytes unless named `_elems`.
pub(super) struct Dims {
    pub(super) e: u64,
    pub(super) layers: u64,
    pub(super) hidden: u64,
    pub(super) q_width: u64,
    pub(super) kv_width: u64,
    pub(super) heads: u64,
    pub(super) kv_heads: u64,
    pub(super) head_dim: u64,
    pub(super) inter: u64,
    pub(super) vocab: u64,
    pub(super) weights: u64,
    rope: u64,
    pub(super) half: bool,
    pub(super) cpu: bool,
    /// candle-chunked: replay every chunk and block (tests), not one of each shape.
    pub(super) exhaustive: bool,
    /// candle-chunked with FlashAttention-2 (`candle-flash`): no scores, no mask.
    pub(super) flash: bool,
    /// gemm's largest reduction block on this CPU (`Knobs::gemm_kc_max`).
    pub(super) gemm_kc_max: u64,
}

impl Dims {
    pub(super) fn new(spec: &ModelSpec, dtype: DType, backend: Backend) -> Self {
        let e = dtype.size_in_bytes();
        Self {
            e,
            layers: spec.num_layers,
            hidden: spec.hidden_size,
            q_width: spec.num_heads * spec.head_dim,
            kv_width: spec.num_kv_heads * spec.head_dim,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            inter: spec.intermediate_size,
            vocab: spec.vocab_size,
            weights: spec.param_count() * e,
            // Cache::new: cos and sin, each (max_position_embeddings, head_dim / 2).
            rope: 2 * spec.max_position_embeddings * (spec.head_dim / 2) * e,
            half: dtype != DType::F32,
            gemm_kc_max: super::candle_chunked::GEMM_KC_MAX_FLOOR,
            cpu: backend == Backend::Cpu,
            exhaustive: false,
            flash: false,
        }
    }

    pub(super) fn n_rep(&self) -> u64 {
        self.heads / self.kv_heads
    }

    /// One (b, kv_heads, tokens, head_dim) K or V tensor.
    fn kv_half(&self, b: u64, tokens: u64) -> u64 {
        b * self.kv_heads * tokens * self.head_dim * self.e
    }

    /// `Linear::forward`: `x.matmul(w.t())` with output `out_elems`, for `rows` input rows.
    ///
    /// On CPU, candle calls the `gemm` crate, which (for `rows >= 2`; one row goes to gemv)
    /// packs the weight into a per-call buffer of `kc x out` elements when `out` fits two
    /// cache blocks (`2 * mc`), `kc` being the reduction depth blocked to the cache. We take
    /// `kc = min(in, 256)` and `2 * mc = 4096`, what an x86 core with a 2 MiB L2 gets; both
    /// vary with the CPU, and the term is a few hundred KiB for the CPU default model. In bf16/f16 the CPU matmul also
    /// widens the whole input and weight storages to f32 and multiplies into an f32 buffer
    /// before narrowing (`CpuStorage::matmul`).
    pub(super) fn linear(&self, r: &mut Replay, out: Component, rows: u64, in_w: u64, out_w: u64) {
        let out_elems = rows * out_w;
        let transient =
            self.matmul_transient((rows, in_w, out_w), out_elems, rows * in_w, in_w * out_w);
        r.alloc(MatmulWorkspace, transient);
        r.alloc(out, out_elems * self.e);
        r.free(MatmulWorkspace, transient);
    }

    /// gemm 0.19's packed copy of the weight in one CPU matmul of `rows x in` by `in x
    /// out` (candle hands gemm the transposed problem, so the weight is gemm's left
    /// operand, packed whole when its `out` rows fit two of gemm's row blocks): measured on
    /// this project's x86 machines (examples/mm_probe.rs), where the block is capped at 128
    /// rows for large problems, and the reduction block takes the whole `in` up to 1024.
    pub(super) fn gemm_prepack(&self, rows: u64, in_w: u64, out_w: u64) -> u64 {
        if !self.cpu || rows < 2 {
            return 0;
        }
        let small = out_w <= 64 && rows <= 64;
        let kc = if small {
            in_w.min(512)
        } else {
            in_w.div_ceil(in_w.div_ceil(self.gemm_kc_max.max(1)))
        };
        if small || out_w <= 2 * GEMM_ROW_BLOCK {
            kc * out_w.next_multiple_of(GEMM_MR) * 4
        } else {
            0
        }
    }

    /// The transient bytes of one CPU matmul of `(m, k) x (k, n)` (per batch) with
    /// `out_elems` outputs, whose operands' storages hold `lhs_storage` and `rhs_storage`
    /// elements: in bf16/f16 the f32 copies of both whole storages and of the result; for
    /// two rows or more, gemm's packed block of the right operand when `n` fits two cache
    /// blocks. Nothing on CUDA.
    pub(super) fn matmul_transient(
        &self,
        (m, k, n): (u64, u64, u64),
        out_elems: u64,
        lhs_storage: u64,
        rhs_storage: u64,
    ) -> u64 {
        let mut transient = 0;
        if self.cpu && self.half {
            transient += (lhs_storage + rhs_storage) * 4 + out_elems * 4;
        }
        if self.cpu && m >= 2 && n <= GEMM_PREPACK_MAX {
            transient += k.min(GEMM_KC) * n.next_multiple_of(GEMM_MR) * 4;
        }
        transient
    }

    /// The attention of the last layer for `s` new tokens attending to `kv` positions, with
    /// `cache_before` tokens of this layer's cache resident on entry (0 for a prefill).
    /// `v_cache_strided` says whether the cached V is still the transposed prefill view.
    /// On return only the cache and the o_proj output remain.
    fn attention(&self, r: &mut Replay, b: u64, s: u64, cache_before: u64, v_cache_strided: bool) {
        let e = self.e;
        let kv = cache_before + s;
        let q = b * s * self.q_width * e;
        let k_new = b * s * self.kv_width * e;
        // q, k, v projections; after a prefill the v output's storage is what the cache keeps.
        let v_comp = if cache_before == 0 {
            KvCache
        } else {
            QkvProjections
        };
        self.linear(r, QkvProjections, b * s, self.hidden, self.q_width);
        self.linear(r, QkvProjections, b * s, self.hidden, self.kv_width);
        self.linear(r, v_comp, b * s, self.hidden, self.kv_width);
        // reshape + transpose + contiguous for q and k, then rotary embeddings.
        r.alloc(QkvProjections, q);
        r.alloc(QkvProjections, k_new);
        r.alloc(QkvProjections, q);
        r.alloc(KvCache, k_new); // rotated k: the cache keeps it
        if cache_before > 0 {
            // k = cat(cache_k, k): cache_k is contiguous.
            let old = self.kv_half(b, cache_before);
            let new = self.kv_half(b, kv);
            r.alloc(KvCache, new);
            r.free(KvCache, k_new); // the rotated k is reassigned away
                                    // v = cat(cache_v, v).contiguous(): a strided cached V goes through cat0, whose
                                    // transposed result `.contiguous()` copies again.
            if v_cache_strided {
                r.alloc(KvCache, new);
                r.alloc(KvCache, new);
                r.free(KvCache, new);
            } else {
                r.alloc(KvCache, new);
            }
            // cache.kvs[layer] = (k, v): the old entry (and the v projection it may view) goes.
            r.free(KvCache, 2 * old);
        }
        let n_rep = self.n_rep();
        let rep = b * self.heads * kv * self.head_dim * e;
        if n_rep > 1 {
            r.alloc(RepeatKv, rep); // K: cat of contiguous copies
            let v_strided = cache_before == 0 && s > 1;
            if v_strided {
                r.alloc(RepeatKv, rep); // V: cat0 of transposed views...
                r.alloc(RepeatKv, rep); // ...and the strided reshape's copy
                r.free(RepeatKv, rep);
            } else {
                r.alloc(RepeatKv, rep);
            }
        }
        // to_dtype(F32) of q, k, v: no-ops on an f32 model.
        let q32 = b * self.heads * s * self.head_dim * 4;
        let kv32 = b * self.heads * kv * self.head_dim * 4;
        let mut upcast = 0;
        if self.half {
            upcast = q32 + 2 * kv32;
            r.alloc(F32Upcast, upcast);
        }
        let scores = b * self.heads * s * kv * 4;
        r.alloc(AttentionScores, scores); // q @ k^T
        r.alloc(AttentionScores, scores); // / sqrt(head_dim)
        r.free(AttentionScores, scores); // the unscaled product was a temporary
        if s > 1 {
            r.alloc(AttentionScores, scores); // masked_fill (where_cond)
        }
        r.alloc(AttentionScores, scores); // softmax_last_dim
                                          // `v.contiguous()`: with one KV head per query head in an f32 model, v is still the
                                          // transposed view and is copied here.
        let mut v_copy = 0;
        if n_rep == 1 && !self.half && cache_before == 0 && s > 1 {
            v_copy = kv32;
            r.alloc(F32Upcast, v_copy);
        }
        r.alloc(AttentionOutput, q32); // att @ v, f32
        if self.half {
            r.alloc(AttentionOutput, q); // to_dtype(in_dtype)
            r.free(AttentionOutput, q32);
        }
        let live_scores = if s > 1 { 3 * scores } else { 2 * scores };
        r.free(AttentionScores, live_scores);
        r.free(F32Upcast, upcast + v_copy);
        // y.transpose(1, 2).reshape(..): a copy; then o_proj.
        r.alloc(HiddenStates, q);
        self.linear(r, HiddenStates, b * s, self.q_width, self.hidden);
        // Return: every shadowed local goes, the cache stays.
        r.free(QkvProjections, 2 * q + (q + k_new) + k_new);
        if n_rep > 1 {
            r.free(RepeatKv, 2 * rep);
        }
        let y = if self.half { q } else { q32 };
        r.free(AttentionOutput, y);
        r.free(HiddenStates, q);
        if cache_before > 0 {
            // the new token's v projection: the cache holds the concatenation instead.
            r.free(QkvProjections, k_new);
        }
    }

    /// The rest of the block after attention, then the final norm and the logits; the
    /// o_proj output is alive on entry.
    fn mlp_and_head(&self, r: &mut Replay, b: u64, s: u64) {
        let e = self.e;
        let x = b * s * self.hidden * e;
        let m_elems = b * s * self.inter;
        r.alloc(HiddenStates, x); // attn + residual
        r.free(HiddenStates, x); // the o_proj output was a temporary
        r.alloc(HiddenStates, x); // rms_2
        self.linear(r, Mlp, b * s, self.hidden, self.inter); // gate
        r.alloc(Mlp, m_elems * e); // silu
        self.linear(r, Mlp, b * s, self.hidden, self.inter); // up
        r.alloc(Mlp, m_elems * e); // product
        r.free(Mlp, 3 * m_elems * e);
        self.linear(r, HiddenStates, b * s, self.inter, self.hidden); // down
        r.free(Mlp, m_elems * e);
        r.alloc(HiddenStates, x); // + residual: the block's output
                                  // the block's locals: rms_1 output, attn + residual, rms_2 output, down output, input.
        r.free(HiddenStates, 5 * x);
        // ln_f, last-token slice made contiguous, lm_head, to_dtype(F32).
        r.alloc(HiddenStates, x);
        r.alloc(HiddenStates, b * self.hidden * e);
        self.linear(r, Logits, b, self.hidden, self.vocab);
        if self.half {
            r.alloc(Logits, b * self.vocab * 4);
            r.free(Logits, b * self.vocab * e);
        }
    }
}

/// Peak of a prefill of `batch x context` tokens with an empty cache, measured from before
/// the weights are loaded (so the weights are part of it).
///
/// Resident on entry to the last layer: weights, rope tables, the u8 causal mask
/// (`context^2`, built at layer 0 and cached), token ids, the layer input, and the K and V
/// of the `layers - 1` layers before it (`2 * b * kv_heads * context * head_dim * dtype`
/// each).
pub fn prefill(spec: &ModelSpec, dtype: DType, backend: Backend, w: Workload) -> Breakdown {
    let d = Dims::new(spec, dtype, backend);
    let (b, s) = (w.batch, w.context);
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    r.alloc(RopeTables, d.rope);
    r.alloc(CausalMask, s * s);
    r.alloc(HiddenStates, b * s * 4); // token ids (u32)
    r.alloc(KvCache, (d.layers - 1) * 2 * d.kv_half(b, s));
    r.alloc(HiddenStates, b * s * d.hidden * d.e); // layer input
    r.alloc(HiddenStates, b * s * d.hidden * d.e); // rms_1
    d.attention(&mut r, b, s, 0, true);
    d.mlp_and_head(&mut r, b, s);
    r.peak
}

/// Peak of the decode phase: `decode_steps` single-token steps after a prefill of `context`.
/// The last step peaks highest (the cache is longest): `context + decode_steps - 1` tokens
/// cached on entry, all but the last layer already grown to `context + decode_steps`. The
/// prefill's causal mask stays cached. With one step the cached V is still the prefill's
/// transposed view.
pub fn decode(spec: &ModelSpec, dtype: DType, backend: Backend, w: Workload) -> Breakdown {
    let d = Dims::new(spec, dtype, backend);
    let b = w.batch;
    let steps = w.decode_steps.max(1);
    let before = w.context + steps - 1;
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    r.alloc(RopeTables, d.rope);
    r.alloc(CausalMask, w.context * w.context);
    r.alloc(KvCache, (d.layers - 1) * 2 * d.kv_half(b, before + 1));
    r.alloc(KvCache, 2 * d.kv_half(b, before));
    r.alloc(HiddenStates, b * 4); // token ids
    r.alloc(HiddenStates, b * d.hidden * d.e); // layer input
    r.alloc(HiddenStates, b * d.hidden * d.e); // rms_1
    d.attention(&mut r, b, 1, before, steps == 1);
    d.mlp_and_head(&mut r, b, 1);
    r.peak
}
