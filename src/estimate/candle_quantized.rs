//! The `candle-quantized` profile: candle-transformers 0.11's `models/quantized_llama.rs`
//! (GGUF weights as `QTensor`s, `QMatMul`) on candle-core 0.11's quantized kernels.
//!
//! The replay follows that code allocation by allocation, as [`super::candle_eager`] does for
//! `llama.rs`. What decides the peak, from the source:
//!
//! - Weights: each 2-D weight in its GGML blocks ([`GgmlType::bytes`]); the token embedding is
//!   dequantized to f32 at load (`vocab x hidden x 4`, resident) and its quantized copy kept
//!   only when it doubles as the output layer (tied); the norms are dequantized to f32.
//! - Activations, the KV cache and the scores are f32 whatever the weights: `QMatMul` returns
//!   f32. The KV cache grows by `Tensor::cat` per step; `repeat_kv` copies K and V for GQA;
//!   three f32 score tensors (scaled, masked, softmaxed) are alive at the softmax, because
//!   `forward_attn` shadows them; q, k and v projections and their contiguous and rotated
//!   copies live until the attention returns.
//! - Rotary tables for `MAX_SEQ_LEN` = 4096 positions, f32, built at load: no context beyond
//!   4096 tokens runs (candle ignores Llama 3.1's rope scaling here too).
//! - One u8 causal mask per (seq, kv) shape, built from a `Vec` grown by doubling and cached
//!   for the model's life.
//! - On x86 CPUs with AVX2 (`quantized/repack_x86.rs`), Q4K weights (any rows), Q8_0 weights
//!   (AVX-VNNI or AVX-512 VNNI) and Q6K weights (more than one row) whose rows are a multiple
//!   of 16 and whose inputs a multiple of 256 are repacked on first use into 16-row tiles
//!   that stay beside the GGUF blocks for the model's life ([`GgmlType::tile_bytes`]: Q4K's
//!   tiles are 1.33x its blocks, Q8_0's as large as its blocks); each such matmul quantizes
//!   its input into a fresh Q8K buffer. Every other quantized matmul quantizes its input
//!   into a thread-local scratch that only grows (`k_quants::matmul`).
//! - On CUDA (`quantized/cuda.rs`, `fast_mmvq.rs`, `fast_mmq.rs`; untested on a GPU): each
//!   weight padded by `MATRIX_ROW_PADDING` (512) values; no repacking. Up to 8 rows go to
//!   MMVQ, which quantizes the input to Q8_1 (36 bytes per 32 values, rows padded to 512)
//!   into a per-device workspace that only grows; more rows go to MMQ, with its own
//!   grow-only workspace (144 bytes per 128 padded values per row, plus 128 x 144) and a
//!   16 MiB fix-up buffer made once. The workspaces outlive every point: the runner's
//!   warm-up sizes them first (so they are part of the loaded model), and a point that needs
//!   more allocates the larger one before the old one goes.

use super::{Backend, Breakdown, Component, Replay, Workload};
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};

use Component::*;

/// The rotary tables' positions, fixed in candle-transformers' quantized_llama
/// (`MAX_SEQ_LEN`).
pub const MAX_POSITIONS: u64 = 4096;
/// gemm's bookkeeping per f32 matmul call on the CPU (see `candle_chunked`).
const GEMM_CALL_BYTES: u64 = super::candle_chunked::GEMM_CALL_BYTES;
/// candle's CUDA quantized storages are padded by this many values per tensor.
const CUDA_ROW_PADDING: u64 = 512;
/// candle's CUDA MMVQ kernels take at most this many rows; more go to MMQ.
const MMVQ_MAX_ROWS: u64 = 8;
/// MMQ's fix-up buffer: 256 SMs x 128 x 128 f32, allocated on first use and kept.
const MMQ_FIXUP_BYTES: u64 = 256 * 128 * 128 * 4;
/// The runner's warm-up: a prefill of this many tokens of one sequence, then a step.
pub const WARMUP_TOKENS: u64 = 16;

/// A GGML tensor type the estimate models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GgmlType {
    F32,
    F16,
    /// 32 values: an f16 scale and 16 bytes of 4-bit values (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 32 values: an f16 scale and 32 bytes (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 256 values: f16 scale and min, 12 bytes of 6-bit sub-block scales, 128 bytes of 4-bit
    /// values (4.5 bits per weight).
    #[serde(rename = "q4k")]
    Q4K,
    /// 256 values: 192 bytes of 6-bit values, 16 sub-block scales, an f16 scale (6.5625 bits).
    #[serde(rename = "q6k")]
    Q6K,
}

impl GgmlType {
    /// The types `--quant` offers for `candle-quantized`.
    pub const OFFERED: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q8_0];

    pub const fn as_str(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4K => "q4k",
            GgmlType::Q6K => "q6k",
        }
    }

    /// Values per block.
    pub const fn block_elems(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block (`size_of` of ggml's block structs).
    pub const fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of `elems` values (a multiple of the block).
    pub const fn bytes(self, elems: u64) -> u64 {
        elems / self.block_elems() * self.block_bytes()
    }

    /// Whether candle keeps it as a quantized tensor (else `QMatMul` dequantizes it to f32).
    pub const fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16)
    }

    /// Bytes per value of the CPU dot product's input blocks (`VecDotType`): Q8_0 for the
    /// 32-value types, Q8K (292 bytes per 256) for the k-quants.
    fn vec_dot_bytes(self, elems: u64) -> u64 {
        match self {
            GgmlType::Q4_0 | GgmlType::Q8_0 => elems.div_ceil(32) * 34,
            GgmlType::Q4K | GgmlType::Q6K => elems.div_ceil(256) * Q8K_BLOCK_BYTES,
            GgmlType::F32 => elems * 4,
            GgmlType::F16 => elems * 2,
        }
    }

    /// Bytes of the x86 repacked tiles of an `n x k` weight (16 rows per tile): Q4K 3,072
    /// bytes per 16 x 256 values, Q6K 5,120, Q8_0 544 per 16 x 32.
    pub const fn tile_bytes(self, n: u64, k: u64) -> u64 {
        match self {
            GgmlType::Q4K => n / 16 * (k / 256) * 3072,
            GgmlType::Q6K => n / 16 * (k / 256) * 5120,
            GgmlType::Q8_0 => n / 16 * (k / 32) * 544,
            _ => 0,
        }
    }
}

impl std::str::FromStr for GgmlType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("unknown GGML type \"{s}\" (q4_0, q4k, q8_0, q6k, f16, f32)"))
    }
}

/// `size_of::<BlockQ8K>()`: an f32 scale, 256 i8 values, 16 i16 sums.
const Q8K_BLOCK_BYTES: u64 = 292;

/// Which of candle's x86 quantized kernels run (`repack_x86::level`), which decides what
/// the CPU repacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuSimd {
    /// No AVX2: nothing is repacked.
    #[default]
    Portable,
    /// AVX2 + FMA: Q4K and Q6K repacked, Q8_0 not.
    Avx2,
    /// AVX-VNNI (256-bit): Q4K, Q6K and Q8_0 repacked.
    AvxVnni,
    /// AVX-512 VNNI: as AVX-VNNI (and AMX for Q4K where the CPU has it: not modelled).
    Avx512Vnni,
    /// Another architecture (aarch64 repacks differently): not modelled, estimated as portable.
    Unmodelled,
}

impl CpuSimd {
    pub const fn as_str(self) -> &'static str {
        match self {
            CpuSimd::Portable => "portable",
            CpuSimd::Avx2 => "avx2",
            CpuSimd::AvxVnni => "avx-vnni",
            CpuSimd::Avx512Vnni => "avx512-vnni",
            CpuSimd::Unmodelled => "unmodelled",
        }
    }

    /// `repack_x86::select`: whether an `m x k` by `n x k` matmul of `t` runs on tiles.
    fn repacks(self, t: GgmlType, m: u64, n: u64, k: u64) -> bool {
        if matches!(self, CpuSimd::Portable | CpuSimd::Unmodelled) {
            return false;
        }
        if k == 0 || n % 16 != 0 || k % 256 != 0 {
            return false;
        }
        match t {
            GgmlType::Q4K => true,
            GgmlType::Q6K => m > 1,
            GgmlType::Q8_0 => self != CpuSimd::Avx2,
            _ => false,
        }
    }
}

/// The GGML type of every weight of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantLayout {
    pub embed: GgmlType,
    /// None: tied, the quantized embedding is the output layer.
    pub output: Option<GgmlType>,
    /// One entry for every layer, or one for all.
    pub layers: Vec<LayerTypes>,
}

/// The types of one layer's projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTypes {
    pub q: GgmlType,
    pub k: GgmlType,
    pub v: GgmlType,
    pub o: GgmlType,
    pub gate: GgmlType,
    pub up: GgmlType,
    pub down: GgmlType,
}

impl QuantLayout {
    /// Every 2-D weight in `t` (llama.cpp's `--pure`), the norms in f32.
    pub fn pure(spec: &ModelSpec, t: GgmlType) -> Self {
        let l = LayerTypes {
            q: t,
            k: t,
            v: t,
            o: t,
            gate: t,
            up: t,
            down: t,
        };
        QuantLayout {
            embed: t,
            output: (!spec.tie_word_embeddings).then_some(t),
            layers: vec![l],
        }
    }

    /// From each checkpoint tensor's type (a GGUF file's); tensors not named keep `fallback`.
    pub fn from_types(spec: &ModelSpec, types: &[(String, GgmlType)], fallback: GgmlType) -> Self {
        let get = |name: &str| {
            types
                .iter()
                .find_map(|(n, t)| (n == name).then_some(*t))
                .unwrap_or(fallback)
        };
        let has = |name: &str| types.iter().any(|(n, _)| n == name);
        let layers = (0..spec.num_layers)
            .map(|l| {
                let p = |s: &str| get(&format!("model.layers.{l}.{s}.weight"));
                LayerTypes {
                    q: p("self_attn.q_proj"),
                    k: p("self_attn.k_proj"),
                    v: p("self_attn.v_proj"),
                    o: p("self_attn.o_proj"),
                    gate: p("mlp.gate_proj"),
                    up: p("mlp.up_proj"),
                    down: p("mlp.down_proj"),
                }
            })
            .collect();
        QuantLayout {
            embed: get("model.embed_tokens.weight"),
            output: has("lm_head.weight").then(|| get("lm_head.weight")),
            layers,
        }
    }

    fn layer(&self, l: u64) -> LayerTypes {
        if self.layers.len() == 1 {
            self.layers[0]
        } else {
            self.layers[l as usize]
        }
    }

    /// The output layer's type.
    fn output_type(&self) -> GgmlType {
        self.output.unwrap_or(self.embed)
    }
}

/// Sizes of the model, and what the point has done so far that outlives a forward.
struct Model<'a> {
    layout: &'a QuantLayout,
    cpu: Option<CpuSimd>,
    layers: u64,
    hidden: u64,
    kv_width: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    inter: u64,
    vocab: u64,
    /// The thread-local input scratch of `k_quants::matmul`: length and capacity in u64s.
    scratch: (u64, u64),
    /// CUDA: the MMVQ and MMQ workspaces' sizes.
    cuda_ws: (u64, u64),
}

/// MMVQ's workspace for `m` rows of `k` inputs.
fn mmvq_bytes(m: u64, k: u64) -> u64 {
    m * (k.next_multiple_of(CUDA_ROW_PADDING) / 32) * 36
}

/// MMQ's workspace for `m` rows of `k` inputs.
fn mmq_bytes(m: u64, k: u64) -> u64 {
    let k_padded = k.next_multiple_of(CUDA_ROW_PADDING).next_multiple_of(128);
    m * (k_padded / 128) * 144 + 128 * 144
}

/// Whether candle copies `(b, n, h, d).transpose(1, 2)` to make it contiguous.
fn transpose_copies(n: u64, h: u64) -> bool {
    n > 1 && h > 1
}

/// The capacity of a `Vec<u8>` collected from candle's causal-mask iterator (a `flat_map`,
/// whose size hint is one row): the first allocation holds `max(8, kv)` and each growth
/// doubles it.
fn mask_vec_capacity(s: u64, kv: u64) -> u64 {
    let mut cap = kv.max(8);
    while cap < s * kv {
        cap *= 2;
    }
    cap
}

impl<'a> Model<'a> {
    fn new(spec: &ModelSpec, layout: &'a QuantLayout, backend: Backend, simd: CpuSimd) -> Self {
        Model {
            layout,
            cpu: (backend == Backend::Cpu).then_some(simd),
            layers: spec.num_layers,
            hidden: spec.hidden_size,
            kv_width: spec.num_kv_heads * spec.head_dim,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            inter: spec.intermediate_size,
            vocab: spec.vocab_size,
            scratch: (0, 0),
            cuda_ws: (0, 0),
        }
    }

    /// CUDA: the workspaces as the warm-up leaves them (MMQ for its 16-token prefill, MMVQ
    /// for one row, each at the widest input), and MMQ's fix-up buffer.
    fn warm_workspaces(&self) -> (u64, u64, u64) {
        let k = self.hidden.max(self.inter);
        (
            mmvq_bytes(1, k),
            mmq_bytes(WARMUP_TOKENS, k),
            MMQ_FIXUP_BYTES,
        )
    }

    /// The projections of layer `l` as `(type, rows n, inputs k)`.
    fn projections(&self, l: u64) -> [(GgmlType, u64, u64); 7] {
        let (h, kvw, i) = (self.hidden, self.kv_width, self.inter);
        let t = self.layout.layer(l);
        [
            (t.q, h, h),
            (t.k, kvw, h),
            (t.v, kvw, h),
            (t.o, h, h),
            (t.gate, i, h),
            (t.up, i, h),
            (t.down, h, i),
        ]
    }

    /// One weight of `n x k` values of type `t` as candle holds it, `(stored, tiles)`, after
    /// the runner's warm-up (a prefill of 16 tokens and a step, one sequence), which packs
    /// each repackable weight: the layers' with 16 rows, the output layer's with one.
    fn weight_bytes(&self, t: GgmlType, n: u64, k: u64, rows: u64) -> (u64, u64) {
        if !t.is_quantized() {
            return (n * k * 4, 0); // QMatMul dequantizes f32/f16 weights to f32
        }
        match self.cpu {
            Some(simd) => {
                let tiles = if simd.repacks(t, rows, n, k) {
                    t.tile_bytes(n, k)
                } else {
                    0
                };
                (t.bytes(n * k), tiles)
            }
            None => (t.bytes(n * k) + t.bytes(CUDA_ROW_PADDING), 0),
        }
    }

    /// What the loaded model holds: `(weights, repacked tiles, rotary tables)`.
    fn resident(&self) -> (u64, u64, u64) {
        let layer = |l: u64| {
            self.projections(l)
                .iter()
                .map(|&(t, n, k)| self.weight_bytes(t, n, k, 16))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        let (mut weights, mut tiles) = if self.layout.layers.len() == 1 {
            let (w, t) = layer(0);
            (self.layers * w, self.layers * t)
        } else {
            (0..self.layers)
                .map(layer)
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        // The output layer: its own weight, or the quantized embedding when tied (else the
        // quantized embedding is dropped once dequantized).
        let (w, t) = self.weight_bytes(self.layout.output_type(), self.vocab, self.hidden, 1);
        weights += w;
        tiles += t;
        // The embedding dequantized to f32; the norms (two per layer and the final one), f32.
        weights += self.vocab * self.hidden * 4;
        weights += (2 * self.layers + 1) * self.hidden * 4;
        // cos and sin for MAX_SEQ_LEN positions of head_dim / 2, f32.
        let rope = 2 * MAX_POSITIONS * (self.head_dim / 2) * 4;
        if self.cpu.is_none() {
            let (v, q, f) = self.warm_workspaces();
            tiles += v + q + f; // kept beside the weights, like the CPU's tiles
        }
        (weights, tiles, rope)
    }

    /// `QMatMul::forward` of `m` rows of `k` f32 values by an `n x k` weight of type `t`: the
    /// f32 output stays; the input's quantized copy is transient, or the CPU's thread-local
    /// scratch grows.
    fn qmm(&mut self, r: &mut Replay, out: Component, m: u64, (n, k): (u64, u64), t: GgmlType) {
        let out_bytes = m * n * 4;
        if !t.is_quantized() {
            // A dequantized weight: an f32 matmul (gemm on the CPU).
            self.matmul(r, out, out_bytes);
            return;
        }
        match self.cpu {
            Some(simd) => {
                r.alloc(out, out_bytes); // dst, before the input is quantized
                if simd.repacks(t, m, n, k) {
                    let lhs = m * (k / 256) * Q8K_BLOCK_BYTES;
                    r.alloc(MatmulWorkspace, lhs);
                    r.free(MatmulWorkspace, lhs);
                } else {
                    let need = (m * t.vec_dot_bytes(k)).div_ceil(8);
                    let (len, cap) = self.scratch;
                    if len < need {
                        let new_cap = if cap >= need {
                            cap
                        } else {
                            need.max(2 * cap).max(4)
                        };
                        r.alloc(MatmulWorkspace, (new_cap - cap) * 8);
                        self.scratch = (need, new_cap);
                    }
                }
            }
            None => {
                // The input quantized into a grow-only workspace; then the f32 output.
                let (vq, mq) = self.cuda_ws;
                let (have, need) = if m <= MMVQ_MAX_ROWS {
                    (vq, mmvq_bytes(m, k))
                } else {
                    (mq, mmq_bytes(m, k))
                };
                if need > have {
                    r.alloc(MatmulWorkspace, need);
                    r.free(MatmulWorkspace, have);
                    self.cuda_ws = if m <= MMVQ_MAX_ROWS {
                        (need, mq)
                    } else {
                        (vq, need)
                    };
                }
                r.alloc(out, out_bytes);
            }
        }
    }

    /// An f32 batched matmul of the attention (gemm's bookkeeping on the CPU).
    fn matmul(&self, r: &mut Replay, out: Component, bytes: u64) {
        let transient = if self.cpu.is_some() {
            GEMM_CALL_BYTES
        } else {
            0
        };
        r.alloc(MatmulWorkspace, transient);
        r.alloc(out, bytes);
        r.free(MatmulWorkspace, transient);
    }

    /// `LayerWeights::forward_attn` for `s` new tokens after `before` cached ones: returns
    /// with the o projection's output allocated and the cache grown.
    fn attention(&mut self, r: &mut Replay, l: u64, b: u64, s: u64, before: u64) {
        let t = self.layout.layer(l);
        let (h, kvw, hd) = (self.hidden, self.kv_width, self.head_dim);
        let m = b * s;
        let kv = before + s;
        let q = m * h * 4;
        let k_new = m * kvw * 4;
        let prefill = before == 0;
        self.qmm(r, QkvProjections, m, (h, h), t.q);
        self.qmm(r, QkvProjections, m, (kvw, h), t.k);
        // v: what the prefill's cache keeps (the projection itself unless it is copied).
        let v_copy = transpose_copies(s, self.kv_heads);
        let v_proj_comp = if prefill && !v_copy {
            KvCache
        } else {
            QkvProjections
        };
        self.qmm(r, v_proj_comp, m, (kvw, h), t.v);
        if v_copy {
            r.alloc(if prefill { KvCache } else { QkvProjections }, k_new);
        }
        // Rotary embeddings: `x.contiguous()` (a copy when the transpose moved data), rope_i.
        let rotary = |r: &mut Replay, heads: u64, bytes: u64, keep: Component| {
            let copy = transpose_copies(s, heads);
            if copy {
                r.alloc(QkvProjections, bytes);
            }
            r.alloc(keep, bytes);
            if copy {
                r.free(QkvProjections, bytes);
            }
        };
        rotary(r, self.heads, q, QkvProjections);
        rotary(
            r,
            self.kv_heads,
            k_new,
            if prefill { KvCache } else { QkvProjections },
        );
        if !prefill {
            // cat(cache, new) for K then V; the old entry goes when the new one is stored.
            let old = b * self.kv_heads * before * hd * 4;
            let new = b * self.kv_heads * kv * hd * 4;
            r.alloc(KvCache, new);
            r.alloc(KvCache, new);
            r.free(KvCache, 2 * old);
        }
        let n_rep = self.heads / self.kv_heads;
        let rep = b * self.heads * kv * hd * 4;
        if n_rep > 1 {
            r.alloc(RepeatKv, rep);
            r.alloc(RepeatKv, rep);
        }
        let scores = b * self.heads * s * kv * 4;
        self.matmul(r, AttentionScores, scores); // q @ k^T
        r.alloc(AttentionScores, scores); // / sqrt(head_dim)
        r.free(AttentionScores, scores);
        let masked = s > 1;
        if masked {
            r.alloc(AttentionScores, scores); // masked_fill (where_cond)
        }
        r.alloc(AttentionScores, scores); // softmax_last_dim
        let att_out = b * self.heads * s * hd * 4;
        self.matmul(r, AttentionOutput, att_out);
        r.free(AttentionScores, if masked { 3 } else { 2 } * scores);
        if n_rep > 1 {
            r.free(RepeatKv, 2 * rep);
        }
        // y.transpose(1, 2).reshape(..): a copy when the transpose moved data; then o.
        let y_copy = transpose_copies(self.heads, s);
        if y_copy {
            r.alloc(HiddenStates, q);
        }
        self.qmm(r, HiddenStates, m, (h, h), t.o);
        // Return: the shadowed locals go; the cache keeps the prefill's rotated k and v.
        r.free(QkvProjections, 2 * q + k_new);
        if prefill {
            if v_copy {
                r.free(QkvProjections, k_new); // the projection; the copy is cached
            }
        } else {
            r.free(QkvProjections, 2 * k_new); // the new token's rotated k and its v
        }
        r.free(AttentionOutput, att_out);
        if y_copy {
            r.free(HiddenStates, q);
        }
    }

    /// One forward of `s` tokens for `b` sequences after `before` cached ones, from the
    /// token ids (allocated here) to the last position's logits (left allocated). `masked`:
    /// whether the forward builds its causal mask (left cached).
    fn forward(&mut self, r: &mut Replay, b: u64, s: u64, before: u64) {
        let kv = before + s;
        let x = b * s * self.hidden * 4;
        r.alloc(HiddenStates, b * s * 4); // token ids (u32)
        if s > 1 {
            // Built in a host Vec, then copied to the device (on the CPU both are host).
            let v = if self.cpu.is_some() {
                mask_vec_capacity(s, kv)
            } else {
                0
            };
            r.alloc(CausalMask, v);
            r.alloc(CausalMask, s * kv);
            r.free(CausalMask, v);
        }
        r.alloc(HiddenStates, x); // embedding (index_select)
        for l in 0..self.layers {
            let t = self.layout.layer(l);
            r.alloc(HiddenStates, x); // attention_norm
            self.attention(r, l, b, s, before);
            r.alloc(HiddenStates, x); // attn + residual
            r.free(HiddenStates, x); // the attention's output, consumed
            r.alloc(HiddenStates, x); // ffn_norm
            let m = b * s;
            let mb = m * self.inter * 4;
            self.qmm(r, Mlp, m, (self.inter, self.hidden), t.gate); // w1
            self.qmm(r, Mlp, m, (self.inter, self.hidden), t.up); // w3
            r.alloc(Mlp, mb); // silu(w1)
            r.alloc(Mlp, mb); // * w3
            r.free(Mlp, 2 * mb); // silu and w3, consumed
            self.qmm(r, HiddenStates, m, (self.hidden, self.inter), t.down); // w2
            r.free(Mlp, 2 * mb); // the product, then w1
            r.alloc(HiddenStates, x); // + residual: the next layer's input
            r.free(HiddenStates, x); // w2's output, consumed
            r.free(HiddenStates, 4 * x); // layer input, both norms' outputs, attn + residual
        }
        r.alloc(HiddenStates, x); // output_norm
                                  // The last position of each sequence: a strided view that QMatMul refuses when
                                  // b > 1 and s > 1 (huggingface/candle#2788); estimated as the forward would run with
                                  // it made contiguous, one copy.
        let last_copy = b > 1 && s > 1;
        let one = b * self.hidden * 4;
        if last_copy {
            r.alloc(HiddenStates, one);
        }
        let out = self.layout.output_type();
        self.qmm(r, Logits, b, (self.vocab, self.hidden), out);
        if last_copy {
            r.free(HiddenStates, one);
        }
        r.free(HiddenStates, 2 * x); // the norm's output and the last layer's output
        r.free(HiddenStates, b * s * 4);
    }
}

/// What the loaded model holds, for `Estimate::weights_bytes`: the GGUF weights as candle
/// keeps them, the x86 tiles and the rotary tables.
pub fn resident_bytes(
    spec: &ModelSpec,
    layout: &QuantLayout,
    backend: Backend,
    simd: CpuSimd,
) -> u64 {
    let (w, tiles, rope) = Model::new(spec, layout, backend, simd).resident();
    w + tiles + rope
}

/// The loaded model, warmed up: on CUDA the workspaces as the warm-up left them.
fn start(r: &mut Replay, m: &mut Model<'_>) {
    let (w, tiles, rope) = m.resident();
    r.alloc(Weights, w);
    r.alloc(RopeTables, rope);
    if m.cpu.is_none() {
        let (v, q, f) = m.warm_workspaces();
        m.cuda_ws = (v, q);
        r.alloc(RepackedWeights, tiles - (v + q + f));
        r.alloc(MatmulWorkspace, v + q + f);
    } else {
        r.alloc(RepackedWeights, tiles);
    }
}

/// The prefill of `batch x context` on a fresh model (no mask cached, empty cache), on a
/// fresh thread (empty scratch). The peak counts the model.
pub fn prefill(
    spec: &ModelSpec,
    layout: &QuantLayout,
    backend: Backend,
    simd: CpuSimd,
    w: Workload,
) -> Breakdown {
    let mut m = Model::new(spec, layout, backend, simd);
    let mut r = Replay::new();
    start(&mut r, &mut m);
    m.forward(&mut r, w.batch, w.context, 0);
    r.peak
}

/// The decode steps after that prefill: the mask, the cache and the CPU's scratch stay from
/// the prefill; the last step, with the longest cache, peaks highest.
pub fn decode(
    spec: &ModelSpec,
    layout: &QuantLayout,
    backend: Backend,
    simd: CpuSimd,
    w: Workload,
) -> Breakdown {
    let mut m = Model::new(spec, layout, backend, simd);
    let (b, s) = (w.batch, w.context);
    let steps = w.decode_steps.max(1);
    // The prefill and the steps before the last, for what they leave in the scratch and
    // the workspaces.
    let mut warm = Replay::new();
    start(&mut warm, &mut m);
    let ws_start = m.cuda_ws;
    m.forward(&mut warm, b, s, 0);
    if steps > 1 {
        m.forward(&mut warm, b, 1, s);
    }
    let (scratch, ws) = (m.scratch, m.cuda_ws);
    let mut r = Replay::new();
    start(&mut r, &mut m);
    m.scratch = scratch;
    m.cuda_ws = ws;
    r.alloc(CausalMask, s * s);
    r.alloc(MatmulWorkspace, scratch.1 * 8);
    // The workspaces' growth in the prefill (the warm-up's are in the model).
    r.alloc(
        MatmulWorkspace,
        (ws.0 + ws.1).saturating_sub(ws_start.0 + ws_start.1),
    );
    let before = s + steps - 1;
    let kv = 2 * m.layers * b * m.kv_heads * before * m.head_dim * 4;
    r.alloc(KvCache, kv);
    m.forward(&mut r, b, 1, before);
    r.peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DType;

    fn spec(dir: &str) -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new(dir)).expect(dir)
    }

    /// ggml's block sizes (`k_quants.rs`: `size_of::<BlockQ4_0>()` ...) and the x86 tiles'
    /// (`repack_x86.rs`), per value.
    #[test]
    fn block_and_tile_arithmetic() {
        assert_eq!(GgmlType::Q4_0.bytes(32 * 1000), 18_000);
        assert_eq!(GgmlType::Q8_0.bytes(32 * 1000), 34_000);
        assert_eq!(GgmlType::Q4K.bytes(256 * 10), 1_440);
        assert_eq!(GgmlType::Q6K.bytes(256 * 10), 2_100);
        assert_eq!(GgmlType::F16.bytes(10), 20);
        // 4.5, 8.5, 4.5 and 6.5625 bits per weight.
        for (t, bits) in [
            (GgmlType::Q4_0, 4.5),
            (GgmlType::Q8_0, 8.5),
            (GgmlType::Q4K, 4.5),
            (GgmlType::Q6K, 6.5625),
        ] {
            let b = t.block_bytes() as f64 * 8.0 / t.block_elems() as f64;
            assert!((b - bits).abs() < 1e-9, "{t:?} {b}");
        }
        // Tiles of a 4096 x 4096 weight: Q4K 0.75 bytes per value, Q8_0 1.0625, Q6K 1.25.
        let n = 4096 * 4096;
        assert_eq!(GgmlType::Q4K.tile_bytes(4096, 4096), n * 3 / 4);
        assert_eq!(GgmlType::Q8_0.tile_bytes(4096, 4096), n * 17 / 16);
        assert_eq!(GgmlType::Q6K.tile_bytes(4096, 4096), n * 5 / 4);
        assert_eq!(GgmlType::Q4_0.tile_bytes(4096, 4096), 0);
    }

    /// `repack_x86::select`, case by case.
    #[test]
    fn what_candle_repacks_on_x86() {
        use CpuSimd::*;
        let (n, k) = (4096, 4096);
        assert!(Avx2.repacks(GgmlType::Q4K, 1, n, k));
        assert!(!Avx2.repacks(GgmlType::Q8_0, 16, n, k)); // AVX2 alone: maddubs overflows
        assert!(AvxVnni.repacks(GgmlType::Q8_0, 1, n, k));
        assert!(!AvxVnni.repacks(GgmlType::Q6K, 1, n, k)); // one row stays compact
        assert!(AvxVnni.repacks(GgmlType::Q6K, 2, n, k));
        assert!(!Avx512Vnni.repacks(GgmlType::Q4_0, 16, n, k));
        assert!(!AvxVnni.repacks(GgmlType::Q4K, 16, 4088, k)); // rows not a multiple of 16
        assert!(!AvxVnni.repacks(GgmlType::Q4K, 16, n, 4000)); // inputs not of 256
        assert!(!Portable.repacks(GgmlType::Q4K, 16, n, k));
    }

    /// The mask's Vec capacity, against a real `Vec` collected from the same iterator as
    /// candle's `build_causal_mask`.
    #[test]
    fn mask_capacity_matches_a_real_collect() {
        for (s, kv) in [
            (3, 5),
            (128, 128),
            (300, 300),
            (7, 9),
            (1000, 1000),
            (2, 64),
        ] {
            let v: Vec<u8> = (0..s)
                .flat_map(|i| (0..kv).map(move |j| u8::from(j > i)))
                .collect();
            assert_eq!(
                v.capacity() as u64,
                mask_vec_capacity(s as u64, kv as u64),
                "{s} x {kv}"
            );
        }
    }

    /// The resident weights, counted independently from the checkpoint's tensor list: every
    /// 2-D tensor in its GGML blocks except the untied embedding (dequantized instead), the
    /// f32 embedding, the norms in f32.
    #[test]
    fn resident_weights_match_the_tensor_inventory() {
        for dir in [
            "models/meta-llama-3-8b-instruct",
            "models/vramprobe-tiny-llama",
            "models/llama-3.1-8b-instruct",
        ] {
            let s = spec(dir);
            for t in GgmlType::OFFERED {
                let layout = QuantLayout::pure(&s, t);
                let mut want = 0;
                for ts in s.tensors() {
                    let n = ts.numel();
                    if ts.name == "model.embed_tokens.weight" {
                        want += n * 4; // dequantized at load
                        if s.tie_word_embeddings {
                            want += t.bytes(n); // and kept as the output layer
                        }
                    } else if ts.shape.len() == 2 {
                        want += t.bytes(n);
                    } else {
                        want += n * 4;
                    }
                }
                let m = Model::new(&s, &layout, Backend::Cpu, CpuSimd::Portable);
                let (w, tiles, rope) = m.resident();
                assert_eq!(w, want, "{dir} {t:?}");
                assert_eq!(tiles, 0);
                assert_eq!(rope, 2 * 4096 * (s.head_dim / 2) * 4);
            }
        }
    }

    /// Llama-3-8B: the embedding in f32 (128,256 x 4,096 x 4 = 2.10 GB) is a third of the
    /// q4k model; the KV cache is f32 (256 KiB per token); the prefill of 4K tokens holds
    /// three 32 x 4K x 4K f32 score tensors.
    #[test]
    fn llama3_8b_terms() {
        let s = spec("models/meta-llama-3-8b-instruct");
        let layout = QuantLayout::pure(&s, GgmlType::Q4K);
        let w = Workload {
            batch: 1,
            context: 4088,
            decode_steps: 8,
        };
        let p = prefill(&s, &layout, Backend::Cuda, CpuSimd::Portable, w);
        assert_eq!(p.get(AttentionScores), 3 * 32 * 4088 * 4088 * 4);
        let d = decode(&s, &layout, Backend::Cuda, CpuSimd::Portable, w);
        // Every layer's K and V for 4096 positions, f32; the last layer's old copy is freed
        // only after its new one exists.
        let kv = 2 * 32 * 8 * 4096 * 128 * 4;
        assert!(d.get(KvCache) >= kv, "{}", d.get(KvCache));
        let e = super::super::estimate_layout(
            &s,
            DType::BF16,
            Backend::Cuda,
            w,
            &layout,
            CpuSimd::Portable,
        );
        assert_eq!(e.kv_cache_bytes_per_token, 2 * 32 * 8 * 128 * 4);
        let embed = 128_256 * 4096 * 4;
        assert!(
            e.weights_bytes
                > embed + GgmlType::Q4K.bytes(8_030_261_248 - 128_256 * 4096 - 65 * 4096)
        );
    }

    /// A file's per-tensor types (llama.cpp's Q4_0 keeps the output in Q6K) change the
    /// weights by exactly the difference of those tensors.
    #[test]
    fn a_mixed_layout_costs_what_its_tensors_cost() {
        let s = spec("models/meta-llama-3-8b-instruct");
        let pure = QuantLayout::pure(&s, GgmlType::Q4_0);
        let mixed = QuantLayout {
            output: Some(GgmlType::Q6K),
            ..pure.clone()
        };
        let r = |l: &QuantLayout| {
            Model::new(&s, l, Backend::Cpu, CpuSimd::Portable)
                .resident()
                .0
        };
        let out = 128_256 * 4096;
        assert_eq!(
            r(&mixed) - r(&pure),
            GgmlType::Q6K.bytes(out) - GgmlType::Q4_0.bytes(out)
        );
        // Per-layer entries equal to the uniform one give the same answer.
        let per_layer = QuantLayout {
            layers: vec![pure.layers[0]; 32],
            ..pure.clone()
        };
        let w = Workload {
            batch: 1,
            context: 512,
            decode_steps: 4,
        };
        for b in [Backend::Cpu, Backend::Cuda] {
            assert_eq!(
                prefill(&s, &pure, b, CpuSimd::AvxVnni, w),
                prefill(&s, &per_layer, b, CpuSimd::AvxVnni, w)
            );
            assert_eq!(
                decode(&s, &pure, b, CpuSimd::AvxVnni, w),
                decode(&s, &per_layer, b, CpuSimd::AvxVnni, w)
            );
        }
    }
}
