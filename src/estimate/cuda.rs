//! What a CUDA process holds beyond its tensors, as NVML (and nvidia-smi) report it:
//!
//! ```text
//! process = context + libraries + pool reservation
//! pool reservation = round_up(tensors + residue + slack, granule)
//! ```
//!
//! - `context`: the CUDA primary context with candle's cuBLAS and cuRAND handles, measured
//!   by NVML right after `Device::new_cuda`.
//! - `libraries`: kernel modules loaded at first use and cuBLAS's workspace, measured after
//!   a warm-up forward pass (process minus the pool's reservation minus the context).
//! - `granule`: cudarc allocates from the device's default pool (`cuMemAllocAsync`), which
//!   takes memory from the driver in fixed granules: every reservation read on the H100
//!   was a multiple of 32 MiB.
//! - `slack` (decode only): each decode step allocates every layer's K and V cache one
//!   token larger (`Tensor::cat`) before freeing the old ones, between the large transient
//!   `repeat_kv` and f32 copies; the pool cannot reuse most freed blocks within the step, so
//!   its reservation runs ahead of the bytes in use. Modelled as `ratio x 2 x layers x
//!   round_up(one layer's K, 2 MiB)`; the ratio (0.65) was fitted on the H100 grid run and
//!   holds on the separate boundary run (reports/gpu/2026-11-26-h100-80gb).
//!
//! Each GPU model's terms come from its committed calibration (`calibrations/*.json`, a
//! `calibration.json` that `bench --device cuda` wrote on that GPU and driver, compiled in);
//! a GPU without one gets the H100 80GB HBM3 / driver 580.159.04 / CUDA 13.0 figures measured
//! on 2026-11-26 (the committed H100 calibration; a test keeps them equal), and a calibration
//! file given with `--calibration` replaces both.

use super::{Estimate, Phase};
use serde::{Deserialize, Serialize};

/// The terms beyond the tensors, in bytes (ratios in thousandths, to stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaOverheads {
    pub context_bytes: u64,
    pub libraries_bytes: u64,
    pub pool_granule_bytes: u64,
    pub decode_slack_permille: u64,
}

/// Measured on an NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 13.0, candle 0.11.1,
/// 2026-11-26 (reports/gpu/2026-11-26-h100-80gb: `process_after_context_bytes` and
/// `process_after_warmup_bytes - pool_reserved_after_warmup_bytes - context` in run.json).
pub const H100_DRIVER_580: CudaOverheads = CudaOverheads {
    context_bytes: 614_465_536,
    libraries_bytes: 98_566_144,
    pool_granule_bytes: 32 << 20,
    decode_slack_permille: 650,
};

/// The largest value a calibration's field may hold: 1 PiB (no GPU has a thousandth of it;
/// sums of these with any estimate stay exact in a u64).
const MAX_OVERHEAD: u64 = 1 << 50;

/// Why a calibration file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CalibrationError {
    pub path: String,
    pub reason: String,
}

impl CudaOverheads {
    /// Read the `overheads` object of a `calibration.json` written by `bench --device cuda`
    /// (the text is passed in: this module does no I/O).
    ///
    /// # Errors
    /// [`CalibrationError`] naming the file and what is wrong with it.
    pub fn from_calibration_json(text: &str, path: &str) -> Result<Self, CalibrationError> {
        let err = |reason: String| CalibrationError {
            path: path.to_string(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let o = v
            .get("overheads")
            .and_then(|o| o.as_object())
            .ok_or_else(|| err("missing object `overheads`".into()))?;
        const FIELDS: [&str; 4] = [
            "context_bytes",
            "libraries_bytes",
            "pool_granule_bytes",
            "decode_slack_permille",
        ];
        if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(format!(
                "unknown field `overheads.{k}` (expected one of {})",
                FIELDS.join(", ")
            )));
        }
        let field = |name: &str, default: Option<u64>| -> Result<u64, CalibrationError> {
            match o.get(name) {
                None => default.ok_or_else(|| err(format!("missing field `overheads.{name}`"))),
                Some(x) => match x.as_u64() {
                    None => Err(err(format!(
                        "field `overheads.{name}`: {x} is not a whole number of bytes >= 0"
                    ))),
                    Some(v) if v > MAX_OVERHEAD => Err(err(format!(
                        "field `overheads.{name}`: {v} is beyond any GPU (at most {MAX_OVERHEAD})"
                    ))),
                    Some(v) => Ok(v),
                },
            }
        };
        let d = H100_DRIVER_580;
        Ok(Self {
            context_bytes: field("context_bytes", None)?,
            libraries_bytes: field("libraries_bytes", None)?,
            pool_granule_bytes: field("pool_granule_bytes", Some(d.pool_granule_bytes))?,
            decode_slack_permille: field("decode_slack_permille", Some(d.decode_slack_permille))?,
        })
    }
}

/// The calibrations committed under `calibrations/` (compiled in by build.rs).
mod committed_files {
    include!(concat!(env!("OUT_DIR"), "/calibrations.rs"));
}

/// A committed calibration: the CUDA terms measured on one GPU model with one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The file under `calibrations/`.
    pub file: &'static str,
    /// The GPU's name as NVML reports it.
    pub gpu_name: String,
    pub driver_version: String,
    pub overheads: CudaOverheads,
}

impl Committed {
    /// `calibrations/FILE (GPU, driver D)`, for `overheads_source`.
    pub fn describe(&self) -> String {
        format!(
            "calibrations/{} ({}, driver {})",
            self.file, self.gpu_name, self.driver_version
        )
    }
}

/// Every committed calibration, parsed.
///
/// # Errors
/// [`CalibrationError`] naming the first committed file that is not a calibration (the tests
/// keep every committed file readable).
pub fn committed() -> Result<Vec<Committed>, CalibrationError> {
    committed_files::COMMITTED_FILES
        .iter()
        .map(|&(file, text)| {
            let path = format!("calibrations/{file}");
            let overheads = CudaOverheads::from_calibration_json(text, &path)?;
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| CalibrationError {
                    path: path.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            let field = |name: &str| {
                v["gpu"][name]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| CalibrationError {
                        path: path.clone(),
                        reason: format!("missing field `gpu.{name}`"),
                    })
            };
            Ok(Committed {
                file,
                gpu_name: field("name")?,
                driver_version: field("driver_version")?,
                overheads,
            })
        })
        .collect()
}

/// The committed calibration of the GPU NVML calls `gpu_name`: of several drivers, the newest.
pub fn committed_for(gpu_name: &str) -> Option<Committed> {
    let version = |d: &str| -> Vec<u64> { d.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    committed()
        .ok()?
        .into_iter()
        .filter(|c| c.gpu_name == gpu_name)
        .max_by(|a, b| version(&a.driver_version).cmp(&version(&b.driver_version)))
}

impl Default for CudaOverheads {
    fn default() -> Self {
        H100_DRIVER_580
    }
}

/// The process-level estimate of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessEstimate {
    /// The tensor peak (the estimate's components).
    pub tensors_bytes: u64,
    /// What the pool is expected to hold from the driver at that peak.
    pub pool_reserved_bytes: u64,
    pub context_bytes: u64,
    pub libraries_bytes: u64,
}

impl ProcessEstimate {
    /// What NVML should report for the process.
    pub fn total_bytes(&self) -> u64 {
        self.pool_reserved_bytes + self.context_bytes + self.libraries_bytes
    }

    /// The pool's share beyond the tensors (rounding and slack).
    pub fn pool_overhead_bytes(&self) -> u64 {
        self.pool_reserved_bytes.saturating_sub(self.tensors_bytes)
    }
}

fn round_up(x: u64, granule: u64) -> u64 {
    if granule == 0 {
        x
    } else {
        x.div_ceil(granule) * granule
    }
}

/// The pool's expected slack in `phase` beyond the tensors in use (before rounding).
///
/// Modelled for candle (cudarc's pool) only: for the transformers-style engines the
/// process figure is the tensors, the granule rounding and the fixed terms, and PyTorch's
/// caching allocator, which holds more (measured on the H100 at batch 1 x 8192: eager
/// attention 48.3 GiB in NVML for 36.5 GiB allocated, SDPA 18.1 for 16.9), is not modelled.
pub fn pool_slack_bytes(e: &Estimate, phase: Phase, o: &CudaOverheads) -> u64 {
    // The engines whose KV cache grows by `cat` every step (candle-eager, candle-quantized).
    if !matches!(
        e.engine,
        super::EngineProfile::CandleEager | super::EngineProfile::CandleQuantized
    ) {
        return 0;
    }
    match phase {
        Phase::Prefill => 0,
        Phase::Decode => {
            let w = e.workload;
            // One layer's K (or V) cache after the last step.
            let per_layer_per_token = e.kv_cache_bytes_per_token / (2 * e.layers.max(1));
            let one = round_up(
                w.batch * (w.context + w.decode_steps) * per_layer_per_token,
                2 << 20,
            );
            2 * e.layers * one * o.decode_slack_permille / 1000
        }
    }
}

/// The process-level estimate of `phase`; `residue_bytes` is what the warm-up left in the
/// pool (0 for candle on CUDA as measured).
pub fn process(
    e: &Estimate,
    phase: Phase,
    residue_bytes: u64,
    o: &CudaOverheads,
) -> ProcessEstimate {
    let tensors = e.phase(phase).total_bytes();
    let reserved = round_up(
        tensors + residue_bytes + pool_slack_bytes(e, phase, o),
        o.pool_granule_bytes,
    );
    ProcessEstimate {
        tensors_bytes: tensors,
        pool_reserved_bytes: reserved,
        context_bytes: o.context_bytes,
        libraries_bytes: o.libraries_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::{estimate, Backend, EngineProfile, Workload};
    use crate::spec::{DType, ModelSpec};

    fn llama() -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new("models/meta-llama-3-8b-instruct"))
            .expect("llama config")
    }

    #[test]
    fn calibration_files_are_read_and_bad_ones_named() {
        let ok = r#"{"schema_version":1,"overheads":{"context_bytes":5,"libraries_bytes":7}}"#;
        let o = CudaOverheads::from_calibration_json(ok, "cal.json").expect("valid");
        assert_eq!((o.context_bytes, o.libraries_bytes), (5, 7));
        assert_eq!(o.pool_granule_bytes, H100_DRIVER_580.pool_granule_bytes);
        for (bad, says) in [
            ("{", "not JSON"),
            ("{}", "missing object `overheads`"),
            (r#"{"overheads":{"context_bytes":5}}"#, "libraries_bytes"),
            (
                r#"{"overheads":{"context_bytes":-5,"libraries_bytes":1}}"#,
                "context",
            ),
            (
                r#"{"overheads":{"context_bytes":5,"libraries_bytes":1,"typo":1}}"#,
                "typo",
            ),
            (
                r#"{"overheads":{"context_bytes":18446744073709551615,"libraries_bytes":1}}"#,
                "`overheads.context_bytes`: 18446744073709551615 is beyond any GPU",
            ),
        ] {
            let e = CudaOverheads::from_calibration_json(bad, "cal.json").expect_err(bad);
            let text = e.to_string();
            assert!(
                text.starts_with("cal.json: ") && text.contains(says),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn prefill_rounds_to_the_granule_and_adds_the_fixed_terms() {
        let w = Workload {
            batch: 1,
            context: 2048,
            decode_steps: 8,
        };
        let e = estimate(
            &llama(),
            DType::BF16,
            EngineProfile::CandleEager,
            Backend::Cuda,
            w,
        );
        let p = process(&e, Phase::Prefill, 0, &H100_DRIVER_580);
        assert_eq!(p.tensors_bytes, e.prefill.total_bytes());
        assert_eq!(p.pool_reserved_bytes % (32 << 20), 0);
        assert!(p.pool_overhead_bytes() < 32 << 20);
        assert_eq!(
            p.total_bytes(),
            p.pool_reserved_bytes + 614_465_536 + 98_566_144
        );
    }

    #[test]
    fn committed_calibrations_are_read_and_the_default_is_the_h100s() {
        let all = committed().unwrap();
        assert!(!all.is_empty(), "no calibrations/*.json compiled in");
        let h100 = committed_for("NVIDIA H100 80GB HBM3").unwrap();
        assert_eq!(h100.driver_version, "580.159.04");
        assert_eq!(h100.overheads, H100_DRIVER_580);
        assert_eq!(CudaOverheads::default(), h100.overheads);
        assert!(h100.describe().starts_with("calibrations/"));
        assert_eq!(committed_for("NVIDIA A100-SXM4-40GB"), None);
        // Every committed file names a GPU of the catalogue, so that `fit` finds it.
        for c in &all {
            assert!(
                super::super::gpus::CATALOGUE
                    .iter()
                    .any(|g| g.name == c.gpu_name),
                "{}: {} is not in the catalogue",
                c.file,
                c.gpu_name
            );
        }
    }

    #[test]
    fn decode_slack_follows_the_kv_cache_allocations() {
        let spec = llama();
        let w = |b, s| Workload {
            batch: b,
            context: s,
            decode_steps: 8,
        };
        let slack = |b, s| {
            let e = estimate(
                &spec,
                DType::BF16,
                EngineProfile::CandleEager,
                Backend::Cuda,
                w(b, s),
            );
            pool_slack_bytes(&e, Phase::Decode, &H100_DRIVER_580)
        };
        // b=1, 8192+8 tokens: one layer's K is 8200 x 8 heads x 128 x 2 B = 16.02 MiB,
        // rounded to 18 MiB; 64 of them x 0.65.
        assert_eq!(slack(1, 8192), 64 * (18 << 20) * 650 / 1000);
        assert!(slack(2, 4096) > slack(1, 4096));
        let e = estimate(
            &spec,
            DType::BF16,
            EngineProfile::CandleEager,
            Backend::Cuda,
            w(1, 512),
        );
        assert_eq!(pool_slack_bytes(&e, Phase::Prefill, &H100_DRIVER_580), 0);
    }
}
