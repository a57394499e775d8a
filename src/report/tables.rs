//! The terminal tables of `bench`, `estimate`, `fit` and `gpus`.

use super::units::{bytes, grouped, percent};
use crate::estimate::{Component, Estimate};
use crate::store::PointRecord;
use std::fmt::Write;

/// The bench table: one row per point and phase.
pub fn bench_table(points: &[PointRecord]) -> String {
    let mut out = String::new();
    // Training phases (`train_optimizer_first`) are longer than `prefill`.
    let pw = points
        .iter()
        .map(|p| p.phase.as_str().len())
        .max()
        .unwrap_or(0)
        .max(7);
    let _ = writeln!(
        out,
        "{:>5} {:>7} {:>pw$} {:>12} {:>12} {:>8}   {:>12} {:>12} {:>8}   {:>10}",
        "batch",
        "context",
        "phase",
        "estimated",
        "measured",
        "error",
        "est-weights",
        "meas-weights",
        "error",
        "ms/forward"
    );
    for p in points {
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:>pw$} {:>12} {:>12} {:>8}   {:>12} {:>12} {:>8}   {:>10.2}",
            p.batch,
            p.context,
            p.phase,
            bytes(p.estimated_bytes),
            bytes(p.measured_peak_bytes),
            percent(p.error_ratio),
            bytes(p.estimated_above_weights_bytes),
            bytes(p.measured_above_weights_bytes),
            percent(p.above_weights_error_ratio),
            p.secs_per_forward * 1e3
        );
    }
    out
}

/// Summary lines under the bench table: the worst errors.
pub fn bench_summary(points: &[PointRecord]) -> String {
    let worst = |f: fn(&PointRecord) -> f64| {
        points
            .iter()
            .map(f)
            .fold(0.0f64, |a, b| if b.abs() > a.abs() { b } else { a })
    };
    format!(
        "{} points; largest |error|: total {}, above the weights {}\n",
        points.len(),
        percent(worst(|p| p.error_ratio)),
        percent(worst(|p| p.above_weights_error_ratio)),
    )
}

/// The `estimate` table: headline numbers, then every component of both phases.
pub fn estimate_table(model: &str, e: &Estimate) -> String {
    let mut out = String::new();
    let w = e.workload;
    let _ = writeln!(out, "model            {model}");
    let _ = writeln!(out, "parameters       {}", grouped(e.params));
    let held = if e.engine == crate::estimate::EngineProfile::CandleQuantized {
        "as candle-quantized holds them (GGUF blocks, the embedding and norms in f32, \
         rotary tables, x86 tiles or CUDA workspaces)"
            .to_string()
    } else {
        format!("in {}", e.dtype)
    };
    let _ = writeln!(
        out,
        "weights          {} bytes = {} ({:.2} GB) {held}",
        grouped(e.weights_bytes),
        bytes(e.weights_bytes),
        e.weights_bytes as f64 / 1e9,
    );
    let _ = writeln!(
        out,
        "KV cache         {} bytes per token ({} per sequence of {} tokens)",
        grouped(e.kv_cache_bytes_per_token),
        bytes(e.kv_cache_bytes_per_token * (w.context + w.decode_steps)),
        w.context + w.decode_steps
    );
    let _ = writeln!(
        out,
        "workload         batch {}, context {}, then {} decode steps; engine {} on {}",
        w.batch,
        w.context,
        w.decode_steps,
        e.engine.as_str(),
        e.backend.as_str()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<18} {:>14} {:>14}",
        "component", "prefill", "decode"
    );
    for c in Component::ALL {
        let (p, d) = (e.prefill.peak.get(c), e.decode.peak.get(c));
        if p == 0 && d == 0 {
            continue;
        }
        let _ = writeln!(out, "{:<18} {:>14} {:>14}", c.as_str(), bytes(p), bytes(d));
    }
    let _ = writeln!(
        out,
        "{:<18} {:>14} {:>14}",
        "peak",
        bytes(e.prefill.total_bytes()),
        bytes(e.decode.total_bytes())
    );
    let _ = writeln!(
        out,
        "\npeak over the workload: {} bytes = {} ({:.2} GB), in the {} phase",
        grouped(e.total_bytes()),
        bytes(e.total_bytes()),
        e.total_bytes() as f64 / 1e9,
        e.peak_phase().phase.as_str()
    );
    out
}

/// The CUDA process lines under an estimate table: what nvidia-smi will show.
pub fn process_table(
    p: &crate::estimate::cuda::ProcessEstimate,
    d: &crate::estimate::cuda::ProcessEstimate,
    source: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCUDA process (what nvidia-smi shows), overheads: {source}"
    );
    let _ = writeln!(out, "{:<18} {:>14} {:>14}", "", "prefill", "decode");
    let rows: [(&str, u64, u64); 4] = [
        ("tensors (peak)", p.tensors_bytes, d.tensors_bytes),
        (
            "pool rounding",
            p.pool_overhead_bytes(),
            d.pool_overhead_bytes(),
        ),
        ("CUDA context", p.context_bytes, d.context_bytes),
        ("kernels, cuBLAS", p.libraries_bytes, d.libraries_bytes),
    ];
    for (name, a, b) in rows {
        let _ = writeln!(out, "{name:<18} {:>14} {:>14}", bytes(a), bytes(b));
    }
    let _ = writeln!(
        out,
        "{:<18} {:>14} {:>14}",
        "process",
        bytes(p.total_bytes()),
        bytes(d.total_bytes())
    );
    let t = p.total_bytes().max(d.total_bytes());
    let _ = writeln!(
        out,
        "\nprocess peak: {} bytes = {} ({:.2} GB)",
        grouped(t),
        bytes(t),
        t as f64 / 1e9
    );
    out
}

/// The rule of thumb and the weights-only figure beside the estimate.
pub fn rule_of_thumb_lines(e: &Estimate, process_bytes: Option<u64>) -> String {
    let r = crate::estimate::rule_of_thumb(e.params);
    let ours = process_bytes.unwrap_or_else(|| e.total_bytes());
    let mut out = String::new();
    let _ = writeln!(out, "\nbeside the estimate ({}):", bytes(ours));
    let _ = writeln!(
        out,
        "  weights only                      {:>11}  ({:+.1}% vs the estimate)",
        bytes(e.weights_bytes),
        (e.weights_bytes as f64 / ours as f64 - 1.0) * 100.0
    );
    let _ = writeln!(
        out,
        "  rule of thumb (2 B/param + 2 GB)  {:>11}  ({:+.1}% vs the estimate)",
        bytes(r.inference_bytes),
        (r.inference_bytes as f64 / ours as f64 - 1.0) * 100.0
    );
    out
}

/// A training estimate.
pub fn train_table(
    model: &str,
    dtype: crate::spec::DType,
    w: crate::estimate::Workload,
    setup: &crate::estimate::train::TrainSetup,
    t: &crate::estimate::train::TrainEstimate,
    rule: &crate::estimate::RuleOfThumb,
) -> String {
    let mut out = String::new();
    let lora = setup.lora.as_ref().map_or_else(
        || "full fine-tune".to_string(),
        |l| format!("LoRA rank {} on {:?}", l.rank, l.targets),
    );
    let _ = writeln!(
        out,
        "{model} in {dtype}, training step of batch {} x context {}: {lora}, {:?}, checkpointing {:?}, quant {:?}, ZeRO {} over {} GPU(s)",
        w.batch, w.context, setup.optimizer, setup.checkpointing, setup.quant, setup.zero, setup.gpus
    );
    let _ = writeln!(out, "trainable parameters  {}", grouped(t.trainable_params));
    for (name, v) in [
        ("weights", t.weights_bytes),
        ("gradients", t.gradients_bytes),
        ("optimizer states", t.optimizer_states_bytes),
        ("activations", t.activations_bytes),
        ("logits and loss", t.logits_bytes),
        ("peak: forward end", t.forward_peak_bytes),
        ("peak: backward", t.backward_peak_bytes),
        ("peak: optimizer step", t.step_peak_bytes),
    ] {
        let _ = writeln!(out, "{name:<22} {:>12}", bytes(v));
    }
    let total = t.total_bytes();
    let _ = writeln!(
        out,
        "\npeak per GPU: {} bytes = {} ({:.2} GB) (tensors; add the CUDA context and libraries, ~680 MiB)",
        grouped(total),
        bytes(total),
        total as f64 / 1e9
    );
    let _ = writeln!(
        out,
        "rule of thumb for training (2-3x the inference rule): {} to {}",
        bytes(rule.training_low_bytes),
        bytes(rule.training_high_bytes)
    );
    out
}

/// The GPU catalogue as a table.
pub fn gpus_table(cat: &[crate::estimate::gpus::GpuModel]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<32} {:>9} {:>12} {:>11} {:>4} {:>5}  source",
        "id", "name (NVML)", "data sheet", "NVML total", "usable", "cc", "bf16"
    );
    for g in cat {
        let _ = writeln!(
            out,
            "{:<12} {:<32} {:>7} GB {:>12} {:>11} {:>4} {:>5}  {}",
            g.id,
            g.name,
            g.marketing_gb,
            bytes(g.memory_bytes),
            bytes(g.usable_bytes()),
            format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
            if g.bf16() { "yes" } else { "no" },
            g.source
        );
    }
    out
}

/// The fit of one workload over GPUs.
pub fn fit_table(
    model: &str,
    dtype: &str,
    engine: crate::estimate::EngineProfile,
    w: crate::estimate::Workload,
    fits: &[crate::estimate::fit::GpuFit],
) -> String {
    let mut out = String::new();
    let train = fits.first().is_some_and(|f| f.parallelism == "zero-3");
    let what = if train {
        "training step".to_string()
    } else {
        format!("+{} decode steps", w.decode_steps)
    };
    let _ = writeln!(
        out,
        "{model} in {dtype}, batch {} x context {} ({what}), engine {}, CUDA process peak:",
        w.batch,
        w.context,
        engine.as_str()
    );
    let _ = writeln!(
        out,
        "{:<12} {:>11} {:>11} {:>4} {:>12} {:>9} {:>11} {:>9}",
        "gpu",
        "usable",
        "needs",
        "fits",
        "headroom",
        "max batch",
        "max context",
        if train { "ZeRO-3 GPUs" } else { "TP GPUs" }
    );
    for f in fits {
        let head = if f.headroom_bytes >= 0 {
            bytes(f.headroom_bytes as u64)
        } else {
            format!("-{}", bytes(f.headroom_bytes.unsigned_abs()))
        };
        let opt = |o: Option<u64>| o.map_or_else(|| "-".to_string(), |v| v.to_string());
        let quantized = engine == crate::estimate::EngineProfile::CandleQuantized;
        let mut notes = Vec::new();
        if !f.bf16 && !quantized {
            notes.push("no bf16: fp16 or fp32 only".to_string());
        }
        if let Some(b) = f.max_batch_memory {
            notes.push(format!("memory holds batch {b}"));
        }
        if let Some(c) = f.max_context_memory {
            notes.push(format!("memory holds {c} tokens"));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join("; "))
        };
        let _ = writeln!(
            out,
            "{:<12} {:>11} {:>11} {:>4} {:>12} {:>9} {:>11} {:>9}{}",
            f.gpu,
            bytes(f.usable_bytes),
            bytes(f.needed_bytes),
            if f.fits { "yes" } else { "no" },
            head,
            opt(f.max_batch),
            opt(f.max_context),
            opt(f.tp_gpus),
            notes
        );
    }
    if engine == crate::estimate::EngineProfile::CandleQuantized {
        let _ = writeln!(
            out,
            "candle-quantized (candle-transformers 0.11's quantized_llama) runs one sequence \
             (huggingface/candle#2788) and has rotary tables for 4096 positions: \"memory \
             holds\" is what the card would take past those limits"
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if train {
            "training step; max batch at this context, max context at this batch; ZeRO-3 GPUs: \
             fewest data-parallel GPUs whose shard of weights, gradients and states fits"
        } else {
            "max batch at this context, max context at this batch; TP GPUs: fewest GPUs with \
             tensor parallelism (weights, KV and attention split; context and libraries per GPU)"
        }
    );
    out
}
