//! The report of a stored run as data: what `report.json` holds (versioned), built only from
//! the run directory (run.json, points.jsonl, boundary.json), so a re-render gives the same
//! bytes, and the sentences every writer ([`super::markdown`], [`super::html`]) shows: the
//! answer in one sentence, the rule of thumb against the measurement, where and how.

use super::units::{bytes, grouped, percent};
use crate::estimate::rule_of_thumb;
use crate::store::{self, PointRecord, RunInfo, Status, StoreError};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// The report's schema version (report.json's `schema_version`).
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// The answer, in one sentence.
    pub headline: String,
    pub rule_of_thumb: RuleVsMeasured,
    /// run.json as stored: command, environment, versions, GPU and baselines.
    pub run: RunInfo,
    /// The out-of-memory boundary per batch, where searched. (report.json schema 1 lists
    /// each boundary's keys in alphabetical order, as it always has.)
    #[serde(serialize_with = "keys_sorted")]
    pub boundaries: Option<Vec<store::Boundary>>,
    /// Training runs: the seed's training claim beside the measured and estimated figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingClaim>,
    /// candle-quantized runs: the seed's claim that a 16 GB card needs quantization for
    /// Llama-3-8B, beside the estimates for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedClaim>,
    pub points: Vec<PointRecord>,
}

/// "A 16 GB card needs quantization for Llama-3-8B", against vramprobe's fit of Llama-3-8B on
/// the catalogue's 16 GB cards at batch 1: BF16 (candle-chunked) and candle-quantized in
/// q8_0 and q4k.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizedClaim {
    pub seed_claim: String,
    /// The context each row is fitted at.
    pub context: u64,
    pub rows: Vec<QuantizedFit>,
    /// The claim against the figures, in one paragraph.
    pub verdict: String,
}

/// One engine and type of Llama-3-8B on one GPU.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizedFit {
    pub weights: String,
    pub gpu: String,
    pub usable_bytes: u64,
    pub needed_bytes: u64,
    pub fits: bool,
    /// The largest context at batch 1 (the engine's limit for candle-quantized).
    pub max_context: Option<u64>,
}

fn quantized_claim(run: &RunInfo) -> Option<QuantizedClaim> {
    use crate::estimate::{candle_chunked::Knobs, fit, gpus, EngineProfile, Quant, Workload};
    if run.engine != EngineProfile::CandleQuantized.as_str() {
        return None;
    }
    let spec = crate::spec::ModelSpec::from_json_str(
        LLAMA3_8B_CONFIG,
        Path::new("models/meta-llama-3-8b-instruct/config.json"),
    )
    .ok()?;
    let context = 1024;
    let mut rows = Vec::new();
    for (label, engine, quant) in [
        (
            "bf16 (candle-chunked)",
            EngineProfile::CandleChunked,
            Quant::None,
        ),
        (
            "q8_0 (candle-quantized)",
            EngineProfile::CandleQuantized,
            Quant::Q8_0,
        ),
        (
            "q4k (candle-quantized)",
            EngineProfile::CandleQuantized,
            Quant::Q4K,
        ),
    ] {
        let q = fit::FitQuery {
            spec: &spec,
            dtype: crate::spec::DType::BF16,
            engine,
            workload: Workload {
                batch: 1,
                context,
                decode_steps: crate::plan::DEFAULT_DECODE_STEPS,
            },
            overheads: crate::estimate::cuda::CudaOverheads::default(),
            quant,
            kv_dtype: None,
            knobs: Knobs::default(),
            layout: None,
        };
        for id in ["t4", "v100-16gb"] {
            let g = gpus::find(id)?;
            let f = fit::fit(&q, g);
            rows.push(QuantizedFit {
                weights: label.into(),
                gpu: g.name.into(),
                usable_bytes: f.usable_bytes,
                needed_bytes: f.needed_bytes,
                fits: f.fits,
                max_context: f.max_context,
            });
        }
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let row = |w: &str, gpu: &str| {
        rows.iter()
            .find(|r| r.weights.starts_with(w) && r.gpu.contains(gpu))
    };
    let mut verdict = String::new();
    if let (Some(b), Some(q)) = (row("bf16", "T4"), row("q4k", "T4")) {
        verdict = format!(
            "On a {} ({:.2} GiB usable) Llama-3-8B in BF16 needs {:.2} GiB at batch 1 x {context} \
             tokens: {}. In q4k with candle-quantized it needs {:.2} GiB: {}{}. The claim {}.",
            b.gpu,
            gib(b.usable_bytes),
            gib(b.needed_bytes),
            if b.fits { "it fits" } else { "it does not fit" },
            gib(q.needed_bytes),
            if q.fits { "it fits" } else { "it does not fit" },
            q.max_context
                .map(|c| format!(", to {c} tokens (the engine's limit is 4096 positions)"))
                .unwrap_or_default(),
            if !b.fits && q.fits {
                "holds"
            } else {
                "does not hold as stated"
            }
        );
    }
    Some(QuantizedClaim {
        seed_claim: "A 16 GB card needs quantization for Llama-3-8B (its BF16 weights alone are \
                     14.96 GiB)"
            .into(),
        context,
        rows,
        verdict,
    })
}

/// The seed's claim, "full fine-tuning of Llama-3-8B in BF16 needs 64-80 GB, one 80 GB
/// A100/H100", beside this run's measurement and the estimate for Llama-3-8B itself.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingClaim {
    pub seed_claim: String,
    pub seed_low_bytes: u64,
    pub seed_high_bytes: u64,
    /// The rule of thumb for this run's model: 2 to 3 times the inference rule.
    pub rule_of_thumb_low_bytes: u64,
    pub rule_of_thumb_high_bytes: u64,
    /// This run's largest measured peak (primary source) and where.
    pub measured_max_bytes: u64,
    pub estimated_at_measured_max_bytes: u64,
    pub batch: u64,
    pub context: u64,
    pub phase: String,
    /// Whether this run is Llama-3-8B itself (then `measured_max_bytes` tests the claim).
    pub run_is_llama3_8b: bool,
    /// vramprobe's estimate for Llama-3-8B, BF16, on CUDA, batch 1 (candle-eager training
    /// profile, candle-nn AdamW): full fine-tune and LoRA rank 16 on q and v.
    pub llama3_8b: Vec<Llama3Estimate>,
    /// The claim against the figures, in one paragraph.
    pub verdict: String,
}

/// One Llama-3-8B training estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Llama3Estimate {
    pub setup: String,
    pub context: u64,
    pub forward_bytes: u64,
    pub backward_bytes: u64,
    pub optimizer_bytes: u64,
    pub peak_bytes: u64,
    pub peak_phase: String,
}

const LLAMA3_8B_CONFIG: &str = include_str!("../../models/meta-llama-3-8b-instruct/config.json");

fn llama3_estimates() -> Vec<Llama3Estimate> {
    use crate::estimate::candle_train::{simulate_step, LoraSetup, TrainPhase};
    use crate::estimate::train::Target;
    let Ok(spec) = crate::spec::ModelSpec::from_json_str(
        LLAMA3_8B_CONFIG,
        Path::new("models/meta-llama-3-8b-instruct/config.json"),
    ) else {
        return Vec::new();
    };
    let lora = LoraSetup {
        rank: 16,
        targets: vec![Target::Q, Target::V],
    };
    let mut out = Vec::new();
    for (setup, l) in [("full fine-tune", None), ("LoRA r16 q,v", Some(&lora))] {
        for context in [256, 512, 1024] {
            let e = simulate_step(&spec, crate::spec::DType::BF16, false, 1, context, l);
            // The first phase with the largest peak (the steady step before the first).
            let (peak_phase, peak_bytes) =
                TrainPhase::ALL.iter().fold((String::new(), 0), |best, p| {
                    let b = e.phase(*p).total();
                    if b > best.1 {
                        (p.as_str().to_string(), b)
                    } else {
                        best
                    }
                });
            out.push(Llama3Estimate {
                setup: setup.into(),
                context,
                forward_bytes: e.forward.total(),
                backward_bytes: e.backward.total(),
                optimizer_bytes: e.optimizer.total(),
                peak_bytes,
                peak_phase,
            });
        }
    }
    out
}

/// Where `bytes` falls against the seed's 64-80 GB.
fn against_claim(bytes: u64) -> &'static str {
    if bytes < 64_000_000_000 {
        "below"
    } else if bytes <= 80_000_000_000 {
        "within"
    } else {
        "above"
    }
}

fn training_claim(run: &RunInfo, points: &[PointRecord]) -> Option<TrainingClaim> {
    let train = run.train.as_ref()?;
    let rule = rule_of_thumb(run.params);
    let biggest = points
        .iter()
        .filter(|p| p.status == Status::Ok)
        .max_by_key(|p| p.measured_peak_bytes);
    let is_8b = run.params == 8_030_261_248;
    let llama3_8b = llama3_estimates();
    let gb = |b: u64| b as f64 / 1e9;
    let full512 = llama3_8b
        .iter()
        .find(|e| e.setup == "full fine-tune" && e.context == 512);
    let mut verdict = String::new();
    if let Some(f) = full512 {
        let _ = write!(
            verdict,
            "For Llama-3-8B in BF16 at batch 1 x 512 tokens, vramprobe estimates a full \
             fine-tune with candle-nn's AdamW (moments in BF16: the seed's 8 bytes per \
             parameter) at {:.1} GB ({}), {} the seed's 64-80 GB. ",
            gb(f.peak_bytes),
            f.peak_phase,
            against_claim(f.peak_bytes)
        );
    }
    match (is_8b, biggest) {
        (true, Some(b)) => {
            let _ = write!(
                verdict,
                "This run measured Llama-3-8B itself: {:.1} GB at batch {} x {} tokens ({}), {} \
                 the claim.",
                gb(b.measured_peak_bytes),
                b.batch,
                b.context,
                b.phase,
                against_claim(b.measured_peak_bytes)
            );
        }
        (false, Some(b)) => {
            let _ = write!(
                verdict,
                "This run measured {} ({} trainable parameters, {}): its largest peak was {} \
                 ({}, batch {} x {}), estimated within {}; the same simulation gives the \
                 Llama-3-8B figures. A GPU run of Llama-3-8B (scripts/gpu-validate.sh) tests \
                 them directly.",
                run.model,
                grouped(train.trainable_params),
                if train.lora.is_some() {
                    "LoRA"
                } else {
                    "full fine-tune"
                },
                bytes(b.measured_peak_bytes),
                b.phase,
                b.batch,
                b.context,
                percent(b.error_ratio),
            );
        }
        (_, None) => {
            let _ = write!(verdict, "No training point of this run fitted.");
        }
    }
    Some(TrainingClaim {
        seed_claim: "Full fine-tuning of Llama-3-8B in BF16 needs 64-80 GB: one 80 GB A100/H100."
            .into(),
        seed_low_bytes: 64_000_000_000,
        seed_high_bytes: 80_000_000_000,
        rule_of_thumb_low_bytes: rule.training_low_bytes,
        rule_of_thumb_high_bytes: rule.training_high_bytes,
        measured_max_bytes: biggest.map_or(0, |p| p.measured_peak_bytes),
        estimated_at_measured_max_bytes: biggest.map_or(0, |p| p.estimated_bytes),
        batch: biggest.map_or(0, |p| p.batch),
        context: biggest.map_or(0, |p| p.context),
        phase: biggest.map_or_else(String::new, |p| p.phase.to_string()),
        run_is_llama3_8b: is_8b,
        llama3_8b,
        verdict,
    })
}

/// The seed's rule of thumb beside the largest measured peak.
#[derive(Debug, Clone, Serialize)]
pub struct RuleVsMeasured {
    /// weights x 2 bytes + 2 GB.
    pub rule_of_thumb_bytes: u64,
    /// The largest peak measured (primary source) over the run.
    pub measured_max_bytes: u64,
    pub batch: u64,
    pub context: u64,
    pub phase: String,
    /// rule / measured - 1.
    pub rule_error_ratio: f64,
}

/// Serialise through `serde_json::Value`, whose objects keep their keys sorted.
fn keys_sorted<T: Serialize, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(v)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// Build the report of the run in `dir`.
///
/// # Errors
/// [`StoreError`] when run.json or points.jsonl cannot be read.
pub fn build(dir: &Path) -> Result<Report, StoreError> {
    let run = store::RunDir::read_info(dir)?;
    let points = store::read_points(dir)?;
    let boundaries = store::read_boundaries(dir)?;
    let ok: Vec<&PointRecord> = points.iter().filter(|p| p.status == Status::Ok).collect();
    let biggest = ok.iter().max_by_key(|p| p.measured_peak_bytes);
    // Training runs are held against the training rule's low end (2x the inference rule).
    let rule = if run.train.is_some() {
        rule_of_thumb(run.params).training_low_bytes
    } else {
        rule_of_thumb(run.params).inference_bytes
    };
    let rule_of_thumb = RuleVsMeasured {
        rule_of_thumb_bytes: rule,
        measured_max_bytes: biggest.map_or(0, |p| p.measured_peak_bytes),
        batch: biggest.map_or(0, |p| p.batch),
        context: biggest.map_or(0, |p| p.context),
        phase: biggest.map_or_else(String::new, |p| p.phase.to_string()),
        rule_error_ratio: biggest.map_or(f64::NAN, |p| {
            rule as f64 / p.measured_peak_bytes as f64 - 1.0
        }),
    };
    Ok(Report {
        schema_version: REPORT_SCHEMA_VERSION,
        headline: headline(&run, &points),
        rule_of_thumb,
        training: training_claim(&run, &points),
        quantized: quantized_claim(&run),
        run,
        boundaries,
        points,
    })
}

/// How the run held its numbers: the dtype, or for candle-quantized its GGML type (a GGUF
/// file's own types when it loaded one).
fn precision(run: &RunInfo) -> String {
    if run.engine != crate::estimate::EngineProfile::CandleQuantized.as_str() {
        return run.dtype.to_uppercase();
    }
    match run.settings.as_ref() {
        Some(p) if p.weights != crate::plan::WeightsChoice::Synthetic => {
            "the GGUF file's types (f32 activations)".into()
        }
        Some(p) => format!(
            "{} (GGUF blocks, f32 activations)",
            p.quant
                .unwrap_or(crate::estimate::candle_quantized::GgmlType::Q4K)
                .as_str()
        ),
        None => "GGUF blocks (f32 activations)".into(),
    }
}

fn headline(run: &RunInfo, points: &[PointRecord]) -> String {
    let ok: Vec<&PointRecord> = points.iter().filter(|p| p.status == Status::Ok).collect();
    let on = match &run.gpu {
        Some(g) => format!(
            "on this {}",
            g.info
                .as_ref()
                .map_or(run.device.as_str(), |i| i.name.as_str())
        ),
        None => "on the CPU (host memory)".to_string(),
    };
    if ok.is_empty() {
        return format!("{} in {} {on}: no point fitted.", run.model, precision(run));
    }
    // Per batch, the largest context (grid or boundary search) at which both phases fitted.
    let mut per_batch: Vec<(u64, u64)> = Vec::new();
    for &b in &run.grid.batches {
        let both = |c: u64| ok.iter().filter(|p| p.batch == b && p.context == c).count() >= 2;
        if let Some(c) = ok
            .iter()
            .filter(|p| p.batch == b && both(p.context))
            .map(|p| p.context)
            .max()
        {
            per_batch.push((b, c));
        }
    }
    let fits = per_batch
        .iter()
        .map(|(b, c)| format!("batch {b} at {c} tokens"))
        .collect::<Vec<_>>()
        .join(", ");
    let all = ok.len() == points.len();
    let worst = ok
        .iter()
        .map(|p| p.error_ratio.abs())
        .fold(0.0f64, f64::max);
    let source = ok.first().map_or("", |p| p.source.as_str());
    let what = match source {
        "nvml_process" => "of what nvidia-smi showed",
        "host_alloc" => "of the allocated bytes",
        _ => "of the measured peak",
    };
    format!(
        "{} in {} {on}: {} up to {fits}; the estimate was within {:.2}% {what} at every point \
         that fitted.",
        run.model,
        precision(run),
        if all {
            "every grid point fitted,"
        } else {
            "fits"
        },
        worst * 100.0
    )
}

/// The rule of thumb against the largest measured peak, in one paragraph.
pub fn rule_sentence(r: &Report) -> String {
    let rt = &r.rule_of_thumb;
    let (claim, which) = match &r.training {
        Some(t) => (
            format!(
                "\"Training needs 2-3x the inference rule (weights x 2 bytes plus a few GB)\" \
                 gives {} to {}",
                bytes(t.rule_of_thumb_low_bytes),
                bytes(t.rule_of_thumb_high_bytes)
            ),
            "the rule's low end",
        ),
        None => (
            format!(
                "\"Weights x 2 bytes plus a few GB\" gives {} ({:.2} GB)",
                bytes(rt.rule_of_thumb_bytes),
                rt.rule_of_thumb_bytes as f64 / 1e9
            ),
            "the rule of thumb",
        ),
    };
    format!(
        "{claim} for {} parameters. The largest peak measured here was {} ({:.2} GB), at batch \
         {} x {} tokens ({}): {which} is {} off.",
        grouped(r.run.params),
        bytes(rt.measured_max_bytes),
        rt.measured_max_bytes as f64 / 1e9,
        rt.batch,
        rt.context,
        rt.phase,
        percent(rt.rule_error_ratio)
    )
}

/// Where and how the run was made, as (what, value) lines: command, model, host, GPU,
/// versions.
pub fn setup_facts(r: &Report) -> Vec<(&'static str, String)> {
    let run = &r.run;
    let env = &run.environment;
    let mut facts = vec![
        ("command", run.command.join(" ")),
        (
            "model",
            format!(
                "{} ({} parameters), {}, engine {}, weights {}",
                run.model_config,
                grouped(run.params),
                run.dtype,
                run.engine,
                run.weights
            ),
        ),
        (
            "host",
            format!(
                "{}, {}, {} ({} cores)",
                env.host, env.os, env.cpu, env.cpu_cores
            ),
        ),
    ];
    if let Some(g) = run.gpu.as_ref().and_then(|g| g.info.as_ref()) {
        facts.push((
            "GPU",
            format!(
                "{} ({}), driver {}, CUDA {}",
                g.name,
                bytes(g.memory_total_bytes),
                g.driver_version,
                g.cuda_driver_version
            ),
        ));
    }
    let commit = env
        .git_commit
        .as_deref()
        .map(|c| format!(" (commit {c})"))
        .unwrap_or_default();
    facts.push((
        "vramprobe",
        format!(
            "{}{commit}, candle {}, started {}",
            env.vramprobe_version, env.candle_version, run.started_at
        ),
    ));
    facts
}
