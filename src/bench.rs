//! One-shot benchmark: estimate and measure every point of a grid, append each to the run
//! directory as it completes.

use crate::estimate::{self, Backend, EngineProfile, Phase, Workload};
use crate::plan::{Grid, PlanError};
use crate::probe::MemoryProbe;
use crate::runner::{PhaseMeasurement, RunError, Runner, WeightsSource};
use crate::spec::{DType, ModelSpec};
use crate::store::{self, Environment, PointRecord, RunDir, RunInfo, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
}

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
}

/// The engine the runner executes and the estimate models.
pub const ENGINE: EngineProfile = EngineProfile::CandleEager;

/// Estimate, measure and store every point; `on_point` sees each record once stored.
///
/// # Errors
/// [`BenchError::Plan`] before anything is created; [`BenchError::Store`] when the output
/// directory cannot be created or written; [`BenchError::Run`] when the model cannot be
/// loaded or a forward pass fails.
pub fn run(
    opts: &BenchOptions,
    probe: &dyn MemoryProbe,
    mut on_point: impl FnMut(&PointRecord),
) -> Result<Vec<PointRecord>, BenchError> {
    let workloads = opts.grid.workloads(&opts.spec)?;
    let mut dir = RunDir::create(&opts.out)?;
    tracing::info!(model = %opts.spec.name(), dtype = %opts.dtype, "loading weights");
    let runner = Runner::load(&opts.spec, opts.dtype, &opts.weights, probe)?;
    let info = RunInfo {
        schema_version: 1,
        started_at: store::utc_rfc3339(std::time::SystemTime::now()),
        command: opts.command.clone(),
        model: opts.spec.name(),
        model_config: opts.spec.source.clone(),
        params: opts.spec.param_count(),
        dtype: opts.dtype.to_string(),
        engine: ENGINE.as_str().into(),
        device: "cpu".into(),
        weights: opts.weights.describe(),
        grid: opts.grid.clone(),
        environment: Environment::detect(),
        measured_weights_bytes: runner.weights_bytes,
        warmup_residue_bytes: runner.warmup_residue_bytes,
    };
    dir.write_info(&info)?;
    let mut points = Vec::with_capacity(workloads.len() * 2);
    for w in workloads {
        let est = estimate::estimate(&opts.spec, opts.dtype, ENGINE, Backend::Cpu, w);
        tracing::info!(batch = w.batch, context = w.context, "measuring");
        let m = runner.run_point(w, probe)?;
        for (phase, measured) in [(Phase::Prefill, m.prefill), (Phase::Decode, m.decode)] {
            let rec = record(
                &info,
                &est,
                w,
                phase,
                measured,
                probe.name(),
                runner.weights_bytes,
            );
            dir.append(&rec)?;
            on_point(&rec);
            points.push(rec);
        }
    }
    Ok(points)
}

/// Points whose total or above-the-weights error exceeds `max_error` in absolute value.
///
/// The above-the-weights error is checked only where that part is at least a tenth of the
/// weights: below that a few KiB of allocator bookkeeping dominate the ratio.
pub fn tolerance_violations(points: &[PointRecord], max_error: f64) -> Vec<&PointRecord> {
    // NaN is never within tolerance.
    let within = |r: f64| r.abs() <= max_error;
    points
        .iter()
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
    m: PhaseMeasurement,
    source: &str,
    measured_weights: u64,
) -> PointRecord {
    let pe = est.phase(phase);
    let estimated = pe.total_bytes();
    let est_above = estimated.saturating_sub(est.weights_bytes);
    let meas_above = m.peak_bytes.saturating_sub(measured_weights);
    PointRecord {
        model: info.model.clone(),
        dtype: info.dtype.clone(),
        engine: info.engine.clone(),
        device: info.device.clone(),
        batch: w.batch,
        context: w.context,
        phase: phase.as_str().into(),
        decode_steps: w.decode_steps,
        estimated_bytes: estimated,
        estimated_components: pe
            .peak
            .to_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        measured_peak_bytes: m.peak_bytes,
        source: source.into(),
        measured: BTreeMap::from([(source.to_string(), m.peak_bytes)]),
        error_ratio: store::error_ratio(estimated, m.peak_bytes),
        estimated_above_weights_bytes: est_above,
        measured_above_weights_bytes: meas_above,
        above_weights_error_ratio: store::error_ratio(est_above, meas_above),
        secs_per_forward: m.secs_per_forward,
        tokens_per_sec: m.tokens_per_sec,
        status: "ok".into(),
    }
}
