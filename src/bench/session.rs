//! A measuring session on one device: the model loaded, the probes that read it, the run
//! directory being appended to, and the sweep over the grid as its method.

use super::record::{PointEstimate, Recorder};
use super::{BenchError, Sweep};
use crate::estimate::candle_train::{self, TrainPhase};
use crate::estimate::cuda::CudaOverheads;
use crate::estimate::{Backend, Phase, Workload};
use crate::plan::Mode;
use crate::probe::MemoryProbe;
use crate::runner::train::TrainRunner;
use crate::runner::{Accel, PhaseFailure, RunError, Runner};
use crate::store::{
    self, Environment, GpuRun, PointPhase, PointRecord, RunDir, RunInfo, Stage, StoreError,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// (batch, context, phase) of the grid points already stored.
pub(super) type Done = BTreeSet<(u64, u64, PointPhase)>;

/// (batch, context) of the points the memory guard skips, with the reason.
pub(super) type OverMemoryPoints = BTreeMap<(u64, u64), String>;

/// The loaded model: for inference, or with trainable variables.
pub(super) enum Model {
    Infer(Runner),
    Train(TrainRunner),
}

impl Model {
    pub fn load(
        sweep: &Sweep,
        accel: Arc<Accel>,
        probe: &dyn MemoryProbe,
    ) -> Result<Self, RunError> {
        let (spec, dtype, weights) = (&sweep.spec, sweep.plan.dtype, &sweep.weights);
        Ok(match sweep.plan.mode {
            Mode::Inference => Model::Infer(Runner::load(
                spec,
                dtype,
                weights,
                sweep.plan.engine,
                sweep.plan.knobs(),
                accel,
                probe,
            )?),
            Mode::Train => Model::Train(TrainRunner::load(
                spec,
                dtype,
                weights,
                sweep.plan.lora.as_ref(),
                accel,
                probe,
            )?),
        })
    }

    pub fn weights_bytes(&self) -> u64 {
        match self {
            Model::Infer(r) => r.weights_bytes,
            Model::Train(r) => r.weights_bytes,
        }
    }

    pub fn warmup_residue_bytes(&self) -> u64 {
        match self {
            Model::Infer(r) => r.warmup_residue_bytes,
            Model::Train(r) => r.warmup_residue_bytes,
        }
    }

    /// The phases recorded per point.
    fn phases(&self) -> Vec<PointPhase> {
        match self {
            Model::Infer(_) => vec![Phase::Prefill.into(), Phase::Decode.into()],
            Model::Train(_) => TrainPhase::ALL.iter().map(|&p| p.into()).collect(),
        }
    }
}

/// The probes a session reads, and the terms beyond the tensors that each source sees.
pub(crate) struct Probes<'a> {
    /// The allocator-exact probe first.
    pub list: Vec<&'a dyn MemoryProbe>,
    pub backend: Backend,
    /// The process terms beyond the tensors (GPU only): the context and libraries as
    /// measured in this run, the pool model's defaults.
    pub overheads: CudaOverheads,
    /// What the warm-up left in the pool.
    pub residue: u64,
    /// Device used before our context (GPU only).
    pub device_before: u64,
    /// Ballast of `--memory-limit`, subtracted from NVML's figures (GPU only).
    pub ballast: u64,
}

impl Probes<'_> {
    /// The CPU's one probe: the counting allocator.
    pub fn host(probe: &dyn MemoryProbe) -> Probes<'_> {
        Probes {
            list: vec![probe],
            backend: Backend::Cpu,
            overheads: CudaOverheads::default(),
            residue: 0,
            device_before: 0,
            ballast: 0,
        }
    }
}

/// One device's session over a run directory.
pub(super) struct Session<'a> {
    pub sweep: &'a Sweep,
    pub info: RunInfo,
    pub model: Model,
    pub probes: Probes<'a>,
    pub dir: &'a mut RunDir,
    pub done: &'a Done,
    /// Points not run: their estimate exceeds the memory available (`--over-memory skip`).
    pub over_memory: OverMemoryPoints,
    /// Every record stored by this session, in order.
    pub points: Vec<PointRecord>,
}

impl Session<'_> {
    /// Store a record: appended to points.jsonl (synced), shown, kept.
    fn store(
        &mut self,
        rec: PointRecord,
        on_point: &mut dyn FnMut(&PointRecord),
    ) -> Result<(), StoreError> {
        self.dir.append(&rec)?;
        on_point(&rec);
        self.points.push(rec);
        Ok(())
    }

    /// Measure every workload the run directory lacks, in order; stop between points when
    /// asked to.
    ///
    /// # Errors
    /// [`BenchError::Interrupted`] when stopped; a store or run error as it comes.
    pub fn sweep(
        &mut self,
        workloads: &[Workload],
        on_point: &mut dyn FnMut(&PointRecord),
    ) -> Result<(), BenchError> {
        let phases = self.model.phases();
        let done = self.done;
        let is_done = |w: &Workload, p: PointPhase| done.contains(&(w.batch, w.context, p));
        for (i, &w) in workloads.iter().enumerate() {
            if phases.iter().all(|&p| is_done(&w, p)) {
                continue; // stored by the run being resumed
            }
            if self
                .sweep
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst))
            {
                let total = workloads.len() * phases.len();
                let remaining: usize = workloads[i..]
                    .iter()
                    .map(|w| phases.iter().filter(|&&p| !is_done(w, p)).count())
                    .sum();
                return Err(BenchError::Interrupted {
                    stored: total - remaining,
                    total,
                    dir: self.dir.path().display().to_string(),
                });
            }
            let recs = match &self.model {
                Model::Infer(_) => self.measure(w, Stage::Grid)?,
                Model::Train(_) => self.measure_train(w)?,
            };
            for rec in recs {
                // A resumed run may hold one phase of this point already: never store it twice.
                if !is_done(&w, rec.phase) {
                    self.store(rec, on_point)?;
                }
            }
        }
        Ok(())
    }

    /// Measure the records of `w` at `stage` and store them; whether every phase fitted.
    pub fn measure_and_store(
        &mut self,
        w: Workload,
        stage: Stage,
        on_point: &mut dyn FnMut(&PointRecord),
    ) -> Result<bool, BenchError> {
        let recs = self.measure(w, stage)?;
        let ok = recs.iter().all(|r| r.status == store::Status::Ok);
        for rec in recs {
            self.store(rec, on_point)?;
        }
        Ok(ok)
    }

    fn recorder(&self) -> Recorder<'_> {
        Recorder {
            info: &self.info,
            probes: &self.probes,
            measured_weights: self.model.weights_bytes(),
        }
    }

    /// The reason `w` cannot run on this device at all, if it cannot.
    fn refused(&self, w: Workload) -> Option<PhaseFailure> {
        if let Some(why) = self.over_memory.get(&(w.batch, w.context)) {
            return Some(PhaseFailure {
                oom: true,
                message: format!("not run: {why}"),
            });
        }
        let (limit, why) = self.sweep.cuda_limit_context(w.batch);
        (self.probes.backend == Backend::Cuda && w.context > limit).then(|| PhaseFailure {
            oom: false,
            message: format!("not run: at context {}, {why}", w.context),
        })
    }

    /// Measure one inference workload: its prefill and decode records.
    fn measure(&self, w: Workload, stage: Stage) -> Result<Vec<PointRecord>, BenchError> {
        let Model::Infer(runner) = &self.model else {
            return Err(BenchError::Options(
                "an inference point needs a model loaded for inference".into(),
            ));
        };
        let sweep = self.sweep;
        let est = sweep.estimate(self.probes.backend, w);
        let rec = self.recorder();
        let measured = match self.refused(w) {
            Some(failure) => {
                tracing::warn!("{}", failure.message);
                [
                    (Phase::Prefill, Err(failure.clone())),
                    (Phase::Decode, Err(failure)),
                ]
            }
            None => {
                tracing::info!(batch = w.batch, context = w.context, ?stage, "measuring");
                let m = runner.run_point(w, &self.probes.list)?;
                [(Phase::Prefill, m.prefill), (Phase::Decode, m.decode)]
            }
        };
        Ok(measured
            .into_iter()
            .map(|(phase, m)| PointRecord {
                stage,
                ..rec.inference(&est, w, phase, m)
            })
            .collect())
    }

    /// Measure two training steps of one workload: one record per phase
    /// ([`TrainPhase::ALL`]).
    fn measure_train(&self, w: Workload) -> Result<Vec<PointRecord>, BenchError> {
        let Model::Train(runner) = &self.model else {
            return Err(BenchError::Options(
                "a training point needs a model loaded for training".into(),
            ));
        };
        let (sweep, probes) = (self.sweep, &self.probes);
        let est = candle_train::simulate_step(
            &sweep.spec,
            sweep.plan.dtype,
            probes.backend == Backend::Cpu,
            w.batch,
            w.context,
            sweep.plan.lora.as_ref(),
        );
        let w = Workload {
            decode_steps: 0,
            ..w
        };
        let refused = self.refused(w);
        let mut m = match &refused {
            Some(_) => None,
            None => {
                tracing::info!(
                    batch = w.batch,
                    context = w.context,
                    "measuring a training step"
                );
                Some(runner.run_point(w.batch, w.context, &probes.list)?)
            }
        };
        let weights = est.forward.get(candle_train::Part::Weights);
        let failed_oom = m.as_ref().is_some_and(|m| {
            m.phases
                .iter()
                .any(|(_, r)| r.as_ref().is_err_and(|f| f.oom))
        });
        let rec = self.recorder();
        Ok(TrainPhase::ALL
            .into_iter()
            .map(|phase| {
                let parts = est.phase(phase);
                // The process beyond the tensors: context, libraries, the warm-up's residue
                // (the pool's rounding is not modelled for training).
                let e = PointEstimate {
                    tensors: parts.total(),
                    weights,
                    components: parts.to_map(),
                    pool_reserved: parts.total() + probes.residue,
                    process: parts.total()
                        + probes.overheads.context_bytes
                        + probes.overheads.libraries_bytes
                        + probes.residue,
                };
                let measured = match (m.as_mut(), &refused) {
                    (Some(m), _) => match m.phases.iter().position(|(p, _)| *p == phase) {
                        Some(i) => m.phases.remove(i).1,
                        None => Err(PhaseFailure {
                            oom: failed_oom,
                            message: "not run: an earlier phase of the step failed".into(),
                        }),
                    },
                    (None, refused) => Err(refused.clone().unwrap_or(PhaseFailure {
                        oom: false,
                        message: "not run".into(),
                    })),
                };
                rec.record(w, phase.into(), &e, measured)
            })
            .collect())
    }
}

/// What run.json says of this run, before anything is measured; for a resumed run, with
/// the original start time and this resumption added to the list.
pub(super) fn run_info(
    sweep: &Sweep,
    model: &Model,
    device: String,
    gpu: Option<GpuRun>,
) -> Result<RunInfo, StoreError> {
    let plan = &sweep.plan;
    let mut info = RunInfo {
        schema_version: 1,
        started_at: store::utc_rfc3339(std::time::SystemTime::now()),
        command: sweep.command.clone(),
        model: sweep.spec.name(),
        model_config: sweep.spec.source.clone(),
        params: sweep.spec.param_count(),
        dtype: plan.dtype.to_string(),
        engine: sweep.plan.engine.as_str().into(),
        device,
        weights: sweep.weights.describe(),
        grid: plan.grid.clone(),
        environment: Environment::detect(),
        measured_weights_bytes: model.weights_bytes(),
        warmup_residue_bytes: model.warmup_residue_bytes(),
        train: match model {
            Model::Train(t) => Some(store::TrainInfo {
                optimizer: "adamw".into(),
                optimizer_note: "candle-nn 0.11 AdamW: first and second moments in the \
                                 parameters' dtype"
                    .into(),
                lora: plan.lora.clone(),
                trainable_params: t.trainable_params,
            }),
            Model::Infer(_) => None,
        },
        gpu,
        settings: Some(plan.clone()),
        resumed_at: Vec::new(),
    };
    if sweep.resume {
        // The run keeps its original command and start; each resumption adds its time.
        let old = RunDir::read_info(&sweep.out)?;
        info.command = old.command;
        info.resumed_at = old.resumed_at;
        info.resumed_at
            .push(std::mem::replace(&mut info.started_at, old.started_at));
    }
    Ok(info)
}
