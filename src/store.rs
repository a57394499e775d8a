//! A run directory: `run.json` (what ran, where, with which versions) and `points.jsonl`
//! (one JSON object per measured point, appended, flushed and synced as each completes, so
//! an interrupted sweep keeps every point it finished).

use crate::plan::{BenchPlan, DeviceChoice, Grid, Mode, PlanError, WeightsChoice};
use crate::spec::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of the run directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: already holds a run (points.jsonl exists); choose another --out")]
    Exists { path: PathBuf },
    #[error(
        "{path}: only {free} bytes free on its filesystem, {need} needed for a run's points \
         and report (set VRAMPROBE_MIN_FREE_BYTES to change the requirement)"
    )]
    Full { path: PathBuf, free: u64, need: u64 },
    #[error("{path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
    pub settings: Option<BenchSettings>,
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

/// The [`BenchPlan`] as run.json stores it (`settings`; the grid is in [`RunInfo::grid`]),
/// so `bench --resume` measures the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchSettings {
    /// `--model` as given (a path or a Hub id), or None for the built-in model.
    pub model: Option<String>,
    pub revision: Option<String>,
    pub dtype: DType,
    /// `synthetic`, `download` or a directory.
    pub weights: WeightsChoice,
    pub seed: u64,
    pub device: DeviceChoice,
    pub nvml_hz: u32,
    /// The boundary search's step, when it was asked for.
    pub find_boundary: Option<u64>,
    pub memory_limit: Option<u64>,
    pub max_position: Option<u64>,
    /// `train`, or absent for inference (as in runs made before training existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// `--lora-rank` and `--lora-targets` of a training run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::estimate::candle_train::LoraSetup>,
}

impl BenchSettings {
    /// How `plan` is stored.
    pub fn of(plan: &BenchPlan) -> Self {
        BenchSettings {
            model: plan.model.clone(),
            revision: plan.revision.clone(),
            dtype: plan.dtype,
            weights: plan.weights.clone(),
            seed: plan.seed,
            device: plan.device,
            nvml_hz: plan.nvml_hz,
            find_boundary: plan.find_boundary,
            memory_limit: plan.memory_limit,
            max_position: plan.max_position,
            mode: (plan.mode == Mode::Train).then_some(Mode::Train),
            lora: plan.lora.clone(),
        }
    }
}

impl RunInfo {
    /// The plan this run was made with, checked again: None for a run.json written before
    /// settings were stored.
    ///
    /// # Errors
    /// [`PlanError`] for settings no plan accepts (a hand-edited run.json).
    pub fn plan(&self) -> Option<Result<BenchPlan, PlanError>> {
        let s = self.settings.as_ref()?;
        let plan = BenchPlan {
            model: s.model.clone(),
            revision: s.revision.clone(),
            dtype: s.dtype,
            device: s.device,
            mode: s.mode.unwrap_or_default(),
            lora: s.lora.clone(),
            grid: self.grid.clone(),
            weights: s.weights.clone(),
            seed: s.seed,
            nvml_hz: s.nvml_hz,
            find_boundary: s.find_boundary,
            memory_limit: s.memory_limit,
            max_position: s.max_position,
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

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The name as stored and shown.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
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

/// Free space a run needs before it starts: its points (a few KB each), report.json/md/html
/// and plots (under 1 MB for a large grid), with a margin. `VRAMPROBE_MIN_FREE_BYTES`
/// overrides it.
pub const MIN_FREE_BYTES: u64 = 16 << 20;

/// Refuse a directory whose filesystem is (nearly) full, before anything is measured.
fn check_free_space(path: &Path) -> Result<(), StoreError> {
    let need = std::env::var("VRAMPROBE_MIN_FREE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_BYTES);
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    // The field types differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    if free < need {
        return Err(StoreError::Full {
            path: path.to_path_buf(),
            free,
            need,
        });
    }
    Ok(())
}

/// An open run directory being appended to.
pub struct RunDir {
    path: PathBuf,
    points: File,
}

impl RunDir {
    /// Create the directory (and parents), refuse one that already holds points, and
    /// check that it is writable before any measuring starts.
    ///
    /// # Errors
    /// [`StoreError::Exists`] and [`StoreError::Io`].
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        check_free_space(path)?;
        let points_path = path.join("points.jsonl");
        if points_path.exists() {
            return Err(StoreError::Exists {
                path: path.to_path_buf(),
            });
        }
        let points = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&points_path)
            .map_err(io(&points_path))?;
        Ok(Self {
            path: path.to_path_buf(),
            points,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopen a run directory to append to it: the points it holds are returned, and a torn
    /// last line (a crash in the middle of a write) is cut off first, so that appending never
    /// buries a broken line in the middle of the file.
    ///
    /// # Errors
    /// [`StoreError::Io`], and [`StoreError::Corrupt`] for a broken line that is not last.
    pub fn reopen(path: &Path) -> Result<(Self, Vec<PointRecord>), StoreError> {
        check_free_space(path)?;
        let points_path = path.join("points.jsonl");
        let points = read_points(path)?;
        let text = std::fs::read(&points_path).map_err(io(&points_path))?;
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep < text.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(&points_path)
                .map_err(io(&points_path))?;
            f.set_len(keep as u64).map_err(io(&points_path))?;
            f.sync_all().map_err(io(&points_path))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&points_path)
            .map_err(io(&points_path))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                points: file,
            },
            points,
        ))
    }

    /// Read `run.json`.
    ///
    /// # Errors
    /// [`StoreError::Io`] and [`StoreError::Corrupt`].
    pub fn read_info(path: &Path) -> Result<RunInfo, StoreError> {
        let p = path.join("run.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: p,
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// Write `run.json` (replacing it atomically).
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn write_info(&self, info: &RunInfo) -> Result<(), StoreError> {
        let final_path = self.path.join("run.json");
        let tmp = self.path.join("run.json.tmp");
        let mut text = serde_json::to_string_pretty(info).unwrap_or_default();
        text.push('\n');
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(io(&final_path))
    }

    /// Write a JSON file of the run (pretty, one trailing newline).
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), StoreError> {
        let path = self.path.join(name);
        let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| StoreError::Io { path, source })
    }

    /// Append one point as a line, flushed and synced before returning.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn append(&mut self, point: &PointRecord) -> Result<(), StoreError> {
        let p = self.path.join("points.jsonl");
        let mut line = serde_json::to_string(point).unwrap_or_default();
        line.push('\n');
        self.points.write_all(line.as_bytes()).map_err(io(&p))?;
        self.points.flush().map_err(io(&p))?;
        self.points.sync_data().map_err(io(&p))
    }
}

/// The name of the boundary search's file in a run directory.
pub const BOUNDARY_FILE: &str = "boundary.json";

/// Read a run directory's `boundary.json`: None when the run searched no boundary.
///
/// # Errors
/// [`StoreError::Io`] and [`StoreError::Corrupt`] for a file that is not a boundary list.
pub fn read_boundaries(dir: &Path) -> Result<Option<Vec<Boundary>>, StoreError> {
    let p = dir.join(BOUNDARY_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: p,
            line: e.line(),
            message: e.to_string(),
        })
}

/// Read a run directory's points.
///
/// # Errors
/// [`StoreError::Io`] and [`StoreError::Corrupt`] (a line that is not a point; a torn
/// last line from a crash is skipped, not an error).
pub fn read_points(dir: &Path) -> Result<Vec<PointRecord>, StoreError> {
    let p = dir.join("points.jsonl");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let complete = text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(point) => out.push(point),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: p,
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 3339 UTC time, for `started_at`.
pub fn utc_rfc3339(t: std::time::SystemTime) -> String {
    let s = utc_stamp(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps() {
        // 2026-11-26T09:16:47Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_684_607);
        assert_eq!(utc_stamp(t), "20261126-091647");
        assert_eq!(utc_rfc3339(t), "2026-11-26T09:16:47Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
    }

    fn point(batch: u64) -> PointRecord {
        PointRecord {
            model: "m".into(),
            dtype: "f32".into(),
            engine: "candle-eager".into(),
            device: "cpu".into(),
            batch,
            context: 64,
            phase: PointPhase::Prefill,
            decode_steps: 8,
            estimated_bytes: 110,
            estimated_components: BTreeMap::from([("weights".into(), 110)]),
            measured_peak_bytes: 100,
            source: "host_alloc".into(),
            measured: BTreeMap::from([("host_alloc".into(), 100)]),
            error_ratio: 0.1,
            estimated_above_weights_bytes: 10,
            measured_above_weights_bytes: 0,
            above_weights_error_ratio: f64::NAN,
            secs_per_forward: 0.5,
            tokens_per_sec: 128.0,
            status: Status::Ok,
            estimated_by_source: BTreeMap::new(),
            error_by_source: BTreeMap::new(),
            stage: Stage::Grid,
            message: None,
        }
    }

    #[test]
    fn appended_points_read_back_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(dir.path()).unwrap();
        run.append(&point(1)).unwrap();
        run.append(&point(2)).unwrap();
        // A crash in the middle of the third write.
        let path = dir.path().join("points.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"model\":\"m\",\"bat").unwrap();
        let back = read_points(dir.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].batch, 2);
        assert_eq!(back[0].error_ratio, 0.1);
        assert!(
            back[0].above_weights_error_ratio.is_nan(),
            "undefined survives a round trip"
        );

        // A bad line that is not the last is corruption, named by line.
        f.write_all(b"\n").unwrap();
        run.append(&point(3)).unwrap();
        let err = read_points(dir.path()).unwrap_err().to_string();
        assert!(err.contains("points.jsonl: line 3"), "{err}");

        // The directory now holds a run: it is never reused.
        assert!(matches!(
            RunDir::create(dir.path()),
            Err(StoreError::Exists { .. })
        ));
    }

    #[test]
    fn error_ratio_signs() {
        assert_eq!(error_ratio(110, 100), 0.1);
        assert_eq!(error_ratio(90, 100), -0.1);
        assert_eq!(error_ratio(0, 0), 0.0);
        assert!(error_ratio(5, 0).is_nan());
    }
}
