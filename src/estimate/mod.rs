//! Memory estimates: pure arithmetic over a [`ModelSpec`], no I/O, no runtime crates.
//!
//! The estimate is made for a named engine, because what matters is what a real engine
//! allocates. [`EngineProfile::CandleEager`] models candle-transformers 0.11's
//! `models/llama.rs` tensor by tensor: [`candle_eager`] replays the allocations and frees of
//! one forward pass in the order that code makes them and reports the high-water mark,
//! broken down into named [`Component`]s.

pub mod candle_chunked;
pub mod candle_eager;
pub mod candle_quantized;
pub mod candle_train;
pub mod cuda;
pub mod fit;
pub mod gpus;
pub mod hf;
pub mod train;
pub mod train_graph;
pub mod vllm;

use crate::spec::{DType, ModelSpec};
use serde::Serialize;
use std::collections::BTreeMap;

/// The inference engine whose allocations are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineProfile {
    /// candle-transformers' llama without flash-attn, as [`candle_eager`] describes.
    #[default]
    CandleEager,
    /// vramprobe's serving-shaped Llama in candle: preallocated KV cache, chunked prefill,
    /// attention in bounded blocks, as [`candle_chunked`] describes.
    CandleChunked,
    /// candle-transformers' quantized_llama: GGUF weights (`QTensor`), f32 activations and
    /// KV cache, as [`candle_quantized`] describes.
    CandleQuantized,
    /// `candle-chunked` with its attention through FlashAttention-2 (`candle-flash-attn`,
    /// CUDA only, the `flash-attn` build): no score buffer, GQA in the kernel, the cache read
    /// as a narrowed view ([`candle_chunked::flash_prefill`]).
    CandleFlash,
    /// Hugging Face transformers with SDPA (a fused attention, FlashAttention-like: no
    /// score buffer) and a preallocated KV cache ([`hf`]). Alias: `flash`.
    #[serde(alias = "flash")]
    TransformersSdpa,
    /// Hugging Face transformers' eager attention ([`hf`]). Alias: `hf-eager`.
    #[serde(alias = "hf-eager")]
    TransformersEager,
}

impl EngineProfile {
    pub const ALL: [EngineProfile; 6] = [
        EngineProfile::CandleEager,
        EngineProfile::CandleChunked,
        EngineProfile::CandleQuantized,
        EngineProfile::CandleFlash,
        EngineProfile::TransformersEager,
        EngineProfile::TransformersSdpa,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EngineProfile::CandleEager => "candle-eager",
            EngineProfile::CandleChunked => "candle-chunked",
            EngineProfile::CandleQuantized => "candle-quantized",
            EngineProfile::CandleFlash => "candle-flash",
            EngineProfile::TransformersSdpa => "transformers-sdpa",
            EngineProfile::TransformersEager => "transformers-eager",
        }
    }

    /// The engines `bench` runs and measures (the others are estimated only).
    pub const MEASURED: [EngineProfile; 4] = [
        EngineProfile::CandleEager,
        EngineProfile::CandleChunked,
        EngineProfile::CandleQuantized,
        EngineProfile::CandleFlash,
    ];

    /// Whether `bench` can measure this engine.
    pub fn is_measured(self) -> bool {
        Self::MEASURED.contains(&self)
    }

    pub fn is_candle_eager(&self) -> bool {
        *self == EngineProfile::CandleEager
    }

    /// The most positions this engine runs for `spec`: candle-quantized's rotary tables stop
    /// at 4096 ([`candle_quantized::MAX_POSITIONS`]), the others at the config's
    /// max_position_embeddings.
    pub fn positions(self, spec: &ModelSpec) -> u64 {
        match self {
            EngineProfile::CandleQuantized => spec
                .max_position_embeddings
                .min(candle_quantized::MAX_POSITIONS),
            _ => spec.max_position_embeddings,
        }
    }

    /// The names these engines had before they said whose engine they model; still accepted.
    pub const ALIASES: [(&'static str, EngineProfile); 2] = [
        ("hf-eager", EngineProfile::TransformersEager),
        ("flash", EngineProfile::TransformersSdpa),
    ];
}

impl std::str::FromStr for EngineProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EngineProfile::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .or_else(|| {
                EngineProfile::ALIASES
                    .into_iter()
                    .find_map(|(alias, e)| (alias == s).then_some(e))
            })
            .ok_or_else(|| {
                format!(
                    "unknown engine \"{s}\" (candle-eager, candle-chunked, candle-quantized, \
                     candle-flash, transformers-eager, transformers-sdpa; aliases hf-eager, \
                     flash)"
                )
            })
    }
}

/// Where the engine runs: some engines allocate differently per backend (candle's CPU
/// matmul has no bf16 kernel and widens both operands to f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
}

impl Backend {
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// One measured or estimated step of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The forward pass over the whole prompt of `context` tokens, with an empty cache.
    Prefill,
    /// `decode_steps` single-token forward passes after the prefill, the KV cache growing.
    Decode,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// What is run: `batch` sequences of `context` prompt tokens, then `decode_steps` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub batch: u64,
    pub context: u64,
    pub decode_steps: u64,
}

/// The named parts of the memory in use at a peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Every parameter tensor, in the model dtype.
    Weights,
    /// Rotary cos and sin tables, precomputed for every position up to
    /// `max_position_embeddings`: `2 * max_pos * head_dim/2 * dtype`.
    RopeTables,
    /// Keys and values of every layer: `2 * layers * batch * kv_heads * tokens * head_dim * dtype`.
    KvCache,
    /// The u8 causal mask, `context * context` bytes, cached inside candle's `Cache`.
    CausalMask,
    /// Token ids, embeddings, the residual stream, norm outputs and projections back to
    /// the hidden size: multiples of `batch * seq * hidden * dtype`.
    HiddenStates,
    /// q/k/v projections and their contiguous and rotated copies (the code shadows each,
    /// so all stay alive until the attention returns).
    QkvProjections,
    /// `repeat_kv` copies of K and V expanded to every query head: `batch * heads * kv_len * head_dim * dtype` each.
    RepeatKv,
    /// f32 copies of q, k and v made before the attention matmuls when the model is not f32.
    F32Upcast,
    /// Attention scores `batch * heads * seq * kv_len * 4` (f32): scaled, masked and softmaxed
    /// copies are all alive at the softmax.
    AttentionScores,
    /// `softmax(scores) @ v` in f32: `batch * heads * seq * head_dim * 4`.
    AttentionOutput,
    /// Gate, SiLU(gate), up and their product: `batch * seq * intermediate * dtype` each.
    Mlp,
    /// Last-token logits, `batch * vocab` in f32.
    Logits,
    /// Transient matmul buffers on CPU: gemm's packed weight block and, for bf16/f16, the
    /// f32 copies of both operands and of the result (candle's CPU matmul has no
    /// half-precision kernel).
    MatmulWorkspace,
    /// candle's x86 copies of quantized weights in 16-row tiles, made on first use and kept
    /// beside the GGUF blocks (`candle-quantized` on the CPU).
    RepackedWeights,
    /// A MoE layer's routing: router logits `tokens * experts`, their f32 softmax, the
    /// top-k weights and indices, the int64 one-hot expert mask `tokens * top_k * experts`
    /// and the busiest expert's token indices.
    ExpertRouting,
}

impl Component {
    pub const ALL: [Component; 15] = [
        Component::Weights,
        Component::RopeTables,
        Component::KvCache,
        Component::CausalMask,
        Component::HiddenStates,
        Component::QkvProjections,
        Component::RepeatKv,
        Component::F32Upcast,
        Component::AttentionScores,
        Component::AttentionOutput,
        Component::Mlp,
        Component::Logits,
        Component::MatmulWorkspace,
        Component::RepackedWeights,
        Component::ExpertRouting,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Component::Weights => "weights",
            Component::RopeTables => "rope_tables",
            Component::KvCache => "kv_cache",
            Component::CausalMask => "causal_mask",
            Component::HiddenStates => "hidden_states",
            Component::QkvProjections => "qkv_projections",
            Component::RepeatKv => "repeat_kv",
            Component::F32Upcast => "f32_upcast",
            Component::AttentionScores => "attention_scores",
            Component::AttentionOutput => "attention_output",
            Component::Mlp => "mlp",
            Component::Logits => "logits",
            Component::MatmulWorkspace => "matmul_workspace",
            Component::RepackedWeights => "repacked_weights",
            Component::ExpertRouting => "expert_routing",
        }
    }
}

/// A replay of allocations: current bytes per component and the breakdown at the peak
/// (the engines' models replay a forward pass through it).
pub(crate) struct Replay {
    live: Breakdown,
    total: u64,
    peak_total: u64,
    pub(crate) peak: Breakdown,
}

impl Replay {
    pub(crate) fn new() -> Self {
        Self {
            live: Breakdown::default(),
            total: 0,
            peak_total: 0,
            peak: Breakdown::default(),
        }
    }

    pub(crate) fn alloc(&mut self, c: Component, bytes: u64) {
        self.live.0[c as usize] += bytes;
        self.total += bytes;
        if self.total > self.peak_total {
            self.peak_total = self.total;
            self.peak = self.live;
        }
    }

    pub(crate) fn free(&mut self, c: Component, bytes: u64) {
        self.live.0[c as usize] -= bytes;
        self.total -= bytes;
    }

    /// A tensor of `bytes` replaced by a new one of the same size (a copy, or an op's output
    /// computed before its input is dropped): both exist for a moment.
    pub(crate) fn replace(&mut self, c: Component, bytes: u64) {
        self.alloc(c, bytes);
        self.free(c, bytes);
    }
}

/// Bytes in use per component at a phase's peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breakdown(pub [u64; Component::ALL.len()]);

impl Breakdown {
    pub fn get(&self, c: Component) -> u64 {
        self.0[c as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero components by name, for JSON.
    pub fn to_map(&self) -> BTreeMap<&'static str, u64> {
        Component::ALL
            .iter()
            .filter(|c| self.get(**c) > 0)
            .map(|c| (c.as_str(), self.get(*c)))
            .collect()
    }
}

/// The estimate of one phase: its peak and what the peak is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseEstimate {
    pub phase: Phase,
    pub peak: Breakdown,
}

impl PhaseEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.peak.total()
    }
}

/// Full estimate for one model, dtype, engine and workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub engine: EngineProfile,
    pub backend: Backend,
    pub dtype: DType,
    pub workload: Workload,
    pub params: u64,
    /// Decoder layers (the KV cache and the pool model are per layer).
    pub layers: u64,
    pub weights_bytes: u64,
    pub kv_cache_bytes_per_token: u64,
    pub prefill: PhaseEstimate,
    pub decode: PhaseEstimate,
}

impl Estimate {
    /// The phase with the larger peak.
    pub fn peak_phase(&self) -> &PhaseEstimate {
        if self.decode.total_bytes() > self.prefill.total_bytes() {
            &self.decode
        } else {
            &self.prefill
        }
    }

    pub fn phase(&self, p: Phase) -> &PhaseEstimate {
        match p {
            Phase::Prefill => &self.prefill,
            Phase::Decode => &self.decode,
        }
    }

    /// The peak over the whole workload.
    pub fn total_bytes(&self) -> u64 {
        self.peak_phase().total_bytes()
    }
}

/// The seed's rule of thumb, kept as a baseline so users see what it misses: inference
/// needs the weights at 2 bytes per parameter plus "a few GB" (taken as 2 GB); training
/// needs 2 to 3 times that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleOfThumb {
    pub inference_bytes: u64,
    pub training_low_bytes: u64,
    pub training_high_bytes: u64,
}

/// The rule of thumb for `params` parameters.
pub fn rule_of_thumb(params: u64) -> RuleOfThumb {
    let inference = params * 2 + 2_000_000_000;
    RuleOfThumb {
        inference_bytes: inference,
        training_low_bytes: inference * 2,
        training_high_bytes: inference * 3,
    }
}

/// Parameter bytes: `params * dtype`.
pub fn weights_bytes(spec: &ModelSpec, dtype: DType) -> u64 {
    spec.param_count() * dtype.size_in_bytes()
}

/// KV cache per token over all layers: `2 (K and V) * layers * kv_heads * head_dim * dtype`.
pub fn kv_cache_bytes_per_token(spec: &ModelSpec, dtype: DType) -> u64 {
    2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * dtype.size_in_bytes()
}

/// The most bytes any estimate may reach: every term and sum stays exact in a u64 below it.
pub const MAX_SIZED_BYTES: u128 = 1 << 62;

/// Whether every engine's estimate of `w` (inference or a training step) stays exact in 64
/// bits: the largest terms any engine allocates, in f32 and summed generously, computed in
/// u128, below [`MAX_SIZED_BYTES`]. The eager engines' scores grow with the square of the
/// context; a training step keeps activations of every layer.
pub fn sizable(spec: &ModelSpec, w: Workload) -> bool {
    let c = |x: u64| u128::from(x);
    let (b, s) = (c(w.batch), c(w.context) + c(w.decode_steps));
    let (l, h, i, v) = (
        c(spec.num_layers),
        c(spec.hidden_size),
        c(spec.intermediate_size),
        c(spec.vocab_size),
    );
    let (heads, kvh, hd) = (c(spec.num_heads), c(spec.num_kv_heads), c(spec.head_dim));
    let weights = c(spec.param_count()) * 4 * 4; // weights, gradients, two AdamW moments
    let kv = 2 * l * b * kvh * s * hd * 4;
    let scores = 3 * b * heads * s * s * 4 + s * s;
    let rows = b * s;
    let per_layer = rows * (20 * h + 6 * i + 6 * heads * hd) * 4 + 2 * b * heads * s * s * 4;
    let logits = 2 * rows * v * 4;
    // One MoE layer's routing and busiest expert at a time: the int64 one-hot mask, the
    // router's scores and the expert's and shared expert's MLP over every token.
    let routing = spec.moe.as_ref().map_or(0, |m| {
        let (e, k) = (c(m.experts), c(m.top_k));
        rows * (k * e * 8 + e * 8 + 6 * (c(m.expert_intermediate) + c(m.shared_intermediate)) * 4)
    });
    let total = weights + kv + scores + l * per_layer + logits + routing;
    total < MAX_SIZED_BYTES
}

/// Weight quantization of the linear layers (q, k, v, o, gate, up, down): embeddings,
/// norms and the output layer stay in the model dtype, as GPTQ/AWQ/bitsandbytes checkpoints
/// keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    None,
    /// 8-bit weights with one f16 scale per output row.
    Int8,
    /// 4-bit weights in groups of 128 with an f16 scale and an f16 zero point per group
    /// (0.53125 bytes per weight).
    Int4,
    /// GGML's Q4_0 (32 values in 18 bytes), Q4K (256 in 144) and Q8_0 (32 in 34): the
    /// `candle-quantized` engine's weights; for the other engines the linear layers in
    /// those blocks.
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4k")]
    Q4K,
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Quant {
    /// The GGML type, for the GGML quantizations.
    pub const fn ggml(self) -> Option<candle_quantized::GgmlType> {
        use self::candle_quantized::GgmlType;
        match self {
            Quant::Q4_0 => Some(GgmlType::Q4_0),
            Quant::Q4K => Some(GgmlType::Q4K),
            Quant::Q8_0 => Some(GgmlType::Q8_0),
            Quant::None | Quant::Int8 | Quant::Int4 => None,
        }
    }
}

impl std::str::FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Quant::None),
            "int8" => Ok(Quant::Int8),
            "int4" => Ok(Quant::Int4),
            "q4_0" => Ok(Quant::Q4_0),
            "q4k" => Ok(Quant::Q4K),
            "q8_0" => Ok(Quant::Q8_0),
            _ => Err(format!(
                "unknown quantization \"{s}\" (none, int8, int4; GGML: q4_0, q4k, q8_0)"
            )),
        }
    }
}

/// Element type of the KV cache when it differs from the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
    Fp8,
}

impl KvDtype {
    pub const fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "bf16" => Ok(KvDtype::Bf16),
            "fp8" => Ok(KvDtype::Fp8),
            _ => Err(format!(
                "unknown KV cache dtype \"{s}\" (f32, f16, bf16, fp8)"
            )),
        }
    }
}

/// Bytes of the weights under `quant`: the linear layers' weights quantized, the rest in
/// `dtype`.
pub fn quantized_weights_bytes(spec: &ModelSpec, dtype: DType, quant: Quant) -> u64 {
    let e = dtype.size_in_bytes();
    // Per layer: q, k, v (rows = heads x head_dim, kv_heads x head_dim, twice), o (rows =
    // hidden), gate and up (rows = intermediate), down (rows = hidden); computed, not
    // listed, so the memory does not grow with the layers.
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    let (q, kv) = (
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
    );
    let layer_linear = (q + 2 * kv) * h + h * q + 2 * i * h + h * i;
    let layer_rows = q + 2 * kv + h + 2 * i + h;
    let linear = spec.num_layers * layer_linear;
    let rows = spec.num_layers * layer_rows;
    let rest = spec.param_count() - linear;
    match quant {
        Quant::None => spec.param_count() * e,
        Quant::Int8 => rest * e + linear + rows * 2,
        Quant::Int4 => rest * e + linear / 2 + linear.div_ceil(128) * 4,
        Quant::Q4_0 | Quant::Q4K | Quant::Q8_0 => {
            let t = quant.ggml().unwrap_or(candle_quantized::GgmlType::Q8_0);
            // Rows not a multiple of the block are rounded up to whole blocks.
            let per_layer =
                |rows: u64, inputs: u64| rows * inputs.div_ceil(t.block_elems()) * t.block_bytes();
            let layer =
                per_layer(q + 2 * kv, h) + per_layer(h, q) + per_layer(2 * i, h) + per_layer(h, i);
            rest * e + spec.num_layers * layer
        }
    }
}

/// Estimate with quantized weights and/or another KV cache dtype. The engine's replay is
/// made in the model dtype (activations stay in it: weights are dequantized on use); the
/// weights and the resident KV cache are then replaced by their quantized sizes, which
/// shifts every moment of the replay by the same amount for the weights and scales the
/// cache that is resident at the peak.
#[allow(clippy::too_many_arguments)]
pub fn estimate_quantized(
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    backend: Backend,
    workload: Workload,
    quant: Quant,
    kv_dtype: Option<KvDtype>,
    knobs: &candle_chunked::Knobs,
) -> Estimate {
    if engine == EngineProfile::CandleQuantized {
        // Its replay is made in its GGML type (and its KV cache is f32 whatever is asked).
        let knobs = candle_chunked::Knobs {
            quant: quant.ggml().unwrap_or(knobs.quant),
            ..*knobs
        };
        return estimate_with(spec, dtype, engine, backend, workload, &knobs);
    }
    let mut e = estimate_with(spec, dtype, engine, backend, workload, knobs);
    let w = quantized_weights_bytes(spec, dtype, quant);
    let kv_e = kv_dtype.map_or(dtype.size_in_bytes(), KvDtype::bytes);
    for p in [&mut e.prefill, &mut e.decode] {
        p.peak.0[Component::Weights as usize] = w;
        let kv = p.peak.get(Component::KvCache);
        p.peak.0[Component::KvCache as usize] = kv * kv_e / dtype.size_in_bytes();
    }
    e.weights_bytes = w;
    e.kv_cache_bytes_per_token = e.kv_cache_bytes_per_token * kv_e / dtype.size_in_bytes();
    e
}

/// Estimate `workload` for `spec` in `dtype` on `engine` / `backend`, the chunked engine
/// with its default settings.
pub fn estimate(
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    backend: Backend,
    workload: Workload,
) -> Estimate {
    estimate_with(
        spec,
        dtype,
        engine,
        backend,
        workload,
        &candle_chunked::Knobs::default(),
    )
}

/// [`estimate`] with the chunked engine's settings (the other engines ignore them).
pub fn estimate_with(
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    backend: Backend,
    workload: Workload,
    knobs: &candle_chunked::Knobs,
) -> Estimate {
    if engine == EngineProfile::CandleQuantized {
        let layout = candle_quantized::QuantLayout::pure(spec, knobs.quant);
        return estimate_layout(spec, dtype, backend, workload, &layout, knobs.cpu_simd);
    }
    let (prefill, decode) = match engine {
        EngineProfile::CandleQuantized => unreachable_quantized(),
        EngineProfile::CandleChunked => (
            candle_chunked::prefill(spec, dtype, backend, workload, knobs),
            candle_chunked::decode(spec, dtype, backend, workload, knobs),
        ),
        EngineProfile::CandleFlash => (
            candle_chunked::flash_prefill(spec, dtype, workload, knobs),
            candle_chunked::flash_decode(spec, dtype, workload, knobs),
        ),
        EngineProfile::CandleEager => (
            candle_eager::prefill(spec, dtype, backend, workload),
            candle_eager::decode(spec, dtype, backend, workload),
        ),
        EngineProfile::TransformersSdpa => (
            hf::flash_prefill(spec, dtype, workload),
            hf::flash_decode(spec, dtype, workload),
        ),
        EngineProfile::TransformersEager => (
            hf::eager_prefill(spec, dtype, workload),
            hf::eager_decode(spec, dtype, workload),
        ),
    };
    Estimate {
        engine,
        backend,
        dtype,
        workload,
        params: spec.param_count(),
        layers: spec.num_layers,
        weights_bytes: weights_bytes(spec, dtype),
        kv_cache_bytes_per_token: kv_cache_bytes_per_token(spec, dtype),
        prefill: PhaseEstimate {
            phase: Phase::Prefill,
            peak: prefill,
        },
        decode: PhaseEstimate {
            phase: Phase::Decode,
            peak: decode,
        },
    }
}

/// Never reached: [`estimate_with`] answers for `candle-quantized` before its match.
fn unreachable_quantized() -> (Breakdown, Breakdown) {
    (Breakdown::default(), Breakdown::default())
}

/// The `candle-quantized` estimate for weights of the GGML types of `layout` (a GGUF
/// file's, or one type for all); candle's quantized Llama computes in f32 whatever `dtype`.
pub fn estimate_layout(
    spec: &ModelSpec,
    dtype: DType,
    backend: Backend,
    workload: Workload,
    layout: &candle_quantized::QuantLayout,
    simd: candle_quantized::CpuSimd,
) -> Estimate {
    Estimate {
        engine: EngineProfile::CandleQuantized,
        backend,
        dtype,
        workload,
        params: spec.param_count(),
        layers: spec.num_layers,
        weights_bytes: candle_quantized::resident_bytes(spec, layout, backend, simd),
        kv_cache_bytes_per_token: kv_cache_bytes_per_token(spec, DType::F32),
        prefill: PhaseEstimate {
            phase: Phase::Prefill,
            peak: candle_quantized::prefill(spec, layout, backend, simd, workload),
        },
        decode: PhaseEstimate {
            phase: Phase::Decode,
            peak: candle_quantized::decode(spec, layout, backend, simd, workload),
        },
    }
}

#[cfg(test)]
mod tests;
