//! The GPU session: baselines before and after the CUDA context, the `--memory-limit`
//! ballast, the NVML sampler, `calibration.json`, then the sweep and the boundary search.
//!
//! Compiled in every build: without the `cuda` feature the pool probe is a stub that cannot
//! exist (`probe/cuda_pool_stub.rs`), `Accel::open` fails first with "built without CUDA",
//! and CPU CI still type-checks all of this.

use super::session::{run_info, Done, Model, OverMemoryPoints, Probes, Session};
use super::{BenchError, Sweep};
use crate::estimate::cuda::CudaOverheads;
use crate::estimate::{Backend, Workload};
use crate::probe::cuda_pool::{Ballast, CudaPoolProbe};
use crate::probe::nvml::{Gpu, Sampler};
use crate::probe::{MemoryProbe, PoolReserved, PoolStats};
use crate::runner::{Accel, DeviceKind, RunError};
use crate::store::{GpuRun, PointRecord, RunDir, RunInfo, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The CUDA device a sweep measures on.
const DEVICE_INDEX: usize = 0;

/// NVML's view of the device before our CUDA context exists.
struct BeforeContext {
    gpu: Option<Gpu>,
    info: Option<crate::probe::nvml::GpuInfo>,
    memory: Option<crate::probe::nvml::DeviceMemory>,
    pids: BTreeSet<u32>,
}

impl BeforeContext {
    /// Read NVML only (no CUDA call yet); without NVML, the pool is the only source.
    fn read(index: u32) -> Self {
        let gpu = Gpu::open(index);
        if let Err(e) = &gpu {
            tracing::warn!(error = %e, "measuring with the memory pool only");
        }
        let gpu = gpu.ok();
        BeforeContext {
            info: gpu.as_ref().and_then(|g| g.info().ok()),
            memory: gpu.as_ref().and_then(|g| g.memory().ok()),
            pids: gpu
                .as_ref()
                .and_then(|g| g.processes().ok())
                .map(|l| l.into_iter().map(|(p, _)| p).collect())
                .unwrap_or_default(),
            gpu,
        }
    }
}

/// The process as NVML saw it after each step of the set-up, and the pool after warm-up.
struct Measured {
    after_context: u64,
    after_weights: u64,
    after_warmup: u64,
    pool: PoolStats,
    ballast_bytes: u64,
}

impl Measured {
    /// run.json's `gpu`: the device and these baselines (NVML's samples counted at the end).
    fn gpu_run(&self, before: &BeforeContext, sweep: &Sweep, weights_bytes: u64) -> GpuRun {
        GpuRun {
            info: before.info.clone(),
            pid_match: None,
            nvml_hz: sweep.plan.nvml_hz,
            nvml_samples: 0,
            device_used_before_context_bytes: before.memory.map_or(0, |m| m.used),
            device_free_before_context_bytes: before.memory.map_or(0, |m| m.free),
            process_after_context_bytes: self.after_context,
            process_after_weights_bytes: self.after_weights,
            process_after_warmup_bytes: self.after_warmup,
            pool_used_after_warmup_bytes: self.pool.used,
            pool_reserved_after_warmup_bytes: self.pool.reserved,
            fixed_overhead_bytes: self.after_warmup.saturating_sub(weights_bytes),
            memory_limit_bytes: sweep.plan.memory_limit,
            ballast_bytes: self.ballast_bytes,
        }
    }

    /// The process terms this run measured: the context, and everything else outside the
    /// pool (kernels, library workspaces); the pool model's defaults.
    fn overheads(&self) -> CudaOverheads {
        CudaOverheads {
            context_bytes: self.after_context,
            libraries_bytes: self
                .after_warmup
                .saturating_sub(self.pool.reserved)
                .saturating_sub(self.after_context),
            ..CudaOverheads::default()
        }
    }
}

/// `--memory-limit`: take what the process may not use, so that it has `limit` bytes in
/// all (its context included).
fn take_ballast(
    pool: &CudaPoolProbe,
    limit: Option<u64>,
    after_context: u64,
) -> Result<Option<Ballast>, BenchError> {
    let Some(limit) = limit else {
        return Ok(None);
    };
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
    pool.ballast(take).map(Some).map_err(|e| {
        BenchError::Options(format!(
            "--memory-limit {limit}: ballast of {take} bytes: {e}"
        ))
    })
}

/// Measure `workloads` on CUDA device 0.
///
/// # Errors
/// [`BenchError::Run`] when the device cannot be opened (also: a build without CUDA);
/// [`BenchError::Options`] for a `--memory-limit` the device cannot honour.
pub(super) fn run(
    sweep: &Sweep,
    workloads: &[Workload],
    done: &Done,
    over: &OverMemoryPoints,
    dir: &mut RunDir,
    on_point: &mut dyn FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    let mut before = BeforeContext::read(DEVICE_INDEX as u32);
    let accel = Arc::new(Accel::open(DeviceKind::Cuda(DEVICE_INDEX))?);
    let pool = accel
        .pool()
        .ok_or_else(|| RunError::Device("no memory pool on this device".into()))?;
    let pids = std::mem::take(&mut before.pids);
    let sampler = before
        .gpu
        .take()
        .map(|g| Sampler::start(g, sweep.plan.nvml_hz, pids));
    let after_context = sampler.as_ref().map_or(0, |s| s.sample_now().0);
    let ballast = take_ballast(pool, sweep.plan.memory_limit, after_context)?;
    let ballast_bytes = ballast.as_ref().map_or(0, |b| b.bytes());
    let process_now = || {
        sampler
            .as_ref()
            .map_or(0, |s| s.sample_now().0.saturating_sub(ballast_bytes))
    };

    tracing::info!(model = %sweep.spec.name(), dtype = %sweep.plan.dtype, "loading weights");
    let model = Model::load(sweep, accel.clone(), pool)?;
    // Runner::load warms up after loading: the weights figure is the pool's, the process
    // figures below are after warm-up.
    let after_weights = process_now();
    accel.settle();
    let after_warmup = process_now();
    let measured = Measured {
        after_context,
        after_weights,
        after_warmup,
        pool: pool.stats(),
        ballast_bytes,
    };
    let gpu_run = GpuRun {
        pid_match: sampler.as_ref().map(|s| s.pid_match()),
        ..measured.gpu_run(&before, sweep, model.weights_bytes())
    };
    let device_name = before
        .info
        .as_ref()
        .map_or_else(|| format!("cuda:{DEVICE_INDEX}"), |g| g.name.clone());
    let info = run_info(sweep, &model, device_name, Some(gpu_run))?;
    dir.write_info(&info)?;
    let overheads = measured.overheads();
    write_calibration(dir, &info, &overheads)?;

    let reserved = PoolReserved(pool);
    let mut list: Vec<&dyn MemoryProbe> = vec![pool, &reserved];
    let nvml_probes = sampler
        .as_ref()
        .map(|s| (s.process_probe(), s.device_probe()));
    if let Some((p, d)) = &nvml_probes {
        list.push(p);
        list.push(d);
    }
    let residue = model.warmup_residue_bytes();
    let mut session = Session {
        sweep,
        info,
        model,
        probes: Probes {
            list,
            backend: Backend::Cuda,
            overheads,
            residue,
            device_before: before.memory.map_or(0, |m| m.used),
            ballast: ballast_bytes,
        },
        dir,
        done,
        over_memory: over.clone(),
        points: Vec::new(),
    };
    session.sweep(workloads, on_point)?;
    if let Some(step) = sweep.plan.find_boundary {
        // The memory the prediction may use: the limit, else what was free before us.
        let capacity = sweep.plan.memory_limit.unwrap_or_else(|| {
            before
                .memory
                .map_or_else(|| pool.mem_free_total().0, |m| m.free)
        });
        session.search_boundaries(step, capacity, on_point)?;
    }
    if let (Some(s), Some(g)) = (&sampler, session.info.gpu.as_mut()) {
        g.nvml_samples = s.samples();
        g.pid_match = Some(s.pid_match());
        session.dir.write_info(&session.info)?;
    }
    // The ballast (if any) is freed when this function returns, after the last point.
    Ok(std::mem::take(&mut session.points))
}

/// `calibration.json`: the measured fixed terms of this GPU, driver and build, for
/// `estimate --calibration`.
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
    dir.write_json("calibration.json", &v)
}
