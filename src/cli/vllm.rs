//! `estimate --engine vllm` and `fit --engine vllm`: vLLM's memory plan, the lines vLLM
//! would log, and how many GPUs a target load needs.

use super::fit::select_gpus;
use super::{out, outln, BadInput, EstimateArgs, FitArgs, QueryArgs};
use crate::estimate::gpus::GpuModel;
use crate::estimate::vllm::{self, gib, VllmEnv, VllmKnobs, VllmPlan};
use crate::estimate::Quant;
use crate::plan::{DeviceChoice, Mode};
use crate::spec::{DType, ModelSpec};
use serde::Serialize;
use serde_json::json;
use std::fmt::Write as _;

/// Flags of the other engines that mean nothing to vLLM's plan: refuse them by name.
fn refuse_other_flags(q: &QueryArgs) -> Result<(), BadInput> {
    let other = [
        (q.quant != Quant::None, "--quant (vLLM's is --quantization)"),
        (
            q.kv_dtype.is_some(),
            "--kv-dtype (vLLM's is --kv-cache-dtype)",
        ),
        (q.train.mode == Mode::Train, "--mode train (vLLM serves)"),
        (
            q.batch != 1,
            "--batch (vLLM batches on its own: --max-num-seqs, --concurrency)",
        ),
        (
            q.chunked.prefill_chunk.is_some()
                || q.chunked.kv_capacity.is_some()
                || q.chunked.attention_block.is_some(),
            "the candle-chunked settings",
        ),
    ];
    match other.into_iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(BadInput(format!("--engine vllm does not take {flag}"))),
        None => Ok(()),
    }
}

/// The environment terms: the calibration file's `vllm` object, else the defaults.
fn load_env(q: &QueryArgs) -> anyhow::Result<(VllmEnv, String)> {
    match q.calibration.as_deref() {
        None => Ok((
            VllmEnv::default(),
            "default: vLLM 0.11.0 on an H100 (published runs); CUDA context measured here on an \
             H100, driver 580"
                .to_string(),
        )),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| BadInput(format!("{}: {e}", p.display())))?;
            let shown = p.display().to_string();
            let env = VllmEnv::from_calibration_json(&text, &shown).map_err(BadInput)?;
            Ok((env, shown))
        }
    }
}

fn plan_or_bad(
    spec: &ModelSpec,
    dtype: DType,
    gpu: &'static GpuModel,
    k: &VllmKnobs,
    env: &VllmEnv,
) -> Result<VllmPlan, BadInput> {
    vllm::plan(spec, dtype, gpu, k, env).map_err(|e| BadInput(format!("--engine vllm: {e}")))
}

pub(super) fn estimate(a: &EstimateArgs, spec: &ModelSpec, dtype: DType) -> anyhow::Result<()> {
    refuse_other_flags(&a.q)?;
    if a.context.is_some() {
        return Err(BadInput(
            "--engine vllm plans for every request at once: --max-model-len and \
             --max-num-batched-tokens, not --context"
                .into(),
        )
        .into());
    }
    if a.device == DeviceChoice::Cpu || a.fit {
        return Err(BadInput(
            "--engine vllm plans one GPU (--gpu); for the catalogue use `vramprobe fit --engine vllm`"
                .into(),
        )
        .into());
    }
    let Some(name) = a.gpu.as_deref() else {
        let ids: Vec<&str> = crate::estimate::gpus::CATALOGUE
            .iter()
            .map(|g| g.id)
            .collect();
        return Err(BadInput(format!(
            "--engine vllm plans a share of one GPU's memory: give --gpu (ids: {})",
            ids.join(", ")
        ))
        .into());
    };
    let gpu = select_gpus(Some(name))?[0];
    let (env, source) = load_env(&a.q)?;
    let k = a.q.vllm.knobs();
    let p = plan_or_bad(spec, dtype, gpu, &k, &env)?;
    if a.json {
        let v = json!({
            "model": spec.name(), "config": spec.source, "params": spec.param_count(),
            "engine": "vllm", "vllm_version": vllm::VLLM_VERSION, "dtype": dtype,
            "gpu": gpu.id, "gpu_name": gpu.name, "knobs": k, "env": env, "env_source": source,
            "vllm": p, "log": vllm::log_lines(&p),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", plan_text(spec, dtype, gpu, &p, &source));
    }
    Ok(())
}

/// The plan as text: vLLM's log lines, then every term.
fn plan_text(spec: &ModelSpec, dtype: DType, gpu: &GpuModel, p: &VllmPlan, source: &str) -> String {
    let mut s = String::new();
    let g = |b: u64| format!("{} GiB", gib(b as f64));
    let _ = writeln!(
        s,
        "vLLM {} memory plan: {} ({}) on {} ({} GiB), tensor parallel {}",
        p.vllm_version,
        spec.name(),
        dtype,
        gpu.name,
        gib(p.total_bytes as f64),
        p.tensor_parallel_size
    );
    let _ = writeln!(
        s,
        "  --gpu-memory-utilization {} --max-model-len {} --max-num-batched-tokens {} \
         --max-num-seqs {} --block-size {}",
        p.gpu_memory_utilization,
        p.max_model_len,
        p.max_num_batched_tokens,
        p.max_num_seqs,
        p.block_size
    );
    let _ = writeln!(s, "\nWhat vLLM logs (per GPU):");
    for line in vllm::log_lines(p) {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(s, "\nTerms (per GPU):");
    let rows: [(&str, String, &str); 11] = [
        ("total (NVML)", g(p.total_bytes), ""),
        (
            "usable",
            g(p.usable_bytes),
            "total x gpu_memory_utilization: what vLLM divides",
        ),
        (
            "before load",
            g(p.before_load_bytes),
            "CUDA context, NCCL: outside `usable`, must leave it free",
        ),
        (
            "weights",
            g(p.weights_bytes),
            "sharded parameters + rotary cos_sin_cache",
        ),
        (
            "activation peak",
            g(p.activation_peak_bytes),
            "profile run: max(forward, sampler) + cuBLAS workspace",
        ),
        (
            "  forward",
            g(p.forward_peak_bytes),
            "max_num_batched_tokens",
        ),
        (
            "  sampler",
            g(p.sampler_peak_bytes),
            "max_num_seqs x vocabulary, sorted in f32",
        ),
        (
            "non-torch",
            g(p.non_torch_bytes),
            "environment term (--calibration)",
        ),
        (
            "KV cache",
            format!("{} GiB", gib(p.kv_cache_bytes as f64)),
            "usable - weights - activation - non-torch",
        ),
        (
            "CUDA graphs",
            g(p.cuda_graph_bytes),
            "captured after the KV cache, outside `usable`",
        ),
        (
            "process",
            g(p.process_bytes),
            "what nvidia-smi shows once serving",
        ),
    ];
    for (name, value, note) in rows {
        let _ = writeln!(s, "  {name:<16} {value:>12}  {note}");
    }
    let _ = writeln!(
        s,
        "  KV: {} bytes/token, {} tokens per block, {:.2} MiB per block over the layers",
        p.kv_bytes_per_token,
        p.block_size,
        p.block_bytes as f64 / f64::from(1u32 << 20)
    );
    let _ = writeln!(s, "environment terms: {source}");
    s
}

/// One GPU's answer in `fit --engine vllm`.
#[derive(Serialize)]
struct VllmFit {
    gpu: &'static str,
    name: &'static str,
    memory_bytes: u64,
    /// The plan at the requested tensor-parallel size.
    plan: VllmPlan,
    /// Whether `concurrency` requests of `max_model_len` tokens fit at once with that plan.
    holds: bool,
    /// The fewest GPUs (replicas of a tensor-parallel group) that hold them.
    deployment: Option<vllm::Deployment>,
}

pub(super) fn fit(a: &FitArgs, spec: &ModelSpec, dtype: DType) -> anyhow::Result<()> {
    refuse_other_flags(&a.q)?;
    if a.context.is_some() {
        return Err(BadInput(
            "--engine vllm: the request length is --max-model-len, not --context".into(),
        )
        .into());
    }
    let requests = a.concurrency.unwrap_or(1);
    if requests == 0 || requests > 1 << 24 {
        return Err(BadInput(format!("--concurrency {requests}: must be 1 to 2^24")).into());
    }
    let (env, source) = load_env(&a.q)?;
    let k = a.q.vllm.knobs();
    vllm::check_knobs(spec, &k).map_err(|e| BadInput(format!("--engine vllm: {e}")))?;
    let tokens = k.max_model_len.unwrap_or(spec.max_position_embeddings);
    let mut fits = Vec::new();
    for gpu in select_gpus(a.gpu.as_deref())? {
        let plan = plan_or_bad(spec, dtype, gpu, &k, &env)?;
        let deployment = vllm::fewest_gpus(spec, dtype, gpu, &k, &env, requests, tokens);
        fits.push(VllmFit {
            gpu: gpu.id,
            name: gpu.name,
            memory_bytes: gpu.memory_bytes,
            holds: plan.holds(requests, tokens),
            plan,
            deployment,
        });
    }
    if a.json {
        let v = json!({
            "model": spec.name(), "config": spec.source, "engine": "vllm",
            "vllm_version": vllm::VLLM_VERSION, "dtype": dtype, "knobs": k,
            "concurrency": requests, "max_model_len": tokens, "env": env,
            "env_source": source, "fit": fits,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!(
        "vLLM {} plan for {} ({dtype}), tensor parallel {}, {} request(s) of {} tokens, \
         utilization {}:",
        vllm::VLLM_VERSION,
        spec.name(),
        k.tensor_parallel_size,
        requests,
        vllm::thousands(tokens),
        k.gpu_memory_utilization
    );
    outln!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6} {:>12}",
        "GPU",
        "memory",
        "usable",
        "weights",
        "activ.",
        "KV cache",
        "KV tokens",
        "max conc.",
        "holds",
        "GPUs (TPxDP)"
    );
    for f in &fits {
        let p = &f.plan;
        let (kv, tok, conc) = if p.starts() {
            (
                gib(p.kv_cache_bytes as f64),
                vllm::thousands(p.kv_tokens),
                format!("{:.2}x", p.max_concurrency),
            )
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        outln!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6} {:>12}",
            f.gpu,
            gib(f.memory_bytes as f64),
            gib(p.usable_bytes as f64),
            gib(p.weights_bytes as f64),
            gib(p.activation_peak_bytes as f64),
            kv,
            tok,
            conc,
            if f.holds { "yes" } else { "no" },
            f.deployment.as_ref().map_or("-".to_string(), |d| format!(
                "{} ({}x{})",
                d.gpus, d.tensor_parallel_size, d.replicas
            ))
        );
    }
    outln!(
        "(GiB; per GPU at tensor parallel {}; GPUs: the fewest that hold the requests, as \
         tensor-parallel size x replicas; '-': not even one request fits)",
        k.tensor_parallel_size
    );
    for f in fits.iter().filter(|f| !f.plan.starts()) {
        if let Some(e) = &f.plan.error {
            outln!("{}: vLLM stops: {e}", f.gpu);
        }
    }
    outln!("environment terms: {source}");
    Ok(())
}
