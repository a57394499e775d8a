//! One-shot benchmark: estimate and measure every point of a grid, append each to the run
//! directory as it completes.
//!
//! Sources and what each is compared with (all in `estimated_by_source`/`error_by_source`):
//! - `host_alloc` (CPU) and `cuda_pool` (CUDA, allocator-exact): tensor bytes, weights
//!   included, the run's one-off runtime buffers excluded; against the estimate's total.
//! - `nvml_process` (CUDA, the primary source there: what nvidia-smi shows): the process's
//!   whole device memory; against the estimate's total plus this run's measured fixed
//!   overhead (CUDA context, kernels, library workspaces, pool slack after warm-up).
//! - `cuda_pool_reserved` and `nvml_device`: recorded raw, compared likewise (the device's
//!   figure includes other processes' memory before ours).

use crate::estimate::candle_train::{self, LoraSetup, TrainPhase};
use crate::estimate::cuda::{self as cuda_est, CudaOverheads};
use crate::estimate::{self, Backend, EngineProfile, Phase, Workload};
use crate::plan::{Grid, PlanError};
use crate::probe::host::HostAllocProbe;
use crate::probe::MemoryProbe;
use crate::runner::train::TrainRunner;
use crate::runner::{
    Accel, DeviceKind, PhaseFailure, PhaseMeasurement, RunError, Runner, WeightsSource,
};
use crate::spec::{DType, ModelSpec};
use crate::store::{self, Environment, GpuRun, PointRecord, RunDir, RunInfo, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    /// A combination of options that cannot work (e.g. a boundary search on the CPU).
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

/// (batch, context, phase) of the grid points already stored.
type Done = BTreeSet<(u64, u64, String)>;

/// What to bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub spec: ModelSpec,
    pub dtype: DType,
    pub grid: Grid,
    pub weights: WeightsSource,
    pub out: PathBuf,
    /// The command line, recorded in run.json.
    pub command: Vec<String>,
    pub device: DeviceKind,
    /// NVML sampler rate (CUDA only).
    pub nvml_hz: u32,
    /// After the grid, bisect per batch the largest context that fits (CUDA only), to this
    /// many tokens.
    pub find_boundary: Option<u64>,
    /// Measure as if the card had this many bytes for this process (CUDA only): the rest
    /// of the free memory is taken by a ballast allocation outside the pool, and subtracted
    /// from NVML's figures.
    pub memory_limit: Option<u64>,
    /// The options as given, recorded in run.json for `--resume`.
    pub settings: Option<store::BenchSettings>,
    /// Append to the existing run in `out` (same grid and settings), measuring only the
    /// phases it lacks.
    pub resume: bool,
    /// Set (by SIGINT/SIGTERM) to stop after the point being measured.
    pub stop: Option<Arc<AtomicBool>>,
    /// Measure training steps instead of inference (`--mode train`).
    pub train: Option<TrainOptions>,
}

/// `bench --mode train`: a full fine-tune, or LoRA adapters on a frozen model.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub lora: Option<LoraSetup>,
}

/// The loaded model: for inference, or with trainable variables.
enum Model {
    Infer(Runner),
    Train(TrainRunner),
}

impl Model {
    fn load(
        opts: &BenchOptions,
        accel: Arc<Accel>,
        probe: &dyn MemoryProbe,
    ) -> Result<Self, RunError> {
        Ok(match &opts.train {
            None => Model::Infer(Runner::load(
                &opts.spec,
                opts.dtype,
                &opts.weights,
                accel,
                probe,
            )?),
            Some(t) => Model::Train(TrainRunner::load(
                &opts.spec,
                opts.dtype,
                &opts.weights,
                t.lora.as_ref(),
                accel,
                probe,
            )?),
        })
    }

    fn weights_bytes(&self) -> u64 {
        match self {
            Model::Infer(r) => r.weights_bytes,
            Model::Train(r) => r.weights_bytes,
        }
    }

    fn warmup_residue_bytes(&self) -> u64 {
        match self {
            Model::Infer(r) => r.warmup_residue_bytes,
            Model::Train(r) => r.warmup_residue_bytes,
        }
    }

    /// The phases recorded per point, by name.
    fn phases(&self) -> Vec<&'static str> {
        match self {
            Model::Infer(_) => vec![Phase::Prefill.as_str(), Phase::Decode.as_str()],
            Model::Train(_) => TrainPhase::ALL.iter().map(|p| p.as_str()).collect(),
        }
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

/// The engine the runner executes and the estimate models.
pub const ENGINE: EngineProfile = EngineProfile::CandleEager;

/// One batch's out-of-memory boundary: measured by bisection, predicted by the estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boundary {
    pub batch: u64,
    /// Largest context measured to fit (prefill and decode), if any.
    pub measured_max_context: Option<u64>,
    /// Smallest context measured to run out of memory, if any (None: fits up to the limit).
    pub measured_first_oom_context: Option<u64>,
    /// Largest context the estimate says fits in the memory that was free before our
    /// context existed.
    pub predicted_max_context: Option<u64>,
    /// The bisection's resolution in tokens.
    pub step: u64,
    /// The largest context that can run here, and what sets it (`positions`: the rope
    /// tables; `candle_u32_elements`: see [`cuda_element_limit_context`]).
    pub limit_context: u64,
    pub limit_reason: String,
    /// The free memory the prediction used.
    pub capacity_bytes: u64,
}

struct Probes<'a> {
    list: Vec<&'a dyn MemoryProbe>,
    backend: Backend,
    /// The process terms beyond the tensors (GPU only): the context and libraries as
    /// measured in this run, the pool model's defaults.
    overheads: CudaOverheads,
    /// What the warm-up left in the pool.
    residue: u64,
    /// Device used before our context (GPU only).
    device_before: u64,
    /// Ballast of `--memory-limit`, subtracted from NVML's figures (GPU only).
    ballast: u64,
}

/// Estimate, measure and store every point; `on_point` sees each record once stored.
///
/// # Errors
/// [`BenchError::Plan`] before anything is created; [`BenchError::Store`] when the output
/// directory cannot be created or written; [`BenchError::Run`] when the model cannot be
/// loaded or a forward pass fails for another reason than out-of-memory.
pub fn run(
    opts: &BenchOptions,
    mut on_point: impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    let workloads = opts.grid.workloads(&opts.spec)?;
    if opts.find_boundary.is_some() && opts.device == DeviceKind::Cpu {
        return Err(BenchError::Options(
            "--find-boundary needs a GPU (--device cuda): on the CPU an allocation failure \
             aborts the process instead of failing one point"
                .into(),
        ));
    }
    if opts.train.is_some() && opts.find_boundary.is_some() {
        return Err(BenchError::Options(
            "--find-boundary is for inference; with --mode train the grid's out-of-memory \
             points are the boundary"
                .into(),
        ));
    }
    if opts.memory_limit.is_some() && opts.device == DeviceKind::Cpu {
        return Err(BenchError::Options(
            "--memory-limit needs a GPU (--device cuda)".into(),
        ));
    }
    let (mut dir, done) = if opts.resume {
        let (dir, stored) = RunDir::reopen(&opts.out)?;
        let done: Done = stored
            .iter()
            .filter(|p| p.stage == "grid")
            .map(|p| (p.batch, p.context, p.phase.clone()))
            .collect();
        (dir, done)
    } else {
        (RunDir::create(&opts.out)?, Done::new())
    };
    match opts.device {
        DeviceKind::Cpu => {
            let accel = Arc::new(Accel::open(DeviceKind::Cpu)?);
            tracing::info!(model = %opts.spec.name(), dtype = %opts.dtype, "loading weights");
            let runner = Model::load(opts, accel, &HostAllocProbe)?;
            let info = resumed(opts, run_info(opts, &runner, "cpu".into(), None))?;
            dir.write_info(&info)?;
            let probes = Probes {
                list: vec![&HostAllocProbe],
                backend: Backend::Cpu,
                overheads: CudaOverheads::default(),
                residue: 0,
                device_before: 0,
                ballast: 0,
            };
            sweep(
                opts,
                &info,
                &runner,
                &probes,
                &workloads,
                &done,
                &mut dir,
                &mut on_point,
            )
        }
        DeviceKind::Cuda(i) => run_cuda(opts, i, &workloads, &done, &mut dir, &mut on_point),
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(
    _opts: &BenchOptions,
    i: usize,
    _workloads: &[Workload],
    _done: &Done,
    _dir: &mut RunDir,
    _on_point: &mut impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    Ok(Accel::open(DeviceKind::Cuda(i)).map(|_| Vec::new())?)
}

#[cfg(feature = "cuda")]
fn run_cuda(
    opts: &BenchOptions,
    index: usize,
    workloads: &[Workload],
    done: &Done,
    dir: &mut RunDir,
    on_point: &mut impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    use crate::probe::cuda_pool::PoolReserved;
    use crate::probe::nvml::{Gpu, Sampler};
    use std::collections::BTreeSet;

    // Baselines before our context: NVML only (no CUDA call yet).
    let gpu = Gpu::open(index as u32);
    if let Err(e) = &gpu {
        tracing::warn!(error = %e, "measuring with the memory pool only");
    }
    let gpu = gpu.ok();
    let info_gpu = gpu.as_ref().and_then(|g| g.info().ok());
    let before_mem = gpu.as_ref().and_then(|g| g.memory().ok());
    let pids_before: BTreeSet<u32> = gpu
        .as_ref()
        .and_then(|g| g.processes().ok())
        .map(|l| l.into_iter().map(|(p, _)| p).collect())
        .unwrap_or_default();

    let accel = Arc::new(Accel::open(DeviceKind::Cuda(index))?);
    let pool = accel
        .pool()
        .ok_or_else(|| RunError::Device("no memory pool on this device".into()))?;
    let sampler = gpu.map(|g| Sampler::start(g, opts.nvml_hz, pids_before));
    let after_context = sampler.as_ref().map_or(0, |s| s.sample_now().0);
    // --memory-limit: leave this process `limit` bytes in all (context included).
    let ballast = match opts.memory_limit {
        None => None,
        Some(limit) => {
            let (free, _) = pool.mem_free_total();
            let keep = limit.checked_sub(after_context).ok_or_else(|| {
                BenchError::Options(format!(
                    "--memory-limit {limit}: the CUDA context alone takes {after_context} bytes"
                ))
            })?;
            let take = free.checked_sub(keep).ok_or_else(|| {
                BenchError::Options(format!(
                    "--memory-limit {limit}: only {free} bytes are free beside the context"
                ))
            })?;
            Some(pool.ballast(take).map_err(|e| {
                BenchError::Options(format!(
                    "--memory-limit {limit}: ballast of {take} bytes: {e}"
                ))
            })?)
        }
    };
    let ballast_bytes = ballast.as_ref().map_or(0, |b| b.bytes());
    let process_now = || {
        sampler
            .as_ref()
            .map_or(0, |s| s.sample_now().0.saturating_sub(ballast_bytes))
    };

    tracing::info!(model = %opts.spec.name(), dtype = %opts.dtype, "loading weights");
    let model = Model::load(opts, accel.clone(), pool)?;
    // Runner::load warms up after loading: the weights figure is the pool's, the process
    // figures below are after warm-up.
    let after_weights = process_now();
    accel.settle();
    let after_warmup = process_now();
    let stats = pool.stats();
    let fixed_overhead = after_warmup.saturating_sub(model.weights_bytes());
    // Everything of the process outside the pool: context, kernels, library workspaces.
    let nonpool = after_warmup.saturating_sub(stats.reserved);
    let gpu_run = GpuRun {
        info: info_gpu.clone(),
        pid_match: sampler.as_ref().map(|s| s.pid_match()),
        nvml_hz: opts.nvml_hz,
        nvml_samples: 0,
        device_used_before_context_bytes: before_mem.map_or(0, |m| m.used),
        device_free_before_context_bytes: before_mem.map_or(0, |m| m.free),
        process_after_context_bytes: after_context,
        process_after_weights_bytes: after_weights,
        process_after_warmup_bytes: after_warmup,
        pool_used_after_warmup_bytes: stats.used,
        pool_reserved_after_warmup_bytes: stats.reserved,
        fixed_overhead_bytes: fixed_overhead,
        memory_limit_bytes: opts.memory_limit,
        ballast_bytes,
    };
    let device_name = info_gpu
        .as_ref()
        .map_or_else(|| format!("cuda:{index}"), |g| g.name.clone());
    let mut info = resumed(opts, run_info(opts, &model, device_name, Some(gpu_run)))?;
    dir.write_info(&info)?;
    let overheads = CudaOverheads {
        context_bytes: after_context,
        libraries_bytes: nonpool.saturating_sub(after_context),
        ..CudaOverheads::default()
    };
    write_calibration(dir, &info, &overheads)?;

    let reserved = PoolReserved(pool);
    let mut list: Vec<&dyn MemoryProbe> = vec![pool, &reserved];
    let (proc_probe, dev_probe) = match &sampler {
        Some(s) => (Some(s.process_probe()), Some(s.device_probe())),
        None => (None, None),
    };
    if let (Some(p), Some(d)) = (&proc_probe, &dev_probe) {
        list.push(p);
        list.push(d);
    }
    let probes = Probes {
        list,
        backend: Backend::Cuda,
        overheads,
        residue: model.warmup_residue_bytes(),
        device_before: before_mem.map_or(0, |m| m.used),
        ballast: ballast_bytes,
    };
    let mut points = sweep(opts, &info, &model, &probes, workloads, done, dir, on_point)?;

    if let (Some(step), Model::Infer(runner)) = (opts.find_boundary, &model) {
        let capacity = opts
            .memory_limit
            .unwrap_or_else(|| before_mem.map_or_else(|| pool.mem_free_total().0, |m| m.free));
        let mut boundaries = Vec::new();
        for &b in &opts.grid.batches {
            let bd = find_boundary(
                opts,
                &info,
                runner,
                &probes,
                b,
                step,
                capacity,
                &mut points,
                dir,
                on_point,
            )?;
            tracing::info!(?bd, "boundary");
            boundaries.push(bd);
            write_json(dir, "boundary.json", &boundaries)?;
        }
    }
    if let (Some(s), Some(g)) = (&sampler, info.gpu.as_mut()) {
        g.nvml_samples = s.samples();
        g.pid_match = Some(s.pid_match());
        dir.write_info(&info)?;
    }
    drop(ballast);
    Ok(points)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn write_json<T: Serialize>(dir: &RunDir, name: &str, v: &T) -> Result<(), StoreError> {
    let path = dir.path().join(name);
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| StoreError::Io { path, source })
}

/// `calibration.json`: the measured fixed terms of this GPU, driver and build, for
/// `estimate --calibration`.
#[cfg(feature = "cuda")]
fn write_calibration(dir: &RunDir, info: &RunInfo, o: &CudaOverheads) -> Result<(), StoreError> {
    let Some(g) = &info.gpu else { return Ok(()) };
    let v = serde_json::json!({
        "schema_version": 1,
        "gpu": g.info,
        "candle_version": info.environment.candle_version,
        "vramprobe_version": info.environment.vramprobe_version,
        "overheads": o,
        "pool_residue_bytes": info.warmup_residue_bytes,
        "device_used_before_context_bytes": g.device_used_before_context_bytes,
    });
    write_json(dir, "calibration.json", &v)
}

/// For a resumed run: the original start time, and this resumption added to the list.
fn resumed(opts: &BenchOptions, mut info: RunInfo) -> Result<RunInfo, StoreError> {
    if opts.resume {
        let old = RunDir::read_info(&opts.out)?;
        info.resumed_at = old.resumed_at;
        info.resumed_at
            .push(std::mem::replace(&mut info.started_at, old.started_at));
    }
    Ok(info)
}

fn run_info(opts: &BenchOptions, runner: &Model, device: String, gpu: Option<GpuRun>) -> RunInfo {
    RunInfo {
        schema_version: 1,
        started_at: store::utc_rfc3339(std::time::SystemTime::now()),
        command: opts.command.clone(),
        model: opts.spec.name(),
        model_config: opts.spec.source.clone(),
        params: opts.spec.param_count(),
        dtype: opts.dtype.to_string(),
        engine: ENGINE.as_str().into(),
        device,
        weights: opts.weights.describe(),
        grid: opts.grid.clone(),
        environment: Environment::detect(),
        measured_weights_bytes: runner.weights_bytes(),
        warmup_residue_bytes: runner.warmup_residue_bytes(),
        train: match (runner, &opts.train) {
            (Model::Train(t), Some(o)) => Some(store::TrainInfo {
                optimizer: "adamw".into(),
                optimizer_note: "candle-nn 0.11 AdamW: first and second moments in the \
                                 parameters' dtype"
                    .into(),
                lora: o.lora.clone(),
                trainable_params: t.trainable_params,
            }),
            _ => None,
        },
        gpu,
        settings: opts.settings.clone(),
        resumed_at: Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    opts: &BenchOptions,
    info: &RunInfo,
    runner: &Model,
    probes: &Probes<'_>,
    workloads: &[Workload],
    done: &Done,
    dir: &mut RunDir,
    on_point: &mut impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    let phases = runner.phases();
    let mut points = Vec::with_capacity(workloads.len() * phases.len());
    let is_done = |w: &Workload, p: &str| done.contains(&(w.batch, w.context, p.to_string()));
    for (i, &w) in workloads.iter().enumerate() {
        if phases.iter().all(|&p| is_done(&w, p)) {
            continue; // stored by the run being resumed
        }
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            let total = workloads.len() * phases.len();
            let remaining: usize = workloads[i..]
                .iter()
                .map(|w| phases.iter().filter(|&&p| !is_done(w, p)).count())
                .sum();
            return Err(BenchError::Interrupted {
                stored: total - remaining,
                total,
                dir: dir.path().display().to_string(),
            });
        }
        let recs = match runner {
            Model::Infer(r) => measure(opts, info, r, probes, w, "grid")?,
            Model::Train(t) => measure_train(opts, info, t, probes, w)?,
        };
        for rec in recs {
            // A resumed run may hold one phase of this point already: never store it twice.
            if done.contains(&(rec.batch, rec.context, rec.phase.clone())) {
                continue;
            }
            dir.append(&rec)?;
            on_point(&rec);
            points.push(rec);
        }
    }
    Ok(points)
}

/// Measure one workload and turn it into its two records.
fn measure(
    opts: &BenchOptions,
    info: &RunInfo,
    runner: &Runner,
    probes: &Probes<'_>,
    w: Workload,
    stage: &str,
) -> Result<Vec<PointRecord>, BenchError> {
    let est = estimate::estimate(&opts.spec, opts.dtype, ENGINE, probes.backend, w);
    if probes.backend == Backend::Cuda
        && w.context > cuda_element_limit_context(&opts.spec, w.batch)
    {
        let message = format!(
            "not run: batch {} x {} heads x context {}^2 attention scores exceed the 2^32 \
             elements candle 0.11's CUDA kernels can address (largest context here: {})",
            w.batch,
            opts.spec.num_heads,
            w.context,
            cuda_element_limit_context(&opts.spec, w.batch)
        );
        tracing::warn!("{message}");
        return Ok([Phase::Prefill, Phase::Decode]
            .into_iter()
            .map(|phase| {
                let failure = PhaseFailure {
                    oom: false,
                    message: message.clone(),
                };
                let mut rec = record(info, &est, w, phase, Err(failure), probes, 0);
                rec.stage = stage.into();
                rec
            })
            .collect());
    }
    tracing::info!(batch = w.batch, context = w.context, stage, "measuring");
    let m = runner.run_point(w, &probes.list)?;
    Ok([(Phase::Prefill, m.prefill), (Phase::Decode, m.decode)]
        .into_iter()
        .map(|(phase, measured)| {
            let mut rec = record(info, &est, w, phase, measured, probes, runner.weights_bytes);
            rec.stage = stage.into();
            rec
        })
        .collect())
}

/// Measure two training steps of one workload and turn them into one record per phase
/// ([`TrainPhase::ALL`]).
fn measure_train(
    opts: &BenchOptions,
    info: &RunInfo,
    runner: &TrainRunner,
    probes: &Probes<'_>,
    w: Workload,
) -> Result<Vec<PointRecord>, BenchError> {
    let lora = opts.train.as_ref().and_then(|t| t.lora.as_ref());
    let est = candle_train::estimate(
        &opts.spec,
        opts.dtype,
        probes.backend == Backend::Cpu,
        w.batch,
        w.context,
        lora,
    );
    let w = Workload {
        decode_steps: 0,
        ..w
    };
    let too_big = probes.backend == Backend::Cuda
        && w.context > cuda_element_limit_context(&opts.spec, w.batch);
    let mut m = if too_big {
        None
    } else {
        tracing::info!(
            batch = w.batch,
            context = w.context,
            "measuring a training step"
        );
        Some(runner.run_point(w.batch, w.context, &probes.list)?)
    };
    let weights = est.forward.get(candle_train::Part::Weights);
    let failed_oom = m.as_ref().is_some_and(|m| {
        m.phases
            .iter()
            .any(|(_, r)| r.as_ref().is_err_and(|f| f.oom))
    });
    Ok(TrainPhase::ALL
        .into_iter()
        .map(|phase| {
            let parts = est.phase(phase);
            // The process beyond the tensors: context, libraries, the warm-up's residue
            // (the pool's rounding is not modelled for training).
            let process = parts.total()
                + probes.overheads.context_bytes
                + probes.overheads.libraries_bytes
                + probes.residue;
            let e = PointEstimate {
                tensors: parts.total(),
                weights,
                components: parts.to_map(),
                pool_reserved: parts.total() + probes.residue,
                process,
            };
            let measured = match m.as_mut() {
                None => Err(PhaseFailure {
                    oom: false,
                    message: format!(
                        "not run: batch {} x {} heads x context {}^2 attention scores exceed \
                         the 2^32 elements candle 0.11's CUDA kernels can address",
                        w.batch, opts.spec.num_heads, w.context
                    ),
                }),
                Some(m) => match m.phases.iter().position(|(p, _)| *p == phase) {
                    Some(i) => m.phases.remove(i).1,
                    None => Err(PhaseFailure {
                        oom: failed_oom,
                        message: "not run: an earlier phase of the step failed".into(),
                    }),
                },
            };
            record_with(
                info,
                w,
                phase.as_str(),
                &e,
                measured,
                probes,
                runner.weights_bytes,
            )
        })
        .collect())
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// Whether both phases of a workload fit.
fn fits(recs: &[PointRecord]) -> bool {
    recs.iter().all(|r| r.status == "ok")
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// The estimate of what `nvml_process` will show at the peak of a workload.
fn estimated_process_bytes(opts: &BenchOptions, probes: &Probes<'_>, w: Workload) -> u64 {
    let e = estimate::estimate(&opts.spec, opts.dtype, ENGINE, probes.backend, w);
    [Phase::Prefill, Phase::Decode]
        .into_iter()
        .map(|p| cuda_est::process(&e, p, probes.residue, &probes.overheads).total_bytes())
        .max()
        .unwrap_or(0)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// Bisect the largest context that fits at batch `b`, between the grid's last fitting
/// context and its first out-of-memory one (or the position limit).
#[allow(clippy::too_many_arguments)]
fn find_boundary(
    opts: &BenchOptions,
    info: &RunInfo,
    runner: &Runner,
    probes: &Probes<'_>,
    b: u64,
    step: u64,
    capacity: u64,
    points: &mut Vec<PointRecord>,
    dir: &mut RunDir,
    on_point: &mut impl FnMut(&PointRecord),
) -> Result<Boundary, BenchError> {
    let steps = opts.grid.decode_steps;
    let positions = opts
        .spec
        .max_position_embeddings
        .saturating_sub(steps.max(1));
    let elements = if probes.backend == Backend::Cuda {
        cuda_element_limit_context(&opts.spec, b)
    } else {
        u64::MAX
    };
    let (limit, limit_reason) = if elements < positions {
        (elements, "candle_u32_elements")
    } else {
        (positions, "positions")
    };
    let workload = |c: u64| Workload {
        batch: b,
        context: c,
        decode_steps: steps,
    };
    // Predicted: the largest context whose estimate fits in the free memory.
    let predicted = crate::estimate::fit::largest(2, limit, |c| {
        estimated_process_bytes(opts, probes, workload(c)) <= capacity
    });
    // Measured: start from the grid's results at this batch.
    let grid_fit = |c: u64| -> Option<bool> {
        let recs: Vec<PointRecord> = points
            .iter()
            .filter(|p| p.batch == b && p.context == c)
            .cloned()
            .collect();
        if recs.is_empty() || recs.iter().any(|r| r.status == "error") {
            return None; // not measured, or refused for another reason than memory
        }
        Some(fits(&recs))
    };
    let mut lo: Option<u64> = None;
    let mut hi: Option<u64> = None;
    for &c in &opts.grid.contexts {
        match grid_fit(c) {
            Some(true) => lo = Some(lo.map_or(c, |l: u64| l.max(c))),
            Some(false) => hi = Some(hi.map_or(c, |h: u64| h.min(c))),
            None => {}
        }
    }
    let mut probe =
        |c: u64, points: &mut Vec<PointRecord>, dir: &mut RunDir| -> Result<bool, BenchError> {
            let recs = measure(opts, info, runner, probes, workload(c), "boundary")?;
            let ok = fits(&recs);
            for rec in recs {
                dir.append(&rec)?;
                on_point(&rec);
                points.push(rec);
            }
            Ok(ok)
        };
    if hi.is_none() {
        // Everything in the grid fitted: try the limit itself.
        let top = lo.unwrap_or(2).max(2);
        if top < limit {
            if probe(limit, points, dir)? {
                lo = Some(limit);
            } else {
                hi = Some(limit);
                lo = Some(top);
            }
        }
    }
    if let Some(mut h) = hi {
        let mut l = lo.unwrap_or(1);
        if l > h {
            l = 1;
        }
        while h - l > step.max(1) {
            let mid = l + (h - l) / 2;
            if probe(mid, points, dir)? {
                l = mid;
            } else {
                h = mid;
            }
        }
        lo = (l >= 2).then_some(l);
        hi = Some(h);
    }
    Ok(Boundary {
        batch: b,
        measured_max_context: lo,
        measured_first_oom_context: hi,
        predicted_max_context: predicted,
        step,
        limit_context: limit,
        limit_reason: limit_reason.into(),
        capacity_bytes: capacity,
    })
}

/// Points whose total or above-the-weights error exceeds `max_error` in absolute value.
///
/// The above-the-weights error is checked only where that part is at least a tenth of the
/// weights: below that a few KiB of allocator bookkeeping dominate the ratio. Points that
/// ran out of memory have nothing measured and are not checked.
pub fn tolerance_violations(points: &[PointRecord], max_error: f64) -> Vec<&PointRecord> {
    // NaN is never within tolerance.
    let within = |r: f64| r.abs() <= max_error;
    points
        .iter()
        .filter(|p| p.status == "ok")
        .filter(|p| {
            let above_matters = p.measured_above_weights_bytes * 10
                >= p.measured_peak_bytes - p.measured_above_weights_bytes;
            !within(p.error_ratio) || (above_matters && !within(p.above_weights_error_ratio))
        })
        .collect()
}

fn record(
    info: &RunInfo,
    est: &estimate::Estimate,
    w: Workload,
    phase: Phase,
    m: Result<PhaseMeasurement, PhaseFailure>,
    probes: &Probes<'_>,
    measured_weights: u64,
) -> PointRecord {
    let pe = est.phase(phase);
    let process = cuda_est::process(est, phase, probes.residue, &probes.overheads);
    let e = PointEstimate {
        tensors: pe.total_bytes(),
        weights: est.weights_bytes,
        components: pe
            .peak
            .to_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        pool_reserved: process.pool_reserved_bytes,
        process: process.total_bytes(),
    };
    record_with(info, w, phase.as_str(), &e, m, probes, measured_weights)
}

/// One phase's estimate in every source's terms.
struct PointEstimate {
    /// Tensor bytes at the peak (weights included): the allocator-exact sources' terms.
    tensors: u64,
    weights: u64,
    components: BTreeMap<String, u64>,
    /// What the CUDA pool holds reserved at the peak.
    pool_reserved: u64,
    /// The whole process as NVML sees it.
    process: u64,
}

fn record_with(
    info: &RunInfo,
    w: Workload,
    phase: &str,
    e: &PointEstimate,
    m: Result<PhaseMeasurement, PhaseFailure>,
    probes: &Probes<'_>,
    measured_weights: u64,
) -> PointRecord {
    let estimated = e.tensors;
    let est_above = estimated.saturating_sub(e.weights);
    let mut rec = PointRecord {
        model: info.model.clone(),
        dtype: info.dtype.clone(),
        engine: info.engine.clone(),
        device: info.device.clone(),
        batch: w.batch,
        context: w.context,
        phase: phase.into(),
        decode_steps: w.decode_steps,
        estimated_bytes: estimated,
        estimated_components: e.components.clone(),
        measured_peak_bytes: 0,
        source: String::new(),
        measured: BTreeMap::new(),
        error_ratio: f64::NAN,
        estimated_above_weights_bytes: est_above,
        measured_above_weights_bytes: 0,
        above_weights_error_ratio: f64::NAN,
        secs_per_forward: 0.0,
        tokens_per_sec: 0.0,
        status: "ok".into(),
        estimated_by_source: BTreeMap::new(),
        error_by_source: BTreeMap::new(),
        stage: "grid".into(),
        message: None,
    };
    let m = match m {
        Ok(m) => m,
        Err(f) => {
            rec.status = if f.oom { "oom" } else { "error" }.into();
            rec.message = Some(f.message);
            if probes.backend == Backend::Cuda {
                rec.estimated_by_source
                    .insert("nvml_process".into(), e.process);
            }
            return rec;
        }
    };
    // Per source: the measured figure in that source's terms, and the estimate in the same.
    for &(name, start, peak) in &m.raw {
        let (measured, est_src) = match name {
            // Tensor bytes: the peak above what was in use at the start, plus the weights.
            "host_alloc" | "cuda_pool" => (
                peak.saturating_sub(start.saturating_sub(measured_weights)),
                estimated,
            ),
            "cuda_pool_reserved" => (peak, e.pool_reserved),
            "nvml_process" => (peak.saturating_sub(probes.ballast), e.process),
            "nvml_device" => (
                peak.saturating_sub(probes.ballast),
                e.process + probes.device_before,
            ),
            _ => (peak, estimated),
        };
        rec.measured.insert(name.to_string(), measured);
        rec.estimated_by_source.insert(name.to_string(), est_src);
        let err = store::error_ratio(est_src, measured);
        if err.is_finite() {
            rec.error_by_source.insert(name.to_string(), err);
        }
    }
    // The primary source: nvml_process where NVML answers, else the allocator.
    let primary = ["nvml_process", "host_alloc", "cuda_pool"]
        .into_iter()
        .find(|n| rec.measured.get(*n).is_some_and(|&v| v > 0))
        .unwrap_or(m.raw[0].0);
    rec.source = primary.into();
    rec.measured_peak_bytes = rec.measured.get(primary).copied().unwrap_or(0);
    rec.estimated_bytes = rec
        .estimated_by_source
        .get(primary)
        .copied()
        .unwrap_or(estimated);
    rec.error_ratio = store::error_ratio(rec.estimated_bytes, rec.measured_peak_bytes);
    // Above the weights: always from the allocator-exact source (probes[0]).
    let exact = m.peak_bytes;
    rec.measured_above_weights_bytes = exact.saturating_sub(measured_weights);
    rec.above_weights_error_ratio = store::error_ratio(est_above, rec.measured_above_weights_bytes);
    if primary != m.raw[0].0 {
        // Keep measured_peak - measured_above = the primary's non-activation part.
        rec.measured_above_weights_bytes = rec
            .measured_above_weights_bytes
            .min(rec.measured_peak_bytes);
    }
    rec.secs_per_forward = m.secs_per_forward;
    rec.tokens_per_sec = m.tokens_per_sec;
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let est = estimate::estimate(&spec, DType::BF16, ENGINE, Backend::Cuda, w);
        let info = RunInfo {
            schema_version: 1,
            started_at: String::new(),
            command: vec![],
            model: spec.name(),
            model_config: spec.source.clone(),
            params: spec.param_count(),
            dtype: "bf16".into(),
            engine: ENGINE.as_str().into(),
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
        };
        let rec = record(&info, &est, w, Phase::Prefill, Ok(m), &probes, weights);
        assert_eq!(rec.status, "ok");
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
        let rec = record(
            &info,
            &est,
            w,
            Phase::Prefill,
            Err(PhaseFailure {
                oom: true,
                message: "CUDA_ERROR_OUT_OF_MEMORY".into(),
            }),
            &probes,
            est.weights_bytes,
        );
        assert_eq!(rec.status, "oom");
        assert!(rec.measured.is_empty());
        assert_eq!(
            rec.estimated_by_source["nvml_process"],
            est.prefill.total_bytes() + (1 << 29)
        );
        assert!(tolerance_violations(std::slice::from_ref(&rec), 0.01).is_empty());
        let line = serde_json::to_string(&rec).expect("serialise");
        let back: PointRecord = serde_json::from_str(&line).expect("read back");
        assert_eq!(back.status, "oom");
        assert_eq!(back.message.as_deref(), Some("CUDA_ERROR_OUT_OF_MEMORY"));
        assert!(back.error_ratio.is_nan());
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
