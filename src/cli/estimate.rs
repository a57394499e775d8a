//! `vramprobe estimate`: bytes per component for a model, batch and context, instantly.

use super::fit::fit_results;
use super::{load_overheads, out, outln, print_assumed, BadInput, EstimateArgs};
use crate::estimate::candle_train::{self, LoraSetup, TrainPhase};
use crate::estimate::cuda::{self as cuda_est, CudaOverheads, ProcessEstimate};
use crate::estimate::fit::GpuFit;
use crate::estimate::train::estimate_train;
use crate::estimate::{self, Backend, EngineProfile, Estimate, Phase, Workload};
use crate::model::ModelRef;
use crate::plan::{DeviceChoice, Grid, Mode};
use crate::report;
use crate::spec::{DType, ModelSpec};
use serde_json::json;
use std::collections::BTreeMap;

/// An inference estimate with what is shown beside it.
struct Answer<'a> {
    spec: &'a ModelSpec,
    e: Estimate,
    /// On CUDA: the whole process (what nvidia-smi shows) in prefill and decode.
    process: Option<(ProcessEstimate, ProcessEstimate)>,
    overheads: CudaOverheads,
    overheads_source: String,
    /// `--fit`: the GPU catalogue.
    fits: Option<Vec<GpuFit>>,
    assumed: Vec<String>,
    quant: estimate::Quant,
}

pub(super) fn run(a: EstimateArgs) -> anyhow::Result<()> {
    let (mut spec, _) =
        ModelRef::of(Some(&a.q.model)).load(a.q.revision.as_deref(), false, true)?;
    if let Some(m) = a.max_position {
        spec = spec.with_max_position(m)?;
    }
    let dtype = a.q.dtype.or(spec.torch_dtype).unwrap_or(DType::BF16);
    let Some(engine) = a.q.profile()? else {
        return super::vllm::estimate(&a, &spec, dtype);
    };
    if a.gpu.is_some() && !a.fit {
        return Err(BadInput(
            "--gpu names the card of --engine vllm's plan, or with --fit the only GPU fitted"
                .into(),
        )
        .into());
    }
    let context = a.context.unwrap_or_else(|| {
        engine
            .positions(&spec)
            .saturating_sub(a.q.decode_steps)
            .max(2)
    });
    let grid = Grid {
        batches: vec![a.q.batch],
        contexts: vec![context],
        decode_steps: a.q.decode_steps,
    };
    let w: Workload = grid.workloads(&spec)?[0];
    super::check_engine_workload(&spec, engine, a.q.quant_for(engine)?, w, a.q.train.mode)?;
    if a.q.train.mode == Mode::Train {
        // A training step has no decode steps: the context is the whole sequence.
        let w = Workload {
            context: a.context.unwrap_or(spec.max_position_embeddings),
            ..w
        };
        return run_train(&a, &spec, dtype, engine, w);
    }
    let backend = match a.device {
        DeviceChoice::Cpu => Backend::Cpu,
        DeviceChoice::Cuda => Backend::Cuda,
    };
    let quant = a.q.quant_for(engine)?;
    let mut knobs = a.q.chunked.knobs();
    if backend == Backend::Cpu {
        // What candle's quantized kernels repack, and gemm's blocks, depend on this CPU.
        knobs.cpu_simd = crate::runner::quantized::cpu_simd();
        knobs.gemm_kc_max = crate::runner::gemm_kc_max();
    }
    let layout = a.q.gguf_layout(&spec, engine)?;
    let e = match &layout {
        Some(l) => estimate::estimate_layout(&spec, dtype, backend, w, l, knobs.cpu_simd),
        None => estimate::estimate_quantized(
            &spec,
            dtype,
            engine,
            backend,
            w,
            quant,
            a.q.kv_dtype,
            &knobs,
        ),
    };
    let (overheads, overheads_source) =
        load_overheads(a.q.calibration.as_deref(), a.gpu.as_deref())?;
    let process = (backend == Backend::Cuda).then(|| {
        (
            cuda_est::process(&e, Phase::Prefill, 0, &overheads),
            cuda_est::process(&e, Phase::Decode, 0, &overheads),
        )
    });
    let fits = if a.fit {
        Some(fit_results(
            &a.q.fit_query(&spec, dtype, engine, w, overheads, layout.as_ref()),
            a.gpu.as_deref(),
            a.q.calibration.is_some(),
        )?)
    } else {
        None
    };
    let answer = Answer {
        spec: &spec,
        e,
        process,
        overheads,
        overheads_source,
        fits,
        assumed: grid.assumptions(&spec),
        quant,
    };
    if a.json {
        print_json(&a, &answer)
    } else {
        print_table(&answer);
        Ok(())
    }
}

fn print_json(a: &EstimateArgs, r: &Answer<'_>) -> anyhow::Result<()> {
    let (spec, e, w) = (r.spec, &r.e, r.e.workload);
    let phase = |p: &estimate::PhaseEstimate| json!({"total_bytes": p.total_bytes(), "components": p.peak.to_map()});
    let mut v = json!({
        "model": spec.name(),
        "config": spec.source,
        "params": e.params,
        "dtype": e.dtype,
        "weights_bytes": e.weights_bytes,
        "kv_cache_bytes_per_token": e.kv_cache_bytes_per_token,
        "engine": e.engine.as_str(),
        "mode": "inference",
        "quant": r.quant,
        "kv_dtype": a.q.kv_dtype,
        "device": e.backend.as_str(),
        "batch": w.batch,
        "context": w.context,
        "decode_steps": w.decode_steps,
        "total_bytes": e.total_bytes(),
        "weights_only_bytes": e.weights_bytes,
        "rule_of_thumb": crate::estimate::rule_of_thumb(e.params),
        "peak_phase": e.peak_phase().phase.as_str(),
        "components": e.peak_phase().peak.to_map(),
        "phases": {"prefill": phase(&e.prefill), "decode": phase(&e.decode)},
        "assumed": r.assumed,
        "active_params": spec.active_param_count(),
        "sliding_window": spec.sliding_window,
        "sliding_layers": spec.sliding_layer_count(),
        "moe": spec.moe.as_ref().map(|m| json!({
            "experts": m.experts,
            "experts_per_token": m.top_k,
            "expert_intermediate_size": m.expert_intermediate,
            "shared_expert_intermediate_size": m.shared_intermediate,
            "moe_layers": m.sparse_layer_count(),
        })),
    });
    if let Some(fits) = &r.fits {
        v["fit"] = json!(fits);
    }
    if let Some((p, d)) = &r.process {
        v["process_total_bytes"] = json!(p.total_bytes().max(d.total_bytes()));
        v["process"] = json!({
            "prefill": {"total_bytes": p.total_bytes(), "terms": p},
            "decode": {"total_bytes": d.total_bytes(), "terms": d},
            "overheads": r.overheads,
            "overheads_source": r.overheads_source,
        });
    }
    outln!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn print_table(r: &Answer<'_>) {
    let e = &r.e;
    print_assumed(&r.assumed);
    out!("{}", report::estimate_table(&r.spec.name(), e));
    for line in architecture_lines(r.spec, e.engine) {
        outln!("{line}");
    }
    if let Some((p, d)) = &r.process {
        out!("{}", report::process_table(p, d, &r.overheads_source));
        if e.engine != EngineProfile::CandleEager {
            outln!(
                "(the process terms are candle's; PyTorch's caching allocator holds more: \
                 on the H100 at batch 1 x 8192, eager 48.3 GiB in NVML for 36.5 GiB allocated)"
            );
        }
    }
    out!(
        "{}",
        report::rule_of_thumb_lines(
            e,
            r.process
                .as_ref()
                .map(|(p, d)| p.total_bytes().max(d.total_bytes()))
        )
    );
    if let Some(fits) = &r.fits {
        out!(
            "\n{}",
            report::fit_table(
                &r.spec.name(),
                &super::precision(e.dtype, e.engine, r.quant),
                e.engine,
                e.workload,
                fits
            )
        );
    }
}

/// What the architecture changes beyond the table: the experts and active parameters, the
/// sliding window and whether this engine honours it.
pub(super) fn architecture_lines(spec: &ModelSpec, engine: EngineProfile) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(m) = &spec.moe {
        let shared = if m.shared_intermediate > 0 {
            format!(" and a shared expert of {}", m.shared_intermediate)
        } else {
            String::new()
        };
        lines.push(format!(
            "experts          {} per MoE layer ({} of {} layers), {} per token, each of width {}{shared}; \
             {} parameters active per token",
            m.experts,
            m.sparse_layer_count(),
            spec.num_layers,
            m.top_k,
            m.expert_intermediate,
            crate::report::units::grouped(spec.active_param_count()),
        ));
    }
    if let Some(w) = spec.sliding_window {
        let honoured = match engine {
            EngineProfile::TransformersSdpa => {
                "the preallocated cache holds at most the window in those layers"
            }
            EngineProfile::TransformersEager => {
                "after the first decode step those layers keep the last window - 1 tokens"
            }
            _ => "this engine attends over every token (it has no window)",
        };
        lines.push(format!(
            "sliding window   {w} tokens on {} of {} layers: {honoured}",
            spec.sliding_layer_count(),
            spec.num_layers
        ));
    }
    lines
}

/// One simulated phase of candle's training step: name, bytes, bytes by part.
type SimulatedPhase = (&'static str, u64, BTreeMap<String, u64>);

fn run_train(
    a: &EstimateArgs,
    spec: &ModelSpec,
    dtype: DType,
    engine: EngineProfile,
    w: Workload,
) -> anyhow::Result<()> {
    let setup = a.q.train.setup(a.q.quant)?;
    let t = estimate_train(spec, dtype, engine, w.batch, w.context, &setup);
    let rule = crate::estimate::rule_of_thumb(spec.param_count());
    // candle-eager: the step `bench --mode train` runs (candle-nn's AdamW, moments in the
    // model dtype, no checkpointing), simulated phase by phase.
    let candle = (engine == EngineProfile::CandleEager).then(|| {
        let lora = setup.lora.as_ref().map(|l| LoraSetup {
            rank: l.rank,
            targets: l.targets.clone(),
        });
        let p = candle_train::simulate_step(
            spec,
            dtype,
            a.device == DeviceChoice::Cpu,
            w.batch,
            w.context,
            lora.as_ref(),
        );
        let phases: Vec<SimulatedPhase> = TrainPhase::ALL
            .iter()
            .map(|ph| (ph.as_str(), p.phase(*ph).total(), p.phase(*ph).to_map()))
            .collect();
        (p.total_bytes(), phases)
    });
    if a.json {
        let v = json!({
            "model": spec.name(), "config": spec.source, "mode": "train", "dtype": dtype,
            "engine": engine.as_str(), "batch": w.batch, "context": w.context,
            "params": spec.param_count(), "setup": setup, "train": t,
            "weights_bytes": t.weights_bytes,
            "kv_cache_bytes_per_token": crate::estimate::kv_cache_bytes_per_token(spec, dtype),
            "components": {
                "weights": t.weights_bytes, "gradients": t.gradients_bytes,
                "optimizer_states": t.optimizer_states_bytes, "activations": t.activations_bytes,
                "logits": t.logits_bytes,
            },
            "total_bytes": t.total_bytes(), "weights_only_bytes": spec.param_count() * dtype.size_in_bytes(),
            "rule_of_thumb": rule,
            "candle_eager_step": candle.as_ref().map(|(total, phases)| json!({
                "total_bytes": total,
                "phases": phases.iter().map(|(n, b, parts)| json!({
                    "phase": n, "bytes": b, "components": parts,
                })).collect::<Vec<_>>(),
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    out!(
        "{}",
        report::train_table(&spec.name(), dtype, w, &setup, &t, &rule)
    );
    if let Some((total, phases)) = &candle {
        outln!(
            "\ncandle-eager training step (what `bench --mode train` runs and measures: \
             candle-nn AdamW with moments in {dtype}, no checkpointing; the optimizer, \
             checkpointing, ZeRO and quantization flags above do not apply to it):"
        );
        for (name, bytes, parts) in phases {
            let list: Vec<String> = parts
                .iter()
                .map(|(k, v)| format!("{k} {}", report::bytes(*v)))
                .collect();
            outln!(
                "  {name:<22} {:>12}  ({})",
                report::bytes(*bytes),
                list.join(", ")
            );
        }
        outln!("  {:<22} {:>12}", "peak", report::bytes(*total));
    }
    Ok(())
}
