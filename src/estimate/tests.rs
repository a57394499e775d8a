use super::*;
use std::path::Path;

fn spec(json: &str) -> ModelSpec {
    ModelSpec::from_json_str(json, Path::new("config.json")).unwrap()
}

fn llama3_8b() -> ModelSpec {
    spec(include_str!(
        "../../models/meta-llama-3-8b-instruct/config.json"
    ))
}

fn tiny() -> ModelSpec {
    spec(include_str!(
        "../../models/vramprobe-tiny-llama/config.json"
    ))
}

/// The tiny model with one field changed.
fn tiny_with(field: &str, value: u64) -> ModelSpec {
    let mut json: serde_json::Value = serde_json::from_str(include_str!(
        "../../models/vramprobe-tiny-llama/config.json"
    ))
    .unwrap();
    json[field] = value.into();
    spec(&json.to_string())
}

fn wl(batch: u64, context: u64) -> Workload {
    Workload {
        batch,
        context,
        decode_steps: 8,
    }
}

fn est(s: &ModelSpec, dtype: DType, w: Workload) -> Estimate {
    estimate(s, dtype, EngineProfile::CandleEager, Backend::Cpu, w)
}

#[test]
fn llama3_8b_headline_numbers() {
    let e = est(&llama3_8b(), DType::BF16, wl(1, 8192));
    assert_eq!(e.params, 8_030_261_248);
    assert_eq!(e.weights_bytes, 16_060_522_496);
    assert_eq!(e.kv_cache_bytes_per_token, 131_072);
}

#[test]
fn weights_component_is_the_weights() {
    let s = tiny();
    let e = est(&s, DType::F32, wl(1, 128));
    assert_eq!(e.prefill.peak.get(Component::Weights), s.param_count() * 4);
    assert_eq!(e.decode.peak.get(Component::Weights), s.param_count() * 4);
}

#[test]
fn rope_tables_cover_max_positions() {
    // cos + sin, (max_pos, head_dim / 2) each: 2 * 2048 * 16 * 4 bytes for the tiny model.
    let e = est(&tiny(), DType::F32, wl(1, 64));
    assert_eq!(e.prefill.peak.get(Component::RopeTables), 2 * 2048 * 16 * 4);
}

#[test]
fn causal_mask_is_context_squared_bytes() {
    let e = est(&tiny(), DType::F32, wl(2, 512));
    assert_eq!(e.prefill.peak.get(Component::CausalMask), 512 * 512);
    assert_eq!(e.decode.peak.get(Component::CausalMask), 512 * 512);
}

#[test]
fn three_score_tensors_alive_at_prefill_peak() {
    // At long context the attention peak dominates: scaled, masked and softmaxed scores.
    let (b, s) = (4, 1024);
    let e = est(&tiny(), DType::F32, wl(b, s));
    assert_eq!(
        e.prefill.peak.get(Component::AttentionScores),
        3 * b * 8 * s * s * 4
    );
    // and att @ v in f32 is being written
    assert_eq!(
        e.prefill.peak.get(Component::AttentionOutput),
        b * 8 * s * 32 * 4
    );
}

#[test]
fn prefill_kv_cache_at_peak_is_all_layers() {
    // At the last layer's softmax every layer's K and V exist (the last one just stored).
    let (b, s) = (2, 256);
    let t = tiny();
    let e = est(&t, DType::F32, wl(b, s));
    assert_eq!(
        e.prefill.peak.get(Component::KvCache),
        s * b * kv_cache_bytes_per_token(&t, DType::F32)
    );
}

#[test]
fn repeat_kv_copies_expand_to_query_heads() {
    let (b, s) = (1, 512);
    let e = est(&tiny(), DType::F32, wl(b, s));
    // K and V each expanded to 8 heads.
    assert_eq!(
        e.prefill.peak.get(Component::RepeatKv),
        2 * b * 8 * s * 32 * 4
    );
}

#[test]
fn decode_kv_cache_grows_with_steps() {
    let t = tiny();
    let a = est(
        &t,
        DType::F32,
        Workload {
            batch: 2,
            context: 256,
            decode_steps: 1,
        },
    );
    let b = est(
        &t,
        DType::F32,
        Workload {
            batch: 2,
            context: 256,
            decode_steps: 9,
        },
    );
    let per_token = kv_cache_bytes_per_token(&t, DType::F32) * 2;
    assert_eq!(
        b.decode.peak.get(Component::KvCache),
        (256 + 9) * per_token,
        "all layers at context + steps at the last layer's attention"
    );
    assert!(b.decode.total_bytes() > a.decode.total_bytes());
}

#[test]
fn logits_are_last_token_only() {
    // The logits are never alive at the peak of a long prefill, but they are small either
    // way: batch * vocab * 4 bytes, not batch * context * vocab.
    let e = est(&tiny(), DType::F32, wl(4, 1024));
    assert_eq!(e.prefill.peak.get(Component::Logits), 0);
}

#[test]
fn bf16_on_cpu_widens_matmul_operands() {
    let t = tiny();
    let cpu = estimate(
        &t,
        DType::BF16,
        EngineProfile::CandleEager,
        Backend::Cpu,
        wl(1, 64),
    );
    let cuda = estimate(
        &t,
        DType::BF16,
        EngineProfile::CandleEager,
        Backend::Cuda,
        wl(1, 64),
    );
    assert_eq!(cuda.prefill.peak.get(Component::MatmulWorkspace), 0);
    assert!(cpu.prefill.total_bytes() > cuda.prefill.total_bytes());
    // at short context the largest widening is the lm_head weight in f32
    assert!(cpu.prefill.peak.get(Component::MatmulWorkspace) >= t.vocab_size * t.hidden_size * 4);
}

#[test]
fn bf16_upcasts_qkv_to_f32() {
    let e = estimate(
        &tiny(),
        DType::BF16,
        EngineProfile::CandleEager,
        Backend::Cuda,
        wl(1, 512),
    );
    let (b, s, heads, hd) = (1, 512, 8, 32);
    assert_eq!(
        e.prefill.peak.get(Component::F32Upcast),
        3 * b * heads * s * hd * 4
    );
}

#[test]
fn breakdown_sums_to_total_and_peak_is_max() {
    let e = est(&tiny(), DType::F32, wl(2, 256));
    assert_eq!(
        e.prefill.peak.to_map().values().sum::<u64>(),
        e.prefill.total_bytes()
    );
    assert_eq!(
        e.total_bytes(),
        e.prefill.total_bytes().max(e.decode.total_bytes())
    );
}

#[test]
fn hidden_states_and_qkv_at_the_attention_peak() {
    // At `softmax @ v` of the last layer: token ids, the layer input and rms_1 output are
    // alive; q (3 copies: projection, contiguous, rotated) and k (projection, contiguous).
    let (b, s, h, kvw) = (2, 1024, 256, 64);
    let e = est(&tiny(), DType::F32, wl(b, s));
    assert_eq!(
        e.prefill.peak.get(Component::HiddenStates),
        b * s * 4 + 2 * b * s * h * 4
    );
    assert_eq!(
        e.prefill.peak.get(Component::QkvProjections),
        3 * b * s * h * 4 + 2 * b * s * kvw * 4
    );
}

#[test]
fn mlp_peak_holds_four_intermediates() {
    // A wide MLP and a short context: the peak is gate, silu, up and their product.
    let s = tiny_with("intermediate_size", 16384);
    let (b, ctx) = (1, 32);
    let e = estimate(
        &s,
        DType::F32,
        EngineProfile::CandleEager,
        Backend::Cuda,
        wl(b, ctx),
    );
    assert_eq!(e.prefill.peak.get(Component::Mlp), 4 * b * ctx * 16384 * 4);
    assert_eq!(e.prefill.peak.get(Component::AttentionScores), 0);
}

#[test]
fn logits_peak_with_a_huge_vocabulary() {
    // A large vocabulary over a small model: the peak is the lm_head output, b x vocab f32.
    let s = tiny_with("vocab_size", 1_000_000);
    let e = estimate(
        &s,
        DType::F32,
        EngineProfile::CandleEager,
        Backend::Cuda,
        wl(8, 4),
    );
    assert_eq!(e.decode.peak.get(Component::Logits), 8 * 1_000_000 * 4);
}

/// Quantization replaces the linear layers' weights only; the KV dtype scales the cache.
#[test]
fn quantized_weights_and_kv_dtype() {
    let s = llama3_8b();
    // Linear weights of Llama-3-8B: 32 x (4096x4096 x2 + 1024x4096 x2 + 14336x4096 x3).
    let linear: u64 = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096);
    let rows: u64 = 32 * (2 * 4096 + 2 * 1024 + 2 * 14336 + 4096);
    let rest = s.param_count() - linear;
    assert_eq!(
        quantized_weights_bytes(&s, DType::BF16, Quant::None),
        16_060_522_496
    );
    assert_eq!(
        quantized_weights_bytes(&s, DType::BF16, Quant::Int8),
        rest * 2 + linear + rows * 2
    );
    assert_eq!(
        quantized_weights_bytes(&s, DType::BF16, Quant::Int4),
        rest * 2 + linear / 2 + linear / 128 * 4
    );
    let w = Workload {
        batch: 4,
        context: 4096,
        decode_steps: 8,
    };
    let plain = estimate(
        &s,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
    );
    let q = estimate_quantized(
        &s,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
        Quant::Int4,
        Some(KvDtype::Fp8),
        &super::candle_chunked::Knobs::default(),
    );
    assert_eq!(q.kv_cache_bytes_per_token, 65_536);
    assert_eq!(
        q.decode.peak.get(Component::KvCache) * 2,
        plain.decode.peak.get(Component::KvCache)
    );
    let saved = plain.decode.total_bytes() - q.decode.total_bytes();
    assert_eq!(
        saved,
        (plain.weights_bytes - q.weights_bytes) + plain.decode.peak.get(Component::KvCache) / 2
    );
}

/// The quantized weights are computed from the config, not by listing every tensor (whose
/// memory grows with the layers), and agree with the listing.
#[test]
fn quantized_weights_are_computed_without_the_tensor_list() {
    for dir in [
        "models/vramprobe-tiny-llama",
        "models/meta-llama-3-8b-instruct",
        "models/llama-3.1-405b-instruct",
    ] {
        let s = ModelSpec::from_path(std::path::Path::new(dir)).expect(dir);
        let (mut linear, mut rows) = (0u64, 0u64);
        for t in s.tensors() {
            if t.name.starts_with("model.layers.") && t.name.ends_with("_proj.weight") {
                linear += t.numel();
                rows += t.shape[0];
            }
        }
        let rest = s.param_count() - linear;
        assert_eq!(
            quantized_weights_bytes(&s, DType::BF16, Quant::Int8),
            rest * 2 + linear + rows * 2,
            "{dir}"
        );
        assert_eq!(
            quantized_weights_bytes(&s, DType::BF16, Quant::Int4),
            rest * 2 + linear / 2 + linear.div_ceil(128) * 4,
            "{dir}"
        );
    }
}

/// A workload whose memory cannot be sized exactly in 64 bits is refused by the grid (for
/// estimate, fit and bench alike) and never fits in `fit`'s searches.
#[test]
fn workloads_beyond_64_bits_are_refused() {
    let s = ModelSpec::from_path(std::path::Path::new("models/meta-llama-3-8b-instruct"))
        .unwrap()
        .with_max_position(1 << 24)
        .unwrap();
    let w = |batch, context| Workload {
        batch,
        context,
        decode_steps: 8,
    };
    assert!(sizable(&s, w(1, 8192)));
    assert!(sizable(&s, w(8, 131_072)));
    assert!(!sizable(&s, w(4096, 1 << 20)));
    let grid = crate::plan::Grid {
        batches: vec![4096],
        contexts: vec![1 << 20],
        decode_steps: 8,
    };
    let e = grid.workloads(&s).expect_err("too big");
    assert!(
        e.to_string()
            .starts_with("--context 1048576: at batch 4096"),
        "{e}"
    );
    let q = super::fit::FitQuery {
        spec: &s,
        dtype: DType::BF16,
        engine: EngineProfile::CandleEager,
        workload: w(4096, 1 << 20),
        overheads: super::cuda::CudaOverheads::default(),
        quant: Quant::None,
        kv_dtype: None,
        knobs: Default::default(),
        layout: None,
    };
    assert_eq!(super::fit::process_peak(&q, q.workload), u64::MAX);
}

fn shipped(dir: &str) -> ModelSpec {
    ModelSpec::from_path(Path::new("models").join(dir).as_path()).unwrap()
}

/// K/V bytes of one token in one layer, batch `b`.
fn kv_token_layer(s: &ModelSpec, b: u64) -> u64 {
    b * 2 * s.num_kv_heads * s.head_dim * 2
}

/// The preallocated cache holds the window in sliding layers, the capacity in the others:
/// Gemma-3-1B at 32K keeps 4 global layers of 32,768 tokens and 22 of 512.
#[test]
fn preallocated_cache_holds_the_window_in_sliding_layers() {
    let s = shipped("gemma-3-1b-it");
    let w = Workload {
        batch: 2,
        context: 32_760,
        decode_steps: 8,
    };
    let e = estimate(
        &s,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
    );
    let (global, sliding) = (
        s.num_layers - s.sliding_layer_count(),
        s.sliding_layer_count(),
    );
    assert_eq!((global, sliding), (4, 22));
    let expected = kv_token_layer(&s, 2) * (global * 32_768 + sliding * 512);
    for p in [&e.prefill, &e.decode] {
        assert_eq!(p.peak.get(Component::KvCache), expected);
    }
    // Without the window every layer holds the capacity.
    let mut full = s.clone();
    full.sliding_window = None;
    full.sliding_layers = vec![false; 26];
    let f = estimate(
        &full,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
    );
    assert_eq!(
        f.prefill.peak.get(Component::KvCache),
        kv_token_layer(&s, 2) * 26 * 32_768
    );
}

/// transformers' cat-grown cache: a prompt's K/V stay whole in every layer (a sliding
/// layer keeps a view of the prompt's tensor); from the second decode step on, a sliding
/// layer holds its window; the first step's worst moment still has the prompt everywhere.
#[test]
fn cat_grown_cache_keeps_the_prompt_until_the_window_replaces_it() {
    let s = shipped("mistral-7b-v0.1");
    assert_eq!(s.sliding_window, Some(4096));
    let per = kv_token_layer(&s, 1);
    let w = |steps| Workload {
        batch: 1,
        context: 16_384,
        decode_steps: steps,
    };
    let e = |steps| {
        estimate(
            &s,
            DType::BF16,
            EngineProfile::TransformersEager,
            Backend::Cuda,
            w(steps),
        )
    };
    // Prefill: every layer the whole prompt (the last layer's cat result included).
    assert_eq!(e(8).prefill.peak.get(Component::KvCache), 32 * 16_384 * per);
    // Decode step 8: 31 layers hold 4096 (4095 kept + 1), the running one its last 4096
    // and, at the peak, its new 4096.
    let steady = e(8).decode.peak.get(Component::KvCache);
    assert!(
        (32 * 4096 * per..=33 * 4096 * per).contains(&steady),
        "{steady}"
    );
    // The first decode step: the later layers still hold the prompt.
    let first = e(1).decode.peak.get(Component::KvCache);
    assert!(first >= 31 * 16_384 * per, "{first}");
}

/// A MoE layer in transformers allocates its one-hot expert mask (int64, tokens x top_k x
/// experts) and runs the busiest expert over up to every token. Mixtral's prefill peaks
/// there; Qwen3-30B-A3B's, with experts of width 768, at the f32 temporaries of its q norm.
#[test]
fn moe_routing_buffers_are_in_the_prefill_peak() {
    let w = Workload {
        batch: 4,
        context: 4096,
        decode_steps: 8,
    };
    let tokens = 4 * 4096;
    let s = shipped("mixtral-8x7b-instruct-v0.1");
    let m = s.moe.clone().unwrap();
    let e = estimate(
        &s,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
    );
    let mask = tokens * m.top_k * m.experts * 8;
    let routing = e.prefill.peak.get(Component::ExpertRouting);
    assert!(routing >= mask, "{routing}");
    // The busiest expert's MLP over every token: gate, up and their product at once.
    let mlp = e.prefill.peak.get(Component::Mlp);
    assert!(mlp >= 3 * tokens * m.expert_intermediate * 2, "{mlp}");
    // Weights are every expert's, not the active ones'.
    assert_eq!(e.weights_bytes, s.param_count() * 2);
    assert!(e.weights_bytes > 3 * s.active_param_count());
    let q = shipped("qwen3-30b-a3b");
    let e = estimate(
        &q,
        DType::BF16,
        EngineProfile::TransformersSdpa,
        Backend::Cuda,
        w,
    );
    let elems = tokens * q.num_heads * q.head_dim;
    assert!(e.prefill.peak.get(Component::QkvProjections) >= 2 * elems * 4);
}

/// Gemma's four norms per layer, its kept unscaled embeddings and the routed experts make
/// activations larger than the Llama layer of the same shapes.
#[test]
fn gemma_and_moe_layers_cost_more_than_their_llama_shapes() {
    let w = Workload {
        batch: 4,
        context: 2048,
        decode_steps: 8,
    };
    let act = |s: &ModelSpec| {
        let e = estimate(
            s,
            DType::BF16,
            EngineProfile::TransformersSdpa,
            Backend::Cuda,
            w,
        );
        e.prefill.total_bytes()
            - e.prefill.peak.get(Component::Weights)
            - e.prefill.peak.get(Component::KvCache)
    };
    let gemma = shipped("gemma-2-9b-it");
    let mut plain = gemma.clone();
    plain.sandwich_norms = false;
    plain.final_logit_softcapping = None;
    assert!(act(&gemma) > act(&plain), "{} {}", act(&gemma), act(&plain));
    let mixtral = shipped("mixtral-8x7b-instruct-v0.1");
    let mut dense = mixtral.clone();
    dense.moe = None;
    assert!(
        act(&mixtral) > act(&dense),
        "{} {}",
        act(&mixtral),
        act(&dense)
    );
}

/// `candle-flash` keeps no scores: at Llama-3.1-8B's 128K context its prefill holds the
/// weights, the preallocated cache, one chunk's activations and FlashAttention's f32
/// log-sum-exp (`b x heads x chunk`); `candle-chunked`'s score blocks are gone.
#[test]
fn flash_engine_has_no_scores_and_its_cache_is_the_chunked_one() {
    let s = shipped("llama-3.1-8b-instruct");
    let w = Workload {
        batch: 1,
        context: 131_064,
        decode_steps: 8,
    };
    let flash = estimate(
        &s,
        DType::BF16,
        EngineProfile::CandleFlash,
        Backend::Cuda,
        w,
    );
    let chunked = estimate(
        &s,
        DType::BF16,
        EngineProfile::CandleChunked,
        Backend::Cuda,
        w,
    );
    for (f, c) in [
        (&flash.prefill, &chunked.prefill),
        (&flash.decode, &chunked.decode),
    ] {
        assert_eq!(
            f.peak.get(Component::KvCache),
            c.peak.get(Component::KvCache)
        );
        assert_eq!(f.peak.get(Component::KvCache), 131_072 * 131_072);
        assert_eq!(f.peak.get(Component::CausalMask), 0);
        assert!(f.total_bytes() < c.total_bytes());
    }
    // The log-sum-exp of one 2048-token chunk over 32 heads is all the "scores" there are.
    assert!(flash.prefill.peak.get(Component::AttentionScores) <= 32 * 2048 * 4);
    assert!(chunked.prefill.peak.get(Component::AttentionScores) > 32 * 2048 * 4);
}
