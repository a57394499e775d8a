//! The committed GPU measurements (reports/gpu/<date>-<gpu>/<run>/) against the current
//! estimator: every point that fitted must stay within 2% of the memory pool (tensor bytes)
//! and within 3% of NVML's process figure (what nvidia-smi shows). These are real H100
//! readings, so this test keeps the estimator honest on a machine without a GPU.

use super::root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vramprobe::estimate::cuda::{self, CudaOverheads};
use vramprobe::estimate::{estimate, Backend, EngineProfile, Phase, Workload};
use vramprobe::spec::{DType, ModelSpec};

fn runs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(gpus) = std::fs::read_dir(root().join("reports/gpu")) else {
        return out;
    };
    for g in gpus.flatten() {
        for r in std::fs::read_dir(g.path()).into_iter().flatten().flatten() {
            if r.path().join("run.json").exists() && r.path().join("points.jsonl").exists() {
                out.push(r.path());
            }
        }
    }
    out.sort();
    out
}

fn flag(command: &[Value], name: &str) -> Option<String> {
    let i = command.iter().position(|v| v == name)?;
    command.get(i + 1)?.as_str().map(str::to_string)
}

/// A stored GPU run as the estimator needs it: its spec (with --max-position applied), dtype,
/// and the CUDA overheads it measured.
struct StoredRun {
    info: Value,
    spec: ModelSpec,
    dtype: DType,
    overheads: CudaOverheads,
}

fn load_run(dir: &Path) -> StoredRun {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    let command = info["command"].as_array().unwrap();
    let mut spec = ModelSpec::from_path(&root().join(info["model_config"].as_str().unwrap()))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    if let Some(m) = flag(command, "--max-position") {
        spec = spec.with_max_position(m.parse().unwrap()).unwrap();
    }
    let dtype: DType = info["dtype"].as_str().unwrap().parse().unwrap();
    let gpu = &info["gpu"];
    let context = gpu["process_after_context_bytes"].as_u64().unwrap();
    let nonpool = gpu["process_after_warmup_bytes"].as_u64().unwrap()
        - gpu["pool_reserved_after_warmup_bytes"].as_u64().unwrap();
    let overheads = CudaOverheads {
        context_bytes: context,
        libraries_bytes: nonpool - context,
        ..CudaOverheads::default()
    };
    StoredRun {
        info,
        spec,
        dtype,
        overheads,
    }
}

struct Worst {
    pool: f64,
    nvml: f64,
    points: usize,
}

fn check_run(dir: &Path) -> Worst {
    let StoredRun {
        info,
        spec,
        dtype,
        overheads,
    } = load_run(dir);
    let residue = info["warmup_residue_bytes"].as_u64().unwrap();
    let mut worst = Worst {
        pool: 0.0,
        nvml: 0.0,
        points: 0,
    };
    for line in std::fs::read_to_string(dir.join("points.jsonl"))
        .unwrap()
        .lines()
    {
        let p: Value = serde_json::from_str(line).unwrap();
        if p["status"] != "ok" {
            continue;
        }
        let w = Workload {
            batch: p["batch"].as_u64().unwrap(),
            context: p["context"].as_u64().unwrap(),
            decode_steps: p["decode_steps"].as_u64().unwrap(),
        };
        let phase = if p["phase"] == "prefill" {
            Phase::Prefill
        } else {
            Phase::Decode
        };
        let e = estimate(&spec, dtype, EngineProfile::CandleEager, Backend::Cuda, w);
        let pool = p["measured"]["cuda_pool"].as_u64().unwrap() as f64;
        let nvml = p["measured"]["nvml_process"].as_u64().unwrap() as f64;
        let est_pool = e.phase(phase).total_bytes() as f64;
        let est_nvml = cuda::process(&e, phase, residue, &overheads).total_bytes() as f64;
        let (ep, en) = ((est_pool - pool) / pool, (est_nvml - nvml) / nvml);
        if ep.abs() > worst.pool.abs() {
            worst.pool = ep;
        }
        if en.abs() > worst.nvml.abs() {
            worst.nvml = en;
        }
        worst.points += 1;
    }
    worst
}

#[test]
fn committed_gpu_runs_stay_within_tolerance() {
    let runs = runs();
    assert!(!runs.is_empty(), "no GPU runs under reports/gpu");
    let mut llama_points = 0;
    for dir in &runs {
        let w = check_run(dir);
        let name = dir.display().to_string();
        eprintln!(
            "{name}: {} points, worst pool {:+.3}%, worst nvml {:+.3}%",
            w.points,
            w.pool * 100.0,
            w.nvml * 100.0
        );
        assert!(w.points > 0, "{name}: no measured points");
        assert!(
            w.pool.abs() <= 0.02,
            "{name}: pool error {:+.3}%",
            w.pool * 100.0
        );
        // The tiny model's whole process is ~700 MiB, so one 32 MiB pool granule is 4.5%.
        let nvml_max = if name.contains("tiny") { 0.05 } else { 0.03 };
        assert!(
            w.nvml.abs() <= nvml_max,
            "{name}: NVML error {:+.3}%",
            w.nvml * 100.0
        );
        if name.contains("llama3-8b") {
            llama_points += w.points;
        }
    }
    assert!(llama_points >= 40, "{llama_points} Llama-3-8B points");
}

/// The out-of-memory boundary measured by bisection (boundary.json) against the largest
/// context the current estimate says fits in the same memory: within one search step.
#[test]
fn committed_oom_boundaries_match_the_prediction() {
    let mut checked = 0;
    for dir in runs() {
        let Ok(text) = std::fs::read_to_string(dir.join("boundary.json")) else {
            continue;
        };
        let StoredRun {
            info,
            spec,
            dtype,
            overheads: o,
        } = load_run(&dir);
        let steps = info["grid"]["decode_steps"].as_u64().unwrap();
        let boundaries: Vec<Value> = serde_json::from_str(&text).unwrap();
        for b in boundaries {
            let batch = b["batch"].as_u64().unwrap();
            let capacity = b["capacity_bytes"].as_u64().unwrap();
            let step = b["step"].as_u64().unwrap();
            let (Some(fits), Some(oom)) = (
                b["measured_max_context"].as_u64(),
                b["measured_first_oom_context"].as_u64(),
            ) else {
                continue;
            };
            let need = |c: u64| {
                let w = Workload {
                    batch,
                    context: c,
                    decode_steps: steps,
                };
                let e = estimate(&spec, dtype, EngineProfile::CandleEager, Backend::Cuda, w);
                [Phase::Prefill, Phase::Decode]
                    .into_iter()
                    .map(|p| cuda::process(&e, p, 0, &o).total_bytes())
                    .max()
                    .unwrap()
            };
            let predicted = (2..oom + 8 * step)
                .rev()
                .find(|&c| need(c) <= capacity)
                .unwrap();
            // Llama-3-8B: within one search step. The tiny model's boundary within a 1 GiB
            // budget is set by ~300 MiB of small tensors, where the pool's fragmentation
            // (not modelled beyond its 32 MiB granules) is a tenth of the budget: measured
            // 2 steps earlier than predicted at batch 1, so it is held to 3 steps.
            let slack = if dir.display().to_string().contains("tiny") {
                3 * step
            } else {
                step
            };
            assert!(
                predicted + slack >= fits && predicted <= oom + slack,
                "{}: batch {batch}: measured fits {fits}, OOM {oom}; predicted {predicted}",
                dir.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} boundaries checked");
}

/// The PyTorch reference measured on the H100 (torch-reference.jsonl: transformers eager and
/// SDPA attention, `torch.cuda.max_memory_allocated`) against the `hf-eager` and `flash`
/// engine profiles.
#[test]
fn torch_reference_matches_the_hf_engines() {
    let mut checked = 0;
    let spec = ModelSpec::from_path(&root().join("models/meta-llama-3-8b-instruct")).unwrap();
    for g in std::fs::read_dir(root().join("reports/gpu"))
        .unwrap()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(g.path().join("torch-reference.jsonl")) else {
            continue;
        };
        let mut worst: std::collections::BTreeMap<String, f64> = Default::default();
        for line in text.lines() {
            let p: Value = serde_json::from_str(line).unwrap();
            if p["kind"] != "point" || p["status"] != "ok" {
                continue;
            }
            let engine = match p["attn"].as_str().unwrap() {
                "eager" => EngineProfile::TransformersEager,
                _ => EngineProfile::TransformersSdpa,
            };
            let w = Workload {
                batch: p["batch"].as_u64().unwrap(),
                context: p["context"].as_u64().unwrap(),
                decode_steps: p["decode_steps"].as_u64().unwrap(),
            };
            let e = estimate(&spec, DType::BF16, engine, Backend::Cuda, w);
            for (phase, name) in [(Phase::Prefill, "prefill"), (Phase::Decode, "decode")] {
                let measured = p[name]["torch_allocated"].as_u64().unwrap() as f64;
                let est = e.phase(phase).total_bytes() as f64;
                let err = (est - measured) / measured;
                eprintln!(
                    "{} b{} s{} {name}: est {:.3} GiB measured {:.3} GiB {:+.2}%",
                    engine.as_str(),
                    w.batch,
                    w.context,
                    est / (1u64 << 30) as f64,
                    measured / (1u64 << 30) as f64,
                    err * 100.0
                );
                let k = format!("{} {name}", engine.as_str());
                let wv = worst.entry(k).or_insert(0.0);
                if err.abs() > wv.abs() {
                    *wv = err;
                }
                checked += 1;
            }
        }
        eprintln!("{}: worst {worst:?}", g.path().display());
        for (k, v) in &worst {
            assert!(v.abs() <= 0.03, "{k}: {:+.2}%", v * 100.0);
        }
    }
    assert!(checked >= 80, "{checked} torch points checked");
}
