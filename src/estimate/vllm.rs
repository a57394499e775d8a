//! vLLM's memory plan, predicted from the config: what its V1 engine (vLLM 0.11.0) takes
//! from the GPU, what it leaves to the KV cache, and what it prints about it.
//!
//! vLLM does not size the KV cache from a workload. At start-up each worker
//! (`vllm/v1/worker/gpu_worker.py`, `Worker.determine_available_memory`):
//!
//! ```text
//! requested       = total_memory x gpu_memory_utilization          (init_device)
//! non_kv_cache    = weights + torch_peak_increase + non_torch_increase
//!                                                   (vllm/utils/__init__.py, memory_profiling)
//! available_kv    = int(requested - non_kv_cache)
//! num_gpu_blocks  = available_kv // page_size // num_layers       (v1/core/kv_cache_utils.py)
//! page_size       = 2 x block_size x kv_heads_per_rank x head_dim x kv_dtype_bytes
//! kv_tokens       = num_gpu_blocks x block_size                   ("GPU KV cache size")
//! max_concurrency = num_gpu_blocks / cdiv(max_model_len, block_size)
//! ```
//!
//! - `weights`: what `load_model` allocates (`Model loading took`): the parameters as vLLM
//!   shards them (fused qkv and gate_up, vocabulary padded to 64 and split over the
//!   tensor-parallel ranks, KV heads replicated beyond their count) in the quantized layout,
//!   plus the rotary `cos_sin_cache` (`max_position_embeddings x head_dim` in the model
//!   dtype, one shared by every layer).
//! - `torch_peak_increase`: the profile run (`GPUModelRunner.profile_run`): one forward over
//!   `max_num_batched_tokens` dummy tokens, then `_dummy_sampler_run` over `min(max_num_seqs,
//!   max_num_batched_tokens)` rows with top-k and top-p set, which sorts the f32 logits
//!   (`apply_top_k_top_p`). The sampler's peak is at the sort, per (row x vocabulary)
//!   element: the logits in the model dtype, their f32 copy (4), the sorted values (4) and
//!   int64 indices (8), the int64 index sequence torch's CUDA sort builds (8) and the radix
//!   sort's alternate key and value buffers (4 + 8): `dtype + 36` bytes. Alive beside it:
//!   the last hidden states (`tokens x hidden`) and the sampled rows and their random
//!   replacement (`2 x rows x hidden`). The forward's own peak is the MLP of one layer
//!   (residual, gate_up, activation: `tokens x (hidden + 3 x intermediate/tp)`; eager mode
//!   keeps the normed input and the down projection too). cuBLAS's workspace (32 MiB on
//!   compute capability 9.0 and later, 8 MiB + 128 KiB before) is allocated by the first
//!   matmul of the profile run and counts in the peak.
//! - `non_torch_increase`, the CUDA context and NCCL before loading, and CUDA graphs
//!   depend on the driver and libraries, not on the config: [`VllmEnv`] holds them, with
//!   defaults from published H100 runs, and a calibration file can replace them.
//!
//! CUDA graphs: vLLM 0.11.0 captures them after the KV cache is allocated, from memory
//! outside `requested` (they are not subtracted from the KV cache; vLLM 0.21 and later
//! subtract an estimate of them first).
//!
//! Checked against five published vLLM 0.11.0 runs on an H100 (llm-d's capacity planner
//! measurements, in the tests): weights, activation peak and available KV cache agree to
//! the two decimals vLLM prints, but for one residual stated there.

use super::gpus::{GpuModel, DRIVER_RESERVED_BYTES};
use crate::spec::{DType, ModelSpec};
use serde::{Deserialize, Serialize};

/// The vLLM release whose memory plan is modelled.
pub const VLLM_VERSION: &str = "0.11.0";

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;

/// vLLM's `DEFAULT_VOCAB_PADDING_SIZE`: embeddings and lm_head rows padded to a multiple.
const VOCAB_PADDING: u64 = 64;

/// The group size of 4-bit weights (GPTQ / compressed-tensors `w4a16`).
const W4_GROUP: u64 = 128;

/// Block sizes vLLM 0.11.0 accepts on CUDA (`CacheConfig.block_size`).
pub const BLOCK_SIZES: [u64; 6] = [1, 8, 16, 32, 64, 128];

/// Weight quantization as vLLM loads it (`--quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VllmQuant {
    /// The checkpoint's dtype.
    #[default]
    None,
    /// `--quantization fp8` on a 16-bit checkpoint: fp8 weights, one f32 scale per
    /// logical matrix.
    Fp8,
    /// 8-bit weights with one f32 scale per output channel (compressed-tensors
    /// `FP8-dynamic` / `W8A8` checkpoints).
    W8a8,
    /// 4-bit weights in groups of 128 along the input, one 16-bit scale per group and row
    /// (GPTQ / compressed-tensors `W4A16`, symmetric).
    W4a16,
}

impl std::str::FromStr for VllmQuant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "fp8" => Ok(Self::Fp8),
            "w8a8" => Ok(Self::W8a8),
            "w4a16" => Ok(Self::W4a16),
            _ => Err(format!(
                "unknown quantization \"{s}\" (none, fp8, w8a8, w4a16)"
            )),
        }
    }
}

/// `--kv-cache-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// The model dtype.
    #[default]
    Auto,
    /// One byte per element (fp8_e4m3 or fp8_e5m2).
    Fp8,
}

impl std::str::FromStr for KvCacheDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "fp8" | "fp8_e4m3" | "fp8_e5m2" => Ok(Self::Fp8),
            _ => Err(format!(
                "unknown KV cache dtype \"{s}\" (auto, fp8, fp8_e4m3, fp8_e5m2)"
            )),
        }
    }
}

/// How vLLM is started: its batch defaults differ (`EngineArgs._set_default_args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// `vllm serve` (the OpenAI-compatible server).
    #[default]
    Server,
    /// The `LLM` class in Python (offline inference).
    Offline,
}

impl std::str::FromStr for Usage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Self::Server),
            "offline" => Ok(Self::Offline),
            _ => Err(format!("unknown usage \"{s}\" (server, offline)")),
        }
    }
}

/// vLLM's engine arguments that change the plan, with vLLM's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VllmKnobs {
    /// `--gpu-memory-utilization` (0.9).
    pub gpu_memory_utilization: f64,
    /// `--max-model-len` (the config's `max_position_embeddings`).
    pub max_model_len: Option<u64>,
    /// `--max-num-batched-tokens` (by GPU and usage: 8192 for the server on GPUs of at
    /// least 70 GiB that are not A100s, 2048 on others; 16384 and 8192 offline).
    pub max_num_batched_tokens: Option<u64>,
    /// `--max-num-seqs` (1024 on GPUs of at least 70 GiB that are not A100s, else 256).
    pub max_num_seqs: Option<u64>,
    /// `--block-size` (16 on CUDA).
    pub block_size: u64,
    /// `--tensor-parallel-size` (1).
    pub tensor_parallel_size: u64,
    /// `--kv-cache-dtype` (auto).
    pub kv_cache_dtype: KvCacheDtype,
    /// `--quantization` (none).
    pub quantization: VllmQuant,
    /// `--enforce-eager`: no torch.compile and no CUDA graphs.
    pub enforce_eager: bool,
    /// Server or offline defaults.
    pub usage: Usage,
}

impl Default for VllmKnobs {
    fn default() -> Self {
        Self {
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            max_num_batched_tokens: None,
            max_num_seqs: None,
            block_size: 16,
            tensor_parallel_size: 1,
            kv_cache_dtype: KvCacheDtype::Auto,
            quantization: VllmQuant::None,
            enforce_eager: false,
            usage: Usage::Server,
        }
    }
}

/// The plan's terms that depend on the driver, the libraries and the machine rather than
/// the config. Defaults: the H100 runs of vLLM 0.11.0 published with llm-d's capacity
/// planner (non-torch increase 0.13 GiB at TP 1, 0.54-0.55 GiB at TP 2; CUDA graph capture
/// between -0.88 and +0.10 GiB for dense models, taken as 0) and the CUDA context measured
/// here on an H100 (driver 580) for what is in use before vLLM takes its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VllmEnv {
    /// CUDA context, cuBLAS handles, NCCL: in use before `init_snapshot`.
    pub before_load_bytes: u64,
    /// `non_torch_increase` with one GPU.
    pub non_torch_bytes: u64,
    /// `non_torch_increase` with tensor parallelism (NCCL and custom all-reduce buffers).
    pub non_torch_tp_bytes: u64,
    /// What CUDA graph capture takes after the KV cache (0 with `--enforce-eager`).
    pub cuda_graph_bytes: u64,
}

impl Default for VllmEnv {
    fn default() -> Self {
        Self {
            before_load_bytes: super::cuda::H100_DRIVER_580.context_bytes,
            non_torch_bytes: (0.13 * GIB) as u64,
            non_torch_tp_bytes: (0.545 * GIB) as u64,
            cuda_graph_bytes: 0,
        }
    }
}

/// The largest value a calibration's `vllm` field may hold (1 PiB).
const MAX_ENV_BYTES: u64 = 1 << 50;

impl VllmEnv {
    /// Read the `vllm` object of a calibration file (the text is passed in), each field
    /// optional; defaults for the rest. A file without `vllm` gives the defaults.
    ///
    /// # Errors
    /// A message naming the file and the field.
    pub fn from_calibration_json(text: &str, path: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("{path}: not JSON: {e}"))?;
        let Some(o) = v.get("vllm") else {
            return Ok(Self::default());
        };
        let o = o
            .as_object()
            .ok_or_else(|| format!("{path}: field `vllm` is not an object"))?;
        let mut env = Self::default();
        for (k, x) in o {
            let slot = match k.as_str() {
                "before_load_bytes" => &mut env.before_load_bytes,
                "non_torch_bytes" => &mut env.non_torch_bytes,
                "non_torch_tp_bytes" => &mut env.non_torch_tp_bytes,
                "cuda_graph_bytes" => &mut env.cuda_graph_bytes,
                _ => {
                    return Err(format!(
                        "{path}: unknown field `vllm.{k}` (before_load_bytes, non_torch_bytes, \
                         non_torch_tp_bytes, cuda_graph_bytes)"
                    ))
                }
            };
            *slot = x.as_u64().filter(|b| *b <= MAX_ENV_BYTES).ok_or_else(|| {
                format!("{path}: field `vllm.{k}`: {x} is not a whole number of bytes in 0..=2^50")
            })?;
        }
        Ok(env)
    }
}

/// Why the knobs cannot be planned at all (vLLM refuses them at start-up, whatever the GPU).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KnobError(pub String);

/// The plan for one GPU of the tensor-parallel group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VllmPlan {
    pub vllm_version: &'static str,
    pub gpu: &'static str,
    /// NVML's (and torch's) total memory of the GPU.
    pub total_bytes: u64,
    pub gpu_memory_utilization: f64,
    /// `requested_memory`: total x utilization, what vLLM divides among its terms.
    pub usable_bytes: u64,
    /// In use before vLLM's snapshot: the driver's reservation is not counted here.
    pub before_load_bytes: u64,
    /// Free at vLLM's snapshot: total - driver reservation - before_load.
    pub init_free_bytes: u64,
    pub weights_bytes: u64,
    /// Part of `weights_bytes`: the rotary `cos_sin_cache`.
    pub rotary_cache_bytes: u64,
    /// `torch_peak_increase` of the profile run.
    pub activation_peak_bytes: u64,
    /// The forward's part of the profile run (the peak is the larger of the two, plus the
    /// cuBLAS workspace).
    pub forward_peak_bytes: u64,
    /// The sampler's part of the profile run.
    pub sampler_peak_bytes: u64,
    pub cublas_workspace_bytes: u64,
    pub non_torch_bytes: u64,
    /// weights + activation peak + non-torch.
    pub non_kv_cache_bytes: u64,
    pub cuda_graph_bytes: u64,
    /// `Available KV cache memory` (negative: vLLM stops, no room for any block).
    pub kv_cache_bytes: i64,
    /// KV bytes of one token over this GPU's layers and KV heads.
    pub kv_bytes_per_token: u64,
    /// One block over every layer (`page_size x num_layers`).
    pub block_bytes: u64,
    pub num_gpu_blocks: u64,
    /// `GPU KV cache size: N tokens`.
    pub kv_tokens: u64,
    pub max_model_len: u64,
    /// `Maximum concurrency for max_model_len tokens per request`.
    pub max_concurrency: f64,
    pub max_num_batched_tokens: u64,
    pub max_num_seqs: u64,
    pub block_size: u64,
    pub tensor_parallel_size: u64,
    /// What nvidia-smi shows for the process once serving: before_load + the non-KV terms +
    /// the KV cache vLLM allocates + CUDA graphs.
    pub process_bytes: u64,
    /// vLLM's start-up error, if it would stop (its own words).
    pub error: Option<String>,
    /// When the KV cache cannot hold one request of `max_model_len`: the longest it can.
    pub estimated_max_model_len: Option<u64>,
}

impl VllmPlan {
    /// Whether vLLM starts with these settings on this GPU.
    pub fn starts(&self) -> bool {
        self.error.is_none()
    }

    /// Whether `requests` requests of `tokens` tokens each fit in the KV cache at once.
    pub fn holds(&self, requests: u64, tokens: u64) -> bool {
        self.starts()
            && tokens <= self.max_model_len
            && tokens
                .div_ceil(self.block_size)
                .checked_mul(requests)
                .is_some_and(|blocks| blocks <= self.num_gpu_blocks)
    }
}

/// The batch defaults vLLM 0.11.0 picks for this GPU (`max_num_batched_tokens`,
/// `max_num_seqs`): the larger ones on GPUs of at least 70 GiB that are not A100s.
pub fn default_batch(gpu: &GpuModel, usage: Usage) -> (u64, u64) {
    let big = gpu.memory_bytes >= 70 << 30 && !gpu.name.to_ascii_lowercase().contains("a100");
    match (big, usage) {
        (true, Usage::Server) => (8192, 1024),
        (true, Usage::Offline) => (16384, 1024),
        (false, Usage::Server) => (2048, 256),
        (false, Usage::Offline) => (8192, 256),
    }
}

/// KV heads held by one of `tp` ranks (replicated when there are fewer than ranks).
fn kv_heads_per_rank(spec: &ModelSpec, tp: u64) -> u64 {
    (spec.num_kv_heads / tp).max(1)
}

/// Check the knobs against the model as vLLM does when it starts.
///
/// # Errors
/// [`KnobError`] with vLLM's reason.
pub fn check_knobs(spec: &ModelSpec, k: &VllmKnobs) -> Result<(), KnobError> {
    let err = |m: String| Err(KnobError(m));
    if spec.sandwich_norms {
        return err(format!(
            "model_type \"{}\": vramprobe's vLLM plan does not model Gemma (its hybrid \
             sliding-window KV cache groups and soft-capping attention backend); estimate it \
             with --engine transformers-sdpa or transformers-eager",
            spec.model_type
        ));
    }
    let u = k.gpu_memory_utilization;
    if !(u > 0.0 && u <= 1.0) {
        return err(format!("--gpu-memory-utilization {u}: must be in (0, 1]"));
    }
    if !BLOCK_SIZES.contains(&k.block_size) {
        return err(format!(
            "--block-size {}: vLLM on CUDA accepts 1, 8, 16, 32, 64, 128",
            k.block_size
        ));
    }
    let tp = k.tensor_parallel_size;
    if tp == 0 || tp > 1024 {
        return err(format!("--tensor-parallel-size {tp}: must be 1 to 1024"));
    }
    if spec.num_heads % tp != 0 {
        return err(format!(
            "Total number of attention heads ({}) must be divisible by tensor parallel size ({tp}).",
            spec.num_heads
        ));
    }
    let kv = spec.num_kv_heads;
    if (tp >= kv && tp % kv != 0) || (tp < kv && kv % tp != 0) {
        return err(format!(
            "--tensor-parallel-size {tp}: the {kv} KV heads can be neither split nor replicated evenly"
        ));
    }
    if spec.intermediate_size % tp != 0 {
        return err(format!(
            "--tensor-parallel-size {tp}: intermediate_size {} is not divisible by it",
            spec.intermediate_size
        ));
    }
    if let Some(m) = &spec.moe {
        for (name, v) in [
            ("moe_intermediate_size", m.expert_intermediate),
            ("shared_expert_intermediate_size", m.shared_intermediate),
        ] {
            if v % tp != 0 {
                return err(format!(
                    "--tensor-parallel-size {tp}: {name} {v} is not divisible by it"
                ));
            }
        }
    }
    if let Some(l) = k.max_model_len {
        if l == 0 || l > spec.max_position_embeddings {
            return err(format!(
                "--max-model-len {l}: must be 1 to the model's max_position_embeddings ({}) \
                 (vLLM refuses longer unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)",
                spec.max_position_embeddings
            ));
        }
    }
    for (name, v) in [
        ("--max-num-batched-tokens", k.max_num_batched_tokens),
        ("--max-num-seqs", k.max_num_seqs),
    ] {
        if let Some(v) = v {
            if v == 0 || v > 1 << 24 {
                return err(format!("{name} {v}: must be 1 to 2^24"));
            }
        }
    }
    if let (Some(t), Some(s)) = (k.max_num_batched_tokens, k.max_num_seqs) {
        if t < s {
            return err(format!(
                "max_num_batched_tokens ({t}) must be greater than or equal to max_num_seqs ({s})."
            ));
        }
    }
    Ok(())
}

/// Bytes of a linear layer of `rows x cols` weights under `q`.
fn linear_bytes(rows: u64, cols: u64, e: u64, q: VllmQuant) -> u64 {
    let n = rows * cols;
    match q {
        VllmQuant::None => n * e,
        VllmQuant::Fp8 => n,
        VllmQuant::W8a8 => n + rows * 4,
        VllmQuant::W4a16 => n / 2 + rows * cols.div_ceil(W4_GROUP) * 2,
    }
}

/// What `load_model` allocates on one rank: (weights including the rotary cache, the
/// rotary cache).
pub fn weights_bytes(spec: &ModelSpec, dtype: DType, k: &VllmKnobs) -> (u64, u64) {
    let e = dtype.size_in_bytes();
    let tp = k.tensor_parallel_size;
    let (h, hd) = (spec.hidden_size, spec.head_dim);
    let q_rows = spec.num_heads / tp * hd;
    let kv_rows = kv_heads_per_rank(spec, tp) * hd;
    let i = spec.intermediate_size / tp;
    let q = k.quantization;
    // One FP8 scale per logical matrix: q, k, v, o, gate, up, down.
    let scales = |n: u64| if q == VllmQuant::Fp8 { n * 4 } else { 0 };
    let mut attention = linear_bytes(q_rows + 2 * kv_rows, h, e, q)
        + linear_bytes(h, q_rows, e, q)
        + scales(4)
        + if spec.sandwich_norms { 4 } else { 2 } * h * e;
    if spec.qkv_bias {
        attention += (q_rows + 2 * kv_rows) * e;
    }
    if spec.o_bias {
        attention += h * e;
    }
    if spec.qk_norm {
        attention += 2 * hd * e;
    }
    let gated = |i: u64| linear_bytes(2 * i, h, e, q) + linear_bytes(h, i, e, q) + scales(3);
    let mut dense = gated(i);
    if spec.mlp_bias {
        dense += (2 * i + h) * e;
    }
    // A MoE layer (FusedMoE): the router replicated and unquantized, every expert's w13
    // (`E x 2I/tp x h`) and w2 (`E x h x I/tp`), the shared expert sharded like an MLP and
    // its one-output gate replicated.
    let sparse = spec.moe.as_ref().map_or(0, |m| {
        let shared = if m.shared_intermediate > 0 {
            gated(m.shared_intermediate / tp) + h * e
        } else {
            0
        };
        m.experts * h * e + m.experts * gated(m.expert_intermediate / tp) + shared
    });
    let sparse_layers = spec.moe.as_ref().map_or(0, |m| m.sparse_layer_count());
    let layers = spec.num_layers * attention
        + sparse_layers * sparse
        + (spec.num_layers - sparse_layers) * dense;
    let vocab_rank = spec.vocab_size.div_ceil(VOCAB_PADDING) * VOCAB_PADDING;
    let vocab_rank = vocab_rank.div_ceil(tp);
    let embed = vocab_rank * h * e;
    let head = if spec.tie_word_embeddings { 0 } else { embed };
    let rotary = spec.max_position_embeddings * hd * e;
    (layers + embed + head + h * e + rotary, rotary)
}

/// cuBLAS's default workspace in PyTorch: 32 MiB from compute capability 9.0 (Hopper),
/// `:4096:2:16:8` (8 MiB + 128 KiB) before.
pub fn cublas_workspace_bytes(gpu: &GpuModel) -> u64 {
    if gpu.compute_capability.0 >= 9 {
        32 * MIB
    } else {
        4096 * 1024 * 2 + 16 * 1024 * 8
    }
}

/// The profile run's parts on one rank: (forward peak, sampler peak).
pub fn profile_run_bytes(
    spec: &ModelSpec,
    dtype: DType,
    tokens: u64,
    seqs: u64,
    k: &VllmKnobs,
) -> (u64, u64) {
    let e = dtype.size_in_bytes();
    let (h, i) = (
        spec.hidden_size,
        spec.intermediate_size / k.tensor_parallel_size,
    );
    let forward = if k.enforce_eager {
        // Custom ops: the normed input and the residual stay, gate_up and the activation
        // are alive when down_proj writes its output.
        tokens * (3 * h + 3 * i) * e
    } else {
        // Inductor frees each buffer after its last use: residual, gate_up, activation.
        tokens * (h + 3 * i) * e
    };
    let forward = match &spec.moe {
        Some(m) => {
            let dense = if m.sparse_layer_count() < spec.num_layers {
                forward
            } else {
                0
            };
            dense.max(moe_forward_bytes(
                spec,
                m,
                e,
                tokens,
                k.tensor_parallel_size,
            ))
        }
        None => forward,
    };
    let rows = seqs.min(tokens);
    let vocab = spec.vocab_size;
    let vocab_padded = vocab.div_ceil(VOCAB_PADDING) * VOCAB_PADDING;
    let sort = rows * (vocab_padded * e + vocab * 36);
    let sampler = sort + tokens * h * e + 2 * rows * h * e;
    (forward, sampler)
}

/// vLLM's `VLLM_FUSED_MOE_CHUNK_SIZE` default: `fused_experts` works on this many tokens at a
/// time, its workspaces sized for one chunk.
pub const FUSED_MOE_CHUNK: u64 = 32_768;

/// The largest `BLOCK_SIZE_M` of vLLM's fused-MoE configs: `moe_align_block_size` pads each
/// expert's token list to a multiple of it.
const MOE_BLOCK_M: u64 = 128;

/// The profile forward's peak in a MoE layer over `tokens` tokens, from vLLM 0.11's
/// `FusedMoE` and `fused_experts_impl` (a custom op, outside inductor's buffer reuse):
/// the residual and the normed input (the output is written in place), the router logits
/// (`T x E`), `fused_topk`'s f32 weights and int32 ids and token indices (`T x k` each),
/// the aligned token ids (`M x k + E x (BLOCK_M - 1)` int32, at the largest block), and
/// the two workspaces for a chunk of `M = min(T, 32768)` tokens: `cache13` (`M x k x
/// max(2I/tp, h)`, shared by the first and second GEMM's outputs) and `cache2` (`M x k x
/// I/tp`, the activation). A shared expert (Qwen2-MoE) runs first; its output (`T x h`) and
/// gate (`T x 1`) stay while the routed experts run, and its own MLP peak is checked too.
/// Not checked against a published MoE run.
pub fn moe_forward_bytes(
    spec: &ModelSpec,
    m: &crate::spec::Moe,
    e: u64,
    tokens: u64,
    tp: u64,
) -> u64 {
    let (h, t) = (spec.hidden_size, tokens);
    let (experts, k) = (m.experts, m.top_k);
    let n = 2 * m.expert_intermediate / tp;
    let chunk = t.min(FUSED_MOE_CHUNK);
    let stream = 2 * t * h * e;
    let routing = t * experts * e + t * k * 12 + (chunk * k + experts * (MOE_BLOCK_M - 1)) * 4;
    let workspaces = chunk * k * (n.max(h) + n / 2) * e;
    let (shared_kept, shared_peak) = if m.shared_intermediate > 0 {
        let s = m.shared_intermediate / tp;
        (t * h * e + t * e, stream + t * 3 * s * e)
    } else {
        (0, 0)
    };
    (stream + routing + workspaces + shared_kept).max(shared_peak)
}

/// Format bytes as vLLM does: GiB with two decimals.
pub fn gib(bytes: f64) -> String {
    format!("{:.2}", bytes / GIB)
}

/// The plan of `spec` in `dtype` on one GPU of the tensor-parallel group.
///
/// # Errors
/// [`KnobError`] when vLLM refuses the knobs for this model on any GPU; a plan whose
/// `error` is set when it refuses them on this one.
pub fn plan(
    spec: &ModelSpec,
    dtype: DType,
    gpu: &'static GpuModel,
    k: &VllmKnobs,
    env: &VllmEnv,
) -> Result<VllmPlan, KnobError> {
    check_knobs(spec, k)?;
    let tp = k.tensor_parallel_size;
    let (tokens_default, seqs_default) = default_batch(gpu, k.usage);
    let max_model_len = k.max_model_len.unwrap_or(spec.max_position_embeddings);
    let seqs = k.max_num_seqs.unwrap_or(seqs_default);
    let tokens = k.max_num_batched_tokens.unwrap_or(tokens_default);
    if tokens < seqs {
        return Err(KnobError(format!(
            "max_num_batched_tokens ({tokens}) must be greater than or equal to max_num_seqs ({seqs})."
        )));
    }
    let total = gpu.memory_bytes;
    let requested = total as f64 * k.gpu_memory_utilization;
    let (weights, rotary) = weights_bytes(spec, dtype, k);
    let (forward, sampler) = profile_run_bytes(spec, dtype, tokens, seqs, k);
    let cublas = cublas_workspace_bytes(gpu);
    let activation = cublas + forward.max(sampler);
    let non_torch = if tp > 1 {
        env.non_torch_tp_bytes
    } else {
        env.non_torch_bytes
    };
    let non_kv = weights + activation + non_torch;
    // int(requested - non_kv): Python truncates toward zero.
    let available = (requested - non_kv as f64) as i64;
    let kv_e = match k.kv_cache_dtype {
        KvCacheDtype::Auto => dtype.size_in_bytes(),
        KvCacheDtype::Fp8 => 1,
    };
    let kv_bytes_per_token =
        2 * kv_heads_per_rank(spec, tp) * spec.head_dim * kv_e * spec.num_layers;
    let page = 2 * k.block_size * kv_heads_per_rank(spec, tp) * spec.head_dim * kv_e;
    let block_bytes = page * spec.num_layers;
    let num_blocks = u64::try_from(available).map_or(0, |a| a / page / spec.num_layers);
    let per_request = max_model_len.div_ceil(k.block_size);
    let cuda_graph = if k.enforce_eager {
        0
    } else {
        env.cuda_graph_bytes
    };
    let init_free = total
        .saturating_sub(DRIVER_RESERVED_BYTES)
        .saturating_sub(env.before_load_bytes);
    let mut error = None;
    let mut estimated_max_model_len = None;
    if dtype == DType::BF16 && !gpu.bf16() {
        error = Some(format!(
            "Bfloat16 is only supported on GPUs with compute capability of at least 8.0. \
             Your {} GPU has compute capability {}.{}. You can use float16 instead by \
             explicitly setting the `dtype` flag in CLI, for example: --dtype=half.",
            gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
        ));
    } else if (init_free as f64) < requested {
        error = Some(format!(
            "Free memory on device ({}/{} GiB) on startup is less than desired GPU memory \
             utilization ({}, {} GiB). Decrease GPU memory utilization or reduce GPU memory \
             used by other processes.",
            gib(init_free as f64),
            gib(total as f64),
            k.gpu_memory_utilization,
            gib(requested)
        ));
    } else if available <= 0 {
        error = Some(
            "No available memory for the cache blocks. Try increasing \
             `gpu_memory_utilization` when initializing the engine."
                .to_string(),
        );
    } else if per_request * block_bytes > available as u64 {
        let fits = (available as u64 / block_bytes * k.block_size).min(max_model_len);
        estimated_max_model_len = Some(fits);
        let estimated = if fits > 0 {
            format!("Based on the available memory, the estimated maximum model length is {fits}.")
        } else {
            String::new()
        };
        error = Some(format!(
            "To serve at least one request with the models's max seq len ({max_model_len}), \
             ({} GiB KV cache is needed, which is larger than the available KV cache memory \
             ({} GiB). {estimated} Try increasing `gpu_memory_utilization` or decreasing \
             `max_model_len` when initializing the engine.",
            gib((per_request * block_bytes) as f64),
            gib(available as f64)
        ));
    }
    let started = error.is_none();
    let num_gpu_blocks = if started { num_blocks } else { 0 };
    Ok(VllmPlan {
        vllm_version: VLLM_VERSION,
        gpu: gpu.id,
        total_bytes: total,
        gpu_memory_utilization: k.gpu_memory_utilization,
        usable_bytes: requested as u64,
        before_load_bytes: env.before_load_bytes,
        init_free_bytes: init_free,
        weights_bytes: weights,
        rotary_cache_bytes: rotary,
        activation_peak_bytes: activation,
        forward_peak_bytes: forward,
        sampler_peak_bytes: sampler,
        cublas_workspace_bytes: cublas,
        non_torch_bytes: non_torch,
        non_kv_cache_bytes: non_kv,
        cuda_graph_bytes: cuda_graph,
        kv_cache_bytes: available,
        kv_bytes_per_token,
        block_bytes,
        num_gpu_blocks,
        kv_tokens: num_gpu_blocks * k.block_size,
        max_model_len,
        max_concurrency: num_gpu_blocks as f64 / per_request as f64,
        max_num_batched_tokens: tokens,
        max_num_seqs: seqs,
        block_size: k.block_size,
        tensor_parallel_size: tp,
        process_bytes: env.before_load_bytes + non_kv + num_gpu_blocks * block_bytes + cuda_graph,
        error,
        estimated_max_model_len,
    })
}

/// The tensor-parallel sizes vLLM could use for this model, smallest first: powers of two
/// up to 64 that pass [`check_knobs`].
pub fn tp_sizes(spec: &ModelSpec, k: &VllmKnobs) -> Vec<u64> {
    (0..=6)
        .map(|p| 1u64 << p)
        .filter(|&tp| {
            check_knobs(
                spec,
                &VllmKnobs {
                    tensor_parallel_size: tp,
                    ..*k
                },
            )
            .is_ok()
        })
        .collect()
}

/// How many GPUs serve a load: replicas (data parallel) of a tensor-parallel group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// tensor_parallel_size x replicas.
    pub gpus: u64,
    pub tensor_parallel_size: u64,
    pub replicas: u64,
    /// Requests of the asked length one replica holds at once.
    pub requests_per_replica: u64,
    /// The plan of each GPU.
    pub plan: VllmPlan,
}

/// The fewest GPUs of this model that hold `requests` requests of `tokens` tokens at once:
/// for each tensor-parallel size vLLM accepts, as many replicas as the load needs; the
/// fewest GPUs in all, the smaller tensor-parallel size on a tie (KV heads replicated
/// beyond their count add no room, so more replicas can beat a larger group).
pub fn fewest_gpus(
    spec: &ModelSpec,
    dtype: DType,
    gpu: &'static GpuModel,
    k: &VllmKnobs,
    env: &VllmEnv,
    requests: u64,
    tokens: u64,
) -> Option<Deployment> {
    tp_sizes(spec, k)
        .into_iter()
        .filter_map(|tp| {
            let knobs = VllmKnobs {
                tensor_parallel_size: tp,
                ..*k
            };
            let plan = plan(spec, dtype, gpu, &knobs, env).ok()?;
            if !plan.holds(1, tokens) {
                return None;
            }
            let per_replica = plan.num_gpu_blocks / tokens.div_ceil(plan.block_size);
            let replicas = requests.div_ceil(per_replica);
            Some(Deployment {
                gpus: tp.checked_mul(replicas)?,
                tensor_parallel_size: tp,
                replicas,
                requests_per_replica: per_replica,
                plan,
            })
        })
        .min_by_key(|d| (d.gpus, d.tensor_parallel_size))
}

/// The lines vLLM 0.11.0 logs at INFO about memory, for a side-by-side check.
pub fn log_lines(p: &VllmPlan) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Model loading took {:.4} GiB and <load time> seconds",
            p.weights_bytes as f64 / GIB
        ),
        format!(
            "Memory profiling takes <time> seconds. Total non KV cache memory: {}GiB; torch \
             peak memory increase: {}GiB; non-torch forward increase memory: {}GiB; weights \
             memory: {}GiB.",
            gib(p.non_kv_cache_bytes as f64),
            gib(p.activation_peak_bytes as f64),
            gib(p.non_torch_bytes as f64),
            gib(p.weights_bytes as f64)
        ),
        format!(
            "Available KV cache memory: {} GiB",
            gib(p.kv_cache_bytes as f64)
        ),
    ];
    match &p.error {
        Some(e) => lines.push(format!("ValueError: {e}")),
        None => {
            lines.push(format!(
                "GPU KV cache size: {} tokens",
                thousands(p.kv_tokens)
            ));
            lines.push(format!(
                "Maximum concurrency for {} tokens per request: {:.2}x",
                thousands(p.max_model_len),
                p.max_concurrency
            ));
            if p.cuda_graph_bytes > 0 {
                lines.push(format!(
                    "Graph capturing finished in <time> secs, took {} GiB",
                    gib(p.cuda_graph_bytes as f64)
                ));
            }
        }
    }
    lines
}

/// `1234567` as `1,234,567` (Python's `f"{n:,}"`).
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
