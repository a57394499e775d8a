//! The out-of-memory boundary search (`bench --find-boundary`, on a GPU): per batch, the
//! largest context that fits, measured by bisection and predicted by the estimate.

use super::session::{Model, Session};
use super::BenchError;
use crate::estimate::cuda as cuda_est;
use crate::estimate::{Backend, Phase, Workload};
use crate::store::{Boundary, PointRecord, Stage, Status, BOUNDARY_FILE};

impl Session<'_> {
    /// Search every batch of the grid, writing `boundary.json` after each.
    ///
    /// # Errors
    /// As [`Session::find_boundary`].
    pub fn search_boundaries(
        &mut self,
        step: u64,
        capacity: u64,
        on_point: &mut dyn FnMut(&PointRecord),
    ) -> Result<(), BenchError> {
        let mut boundaries = Vec::new();
        for &b in &self.sweep.plan.grid.batches {
            let bd = self.find_boundary(b, step, capacity, on_point)?;
            tracing::info!(?bd, "boundary");
            boundaries.push(bd);
            self.dir.write_json(BOUNDARY_FILE, &boundaries)?;
        }
        Ok(())
    }

    /// The estimate of what `nvml_process` will show at the peak of a workload.
    fn estimated_process_bytes(&self, w: Workload) -> u64 {
        let (sweep, probes) = (self.sweep, &self.probes);
        let e = sweep.estimate(probes.backend, w);
        [Phase::Prefill, Phase::Decode]
            .into_iter()
            .map(|p| cuda_est::process(&e, p, probes.residue, &probes.overheads).total_bytes())
            .max()
            .unwrap_or(0)
    }

    /// Whether both phases of the grid's point at batch `b`, context `c` fitted: None when
    /// it was not measured, or refused for another reason than memory.
    fn grid_fit(&self, b: u64, c: u64) -> Option<bool> {
        let recs: Vec<&PointRecord> = self
            .points
            .iter()
            .filter(|p| p.batch == b && p.context == c)
            .collect();
        if recs.is_empty() || recs.iter().any(|r| r.status == Status::Error) {
            return None;
        }
        Some(recs.iter().all(|r| r.status == Status::Ok))
    }

    /// Bisect the largest context that fits at batch `b` to `step` tokens, between the
    /// grid's last fitting context and its first out-of-memory one (or the position
    /// limit), and predict it for `capacity` bytes.
    ///
    /// # Errors
    /// [`BenchError::Options`] for a model not loaded for inference; store and run errors.
    pub fn find_boundary(
        &mut self,
        b: u64,
        step: u64,
        capacity: u64,
        on_point: &mut dyn FnMut(&PointRecord),
    ) -> Result<Boundary, BenchError> {
        if !matches!(self.model, Model::Infer(_)) {
            return Err(BenchError::Options(
                "the boundary search is for inference sweeps".into(),
            ));
        }
        let spec = &self.sweep.spec;
        let steps = self.sweep.plan.grid.decode_steps;
        let positions = self
            .sweep
            .plan
            .engine
            .positions(spec)
            .saturating_sub(steps.max(1));
        let elements = if self.probes.backend == Backend::Cuda {
            self.sweep.cuda_limit_context(b).0
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
            self.estimated_process_bytes(workload(c)) <= capacity
        });
        // Measured: start from the grid's results at this batch.
        let mut lo: Option<u64> = None;
        let mut hi: Option<u64> = None;
        for &c in &self.sweep.plan.grid.contexts {
            match self.grid_fit(b, c) {
                Some(true) => lo = Some(lo.map_or(c, |l: u64| l.max(c))),
                Some(false) => hi = Some(hi.map_or(c, |h: u64| h.min(c))),
                None => {}
            }
        }
        if hi.is_none() {
            // Everything in the grid fitted: try the limit itself.
            let top = lo.unwrap_or(2).max(2);
            if top < limit {
                if self.measure_and_store(workload(limit), Stage::Boundary, on_point)? {
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
                if self.measure_and_store(workload(mid), Stage::Boundary, on_point)? {
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
}
