//! One measured (or failed) phase turned into a `points.jsonl` record: the estimate in each
//! source's terms beside what that source measured.

use super::session::Probes;
use crate::estimate::cuda as cuda_est;
use crate::estimate::{self, Backend, Phase, Workload};
use crate::runner::{PhaseFailure, PhaseMeasurement};
use crate::store::{self, PointPhase, PointRecord, RunInfo, Stage, Status};
use std::collections::BTreeMap;

/// One phase's estimate in every source's terms.
pub(super) struct PointEstimate {
    /// Tensor bytes at the peak (weights included): the allocator-exact sources' terms.
    pub tensors: u64,
    pub weights: u64,
    pub components: BTreeMap<String, u64>,
    /// What the CUDA pool holds reserved at the peak.
    pub pool_reserved: u64,
    /// The whole process as NVML sees it.
    pub process: u64,
}

/// What turns a reading into a record: the run it belongs to and the terms beyond the
/// tensors that each source sees.
pub(super) struct Recorder<'a> {
    pub info: &'a RunInfo,
    pub probes: &'a Probes<'a>,
    /// The weights as loaded (measured): subtracted to give the part above the weights.
    pub measured_weights: u64,
}

impl Recorder<'_> {
    /// An inference phase against the inference estimate.
    pub fn inference(
        &self,
        est: &estimate::Estimate,
        w: Workload,
        phase: Phase,
        m: Result<PhaseMeasurement, PhaseFailure>,
    ) -> PointRecord {
        let pe = est.phase(phase);
        let process = cuda_est::process(est, phase, self.probes.residue, &self.probes.overheads);
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
        self.record(w, phase.into(), &e, m)
    }

    /// Any phase against its estimate `e`.
    pub fn record(
        &self,
        w: Workload,
        phase: PointPhase,
        e: &PointEstimate,
        m: Result<PhaseMeasurement, PhaseFailure>,
    ) -> PointRecord {
        let (info, probes) = (self.info, self.probes);
        let estimated = e.tensors;
        let est_above = estimated.saturating_sub(e.weights);
        let mut rec = PointRecord {
            model: info.model.clone(),
            dtype: info.dtype.clone(),
            engine: info.engine.clone(),
            device: info.device.clone(),
            batch: w.batch,
            context: w.context,
            phase,
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
            status: Status::Ok,
            estimated_by_source: BTreeMap::new(),
            error_by_source: BTreeMap::new(),
            stage: Stage::Grid,
            message: None,
            decode_trace: Vec::new(),
        };
        match m {
            Ok(m) => self.measured(&mut rec, e, &m),
            Err(f) => {
                rec.status = if f.oom { Status::Oom } else { Status::Error };
                rec.message = Some(f.message);
                if probes.backend == Backend::Cuda {
                    rec.estimated_by_source
                        .insert("nvml_process".into(), e.process);
                }
            }
        }
        rec
    }

    /// Fill in what every source measured, each against the estimate in its own terms, and
    /// the errors of the primary source and of the part above the weights.
    fn measured(&self, rec: &mut PointRecord, e: &PointEstimate, m: &PhaseMeasurement) {
        let probes = self.probes;
        let estimated = e.tensors;
        // Per source: the measured figure in that source's terms, and the estimate in the same.
        for &(name, start, peak) in &m.raw {
            let (measured, est_src) = match name {
                // Tensor bytes: the peak above what was in use at the start, plus the weights.
                "host_alloc" | "cuda_pool" => (
                    peak.saturating_sub(start.saturating_sub(self.measured_weights)),
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
        rec.measured_above_weights_bytes = exact.saturating_sub(self.measured_weights);
        rec.above_weights_error_ratio = store::error_ratio(
            rec.estimated_above_weights_bytes,
            rec.measured_above_weights_bytes,
        );
        if primary != m.raw[0].0 {
            // Keep measured_peak - measured_above = the primary's non-activation part.
            rec.measured_above_weights_bytes = rec
                .measured_above_weights_bytes
                .min(rec.measured_peak_bytes);
        }
        rec.secs_per_forward = m.secs_per_forward;
        rec.tokens_per_sec = m.tokens_per_sec;
        rec.decode_trace = m
            .steps
            .iter()
            .zip(1..)
            .map(|(r, step)| store::DecodeStep {
                step,
                kv_len: r.kv_len,
                micros: (r.secs * 1e6).round() as u64,
                current: r.end.iter().map(|&(n, c, _)| (n.to_string(), c)).collect(),
                peak: r.end.iter().map(|&(n, _, p)| (n.to_string(), p)).collect(),
                settled: r.settled.iter().map(|&(n, c)| (n.to_string(), c)).collect(),
            })
            .collect();
    }
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
        .filter(|p| p.status == Status::Ok)
        .filter(|p| {
            let above_matters = p.measured_above_weights_bytes * 10
                >= p.measured_peak_bytes - p.measured_above_weights_bytes;
            !within(p.error_ratio) || (above_matters && !within(p.above_weights_error_ratio))
        })
        .collect()
}
