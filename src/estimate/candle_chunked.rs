//! The `candle-chunked` profile: vramprobe's own serving-shaped Llama forward in candle
//! (`runner::chunked`), replayed allocation by allocation.
//!
//! What the engine does, and so what this replay follows:
//!
//! - The KV cache is **preallocated**: every layer's K and V, `(batch, kv_heads, capacity,
//!   head_dim)`, zeroed when the point starts, and written in place (`slice_set`); the
//!   capacity is the prompt plus the decode steps unless `--kv-capacity` says more. No copy
//!   of K or V is ever made for the attention: query heads are grouped over their KV head.
//! - **Chunked prefill**: the prompt goes through the model in forwards of at most
//!   `prefill_chunk` tokens over the whole batch (`prefill_chunk / batch` positions per
//!   sequence, at least one), as vLLM's `max_num_batched_tokens` and llama.cpp's `n_ubatch`
//!   bound the activations. Each chunk attends to the cache filled so far.
//! - **Attention in blocks** ([`attention_blocks`]): the scores of a block of queries
//!   against every key so far never exceed `attention_block` elements (f32); the block's
//!   output is written into the chunk's output. So no tensor approaches candle's 2^32-element
//!   limit and the transient is bounded whatever the context.
//! - Logits for the last position only, of the last chunk.
//!
//! Every layer of a chunk is the same (the cache is resident from the start), so one layer
//! is replayed per chunk; every chunk is replayed, because the attention grows and the last
//! chunk may be shorter.

use super::candle_eager::Dims;
use super::{Backend, Breakdown, Component, Replay, Workload};
use crate::spec::{DType, ModelSpec};
use serde::{Deserialize, Serialize};

use Component::*;

/// Tokens per prefill forward over the whole batch unless asked otherwise (vLLM's
/// `max_num_batched_tokens` default for chunked prefill, llama.cpp's `n_batch`).
pub const DEFAULT_PREFILL_CHUNK: u64 = 2048;
/// Elements of one attention score block unless asked otherwise: 2^26, 256 MiB in f32.
pub const DEFAULT_ATTENTION_BLOCK: u64 = 1 << 26;
/// What one gemm call allocates on the CPU besides packing (see `gemm_call`).
pub(super) const GEMM_CALL_BYTES: u64 = 9 << 10;
/// Smallest accepted score block (one row of a 4K context for 32 heads would not fit below).
pub const MIN_ATTENTION_BLOCK: u64 = 1 << 12;

/// The engine's settings: what decides its memory besides the model and the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knobs {
    /// Tokens per prefill forward, over the whole batch.
    pub prefill_chunk: u64,
    /// Positions the KV cache holds per sequence; None: the prompt plus the decode steps.
    pub kv_capacity: Option<u64>,
    /// Most elements of one attention score block.
    pub attention_block: u64,
    /// candle-quantized: the GGML type of every weight.
    pub quant: super::candle_quantized::GgmlType,
    /// candle-quantized on the CPU: which x86 kernels candle runs (what it repacks).
    pub cpu_simd: super::candle_quantized::CpuSimd,
    /// On the CPU: gemm's largest reduction block (`kc`) for f32, which sets the size of the
    /// weight block it packs per call. gemm-common derives it from the L1 data cache: 512 for
    /// 32 KiB 8-way (its floor), 1024 by its formula for 48 KiB 12-way. The bench and
    /// `estimate --device cpu` read this machine's (`runner::gemm_kc_max`).
    #[serde(default = "gemm_kc_max_floor")]
    pub gemm_kc_max: u64,
}

/// gemm-common's floor for its largest reduction block (`kernel_params`: `.max(512)`).
pub const GEMM_KC_MAX_FLOOR: u64 = 512;

fn gemm_kc_max_floor() -> u64 {
    GEMM_KC_MAX_FLOOR
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            kv_capacity: None,
            attention_block: DEFAULT_ATTENTION_BLOCK,
            quant: super::candle_quantized::GgmlType::Q4K,
            cpu_simd: super::candle_quantized::CpuSimd::Portable,
            gemm_kc_max: GEMM_KC_MAX_FLOOR,
        }
    }
}

impl Knobs {
    /// Positions per sequence in one prefill forward.
    pub fn chunk_len(&self, batch: u64) -> u64 {
        (self.prefill_chunk / batch.max(1)).max(1)
    }

    /// Positions the cache holds for `w`: the prompt and its decode steps, or more when
    /// `kv_capacity` says so.
    pub fn capacity(&self, w: Workload) -> u64 {
        let need = w.context + w.decode_steps.max(1);
        self.kv_capacity.map_or(need, |c| c.max(need))
    }
}

/// The prefill's chunks: `(first position, positions)` per forward.
pub fn prefill_chunks(context: u64, chunk_len: u64) -> Vec<(u64, u64)> {
    let step = chunk_len.max(1);
    (0..context.div_ceil(step))
        .map(|i| (i * step, step.min(context - i * step)))
        .collect()
}

/// One block of the attention of a chunk: sequences `batch_start..+batch` and the chunk's
/// queries `query_start..+queries`, against the keys `0..keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub batch_start: u64,
    pub batch: u64,
    pub query_start: u64,
    pub queries: u64,
    pub keys: u64,
}

/// How the attention of a chunk of `queries` positions starting at `pos`, for `batch`
/// sequences and `heads` query heads, is cut so that no score block holds more than
/// `budget` elements: all sequences and as many query rows as fit against the chunk's
/// last key; when one row of every sequence is already too much, one row of as many
/// sequences as fit (at least one, so a single row of more than `budget` is one block).
pub fn attention_blocks(batch: u64, heads: u64, queries: u64, pos: u64, budget: u64) -> Vec<Block> {
    let (bb, qb) = block_shape(batch, heads, queries, pos, budget);
    let mut out = Vec::new();
    let mut b0 = 0;
    while b0 < batch {
        let nb = bb.min(batch - b0);
        let mut q0 = 0;
        while q0 < queries {
            let nq = qb.min(queries - q0);
            out.push(Block {
                batch_start: b0,
                batch: nb,
                query_start: q0,
                queries: nq,
                keys: pos + q0 + nq,
            });
            q0 += nq;
        }
        b0 += nb;
    }
    out
}

/// The sequences and queries of a full block of [`attention_blocks`].
pub fn block_shape(batch: u64, heads: u64, queries: u64, pos: u64, budget: u64) -> (u64, u64) {
    let per_row = heads * (pos + queries); // one query row of one sequence
    if batch * per_row <= budget {
        (batch, (budget / (batch * per_row)).clamp(1, queries))
    } else {
        ((budget / per_row).clamp(1, batch), 1)
    }
}

/// Whether candle copies `(b, n, h, d).transpose(1, 2)` to make it contiguous: not when
/// either swapped dimension is 1 (candle ignores the strides of size-1 dimensions).
fn transpose_copies(n: u64, h: u64) -> bool {
    n > 1 && h > 1
}

impl Dims {
    /// A batched matmul `(batch, m, k) x (batch, k, n)` whose operands live in storages of
    /// `lhs_storage` and `rhs_storage` elements (views of larger tensors widen whole).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        r: &mut Replay,
        out: Component,
        batch: u64,
        (m, _k, n): (u64, u64, u64),
        lhs_storage: u64,
        rhs_storage: u64,
    ) {
        let out_elems = batch * m * n;
        let transient =
            self.widen_transient(out_elems, lhs_storage, rhs_storage) + self.gemm_call(m);
        r.alloc(MatmulWorkspace, transient);
        r.alloc(out, out_elems * self.e);
        r.free(MatmulWorkspace, transient);
    }

    /// A linear layer as the chunked engine calls it: gemm's packed weight, and in
    /// bf16/f16 on the CPU the f32 copies.
    fn chunked_linear(&self, r: &mut Replay, out: Component, rows: u64, in_w: u64, out_w: u64) {
        let out_elems = rows * out_w;
        let transient = self.widen_transient(out_elems, rows * in_w, in_w * out_w)
            + self.gemm_prepack(rows, in_w, out_w)
            + self.gemm_call(rows);
        r.alloc(MatmulWorkspace, transient);
        r.alloc(out, out_elems * self.e);
        r.free(MatmulWorkspace, transient);
    }

    /// What every gemm call allocates on the CPU besides packing: 9.1 to 9.5 KiB measured
    /// for every shape, one row included (examples/mm_probe.rs).
    fn gemm_call(&self, _rows: u64) -> u64 {
        if self.cpu {
            GEMM_CALL_BYTES
        } else {
            0
        }
    }

    /// The f32 copies of a bf16/f16 CPU matmul: both operands' whole storages and the
    /// result (candle's CPU matmul has no half-precision kernel).
    fn widen_transient(&self, out_elems: u64, lhs_storage: u64, rhs_storage: u64) -> u64 {
        if self.cpu && self.half {
            (lhs_storage + rhs_storage) * 4 + out_elems * 4
        } else {
            0
        }
    }

    /// The kv cache of one layer, K or V, in elements.
    fn cache_elems(&self, b: u64, capacity: u64) -> u64 {
        b * self.kv_heads * capacity * self.head_dim
    }

    /// One block of the attention: the scores, the mask, the softmax and the output, which
    /// is left allocated (it is written into the chunk's output, or is that output).
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        r: &mut Replay,
        blk: Block,
        b: u64,
        c: u64,
        capacity: u64,
        q_storage: u64,
    ) -> u64 {
        let e = self.e;
        let (bb, qb, kv) = (blk.batch, blk.queries, blk.keys);
        let n_rep = self.n_rep();
        let rows = n_rep * qb;
        // The query block: a view of q unless it is cut along the queries.
        let q_copy = !(qb == c || bb * self.heads == 1);
        let q_block = bb * self.heads * qb * self.head_dim;
        let lhs_storage = if q_copy {
            r.alloc(QkvProjections, q_block * e);
            q_block
        } else {
            q_storage
        };
        let cache = self.cache_elems(b, capacity);
        let n = bb * self.heads * qb * kv; // score elements
        self.matmul(
            r,
            AttentionScores,
            bb * self.kv_heads,
            (rows, self.head_dim, kv),
            lhs_storage,
            cache,
        );
        if q_copy {
            r.free(QkvProjections, q_block * e);
        }
        let mut live = n * e;
        if self.half {
            r.alloc(AttentionScores, n * 4);
            r.free(AttentionScores, live);
            live = n * 4;
        }
        if qb > 1 {
            // mask = keys.broadcast_gt(query positions): u8, then where_cond into f32.
            r.alloc(CausalMask, qb * 4); // the queries' positions
            r.alloc(CausalMask, qb * kv);
            r.free(CausalMask, qb * 4);
            r.alloc(AttentionScores, n * 4);
            r.free(AttentionScores, live);
            r.free(CausalMask, qb * kv);
            live = n * 4;
        }
        r.alloc(AttentionScores, n * 4); // softmax_last_dim
        r.free(AttentionScores, live);
        live = n * 4;
        if self.half {
            r.alloc(AttentionScores, n * e);
            r.free(AttentionScores, live);
            live = n * e;
        }
        let out = bb * self.heads * qb * self.head_dim;
        self.matmul(
            r,
            AttentionOutput,
            bb * self.kv_heads,
            (rows, kv, self.head_dim),
            n,
            cache,
        );
        r.free(AttentionScores, live);
        if transpose_copies(self.heads, qb) {
            r.replace(AttentionOutput, out * e);
        }
        out * e
    }

    /// One decoder layer over a chunk of `c` positions at `pos`; the layer input is
    /// resident on entry, the layer output on return (the input freed).
    fn chunked_layer(&self, r: &mut Replay, b: u64, c: u64, pos: u64, k: &Knobs, capacity: u64) {
        let e = self.e;
        let rows = b * c;
        let x = rows * self.hidden * e;
        let q = rows * self.q_width * e;
        let kv = rows * self.kv_width * e;
        r.alloc(HiddenStates, x); // rms_norm
        self.chunked_linear(r, QkvProjections, rows, self.hidden, self.q_width);
        self.chunked_linear(r, QkvProjections, rows, self.hidden, self.kv_width);
        self.chunked_linear(r, QkvProjections, rows, self.hidden, self.kv_width);
        r.free(HiddenStates, x);
        if self.flash {
            self.flash_attention(r, b, c, q, kv);
        } else {
            self.blocked_attention(r, b, c, pos, k, capacity, q, kv);
        }
        self.chunked_linear(r, HiddenStates, rows, self.q_width, self.hidden); // o_proj
        r.free(AttentionOutput, q);
        r.alloc(HiddenStates, x); // x + o
        r.free(HiddenStates, 2 * x);
        // MLP
        let m = rows * self.inter * e;
        r.alloc(HiddenStates, x); // rms_norm
        self.chunked_linear(r, Mlp, rows, self.hidden, self.inter); // gate
        r.replace(Mlp, m); // silu
        self.chunked_linear(r, Mlp, rows, self.hidden, self.inter); // up
        r.free(HiddenStates, x);
        r.alloc(Mlp, m); // silu(gate) * up
        r.free(Mlp, 2 * m);
        self.chunked_linear(r, HiddenStates, rows, self.inter, self.hidden); // down
        r.free(Mlp, m);
        r.alloc(HiddenStates, x); // x + down
        r.free(HiddenStates, 2 * x);
    }

    /// `candle-flash`'s attention of a chunk of `c` positions: q, k, v stay in the
    /// projections' `(b, c, heads, head_dim)` layout (views), `rope_thd` rotates q and k into
    /// new tensors, k and v are written into the `(b, capacity, kv_heads, head_dim)` cache
    /// and dropped, and `candle_flash_attn::flash_attn` reads the cache's first `pos + c`
    /// positions as a narrowed view: it allocates only its output and the f32 log-sum-exp
    /// (`b x heads x c`), freed when the call returns. Leaves the output allocated.
    fn flash_attention(&self, r: &mut Replay, b: u64, c: u64, q: u64, kv: u64) {
        r.replace(QkvProjections, q); // rope_thd(q)
        r.replace(QkvProjections, kv); // rope_thd(k)
        r.free(QkvProjections, kv); // written into the cache
        r.free(QkvProjections, kv); // v written into the cache
        r.alloc(AttentionOutput, q); // flash_attn's output
        let lse = b * self.heads * c * 4;
        r.alloc(AttentionScores, lse);
        r.free(AttentionScores, lse);
        r.free(QkvProjections, q); // the rotated q
    }

    /// `candle-chunked`'s attention: heads first, rotary, scale, then block by block into
    /// the chunk's output, which is left allocated.
    #[allow(clippy::too_many_arguments)]
    fn blocked_attention(
        &self,
        r: &mut Replay,
        b: u64,
        c: u64,
        pos: u64,
        k: &Knobs,
        capacity: u64,
        q: u64,
        kv: u64,
    ) {
        // q: heads first, rotary, scale.
        let heads_first = |r: &mut Replay, heads: u64, bytes: u64| {
            if transpose_copies(c, heads) {
                r.replace(QkvProjections, bytes);
            }
        };
        heads_first(r, self.heads, q);
        r.replace(QkvProjections, q);
        r.replace(QkvProjections, q);
        // k: heads first, rotary, written into the cache; v: heads first, written.
        heads_first(r, self.kv_heads, kv);
        r.replace(QkvProjections, kv);
        r.free(QkvProjections, kv);
        heads_first(r, self.kv_heads, kv);
        r.free(QkvProjections, kv);
        // Attention, block by block, into the chunk's output.
        let blocks = attention_blocks(b, self.heads, c, pos, k.attention_block);
        let q_storage = b * self.heads * c * self.head_dim;
        if let [only] = blocks[..] {
            let out = self.attention_block(r, only, b, c, capacity, q_storage);
            r.free(QkvProjections, q);
            debug_assert_eq!(out, q);
        } else {
            r.alloc(AttentionOutput, q); // zeros, written block by block
            for blk in representatives(&blocks, |b| (b.batch, b.queries), self.exhaustive) {
                let out = self.attention_block(r, *blk, b, c, capacity, q_storage);
                r.free(AttentionOutput, out);
            }
            r.free(QkvProjections, q);
        }
    }

    /// One forward of `c` positions at `pos`: token ids, the embedding, the layers, and the
    /// last position's logits when `logits`; what it leaves (the logits) stays allocated.
    #[allow(clippy::too_many_arguments)]
    fn chunked_forward(
        &self,
        r: &mut Replay,
        b: u64,
        c: u64,
        pos: u64,
        k: &Knobs,
        capacity: u64,
        logits: bool,
    ) {
        let e = self.e;
        r.alloc(HiddenStates, b * c * 4); // token ids
        let keys = if c > 1 && !self.flash {
            (pos + c) * 4
        } else {
            0
        };
        r.alloc(CausalMask, keys); // key positions, for the masks of the chunk
        r.alloc(HiddenStates, b * c * self.hidden * e); // embedding
        self.chunked_layer(r, b, c, pos, k, capacity);
        if logits {
            let last_copy = c > 1 && b > 1;
            let one = b * self.hidden * e;
            if last_copy {
                r.alloc(HiddenStates, one);
            }
            r.alloc(HiddenStates, one); // final norm
            if last_copy {
                r.free(HiddenStates, one);
            }
            self.chunked_linear(r, Logits, b, self.hidden, self.vocab);
            r.free(HiddenStates, one);
            if self.half {
                r.alloc(Logits, b * self.vocab * 4);
                r.free(Logits, b * self.vocab * e);
            }
        }
        r.free(HiddenStates, b * c * self.hidden * e + b * c * 4);
        r.free(CausalMask, keys);
    }

    /// What a point holds from its start: the rotary tables for `capacity` positions (built
    /// in f32, then cast) and every layer's K and V cache.
    fn chunked_resident(&self, r: &mut Replay, b: u64, capacity: u64) {
        let table = capacity * (self.head_dim / 2);
        for _ in 0..2 {
            r.alloc(RopeTables, table * 4);
            if self.half {
                r.alloc(RopeTables, table * self.e);
                r.free(RopeTables, table * 4);
            }
        }
        r.alloc(
            KvCache,
            2 * self.layers * self.cache_elems(b, capacity) * self.e,
        );
    }
}

/// The items worth replaying: every item of the sequence, or (unless `exhaustive`) only
/// the last of each shape. Chunks and blocks of one shape differ only by how many keys they
/// attend to, which grows along the sequence, and each returns the replay to the state it
/// found; so the last of each shape holds the peak of all of them. A chunk's shape is its
/// length and its blocks' shape (the blocks hold fewer queries as the keys grow, so an
/// earlier chunk can have the larger block): the replay is O(distinct shapes), not
/// O(context^2 / block).
fn representatives<T, K: PartialEq>(
    items: &[T],
    shape: impl Fn(&T) -> K,
    exhaustive: bool,
) -> Vec<&T> {
    if exhaustive {
        return items.iter().collect();
    }
    let mut seen: Vec<K> = Vec::new();
    let mut kept: Vec<&T> = Vec::new();
    for t in items.iter().rev() {
        let k = shape(t);
        if !seen.contains(&k) {
            seen.push(k);
            kept.push(t);
        }
    }
    kept.reverse();
    kept
}

/// Peak of the chunked prefill of `batch x context` tokens, weights included.
pub fn prefill(
    spec: &ModelSpec,
    dtype: DType,
    backend: Backend,
    w: Workload,
    k: &Knobs,
) -> Breakdown {
    prefill_replay(spec, dtype, backend, w, k, false)
}

/// Peak of `candle-flash`'s chunked prefill: `candle-chunked` with FlashAttention-2.
pub fn flash_prefill(spec: &ModelSpec, dtype: DType, w: Workload, k: &Knobs) -> Breakdown {
    let mut d = Dims::new(spec, dtype, Backend::Cuda);
    d.flash = true;
    replay_prefill(d, w, k)
}

/// Peak of `candle-flash`'s last decode step.
pub fn flash_decode(spec: &ModelSpec, dtype: DType, w: Workload, k: &Knobs) -> Breakdown {
    let mut d = Dims::new(spec, dtype, Backend::Cuda);
    d.flash = true;
    replay_decode(d, w, k)
}

/// [`prefill`], replaying every chunk and block when `exhaustive` (what the fast replay is
/// tested against).
fn prefill_replay(
    spec: &ModelSpec,
    dtype: DType,
    backend: Backend,
    w: Workload,
    k: &Knobs,
    exhaustive: bool,
) -> Breakdown {
    let mut d = Dims::new(spec, dtype, backend);
    d.exhaustive = exhaustive;
    replay_prefill(d, w, k)
}

fn replay_prefill(mut d: Dims, w: Workload, k: &Knobs) -> Breakdown {
    d.gemm_kc_max = k.gemm_kc_max;
    let capacity = k.capacity(w);
    let b = w.batch;
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    d.chunked_resident(&mut r, b, capacity);
    let chunks = prefill_chunks(w.context, k.chunk_len(b));
    let last = chunks.last().copied();
    // Chunks of one length and one block shape differ only by their position.
    let shape = |&(pos, c): &(u64, u64)| (c, block_shape(b, d.heads, c, pos, k.attention_block));
    for &(pos, c) in representatives(&chunks, shape, d.exhaustive) {
        let is_last = Some((pos, c)) == last;
        d.chunked_forward(&mut r, b, c, pos, k, capacity, is_last);
        if is_last {
            r.free(Logits, b * d.vocab * if d.half { 4 } else { d.e });
        }
    }
    r.peak
}

/// Peak of the decode phase: the last of `decode_steps` single-token steps, with the cache
/// (allocated for the whole sequence at the prefill) resident.
pub fn decode(
    spec: &ModelSpec,
    dtype: DType,
    backend: Backend,
    w: Workload,
    k: &Knobs,
) -> Breakdown {
    replay_decode(Dims::new(spec, dtype, backend), w, k)
}

fn replay_decode(mut d: Dims, w: Workload, k: &Knobs) -> Breakdown {
    d.gemm_kc_max = k.gemm_kc_max;
    let capacity = k.capacity(w);
    let pos = w.context + w.decode_steps.max(1) - 1;
    let mut r = Replay::new();
    r.alloc(Weights, d.weights);
    d.chunked_resident(&mut r, w.batch, capacity);
    d.chunked_forward(&mut r, w.batch, 1, pos, k, capacity, true);
    r.peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_prompt_once() {
        assert_eq!(prefill_chunks(5, 2), vec![(0, 2), (2, 2), (4, 1)]);
        assert_eq!(prefill_chunks(4, 8), vec![(0, 4)]);
        let k = Knobs::default();
        assert_eq!(k.chunk_len(4), 512);
        assert_eq!(k.chunk_len(4096), 1);
    }

    /// Every query row of every sequence is in exactly one block, and no block holds more
    /// than the budget unless it is a single row of one sequence.
    #[test]
    fn blocks_partition_the_scores_within_the_budget() {
        for (b, h, c, pos, budget) in [
            (1u64, 8u64, 2048u64, 0u64, 1u64 << 20),
            (4, 32, 512, 130_000, 1 << 26),
            (64, 32, 1, 131_071, 1 << 26),
            (3, 8, 7, 5, 100),
            (2, 8, 16, 0, 1 << 30),
        ] {
            let blocks = attention_blocks(b, h, c, pos, budget);
            let mut seen = vec![0u32; (b * c) as usize];
            for blk in &blocks {
                let elems = blk.batch * h * blk.queries * blk.keys;
                assert!(
                    elems <= budget || (blk.batch == 1 && blk.queries == 1),
                    "{blk:?} over {budget}"
                );
                assert_eq!(blk.keys, pos + blk.query_start + blk.queries);
                for i in blk.batch_start..blk.batch_start + blk.batch {
                    for q in blk.query_start..blk.query_start + blk.queries {
                        seen[(i * c + q) as usize] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{b} {h} {c} {pos} {budget}");
        }
        assert_eq!(attention_blocks(2, 8, 16, 0, 1 << 30).len(), 1);
    }

    /// gemm's reduction block on the CPU sets how much of a weight it packs: the tiny model's
    /// down projection (768 inputs) is packed in two blocks of 384 rows where the ceiling is
    /// 512 and whole where it is 1024; CUDA ignores the knob.
    #[test]
    fn gemm_block_ceiling_sets_the_packed_weight() {
        let spec = ModelSpec::from_json_str(
            crate::TINY_CONFIG,
            std::path::Path::new(crate::TINY_CONFIG_PATH),
        )
        .unwrap();
        let w = Workload {
            batch: 1,
            context: 128,
            decode_steps: 4,
        };
        let at = |kc: u64, backend: Backend| {
            let k = Knobs {
                gemm_kc_max: kc,
                ..Knobs::default()
            };
            prefill(&spec, DType::F32, backend, w, &k)
        };
        let (small, large) = (at(512, Backend::Cpu), at(1024, Backend::Cpu));
        // With the 1024 ceiling the whole 768 x 256 block is packed at once and sets the peak;
        // with 512 it is packed in halves and the peak moves elsewhere, lower.
        assert_eq!(
            large.get(MatmulWorkspace),
            768 * 256 * 4 + GEMM_CALL_BYTES,
            "{large:?}"
        );
        assert!(small.total() < large.total(), "{small:?} {large:?}");
        assert!(small.get(MatmulWorkspace) < 384 * 256 * 4 + GEMM_CALL_BYTES + 1);
        assert_eq!(at(512, Backend::Cuda), at(1024, Backend::Cuda));
    }

    /// Replaying only the last chunk and block of each shape gives the peak of replaying
    /// them all, breakdown included.
    #[test]
    fn the_short_replay_finds_the_same_peak() {
        let spec = ModelSpec::from_json_str(
            crate::TINY_CONFIG,
            std::path::Path::new(crate::TINY_CONFIG_PATH),
        )
        .expect("tiny config")
        .with_max_position(1 << 14)
        .expect("positions");
        for (batch, context, chunk, block) in [
            (1u64, 1000u64, 256u64, 1u64 << 14),
            (4, 777, 100, 5000),
            (3, 4096, 2048, 1 << 26),
            (16, 300, 64, 4096),
            (2, 5000, 333, 70_000),
            (1, 16_000, 2048, 1 << 20),
            (2, 12_000, 1024, 300_000),
        ] {
            let w = Workload {
                batch,
                context,
                decode_steps: 3,
            };
            let k = Knobs {
                prefill_chunk: chunk,
                kv_capacity: None,
                attention_block: block,
                ..Knobs::default()
            };
            for (dtype, backend) in [(DType::F32, Backend::Cpu), (DType::BF16, Backend::Cuda)] {
                assert_eq!(
                    prefill_replay(&spec, dtype, backend, w, &k, false),
                    prefill_replay(&spec, dtype, backend, w, &k, true),
                    "{w:?} {k:?} {dtype:?}"
                );
            }
        }
        // Llama-3.1-8B at long context (32 heads, the default block): the case `fit` meets.
        let llama = ModelSpec::from_path(std::path::Path::new("models/llama-3.1-8b-instruct"))
            .expect("llama 3.1 config");
        for context in [59_981u64, 60_018, 100_000] {
            let w = Workload {
                batch: 1,
                context,
                decode_steps: 8,
            };
            let k = Knobs::default();
            assert_eq!(
                prefill_replay(&llama, DType::BF16, Backend::Cuda, w, &k, false),
                prefill_replay(&llama, DType::BF16, Backend::Cuda, w, &k, true),
                "{w:?}"
            );
        }
    }
}
