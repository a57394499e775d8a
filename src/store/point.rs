//! One line of `points.jsonl` and the values it is made of; `boundary.json`'s entries.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What became of a measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured.
    Ok,
    /// The device ran out of memory (nothing measured).
    Oom,
    /// The device refused the work for another reason (nothing measured; `message` says why).
    Error,
}

/// Which part of a run measured a point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The grid the user asked for.
    #[default]
    Grid,
    /// The out-of-memory boundary search after the grid.
    Boundary,
}

/// The phase a record measured: inference (prefill, decode) or a training step's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointPhase {
    Prefill,
    Decode,
    TrainForward,
    TrainBackward,
    TrainOptimizer,
    TrainOptimizerFirst,
}

names!(Status { Ok => "ok", Oom => "oom", Error => "error" });
names!(Stage { Grid => "grid", Boundary => "boundary" });
names!(PointPhase {
    Prefill => "prefill",
    Decode => "decode",
    TrainForward => "train_forward",
    TrainBackward => "train_backward",
    TrainOptimizer => "train_optimizer",
    TrainOptimizerFirst => "train_optimizer_first",
});

impl From<crate::estimate::Phase> for PointPhase {
    fn from(p: crate::estimate::Phase) -> Self {
        match p {
            crate::estimate::Phase::Prefill => PointPhase::Prefill,
            crate::estimate::Phase::Decode => PointPhase::Decode,
        }
    }
}

impl From<crate::estimate::candle_train::TrainPhase> for PointPhase {
    fn from(p: crate::estimate::candle_train::TrainPhase) -> Self {
        use crate::estimate::candle_train::TrainPhase;
        match p {
            TrainPhase::Forward => PointPhase::TrainForward,
            TrainPhase::Backward => PointPhase::TrainBackward,
            TrainPhase::Optimizer => PointPhase::TrainOptimizer,
            TrainPhase::OptimizerFirst => PointPhase::TrainOptimizerFirst,
        }
    }
}

/// One batch's out-of-memory boundary (`boundary.json`, one per batch): measured by
/// bisection, predicted by the estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// tables; `candle_u32_elements`: candle 0.11's CUDA kernels count elements in u32).
    pub limit_context: u64,
    pub limit_reason: String,
    /// The free memory the prediction used.
    pub capacity_bytes: u64,
}

/// One line of `points.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    pub model: String,
    pub dtype: String,
    pub engine: String,
    pub device: String,
    pub batch: u64,
    pub context: u64,
    pub phase: PointPhase,
    pub decode_steps: u64,
    /// The estimate of this phase's peak, and its parts.
    pub estimated_bytes: u64,
    pub estimated_components: BTreeMap<String, u64>,
    /// The primary source's measured peak.
    pub measured_peak_bytes: u64,
    /// The primary source's name.
    pub source: String,
    /// Every source's measured peak, by name.
    pub measured: BTreeMap<String, u64>,
    /// (estimated - measured) / measured; `null` in JSON where undefined (measured 0).
    #[serde(deserialize_with = "ratio_or_null")]
    pub error_ratio: f64,
    /// The same for the part above the weights (peak minus weights), so a good total
    /// cannot hide a poor activation model.
    pub estimated_above_weights_bytes: u64,
    pub measured_above_weights_bytes: u64,
    #[serde(deserialize_with = "ratio_or_null")]
    pub above_weights_error_ratio: f64,
    /// Wall time of one forward pass (prefill) or of one decode step (mean).
    pub secs_per_forward: f64,
    pub tokens_per_sec: f64,
    /// `ok`; `oom` when the device ran out of memory, `error` when it refused the work for
    /// another reason (then nothing is measured and `message` says why).
    pub status: Status,
    /// The estimate in each source's terms, by source name (see `bench`).
    #[serde(default)]
    pub estimated_by_source: BTreeMap<String, u64>,
    /// (estimated - measured) / measured per source, where defined.
    #[serde(default)]
    pub error_by_source: BTreeMap<String, f64>,
    /// `grid`, or `boundary` for a point measured by the out-of-memory boundary search.
    #[serde(default)]
    pub stage: Stage,
    /// The device's message for an `oom` point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A decode phase step by step: what each source read at every step's end and after the
    /// device settled (`vramprobe report RUN --decode-steps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_trace: Vec<DecodeStep>,
}

/// One decode step's readings, raw as the probes gave them: absolute bytes in use, not
/// reduced by the point's start or by a `--memory-limit` ballast (NVML counts the ballast;
/// the pool does not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeStep {
    /// 1 for the first step after the prefill.
    pub step: u64,
    /// Tokens in the KV cache after the step.
    pub kv_len: u64,
    /// Wall time of the step's forward pass, in microseconds.
    pub micros: u64,
    /// Each source at the step's end, before anything is released.
    pub current: BTreeMap<String, u64>,
    /// Each source's high-water mark since the decode phase began.
    pub peak: BTreeMap<String, u64>,
    /// Each source after the step's synchronisation settled the device (GPU only: the pool
    /// has handed back what it no longer uses).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settled: BTreeMap<String, u64>,
}

/// serde_json writes a non-finite f64 as `null`; read it back as NaN ("undefined").
fn ratio_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// (estimated - measured) / measured; 0 when both are 0, NaN (undefined, `null` in JSON,
/// never within a tolerance) when only the measurement is 0.
pub fn error_ratio(estimated: u64, measured: u64) -> f64 {
    if measured == 0 {
        if estimated == 0 {
            0.0
        } else {
            f64::NAN
        }
    } else {
        (estimated as f64 - measured as f64) / measured as f64
    }
}
