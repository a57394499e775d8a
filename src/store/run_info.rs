//! `run.json`: what ran, where, with which versions and settings.

use crate::plan::{BenchPlan, Grid, PlanError};
use serde::{Deserialize, Serialize};

/// Where and with what a run was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub host: String,
    pub os: String,
    pub cpu: String,
    pub cpu_cores: u64,
    pub vramprobe_version: String,
    pub candle_version: String,
    pub candle_transformers_version: String,
    /// The git commit vramprobe was built from (absent in runs made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
}

impl Environment {
    /// Read from the running system (Linux files where present, "unknown" elsewhere).
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let os_release = read("/etc/os-release");
        let pretty = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|s| s.trim_matches('"').to_string());
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Environment {
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
            os: pretty.unwrap_or_else(|| std::env::consts::OS.to_string()),
            cpu,
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            vramprobe_version: env!("CARGO_PKG_VERSION").to_string(),
            candle_version: env!("VRAMPROBE_CANDLE_VERSION").to_string(),
            candle_transformers_version: env!("VRAMPROBE_CANDLE_TRANSFORMERS_VERSION").to_string(),
            git_commit: Some(env!("VRAMPROBE_GIT_COMMIT").to_string()),
        }
    }
}

/// `run.json`: everything needed to know what the points mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub schema_version: u32,
    pub started_at: String,
    pub command: Vec<String>,
    pub model: String,
    pub model_config: String,
    pub params: u64,
    pub dtype: String,
    pub engine: String,
    pub device: String,
    pub weights: String,
    pub grid: Grid,
    pub environment: Environment,
    /// Bytes the loaded weights occupy, measured.
    pub measured_weights_bytes: u64,
    /// One-off bytes the warm-up left allocated (thread pools, gemm buffers); excluded
    /// from every point.
    pub warmup_residue_bytes: u64,
    /// On a GPU: the device and the measured baselines (absent on the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRun>,
    /// The bench's options as given, so `bench --resume` can measure the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BenchPlan>,
    /// When the run was resumed, if it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed_at: Vec<String>,
    /// `bench --mode train`: what was trained and how (absent for inference runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainInfo>,
}

/// The training setup of a `bench --mode train` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainInfo {
    pub optimizer: String,
    pub optimizer_note: String,
    /// LoRA adapters (None: a full fine-tune).
    pub lora: Option<crate::estimate::candle_train::LoraSetup>,
    pub trainable_params: u64,
}

impl RunInfo {
    /// The plan this run was made with, checked again: None for a run.json written before
    /// settings were stored.
    ///
    /// # Errors
    /// [`PlanError`] for settings no plan accepts (a hand-edited run.json).
    pub fn plan(&self) -> Option<Result<BenchPlan, PlanError>> {
        let plan = BenchPlan {
            grid: self.grid.clone(),
            ..self.settings.clone()?
        };
        Some(plan.check().map(|()| plan))
    }
}

/// A GPU run's device and baselines, all measured in this run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRun {
    /// NVML's identity of the device (absent when NVML is not available).
    pub info: Option<crate::probe::nvml::GpuInfo>,
    /// How our process was found in NVML's process list.
    pub pid_match: Option<crate::probe::nvml::PidMatch>,
    /// NVML sampler rate and samples taken.
    pub nvml_hz: u32,
    pub nvml_samples: u64,
    /// Device memory used (NVML) before our CUDA context existed, and free then.
    pub device_used_before_context_bytes: u64,
    pub device_free_before_context_bytes: u64,
    /// This process's memory (NVML) after the context, after the weights, after warm-up.
    pub process_after_context_bytes: u64,
    pub process_after_weights_bytes: u64,
    pub process_after_warmup_bytes: u64,
    /// The default pool's used and reserved bytes after warm-up.
    pub pool_used_after_warmup_bytes: u64,
    pub pool_reserved_after_warmup_bytes: u64,
    /// What the process holds beyond the weights in the pool, after warm-up: CUDA context,
    /// loaded kernels, library handles and workspaces, pool slack. Added to the tensor
    /// estimate to predict `nvml_process`.
    pub fixed_overhead_bytes: u64,
    /// `--memory-limit`, and the ballast taken to enforce it (subtracted from NVML).
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default)]
    pub ballast_bytes: u64,
}
