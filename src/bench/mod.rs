//! One-shot benchmark: estimate and measure every point of a [`BenchPlan`], append each to
//! the run directory as it completes.
//!
//! - [`Sweep::resolve`] turns a checked plan into what runs: the model found (or fetched),
//!   the weights' source, the run directory.
//! - [`run`] opens the directory and a session on the plan's device (`session` on the CPU,
//!   `gpu` on CUDA), whose methods sweep the grid and, on a GPU, search the out-of-memory
//!   boundary (`boundary`); `record` turns each reading into a stored record.
//!
//! Sources and what each is compared with (all in `estimated_by_source`/`error_by_source`):
//! - `host_alloc` (CPU) and `cuda_pool` (CUDA, allocator-exact): tensor bytes, weights
//!   included, the run's one-off runtime buffers excluded; against the estimate's total.
//! - `nvml_process` (CUDA, the primary source there: what nvidia-smi shows): the process's
//!   whole device memory; against the estimate's total plus this run's measured fixed
//!   overhead (CUDA context, kernels, library workspaces, pool slack after warm-up).
//! - `cuda_pool_reserved` and `nvml_device`: recorded raw, compared likewise (the device's
//!   figure includes other processes' memory before ours).

mod boundary;
mod gpu;
mod record;
mod session;

pub use record::tolerance_violations;

use crate::estimate::candle_train;
use crate::estimate::{self, Backend, EngineProfile, Workload};
use crate::model::ModelRef;
use crate::plan::{
    BenchPlan, DeviceChoice, Mode, OverMemory, PlanError, WeightsChoice, MEMORY_MARGIN_BYTES,
    MEMORY_MARGIN_PERCENT,
};
use crate::probe::host::HostAllocProbe;
use crate::runner::{Accel, DeviceKind, RunError, WeightsSource};
use crate::spec::ModelSpec;
use crate::store::{self, PointRecord, RunDir, Stage, StoreError};
use session::{run_info, Done, Model, OverMemoryPoints, Probes, Session};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The exit code of a sweep stopped by SIGINT/SIGTERM (128 + SIGINT, as shells report it);
/// the daemon reads it from its sweeps' child processes.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The engine measured unless asked otherwise.
pub const DEFAULT_ENGINE: EngineProfile = EngineProfile::CandleEager;

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    /// A combination of options that cannot work on this device.
    #[error("{0}")]
    Options(String),
    /// Stopped by a signal between two points; everything measured is stored.
    #[error(
        "interrupted: {stored} of {total} points stored in {dir}; measure the rest with \
         `vramprobe bench --resume {dir}`"
    )]
    Interrupted {
        stored: usize,
        total: usize,
        dir: String,
    },
}

/// A checked plan ready to run: the model found, the weights' source, where to store.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub plan: BenchPlan,
    /// The model's spec, with the plan's `max_position` applied.
    pub spec: ModelSpec,
    pub weights: WeightsSource,
    /// The run directory.
    pub out: PathBuf,
    /// The command line, recorded in run.json.
    pub command: Vec<String>,
    /// Append to the existing run in `out` (same plan), measuring only the phases it lacks.
    pub resume: bool,
    /// Set (by SIGINT/SIGTERM) to stop after the point being measured.
    pub stop: Option<Arc<AtomicBool>>,
    /// candle-quantized with a GGUF file: the file's GGML type of every weight (None: the
    /// plan's one type for all).
    pub quant_layout: Option<estimate::candle_quantized::QuantLayout>,
}

impl Sweep {
    /// Check `plan`, find its model (downloading config and weights from the Hub when the
    /// plan says so, with a progress bar unless `quiet`) and choose the run directory:
    /// `out`, else `runs/<UTC time>-<model>`.
    ///
    /// # Errors
    /// [`PlanError`], and whatever finding the model reports ([`crate::spec::SpecError`],
    /// [`crate::hub::HubError`]).
    pub fn resolve(
        mut plan: BenchPlan,
        out: Option<PathBuf>,
        quiet: bool,
    ) -> anyhow::Result<Sweep> {
        plan.check()?;
        // Stored as absolute paths, so that `--resume` from another directory loads the same
        // files (and never mistakes a relative path for a Hub id).
        let absolute = |p: &str| {
            std::path::absolute(p)
                .ok()
                .and_then(|a| a.to_str().map(str::to_string))
        };
        if let ModelRef::Local(p) = ModelRef::of(plan.model.as_deref()) {
            if let Some(a) = p.to_str().and_then(absolute) {
                plan.model = Some(a);
            }
        }
        if let WeightsChoice::Dir(d) = &plan.weights {
            if let Some(a) = absolute(d) {
                plan.weights = WeightsChoice::Dir(a);
            }
        }
        let model = ModelRef::of(plan.model.as_deref());
        let download = plan.weights == WeightsChoice::Download;
        let (mut spec, snapshot) = model.load(plan.revision.as_deref(), download, quiet)?;
        if let Some(m) = plan.max_position {
            spec = spec.with_max_position(m)?;
        }
        // Refused before the run directory exists: candle's engines are Llamas, and a CPU
        // build has no CUDA device to open.
        crate::runner::check_runnable(&spec, plan.engine).map_err(BenchError::Run)?;
        if plan.device == DeviceChoice::Cuda && !cfg!(feature = "cuda") {
            return Err(BenchError::Run(crate::runner::RunError::Device(
                crate::runner::NO_CUDA.into(),
            ))
            .into());
        }
        let weights = match (&plan.weights, snapshot) {
            (WeightsChoice::Synthetic, _) => WeightsSource::Synthetic { seed: plan.seed },
            (WeightsChoice::Download, Some(dir)) => WeightsSource::Local(dir),
            (WeightsChoice::Download, None) => {
                return Err(PlanError::Needs {
                    field: crate::plan::Field::Weights,
                    needs: crate::plan::Need::HubModel,
                }
                .into())
            }
            (WeightsChoice::Dir(d), _) => WeightsSource::Local(PathBuf::from(d)),
        };
        let quant_layout = match (&weights, plan.engine) {
            (WeightsSource::Local(p), EngineProfile::CandleQuantized) => {
                Some(crate::runner::quantized::gguf_layout(&spec, p).map_err(BenchError::Run)?)
            }
            _ => None,
        };
        let out = out.unwrap_or_else(|| {
            PathBuf::from("runs").join(format!(
                "{}-{}",
                store::utc_stamp(std::time::SystemTime::now()),
                spec.name()
            ))
        });
        Ok(Sweep {
            plan,
            spec,
            weights,
            out,
            command: std::env::args().collect(),
            resume: false,
            stop: None,
            quant_layout,
        })
    }
}

/// The largest context whose prefill candle 0.11 can run on CUDA at batch `b`: its CUDA
/// kernels take element counts as u32 (`LaunchConfig::for_num_elems(el as u32)`), so the
/// attention scores (`b x heads x s x s` elements) must stay below 2^32. At exactly 2^32 the
/// launch fails (CUDA_ERROR_INVALID_VALUE); above it the count wraps and a kernel silently
/// covers part of the tensor (seen: a prefill that never finished).
pub fn cuda_element_limit_context(spec: &ModelSpec, batch: u64) -> u64 {
    let per_row = batch.max(1) * spec.num_heads.max(1);
    (u64::from(u32::MAX) / per_row).isqrt()
}

impl Sweep {
    /// The estimate of `w` for the plan's engine and settings on `backend`.
    pub fn estimate(&self, backend: Backend, w: Workload) -> estimate::Estimate {
        let mut knobs = self.plan.knobs();
        if backend == Backend::Cpu {
            // What candle's quantized kernels repack, and gemm's blocks, depend on this CPU.
            knobs.cpu_simd = crate::runner::quantized::cpu_simd();
            knobs.gemm_kc_max = crate::runner::gemm_kc_max();
        }
        if let Some(layout) = &self.quant_layout {
            return estimate::estimate_layout(
                &self.spec,
                self.plan.dtype,
                backend,
                w,
                layout,
                knobs.cpu_simd,
            );
        }
        estimate::estimate_with(
            &self.spec,
            self.plan.dtype,
            self.plan.engine,
            backend,
            w,
            &knobs,
        )
    }

    /// The largest context the plan's engine can run on CUDA at batch `b`, and why there:
    /// candle 0.11's CUDA kernels count elements in u32. The eager engine's attention scores
    /// grow with the square of the context ([`cuda_element_limit_context`]); the chunked
    /// engine's largest tensor is one layer's K (or V) cache, `b x kv_heads x capacity x
    /// head_dim`, whose capacity is the context plus the decode steps (or `--kv-capacity`).
    pub fn cuda_limit_context(&self, b: u64) -> (u64, String) {
        let spec = &self.spec;
        match self.plan.engine {
            EngineProfile::CandleChunked | EngineProfile::CandleFlash => {
                let per_position = b.max(1) * spec.num_kv_heads.max(1) * spec.head_dim.max(1);
                let positions = u64::from(u32::MAX) / per_position;
                let steps = self.plan.grid.decode_steps.max(1);
                let limit = match self.plan.kv_capacity {
                    Some(c) if c > positions => 0,
                    _ => positions.saturating_sub(steps),
                };
                (
                    limit,
                    format!(
                        "one layer's K cache (batch {b} x {} KV heads x {positions} positions x \
                         {} head_dim) would reach the 2^32 elements candle 0.11's CUDA kernels \
                         can address",
                        spec.num_kv_heads, spec.head_dim
                    ),
                )
            }
            _ => {
                let limit = cuda_element_limit_context(spec, b);
                (
                    limit,
                    format!(
                        "batch {b} x {} heads x context^2 attention scores exceed the 2^32 \
                         elements candle 0.11's CUDA kernels can address (largest context \
                         here: {limit})",
                        spec.num_heads
                    ),
                )
            }
        }
    }
}

/// Estimate, measure and store every point; `on_point` sees each record once stored.
///
/// # Errors
/// [`BenchError::Plan`] before anything is created; [`BenchError::Store`] when the output
/// directory cannot be created or written; [`BenchError::Run`] when the model cannot be
/// loaded or a forward pass fails for another reason than out-of-memory.
pub fn run(
    sweep: &Sweep,
    mut on_point: impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    sweep.plan.check()?;
    let workloads = sweep.plan.workloads(&sweep.spec)?;
    if sweep.plan.device == DeviceChoice::Cpu && !HostAllocProbe::installed() {
        return Err(BenchError::Options(
            "measuring on the CPU needs vramprobe::probe::host::CountingAlloc as the \
             process's #[global_allocator] (the vramprobe binary installs it)"
                .into(),
        ));
    }
    let over = memory_guard(sweep, &workloads)?;
    let (mut dir, done) = if sweep.resume {
        let (dir, stored) = RunDir::reopen(&sweep.out)?;
        let done: Done = stored
            .iter()
            .filter(|p| p.stage == Stage::Grid)
            .map(|p| (p.batch, p.context, p.phase))
            .collect();
        (dir, done)
    } else {
        (RunDir::create(&sweep.out)?, Done::new())
    };
    match sweep.plan.device {
        DeviceChoice::Cpu => run_cpu(sweep, &workloads, &done, &over, &mut dir, &mut on_point),
        DeviceChoice::Cuda => gpu::run(sweep, &workloads, &done, &over, &mut dir, &mut on_point),
    }
}

/// A point's estimated peak on the plan's device: the larger phase of inference, or the
/// largest phase of the training step.
pub fn estimated_peak_bytes(sweep: &Sweep, w: Workload) -> u64 {
    let (spec, plan) = (&sweep.spec, &sweep.plan);
    let backend = match plan.device {
        DeviceChoice::Cpu => Backend::Cpu,
        DeviceChoice::Cuda => Backend::Cuda,
    };
    match plan.mode {
        Mode::Inference => sweep.estimate(backend, w).total_bytes(),
        Mode::Train => candle_train::simulate_step(
            spec,
            plan.dtype,
            backend == Backend::Cpu,
            w.batch,
            w.context,
            plan.lora.as_ref(),
        )
        .total_bytes(),
    }
}

/// A point's estimated peak as NVML will see the process on a GPU: the tensors plus the
/// CUDA context, libraries and pool rounding (the H100 defaults: the run measures its own
/// only after the device is open).
pub fn estimated_process_bytes(sweep: &Sweep, w: Workload) -> u64 {
    let o = estimate::cuda::CudaOverheads::default();
    match sweep.plan.mode {
        Mode::Inference => {
            let e = sweep.estimate(Backend::Cuda, w);
            [estimate::Phase::Prefill, estimate::Phase::Decode]
                .into_iter()
                .map(|p| estimate::cuda::process(&e, p, 0, &o).total_bytes())
                .max()
                .unwrap_or(0)
        }
        Mode::Train => estimated_peak_bytes(sweep, w)
            .saturating_add(o.context_bytes)
            .saturating_add(o.libraries_bytes),
    }
}

/// What a GPU sweep may use, and where that figure comes from: `--memory-limit`, else the
/// free memory of device 0 as NVML reports it (None without NVML: no guard then).
fn gpu_available_bytes(sweep: &Sweep) -> Option<(u64, String)> {
    if let Some(limit) = sweep.plan.memory_limit {
        return Some((limit, "--memory-limit".into()));
    }
    let gpu = crate::probe::nvml::Gpu::open(0).ok()?;
    let free = gpu.memory().ok()?.free;
    Some((free, "NVML (free memory of GPU 0)".into()))
}

/// The memory guard for a sweep not started yet (the daemon asks it of every request):
/// [`BenchError::Options`] naming the points that cannot fit, unless `--over-memory skip`.
///
/// # Errors
/// [`BenchError::Plan`] for a grid the model refuses; [`BenchError::Options`] as above.
pub fn check_memory(sweep: &Sweep) -> Result<(), BenchError> {
    let workloads = sweep.plan.workloads(&sweep.spec)?;
    memory_guard(sweep, &workloads).map(drop)
}

/// The memory guard (CPU): the points whose estimate, with the margin, exceeds what this
/// process can take, by (batch, context), with the reason. With `--over-memory refuse` any
/// such point refuses the sweep before anything is created.
///
/// # Errors
/// [`BenchError::Options`] naming the points that cannot fit.
fn memory_guard(sweep: &Sweep, workloads: &[Workload]) -> Result<OverMemoryPoints, BenchError> {
    let mut over = OverMemoryPoints::new();
    if sweep.plan.over_memory == OverMemory::Run {
        return Ok(over); // on a GPU an out-of-memory point is a recorded result
    }
    let available = match sweep.plan.device {
        DeviceChoice::Cpu => crate::probe::host::available_bytes().map(|(b, s)| (b, s.to_string())),
        DeviceChoice::Cuda => gpu_available_bytes(sweep),
    };
    let Some((available, source)) = available else {
        return Ok(over);
    };
    for &w in workloads {
        let est = match sweep.plan.device {
            DeviceChoice::Cpu => estimated_peak_bytes(sweep, w),
            DeviceChoice::Cuda => estimated_process_bytes(sweep, w),
        };
        let need = est
            .saturating_mul(100 + MEMORY_MARGIN_PERCENT)
            .div_ceil(100)
            .saturating_add(MEMORY_MARGIN_BYTES);
        if need > available {
            over.insert(
                (w.batch, w.context),
                format!(
                    "batch {} x context {}: estimated {} (with the margin {}) exceeds the {} \
                     available by {source}",
                    w.batch,
                    w.context,
                    crate::report::bytes(est),
                    crate::report::bytes(need),
                    crate::report::bytes(available),
                ),
            );
        }
    }
    if sweep.plan.over_memory == OverMemory::Refuse && !over.is_empty() {
        let list: Vec<&str> = over.values().map(String::as_str).collect();
        return Err(BenchError::Options(format!(
            "{} of {} points cannot fit in memory, so nothing was run (--over-memory skip \
             records them as oom and measures the rest):\n  {}",
            over.len(),
            workloads.len(),
            list.join("\n  ")
        )));
    }
    Ok(over)
}

/// The CPU session: the counting allocator is the one probe.
fn run_cpu(
    sweep: &Sweep,
    workloads: &[Workload],
    done: &Done,
    over: &OverMemoryPoints,
    dir: &mut RunDir,
    on_point: &mut dyn FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    let accel = Arc::new(Accel::open(DeviceKind::Cpu)?);
    tracing::info!(model = %sweep.spec.name(), dtype = %sweep.plan.dtype, "loading weights");
    let model = Model::load(sweep, accel, &HostAllocProbe)?;
    let info = run_info(sweep, &model, "cpu".into(), None)?;
    dir.write_info(&info)?;
    let mut session = Session {
        sweep,
        info,
        model,
        probes: Probes::host(&HostAllocProbe),
        dir,
        done,
        over_memory: over.clone(),
        points: Vec::new(),
    };
    session.sweep(workloads, on_point)?;
    Ok(session.points)
}

#[cfg(test)]
mod tests {
    use super::record::Recorder;
    use super::*;
    use crate::estimate::cuda::CudaOverheads;
    use crate::estimate::{self, Backend, Phase, Workload};
    use crate::plan::Grid;
    use crate::runner::{PhaseFailure, PhaseMeasurement};
    use crate::spec::DType;
    use crate::store::{Environment, RunInfo, Status};

    fn fixture() -> (ModelSpec, RunInfo, estimate::Estimate, Workload) {
        let spec = ModelSpec::from_json_str(
            crate::TINY_CONFIG,
            std::path::Path::new(crate::TINY_CONFIG_PATH),
        )
        .expect("tiny config");
        let w = Workload {
            batch: 2,
            context: 256,
            decode_steps: 4,
        };
        let est = estimate::estimate(&spec, DType::BF16, DEFAULT_ENGINE, Backend::Cuda, w);
        let info = RunInfo {
            schema_version: 1,
            started_at: String::new(),
            command: vec![],
            model: spec.name(),
            model_config: spec.source.clone(),
            params: spec.param_count(),
            dtype: "bf16".into(),
            engine: DEFAULT_ENGINE.as_str().into(),
            device: "fake GPU".into(),
            weights: "synthetic".into(),
            grid: Grid {
                batches: vec![2],
                contexts: vec![256],
                decode_steps: 4,
            },
            environment: Environment::detect(),
            measured_weights_bytes: est.weights_bytes,
            warmup_residue_bytes: 1 << 20,
            gpu: None,
            settings: None,
            resumed_at: Vec::new(),
            train: None,
        };
        (spec, info, est, w)
    }

    /// Each source is compared with the estimate in its own terms: tensor bytes for the
    /// pool, tensor bytes plus the run's fixed overhead for NVML's process figure, which is
    /// the primary source on a GPU.
    #[test]
    fn sources_are_compared_in_their_own_terms() {
        let (_, info, est, w) = fixture();
        let weights = est.weights_bytes;
        let tensors = est.prefill.total_bytes();
        let fixed = 500 << 20;
        let probes = Probes {
            list: vec![],
            backend: Backend::Cuda,
            overheads: CudaOverheads {
                context_bytes: fixed,
                libraries_bytes: 0,
                pool_granule_bytes: 1,
                decode_slack_permille: 0,
            },
            residue: 0,
            device_before: 7 << 20,
            ballast: 0,
        };
        // Pool: 3 MiB in use at the start beyond the weights (the residue), peak 1% above
        // the estimate. NVML: absolute, 2% above tensors + fixed.
        let residue = 3 << 20;
        let pool_peak = residue + tensors + tensors / 100;
        let nvml_peak = (tensors + fixed) * 102 / 100;
        let m = PhaseMeasurement {
            peak_bytes: pool_peak - residue,
            raw: vec![
                ("cuda_pool", weights + residue, pool_peak),
                ("nvml_process", fixed + weights, nvml_peak),
            ],
            secs_per_forward: 0.5,
            tokens_per_sec: 1024.0,
            steps: Vec::new(),
        };
        let r = Recorder {
            info: &info,
            probes: &probes,
            measured_weights: weights,
        };
        let rec = r.inference(&est, w, Phase::Prefill, Ok(m));
        assert_eq!(rec.status, Status::Ok);
        assert_eq!(rec.source, "nvml_process");
        assert_eq!(rec.measured["cuda_pool"], tensors + tensors / 100);
        assert_eq!(rec.estimated_by_source["cuda_pool"], tensors);
        assert_eq!(rec.estimated_by_source["nvml_process"], tensors + fixed);
        assert_eq!(rec.measured_peak_bytes, nvml_peak);
        assert!(
            (rec.error_by_source["cuda_pool"] + 0.0099).abs() < 1e-3,
            "{rec:?}"
        );
        assert!((rec.error_ratio + 0.0196).abs() < 1e-3, "{rec:?}");
        // Above the weights comes from the allocator-exact source.
        assert_eq!(
            rec.measured_above_weights_bytes,
            tensors + tensors / 100 - weights
        );
    }

    /// An out-of-memory phase is a record with its estimate and nothing measured, and the
    /// tolerance check skips it.
    #[test]
    fn an_oom_phase_is_a_result() {
        let (_, info, est, w) = fixture();
        let probes = Probes {
            list: vec![],
            backend: Backend::Cuda,
            overheads: CudaOverheads {
                context_bytes: 1 << 29,
                libraries_bytes: 0,
                pool_granule_bytes: 1,
                decode_slack_permille: 0,
            },
            residue: 0,
            device_before: 0,
            ballast: 0,
        };
        let r = Recorder {
            info: &info,
            probes: &probes,
            measured_weights: est.weights_bytes,
        };
        let rec = r.inference(
            &est,
            w,
            Phase::Prefill,
            Err(PhaseFailure {
                oom: true,
                message: "CUDA_ERROR_OUT_OF_MEMORY".into(),
            }),
        );
        assert_eq!(rec.status, Status::Oom);
        assert!(rec.measured.is_empty());
        assert_eq!(
            rec.estimated_by_source["nvml_process"],
            est.prefill.total_bytes() + (1 << 29)
        );
        assert!(tolerance_violations(std::slice::from_ref(&rec), 0.01).is_empty());
        let line = serde_json::to_string(&rec).expect("serialise");
        let back: PointRecord = serde_json::from_str(&line).expect("read back");
        assert_eq!(back.status, Status::Oom);
        assert_eq!(back.message.as_deref(), Some("CUDA_ERROR_OUT_OF_MEMORY"));
        assert!(back.error_ratio.is_nan());
    }

    /// On a GPU the guard holds each point's estimated process peak (tensors, context,
    /// libraries) against `--memory-limit` (else NVML's free memory): `skip` records the
    /// points that cannot fit, `refuse` stops before anything runs, `run` (the GPU default)
    /// measures them all.
    #[test]
    fn the_gpu_guard_follows_the_flag() {
        let spec = ModelSpec::from_path(std::path::Path::new("models/meta-llama-3-8b-instruct"))
            .expect("llama config");
        let sweep = |over_memory| Sweep {
            plan: BenchPlan {
                model: Some("models/meta-llama-3-8b-instruct".into()),
                dtype: DType::BF16,
                device: DeviceChoice::Cuda,
                memory_limit: Some(20 << 30),
                over_memory,
                grid: Grid {
                    batches: vec![1],
                    contexts: vec![1024, 8000],
                    decode_steps: 8,
                },
                ..BenchPlan::default()
            },
            spec: spec.clone(),
            weights: WeightsSource::Synthetic { seed: 0 },
            out: PathBuf::from("unused"),
            command: vec![],
            resume: false,
            stop: None,
            quant_layout: None,
        };
        let s = sweep(OverMemory::Skip);
        let w = s.plan.workloads(&s.spec).expect("grid");
        let over = memory_guard(&s, &w).expect("skip");
        assert_eq!(over.keys().copied().collect::<Vec<_>>(), vec![(1, 8000)]);
        assert!(over[&(1, 8000)].contains("--memory-limit"), "{over:?}");
        // The 1024-token point fits: its process estimate is under the limit.
        assert!(estimated_process_bytes(&s, w[0]) < 20 << 30);
        assert!(estimated_process_bytes(&s, w[1]) > 20 << 30);
        let e = memory_guard(&sweep(OverMemory::Refuse), &w).expect_err("refuse");
        assert!(e.to_string().contains("1 of 2 points cannot fit"), "{e}");
        assert!(memory_guard(&sweep(OverMemory::Run), &w)
            .expect("run")
            .is_empty());
        // `run` is the GPU's default and refused on the CPU.
        assert_eq!(OverMemory::default_for(DeviceChoice::Cuda), OverMemory::Run);
        let cpu = BenchPlan {
            over_memory: OverMemory::Run,
            ..BenchPlan::default()
        };
        assert!(cpu
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("--over-memory needs a GPU"));
    }

    /// Measured on an H100: Llama-3-8B (32 heads) at batch 2 x 8192 (exactly 2^32 score
    /// elements) failed with CUDA_ERROR_INVALID_VALUE, and batch 1 x 14334 never finished.
    #[test]
    fn element_limit_keeps_scores_below_2_pow_32() {
        let spec = ModelSpec::from_path(std::path::Path::new("models/meta-llama-3-8b-instruct"))
            .expect("llama config");
        for b in [1u64, 2, 4, 8, 3] {
            let s = cuda_element_limit_context(&spec, b);
            assert!(b * 32 * s * s <= u64::from(u32::MAX), "b {b} s {s}");
            assert!(
                b * 32 * (s + 1) * (s + 1) > u64::from(u32::MAX),
                "b {b} s {s}"
            );
        }
        assert_eq!(cuda_element_limit_context(&spec, 1), 11585);
        assert!(cuda_element_limit_context(&spec, 2) < 8192);
    }
}
