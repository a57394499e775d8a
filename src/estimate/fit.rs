//! Which GPUs a workload fits on, how far it stretches on each, and how many GPUs it needs
//! with tensor parallelism. Everything is the CUDA process estimate of [`super::cuda`]
//! against the GPU's usable memory ([`GpuModel::usable_bytes`]).
//!
//! Tensor parallelism over `n` GPUs (Megatron-style: attention heads and MLP columns split,
//! as vLLM and TensorRT-LLM do; candle itself runs on one GPU): the weights, the KV cache
//! (over `gcd(n, kv_heads)`: KV heads are replicated beyond their count), q/k/v, the
//! attention scores and outputs and the MLP intermediates are divided; the residual stream,
//! norms, rope tables, the mask and the last-token logits are replicated; every GPU carries
//! its own CUDA context, libraries and pool rounding.

use super::cuda::{self, CudaOverheads};
use super::gpus::GpuModel;
use super::{
    estimate_quantized, Backend, Component, EngineProfile, Estimate, KvDtype, Phase, Quant,
    Workload,
};
use crate::spec::{DType, ModelSpec};
use serde::Serialize;

/// The question: this model, dtype and engine at this workload.
#[derive(Debug, Clone, Copy)]
pub struct FitQuery<'a> {
    pub spec: &'a ModelSpec,
    pub dtype: DType,
    pub engine: EngineProfile,
    pub workload: Workload,
    pub overheads: CudaOverheads,
    pub quant: Quant,
    pub kv_dtype: Option<KvDtype>,
    /// The chunked engine's settings (the others ignore them).
    pub knobs: super::candle_chunked::Knobs,
    /// candle-quantized: a GGUF file's type of every weight (None: `quant` for all).
    pub layout: Option<&'a super::candle_quantized::QuantLayout>,
}

/// The answer for one GPU.
#[derive(Debug, Clone, Serialize)]
pub struct GpuFit {
    pub gpu: &'static str,
    pub name: &'static str,
    pub memory_bytes: u64,
    pub usable_bytes: u64,
    /// The process peak on one GPU.
    pub needed_bytes: u64,
    pub fits: bool,
    /// usable - needed (negative when it does not fit).
    pub headroom_bytes: i64,
    /// The largest batch that fits at the query's context (None: not even batch 1).
    pub max_batch: Option<u64>,
    /// The largest context that fits at the query's batch (None: not even 2 tokens).
    pub max_context: Option<u64>,
    /// Where the engine's code stops short of the memory (candle-quantized: one sequence,
    /// 4096 positions): the largest batch and context the memory alone would hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_context_memory: Option<u64>,
    /// The fewest GPUs (a power of two dividing the attention heads) that hold the workload
    /// with tensor parallelism, and what each then needs.
    pub tp_gpus: Option<u64>,
    pub tp_bytes_per_gpu: Option<u64>,
    /// How `tp_gpus` splits the work: `tensor` (inference) or `zero-3` (training: weights,
    /// gradients and optimizer states sharded over data-parallel GPUs).
    pub parallelism: &'static str,
    pub bf16: bool,
    /// The committed calibration whose CUDA terms this GPU's fit used (`calibrations/`);
    /// absent where the query's terms were used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<&'static str>,
}

const SPLIT: [Component; 9] = [
    Component::Weights,
    Component::KvCache,
    Component::QkvProjections,
    Component::RepeatKv,
    Component::F32Upcast,
    Component::AttentionScores,
    Component::AttentionOutput,
    Component::Mlp,
    Component::MatmulWorkspace,
];

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn estimate_of(q: &FitQuery<'_>, w: Workload) -> Estimate {
    if let (EngineProfile::CandleQuantized, Some(layout)) = (q.engine, q.layout) {
        return super::estimate_layout(q.spec, q.dtype, Backend::Cuda, w, layout, q.knobs.cpu_simd);
    }
    estimate_quantized(
        q.spec,
        q.dtype,
        q.engine,
        Backend::Cuda,
        w,
        q.quant,
        q.kv_dtype,
        &q.knobs,
    )
}

/// The process peak over both phases on one GPU.
pub fn process_peak(q: &FitQuery<'_>, w: Workload) -> u64 {
    if !super::sizable(q.spec, w) {
        return u64::MAX;
    }
    let e = estimate_of(q, w);
    [Phase::Prefill, Phase::Decode]
        .into_iter()
        .map(|p| cuda::process(&e, p, 0, &q.overheads).total_bytes())
        .max()
        .unwrap_or(0)
}

/// The process peak per GPU with tensor parallelism over `n` GPUs.
pub fn tp_peak(q: &FitQuery<'_>, w: Workload, n: u64) -> u64 {
    if n <= 1 || !super::sizable(q.spec, w) {
        return process_peak(q, w);
    }
    let e = estimate_of(q, w);
    let kv_div = gcd(n, q.spec.num_kv_heads.max(1));
    [Phase::Prefill, Phase::Decode]
        .into_iter()
        .map(|p| {
            let peak = e.phase(p).peak;
            let tensors: u64 = super::Component::ALL
                .iter()
                .map(|&c| {
                    let v = peak.get(c);
                    if c == Component::KvCache {
                        v / kv_div
                    } else if SPLIT.contains(&c) {
                        v / n
                    } else {
                        v
                    }
                })
                .sum();
            let slack = cuda::pool_slack_bytes(&e, p, &q.overheads) / kv_div;
            let g = q.overheads.pool_granule_bytes.max(1);
            (tensors + slack).div_ceil(g) * g
                + q.overheads.context_bytes
                + q.overheads.libraries_bytes
        })
        .max()
        .unwrap_or(0)
}

/// Largest `x` in `lo..=hi` with `ok(x)`, for a monotone `ok` (true then false).
pub fn largest(lo: u64, hi: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi || !ok(lo) {
        return None;
    }
    if ok(hi) {
        return Some(hi);
    }
    let (mut good, mut bad) = (lo, hi);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// The largest batch size fit searches (the plan's limit).
pub const MAX_BATCH: u64 = 4096;

/// Fit the query on one GPU.
pub fn fit(q: &FitQuery<'_>, gpu: &'static GpuModel) -> GpuFit {
    let usable = gpu.usable_bytes();
    let w = q.workload;
    let needed = process_peak(q, w);
    let positions = q
        .spec
        .max_position_embeddings
        .saturating_sub(w.decode_steps);
    let max_batch = largest(1, MAX_BATCH, |b| {
        process_peak(q, Workload { batch: b, ..w }) <= usable
    });
    let max_context = largest(2, positions.max(2), |c| {
        process_peak(q, Workload { context: c, ..w }) <= usable
    });
    let heads = q.spec.num_heads.max(1);
    let tp = (0..=10)
        .map(|k| 1u64 << k)
        .filter(|n| heads % n == 0)
        .map(|n| (n, tp_peak(q, w, n)))
        .find(|&(_, per)| per <= usable);
    let mut f = gpu_fit(gpu, needed, (max_batch, max_context), tp, "tensor");
    if q.engine == EngineProfile::CandleQuantized {
        // candle's quantized Llama: one sequence (huggingface/candle#2788), rotary tables
        // for 4096 positions.
        let cap = super::candle_quantized::MAX_POSITIONS.saturating_sub(w.decode_steps.max(1));
        f.max_batch_memory = max_batch.filter(|&b| b > 1);
        f.max_batch = max_batch.map(|b| b.min(1));
        if max_context.is_some_and(|c| c > cap) {
            f.max_context_memory = max_context;
            f.max_context = largest(2, cap.max(2), |c| {
                process_peak(q, Workload { context: c, ..w }) <= usable
            });
        }
    }
    f
}

/// The answer for one GPU from what was searched.
fn gpu_fit(
    gpu: &'static GpuModel,
    needed: u64,
    (max_batch, max_context): (Option<u64>, Option<u64>),
    split: Option<(u64, u64)>,
    parallelism: &'static str,
) -> GpuFit {
    let usable = gpu.usable_bytes();
    GpuFit {
        gpu: gpu.id,
        name: gpu.name,
        memory_bytes: gpu.memory_bytes,
        usable_bytes: usable,
        needed_bytes: needed,
        fits: needed <= usable,
        headroom_bytes: usable as i64 - needed as i64,
        max_batch,
        max_context,
        max_batch_memory: None,
        max_context_memory: None,
        tp_gpus: split.map(|t| t.0),
        tp_bytes_per_gpu: split.map(|t| t.1),
        parallelism,
        bf16: gpu.bf16(),
        calibration: None,
    }
}

/// A training step to fit: [`super::train::estimate_train`] plus each GPU's context and
/// libraries.
#[derive(Debug, Clone)]
pub struct TrainFitQuery<'a> {
    pub spec: &'a ModelSpec,
    pub dtype: DType,
    pub engine: EngineProfile,
    pub batch: u64,
    pub context: u64,
    pub setup: super::train::TrainSetup,
    pub overheads: CudaOverheads,
}

impl TrainFitQuery<'_> {
    fn need(&self, batch: u64, context: u64, setup: &super::train::TrainSetup) -> u64 {
        let w = Workload {
            batch,
            context,
            decode_steps: 0,
        };
        if !super::sizable(self.spec, w) {
            return u64::MAX;
        }
        super::train::estimate_train(self.spec, self.dtype, self.engine, batch, context, setup)
            .total_bytes()
            + self.overheads.context_bytes
            + self.overheads.libraries_bytes
    }
}

/// Fit a training step on one GPU; the GPU count is the fewest data-parallel GPUs (a power
/// of two) over which ZeRO-3 makes one GPU's share fit.
pub fn fit_train(q: &TrainFitQuery<'_>, gpu: &'static GpuModel) -> GpuFit {
    let usable = gpu.usable_bytes();
    let needed = q.need(q.batch, q.context, &q.setup);
    let max_batch = largest(1, MAX_BATCH, |b| q.need(b, q.context, &q.setup) <= usable);
    let max_context = largest(2, q.spec.max_position_embeddings.max(2), |c| {
        q.need(q.batch, c, &q.setup) <= usable
    });
    let zero = (0..=10).map(|k| 1u64 << k).find_map(|n| {
        let setup = super::train::TrainSetup {
            zero: if n == 1 { q.setup.zero } else { 3 },
            gpus: n,
            ..q.setup.clone()
        };
        let per = q.need(q.batch, q.context, &setup);
        (per <= usable).then_some((n, per))
    });
    gpu_fit(gpu, needed, (max_batch, max_context), zero, "zero-3")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::gpus::{find, CATALOGUE};

    fn spec(dir: &str) -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new(dir)).expect(dir)
    }

    fn query(spec: &ModelSpec, batch: u64, context: u64) -> FitQuery<'_> {
        FitQuery {
            spec,
            dtype: DType::BF16,
            engine: EngineProfile::CandleEager,
            workload: Workload {
                batch,
                context,
                decode_steps: 8,
            },
            overheads: CudaOverheads::default(),
            quant: Quant::None,
            kv_dtype: None,
            knobs: Default::default(),
            layout: None,
        }
    }

    /// The measured H100 boundary within 40 GiB (reports/gpu): batch 1 fitted at 7680 and
    /// ran out at 7936. On the full card the fit puts batch 1's limit well beyond.
    #[test]
    fn llama3_8b_on_an_h100() {
        let s = spec("models/meta-llama-3-8b-instruct");
        let h100 = find("h100-sxm").expect("h100");
        let f = fit(&query(&s, 1, 4096), h100);
        assert!(f.fits);
        assert_eq!(f.tp_gpus, Some(1));
        let c = f.max_context.expect("some context fits");
        assert!((8000..=8184).contains(&c), "{c}");
        // 8B in bf16 does not fit a 16 GB T4 at all, and needs 2 with TP.
        let t4 = fit(&query(&s, 1, 2048), find("t4").expect("t4"));
        assert!(!t4.fits && t4.max_batch.is_none());
        assert_eq!(t4.tp_gpus, Some(2));
    }

    #[test]
    fn seventy_b_needs_several_80_gb_gpus_and_405b_more() {
        let s70 = spec("models/meta-llama-3-70b-instruct");
        let s405 = spec("models/llama-3.1-405b-instruct");
        let h100 = find("h100-sxm").expect("h100");
        let f70 = fit(&query(&s70, 1, 4096), h100);
        assert!(!f70.fits);
        // 141 GB of weights: two 80 GB cards are not enough once the rest is added.
        assert!(
            f70.tp_gpus.is_some_and(|n| (2..=4).contains(&n)),
            "{:?}",
            f70.tp_gpus
        );
        let f405 = fit(&query(&s405, 1, 4096), h100);
        // 812 GB of weights: 16 H100s (8 x 80 GB = 640 GB is too little).
        assert_eq!(f405.tp_gpus, Some(16), "{f405:?}");
        assert!(f405
            .tp_bytes_per_gpu
            .is_some_and(|b| b <= h100.usable_bytes()));
    }

    #[test]
    fn more_gpus_never_need_more_per_gpu_and_the_search_is_monotone() {
        let s = spec("models/meta-llama-3-70b-instruct");
        let q = query(&s, 4, 2048);
        let mut last = u64::MAX;
        for n in [1, 2, 4, 8] {
            let per = tp_peak(&q, q.workload, n);
            assert!(per < last, "n={n}: {per} >= {last}");
            last = per;
        }
        for g in CATALOGUE {
            let f = fit(&query(&spec("models/meta-llama-3-8b-instruct"), 2, 1024), g);
            if let Some(b) = f.max_batch {
                let w = Workload {
                    batch: b,
                    context: 1024,
                    decode_steps: 8,
                };
                let s8 = spec("models/meta-llama-3-8b-instruct");
                let q8 = query(&s8, b, 1024);
                assert!(process_peak(&q8, w) <= g.usable_bytes());
                if b < MAX_BATCH {
                    assert!(process_peak(&q8, Workload { batch: b + 1, ..w }) > g.usable_bytes());
                }
            }
        }
    }
}
